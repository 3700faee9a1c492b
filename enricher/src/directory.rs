//! The directory as an in-memory table, built from the compacted `audit.directory` topic.
//!
//! Pure data structure: [`Directory::apply`] takes each record (an empty value deletes its key),
//! lookups answer the join. Strings that repeat across entries (user ids, logins, group ids and
//! names) are interned, so a million sessions of ten thousand users cost one copy of each user's
//! strings. Group membership is transitive through parent groups; cycles are harmless.

use audit_schemas::{
    AvroRecord, DirectoryEntry, DirectoryKey, DirectoryRecord, GroupRef, ResolvedUser, SessionInfo,
    Timestamp,
};
// foldhash: several lookups per event are the join's main cost, and SipHash is slower than
// needed; foldhash keeps per-process random seeds. Keys are inserted only from the
// administrator-written directory topic, so hash flooding by event senders is not possible.
use foldhash::{HashMap, HashSet};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Key(#[from] audit_schemas::directory::DirectoryKeyError),
    #[error("undecodable directory record: {0}")]
    Decode(#[from] audit_schemas::DecodeError),
    #[error(
        "record under key {key} is a {found}; the key and the record must name the same entry"
    )]
    KeyMismatch { key: String, found: String },
}

#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub user_id: Arc<str>,
    pub started_at: Timestamp,
    pub ip: Option<Arc<str>>,
    /// When the session was deleted (logout); it still joins until the grace period ends.
    ended: Option<Instant>,
}

impl SessionEntry {
    /// The session as the enriched record carries it.
    pub fn info(&self, id: &str) -> SessionInfo {
        SessionInfo {
            id: id.to_string(),
            started_at: self.started_at,
            ip: self.ip.as_deref().map(str::to_string),
        }
    }
}

#[derive(Debug, Clone)]
struct UserEntry {
    login: Arc<str>,
    name: Option<Arc<str>>,
    group_ids: Vec<Arc<str>>,
}

#[derive(Debug, Clone)]
struct GroupEntry {
    name: Arc<str>,
    parent_ids: Vec<Arc<str>>,
}

#[derive(Debug, Default)]
pub struct Directory {
    interned: HashSet<Arc<str>>,
    sessions: HashMap<Box<str>, SessionEntry>,
    users: HashMap<Arc<str>, UserEntry>,
    groups: HashMap<Arc<str>, GroupEntry>,
    deletes_since_compaction: usize,
    /// How long a deleted session still joins: events of a logout race it through the
    /// pipeline. Zero removes it at once.
    session_grace: Duration,
    /// Ended sessions in the order they ended, for [`Directory::sweep_ended`].
    ended: VecDeque<(Instant, Box<str>)>,
}

/// Sizes for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectorySize {
    pub sessions: usize,
    pub users: usize,
    pub groups: usize,
    pub interned_strings: usize,
    /// Rough heap bytes held, for the memory gauge.
    pub approx_bytes: usize,
    /// Rough bytes per kind: entries and the strings they alone hold (interned strings shared
    /// by several entries are counted in `approx_bytes` only).
    pub session_bytes: usize,
    pub user_bytes: usize,
    pub group_bytes: usize,
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Deleted sessions keep joining for `grace` (see [`Directory::sweep_ended`]).
    pub fn set_session_grace(&mut self, grace: Duration) {
        self.session_grace = grace;
    }

    /// Removes the sessions whose grace period ended by `now`; returns how many. Costs only
    /// the sessions removed (they are queued in the order they ended).
    pub fn sweep_ended(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        while let Some((ended, _)) = self.ended.front() {
            if *ended + self.session_grace > now {
                break;
            }
            let Some((ended, id)) = self.ended.pop_front() else {
                break;
            };
            // A session put again after its end is alive: its queue entry is stale.
            if self
                .sessions
                .get(&id)
                .is_some_and(|s| s.ended == Some(ended))
            {
                self.sessions.remove(&id);
                self.count_delete();
                removed += 1;
            }
        }
        removed
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(existing) = self.interned.get(s) {
            return existing.clone();
        }
        let arc: Arc<str> = Arc::from(s);
        self.interned.insert(arc.clone());
        arc
    }

    /// Applies one record of the topic: `value` `None` (or empty) deletes the key.
    pub fn apply_bytes(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), DirectoryError> {
        let key = DirectoryKey::parse(&String::from_utf8_lossy(key))?;
        let record = match value {
            None | Some([]) => None,
            Some(bytes) => Some(DirectoryRecord::decode(bytes)?),
        };
        self.apply(key, record)
    }

    pub fn apply(
        &mut self,
        key: DirectoryKey,
        record: Option<DirectoryRecord>,
    ) -> Result<(), DirectoryError> {
        let Some(record) = record else {
            self.delete(&key);
            return Ok(());
        };
        if record.key() != key {
            return Err(DirectoryError::KeyMismatch {
                key: key.to_string(),
                found: record.key().to_string(),
            });
        }
        match record.entry {
            DirectoryEntry::Session(s) => {
                let entry = SessionEntry {
                    user_id: self.intern(&s.user_id),
                    started_at: s.started_at,
                    ip: s.ip.as_deref().map(|ip| self.intern(ip)),
                    ended: None,
                };
                self.sessions.insert(s.id.into_boxed_str(), entry);
            }
            DirectoryEntry::User(u) => {
                let entry = UserEntry {
                    login: self.intern(&u.login),
                    name: u.name.as_deref().map(|n| self.intern(n)),
                    group_ids: u.group_ids.iter().map(|g| self.intern(g)).collect(),
                };
                let id = self.intern(&u.id);
                self.users.insert(id, entry);
            }
            DirectoryEntry::Group(g) => {
                let entry = GroupEntry {
                    name: self.intern(&g.name),
                    parent_ids: g.parent_ids.iter().map(|p| self.intern(p)).collect(),
                };
                let id = self.intern(&g.id);
                self.groups.insert(id, entry);
            }
        }
        Ok(())
    }

    fn delete(&mut self, key: &DirectoryKey) {
        let removed = match key {
            DirectoryKey::Session(id) if !self.session_grace.is_zero() => {
                if let Some(session) = self.sessions.get_mut(id.as_str()) {
                    if session.ended.is_none() {
                        let now = Instant::now();
                        session.ended = Some(now);
                        self.ended.push_back((now, id.as_str().into()));
                    }
                }
                false
            }
            DirectoryKey::Session(id) => self.sessions.remove(id.as_str()).is_some(),
            DirectoryKey::User(id) => self.users.remove(id.as_str()).is_some(),
            DirectoryKey::Group(id) => self.groups.remove(id.as_str()).is_some(),
        };
        if removed {
            self.count_delete();
        }
    }

    fn count_delete(&mut self) {
        self.deletes_since_compaction += 1;
        if self.deletes_since_compaction > 10_000 {
            // Drop interned strings nothing refers to any more.
            self.interned.retain(|s| Arc::strong_count(s) > 1);
            self.deletes_since_compaction = 0;
        }
    }

    pub fn session(&self, id: &str) -> Option<&SessionEntry> {
        self.sessions.get(id)
    }

    /// The user, or a user known only by id when the directory has no record of it.
    pub fn user(&self, id: &str) -> ResolvedUser {
        Self::resolved(id, self.users.get(id))
    }

    fn resolved(id: &str, entry: Option<&UserEntry>) -> ResolvedUser {
        match entry {
            Some(u) => ResolvedUser {
                id: id.to_string(),
                login: u.login.to_string(),
                name: u.name.as_deref().map(str::to_string),
            },
            None => ResolvedUser {
                id: id.to_string(),
                login: id.to_string(),
                name: None,
            },
        }
    }

    /// The user (see [`Self::user`]) and its groups (see [`Self::groups_of`]) with one lookup.
    pub fn user_and_groups(&self, id: &str) -> (ResolvedUser, Vec<GroupRef>) {
        let entry = self.users.get(id);
        (Self::resolved(id, entry), self.closure(entry))
    }

    /// The user's groups and all their ancestors, each once, nearest first.
    pub fn groups_of(&self, user_id: &str) -> Vec<GroupRef> {
        self.closure(self.users.get(user_id))
    }

    fn closure(&self, user: Option<&UserEntry>) -> Vec<GroupRef> {
        let Some(user) = user else {
            return Vec::new();
        };
        // Breadth-first over parents. A user has a handful of groups, so the visit list doubles
        // as queue and seen-set: a linear scan beats hashing at this size (the hot path).
        let mut visit: Vec<&str> = Vec::with_capacity(user.group_ids.len() * 4);
        for g in &user.group_ids {
            if !visit.contains(&&**g) {
                visit.push(g);
            }
        }
        let mut out = Vec::with_capacity(visit.len() * 2);
        let mut next = 0;
        while let Some(&id) = visit.get(next) {
            next += 1;
            match self.groups.get(id) {
                Some(g) => {
                    out.push(GroupRef {
                        id: id.to_string(),
                        name: g.name.to_string(),
                    });
                    for p in &g.parent_ids {
                        if !visit.contains(&&**p) {
                            visit.push(p);
                        }
                    }
                }
                // A membership in a group the directory does not know yet still counts.
                None => out.push(GroupRef {
                    id: id.to_string(),
                    name: id.to_string(),
                }),
            }
        }
        out
    }

    /// Sessions ended and still joining (their grace period runs).
    pub fn ending(&self) -> usize {
        self.ended.len()
    }

    /// Sessions, users and groups held: cheap, for a gauge updated on every record.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.sessions.len(), self.users.len(), self.groups.len())
    }

    /// Entry counts and rough heap bytes; walks every entry, so callers run it on a timer.
    pub fn size(&self) -> DirectorySize {
        let strings: usize = self.interned.iter().map(|s| s.len() + 16).sum();
        let sessions: usize = self.sessions.keys().map(|k| k.len() + 64).sum();
        let users = self
            .users
            .values()
            .map(|u| 96 + u.group_ids.len() * 16)
            .sum::<usize>();
        let groups = self
            .groups
            .values()
            .map(|g| 80 + g.parent_ids.len() * 16)
            .sum::<usize>();
        DirectorySize {
            sessions: self.sessions.len(),
            users: self.users.len(),
            groups: self.groups.len(),
            interned_strings: self.interned.len(),
            approx_bytes: strings + sessions + users + groups,
            session_bytes: sessions,
            user_bytes: users,
            group_bytes: groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_schemas::{Group, Session, User};

    #[test]
    fn ended_sessions_join_for_the_grace_period_then_go() {
        let mut d = Directory::new();
        let grace = Duration::from_secs(60);
        d.set_session_grace(grace);
        for s in ["s1", "s2", "s3"] {
            let (k, r) = session(s, "u1");
            d.apply(k, r).unwrap();
        }
        d.apply(DirectoryKey::Session("s1".into()), None).unwrap();
        d.apply(DirectoryKey::Session("s2".into()), None).unwrap();
        // s2 logs in again under the same id before its grace ends: it stays.
        let (k, r) = session("s2", "u2");
        d.apply(k, r).unwrap();
        assert_eq!(
            d.session("s1").map(|s| &*s.user_id),
            Some("u1"),
            "joins within grace"
        );
        assert_eq!(d.sweep_ended(Instant::now()), 0);
        assert_eq!(
            d.sweep_ended(Instant::now() + grace + Duration::from_secs(1)),
            1
        );
        assert!(d.session("s1").is_none());
        assert_eq!(d.session("s2").map(|s| &*s.user_id), Some("u2"));
        assert!(d.session("s3").is_some());
        assert_eq!(d.counts().0, 2);
        // Without a grace period a delete removes at once.
        let mut now = Directory::new();
        let (k, r) = session("s1", "u1");
        now.apply(k, r).unwrap();
        now.apply(DirectoryKey::Session("s1".into()), None).unwrap();
        assert!(now.session("s1").is_none());
    }

    fn group(id: &str, parents: &[&str]) -> (DirectoryKey, Option<DirectoryRecord>) {
        (
            DirectoryKey::Group(id.into()),
            Some(DirectoryRecord {
                entry: DirectoryEntry::Group(Group {
                    id: id.into(),
                    name: format!("{id}-name"),
                    parent_ids: parents.iter().map(|p| p.to_string()).collect(),
                }),
            }),
        )
    }

    fn user(id: &str, groups: &[&str]) -> (DirectoryKey, Option<DirectoryRecord>) {
        (
            DirectoryKey::User(id.into()),
            Some(DirectoryRecord {
                entry: DirectoryEntry::User(User {
                    id: id.into(),
                    login: format!("{id}-login"),
                    name: None,
                    group_ids: groups.iter().map(|g| g.to_string()).collect(),
                }),
            }),
        )
    }

    fn session(id: &str, user: &str) -> (DirectoryKey, Option<DirectoryRecord>) {
        (
            DirectoryKey::Session(id.into()),
            Some(DirectoryRecord {
                entry: DirectoryEntry::Session(Session {
                    id: id.into(),
                    user_id: user.into(),
                    started_at: Timestamp::from_micros(1),
                    ip: Some("10.0.0.1".into()),
                    user_agent: None,
                }),
            }),
        )
    }

    fn load(records: Vec<(DirectoryKey, Option<DirectoryRecord>)>) -> Directory {
        let mut d = Directory::new();
        for (k, r) in records {
            d.apply(k, r).unwrap();
        }
        d
    }

    #[test]
    fn transitive_groups_nearest_first_and_cycle_safe() {
        let d = load(vec![
            group("analysts", &["data"]),
            group("data", &["engineering"]),
            group("engineering", &["everyone", "data"]), // cycle back to data
            group("everyone", &[]),
            user("u1", &["analysts", "unknown-group"]),
            session("s1", "u1"),
        ]);
        let ids: Vec<String> = d.groups_of("u1").into_iter().map(|g| g.id).collect();
        assert_eq!(
            ids,
            vec![
                "analysts",
                "unknown-group",
                "data",
                "engineering",
                "everyone"
            ]
        );
        assert_eq!(d.user("u1").login, "u1-login");
        assert_eq!(d.session("s1").unwrap().user_id.as_ref(), "u1");
        assert_eq!(d.user("nobody").login, "nobody");
    }

    #[test]
    fn deletes_and_key_mismatch() {
        let mut d = load(vec![session("s1", "u1"), user("u1", &[])]);
        d.apply(DirectoryKey::Session("s1".into()), None).unwrap();
        assert!(d.session("s1").is_none());
        let (_, rec) = user("u2", &[]);
        let e = d.apply(DirectoryKey::User("u3".into()), rec).unwrap_err();
        assert!(e.to_string().contains("user:u3"), "{e}");
        assert!(d.apply_bytes(b"nonsense", Some(b"x")).is_err());
        assert!(d.apply_bytes(b"user:u1", Some(b"\xc3\x01garbage")).is_err());
        d.apply_bytes(b"user:u1", Some(b"")).unwrap();
        assert_eq!(d.size().users, 0);
    }

    #[test]
    fn repeated_strings_are_stored_once() {
        let mut records = vec![user("u1", &["g"]), group("g", &[])];
        for i in 0..1000 {
            records.push(session(&format!("s{i}"), "u1"));
        }
        let d = load(records);
        let size = d.size();
        assert_eq!(size.sessions, 1000);
        // u1, u1-login, g, g-name and one IP: not a copy per session.
        assert_eq!(size.interned_strings, 5);
    }
}
