//! The pure part of the ingest API: request body -> validated events, or the exact reason
//! why not. No I/O here, so every status decision is unit-tested.
//!
//! Accepted bodies: one JSON object or an array of them (`application/json`), or one object per
//! line (`application/x-ndjson`, `application/jsonl`). A request is all-or-nothing: any bad event
//! rejects the whole request, and the answer lists every bad event's index, field path and reason.

use crate::browser::BrowserIdentity;
use audit_schemas::ingest::{event_from_json, FieldError, IngestDefaults};
use audit_schemas::redaction::Redactor;
use audit_schemas::{Credential, IngestContext, RawAuditEvent, Source};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

mod shape;
pub use shape::{check as check_shape, JsonLimits, Shape, ShapeError};

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
    #[error(transparent)]
    Shape(#[from] ShapeError),
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
            BodyError::TooManyEvents { .. } | BodyError::Shape(_) => 413,
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
    /// The tenant the credential binds; the body cannot name another.
    pub tenant: Option<String>,
    /// How the request authenticated; `None` for events that never crossed the API (`send`).
    pub credential: Option<CallerCredential>,
}

/// How a request authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerCredential {
    Service,
    Anonymous,
    /// A browser token: user, session and tenant are the token's, whatever the body says.
    Browser(BrowserIdentity),
}

impl Caller {
    pub fn may(&self, scope: crate::config::Scope) -> bool {
        self.scopes.iter().any(|held| held.grants(scope))
    }

    /// What a browser token lets its holder do: CLIENT events of `service`, nothing else.
    pub fn browser(service: &str, identity: BrowserIdentity) -> Self {
        Self {
            service: service.to_string(),
            sources: vec![Source::Client],
            scopes: vec![crate::config::Scope::Events],
            tenant: identity.tenant.clone(),
            credential: Some(CallerCredential::Browser(identity)),
        }
    }
}

/// Validates every value; the caller's service, sources and tenant are enforced, not just
/// defaulted, and a browser token's user, session and tenant replace the body's (each replaced
/// claim is kept in `ingest.overridden`). `peer_ip` is the sender's address as the API saw it.
pub fn validate(
    values: Vec<Value>,
    caller: &Caller,
    redactor: &Redactor,
    peer_ip: Option<IpAddr>,
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
            Ok(mut event) => {
                let refused = |path: &str, reason: String| EventError {
                    index,
                    path: path.into(),
                    reason,
                };
                if event.service != caller.service {
                    errors.push(refused(
                        "/service",
                        format!(
                            "this token may only send events of service {:?}",
                            caller.service
                        ),
                    ));
                } else if !caller.sources.contains(&event.source) {
                    errors.push(refused(
                        "/source",
                        format!("this token may not send {} events", event.source.as_str()),
                    ));
                } else if let Err(e) = bind(&mut event, caller, peer_ip) {
                    errors.push(refused("/tenant", e));
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

/// Applies what the credential decides to one event and records the ingest context.
fn bind(event: &mut RawAuditEvent, caller: &Caller, peer_ip: Option<IpAddr>) -> Result<(), String> {
    let Some(credential) = &caller.credential else {
        return Ok(());
    };
    let mut overridden = BTreeMap::new();
    let (kind, key_id) = match credential {
        CallerCredential::Service => (Credential::ServiceToken, None),
        CallerCredential::Anonymous => (Credential::Anonymous, None),
        CallerCredential::Browser(id) => {
            for (field, slot, value) in [
                ("user_id", &mut event.user_id, Some(&id.user_id)),
                ("session_id", &mut event.session_id, Some(&id.session_id)),
                ("username", &mut event.username, id.login.as_ref()),
            ] {
                let claimed = std::mem::replace(slot, value.cloned());
                if let Some(claimed) = claimed.filter(|c| Some(c) != value) {
                    overridden.insert(field.to_string(), claimed);
                }
            }
            (Credential::BrowserToken, Some(id.key_id.clone()))
        }
    };
    if let Some(bound) = &caller.tenant {
        match event.tenant.take() {
            Some(claimed) if claimed != *bound => {
                if key_id.is_none() {
                    return Err(format!("this token is bound to tenant {bound:?}"));
                }
                overridden.insert("tenant".to_string(), claimed);
            }
            _ => {}
        }
        event.tenant = Some(bound.clone());
    } else if key_id.is_some() {
        // A browser token without a tenant: the body may not supply one either.
        if let Some(claimed) = event.tenant.take() {
            overridden.insert("tenant".to_string(), claimed);
        }
    }
    event.ingest = Some(IngestContext {
        credential: kind,
        key_id,
        peer_ip: peer_ip.map(|ip| ip.to_string()),
        overridden,
    });
    Ok(())
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
            tenant: None,
            credential: Some(CallerCredential::Service),
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
            validate(values, &caller(), &Redactor::default(), None).unwrap_err()
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
            None,
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
            validate(values, &caller(), &Redactor::default(), None).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(
            errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            vec!["/service", "/source"]
        );
    }

    fn browser() -> Caller {
        Caller::browser(
            "web",
            BrowserIdentity {
                key_id: "k1".into(),
                user_id: "alice".into(),
                session_id: "s-alice".into(),
                tenant: Some("acme".into()),
                login: None,
            },
        )
    }

    #[test]
    fn a_browser_token_decides_user_session_and_tenant_and_flags_other_claims() {
        let peer: IpAddr = "198.51.100.7".parse().unwrap();
        let values = vec![
            serde_json::json!({"event_type": "log"}),
            serde_json::json!({"event_type": "log", "user_id": "mallory", "session_id": "s-m",
                "tenant": "evil", "username": "root", "client": {"ip": "1.2.3.4"}}),
            serde_json::json!({"event_type": "log", "user_id": "alice"}),
        ];
        let events = validate(values, &browser(), &Redactor::default(), Some(peer)).unwrap();
        for e in &events {
            assert_eq!(e.user_id.as_deref(), Some("alice"));
            assert_eq!(e.session_id.as_deref(), Some("s-alice"));
            assert_eq!(e.tenant.as_deref(), Some("acme"));
            assert_eq!(e.username, None);
            assert_eq!(e.source, Source::Client);
            let ingest = e.ingest.as_ref().unwrap();
            assert_eq!(ingest.credential, Credential::BrowserToken);
            assert_eq!(ingest.key_id.as_deref(), Some("k1"));
            assert_eq!(ingest.peer_ip.as_deref(), Some("198.51.100.7"));
        }
        assert!(events[0].ingest.as_ref().unwrap().overridden.is_empty());
        let flagged = &events[1].ingest.as_ref().unwrap().overridden;
        assert_eq!(flagged["user_id"], "mallory");
        assert_eq!(flagged["session_id"], "s-m");
        assert_eq!(flagged["tenant"], "evil");
        assert_eq!(flagged["username"], "root");
        assert_eq!(
            events[1].client.as_ref().unwrap().ip.as_deref(),
            Some("1.2.3.4"),
            "the self-reported address is kept beside the peer's"
        );
        assert!(events[2].ingest.as_ref().unwrap().overridden.is_empty());
        // A browser token sends CLIENT events only.
        let e = validate(
            vec![serde_json::json!({"event_type": "log", "source": "SERVER"})],
            &browser(),
            &Redactor::default(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.into_errors()[0].path, "/source");
    }

    #[test]
    fn a_service_token_bound_to_a_tenant_refuses_another() {
        let bound = Caller {
            tenant: Some("acme".into()),
            ..caller()
        };
        let ok = validate(
            vec![
                serde_json::json!({"event_type": "log"}),
                serde_json::json!({"event_type": "log", "tenant": "acme"}),
            ],
            &bound,
            &Redactor::default(),
            None,
        )
        .unwrap();
        assert!(ok.iter().all(|e| e.tenant.as_deref() == Some("acme")));
        assert_eq!(
            ok[0].ingest.as_ref().unwrap().credential,
            Credential::ServiceToken
        );
        let e = validate(
            vec![serde_json::json!({"event_type": "log", "tenant": "other"})],
            &bound,
            &Redactor::default(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.into_errors()[0].path, "/tenant");
    }
}
