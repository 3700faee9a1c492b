//! Directory writes sent by the platform (`PUT`/`DELETE /v1/directory/{kind}/{id}` and bulk
//! NDJSON on `POST /v1/directory`), validated like events: every field checked, unknown fields
//! refused, each error named by its JSON pointer.
//!
//! Bodies, by kind (the id comes from the path, or from `id` on a bulk line):
//!
//! - session: `user_id` (required), `started_at` (RFC 3339, default now), `ip`, `user_agent`,
//!   `last_activity_at` (RFC 3339: activity the platform saw), `ended_at` (RFC 3339: logout; the
//!   session keeps joining for the enricher's grace period)
//! - user: `login` (required), `name`, `group_ids` (array of group ids)
//! - group: `name` (required), `parent_ids` (array of group ids)
//!
//! A bulk line is `{"op": "put" | "delete", "kind": "session" | "user" | "group", "id": ...}`
//! plus, for `put`, the kind's fields.

use super::{err, expected, kind, FieldError, Validator, MAX_ID_LEN, MAX_TEXT_LEN};
use crate::{DirectoryEntry, DirectoryKey, DirectoryRecord, Group, Session, Timestamp, User};
use serde_json::{Map, Value};

/// At most this many group ids on one user or parent ids on one group.
pub const MAX_GROUP_IDS: usize = 1_000;

/// The kinds of directory entry, as named in paths (`sessions`) and bulk lines (`session`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session,
    User,
    Group,
}

impl Kind {
    /// From a path segment: `sessions`, `users`, `groups` (the singular is accepted too).
    pub fn from_path(segment: &str) -> Option<Self> {
        match segment {
            "sessions" | "session" => Some(Self::Session),
            "users" | "user" => Some(Self::User),
            "groups" | "group" => Some(Self::Group),
            _ => None,
        }
    }

    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Session => &[
                "id",
                "user_id",
                "started_at",
                "ip",
                "user_agent",
                "last_activity_at",
                "ended_at",
            ],
            Kind::User => &["id", "login", "name", "group_ids"],
            Kind::Group => &["id", "name", "parent_ids"],
        }
    }

    fn key(self, id: String) -> DirectoryKey {
        match self {
            Kind::Session => DirectoryKey::Session(id),
            Kind::User => DirectoryKey::User(id),
            Kind::Group => DirectoryKey::Group(id),
        }
    }
}

/// One validated change of the directory.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectoryWrite {
    Put(DirectoryRecord),
    Delete(DirectoryKey),
}

impl DirectoryWrite {
    /// The compaction key the write is published under.
    pub fn key(&self) -> DirectoryKey {
        match self {
            DirectoryWrite::Put(record) => record.key(),
            DirectoryWrite::Delete(key) => key.clone(),
        }
    }

    /// The record as published: its topic, its record key, and its encoded value (`None`, a
    /// tombstone, for a delete).
    pub fn encoded(&self) -> Result<EncodedWrite, crate::EncodeError> {
        use crate::AvroRecord;
        let value = match self {
            DirectoryWrite::Put(record) => Some(record.encode()?),
            DirectoryWrite::Delete(_) => None,
        };
        let key = self.key();
        Ok(EncodedWrite {
            topic: key.topic(),
            key: key.record_key(),
            value,
        })
    }
}

/// A directory write ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedWrite {
    pub topic: crate::DirectoryTopic,
    pub key: String,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
}

/// `PUT /v1/directory/{kind}/{id}`: the entry in `value`; an `id` in the body must match.
pub fn put_from_json(
    kind: Kind,
    id: &str,
    value: Value,
    now: Timestamp,
) -> Result<DirectoryRecord, Vec<FieldError>> {
    let Value::Object(obj) = value else {
        return Err(vec![err(
            "",
            format!("expected a JSON object, got {}", super::kind(&value)),
        )]);
    };
    let mut v = Validator::default();
    let id = checked_id(&mut v, "/id", id);
    let record = entry(&mut v, kind, id, obj, now);
    match record {
        Some(r) if v.errors.is_empty() => Ok(r),
        _ => Err(v.errors),
    }
}

/// `DELETE /v1/directory/{kind}/{id}`.
pub fn delete(kind: Kind, id: &str) -> Result<DirectoryKey, Vec<FieldError>> {
    let mut v = Validator::default();
    match checked_id(&mut v, "/id", id) {
        Some(id) if v.errors.is_empty() => Ok(kind.key(id)),
        _ => Err(v.errors),
    }
}

/// One line of a bulk request.
pub fn line_from_json(value: Value, now: Timestamp) -> Result<DirectoryWrite, Vec<FieldError>> {
    let Value::Object(mut obj) = value else {
        return Err(vec![err(
            "",
            format!("expected a JSON object, got {}", kind(&value)),
        )]);
    };
    let mut v = Validator::default();
    let op = match obj.remove("op") {
        Some(Value::String(op)) if op == "put" || op == "delete" => Some(op),
        None | Some(Value::Null) => v.fail("/op", "required: put or delete".to_string()),
        Some(other) => v.fail("/op", expected("\"put\" or \"delete\"", &other)),
    };
    let entry_kind = match obj.remove("kind") {
        Some(Value::String(k)) => match Kind::from_path(&k) {
            Some(k) => Some(k),
            None => v.fail("/kind", format!("{k:?} is not session, user or group")),
        },
        None | Some(Value::Null) => v.fail("/kind", "required: session, user or group".to_string()),
        Some(other) => v.fail("/kind", expected("session, user or group", &other)),
    };
    let id = match obj.get("id") {
        Some(Value::String(id)) => checked_id(&mut v, "/id", &id.clone()),
        None | Some(Value::Null) => v.fail("/id", "required".to_string()),
        Some(other) => {
            let reason = expected("a string", other);
            v.fail("/id", reason)
        }
    };
    let (Some(op), Some(entry_kind), Some(id)) = (op, entry_kind, id) else {
        return Err(v.errors);
    };
    if op == "delete" {
        obj.remove("id");
        for key in obj.keys() {
            v.push(
                &format!("/{}", super::escape(key)),
                "unknown field; a delete line has op, kind and id only".to_string(),
            );
        }
        return if v.errors.is_empty() {
            Ok(DirectoryWrite::Delete(entry_kind.key(id)))
        } else {
            Err(v.errors)
        };
    }
    match entry(&mut v, entry_kind, Some(id), obj, now) {
        Some(r) if v.errors.is_empty() => Ok(DirectoryWrite::Put(r)),
        _ => Err(v.errors),
    }
}

fn checked_id(v: &mut Validator, path: &str, id: &str) -> Option<String> {
    v.string_at(path, Some(Value::String(id.to_string())), MAX_ID_LEN, true)
        .flatten()
}

fn entry(
    v: &mut Validator,
    kind: Kind,
    id: Option<String>,
    mut obj: Map<String, Value>,
    now: Timestamp,
) -> Option<DirectoryRecord> {
    for key in obj.keys() {
        if !kind.fields().contains(&key.as_str()) {
            v.push(
                &format!("/{}", super::escape(key)),
                format!(
                    "unknown field; expected one of {}",
                    kind.fields().join(", ")
                ),
            );
        }
    }
    if let Some(body_id) = obj.remove("id") {
        if body_id.as_str() != id.as_deref() && !body_id.is_null() {
            v.push("/id", "does not match the id in the path".to_string());
        }
    }
    let entry = match kind {
        Kind::Session => {
            let user_id = required(v, &mut obj, "user_id");
            let started_at = match obj.remove("started_at") {
                None | Some(Value::Null) => Some(now),
                Some(Value::String(s)) => match Timestamp::parse_rfc3339(&s) {
                    Ok(t) => Some(t),
                    Err(e) => v.fail("/started_at", e.to_string()),
                },
                Some(other) => v.fail("/started_at", expected("an RFC 3339 string", &other)),
            };
            let ip = v.opt_string(&mut obj, "ip", MAX_ID_LEN, true);
            let user_agent = v.opt_string(&mut obj, "user_agent", MAX_TEXT_LEN.min(4096), false);
            let last_activity_at = optional_time(v, &mut obj, "last_activity_at");
            let ended_at = optional_time(v, &mut obj, "ended_at");
            DirectoryEntry::Session(Session {
                id: id?,
                user_id: user_id?,
                started_at: started_at?,
                ip: ip?,
                user_agent: user_agent?,
                last_activity_at: last_activity_at?,
                ended_at: ended_at?,
            })
        }
        Kind::User => {
            let login = required(v, &mut obj, "login");
            let name = v.opt_string(&mut obj, "name", MAX_ID_LEN, false);
            let group_ids = ids(v, &mut obj, "group_ids");
            DirectoryEntry::User(User {
                id: id?,
                login: login?,
                name: name?,
                group_ids: group_ids?,
                scim: None,
            })
        }
        Kind::Group => {
            let name = required(v, &mut obj, "name");
            let parent_ids = ids(v, &mut obj, "parent_ids");
            DirectoryEntry::Group(Group {
                id: id?,
                name: name?,
                parent_ids: parent_ids?,
                scim: None,
            })
        }
    };
    Some(DirectoryRecord { entry })
}

/// An optional RFC 3339 time: `Some(None)` when absent or null, `None` after an error.
fn optional_time(
    v: &mut Validator,
    obj: &mut Map<String, Value>,
    field: &str,
) -> Option<Option<Timestamp>> {
    match obj.remove(field) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => match Timestamp::parse_rfc3339(&s) {
            Ok(t) => Some(Some(t)),
            Err(e) => v.fail(&format!("/{field}"), e.to_string()),
        },
        Some(other) => v.fail(&format!("/{field}"), expected("an RFC 3339 string", &other)),
    }
}

fn required(v: &mut Validator, obj: &mut Map<String, Value>, field: &str) -> Option<String> {
    match v.opt_string(obj, field, MAX_ID_LEN, true)? {
        Some(s) => Some(s),
        None => v.fail(&format!("/{field}"), "required".to_string()),
    }
}

fn ids(v: &mut Validator, obj: &mut Map<String, Value>, field: &str) -> Option<Vec<String>> {
    let items = match obj.remove(field) {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return v.fail(&format!("/{field}"), expected("an array of ids", &other)),
    };
    if items.len() > MAX_GROUP_IDS {
        return v.fail(
            &format!("/{field}"),
            format!(
                "has {} ids; at most {MAX_GROUP_IDS} are allowed",
                items.len()
            ),
        );
    }
    let before = v.errors.len();
    let out: Vec<String> = items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| {
            v.string_at(&format!("/{field}/{i}"), Some(item), MAX_ID_LEN, true)
                .flatten()
        })
        .collect();
    (v.errors.len() == before).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        Timestamp::from_micros(1_000_000)
    }

    #[test]
    fn puts_each_kind() {
        let s = put_from_json(
            Kind::Session,
            "s-1",
            json!({"user_id": "u-1", "ip": "10.0.0.1"}),
            now(),
        )
        .unwrap();
        assert_eq!(s.key(), DirectoryKey::Session("s-1".into()));
        let DirectoryEntry::Session(session) = s.entry else {
            panic!()
        };
        assert_eq!(session.started_at, now());
        let u = put_from_json(
            Kind::User,
            "u-1",
            json!({"login": "ann", "group_ids": ["g1"]}),
            now(),
        )
        .unwrap();
        assert_eq!(u.key(), DirectoryKey::User("u-1".into()));
        let g = put_from_json(
            Kind::Group,
            "g1",
            json!({"name": "admins", "id": "g1"}),
            now(),
        )
        .unwrap();
        assert_eq!(g.key(), DirectoryKey::Group("g1".into()));
    }

    #[test]
    fn bad_bodies_name_every_bad_field() {
        let errors = put_from_json(
            Kind::User,
            "u-1",
            json!({"login": 5, "group_ids": ["ok", 7, ""], "admin": true, "id": "u-2"}),
            now(),
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for path in ["/login", "/group_ids/1", "/group_ids/2", "/admin", "/id"] {
            assert!(paths.contains(&path), "{path} missing from {errors:?}");
        }
        assert!(put_from_json(Kind::Session, "s", json!({}), now()).is_err());
        assert!(put_from_json(Kind::Group, "g\u{0}", json!({"name": "x"}), now()).is_err());
        assert!(put_from_json(Kind::Group, "g", json!([1]), now()).is_err());
        assert!(delete(Kind::User, &"x".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn bulk_lines_put_and_delete() {
        let put = line_from_json(
            json!({"op": "put", "kind": "group", "id": "g1", "name": "admins"}),
            now(),
        )
        .unwrap();
        assert_eq!(put.key(), DirectoryKey::Group("g1".into()));
        let delete = line_from_json(
            json!({"op": "delete", "kind": "session", "id": "s1"}),
            now(),
        )
        .unwrap();
        assert_eq!(
            delete,
            DirectoryWrite::Delete(DirectoryKey::Session("s1".into()))
        );
        for bad in [
            json!({"op": "upsert", "kind": "group", "id": "g", "name": "x"}),
            json!({"op": "put", "kind": "team", "id": "g"}),
            json!({"op": "put", "kind": "group", "name": "x"}),
            json!({"op": "delete", "kind": "user", "id": "u", "login": "x"}),
            json!("put"),
        ] {
            assert!(line_from_json(bad.clone(), now()).is_err(), "{bad}");
        }
    }
}
