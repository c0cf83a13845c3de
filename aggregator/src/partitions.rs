//! Per-partition consumption state: the buffer of messages not yet stored, where the next batch
//! starts, and when a batch is due.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::batch::{Message, Plan};

/// What the consumer loop knows of one assigned partition.
#[derive(Debug)]
pub struct PartitionState {
    /// Changes on every (re)assignment, so a batch finishing for an older assignment is ignored.
    pub generation: u64,
    /// Where the next batch starts: the stored checkpoint.
    pub next_offset: u64,
    /// The next offset accepted into the buffer; anything below it is a re-delivery.
    expected: u64,
    buffer: VecDeque<Message>,
    oldest_at: Option<Instant>,
    /// The plan already made for the batch at `next_offset` (a replay), if any.
    pub plan: Option<Plan>,
    pub in_flight: bool,
    pub paused: bool,
    /// Cancelled when the partition is revoked or reloaded: its batch in flight stops retrying
    /// and writes nothing more.
    pub revoked: CancellationToken,
}

/// A batch taken out of the buffer, to store.
#[derive(Debug)]
pub struct TakenBatch {
    pub generation: u64,
    pub first_offset: u64,
    pub messages: Vec<Message>,
    pub plan: Option<Plan>,
}

impl PartitionState {
    pub fn new(generation: u64, next_offset: u64, plan: Option<Plan>, revoked: CancellationToken) -> Self {
        Self {
            revoked,
            generation,
            next_offset,
            expected: next_offset,
            buffer: VecDeque::new(),
            oldest_at: None,
            plan,
            in_flight: false,
            paused: false,
        }
    }

    /// Buffers a consumed message unless it is a re-delivery of one already buffered or stored.
    pub fn offer(&mut self, message: Message, now: Instant) -> bool {
        if message.offset < self.expected {
            return false;
        }
        self.expected = message.offset + 1;
        self.oldest_at.get_or_insert(now);
        self.buffer.push_back(message);
        true
    }

    /// The next offset the partition expects from the broker.
    pub fn expected(&self) -> u64 {
        self.expected
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Takes the next batch if one is due and none is being stored: a known plan's exact range
    /// once it is buffered, else up to `max_events` when full or when the oldest waited `linger`.
    pub fn take_due(&mut self, max_events: usize, linger: Duration, now: Instant) -> Option<TakenBatch> {
        if self.in_flight || self.buffer.is_empty() {
            return None;
        }
        let count = match &self.plan {
            Some(plan) => {
                let reached = self.buffer.back().is_some_and(|m| m.offset >= plan.last_offset);
                if !reached {
                    return None;
                }
                self.buffer.iter().take_while(|m| m.offset <= plan.last_offset).count()
            }
            None => {
                let waited = self.oldest_at.is_some_and(|at| now.duration_since(at) >= linger);
                if self.buffer.len() < max_events && !waited {
                    return None;
                }
                self.buffer.len().min(max_events)
            }
        };
        let messages: Vec<Message> = self.buffer.drain(..count).collect();
        self.oldest_at = if self.buffer.is_empty() { None } else { Some(now) };
        self.in_flight = true;
        Some(TakenBatch {
            generation: self.generation,
            first_offset: self.next_offset,
            messages,
            plan: self.plan.clone(),
        })
    }

    /// The batch was stored: the partition moves past it.
    pub fn stored(&mut self, plan: &Plan) {
        self.next_offset = plan.next_offset();
        self.plan = None;
        self.in_flight = false;
    }

    /// A plan with other bounds was in force: the messages go back, to be taken under that plan.
    pub fn replan(&mut self, plan: Plan, messages: Vec<Message>, now: Instant) {
        for message in messages.into_iter().rev() {
            self.buffer.push_front(message);
        }
        self.oldest_at.get_or_insert(now);
        self.plan = Some(plan);
        self.in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: u64) -> Message {
        Message { offset, key: None, payload: None, accepted_at: None }
    }

    fn plan(first: u64, last: u64) -> Plan {
        Plan {
            topic: "t".to_owned(),
            kafka_partition: 0,
            first_offset: first,
            last_offset: last,
            decided_at: 0,
            planned_by: "a".to_owned(),
        }
    }

    #[test]
    fn redeliveries_below_the_expected_offset_are_dropped() {
        let now = Instant::now();
        let mut state = PartitionState::new(1, 10, None, CancellationToken::new());
        assert!(!state.offer(message(9), now));
        assert!(state.offer(message(10), now));
        assert!(state.offer(message(12), now), "gaps (compaction, transaction markers) are fine");
        assert!(!state.offer(message(11), now));
        assert_eq!(state.buffered(), 2);
    }

    #[test]
    fn batches_are_due_by_size_or_linger() {
        let now = Instant::now();
        let linger = Duration::from_millis(100);
        let mut state = PartitionState::new(1, 0, None, CancellationToken::new());
        for offset in 0..5 {
            state.offer(message(offset), now);
        }
        assert!(state.take_due(10, linger, now).is_none());
        let batch = state.take_due(3, linger, now).unwrap();
        assert_eq!((batch.first_offset, batch.messages.len()), (0, 3));
        assert!(state.take_due(3, linger, now + linger).is_none(), "one batch in flight at a time");
        state.stored(&plan(0, 2));
        let batch = state.take_due(10, linger, now + linger).unwrap();
        assert_eq!((batch.first_offset, batch.messages.len()), (3, 2));
    }

    #[test]
    fn a_known_plan_is_taken_exactly_once_its_range_is_buffered() {
        let now = Instant::now();
        let mut state = PartitionState::new(1, 4, Some(plan(4, 7)), CancellationToken::new());
        for offset in 4..7 {
            state.offer(message(offset), now);
        }
        assert!(state.take_due(2, Duration::ZERO, now).is_none(), "offset 7 not buffered yet");
        state.offer(message(7), now);
        state.offer(message(8), now);
        let batch = state.take_due(2, Duration::ZERO, now).unwrap();
        assert_eq!(batch.messages.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![4, 5, 6, 7]);
        assert_eq!(state.buffered(), 1);
    }

    #[test]
    fn a_replan_puts_the_messages_back_in_order() {
        let now = Instant::now();
        let mut state = PartitionState::new(1, 0, None, CancellationToken::new());
        for offset in 0..4 {
            state.offer(message(offset), now);
        }
        let batch = state.take_due(4, Duration::ZERO, now).unwrap();
        state.replan(plan(0, 1), batch.messages, now);
        let batch = state.take_due(4, Duration::ZERO, now).unwrap();
        assert_eq!(batch.messages.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(state.buffered(), 2);
    }
}
