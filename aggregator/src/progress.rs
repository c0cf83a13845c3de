//! Progress commits to the consumer group, coalesced: the committed offsets only report progress
//! (lag metrics, tooling), the truth is the checkpoint in ClickHouse, so committing after every
//! batch buys nothing and costs the broker a write per batch. Each partition's latest stored
//! offset is committed at most once per interval, all partitions in one request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often stored progress is committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Progress {
    pending: BTreeMap<u32, u64>,
    last_commit: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self { pending: BTreeMap::new(), last_commit: Instant::now() }
    }
}

impl Progress {
    /// The partition is stored up to `next_offset` (exclusive).
    pub fn stored(&mut self, partition: u32, next_offset: u64) {
        let pending = self.pending.entry(partition).or_insert(next_offset);
        *pending = (*pending).max(next_offset);
    }

    /// A partition that left this instance: its progress is the new owner's to report.
    pub fn forget(&mut self, partition: u32) {
        self.pending.remove(&partition);
    }

    /// The offsets to commit now, if the interval has passed since the last commit.
    pub fn due(&mut self, now: Instant) -> Option<BTreeMap<u32, u64>> {
        if self.pending.is_empty() || now.duration_since(self.last_commit) < COMMIT_INTERVAL {
            return None;
        }
        self.last_commit = now;
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_coalesced_per_interval_and_keep_the_latest_offset() {
        let mut progress = Progress::default();
        let start = Instant::now();
        progress.stored(0, 100);
        progress.stored(0, 250);
        progress.stored(3, 40);
        assert_eq!(progress.due(start), None, "not before the interval");
        let due = progress.due(start + COMMIT_INTERVAL).unwrap();
        assert_eq!(due.into_iter().collect::<Vec<_>>(), vec![(0, 250), (3, 40)]);
        assert_eq!(progress.due(start + 3 * COMMIT_INTERVAL), None, "nothing pending");
        progress.stored(1, 7);
        progress.forget(1);
        assert_eq!(progress.due(start + 5 * COMMIT_INTERVAL), None, "a revoked partition is not committed");
    }
}
