//! Records waiting for their session, held apart from the batch they came in, so an event whose
//! session is not in the directory yet delays only itself and the later events of the same
//! session (their order kept), never unrelated records.
//!
//! The lot is pure bookkeeping: what waits, for which session, until when; the lowest offset
//! still held per partition (commits must stop there, or a crash would skip a waiting record);
//! and which sessions to release when the directory learns them or their wait runs out. Every
//! operation is O(1) or O(log n) in the records held, and the lot is bounded: when full, the
//! oldest waiting session is released early (as unknown).
//!
//! [`UnknownSessions`] remembers sessions already waited for in vain, so their next events do
//! not wait again; it is bounded too, with O(1) lookups.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

/// One record held back, with what it needs to be processed later.
#[derive(Debug)]
pub struct Held<T> {
    pub partition: i32,
    pub offset: i64,
    pub item: T,
}

/// Records released together, in the order they were held.
pub type Released<T> = Vec<(Held<T>, Release)>;

/// Why a session's records were released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The directory has the session now.
    Arrived,
    /// The wait ran out (or the lot was full): the records go on as SESSION_UNKNOWN.
    GaveUp,
}

pub struct ParkingLot<T> {
    by_session: HashMap<String, VecDeque<Held<T>>>,
    /// Sessions in the order their first record was parked, with that record's deadline: the
    /// front is always the next to time out. A session released early stays here until it
    /// reaches the front (`generation` tells a stale entry from a session parked again).
    deadlines: VecDeque<(Instant, String, u64)>,
    generations: HashMap<String, u64>,
    next_generation: u64,
    /// Offsets held per partition, for the commit floor.
    offsets: BTreeMap<i32, BTreeMap<i64, ()>>,
    len: usize,
    max: usize,
}

impl<T> ParkingLot<T> {
    pub fn new(max: usize) -> Self {
        Self {
            by_session: HashMap::new(),
            deadlines: VecDeque::new(),
            generations: HashMap::new(),
            next_generation: 0,
            offsets: BTreeMap::new(),
            len: 0,
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether records of `session` are waiting (a later record of it must wait behind them).
    pub fn is_waiting(&self, session: &str) -> bool {
        self.by_session.contains_key(session)
    }

    /// Holds a record until its session arrives or `deadline` passes. Returns the records of
    /// the oldest session when the lot was full, to be processed as unknown.
    pub fn park(
        &mut self,
        session: &str,
        held: Held<T>,
        deadline: Instant,
    ) -> Vec<(Held<T>, Release)> {
        let mut released = Vec::new();
        if self.len >= self.max {
            if let Some(oldest) = self.oldest_live_session() {
                released = self.release(&oldest, Release::GaveUp);
            }
        }
        self.offsets
            .entry(held.partition)
            .or_default()
            .insert(held.offset, ());
        self.len += 1;
        match self.by_session.get_mut(session) {
            Some(queue) => queue.push_back(held),
            None => {
                self.by_session
                    .insert(session.to_string(), VecDeque::from([held]));
                self.next_generation += 1;
                self.generations
                    .insert(session.to_string(), self.next_generation);
                self.deadlines
                    .push_back((deadline, session.to_string(), self.next_generation));
            }
        }
        released
    }

    fn oldest_live_session(&mut self) -> Option<String> {
        while let Some((_, session, generation)) = self.deadlines.front() {
            if self.generations.get(session) == Some(generation) {
                return Some(session.clone());
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// Releases the records of `session` (in the order they were parked), if any wait.
    pub fn release(&mut self, session: &str, why: Release) -> Vec<(Held<T>, Release)> {
        let Some(queue) = self.by_session.remove(session) else {
            return Vec::new();
        };
        self.generations.remove(session);
        self.len -= queue.len();
        queue
            .into_iter()
            .map(|h| {
                if let Some(held) = self.offsets.get_mut(&h.partition) {
                    held.remove(&h.offset);
                    if held.is_empty() {
                        self.offsets.remove(&h.partition);
                    }
                }
                (h, why)
            })
            .collect()
    }

    /// Releases every session whose first record's deadline has passed, oldest first.
    pub fn release_expired(&mut self, now: Instant) -> Vec<(String, Released<T>)> {
        let mut out = Vec::new();
        while let Some((deadline, _, _)) = self.deadlines.front() {
            if *deadline > now {
                break;
            }
            if let Some((_, session, generation)) = self.deadlines.pop_front() {
                if self.generations.get(&session) == Some(&generation) {
                    let released = self.release(&session, Release::GaveUp);
                    out.push((session, released));
                }
            }
        }
        out
    }

    /// The next deadline of a waiting session.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.oldest_live_session()?;
        self.deadlines.front().map(|(d, _, _)| *d)
    }

    /// Lets go of every record held for the given partitions (revoked: their new owner reads
    /// them again); returns how many. O(records held), and rare.
    pub fn forget_partitions(&mut self, partitions: &[i32]) -> usize {
        let mut dropped = 0;
        self.by_session.retain(|session, queue| {
            let before = queue.len();
            queue.retain(|h| !partitions.contains(&h.partition));
            dropped += before - queue.len();
            if queue.is_empty() {
                self.generations.remove(session);
                false
            } else {
                true
            }
        });
        for p in partitions {
            self.offsets.remove(p);
        }
        self.len -= dropped;
        dropped
    }

    /// The sessions records wait for.
    pub fn sessions(&self) -> impl Iterator<Item = &str> {
        self.by_session.keys().map(String::as_str)
    }

    /// Per partition, the lowest offset still held: no offset at or past it may be committed.
    pub fn floors(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.offsets
            .iter()
            .filter_map(|(p, held)| held.keys().next().map(|o| (*p, *o)))
    }
}

/// Sessions waited for in vain recently, so their next events go on at once. Bounded: past
/// `max` entries the oldest is forgotten. Lookups are O(1), inserts and removals amortized O(1).
pub struct UnknownSessions {
    /// When each session was given up on, and the generation of its entry in `order`.
    since: HashMap<String, (Instant, u64)>,
    /// Sessions in the order they were remembered; entries whose generation no longer matches
    /// `since` are stale (forgotten or renewed) and skipped.
    order: VecDeque<(String, u64)>,
    generation: u64,
    max: usize,
    ttl: std::time::Duration,
}

impl UnknownSessions {
    pub fn new(max: usize, ttl: std::time::Duration) -> Self {
        Self {
            since: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
            max: max.max(1),
            ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }

    /// Whether `session` was waited for in vain within the time to live.
    pub fn contains(&self, session: &str, now: Instant) -> bool {
        self.since
            .get(session)
            .is_some_and(|(since, _)| now.duration_since(*since) < self.ttl)
    }

    pub fn remember(&mut self, session: &str, now: Instant) {
        if let Some((since, _)) = self.since.get_mut(session) {
            *since = now;
            return;
        }
        while self.since.len() >= self.max {
            let Some((oldest, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .since
                .get(&oldest)
                .is_some_and(|(_, g)| *g == generation)
            {
                self.since.remove(&oldest);
            }
        }
        self.generation += 1;
        self.since
            .insert(session.to_string(), (now, self.generation));
        self.order.push_back((session.to_string(), self.generation));
        if self.order.len() > 2 * self.max {
            // Stale entries from forgotten sessions; dropping them is amortized O(1).
            let since = &self.since;
            self.order
                .retain(|(s, g)| since.get(s).is_some_and(|(_, live)| live == g));
        }
    }

    /// Forgets a session the directory now has.
    pub fn forget(&mut self, session: &str) {
        self.since.remove(session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn held(partition: i32, offset: i64) -> Held<i64> {
        Held {
            partition,
            offset,
            item: offset,
        }
    }

    #[test]
    fn sessions_release_in_order_and_floors_follow() {
        let t0 = Instant::now();
        let mut lot = ParkingLot::new(100);
        assert!(lot
            .park("a", held(0, 5), t0 + Duration::from_secs(2))
            .is_empty());
        lot.park("b", held(0, 7), t0 + Duration::from_secs(3));
        lot.park("a", held(0, 9), t0 + Duration::from_secs(4));
        lot.park("c", held(1, 2), t0 + Duration::from_secs(5));
        assert!(lot.is_waiting("a") && lot.is_waiting("c"));
        assert_eq!(lot.floors().collect::<Vec<_>>(), vec![(0, 5), (1, 2)]);
        let a = lot.release("a", Release::Arrived);
        assert_eq!(
            a.iter().map(|(h, _)| h.item).collect::<Vec<_>>(),
            vec![5, 9]
        );
        assert_eq!(lot.floors().collect::<Vec<_>>(), vec![(0, 7), (1, 2)]);
        // a's stale deadline entry is skipped; b is the next to time out.
        assert_eq!(lot.next_deadline(), Some(t0 + Duration::from_secs(3)));
        let expired = lot.release_expired(t0 + Duration::from_secs(3));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, "b");
        assert_eq!(expired[0].1[0].1, Release::GaveUp);
        assert_eq!(lot.len(), 1);
        assert_eq!(lot.floors().collect::<Vec<_>>(), vec![(1, 2)]);
    }

    #[test]
    fn revoked_partitions_are_let_go() {
        let t0 = Instant::now();
        let mut lot = ParkingLot::new(10);
        lot.park("a", held(0, 1), t0);
        lot.park("b", held(1, 2), t0);
        lot.park("a", held(0, 3), t0);
        assert_eq!(lot.forget_partitions(&[0]), 2);
        assert!(!lot.is_waiting("a"));
        assert!(lot.is_waiting("b"));
        assert_eq!(lot.len(), 1);
        assert_eq!(lot.floors().collect::<Vec<_>>(), vec![(1, 2)]);
        // a's stale deadline is skipped.
        assert_eq!(lot.release_expired(t0).len(), 1);
        assert!(lot.is_empty());
    }

    #[test]
    fn a_full_lot_releases_its_oldest_session() {
        let t0 = Instant::now();
        let mut lot = ParkingLot::new(2);
        lot.park("a", held(0, 1), t0);
        lot.park("b", held(0, 2), t0);
        let released = lot.park("c", held(0, 3), t0);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].0.item, 1);
        assert_eq!(lot.len(), 2);
        assert!(!lot.is_waiting("a"));
    }

    #[test]
    fn a_session_parked_again_gets_a_fresh_deadline() {
        let t0 = Instant::now();
        let mut lot = ParkingLot::new(10);
        lot.park("a", held(0, 1), t0 + Duration::from_secs(1));
        lot.release("a", Release::Arrived);
        lot.park("a", held(0, 2), t0 + Duration::from_secs(10));
        assert!(lot.release_expired(t0 + Duration::from_secs(2)).is_empty());
        assert!(lot.is_waiting("a"));
    }

    #[test]
    fn unknown_sessions_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut u = UnknownSessions::new(2, Duration::from_secs(10));
        u.remember("a", t0);
        u.remember("b", t0);
        u.remember("a", t0);
        assert_eq!(u.len(), 2);
        u.remember("c", t0);
        assert_eq!(u.len(), 2);
        assert!(!u.contains("a", t0), "the oldest was forgotten");
        assert!(u.contains("c", t0));
        assert!(!u.contains("c", t0 + Duration::from_secs(11)));
        u.forget("c");
        assert!(!u.contains("b", t0 + Duration::from_secs(11)));
        assert!(!u.contains("c", t0));
    }
}
