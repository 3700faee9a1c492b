//! One line of a server product's JSON audit log (`lae-audit.log`, seed
//! `003_5c27bf3fc2b6b713.txt`) -> [`RawAuditEvent`].
//!
//! ```text
//! {"timestamp":"2018-11-05T09:57:38.705Z","auditCode":"authenticationSuccess","userId":"_system_",
//!  "username":"system","tenantName":"defaultTenant","success":true,
//!  "arguments":{"remoteHost":null,"username":"User1234"},"response":"User1234"}
//! ```
//!
//! Mapping: `auditCode` -> `event_type`, `userId`, `username`, `tenantName` -> `tenant`,
//! `success`, each key of `arguments` -> one param, `response`, `error {errorCode, errorMessage}`;
//! entities are the objects named by `object:…` locators and `//…#kind` resource paths anywhere
//! in arguments and response: each path's last segment the target, the earlier ones its
//! containers. The person a login or credential entry is about is a `SUBJECT` entity (the log
//! names the system user), the schedule that started a run an `ACTOR`, a schedule's data flow
//! (`dataflowId`) and a node's audit log file (`auditLog`) `LINKED`. The UTC offset the time was
//! written with is kept (`utc_offset_minutes`).
//!
//! Quirks of real lines this accepts: duplicate keys (the last wins, as in most JSON readers),
//! 7-digit second fractions (truncated to microseconds), any UTC offset, spaces after colons,
//! node locators ending in `~child:`, and a line whose final string was never closed (the
//! product wrote `…could not be resolved.}}`): that one is repaired by closing the string, and the
//! event says so in its `_repaired` param rather than silently differing from the file.

use crate::redaction::Redactor;
use crate::{
    locator, EntityRef, EntityRole, ErrorInfo, EventType, RawAuditEvent, Source, Timestamp,
};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// The param that records a repair of the line's JSON.
pub const REPAIRED_PARAM: &str = "_repaired";

/// Why a line is not an audit-log entry.
#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    #[error("line is empty")]
    Empty,
    #[error("line is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("line is JSON but not an object")]
    NotObject,
    #[error("field {0:?} is missing")]
    Missing(&'static str),
    #[error("field {field:?} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Converts one line. `event_id` is the caller's: a tailer derives it from the line's position so
/// that a re-read line gets the same id and deduplicates downstream.
pub fn convert_line(
    line: &str,
    service: &str,
    event_id: Uuid,
    redactor: &Redactor,
) -> Result<RawAuditEvent, AuditLogError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(AuditLogError::Empty);
    }
    let (value, repair) = parse_lenient(line)?;
    let Value::Object(mut obj) = value else {
        return Err(AuditLogError::NotObject);
    };

    let (timestamp, utc_offset) = match obj.remove("timestamp") {
        Some(Value::String(s)) => {
            Timestamp::parse_rfc3339_with_offset(&s).map_err(|e| invalid("timestamp", e))?
        }
        Some(_) => return Err(invalid("timestamp", "not a string")),
        None => return Err(AuditLogError::Missing("timestamp")),
    };
    let event_type = match obj.remove("auditCode") {
        Some(Value::String(s)) => EventType::new(s.trim()).map_err(|e| invalid("auditCode", e))?,
        Some(_) => return Err(invalid("auditCode", "not a string")),
        None => return Err(AuditLogError::Missing("auditCode")),
    };
    let user_id = opt_string(&mut obj, "userId")?;
    let username = opt_string(&mut obj, "username")?;
    let tenant = opt_string(&mut obj, "tenantName")?;
    // Every real line carries `success`; an entry without one records an action whose outcome the
    // product did not report, which is taken as success like the product's own UI does.
    let success = match obj.remove("success") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(invalid("success", "not a boolean")),
    };
    let error = match obj.remove("error") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut e)) => Some(ErrorInfo {
            code: take_text(&mut e, "errorCode"),
            message: take_text(&mut e, "errorMessage"),
            stack_trace: take_text(&mut e, "stackTrace"),
            fingerprint: None,
        }),
        Some(other) => Some(ErrorInfo {
            code: None,
            message: Some(text_of(other)),
            stack_trace: None,
            fingerprint: None,
        }),
    };

    let mut arguments = obj.remove("arguments");
    let mut response = obj.remove("response");
    if let Some(a) = arguments.as_mut() {
        redactor.redact_value(a);
    }
    if let Some(r) = response.as_mut() {
        redactor.redact_value(r);
    }

    let mut entities = Entities::default();
    for v in arguments.iter().chain(response.iter()) {
        entities.collect(v, None);
    }
    if let Some(args) = arguments.as_ref() {
        entities.people(
            event_type.as_str(),
            args,
            user_id.as_deref(),
            username.as_deref(),
        );
    }
    let entities = entities.into_vec();

    let mut params = BTreeMap::new();
    match arguments {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            params.extend(map.into_iter().map(|(k, v)| (k, v.to_string())));
        }
        Some(other) => {
            params.insert("arguments".to_string(), other.to_string());
        }
    }
    // Fields this converter does not know are kept, not dropped: an audit record must not lose
    // what the product wrote.
    for (k, mut v) in obj {
        redactor.redact_value(&mut v);
        params.entry(k).or_insert_with(|| v.to_string());
    }
    if let Some(note) = repair {
        params.insert(REPAIRED_PARAM.to_string(), Value::from(note).to_string());
    }

    let mut event = RawAuditEvent {
        event_id,
        timestamp,
        event_type,
        source: Source::Server,
        service: service.to_string(),
        session_id: None,
        user_id,
        username,
        tenant,
        success,
        message: None,
        entities,
        params,
        response: response.map(|r| r.to_string()),
        error,
        client: None,
        ingest: None,
        utc_offset_minutes: Some(utc_offset),
    };
    redactor.redact_event(&mut event);
    Ok(event)
}

/// Parses JSON; if the text ends inside a string, closes that string before the trailing braces
/// and reports the repair.
fn parse_lenient(line: &str) -> Result<(Value, Option<&'static str>), serde_json::Error> {
    let first = match serde_json::from_str(line) {
        Ok(v) => return Ok((v, None)),
        Err(e) => e,
    };
    if first.classify() != serde_json::error::Category::Eof {
        return Err(first);
    }
    let body = line.trim_end_matches('}');
    let braces = line.len() - body.len();
    for closing in (1..=braces).rev() {
        let candidate = format!("{}\"{}", &line[..line.len() - closing], "}".repeat(closing));
        if let Ok(v) = serde_json::from_str(&candidate) {
            return Ok((
                v,
                Some("closed a string left unterminated at the end of the line"),
            ));
        }
    }
    Err(first)
}

/// The entities of one line, in the order met, each `(kind, id)` once per role; an entity that
/// is a target in one locator and a container in another is a container.
#[derive(Default)]
struct Entities {
    list: Vec<EntityRef>,
    index: HashMap<(String, String, EntityRole), usize>,
}

/// Most entities one line yields; the rest are left out (the params still hold them).
const MAX_ENTITIES: usize = 256;

impl Entities {
    fn push(&mut self, e: EntityRef) {
        let placed = |r: EntityRole| matches!(r, EntityRole::Target | EntityRole::Container);
        if placed(e.role) {
            let other = match e.role {
                EntityRole::Target => EntityRole::Container,
                _ => EntityRole::Target,
            };
            let key = (e.kind.clone(), e.id.clone(), other);
            if let Some(&i) = self.index.get(&key) {
                if e.role == EntityRole::Container {
                    self.list[i].role = EntityRole::Container;
                    self.index.remove(&key);
                    self.index
                        .insert((e.kind.clone(), e.id.clone(), EntityRole::Container), i);
                }
                return;
            }
        }
        let key = (e.kind.clone(), e.id.clone(), e.role);
        if self.list.len() >= MAX_ENTITIES || self.index.contains_key(&key) {
            return;
        }
        self.index.insert(key, self.list.len());
        self.list.push(e);
    }

    /// Locators and resource paths anywhere in `v` (keys included); `key` is the argument name
    /// `v` is the value of.
    fn collect(&mut self, v: &Value, key: Option<&str>) {
        match v {
            Value::String(s) => self.text(s, key),
            Value::Array(items) => items.iter().for_each(|i| self.collect(i, key)),
            Value::Object(map) => {
                for (k, v) in map {
                    self.text(k, None);
                    match (k.as_str(), v) {
                        // A schedule names the data flow it runs by id alone.
                        ("dataflowId", Value::String(id)) if !id.is_empty() => {
                            self.push(EntityRef {
                                role: EntityRole::Linked,
                                ..EntityRef::target("graph", id.as_str(), None)
                            });
                        }
                        // A node's file accesses are in the node audit log this names.
                        ("auditLog", Value::String(path)) => {
                            if let Some(e) = node_log_entity(path, EntityRole::Linked) {
                                self.push(e);
                            }
                        }
                        _ => self.collect(v, Some(k)),
                    }
                }
            }
            _ => {}
        }
    }

    fn text(&mut self, text: &str, key: Option<&str>) {
        let found = locator::entities(text).or_else(|| locator::resource_path(text));
        for mut e in found.into_iter().flatten() {
            // `containerLocator` names where the target was made, not what was acted on.
            if key == Some("containerLocator") {
                e.role = EntityRole::Container;
            }
            self.push(e);
        }
    }

    /// The person a login or credential entry is about, and the schedule that started a run:
    /// the log names the system user (or the schedule's owner) as the user.
    fn people(&mut self, code: &str, args: &Value, user_id: Option<&str>, username: Option<&str>) {
        let arg = |k: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if is_login(code) {
            if let Some(login) = arg("username") {
                self.push(EntityRef {
                    role: EntityRole::Subject,
                    ..EntityRef::target("user", login, Some(login.to_string()))
                });
            }
        }
        if code.starts_with("userCredentialService.") {
            if let Some(user) = arg("userLocator").and_then(locator::entity) {
                let name = (user_id == Some(user.id.as_str()))
                    .then(|| username.map(str::to_string))
                    .flatten();
                self.push(EntityRef {
                    role: EntityRole::Subject,
                    name,
                    ..user
                });
            }
        }
        if let Some(schedule) = arg("scheduledTaskId") {
            self.push(EntityRef {
                role: EntityRole::Actor,
                ..EntityRef::target(
                    "scheduled-task",
                    schedule,
                    arg("scheduledTaskName").map(str::to_string),
                )
            });
        }
    }

    fn into_vec(self) -> Vec<EntityRef> {
        self.list
    }
}

/// Login attempts (`authenticationSuccess`, `authenticationFailure`): not the authentication
/// configuration service's calls.
fn is_login(code: &str) -> bool {
    code.starts_with("authentication") && !code.contains('.')
}

/// The entity kind of a node audit log file.
pub const NODE_LOG_KIND: &str = "node-audit-log";

/// A node audit log as an entity: its id is its path below the site's `logs/nodes` folder
/// (`<Date>/<User>/<DataFlow>/<runId>/<id>.log`), however the product wrote the path (absolute,
/// Windows separators), so the `nodeProcessed` entry naming it and the lines read from it share
/// one id.
pub fn node_log_entity(path: &str, role: EntityRole) -> Option<EntityRef> {
    let id = node_log_id(path)?;
    let name = id.rsplit('/').next().map(str::to_string);
    Some(EntityRef {
        role,
        ..EntityRef::target(NODE_LOG_KIND, id, name)
    })
}

/// See [`node_log_entity`]: the part after the last `nodes` folder, else the last five parts.
pub fn node_log_id(path: &str) -> Option<String> {
    let path = path.trim().replace('\\', "/");
    if path.is_empty() || path.len() > 4096 {
        return None;
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let after = match parts.iter().rposition(|p| *p == "nodes") {
        Some(i) if i + 1 < parts.len() => &parts[i + 1..],
        _ => &parts[parts.len().saturating_sub(5)..],
    };
    (!after.is_empty()).then(|| after.join("/"))
}

fn opt_string(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, AuditLogError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        // Ids are never redacted, so a credential-shaped one is refused as at the ingest API.
        Some(Value::String(s)) => match crate::ingest::secret_shaped_id(&s) {
            Some(reason) => Err(invalid(field, reason)),
            None => Ok(Some(s)),
        },
        Some(_) => Err(invalid(field, "not a string")),
    }
}

fn take_text(obj: &mut Map<String, Value>, field: &str) -> Option<String> {
    obj.remove(field).filter(|v| !v.is_null()).map(text_of)
}

fn text_of(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn invalid(field: &'static str, reason: impl ToString) -> AuditLogError {
    AuditLogError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

/// The sample lines of the seed document: every line that opens a JSON object with a
/// `timestamp`. Used by tests, the demo and the tailer's tests.
pub fn sample_lines(document: &str) -> Vec<&str> {
    document
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("{\"timestamp\"") || l.starts_with("{ \"timestamp\""))
        .collect()
}

#[cfg(test)]
mod tests;
