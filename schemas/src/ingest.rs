//! JSON -> [`RawAuditEvent`]: the validation every ingest path (HTTP API, `send`, client
//! library) shares.
//!
//! Validation never stops at the first problem: it returns every error with its JSON-pointer
//! path (`/entities/2/id`), so a service fixes its emitter in one round trip.
//!
//! **Ids must not be secrets.** Ids (`event_id`, `service`, `session_id`, `user_id`, `username`,
//! `tenant`, `entities[].type`, `entities[].id`, `client.ip`) are joined on and stored as sent,
//! never redacted, so one shaped like a credential is refused ([`secret_shaped_id`]): a JWT, a
//! PEM private key, an AWS access key id, a vendor token (`ghp_…`, `xoxb-…`, `sk_live_…`...), a
//! `Bearer`/`Basic` credential, a URL with a password, an Express signed session cookie. Only
//! those shapes: UUIDs, hex ids and hashes (a 40-character git SHA, a 64-character SHA-256),
//! `sess-123`, `u1`, SCIM ids and random base64url session ids are ordinary ids. The reason
//! names the shape, never the value.

use crate::redaction::Redactor;
use crate::{ClientInfo, EntityRef, ErrorInfo, EventType, RawAuditEvent, Source, Timestamp};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Longest id-like string (session, user, tenant, service, entity ids).
pub mod directory;

pub const MAX_ID_LEN: usize = 256;
/// Longest free text (message, error message).
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Longest stack trace.
pub const MAX_STACK_TRACE_LEN: usize = 256 * 1024;

/// The fields a JSON event may carry; anything else is rejected so typos do not vanish.
pub const FIELDS: [&str; 16] = [
    "event_id",
    "timestamp",
    "event_type",
    "source",
    "service",
    "session_id",
    "user_id",
    "username",
    "tenant",
    "success",
    "message",
    "entities",
    "params",
    "response",
    "error",
    "client",
];

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON pointer into the event; empty for the event itself.
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.reason)
    }
}

/// What the ingest point knows that the event may leave out.
#[derive(Debug, Clone)]
pub struct IngestDefaults {
    /// Event time when the event has none.
    pub now: Timestamp,
    /// Service name when the event has none (e.g. the name an API token is bound to).
    pub service: Option<String>,
    /// Source when the event has none.
    pub source: Option<Source>,
}

impl IngestDefaults {
    pub fn now() -> Self {
        Self {
            now: Timestamp::now(),
            service: None,
            source: None,
        }
    }
}

/// Why an id must be refused, when `value` is shaped like a credential
/// ([`crate::redaction::credential_shape`]); `None` for every ordinary id. The reason names the
/// shape only, so an error message never repeats the secret.
/// The event times the stores hold (ClickHouse's DateTime64: 1900-01-01 to 2299-12-31). A time
/// outside would be clamped there but hashed as sent, so the trail would show a true event as
/// altered; the sender is told instead.
pub const STORABLE_MICROS: std::ops::RangeInclusive<i64> =
    -2_208_988_800_000_000..=10_413_791_999_999_999;

pub fn secret_shaped_id(value: &str) -> Option<String> {
    crate::redaction::credential_shape(value)
        .map(|kind| format!("looks like a credential ({kind}); ids must not be secrets"))
}

/// Validates one JSON event, assigns an `event_id` when absent and redacts secrets.
pub fn event_from_json(
    value: Value,
    defaults: &IngestDefaults,
    redactor: &Redactor,
) -> Result<RawAuditEvent, Vec<FieldError>> {
    let Value::Object(mut obj) = value else {
        return Err(vec![err(
            "",
            format!("expected a JSON object, got {}", kind(&value)),
        )]);
    };
    let mut v = Validator::default();

    for key in obj.keys() {
        if !FIELDS.contains(&key.as_str()) {
            v.push(
                &format!("/{}", escape(key)),
                format!("unknown field; expected one of {}", FIELDS.join(", ")),
            );
        }
    }

    let event_id = match obj.remove("event_id") {
        None | Some(Value::Null) => Some(Uuid::new_v4()),
        Some(Value::String(s)) => match Uuid::parse_str(&s) {
            Ok(id) => Some(id),
            // A credential is no UUID either, but the sender should hear which mistake it made.
            Err(e) => {
                let reason = secret_shaped_id(&s).unwrap_or_else(|| format!("not a UUID: {e}"));
                v.fail("/event_id", reason)
            }
        },
        Some(other) => v.fail("/event_id", expected("a UUID string", &other)),
    };
    let timestamp = match obj.remove("timestamp") {
        None | Some(Value::Null) => Some(defaults.now),
        Some(Value::String(s)) => match Timestamp::parse_rfc3339(&s) {
            Ok(t) if !STORABLE_MICROS.contains(&t.as_micros()) => v.fail(
                "/timestamp",
                format!("{s:?} is outside the years 1900 to 2299 that the audit trail stores"),
            ),
            Ok(t) => Some(t),
            Err(e) => v.fail("/timestamp", e.to_string()),
        },
        Some(other) => v.fail("/timestamp", expected("an RFC 3339 string", &other)),
    };
    let event_type = match obj.remove("event_type") {
        Some(Value::String(s)) if crate::control::is_control(&s) => v.fail(
            "/event_type",
            format!(
                "types beginning with {:?} are reserved for the pipeline's own control events",
                crate::control::RESERVED_PREFIX
            ),
        ),
        Some(Value::String(s)) => match EventType::new(s) {
            Ok(t) => Some(t),
            Err(e) => v.fail("/event_type", format!("invalid event type: {e}")),
        },
        None | Some(Value::Null) => v.fail("/event_type", "required".to_string()),
        Some(other) => v.fail("/event_type", expected("a string", &other)),
    };
    let source = match obj.remove("source") {
        None | Some(Value::Null) => match defaults.source {
            Some(s) => Some(s),
            None => v.fail("/source", "required (CLIENT or SERVER)".to_string()),
        },
        Some(Value::String(s)) => match s.to_ascii_uppercase().as_str() {
            "CLIENT" => Some(Source::Client),
            "SERVER" => Some(Source::Server),
            _ => v.fail("/source", format!("{s:?} is neither CLIENT nor SERVER")),
        },
        Some(other) => v.fail("/source", expected("CLIENT or SERVER", &other)),
    };
    let service = match v.opt_string(&mut obj, "service", MAX_ID_LEN, true) {
        Some(Some(s)) => Some(s),
        Some(None) => match &defaults.service {
            Some(s) => Some(s.clone()),
            None => v.fail("/service", "required".to_string()),
        },
        None => None,
    };
    let session_id = v.opt_string(&mut obj, "session_id", MAX_ID_LEN, true);
    let user_id = v.opt_string(&mut obj, "user_id", MAX_ID_LEN, true);
    let username = v.opt_string(&mut obj, "username", MAX_ID_LEN, true);
    let tenant = v.opt_string(&mut obj, "tenant", MAX_ID_LEN, true);
    let message = v.opt_string(&mut obj, "message", MAX_TEXT_LEN, false);
    let success = match obj.remove("success") {
        None | Some(Value::Null) => Some(true),
        Some(Value::Bool(b)) => Some(b),
        Some(other) => v.fail("/success", expected("true or false", &other)),
    };
    let entities = v.entities(obj.remove("entities"));
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Some(BTreeMap::new()),
        Some(Value::Object(map)) => Some(
            map.into_iter()
                .map(|(k, val)| (k, val.to_string()))
                .collect(),
        ),
        Some(other) => v.fail("/params", expected("an object", &other)),
    };
    let response = match obj.remove("response") {
        None | Some(Value::Null) => None,
        Some(val) => Some(val.to_string()),
    };
    let error = v.error_info(obj.remove("error"));
    let client = v.client_info(obj.remove("client"));

    // Every field was checked above; any `None` here has an error recorded for it.
    let event = (|| {
        Some(RawAuditEvent {
            event_id: event_id?,
            timestamp: timestamp?,
            event_type: event_type?,
            source: source?,
            service: service?,
            session_id: session_id?,
            user_id: user_id?,
            username: username?,
            tenant: tenant?,
            success: success?,
            message: message?,
            entities: entities?,
            params: params?,
            response,
            error: error?,
            client: client?,
            ingest: None,
            utc_offset_minutes: None,
        })
    })();
    match event {
        Some(mut event) if v.errors.is_empty() => {
            redactor.redact_event(&mut event);
            Ok(event)
        }
        _ => Err(v.errors),
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn push(&mut self, path: &str, reason: String) {
        self.errors.push(err(path, reason));
    }

    /// Records an error and yields `None`, so each field reads as one `match`.
    fn fail<T>(&mut self, path: &str, reason: String) -> Option<T> {
        self.push(path, reason);
        None
    }

    /// `Some(None)` when absent or null, `Some(Some(s))` when valid, `None` after an error.
    fn opt_string(
        &mut self,
        obj: &mut Map<String, Value>,
        field: &str,
        max: usize,
        id_like: bool,
    ) -> Option<Option<String>> {
        let path = format!("/{field}");
        self.string_at(&path, obj.remove(field), max, id_like)
    }

    fn string_at(
        &mut self,
        path: &str,
        value: Option<Value>,
        max: usize,
        id_like: bool,
    ) -> Option<Option<String>> {
        match value {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => {
                if id_like && s.is_empty() {
                    self.fail(path, "must not be empty".to_string())
                } else if s.len() > max {
                    self.fail(
                        path,
                        format!("is {} bytes long; at most {max} are allowed", s.len()),
                    )
                } else if id_like && s.chars().any(char::is_control) {
                    self.fail(path, "must not contain control characters".to_string())
                } else if let Some(reason) = id_like.then(|| secret_shaped_id(&s)).flatten() {
                    self.fail(path, reason)
                } else {
                    Some(Some(s))
                }
            }
            Some(other) => self.fail(path, expected("a string", &other)),
        }
    }

    fn entities(&mut self, value: Option<Value>) -> Option<Vec<EntityRef>> {
        let items = match value {
            None | Some(Value::Null) => return Some(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => return self.fail("/entities", expected("an array", &other)),
        };
        let before = self.errors.len();
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let base = format!("/entities/{i}");
            let Value::Object(mut e) = item else {
                self.push(&base, expected("an object with type and id", &item));
                continue;
            };
            self.reject_unknown(&e, &base, &["type", "id", "name"]);
            let kind = self.string_at(&format!("{base}/type"), e.remove("type"), MAX_ID_LEN, true);
            let id = self.string_at(&format!("{base}/id"), e.remove("id"), MAX_ID_LEN, true);
            let name = self.string_at(
                &format!("{base}/name"),
                e.remove("name"),
                MAX_TEXT_LEN,
                false,
            );
            match (kind, id, name) {
                (Some(Some(kind)), Some(Some(id)), Some(name)) => out.push(EntityRef {
                    kind,
                    id,
                    name,
                    role: Default::default(),
                }),
                (Some(None), _, _) => self.push(&format!("{base}/type"), "required".to_string()),
                (_, Some(None), _) => self.push(&format!("{base}/id"), "required".to_string()),
                _ => {}
            }
        }
        (self.errors.len() == before).then_some(out)
    }

    fn error_info(&mut self, value: Option<Value>) -> Option<Option<ErrorInfo>> {
        let mut e = match value {
            None | Some(Value::Null) => return Some(None),
            Some(Value::Object(e)) => e,
            Some(other) => return self.fail("/error", expected("an object", &other)),
        };
        self.reject_unknown(
            &e,
            "/error",
            &["code", "message", "stack_trace", "fingerprint"],
        );
        let code = self.string_at("/error/code", e.remove("code"), MAX_ID_LEN, false);
        let message = self.string_at("/error/message", e.remove("message"), MAX_TEXT_LEN, false);
        let stack_trace = self.string_at(
            "/error/stack_trace",
            e.remove("stack_trace"),
            MAX_STACK_TRACE_LEN,
            false,
        );
        let fingerprint = self.string_at(
            "/error/fingerprint",
            e.remove("fingerprint"),
            MAX_ID_LEN,
            false,
        );
        Some(Some(ErrorInfo {
            code: code?,
            message: message?,
            stack_trace: stack_trace?,
            fingerprint: fingerprint?,
        }))
    }

    fn client_info(&mut self, value: Option<Value>) -> Option<Option<ClientInfo>> {
        let mut c = match value {
            None | Some(Value::Null) => return Some(None),
            Some(Value::Object(c)) => c,
            Some(other) => return self.fail("/client", expected("an object", &other)),
        };
        self.reject_unknown(&c, "/client", &["ip", "user_agent"]);
        let ip = self.string_at("/client/ip", c.remove("ip"), MAX_ID_LEN, true);
        let user_agent = self.string_at("/client/user_agent", c.remove("user_agent"), 4096, false);
        Some(Some(ClientInfo {
            ip: ip?,
            user_agent: user_agent?,
        }))
    }

    fn reject_unknown(&mut self, obj: &Map<String, Value>, base: &str, allowed: &[&str]) {
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                self.push(
                    &format!("{base}/{}", escape(key)),
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                );
            }
        }
    }
}

fn err(path: &str, reason: String) -> FieldError {
    FieldError {
        path: path.to_string(),
        reason,
    }
}

fn expected(what: &str, got: &Value) -> String {
    format!("expected {what}, got {}", kind(got))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JSON-pointer escaping (RFC 6901), so a hostile key cannot forge another path.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests;
