//! The pure part of the ingest API: request body -> validated events, or the exact reason
//! why not. No I/O here, so every status decision is unit-tested.
//!
//! Accepted bodies: one JSON object or an array of them (`application/json`), or one object per
//! line (`application/x-ndjson`, `application/jsonl`). A request is all-or-nothing: any bad event
//! rejects the whole request, and the answer lists every bad event's index, field path and reason.

use audit_schemas::ingest::{event_from_json, FieldError, IngestDefaults};
use audit_schemas::redaction::Redactor;
use audit_schemas::{RawAuditEvent, Source};
use serde::Serialize;
use serde_json::Value;

/// One problem with one event of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventError {
    /// Position of the event in the request (array index or NDJSON line, from 0).
    pub index: usize,
    pub path: String,
    pub reason: String,
}

/// Why a request body was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("content type {0:?} is not accepted; use application/json or application/x-ndjson")]
    UnsupportedMediaType(String),
    #[error("the request holds {count} events; at most {max} are accepted per request")]
    TooManyEvents { count: usize, max: usize },
    #[error("the body is not valid UTF-8 (first bad byte at {0})")]
    NotUtf8(usize),
    #[error("the body is empty")]
    Empty,
    #[error("malformed JSON{}: {reason}", at.map(|i| format!(" in event {i}")).unwrap_or_default())]
    Malformed { at: Option<usize>, reason: String },
    #[error("{} of the request's events are invalid; none was accepted", .0.iter().map(|e| e.index).collect::<std::collections::BTreeSet<_>>().len())]
    Invalid(Vec<EventError>),
}

impl BodyError {
    /// The per-event errors of [`BodyError::Invalid`]; none for the other kinds.
    pub fn into_errors(self) -> Vec<EventError> {
        match self {
            BodyError::Invalid(errors) => errors,
            _ => Vec::new(),
        }
    }

    /// 400 for bodies that are not JSON at all, 422 for JSON that is not valid events.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::UnsupportedMediaType(_) => 415,
            BodyError::TooManyEvents { .. } => 413,
            BodyError::NotUtf8(_) | BodyError::Empty | BodyError::Malformed { .. } => 400,
            BodyError::Invalid(_) => 422,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    NdJson,
}

fn format_of(content_type: Option<&str>) -> Result<Format, BodyError> {
    let raw = content_type.unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(Format::NdJson),
        _ => Err(BodyError::UnsupportedMediaType(raw.to_string())),
    }
}

/// Splits a body into JSON values, enforcing the per-request event limit.
pub fn parse(
    content_type: Option<&str>,
    body: &[u8],
    max_events: usize,
) -> Result<Vec<Value>, BodyError> {
    let format = format_of(content_type)?;
    let text = std::str::from_utf8(body).map_err(|e| BodyError::NotUtf8(e.valid_up_to()))?;
    if text.trim().is_empty() {
        return Err(BodyError::Empty);
    }
    let values = match format {
        Format::Json => match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => items,
            Ok(other) => vec![other],
            Err(e) => {
                return Err(BodyError::Malformed {
                    at: None,
                    reason: e.to_string(),
                })
            }
        },
        Format::NdJson => {
            let mut values = Vec::new();
            for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                if values.len() == max_events {
                    // Count the rest without parsing it: the answer is 413 either way.
                    let count = i + text
                        .lines()
                        .skip_while(|l| l.trim().is_empty())
                        .count()
                        .saturating_sub(i + 1);
                    return Err(BodyError::TooManyEvents {
                        count: count.max(max_events + 1),
                        max: max_events,
                    });
                }
                let value = serde_json::from_str(line).map_err(|e| BodyError::Malformed {
                    at: Some(i),
                    reason: e.to_string(),
                })?;
                values.push(value);
            }
            values
        }
    };
    if values.len() > max_events {
        return Err(BodyError::TooManyEvents {
            count: values.len(),
            max: max_events,
        });
    }
    if values.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(values)
}

/// Who is sending: what the bearer token allows.
#[derive(Debug, Clone)]
pub struct Caller {
    pub service: String,
    pub sources: Vec<Source>,
    pub scopes: Vec<crate::config::Scope>,
}

impl Caller {
    pub fn may(&self, scope: crate::config::Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Validates every value; the caller's service and sources are enforced, not just defaulted.
pub fn validate(
    values: Vec<Value>,
    caller: &Caller,
    redactor: &Redactor,
) -> Result<Vec<RawAuditEvent>, BodyError> {
    let defaults = IngestDefaults {
        now: audit_schemas::Timestamp::now(),
        service: Some(caller.service.clone()),
        source: match caller.sources.as_slice() {
            [only] => Some(*only),
            _ => None,
        },
    };
    let mut events = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        match event_from_json(value, &defaults, redactor) {
            Ok(event) => {
                if event.service != caller.service {
                    errors.push(EventError {
                        index,
                        path: "/service".into(),
                        reason: format!(
                            "this token may only send events of service {:?}",
                            caller.service
                        ),
                    });
                } else if !caller.sources.contains(&event.source) {
                    errors.push(EventError {
                        index,
                        path: "/source".into(),
                        reason: format!("this token may not send {} events", event.source.as_str()),
                    });
                } else {
                    events.push(event);
                }
            }
            Err(field_errors) => {
                errors.extend(field_errors.into_iter().map(|FieldError { path, reason }| {
                    EventError {
                        index,
                        path,
                        reason,
                    }
                }))
            }
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(BodyError::Invalid(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");
    const NDJSON: Option<&str> = Some("application/x-ndjson");

    fn caller() -> Caller {
        Caller {
            service: "web".into(),
            sources: vec![Source::Client],
            scopes: vec![crate::config::Scope::Events],
        }
    }

    #[test]
    fn object_array_and_ndjson() {
        assert_eq!(
            parse(JSON, br#"{"event_type":"log"}"#, 10).unwrap().len(),
            1
        );
        assert_eq!(
            parse(
                Some("application/json; charset=utf-8"),
                br#"[{"a":1},{"b":2}]"#,
                10
            )
            .unwrap()
            .len(),
            2
        );
        assert_eq!(
            parse(NDJSON, b"{\"a\":1}\n\n{\"b\":2}\n", 10)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(
            parse(Some("text/plain"), b"{}", 10).unwrap_err().status(),
            415
        );
        assert_eq!(parse(None, b"{}", 10).unwrap_err().status(), 415);
        assert_eq!(
            parse(JSON, b"[{},{},{}]", 2).unwrap_err(),
            BodyError::TooManyEvents { count: 3, max: 2 }
        );
        assert_eq!(parse(NDJSON, b"{}\n{}\n{}\n", 2).unwrap_err().status(), 413);
        assert_eq!(
            parse(JSON, b"\xff\xfe", 10).unwrap_err(),
            BodyError::NotUtf8(0)
        );
        assert_eq!(parse(JSON, b"  ", 10).unwrap_err(), BodyError::Empty);
        assert_eq!(parse(JSON, b"[]", 10).unwrap_err(), BodyError::Empty);
        assert_eq!(parse(JSON, b"{\"a\":", 10).unwrap_err().status(), 400);
        let e = parse(NDJSON, b"{}\n{oops}\n", 10).unwrap_err();
        assert!(
            matches!(e, BodyError::Malformed { at: Some(1), .. }),
            "{e:?}"
        );
    }

    #[test]
    fn one_bad_event_rejects_the_request_with_every_error() {
        let values = parse(
            JSON,
            br#"[{"event_type":"log"},{"event_type":"bad type"},{"event_type":"log","colour":1}]"#,
            10,
        )
        .unwrap();
        let BodyError::Invalid(errors) =
            validate(values, &caller(), &Redactor::default()).unwrap_err()
        else {
            panic!("expected Invalid")
        };
        let got: Vec<_> = errors.iter().map(|e| (e.index, e.path.as_str())).collect();
        assert_eq!(got, vec![(1, "/event_type"), (2, "/colour")]);
    }

    #[test]
    fn the_token_decides_service_and_sources() {
        let ok = validate(
            vec![serde_json::json!({"event_type": "log"})],
            &caller(),
            &Redactor::default(),
        )
        .unwrap();
        assert_eq!(
            (ok[0].service.as_str(), ok[0].source),
            ("web", Source::Client)
        );
        let values = vec![
            serde_json::json!({"event_type": "log", "service": "billing"}),
            serde_json::json!({"event_type": "log", "source": "SERVER"}),
        ];
        let BodyError::Invalid(errors) =
            validate(values, &caller(), &Redactor::default()).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(
            errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            vec!["/service", "/source"]
        );
    }
}
