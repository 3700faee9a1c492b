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
//! entities are the objects named by `object:…` locators anywhere in arguments and response.
//!
//! Quirks of real lines this accepts: duplicate keys (the last wins, as in most JSON readers),
//! 7-digit second fractions (truncated to microseconds), any UTC offset, spaces after colons,
//! node locators ending in `~child:`, and a line whose final string was never closed (the
//! product wrote `…could not be resolved.}}`): that one is repaired by closing the string, and the
//! event says so in its `_repaired` param rather than silently differing from the file.

use crate::redaction::Redactor;
use crate::{locator, EntityRef, ErrorInfo, EventType, RawAuditEvent, Source, Timestamp};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
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

    let timestamp = match obj.remove("timestamp") {
        Some(Value::String(s)) => {
            Timestamp::parse_rfc3339(&s).map_err(|e| invalid("timestamp", e))?
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

    let mut entities = Vec::new();
    let mut seen = HashSet::new();
    for v in arguments.iter().chain(response.iter()) {
        collect_entities(v, &mut entities, &mut seen);
    }

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

fn collect_entities(v: &Value, out: &mut Vec<EntityRef>, seen: &mut HashSet<(String, String)>) {
    match v {
        Value::String(s) => add_entity(s, out, seen),
        Value::Array(items) => items.iter().for_each(|i| collect_entities(i, out, seen)),
        Value::Object(map) => {
            for (k, v) in map {
                add_entity(k, out, seen);
                collect_entities(v, out, seen);
            }
        }
        _ => {}
    }
}

fn add_entity(text: &str, out: &mut Vec<EntityRef>, seen: &mut HashSet<(String, String)>) {
    if let Some(e) = locator::entity(text) {
        if seen.insert((e.kind.clone(), e.id.clone())) {
            out.push(e);
        }
    }
}

fn opt_string(
    obj: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, AuditLogError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
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
