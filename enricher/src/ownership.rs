//! Which raw partitions this instance owns, and whether their sessions are loaded yet.
//!
//! The consumer group moves raw partitions between instances; the sessions of a partition move
//! with it. A partition assigned here is `Restoring` until its sessions partition has been read
//! to the end it had, and a batch waits for that before it is joined. Under the eager protocol
//! every rebalance revokes everything first; a partition assigned again keeps its loaded
//! sessions instead of reading them again, so only partitions that really moved cost a restore.

use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Restoring { since: Instant },
    Ready,
}

#[derive(Debug, Clone, Copy)]
struct Partition {
    load: Load,
    /// Revoked and not (yet) assigned again: its records are not ours to join.
    revoked: bool,
    /// Changes each time the partition's sessions must be read from the start.
    generation: u64,
}

/// What a batch may do with a partition's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// The partition's sessions are still being read.
    Wait,
    /// Not owned: the records belong to another instance now.
    NotOwned,
}

#[derive(Debug, Default)]
pub struct Ownership {
    partitions: BTreeMap<i32, Partition>,
    generations: u64,
}

impl Ownership {
    /// The consumer gave up these partitions (more may follow in the next assignment).
    pub fn revoked(&mut self, partitions: &[i32]) {
        for p in partitions {
            if let Some(part) = self.partitions.get_mut(p) {
                part.revoked = true;
            }
        }
    }

    /// The consumer now holds exactly `current`. Returns the partitions no longer owned, whose
    /// sessions must leave memory.
    pub fn assigned(&mut self, current: &[i32], now: Instant) -> Vec<i32> {
        let gone: Vec<i32> = self
            .partitions
            .keys()
            .copied()
            .filter(|p| !current.contains(p))
            .collect();
        for p in &gone {
            self.partitions.remove(p);
        }
        for &p in current {
            match self.partitions.get_mut(&p) {
                Some(part) => part.revoked = false,
                None => {
                    self.generations += 1;
                    self.partitions.insert(
                        p,
                        Partition {
                            load: Load::Restoring { since: now },
                            revoked: false,
                            generation: self.generations,
                        },
                    );
                }
            }
        }
        gone
    }

    /// The partition's sessions are loaded; returns when the restore began, once.
    pub fn restored(&mut self, partition: i32, generation: u64) -> Option<Instant> {
        let part = self
            .partitions
            .get_mut(&partition)
            .filter(|p| p.generation == generation)?;
        match part.load {
            Load::Restoring { since } => {
                part.load = Load::Ready;
                Some(since)
            }
            Load::Ready => None,
        }
    }

    pub fn gate(&self, partition: i32) -> Gate {
        match self.partitions.get(&partition) {
            None => Gate::NotOwned,
            Some(p) if p.revoked => Gate::NotOwned,
            Some(Partition {
                load: Load::Restoring { .. },
                ..
            }) => Gate::Wait,
            Some(_) => Gate::Go,
        }
    }

    /// Every partition whose sessions are held or loading, with its generation: what the
    /// sessions follower reads.
    pub fn followed(&self) -> Vec<(i32, u64)> {
        self.partitions
            .iter()
            .map(|(p, part)| (*p, part.generation))
            .collect()
    }

    /// Whether the sessions of `partition` (of this generation) are still to be kept.
    pub fn follows(&self, partition: i32, generation: u64) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|p| p.generation == generation)
    }

    /// Partitions owned and ready to be joined.
    pub fn ready(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, p)| !p.revoked && p.load == Load::Ready)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Partitions still loading.
    pub fn restoring(&self) -> usize {
        self.partitions
            .values()
            .filter(|p| matches!(p.load, Load::Restoring { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_partitions_wait_for_their_sessions_and_kept_ones_do_not() {
        let now = Instant::now();
        let mut o = Ownership::default();
        assert_eq!(o.assigned(&[0, 1, 2], now), Vec::<i32>::new());
        assert_eq!(o.gate(0), Gate::Wait);
        assert_eq!(o.gate(5), Gate::NotOwned);
        let followed = o.followed();
        for (p, generation) in &followed {
            assert_eq!(o.restored(*p, *generation), Some(now));
        }
        assert_eq!(o.restored(0, followed[0].1), None, "once");
        assert_eq!(o.gate(0), Gate::Go);

        // An eager rebalance: everything revoked, then 1 and 2 come back with 3.
        o.revoked(&[0, 1, 2]);
        assert_eq!(o.gate(1), Gate::NotOwned);
        assert_eq!(o.assigned(&[1, 2, 3], now), vec![0]);
        assert_eq!(o.gate(1), Gate::Go, "kept: no second restore");
        assert_eq!(o.gate(3), Gate::Wait);
        assert_eq!(o.restoring(), 1);

        // Partition 0 comes back later: a new generation, read from the start again.
        let old_generation = followed[0].1;
        o.assigned(&[0, 1, 2, 3], now);
        let (_, generation) = o.followed()[0];
        assert_ne!(generation, old_generation);
        assert_eq!(
            o.restored(0, old_generation),
            None,
            "a stale restore is ignored"
        );
        assert_eq!(o.gate(0), Gate::Wait);
    }
}
