//! Users and groups as an in-memory table, built from the compacted `audit.directory` topic
//! (every instance holds all of it; sessions are apart, in [`crate::sessions`]).
//!
//! Pure data structure: [`Directory::apply`] takes each record (an empty value deletes its key),
//! lookups answer the join. Strings that repeat across entries (group ids and names) are
//! interned. Group membership is transitive through parent groups; cycles are harmless.

use audit_schemas::{
    AvroRecord, DirectoryEntry, DirectoryKey, DirectoryRecord, DirectoryTopic, GroupRef,
    ResolvedUser,
};
// foldhash: several lookups per event are the join's main cost, and SipHash is slower than
// needed; foldhash keeps per-process random seeds. Keys are inserted only from the
// administrator-written directory topic, so hash flooding by event senders is not possible.
use foldhash::{HashMap, HashSet};
use std::sync::Arc;

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
    users: HashMap<Arc<str>, UserEntry>,
    groups: HashMap<Arc<str>, GroupEntry>,
    deletes_since_compaction: usize,
}

/// Sizes for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectorySize {
    pub users: usize,
    pub groups: usize,
    pub interned_strings: usize,
    /// Rough heap bytes held, for the memory gauge.
    pub approx_bytes: usize,
    /// Rough bytes per kind: entries and the strings they alone hold (interned strings shared
    /// by several entries are counted in `approx_bytes` only).
    pub user_bytes: usize,
    pub group_bytes: usize,
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
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
        let key = DirectoryKey::from_record_key(
            DirectoryTopic::Directory,
            &String::from_utf8_lossy(key),
        )?;
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
            // `from_record_key` refuses session keys, and the key matched the record.
            DirectoryEntry::Session(_) => {
                return Err(DirectoryError::KeyMismatch {
                    key: key.to_string(),
                    found: "session, which belongs on the sessions topic".to_string(),
                })
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
            DirectoryKey::Session(_) => false,
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

    /// Users and groups held: cheap, for a gauge updated on every record.
    pub fn counts(&self) -> (usize, usize) {
        (self.users.len(), self.groups.len())
    }

    /// Entry counts and rough heap bytes; walks every entry, so callers run it on a timer.
    pub fn size(&self) -> DirectorySize {
        let strings: usize = self.interned.iter().map(|s| s.len() + 16).sum();
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
            users: self.users.len(),
            groups: self.groups.len(),
            interned_strings: self.interned.len(),
            approx_bytes: strings + users + groups,
            user_bytes: users,
            group_bytes: groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_schemas::{Group, User};

    fn group(id: &str, parents: &[&str]) -> (DirectoryKey, Option<DirectoryRecord>) {
        (
            DirectoryKey::Group(id.into()),
            Some(DirectoryRecord {
                entry: DirectoryEntry::Group(Group {
                    id: id.into(),
                    name: format!("{id}-name"),
                    parent_ids: parents.iter().map(|p| p.to_string()).collect(),
                    scim: None,
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
                    scim: None,
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
        assert_eq!(d.user("nobody").login, "nobody");
    }

    #[test]
    fn deletes_and_key_mismatch() {
        let mut d = load(vec![user("u1", &[])]);
        // Sessions belong on the sessions topic.
        assert!(d.apply_bytes(b"session:s1", Some(b"x")).is_err());
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
        let mut records = vec![group("g", &[])];
        for i in 0..1000 {
            records.push(user(&format!("u{i}"), &["g"]));
        }
        let d = load(records);
        let size = d.size();
        assert_eq!(size.users, 1000);
        // g and g-name once, then each user's id and login: not a copy of g per user.
        assert_eq!(size.interned_strings, 2 + 2 * 1000);
    }
}
