//! Idle dozing. With nothing consumed for [`IDLE_AFTER`], every assigned partition is paused and
//! the partitions' high watermarks are read every [`POLL_EVERY`] instead; the first sign of new
//! data resumes them. A broker that answers an empty Fetch at once, instead of holding it for
//! `fetch.wait.max.ms`, otherwise keeps librdkafka's fetcher thread re-fetching in a loop: most
//! of a core, and as much again in the broker, for no traffic. The cost of dozing is at most
//! one poll interval of extra latency for the first event after a quiet spell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use tokio::task::JoinHandle;

pub const IDLE_AFTER: Duration = Duration::from_secs(2);
pub const POLL_EVERY: Duration = Duration::from_millis(250);
const BROKER_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the loop dozes, and the watermark poll in flight.
#[derive(Debug)]
pub struct Doze {
    pub dozing: bool,
    last_activity: Instant,
    last_poll: Instant,
    poll: Option<JoinHandle<bool>>,
}

impl Default for Doze {
    fn default() -> Self {
        let now = Instant::now();
        Self { dozing: false, last_activity: now, last_poll: now, poll: None }
    }
}

impl Doze {
    /// Something happened (a message, a stored batch, a rebalance).
    pub fn active(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Whether it is time to doze, given that nothing is buffered or being stored.
    pub fn due(&self, quiet: bool) -> bool {
        !self.dozing && quiet && self.last_activity.elapsed() >= IDLE_AFTER
    }

    pub fn fall_asleep(&mut self) {
        self.dozing = true;
        self.last_poll = Instant::now();
    }

    pub fn wake(&mut self) {
        self.dozing = false;
        self.poll = None;
        self.active();
    }

    /// While dozing: `true` once a poll found data past `next` (partition, next offset to read).
    pub async fn new_data<K, C>(&mut self, consumer: &Arc<C>, topic: &str, next: Vec<(i32, i64)>) -> bool
    where
        K: ConsumerContext + 'static,
        C: Consumer<K> + Send + Sync + 'static,
    {
        if let Some(poll) = &self.poll
            && poll.is_finished()
        {
            let found = self.poll.take().map(|poll| async { poll.await.unwrap_or(true) });
            if let Some(found) = found
                && found.await
            {
                return true;
            }
        }
        if self.poll.is_none() && self.last_poll.elapsed() >= POLL_EVERY {
            self.last_poll = Instant::now();
            let consumer = Arc::clone(consumer);
            let topic = topic.to_owned();
            self.poll = Some(tokio::task::spawn_blocking(move || {
                // A failed read wakes the loop: fetching again is the safe side.
                next.iter().any(|(partition, next)| {
                    consumer.fetch_watermarks(&topic, *partition, BROKER_TIMEOUT).map_or(true, |(_, high)| high > *next)
                })
            }));
        }
        false
    }
}
