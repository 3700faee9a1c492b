//! The directory the enricher joins against: users and groups on the compacted
//! `audit.directory` topic under keys `user:<id>` and `group:<id>`, and sessions on the compacted
//! `audit.sessions` topic under their own id.
//!
//! Sessions are keyed like the raw events (by session id) on a topic with the raw topic's
//! partition count, so the session of an event on raw partition p is on sessions partition p:
//! each enricher instance holds only its own partitions' sessions. Users and groups are few and
//! every instance holds them all. `session:<id>` remains the operator-facing name of a session
//! (auditctl, bulk lines) even though the topic key is the bare id.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub started_at: Timestamp,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The latest activity the platform reported; idle lifetimes count from here.
    #[serde(default)]
    pub last_activity_at: Option<Timestamp>,
    /// Logout: the session still joins for the enricher's grace period after it.
    #[serde(default)]
    pub ended_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub login: String,
    pub name: Option<String>,
    pub group_ids: Vec<String>,
    /// The SCIM resource (JSON) when an identity provider provisioned the user.
    #[serde(default)]
    pub scim: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    /// Members of this group are members of its parents too.
    pub parent_ids: Vec<String>,
    /// The SCIM resource (JSON) when an identity provider provisioned the group.
    #[serde(default)]
    pub scim: Option<String>,
}

/// One directory entry; the Avro union `[Session, User, Group]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryEntry {
    Session(Session),
    User(User),
    Group(Group),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryRecord {
    pub entry: DirectoryEntry,
}

impl DirectoryRecord {
    /// The compaction key this record must be published under.
    pub fn key(&self) -> DirectoryKey {
        match &self.entry {
            DirectoryEntry::Session(s) => DirectoryKey::Session(s.id.clone()),
            DirectoryEntry::User(u) => DirectoryKey::User(u.id.clone()),
            DirectoryEntry::Group(g) => DirectoryKey::Group(g.id.clone()),
        }
    }

    /// The entry as operators read it (auditctl, control events): key and kind first, then the
    /// entry's fields, times in RFC 3339.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let (kind, fields) = match &self.entry {
            DirectoryEntry::Session(s) => (
                "session",
                json!({"id": s.id, "user_id": s.user_id, "started_at": s.started_at.to_rfc3339(),
                    "ip": s.ip, "user_agent": s.user_agent,
                    "last_activity_at": s.last_activity_at.map(|t| t.to_rfc3339()),
                    "ended_at": s.ended_at.map(|t| t.to_rfc3339())}),
            ),
            DirectoryEntry::User(u) => (
                "user",
                json!({"id": u.id, "login": u.login, "name": u.name, "group_ids": u.group_ids}),
            ),
            DirectoryEntry::Group(g) => (
                "group",
                json!({"id": g.id, "name": g.name, "parent_ids": g.parent_ids}),
            ),
        };
        let mut out = json!({"key": self.key().to_string(), "kind": kind});
        if let (Some(out), Some(fields)) = (out.as_object_mut(), fields.as_object()) {
            out.extend(fields.clone());
        }
        out
    }
}

/// Which compacted topic an entry lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirectoryTopic {
    /// `audit.directory`: users and groups, read whole by every enricher.
    Directory,
    /// `audit.sessions`: sessions, partitioned like `audit.raw`.
    Sessions,
}

/// An entry's name: `session:<id>`, `user:<id>` or `group:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DirectoryKey {
    Session(String),
    User(String),
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("directory key {0:?} is not session:<id>, user:<id> or group:<id>")]
pub struct DirectoryKeyError(pub String);

impl DirectoryKey {
    /// The topic the entry is published on.
    pub fn topic(&self) -> DirectoryTopic {
        match self {
            DirectoryKey::Session(_) => DirectoryTopic::Sessions,
            DirectoryKey::User(_) | DirectoryKey::Group(_) => DirectoryTopic::Directory,
        }
    }

    /// The Kafka record key: a session's bare id (the raw events' key, so both land on the same
    /// partition number), else `kind:id`.
    pub fn record_key(&self) -> String {
        match self {
            DirectoryKey::Session(id) => id.clone(),
            other => other.to_string(),
        }
    }

    /// The key of a record read from `topic`.
    pub fn from_record_key(topic: DirectoryTopic, key: &str) -> Result<Self, DirectoryKeyError> {
        match topic {
            DirectoryTopic::Sessions if key.is_empty() => Err(DirectoryKeyError(key.to_string())),
            DirectoryTopic::Sessions => Ok(DirectoryKey::Session(key.to_string())),
            DirectoryTopic::Directory => match Self::parse(key)? {
                DirectoryKey::Session(_) => Err(DirectoryKeyError(format!(
                    "{key} (sessions live on the sessions topic, keyed by their id)"
                ))),
                other => Ok(other),
            },
        }
    }

    pub fn parse(key: &str) -> Result<Self, DirectoryKeyError> {
        let bad = || DirectoryKeyError(key.to_string());
        let (kind, id) = key.split_once(':').ok_or_else(bad)?;
        if id.is_empty() {
            return Err(bad());
        }
        match kind {
            "session" => Ok(Self::Session(id.to_string())),
            "user" => Ok(Self::User(id.to_string())),
            "group" => Ok(Self::Group(id.to_string())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for DirectoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectoryKey::Session(id) => write!(f, "session:{id}"),
            DirectoryKey::User(id) => write!(f, "user:{id}"),
            DirectoryKey::Group(id) => write!(f, "group:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for key in ["session:s-1", "user:u:with:colons", "group:g"] {
            assert_eq!(DirectoryKey::parse(key).unwrap().to_string(), key);
        }
        assert!(DirectoryKey::parse("sess:1").is_err());
        assert!(DirectoryKey::parse("user:").is_err());
        assert!(DirectoryKey::parse("user").is_err());
    }

    #[test]
    fn sessions_are_keyed_by_their_id_on_their_own_topic() {
        let s = DirectoryKey::Session("s-1".into());
        assert_eq!(s.topic(), DirectoryTopic::Sessions);
        assert_eq!(s.record_key(), "s-1");
        assert_eq!(
            DirectoryKey::from_record_key(DirectoryTopic::Sessions, "s-1").unwrap(),
            s
        );
        let u = DirectoryKey::User("u".into());
        assert_eq!(u.record_key(), "user:u");
        assert_eq!(
            DirectoryKey::from_record_key(DirectoryTopic::Directory, "user:u").unwrap(),
            u
        );
        assert!(DirectoryKey::from_record_key(DirectoryTopic::Directory, "session:s").is_err());
        assert!(DirectoryKey::from_record_key(DirectoryTopic::Sessions, "").is_err());
    }
}
