//! The ingest API over real HTTP, publishing to the real broker.

use audit_producer::auth::Tokens;
use audit_producer::config::TokenConfig;
use audit_producer::http::{router, IngestState, Limits};
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
    let publisher = publisher(&topics, 50_000).unwrap();
    let state = Arc::new(IngestState {
        publisher,
        tokens: Tokens::new(
            &[
                TokenConfig {
                    token: TOKEN.into(),
                    service: "web".into(),
                    sources: vec![Source::Client, Source::Server],
                    scopes: vec![audit_producer::config::Scope::Events],
                    tenant: None,
                },
                TokenConfig {
                    token: SERVER_TOKEN.into(),
                    service: "backend".into(),
                    sources: vec![Source::Server],
                    scopes: vec![audit_producer::config::Scope::Events],
                    tenant: None,
                },
            ],
            None,
        ),
        redactor: Redactor::default(),
        limits: Limits {
            body_timeout: Duration::from_secs(1),
            max_errors_listed: 50,
            ..Limits::default()
        },
        scim: None,
        network: Default::default(),
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

/// Key plus encoded value of the event the API would build from `value`, near the budget.
fn big_event(bytes: usize, user: &str) -> Value {
    // `response` is JSON of any size; the per-field limits do not bound it.
    json!({"event_type": "log", "source": "SERVER", "user_id": user,
           "response": {"blob": "m".repeat(bytes)}})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_over_the_size_budget_is_refused_with_its_index_and_nothing_is_published() {
    let api = start().await;
    let limit = audit_runtime::budget::SizeBudget::new(1_000_000).raw_record_max();
    // Under the body limit (1 MiB) but over the event budget once a long user id is added.
    let body = json!([event(0), big_event(limit - 200, &"u".repeat(250)), event(2)]);
    assert!(body.to_string().len() < 1024 * 1024);
    let (status, answer) = api.post_json(&body).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["index"], 1, "{answer}");
    assert_eq!(answer["limit"], limit, "{answer}");
    // The next request goes through, and is all the raw topic holds.
    let (status, answer) = api.post_json(&json!([event(3)])).await;
    assert_eq!(status, 202, "{answer}");
    let events = api.raw_events(1).await;
    assert_eq!(events.len(), 1);
    let all = consume_all(&api.topics.raw.name, 3, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "nothing of the refused request was published");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_422_lists_a_bounded_number_of_errors() {
    let api = start().await;
    let bad: Vec<Value> = (0..400)
        .map(|_| json!({"event_type": "no spaces"}))
        .collect();
    let (status, answer) = api.post_json(&Value::Array(bad)).await;
    assert_eq!(status, 422);
    assert_eq!(answer["errors"].as_array().unwrap().len(), 50, "{answer}");
    assert!(
        answer["errors_total"].as_u64().unwrap() >= 400,
        "{}",
        answer["errors_total"]
    );
    assert_eq!(answer["errors_truncated"], true);
}

/// Opens a raw connection and sends `head` (request line and headers) and then `body`.
async fn raw_request(api: &Api, head: &str, body: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = api.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s
}

async fn status_line(mut s: tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .expect("an answer without the body being sent")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_checked_before_the_body_is_read_and_slow_bodies_time_out() {
    let api = start().await;
    // A bad token with a promised 900 kB body that never comes: refused at once.
    let s = raw_request(
        &api,
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong-token-0123456789\r\ncontent-type: application/json\r\ncontent-length: 900000\r\n\r\n",
        b"[",
    )
    .await;
    let line = status_line(s, Duration::from_secs(5)).await;
    assert!(line.contains("401"), "{line}");

    // A good token whose body trickles: 408 after the body timeout (1 s here), and the
    // service answers others meanwhile.
    let s = raw_request(
        &api,
        &format!("POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n"),
        b"[{\"event_type\":",
    )
    .await;
    let (status, answer) = api.post_json(&json!([event(1)])).await;
    assert_eq!(status, 202, "{answer}");
    let line = status_line(s, Duration::from_secs(10)).await;
    assert!(line.contains("408"), "{line}");
}
