//! Control events: changes to what the pipeline audits, recorded as audit events themselves.
//!
//! A change of a rule, a directory entry or the CloudWatch stream map is published by the tool
//! or service that made it (auditctl, the ingest API, SCIM) as a [`RawAuditEvent`] of a reserved
//! type (`audit.<what>-<change>`), with who made it, from where, and the old and new values.
//! Senders cannot use the reserved types (the ingest API refuses them), and no rule can drop
//! them (the enricher keeps them whatever the rules say), so switching auditing off is itself
//! always on the record.

use crate::event::{ClientInfo, EntityRef, RawAuditEvent, Source};
use crate::ingest::directory::DirectoryWrite;
use crate::redaction::Redactor;
use crate::DirectoryKey;
use crate::{EventType, Timestamp};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Event types beginning with this are the pipeline's own; senders may not use them.
pub const RESERVED_PREFIX: &str = "audit.";

/// One of the pipeline's own reserved types (`audit.…`), from a constant.
pub fn reserved_type(name: &'static str) -> EventType {
    debug_assert!(is_control(name), "{name}");
    EventType::trusted(name.to_string())
}

/// Whether `event_type` is a control event's type: kept whatever the rules say.
pub fn is_control(event_type: &str) -> bool {
    event_type.starts_with(RESERVED_PREFIX)
}

/// What was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// An audit rule (the rules topic).
    Rule,
    /// A session, user or group (the directory and sessions topics).
    Directory,
    /// A mapping of event types to CloudWatch log streams.
    StreamMap,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Rule => "rule",
            Subject::Directory => "directory",
            Subject::StreamMap => "stream-map",
        }
    }

    /// The entity kind the change is filed under in the activity history.
    fn entity_kind(self) -> &'static str {
        match self {
            Subject::Rule => "audit-rule",
            Subject::Directory => "directory-entry",
            Subject::StreamMap => "stream-mapping",
        }
    }
}

/// What was done: set (created or replaced) or deleted; or, looking without changing,
/// explained or tried in a dry run (an administrator probing the rules is on record too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Set,
    Delete,
    Explain,
    DryRun,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::Set => "set",
            Change::Delete => "deleted",
            Change::Explain => "explained",
            Change::DryRun => "dry-run",
        }
    }
}

/// Who made a change, and through what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// The operator's identity: a configured name, the OS user, a service token's name.
    pub id: String,
    /// The tool or service the change went through (`auditctl`, `audit-producer`).
    pub service: String,
    /// How the operator was identified (`os-user`, `configured`, `admin-credential`, `token`).
    pub authenticated_by: String,
    /// Where from: the host auditctl ran on, or the HTTP peer.
    pub host: Option<String>,
    pub ip: Option<String>,
}

impl Operator {
    /// An event this operator did: the operator as its user and client, how they were
    /// identified and from where added to `params`.
    fn event(
        &self,
        event_type: EventType,
        message: String,
        entity: EntityRef,
        mut params: BTreeMap<String, String>,
    ) -> RawAuditEvent {
        params.insert(
            "authenticated_by".to_string(),
            Value::String(self.authenticated_by.clone()).to_string(),
        );
        if let Some(host) = &self.host {
            params.insert("host".to_string(), Value::String(host.clone()).to_string());
        }
        RawAuditEvent {
            event_id: Uuid::new_v4(),
            timestamp: Timestamp::now(),
            event_type,
            source: Source::Server,
            service: self.service.clone(),
            session_id: None,
            user_id: Some(self.id.clone()),
            username: Some(self.id.clone()),
            tenant: None,
            success: true,
            message: Some(message),
            entities: vec![entity],
            params,
            response: None,
            error: None,
            client: self.ip.as_ref().map(|ip| ClientInfo {
                ip: Some(ip.clone()),
                user_agent: None,
            }),
            ingest: None,
            utc_offset_minutes: None,
        }
    }
}

/// One change, before it becomes an event.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlChange {
    pub subject: Subject,
    pub change: Change,
    /// The changed record's key (rule id, `user:u1`, stream-map pattern).
    pub key: String,
    /// `None`: there was none (a creation), or it is not known to the one making the change.
    pub old: Option<Value>,
    pub new: Option<Value>,
    /// Whether `old` is the value before the change (auditctl reads it; an HTTP write does not).
    pub old_known: bool,
}

impl ControlChange {
    /// The event type: `audit.rule-set`, `audit.directory-deleted`, `audit.stream-map-set`...
    pub fn event_type(&self) -> String {
        format!(
            "{RESERVED_PREFIX}{}-{}",
            self.subject.name(),
            self.change.name()
        )
    }

    /// The change as an audit event, with secrets in the old and new values redacted by
    /// `redactor` before it is built: the event goes to a topic, and no secret may.
    pub fn to_event(&self, operator: &Operator, redactor: &Redactor) -> RawAuditEvent {
        let mut params = BTreeMap::new();
        params.insert(
            "key".to_string(),
            Value::String(self.key.clone()).to_string(),
        );
        for (name, value) in [("old", &self.old), ("new", &self.new)] {
            let mut value = value.clone().unwrap_or(Value::Null);
            redactor.redact_value(&mut value);
            params.insert(name.to_string(), value.to_string());
        }
        params.insert("old_known".to_string(), self.old_known.to_string());
        operator.event(
            // Built from fixed names only (a test checks each against the pattern).
            EventType::trusted(self.event_type()),
            format!(
                "{} {} {} by {}",
                self.subject.name(),
                self.key,
                self.change.name(),
                operator.id
            ),
            EntityRef {
                kind: self.subject.entity_kind().to_string(),
                id: self.key.clone(),
                name: None,
                role: Default::default(),
            },
            params,
        )
    }
}

/// The type of an erasure record: `auditctl erase` erased the personal data of these events.
pub const ERASURE_TYPE: &str = "audit.personal-data-erased";

/// Most event ids one erasure record names; a larger erasure is several records.
pub const ERASURE_IDS_PER_RECORD: usize = 500;

/// One erasure record: `operator` erases the personal data of `event_ids` (part `part` of
/// `parts` of erasure `erasure_id`) for `reason`. It names the events, never the person: the
/// record would otherwise keep what it erases.
pub fn erasure_event(
    operator: &Operator,
    erasure_id: Uuid,
    (part, parts): (usize, usize),
    event_ids: &[Uuid],
    reason: &str,
) -> RawAuditEvent {
    let text = |s: &str| Value::String(s.to_string()).to_string();
    let ids: Vec<Value> = event_ids
        .iter()
        .map(|id| Value::String(id.to_string()))
        .collect();
    let mut params = BTreeMap::new();
    params.insert("erasure_id".to_string(), text(&erasure_id.to_string()));
    params.insert("part".to_string(), part.to_string());
    params.insert("parts".to_string(), parts.to_string());
    params.insert("event_ids".to_string(), Value::Array(ids).to_string());
    params.insert("reason".to_string(), text(reason));
    operator.event(
        reserved_type(ERASURE_TYPE),
        format!(
            "personal data of {} events erased by {} (erasure {erasure_id}, part {part} of {parts})",
            event_ids.len(),
            operator.id
        ),
        EntityRef {
            kind: "erasure".to_string(),
            id: erasure_id.to_string(),
            name: None,
            role: Default::default(),
        },
        params,
    )
}

/// The event ids an erasure record names; `None` when `event` is not one.
pub fn erased_ids(event: &RawAuditEvent) -> Option<Vec<Uuid>> {
    if event.event_type.as_str() != ERASURE_TYPE {
        return None;
    }
    serde_json::from_str(event.params.get("event_ids")?).ok()
}

/// The control changes of directory writes. `old` gives an entry's value before the write where
/// the writer knows it (`None` from it: there was none, if `old_known`).
pub fn directory_changes(
    writes: &[DirectoryWrite],
    old_known: bool,
    old: impl Fn(&DirectoryKey) -> Option<Value>,
) -> Vec<ControlChange> {
    writes
        .iter()
        .map(|w| {
            let key = w.key();
            let (change, new) = match w {
                DirectoryWrite::Put(record) => (Change::Set, Some(record.to_json())),
                DirectoryWrite::Delete(_) => (Change::Delete, None),
            };
            ControlChange {
                subject: Subject::Directory,
                change,
                key: key.to_string(),
                old: old(&key),
                new,
                old_known,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn operator() -> Operator {
        Operator {
            id: "alice".into(),
            service: "auditctl".into(),
            authenticated_by: "os-user".into(),
            host: Some("admin-box".into()),
            ip: None,
        }
    }

    #[test]
    fn every_subject_and_change_makes_a_valid_reserved_type() {
        for subject in [Subject::Rule, Subject::Directory, Subject::StreamMap] {
            for change in [Change::Set, Change::Delete, Change::Explain, Change::DryRun] {
                let c = ControlChange {
                    subject,
                    change,
                    key: "k".into(),
                    old: None,
                    new: None,
                    old_known: true,
                };
                let t = c.event_type();
                assert!(EventType::new(t.clone()).is_ok(), "{t}");
                assert!(is_control(&t));
            }
        }
        assert!(!is_control("query-created"));
        assert!(!is_control("auditing"));
    }

    #[test]
    fn the_event_names_who_what_and_both_values_with_secrets_redacted() {
        let change = ControlChange {
            subject: Subject::Directory,
            change: Change::Set,
            key: "session:s1".into(),
            old: Some(json!({"user_id": "u1", "token": "hunter2hunter2"})),
            new: Some(json!({"user_id": "u2", "password": "pa55word!"})),
            old_known: true,
        };
        let e = change.to_event(&operator(), crate::redaction::built_in());
        assert_eq!(e.event_type.as_str(), "audit.directory-set");
        assert_eq!(e.user_id.as_deref(), Some("alice"));
        assert_eq!(e.service, "auditctl");
        assert_eq!(e.entities[0].kind, "directory-entry");
        assert_eq!(e.entities[0].id, "session:s1");
        let old: Value = serde_json::from_str(&e.params["old"]).unwrap();
        let new: Value = serde_json::from_str(&e.params["new"]).unwrap();
        assert_eq!(old["user_id"], "u1");
        assert_eq!(new["user_id"], "u2");
        let text = serde_json::to_string(&e).unwrap();
        assert!(!text.contains("hunter2hunter2"), "{text}");
        assert!(!text.contains("pa55word!"), "{text}");
        assert_eq!(e.params["host"], "\"admin-box\"");
    }

    #[test]
    fn an_erasure_record_names_the_events_and_not_the_person() {
        let ids = [Uuid::new_v4(), Uuid::new_v4()];
        let e = erasure_event(
            &operator(),
            Uuid::new_v4(),
            (1, 1),
            &ids,
            "GDPR art. 17 request 42",
        );
        assert_eq!(e.event_type.as_str(), ERASURE_TYPE);
        assert!(is_control(e.event_type.as_str()));
        assert_eq!(erased_ids(&e), Some(ids.to_vec()));
        assert_eq!(e.user_id.as_deref(), Some("alice"), "the operator");
        let mut other = e.clone();
        other.event_type = EventType::trusted("audit.rule-set".into());
        assert_eq!(erased_ids(&other), None);
    }
}
