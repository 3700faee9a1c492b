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
