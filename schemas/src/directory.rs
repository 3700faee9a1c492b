//! The directory the enricher joins against: sessions, users and groups, carried on the
//! compacted `audit.directory` topic under keys `session:<id>`, `user:<id>` and `group:<id>`.

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub login: String,
    pub name: Option<String>,
    pub group_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    /// Members of this group are members of its parents too.
    pub parent_ids: Vec<String>,
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
}

/// A parsed `audit.directory` key.
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
}
