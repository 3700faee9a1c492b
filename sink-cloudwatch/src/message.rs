//! The log message of one event: the enriched event as JSON that Logs Insights and metric
//! filters can read field by field.
//!
//! The shape is the enriched event's (`event.event_type`, `user.login`, `groups`, `pipeline`,
//! ...), with three changes from its Avro-mirroring serde form:
//!
//! - `event.params` values and `event.response` are JSON values, not JSON text inside strings,
//!   so `filter event.params.rows > 10` works;
//! - times (`event.timestamp`, `session.started_at`, `pipeline.received_at`,
//!   `pipeline.enriched_at`) are RFC 3339 strings in UTC, not microseconds;
//! - null fields are left out.
//!
//! A param whose text is not JSON (no ingest path produces one) stays a string.

use audit_schemas::{EnrichedAuditEvent, Timestamp};
use serde_json::{Map, Value};

/// The message for `event`.
pub fn message(event: &EnrichedAuditEvent) -> Result<String, serde_json::Error> {
    let mut value = serde_json::to_value(event)?;
    if let Value::Object(top) = &mut value {
        if let Some(Value::Object(raw)) = top.get_mut("event") {
            time_at(raw, "timestamp");
            if let Some(Value::Object(params)) = raw.get_mut("params") {
                for v in params.values_mut() {
                    parse_text(v);
                }
            }
            if let Some(v) = raw.get_mut("response") {
                parse_text(v);
            }
        }
        if let Some(Value::Object(session)) = top.get_mut("session") {
            time_at(session, "started_at");
        }
        if let Some(Value::Object(pipeline)) = top.get_mut("pipeline") {
            time_at(pipeline, "received_at");
            time_at(pipeline, "enriched_at");
        }
    }
    drop_nulls(&mut value);
    serde_json::to_string(&value)
}

/// The witness stream's message for a checkpoint event: the bare signed checkpoint
/// (`docs/proof-format.md` §4), checkable with the public key alone; `None` when the event's
/// params do not hold one.
pub fn checkpoint_message(event: &EnrichedAuditEvent) -> Option<String> {
    let params = &event.event.params;
    let checkpoint = audit_schemas::chain::checkpoint::Checkpoint::from_params(params)?;
    serde_json::to_string(&checkpoint).ok()
}

/// Microseconds since the epoch -> RFC 3339.
fn time_at(object: &mut Map<String, Value>, key: &str) {
    if let Some(v) = object.get_mut(key) {
        if let Some(micros) = v.as_i64() {
            *v = Value::String(Timestamp::from_micros(micros).to_rfc3339());
        }
    }
}

/// JSON text -> the JSON value it holds.
fn parse_text(v: &mut Value) {
    if let Value::String(text) = v {
        if let Ok(parsed) = serde_json::from_str::<Value>(text) {
            *v = parsed;
        }
    }
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_schemas::chain;
    use audit_schemas::*;

    fn example() -> EnrichedAuditEvent {
        EnrichedAuditEvent {
            event: RawAuditEvent {
                event_id: uuid::Uuid::from_u128(7),
                timestamp: Timestamp::parse_rfc3339("2026-11-26T10:00:00.123456Z").unwrap(),
                event_type: EventType::new("query-created".to_string()).unwrap(),
                source: Source::Client,
                service: "web".into(),
                session_id: Some("s1".into()),
                user_id: None,
                username: None,
                tenant: None,
                success: true,
                message: None,
                entities: vec![EntityRef {
                    kind: "query".into(),
                    id: "q1".into(),
                    name: None,
                    role: Default::default(),
                }],
                params: [
                    ("rows".to_string(), "12".to_string()),
                    ("filters".to_string(), r#"{"region":"emea"}"#.to_string()),
                    ("note".to_string(), r#""text""#.to_string()),
                    ("broken".to_string(), "{not json".to_string()),
                ]
                .into(),
                response: Some(r#"{"ok":true}"#.into()),
                error: None,
                client: None,
                ingest: None,
                utc_offset_minutes: None,
            },
            user: Some(ResolvedUser {
                id: "u1".into(),
                login: "ann".into(),
                name: None,
            }),
            groups: vec![],
            session: Some(SessionInfo {
                id: "s1".into(),
                started_at: Timestamp::parse_rfc3339("2026-11-26T09:00:00Z").unwrap(),
                ip: None,
            }),
            enrichment: Enrichment::Enriched,
            claimed_user_mismatch: false,
            pipeline: PipelineMeta {
                received_at: Timestamp::parse_rfc3339("2026-11-26T10:00:01Z").unwrap(),
                enriched_at: Timestamp::parse_rfc3339("2026-11-26T10:00:02Z").unwrap(),
                raw_partition: 0,
                raw_offset: 5,
            },
            event_time: EventTimeCheck::Plausible,
            chain: None,
            catalog: None,
        }
    }

    #[test]
    fn a_message_gives_back_the_content_its_chain_link_was_made_from() {
        let mut e = example();
        e.event.params.insert("quoted".into(), r#""42""#.into());
        e.event.params.insert("nothing".into(), "null".into());
        let want = chain::canonical(&e.event, 0, 5);
        let m: Value = serde_json::from_str(&message(&e).unwrap()).unwrap();
        let got = chain::canonical_value(m["event"].clone(), chain::Form::Message, 0, 5);
        assert_eq!(got, want);
        assert_eq!(chain::content_digest(&got), chain::content_digest(&want));
    }

    #[test]
    fn params_are_values_times_are_rfc3339_and_nulls_are_left_out() {
        let text = message(&example()).unwrap();
        let m: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(m["event"]["params"]["rows"], 12);
        assert_eq!(m["event"]["params"]["filters"]["region"], "emea");
        assert_eq!(m["event"]["params"]["note"], "text");
        assert_eq!(m["event"]["params"]["broken"], "{not json");
        assert_eq!(m["event"]["response"]["ok"], true);
        assert_eq!(m["event"]["timestamp"], "2026-11-26T10:00:00.123456Z");
        assert_eq!(m["session"]["started_at"], "2026-11-26T09:00:00Z");
        assert_eq!(m["pipeline"]["received_at"], "2026-11-26T10:00:01Z");
        assert_eq!(
            m["event"]["event_id"],
            "00000000-0000-0000-0000-000000000007"
        );
        for absent in [
            "user_id", "username", "tenant", "message", "error", "client",
        ] {
            assert!(m["event"].get(absent).is_none(), "{absent} in {text}");
        }
        assert!(m["user"].get("name").is_none());
        assert!(m["event"]["entities"][0].get("name").is_none());
        assert!(!text.contains("null"), "{text}");
    }

    #[test]
    fn a_checkpoint_event_is_witnessed_as_the_bare_signed_checkpoint() {
        let seed = "ZTJlLWNoYWluLXNlZWQtMzItYnl0ZXMtbG9uZy0wMDA=";
        let key = chain::SigningKey::from_seed_b64("k", seed).unwrap();
        let cp = chain::checkpoint::Checkpoint::sign(
            chain::checkpoint::Statement {
                raw_partition: 1,
                epoch: "e".into(),
                tree_size: 0,
                root: hex::encode(chain::merkle::empty_root()),
                raw_offset_start: -1,
                raw_offset_end: -1,
                prev: chain::checkpoint::no_previous(),
                signed_at: 9,
            },
            &key,
        );
        let mut e = example();
        e.event.params = cp.to_params();
        let text = checkpoint_message(&e).unwrap();
        let back: chain::checkpoint::Checkpoint = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cp);
        assert_eq!(
            checkpoint_message(&example()),
            None,
            "params without a checkpoint"
        );
    }
}
