//! The ingest API over real HTTP, publishing to the real broker.

use audit_producer::auth::Tokens;
use audit_producer::config::TokenConfig;
use audit_producer::http::{router, IngestState, Limits};
use audit_producer::publish::Publisher;
use audit_runtime::ops::Health;
use audit_runtime::TopicsConfig;
use audit_schemas::redaction::Redactor;
use audit_schemas::*;
use audit_tests::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "test-token-0123456789-web";
const SERVER_TOKEN: &str = "test-token-0123456789-srv";

struct Api {
    url: String,
    topics: TopicsConfig,
    http: reqwest::Client,
}

async fn start() -> Api {
    let topics = unique_topics(3);
    create_topics(&topics).await.unwrap();
    let publisher = Publisher::new(
        producer().unwrap(),
        &topics,
        50_000,
        audit_runtime::budget::SizeBudget::new(1_000_000),
    );
    let state = Arc::new(IngestState {
        publisher,
        tokens: Tokens::new(
            &[
                TokenConfig {
                    token: TOKEN.into(),
                    service: "web".into(),
                    sources: vec![Source::Client, Source::Server],
                },
                TokenConfig {
                    token: SERVER_TOKEN.into(),
                    service: "backend".into(),
                    sources: vec![Source::Server],
                },
            ],
            None,
        ),
        redactor: Redactor::default(),
        limits: Limits::default(),
    });
    let app = router(state, Health::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Api {
        url,
        topics,
        http: reqwest::Client::new(),
    }
}

impl Api {
    async fn post(
        &self,
        token: Option<&str>,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/events", self.url))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post_json(&self, body: &Value) -> (u16, Value) {
        self.post(Some(TOKEN), "application/json", body.to_string())
            .await
    }

    async fn raw_events(&self, count: usize) -> Vec<(Vec<u8>, RawAuditEvent)> {
        consume_n(&self.topics.raw.name, 3, count, Duration::from_secs(30))
            .await
            .unwrap()
            .iter()
            .map(|m| {
                let bytes = payload(m).unwrap().to_vec();
                let e = RawAuditEvent::decode(&bytes).unwrap();
                (bytes, e)
            })
            .collect()
    }
}

fn event(n: usize) -> Value {
    json!({
        "event_type": "query-created",
        "source": "CLIENT",
        "session_id": format!("s-{}", n % 7),
        "user_id": "u-1",
        "message": format!("event {n}"),
        "entities": [{"type": "query", "id": format!("q-{n}")}],
        "params": {"n": n}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_posted_batch_is_consumed_back_equal() {
    let api = start().await;
    let batch: Vec<Value> = (0..100).map(event).collect();
    let (status, body) = api.post_json(&Value::Array(batch)).await;
    assert_eq!(status, 202, "{body}");
    let ids: Vec<String> = serde_json::from_value(body["event_ids"].clone()).unwrap();
    assert_eq!(ids.len(), 100);

    let mut got = api.raw_events(100).await;
    got.sort_by_key(|(_, e)| e.params["n"].parse::<usize>().unwrap());
    for (n, (_, e)) in got.iter().enumerate() {
        assert_eq!(e.event_id.to_string(), ids[n]);
        assert_eq!(e.service, "web");
        assert_eq!(e.source, Source::Client);
        assert_eq!(e.message.as_deref(), Some(format!("event {n}").as_str()));
        assert_eq!(e.entities[0].id, format!("q-{n}"));
        assert_eq!(
            e.session_id.as_deref(),
            Some(format!("s-{}", n % 7).as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ndjson_and_single_objects_are_accepted() {
    let api = start().await;
    let nd = format!("{}\n{}\n", event(1), event(2));
    let (status, body) = api.post(Some(TOKEN), "application/x-ndjson", nd).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(2)),
        "{body}"
    );
    let (status, _) = api.post_json(&event(3)).await;
    assert_eq!(status, 202);
    assert_eq!(api.raw_events(3).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn error_statuses() {
    let api = start().await;
    let one = event(0).to_string();
    assert_eq!(api.post(None, "application/json", one.clone()).await.0, 401);
    assert_eq!(
        api.post(
            Some("test-token-0123456789-wex"),
            "application/json",
            one.clone()
        )
        .await
        .0,
        401
    );
    assert_eq!(
        api.post(Some(TOKEN), "text/plain", one.clone()).await.0,
        415
    );
    let (status, body) = api
        .post(Some(TOKEN), "application/json", "{\"event_type\":")
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );
    assert_eq!(
        api.post(Some(TOKEN), "application/json", b"\xff\xfe".to_vec())
            .await
            .0,
        400
    );
    // Over the count limit and over the body limit.
    let many = Value::Array((0..1001).map(|_| json!({"event_type": "log"})).collect());
    assert_eq!(api.post_json(&many).await.0, 413);
    let big = json!({"event_type": "log", "message": "x".repeat(1024 * 1024)});
    assert_eq!(api.post_json(&big).await.0, 413);
    // A SERVER-only token cannot claim CLIENT events.
    let (status, body) = api
        .post(Some(SERVER_TOKEN), "application/json", event(0).to_string())
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["path"], "/source");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_bad_event_publishes_nothing_and_every_error_is_listed() {
    let api = start().await;
    let mut batch: Vec<Value> = (0..5).map(event).collect();
    batch[1]["event_type"] = json!("not valid!");
    batch[3]["timestamp"] = json!("yesterday");
    batch[3]["colour"] = json!("red");
    let (status, body) = api.post_json(&Value::Array(batch)).await;
    assert_eq!(status, 422, "{body}");
    let errors: Vec<(u64, String)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "/event_type".into()),
            (3, "/colour".into()),
            (3, "/timestamp".into())
        ]
    );
    // Nothing of the rejected request reached the topic: the first record there is the sentinel.
    let (status, _) = api.post_json(&json!({"event_type": "log", "source": "SERVER", "message": "sentinel", "session_id": "s-x"})).await;
    assert_eq!(status, 202);
    let got = api.raw_events(1).await;
    assert_eq!(got[0].1.message.as_deref(), Some("sentinel"));
    let everything = consume_n(&api.topics.raw.name, 3, 2, Duration::from_secs(3)).await;
    assert!(
        everything.is_err(),
        "more than the sentinel reached the topic"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_topic() {
    let api = start().await;
    let secrets = [
        "hunter2-pw",
        "old-pw-42",
        "new-pw-43",
        "s3cr3t",
        "tok-en",
        "AKIAKEY",
        "sk-secret",
        "creds!",
    ];
    let keys = [
        "password",
        "oldPassword",
        "newPassword",
        "secret",
        "token",
        "accessKey",
        "secretKey",
        "credentials",
    ];
    let mut batch = Vec::new();
    for (i, (key, secret)) in keys.iter().zip(secrets).enumerate() {
        // At the top of params, nested deep, inside arrays, in the response, in a different case.
        batch.push(json!({"event_type": "log", "source": "SERVER", "params": {*key: secret}}));
        batch.push(json!({"event_type": "log", "source": "SERVER", "params": {"a": {"b": [{"c": {*key: secret}}]}}}));
        batch.push(json!({"event_type": "log", "source": "SERVER", "response": {"result": {key.to_uppercase(): secret}}}));
        batch.push(json!({"event_type": "log", "source": "SERVER", "params": {"config": {"name": key, "value": secret}}, "message": format!("case {i}")}));
    }
    let (status, body) = api.post_json(&Value::Array(batch.clone())).await;
    assert_eq!(status, 202, "{body}");
    let got = api.raw_events(batch.len()).await;
    for (bytes, event) in &got {
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret {secret} reached the topic in {event:?}"
            );
        }
    }
    assert!(got
        .iter()
        .any(|(_, e)| e.params.values().any(|v| v.contains("[NOT OUTPUT]"))));
}
