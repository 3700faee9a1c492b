//! The sessions this instance joins against: those of the raw partitions it owns, and no more.
//!
//! Sessions are the bulk of the directory (millions a month on a busy platform), so an entry is
//! kept small: a canonical UUID id is stored as its 16 bytes, user ids and IPs are shared
//! strings behind one pointer, and times other than the start (which the enriched record
//! carries) are whole Unix seconds. Every entry knows its partition, so the sessions of a
//! revoked partition leave memory at once.
//!
//! A session ends by logout (a tombstone, or a record with `ended_at`), by idleness or by its
//! absolute lifetime. It still joins for the grace period after its end (events race a logout
//! through the pipeline); then [`Sessions::sweep`] removes it and names the ones the topic still
//! holds, for the caller to tombstone, so the topic stays bounded as well as the memory.

use audit_schemas::{Session, SessionInfo, Timestamp};
use hashbrown::{Equivalent, HashMap};
use std::borrow::Borrow;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Keys are written by the platform's directory writers (authenticated), not by event senders;
/// foldhash's per-process seeds are enough against collisions by chance.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A string shared by many entries behind a thin pointer (8 bytes where `Arc<str>` takes 16).
#[derive(Clone, Debug)]
pub struct Interned(Arc<String>);

impl std::ops::Deref for Interned {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Interned {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Interned {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Interned {}

impl Hash for Interned {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

#[derive(Debug, Default)]
struct Strings {
    set: foldhash::HashSet<Interned>,
}

impl Strings {
    fn get(&mut self, s: &str) -> Interned {
        if let Some(existing) = self.set.get(s) {
            return existing.clone();
        }
        let interned = Interned(Arc::new(s.to_string()));
        self.set.insert(interned.clone());
        interned
    }

    /// Forgets strings no entry refers to any more.
    fn prune(&mut self) {
        self.set.retain(|s| Arc::strong_count(&s.0) > 1);
    }
}

/// A session id as stored: a canonical (lowercase, hyphenated) UUID as its bytes, anything else
/// as text. Both forms round-trip to the exact id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SessionId {
    Uuid([u8; 16]),
    Text(Box<str>),
}

/// A session id as looked up, without allocating.
#[derive(Debug, Clone, Copy)]
enum SessionIdRef<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> SessionIdRef<'a> {
    fn new(id: &'a str) -> Self {
        if id.len() == 36 {
            if let Ok(u) = uuid::Uuid::try_parse(id) {
                let mut buf = [0u8; 36];
                if u.hyphenated().encode_lower(&mut buf).as_bytes() == id.as_bytes() {
                    return Self::Uuid(*u.as_bytes());
                }
            }
        }
        Self::Text(id)
    }

    fn to_owned(self) -> SessionId {
        match self {
            Self::Uuid(b) => SessionId::Uuid(b),
            Self::Text(s) => SessionId::Text(s.into()),
        }
    }
}

// Both forms hash alike, so a `SessionIdRef` finds its `SessionId`.
impl Hash for SessionId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            SessionId::Uuid(b) => {
                state.write_u8(0);
                b.hash(state);
            }
            SessionId::Text(s) => {
                state.write_u8(1);
                (**s).hash(state);
            }
        }
    }
}

impl Hash for SessionIdRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            SessionIdRef::Uuid(b) => {
                state.write_u8(0);
                b.hash(state);
            }
            SessionIdRef::Text(s) => {
                state.write_u8(1);
                s.hash(state);
            }
        }
    }
}

impl Equivalent<SessionId> for SessionIdRef<'_> {
    fn equivalent(&self, key: &SessionId) -> bool {
        match (self, key) {
            (SessionIdRef::Uuid(a), SessionId::Uuid(b)) => a == b,
            (SessionIdRef::Text(a), SessionId::Text(b)) => *a == &**b,
            _ => false,
        }
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionId::Uuid(b) => fmt::Display::fmt(&uuid::Uuid::from_bytes(*b).hyphenated(), f),
            SessionId::Text(s) => f.write_str(s),
        }
    }
}

/// Whole Unix seconds, as entries keep their times (`u32` lasts until 2106).
pub fn unix_seconds(t: Timestamp) -> u32 {
    t.as_micros()
        .div_euclid(1_000_000)
        .clamp(0, i64::from(u32::MAX)) as u32
}

/// One session as the join needs it.
#[derive(Debug)]
pub struct SessionEntry {
    user: Interned,
    ip: Option<Interned>,
    started_at: Timestamp,
    /// Newest activity (Unix seconds): the record's, raised by the session's events.
    last_active: AtomicU32,
    /// When it ended (Unix seconds); 0 while it lives.
    ended: u32,
    partition: i32,
    /// Ended by a tombstone: the topic holds nothing more to delete.
    tombstoned: bool,
}

impl SessionEntry {
    pub fn user_id(&self) -> &str {
        &self.user
    }

    /// The session as the enriched record carries it.
    pub fn info(&self, id: &str) -> SessionInfo {
        SessionInfo {
            id: id.to_string(),
            started_at: self.started_at,
            ip: self.ip.as_deref().map(str::to_string),
        }
    }

    /// An event of the session at `at` is activity; a time ahead of `now` counts as `now`, so
    /// a sender's clock cannot keep a session alive.
    pub fn touch(&self, at: Timestamp, now: Timestamp) {
        let at = unix_seconds(at.min(now));
        self.last_active.fetch_max(at, Ordering::Relaxed);
    }

    pub fn is_ended(&self) -> bool {
        self.ended != 0
    }
}

/// How long sessions live, from the enricher's settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifetimes {
    /// Without activity for this long a session ends.
    pub idle: Option<Duration>,
    /// A session ends this long after it started.
    pub max: Option<Duration>,
    /// An ended session still joins for this long.
    pub grace: Duration,
}

fn secs(d: Duration) -> u32 {
    d.as_secs().min(u64::from(u32::MAX)) as u32
}

/// The sessions table; see the module docs.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Map<SessionId, SessionEntry>,
    strings: Strings,
    lifetimes: Lifetimes,
    /// Ended sessions, roughly in end order (ends are capped at the time they are learnt).
    ended: VecDeque<(u32, SessionId)>,
    removed_since_prune: usize,
}

/// What a [`Sessions::sweep`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub removed: usize,
    /// The removed sessions the topic still holds (ended by record or by lifetime, not by
    /// tombstone), as (partition, id): to be tombstoned.
    pub to_tombstone: Vec<(i32, String)>,
}

/// Sizes for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionsSize {
    pub sessions: usize,
    pub ending: usize,
    /// Rough heap bytes: the table's slots, ids stored as text, and the shared strings.
    pub approx_bytes: usize,
}

impl Sessions {
    pub fn new(lifetimes: Lifetimes) -> Self {
        Self {
            lifetimes,
            ..Self::default()
        }
    }

    pub fn set_lifetimes(&mut self, lifetimes: Lifetimes) {
        self.lifetimes = lifetimes;
    }

    /// Room for `additional` more sessions at once: a restore knows how many records it will
    /// read, and growing the table step by step would hold the old and the new table together
    /// at each doubling (the peak memory of a restore).
    pub fn reserve(&mut self, additional: usize) {
        self.map.reserve(additional);
    }

    pub fn get(&self, id: &str) -> Option<&SessionEntry> {
        self.map.get(&SessionIdRef::new(id))
    }

    /// A session record read from `partition`; replaces what the id had. A record ended longer
    /// ago than the grace period is removed by the next [`Sessions::sweep`].
    pub fn put(&mut self, partition: i32, session: &Session, now: Timestamp) {
        let now_s = unix_seconds(now);
        let id = SessionIdRef::new(&session.id).to_owned();
        let started = unix_seconds(session.started_at);
        let active = session
            .last_activity_at
            .map_or(started, |t| unix_seconds(t.min(now)).max(started));
        let ended = session
            .ended_at
            .map_or(0, |t| unix_seconds(t).clamp(1, now_s.max(1)));
        let entry = SessionEntry {
            user: self.strings.get(&session.user_id),
            ip: session.ip.as_deref().map(|ip| self.strings.get(ip)),
            started_at: session.started_at,
            last_active: AtomicU32::new(active),
            ended,
            partition,
            tombstoned: false,
        };
        if ended != 0 {
            self.ended.push_back((ended, id.clone()));
        }
        self.map.insert(id, entry);
    }

    /// A tombstone (logout by delete): the session joins for the grace period, then goes.
    pub fn delete(&mut self, id: &str, now: Timestamp) {
        let key = SessionIdRef::new(id);
        if self.lifetimes.grace.is_zero() {
            if self.map.remove(&key).is_some() {
                self.removed(1);
            }
            return;
        }
        if let Some(entry) = self.map.get_mut(&key) {
            entry.tombstoned = true;
            if entry.ended == 0 {
                // Rounded up: whole seconds must not shorten the grace period.
                entry.ended = unix_seconds(now).saturating_add(1);
                self.ended.push_back((entry.ended, key.to_owned()));
            }
        }
    }

    /// Forgets the sessions of a partition this instance no longer owns; returns how many.
    pub fn drop_partition(&mut self, partition: i32) -> usize {
        let before = self.map.len();
        self.map.retain(|_, s| s.partition != partition);
        let dropped = before - self.map.len();
        self.removed(dropped);
        // A table sized for partitions that left would keep their memory.
        if self.map.len() < self.map.capacity() / 2 {
            self.map.shrink_to_fit();
            self.strings.prune();
        }
        dropped
    }

    /// Ends the live sessions past their idle or absolute lifetime; returns how many. Walks
    /// every session, so it runs on a timer.
    pub fn expire(&mut self, now: Timestamp) -> usize {
        let now_s = unix_seconds(now).max(1);
        let idle = self.lifetimes.idle.map(secs);
        let max = self.lifetimes.max.map(secs);
        if idle.is_none() && max.is_none() {
            return 0;
        }
        let mut ended = Vec::new();
        for (id, s) in &mut self.map {
            if s.ended != 0 {
                continue;
            }
            let idle_out = idle
                .is_some_and(|i| s.last_active.load(Ordering::Relaxed).saturating_add(i) <= now_s);
            let max_out =
                max.is_some_and(|m| unix_seconds(s.started_at).saturating_add(m) <= now_s);
            if idle_out || max_out {
                s.ended = now_s;
                ended.push(id.clone());
            }
        }
        let count = ended.len();
        self.ended.extend(ended.into_iter().map(|id| (now_s, id)));
        count
    }

    /// Removes the sessions whose grace period ran out by `now`. Costs only the sessions
    /// removed.
    pub fn sweep(&mut self, now: Timestamp) -> Swept {
        let now_s = unix_seconds(now);
        let grace = secs(self.lifetimes.grace);
        let mut gone = Vec::new();
        let mut removed = 0;
        while let Some((ended, _)) = self.ended.front() {
            if ended.saturating_add(grace) > now_s {
                break;
            }
            let Some((ended, id)) = self.ended.pop_front() else {
                break;
            };
            // A session put again since it ended is alive: its queue entry is stale.
            let current = self.map.get(&id).is_some_and(|s| s.ended == ended);
            if !current {
                continue;
            }
            if let Some(s) = self.map.remove(&id) {
                removed += 1;
                if !s.tombstoned {
                    gone.push((s.partition, id.to_string()));
                }
            }
        }
        self.removed(removed);
        Swept {
            removed,
            to_tombstone: gone,
        }
    }

    fn removed(&mut self, count: usize) {
        self.removed_since_prune += count;
        if self.removed_since_prune > 10_000 && self.removed_since_prune > self.map.len() / 4 {
            self.strings.prune();
            self.removed_since_prune = 0;
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sessions ended and still joining.
    pub fn ending(&self) -> usize {
        self.ended.len()
    }

    /// Walks the text ids and shared strings, so callers run it on a timer.
    pub fn size(&self) -> SessionsSize {
        let slot = std::mem::size_of::<(SessionId, SessionEntry)>() + 1;
        let slots = self.map.capacity() * slot;
        let text_ids: usize = self
            .map
            .keys()
            .map(|k| match k {
                SessionId::Uuid(_) => 0,
                SessionId::Text(s) => s.len(),
            })
            .sum();
        let strings: usize = self.strings.set.iter().map(|s| s.len() + 56).sum::<usize>()
            + self.strings.set.capacity() * 9;
        SessionsSize {
            sessions: self.map.len(),
            ending: self.ended.len(),
            approx_bytes: slots + text_ids + strings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_micros(seconds * 1_000_000)
    }

    fn session(id: &str, user: &str, started: i64) -> Session {
        Session {
            id: id.into(),
            user_id: user.into(),
            started_at: at(started),
            ip: Some("10.0.0.1".into()),
            user_agent: None,
            last_activity_at: None,
            ended_at: None,
        }
    }

    fn table() -> Sessions {
        Sessions::new(Lifetimes {
            idle: Some(Duration::from_secs(600)),
            max: Some(Duration::from_secs(3_600)),
            grace: GRACE,
        })
    }

    #[test]
    fn uuid_and_text_ids_round_trip_and_are_found() {
        let mut s = table();
        let uuid = "0b4f7c8e-5a4d-4c1e-9a8b-2d3c4e5f6a7b";
        let upper = "0B4F7C8E-5A4D-4C1E-9A8B-2D3C4E5F6A7B";
        for id in [uuid, upper, "s-1", ""] {
            s.put(0, &session(id, "u1", 1_000), at(1_000));
        }
        assert_eq!(s.len(), 4, "the upper-case form is a different id");
        assert!(matches!(SessionIdRef::new(uuid), SessionIdRef::Uuid(_)));
        assert!(matches!(SessionIdRef::new(upper), SessionIdRef::Text(_)));
        for id in [uuid, upper, "s-1", ""] {
            assert_eq!(s.get(id).map(SessionEntry::user_id), Some("u1"), "{id}");
            assert_eq!(SessionIdRef::new(id).to_owned().to_string(), id);
        }
        assert!(s.get("0b4f7c8e-5a4d-4c1e-9a8b-2d3c4e5f6a7c").is_none());
        assert_eq!(
            s.get(uuid).unwrap().info(uuid).ip.as_deref(),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn a_tombstone_ends_after_grace_and_needs_no_second_tombstone() {
        let mut s = table();
        s.put(0, &session("s1", "u1", 1_000), at(1_000));
        s.put(0, &session("s2", "u1", 1_000), at(1_000));
        s.delete("s1", at(1_100));
        s.delete("s2", at(1_100));
        // s2 logs in again under the same id before its grace ends: it stays.
        s.put(0, &session("s2", "u2", 1_120), at(1_120));
        assert!(s.get("s1").is_some(), "joins within grace");
        assert_eq!(
            s.sweep(at(1_160)),
            Swept::default(),
            "rounded up, never short"
        );
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.sweep(at(1_161)),
            Swept {
                removed: 1,
                to_tombstone: vec![]
            },
            "tombstoned already"
        );
        assert!(s.get("s1").is_none());
        assert_eq!(s.get("s2").map(SessionEntry::user_id), Some("u2"));
        assert_eq!(s.ending(), 0);
    }

    #[test]
    fn idle_and_absolute_lifetimes_end_sessions_which_then_need_tombstones() {
        let mut s = table();
        s.put(2, &session("idle", "u1", 1_000), at(1_000));
        s.put(2, &session("busy", "u1", 1_000), at(1_000));
        let mut reported = session("reported", "u1", 1_000);
        reported.last_activity_at = Some(at(1_500));
        s.put(3, &reported, at(1_500));
        // Events keep "busy" active; a future event time counts as now.
        s.get("busy").unwrap().touch(at(1_550), at(1_550));
        s.get("busy").unwrap().touch(at(99_999), at(1_590));
        assert_eq!(s.expire(at(1_599)), 0);
        assert_eq!(s.expire(at(1_600)), 1, "idle ended");
        assert!(s.get("idle").unwrap().is_ended());
        assert_eq!(
            s.expire(at(2_100)),
            1,
            "reported idles out 600 s after its activity"
        );
        assert_eq!(s.expire(at(4_600)), 1, "busy reaches its absolute lifetime");
        let mut gone = s.sweep(at(4_660)).to_tombstone;
        gone.sort();
        assert_eq!(
            gone,
            vec![
                (2, "busy".to_string()),
                (2, "idle".to_string()),
                (3, "reported".to_string())
            ]
        );
        assert!(s.is_empty());
    }

    #[test]
    fn a_record_ended_long_ago_goes_at_the_next_sweep() {
        let mut s = table();
        let mut old = session("old", "u1", 1_000);
        old.ended_at = Some(at(1_100));
        s.put(1, &old, at(5_000));
        assert!(s.get("old").is_some());
        assert_eq!(
            s.sweep(at(5_000)).to_tombstone,
            vec![(1, "old".to_string())]
        );
        assert!(s.get("old").is_none());
    }

    #[test]
    fn a_revoked_partition_leaves_memory_and_strings_are_shared() {
        let mut s = table();
        for i in 0..1_000 {
            s.put(i % 2, &session(&format!("s{i}"), "u1", 1_000), at(1_000));
        }
        assert_eq!(s.strings.set.len(), 2, "u1 and one IP");
        assert_eq!(s.drop_partition(1), 500);
        assert!(s.get("s1").is_none());
        assert!(s.get("s2").is_some());
        assert_eq!(s.len(), 500);
    }

    #[test]
    fn an_entry_is_small() {
        // Millions are held: guard the layout (see the module docs).
        assert!(std::mem::size_of::<(SessionId, SessionEntry)>() <= 64);
    }
}
