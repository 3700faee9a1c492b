use super::*;
use serde_json::json;

fn defaults() -> IngestDefaults {
    IngestDefaults {
        now: Timestamp::from_micros(1_700_000_000_000_000),
        service: Some("web".into()),
        source: Some(Source::Server),
    }
}

fn parse(v: Value) -> Result<RawAuditEvent, Vec<FieldError>> {
    event_from_json(v, &defaults(), &Redactor::default())
}

fn paths(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn minimal_event_gets_defaults() {
    let e = parse(json!({"event_type": "query-created"})).unwrap();
    assert_eq!(e.event_type.as_str(), "query-created");
    assert_eq!(e.timestamp, defaults().now);
    assert_eq!(e.service, "web");
    assert_eq!(e.source, Source::Server);
    assert!(e.success);
    assert_eq!(e.event_id.get_version_num(), 4);
}

#[test]
fn full_event() {
    let e = parse(json!({
        "event_id": "0b8f1d7e-3c1a-4a5e-9d55-1f2e3a4b5c6d",
        "timestamp": "2024-03-08T10:25:03.9504991Z",
        "event_type": "query-edited",
        "source": "client",
        "service": "datagrok-web",
        "session_id": "s1", "user_id": "u1", "username": "alice", "tenant": "t",
        "success": false, "message": "HELLO WORLD",
        "entities": [{"type": "query", "id": "q1", "name": "Sales"}],
        "params": {"test": "value", "n": 3, "nested": {"password": "x"}},
        "response": {"ok": true},
        "error": {"code": "E1", "message": "boom", "stack_trace": "at f()"},
        "client": {"ip": "10.0.0.1", "user_agent": "Mozilla"}
    }))
    .unwrap();
    assert_eq!(
        e.event_id.to_string(),
        "0b8f1d7e-3c1a-4a5e-9d55-1f2e3a4b5c6d"
    );
    assert_eq!(e.source, Source::Client);
    assert_eq!(e.params["test"], "\"value\"");
    assert_eq!(e.params["n"], "3");
    assert_eq!(e.params["nested"], r#"{"password":"[NOT OUTPUT]"}"#);
    assert_eq!(e.response.as_deref(), Some(r#"{"ok":true}"#));
    assert_eq!(e.entities[0].name.as_deref(), Some("Sales"));
    assert_eq!(
        e.error.as_ref().unwrap().stack_trace.as_deref(),
        Some("at f()")
    );
    assert_eq!(e.partition_key(), "s1");
}

#[test]
fn reports_every_error_with_its_path() {
    let errors = parse(json!({
        "event_id": "nope",
        "timestamp": 12,
        "event_type": "bad type",
        "source": "ROBOT",
        "session_id": "",
        "user_id": "a\u{0007}b",
        "success": "yes",
        "entities": [{"type": "q"}, 5, {"type": "q", "id": "1", "colour": "red"}],
        "params": [],
        "error": {"code": 5},
        "client": "x",
        "extra": 1
    }))
    .unwrap_err();
    let p = paths(&errors);
    for expected in [
        "/extra",
        "/event_id",
        "/timestamp",
        "/event_type",
        "/source",
        "/session_id",
        "/user_id",
        "/success",
        "/entities/0/id",
        "/entities/1",
        "/entities/2/colour",
        "/params",
        "/error/code",
        "/client",
    ] {
        assert!(p.contains(&expected), "missing {expected} in {p:?}");
    }
}

#[test]
fn required_fields() {
    let no_defaults = IngestDefaults {
        now: Timestamp::now(),
        service: None,
        source: None,
    };
    let errors = event_from_json(json!({}), &no_defaults, &Redactor::default()).unwrap_err();
    assert_eq!(paths(&errors), vec!["/event_type", "/source", "/service"]);
    assert!(errors.iter().all(|e| e.reason.starts_with("required")));
}

#[test]
fn not_an_object() {
    let errors = parse(json!([1, 2])).unwrap_err();
    assert_eq!(errors[0].path, "");
    assert!(errors[0].reason.contains("an array"));
}

#[test]
fn hostile_keys_cannot_forge_paths() {
    let errors = parse(json!({"event_type": "log", "a/b~c": 1})).unwrap_err();
    assert_eq!(errors[0].path, "/a~1b~0c");
}

#[test]
fn oversized_strings_are_rejected() {
    let errors =
        parse(json!({"event_type": "log", "user_id": "u".repeat(MAX_ID_LEN + 1)})).unwrap_err();
    assert_eq!(paths(&errors), vec!["/user_id"]);
}

#[test]
fn secret_params_at_top_level() {
    let e =
        parse(json!({"event_type": "log", "params": {"Token": {"a": 1}, "ok": "fine"}})).unwrap();
    assert_eq!(e.params["Token"], "\"[NOT OUTPUT]\"");
    assert_eq!(e.params["ok"], "\"fine\"");
}

#[test]
fn senders_cannot_forge_control_events() {
    let errors =
        parse(json!({"event_type": "audit.rule-deleted", "source": "SERVER"})).unwrap_err();
    assert_eq!(paths(&errors), vec!["/event_type"]);
    assert!(errors[0].reason.contains("reserved"), "{:?}", errors[0]);
    assert!(parse(json!({"event_type": "auditing-done", "source": "SERVER"})).is_ok());
}

/// A JWT whose parts are base64url JSON, as a browser or an identity provider would send it.
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsInNpZCI6InMxIn0.Zm9yZ2VkLXNpZ25hdHVyZS12YWx1ZQ";

#[test]
fn secret_shaped_ids_are_refused_naming_the_path_and_the_shape() {
    let cases = [
        ("/session_id", json!({"session_id": JWT}), "JWT"),
        (
            "/user_id",
            json!({"user_id": "Bearer 9f8e7d6c5b4a39281726"}),
            "Bearer token",
        ),
        (
            "/username",
            json!({"username": "ghp_0123456789abcdefghijABCDEFGHIJ012345"}),
            "API token",
        ),
        (
            "/tenant",
            json!({"tenant": "postgres://app:pw123456@db/x"}),
            "URL with a password",
        ),
        ("/event_id", json!({"event_id": JWT}), "JWT"),
        (
            "/service",
            json!({"service": "AKIAIOSFODNN7EXAMPLE"}),
            "AWS access key id",
        ),
        (
            "/entities/1/id",
            json!({"entities": [{"type": "q", "id": "q1"}, {"type": "key", "id": "-----BEGIN RSA PRIVATE KEY-----\\nMIIEow\\n-----END RSA PRIVATE KEY-----"}]}),
            "PEM private key",
        ),
        (
            "/entities/0/type",
            json!({"entities": [{"type": "Basic dXNlcjpwYXNzd29yZA==", "id": "1"}]}),
            "Basic credential",
        ),
        (
            "/session_id",
            json!({"session_id": "s%3AQ2xW9kLp4ZtR7mN1vB8cX3dF6gH0jK5s.Xq3%2Bk9LmP2wQ7zR4tY8uI1oA6sD5fG0hJ9kLzXcVbN"}),
            "signed session cookie",
        ),
        ("/client/ip", json!({"client": {"ip": JWT}}), "JWT"),
    ];
    for (path, fields, shape) in cases {
        let mut event = json!({"event_type": "log"});
        for (k, v) in fields.as_object().into_iter().flatten() {
            event[k] = v.clone();
        }
        let printed = event.to_string();
        let errors = parse(event).expect_err(&printed);
        assert_eq!(paths(&errors), vec![path], "{printed}");
        let reason = &errors[0].reason;
        assert!(
            reason.contains(&format!("looks like a credential ({shape})"))
                && reason.contains("ids must not be secrets"),
            "{path}: {reason}"
        );
        // The reason never repeats the value.
        for part in [
            "eyJ", "ghp_", "pw123456", "AKIA", "MIIEow", "dXNlcjpw", "Q2xW9kLp", "9f8e7d",
        ] {
            assert!(!reason.contains(part), "{reason}");
        }
    }
}

#[test]
fn ordinary_ids_are_not_secrets() {
    let ids = [
        "0b8f1d7e-3c1a-4a5e-9d55-1f2e3a4b5c6d",
        "2819c223-7f76-453a-919d-413861904646",
        "sess-123",
        "u1",
        "alice@example.com",
        "auth:saml",
        "token-rotation",
        "bearer-of-news",
        "Basic settings",
        // A git SHA-1, a SHA-256, upper-case hex.
        "e195dd2c4b0a6f1f3b8d2c9e7a6b5c4d3e2f1a0b",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "1A530637289A03B07199A44E8D531427",
        // Random base64url session ids, 32 and 43 characters, and a mixed-case 40-character one.
        "Q2xW9kLp4ZtR7mN1vB8cX3dF6gH0jK5s",
        "Ym9rZ3Nzd2VyZGdocGN5QnBjeUJ1YjNRZ1lTQnphV2R1",
        "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eFxY12345k",
        "https://app.example.com/users/42",
        "eyJhbGciOiJIUzI1NiJ9",
    ];
    for id in ids {
        let event = json!({
            "event_type": "log", "session_id": id, "user_id": id, "username": id,
            "tenant": id, "entities": [{"type": "query", "id": id}],
        });
        let parsed = parse(event);
        assert!(parsed.is_ok(), "{id}: {:?}", parsed.err());
        assert_eq!(parsed.ok().and_then(|e| e.session_id).as_deref(), Some(id));
    }
}

/// The tailer converts lines of the server's audit log without `event_from_json`; its ids obey
/// the same rule, and the refused line becomes a dead letter whose reason names the field.
#[test]
fn the_audit_log_converter_refuses_secret_shaped_ids_too() {
    let line = json!({
        "timestamp": "2026-11-25T10:00:00.000Z", "auditCode": "log", "userId": JWT, "success": true,
    })
    .to_string();
    let id = Uuid::nil();
    let e = crate::audit_log::convert_line(&line, "web", id, &Redactor::default()).unwrap_err();
    let reason = e.to_string();
    assert!(
        reason.contains("userId") && reason.contains("(JWT)"),
        "{reason}"
    );
    assert!(!reason.contains("eyJ"), "{reason}");
    let fine = line.replace(JWT, "u-42");
    assert!(crate::audit_log::convert_line(&fine, "web", id, &Redactor::default()).is_ok());
}

#[test]
fn a_time_the_store_cannot_hold_is_refused_by_path() {
    for t in [
        "2300-01-01T00:00:00Z",
        "1899-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z",
    ] {
        let errors =
            parse(json!({"event_type": "log", "source": "SERVER", "timestamp": t})).unwrap_err();
        assert_eq!(paths(&errors), vec!["/timestamp"], "{t}");
    }
    for t in ["2299-12-31T23:59:59Z", "1900-01-01T00:00:00Z"] {
        assert!(
            parse(json!({"event_type": "log", "source": "SERVER", "timestamp": t})).is_ok(),
            "{t}"
        );
    }
}
