//! The users and groups SCIM serves, kept from the compacted directory topic (every instance
//! reads it whole, so any instance answers), plus the membership arithmetic of group writes.
//! Pure: the follower that feeds it lives in `main`.

use super::resource::Kind;
use audit_schemas::{
    AvroRecord, DirectoryEntry, DirectoryKey, DirectoryRecord, DirectoryTopic, Group, User,
};
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Store {
    users: BTreeMap<String, User>,
    groups: BTreeMap<String, Group>,
}

impl Store {
    /// One record of the directory topic (an empty value deletes).
    pub fn apply_bytes(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let key =
            DirectoryKey::from_record_key(DirectoryTopic::Directory, &String::from_utf8_lossy(key))
                .map_err(|e| e.to_string())?;
        match value {
            None | Some([]) => {
                self.delete(&key);
                Ok(())
            }
            Some(bytes) => {
                let record = DirectoryRecord::decode(bytes).map_err(|e| e.to_string())?;
                if record.key() != key {
                    return Err(format!("record under {key} is {}", record.key()));
                }
                self.put(record);
                Ok(())
            }
        }
    }

    pub fn put(&mut self, record: DirectoryRecord) {
        match record.entry {
            DirectoryEntry::User(u) => {
                self.users.insert(u.id.clone(), u);
            }
            DirectoryEntry::Group(g) => {
                self.groups.insert(g.id.clone(), g);
            }
            DirectoryEntry::Session(_) => {}
        }
    }

    pub fn delete(&mut self, key: &DirectoryKey) {
        match key {
            DirectoryKey::User(id) => {
                self.users.remove(id);
            }
            DirectoryKey::Group(id) => {
                self.groups.remove(id);
            }
            DirectoryKey::Session(_) => {}
        }
    }

    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.get(id)
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Another user holding `user_name` (compared case-insensitively, as SCIM's `userName`).
    pub fn user_named(&self, user_name: &str, except: Option<&str>) -> Option<&User> {
        self.users
            .values()
            .find(|u| u.login.eq_ignore_ascii_case(user_name) && Some(u.id.as_str()) != except)
    }

    /// The groups a user is directly in: (id, display name).
    pub fn groups_of(&self, user: &User) -> Vec<(String, String)> {
        user.group_ids
            .iter()
            .map(|g| {
                let name = self.groups.get(g).map_or(g.clone(), |g| g.name.clone());
                (g.clone(), name)
            })
            .collect()
    }

    /// Who the directory says is in a group (for groups not written over SCIM).
    pub fn members_of(&self, group_id: &str) -> Vec<(String, Kind)> {
        let users = self
            .users
            .values()
            .filter(|u| u.group_ids.iter().any(|g| g == group_id))
            .map(|u| (u.id.clone(), Kind::User));
        let groups = self
            .groups
            .values()
            .filter(|g| g.parent_ids.iter().any(|p| p == group_id))
            .map(|g| (g.id.clone(), Kind::Group));
        users.chain(groups).collect()
    }

    /// The user and group records that change when a group's members go from `old` to `new`:
    /// a member user gains or loses the group in its `group_ids`, a member group in its
    /// `parent_ids`. Ids the directory does not know are left alone.
    pub fn membership_changes(
        &self,
        group_id: &str,
        old: &[String],
        new: &[String],
    ) -> Vec<DirectoryRecord> {
        let mut out = Vec::new();
        let added = new.iter().filter(|id| !old.contains(id));
        let removed = old.iter().filter(|id| !new.contains(id));
        for (id, join) in added
            .map(|id| (id, true))
            .chain(removed.map(|id| (id, false)))
        {
            if let Some(u) = self.users.get(id) {
                let mut u = u.clone();
                if edit(&mut u.group_ids, group_id, join) {
                    out.push(DirectoryRecord {
                        entry: DirectoryEntry::User(u),
                    });
                }
            } else if let Some(g) = self.groups.get(id).filter(|g| g.id != group_id) {
                let mut g = g.clone();
                if edit(&mut g.parent_ids, group_id, join) {
                    out.push(DirectoryRecord {
                        entry: DirectoryEntry::Group(g),
                    });
                }
            }
        }
        out
    }
}

/// Adds or removes `id` in `ids`; whether anything changed.
fn edit(ids: &mut Vec<String>, id: &str, join: bool) -> bool {
    let present = ids.iter().any(|i| i == id);
    match (join, present) {
        (true, false) => {
            ids.push(id.to_string());
            true
        }
        (false, true) => {
            ids.retain(|i| i != id);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, groups: &[&str]) -> DirectoryRecord {
        DirectoryRecord {
            entry: DirectoryEntry::User(User {
                id: id.into(),
                login: format!("{id}@x"),
                name: None,
                group_ids: groups.iter().map(|g| g.to_string()).collect(),
                scim: None,
            }),
        }
    }

    #[test]
    fn membership_changes_touch_only_what_moved() {
        let mut s = Store::default();
        s.put(user("u1", &["g"]));
        s.put(user("u2", &[]));
        s.put(DirectoryRecord {
            entry: DirectoryEntry::Group(Group {
                id: "sub".into(),
                name: "sub".into(),
                parent_ids: vec![],
                scim: None,
            }),
        });
        let old = vec!["u1".to_string(), "ghost".to_string()];
        let new = vec!["u2".to_string(), "sub".to_string(), "ghost".to_string()];
        let changes = s.membership_changes("g", &old, &new);
        let keys: Vec<String> = changes.iter().map(|r| r.key().to_string()).collect();
        assert_eq!(keys, ["user:u2", "group:sub", "user:u1"]);
        for c in changes {
            s.put(c);
        }
        assert_eq!(s.user("u1").unwrap().group_ids, Vec::<String>::new());
        assert_eq!(s.user("u2").unwrap().group_ids, ["g"]);
        assert_eq!(s.group("sub").unwrap().parent_ids, ["g"]);
        assert_eq!(s.members_of("g").len(), 2);
        assert!(s.user_named("U2@X", None).is_some());
        assert!(s.user_named("u2@x", Some("u2")).is_none());
    }
}
