//! Which records of a batch may have been shipped already.
//!
//! CloudWatch has no deduplication. Records are read again only where this instance did not
//! read the previous record of their partition: at start, after a rebalance, after a crash
//! (this instance's or the partition's previous owner's). Only there is CloudWatch asked what
//! it holds; a partition that follows on from the last offset handled here is new data.

use std::collections::{HashMap, HashSet};

/// Per partition, the offset after the last one handled by this instance.
#[derive(Debug, Default)]
pub struct Continuity {
    next: HashMap<i32, i64>,
}

impl Continuity {
    /// The partitions of `records` (partition, offset) that do not follow on from the last
    /// batch handled here.
    pub fn resumed(&self, records: impl IntoIterator<Item = (i32, i64)>) -> HashSet<i32> {
        let mut first: HashMap<i32, i64> = HashMap::new();
        for (partition, offset) in records {
            first
                .entry(partition)
                .and_modify(|o| *o = (*o).min(offset))
                .or_insert(offset);
        }
        first
            .into_iter()
            .filter(|(partition, offset)| self.next.get(partition) != Some(offset))
            .map(|(partition, _)| partition)
            .collect()
    }

    /// Records that a batch was handled (shipped or dead-lettered) up to its last offsets.
    pub fn handled(&mut self, records: impl IntoIterator<Item = (i32, i64)>) {
        for (partition, offset) in records {
            let next = self.next.entry(partition).or_insert(offset + 1);
            *next = (*next).max(offset + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_is_resumed_at_first() {
        let c = Continuity::default();
        assert_eq!(c.resumed([(0, 5), (1, 0), (0, 6)]), HashSet::from([0, 1]));
    }

    #[test]
    fn a_partition_that_follows_on_is_not_resumed() {
        let mut c = Continuity::default();
        c.handled([(0, 5), (0, 6), (1, 0)]);
        assert!(c.resumed([(0, 7), (0, 8), (1, 1)]).is_empty());
    }

    #[test]
    fn a_gap_or_a_step_back_is_a_resume() {
        let mut c = Continuity::default();
        c.handled([(0, 5), (1, 9)]);
        // Partition 0 read again from 3 (a rebalance back to this instance); 1 moved on by
        // another instance meanwhile.
        assert_eq!(c.resumed([(0, 3), (1, 20)]), HashSet::from([0, 1]));
    }
}
