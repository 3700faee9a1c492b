//! Catching events published again.
//!
//! An enricher that crashes after publishing and before committing, or retries a batch after a
//! broker failure, publishes the same events again at new offsets of the same partition (same
//! key), shortly after the originals. They carry the same `event_id`. A sink keeps, per
//! partition, the ids of the last `window` records it handled and skips a record whose id is
//! among them. Whenever a partition's batch does not follow on from the last one this instance
//! handled (start, restart, a rebalance), the sink reloads that partition's window from what its
//! destination holds, so records another instance wrote count too. Pure logic; loading is the
//! sink's.
//!
//! Memory is bounded by bytes as well as by ids: with a budget, each partition's window holds at
//! most `budget / (BYTES_PER_ID × partitions held)` ids, so a sink owning many partitions does not
//! hold many times the memory of one owning a few.

use std::collections::{HashMap, HashSet, VecDeque};
use uuid::Uuid;

/// What one remembered id costs: 16 bytes in the order queue, 16 and the hash table's overhead
/// in the set.
pub const BYTES_PER_ID: usize = 40;

/// The recent event ids of every partition this instance handles.
pub struct RecentIds {
    window: usize,
    budget_bytes: Option<usize>,
    partitions: HashMap<i32, Window>,
}

struct Window {
    /// The offset the next batch must start at to follow on from what this window holds.
    next_offset: i64,
    order: VecDeque<Uuid>,
    ids: HashSet<Uuid>,
}

impl Window {
    fn remember(&mut self, id: Uuid, window: usize) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            while self.order.len() > window {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

impl RecentIds {
    pub fn new(window: usize) -> Self {
        Self {
            window,
            budget_bytes: None,
            partitions: HashMap::new(),
        }
    }

    /// Caps the memory of all windows together at about `bytes`.
    pub fn with_budget(mut self, bytes: usize) -> Self {
        self.budget_bytes = Some(bytes);
        self
    }

    /// How many ids a partition's window holds now (and how many rows before `first_offset`
    /// a reload reads): the configured window, or less when the byte budget is shared by many
    /// partitions.
    pub fn window(&self) -> usize {
        match self.budget_bytes {
            Some(bytes) => {
                let per_partition = bytes / (BYTES_PER_ID * self.partitions.len().max(1));
                self.window.min(per_partition.max(1))
            }
            None => self.window,
        }
    }

    /// Ids held over all partitions.
    pub fn ids_held(&self) -> usize {
        self.partitions.values().map(|w| w.order.len()).sum()
    }

    /// About how many bytes the windows take.
    pub fn bytes_held(&self) -> usize {
        self.ids_held() * BYTES_PER_ID
    }

    /// Whether a batch of `partition` starting at `first_offset` follows on from the window
    /// held; if not, the caller reloads it with [`RecentIds::load`].
    pub fn follows_on(&self, partition: i32, first_offset: i64) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|w| w.next_offset == first_offset)
    }

    /// Replaces a partition's window with the ids stored before `first_offset`, oldest first.
    pub fn load(&mut self, partition: i32, first_offset: i64, ids: impl IntoIterator<Item = Uuid>) {
        // Taken out first, so the window is sized with this partition counted once.
        self.partitions.remove(&partition);
        self.partitions.insert(
            partition,
            Window {
                next_offset: first_offset,
                order: VecDeque::new(),
                ids: HashSet::new(),
            },
        );
        let window = self.window();
        if let Some(w) = self.partitions.get_mut(&partition) {
            for id in ids {
                w.remember(id, window);
            }
        }
    }

    /// Takes out records whose event id is in their partition's window or earlier in `records`
    /// (in offset order per partition), remembers the ids of those kept, and returns those
    /// taken out. `key` gives a record's partition and event id.
    pub fn drop_replays<T>(
        &mut self,
        records: &mut Vec<T>,
        key: impl Fn(&T) -> (i32, Uuid),
    ) -> Vec<T> {
        let window = self.window();
        let mut kept = Vec::with_capacity(records.len());
        let mut dropped = Vec::new();
        for r in records.drain(..) {
            let (partition, id) = key(&r);
            match self.partitions.get_mut(&partition) {
                Some(w) if w.ids.contains(&id) => dropped.push(r),
                Some(w) => {
                    w.remember(id, window);
                    kept.push(r);
                }
                // Not loaded: nothing known to compare with (the caller loads every partition
                // first); keep the record.
                None => kept.push(r),
            }
        }
        *records = kept;
        dropped
    }

    /// Records that a partition's batch was handled up to `last_offset`.
    pub fn handled(&mut self, partition: i32, last_offset: i64) {
        if let Some(w) = self.partitions.get_mut(&partition) {
            w.next_offset = w.next_offset.max(last_offset + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (partition, offset, id)
    type Rec = (i32, i64, u128);

    fn key(r: &Rec) -> (i32, Uuid) {
        (r.0, Uuid::from_u128(r.2))
    }

    fn event_row(partition: i32, offset: i64, id: u128) -> Rec {
        (partition, offset, id)
    }

    fn ids(rows: &[Rec]) -> Vec<u128> {
        rows.iter().map(|r| r.2).collect()
    }

    #[test]
    fn a_replay_within_the_window_is_dropped_and_new_ids_kept() {
        let mut recent = RecentIds::new(100);
        recent.load(0, 0, []);
        let mut first = vec![event_row(0, 0, 1), event_row(0, 1, 2)];
        assert_eq!(recent.drop_replays(&mut first, key).len(), 0);
        recent.handled(0, 1);
        assert!(recent.follows_on(0, 2));
        // The enricher replays 2 and 1, then goes on with 3.
        let mut second = vec![event_row(0, 2, 2), event_row(0, 3, 1), event_row(0, 4, 3)];
        assert_eq!(recent.drop_replays(&mut second, key).len(), 2);
        assert_eq!(ids(&second), vec![3]);
    }

    #[test]
    fn duplicates_inside_one_batch_keep_the_first() {
        let mut recent = RecentIds::new(100);
        recent.load(3, 10, []);
        let mut rows = vec![
            event_row(3, 10, 7),
            event_row(3, 11, 8),
            event_row(3, 12, 7),
        ];
        assert_eq!(recent.drop_replays(&mut rows, key).len(), 1);
        assert_eq!(rows.iter().map(|r| r.1).collect::<Vec<_>>(), vec![10, 11]);
    }

    #[test]
    fn the_window_forgets_the_oldest_ids() {
        let mut recent = RecentIds::new(2);
        recent.load(0, 3, [1, 2, 3].map(Uuid::from_u128));
        // 1 fell out of a window of two; 2 and 3 are in it.
        let mut rows = vec![event_row(0, 3, 2), event_row(0, 4, 3), event_row(0, 5, 1)];
        assert_eq!(recent.drop_replays(&mut rows, key).len(), 2);
        assert_eq!(ids(&rows), vec![1]);
    }

    #[test]
    fn a_gap_or_an_unknown_partition_asks_for_a_reload() {
        let mut recent = RecentIds::new(10);
        assert!(!recent.follows_on(0, 0));
        recent.load(0, 5, []);
        assert!(recent.follows_on(0, 5));
        assert!(!recent.follows_on(0, 9), "another instance handled 5..9");
        assert!(!recent.follows_on(1, 5));
    }

    #[test]
    fn a_byte_budget_is_shared_by_the_partitions_held() {
        let mut recent = RecentIds::new(1_000).with_budget(10 * BYTES_PER_ID);
        recent.load(0, 100, (0..100).map(Uuid::from_u128));
        assert_eq!(recent.ids_held(), 10, "one partition: the whole budget");
        recent.load(1, 0, []);
        assert_eq!(recent.window(), 5);
        let mut rows: Vec<Rec> = (0..8)
            .map(|n| event_row(0, 100 + n, 500 + n as u128))
            .collect();
        recent.drop_replays(&mut rows, key);
        assert!(recent.ids_held() <= 10, "{}", recent.ids_held());
        assert_eq!(recent.bytes_held(), recent.ids_held() * BYTES_PER_ID);
    }

    #[test]
    fn partitions_are_separate() {
        let mut recent = RecentIds::new(10);
        recent.load(0, 0, [Uuid::from_u128(1)]);
        recent.load(1, 0, []);
        let mut rows = vec![event_row(1, 0, 1)];
        assert_eq!(recent.drop_replays(&mut rows, key).len(), 0);
    }
}
