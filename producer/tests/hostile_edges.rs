//! The release-shaped `audit-producer serve` (the real binary, the real broker) against
//! senders that try to take it down, widen their rights or hold its memory: idle and
//! slow-header connection floods, one credential flooding big bodies, malformed credentials,
//! directory writes past a token's scope or tenant, and bodies shaped to blow up when parsed.

use audit_tests::bench::{heavy_body, quantile};
use audit_tests::pipeline::{binary, free_port};
use audit_tests::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EVENTS_TOKEN: &str = "hostile-events-token-0123456789";
const SESSIONS_TOKEN: &str = "hostile-sessions-token-0123456789";
const TENANT_TOKEN: &str = "hostile-tenant-token-0123456789";
const BROWSER_SECRET: &str = "hostile-browser-secret-0123456789abcdef";

/// A running `audit-producer serve`, killed when dropped.
struct Producer {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(http_settings: &str) -> Producer {
    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("producer.toml");
    std::fs::write(
        &config,
        format!(
            r#"[http]
listen = "{addr}"
{http_settings}

[[tokens]]
token = "{EVENTS_TOKEN}"
service = "backend"
sources = ["SERVER", "CLIENT"]
scopes = ["events"]

[[tokens]]
token = "{SESSIONS_TOKEN}"
service = "login"
scopes = ["events", "sessions"]

[[tokens]]
token = "{TENANT_TOKEN}"
service = "acme-idp"
scopes = ["events", "directory"]
tenant = "acme"

[browser]
service = "web"
origins = ["https://app.example.com"]

[[browser.keys]]
id = "k1"
algorithm = "HS256"
secret = "{BROWSER_SECRET}"
"#
        ),
    )
    .unwrap();
    let child = Command::new(binary("audit-producer").unwrap())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__LOG__LEVEL", "warn")
        .envs(topics_env(&topics))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let producer = Producer {
        child,
        addr,
        http: reqwest::Client::new(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = producer.get("/healthz", Duration::from_secs(2)).await {
            if r == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the producer never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    producer
}

fn event(n: usize) -> Value {
    json!({"event_type": "query-created", "source": "SERVER", "session_id": format!("s-{n}"),
           "user_id": "u-1", "message": format!("event {n}")})
}

impl Producer {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str, timeout: Duration) -> reqwest::Result<u16> {
        Ok(self
            .http
            .get(self.url(path))
            .timeout(timeout)
            .send()
            .await?
            .status()
            .as_u16())
    }

    /// A request with `authorization` as the header's raw value (none when `None`).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<&str>,
        body: String,
        timeout: Duration,
    ) -> reqwest::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .timeout(timeout)
            .body(body);
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn post_events(&self, token: &str, body: &Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            "/v1/events",
            Some(&format!("Bearer {token}")),
            body.to_string(),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
    }

    async fn put_directory(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::PUT,
            path,
            Some(&format!("Bearer {token}")),
            body.to_string(),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
    }
}

/// Keeps `count` connections open that never send a byte, reopening each one the server
/// closes 100 ms later, until `until`.
async fn idle_flood(addr: SocketAddr, count: usize, until: Instant) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..count {
        tasks.push(tokio::spawn(async move {
            let mut opened = 0usize;
            while Instant::now() < until {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                opened += 1;
                let mut buf = [0u8; 64];
                // Held until the server closes it (or the flood ends).
                let left = until.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, stream.read(&mut buf)).await;
                // And opened again, a moment later.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            opened
        }));
    }
    let mut opened = 0;
    for t in tasks {
        opened += t.await.unwrap_or(0);
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_flood_over_the_cap_locks_nobody_out() {
    // The shipped defaults: 1,024 connections, 256 per address, 30 s idle timeout.
    let producer = start("").await;
    let hold = Duration::from_secs(40);
    let until = Instant::now() + hold;
    let flood = tokio::spawn(idle_flood(producer.addr, 1_100, until));
    // Let the flood fill every slot first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut health_ms = Vec::new();
    let mut post_ms = Vec::new();
    let mut n = 0;
    while Instant::now() + Duration::from_secs(2) < until {
        // A fresh connection each time, as a new sender would open.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let t = Instant::now();
        let health = client
            .get(producer.url("/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let health = health.map(|r| r.status().as_u16());
        assert_eq!(
            health.as_ref().ok(),
            Some(&200),
            "/healthz during the flood: {health:?}"
        );
        health_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let posted = client
            .post(producer.url("/v1/events"))
            .bearer_auth(EVENTS_TOKEN)
            .json(&event(n))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(
            posted.as_ref().ok(),
            Some(&202),
            "an event during the flood: {posted:?}"
        );
        post_ms.push(t.elapsed().as_secs_f64() * 1e3);
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let opened = flood.await.unwrap();
    assert!(
        opened >= 1_100,
        "the flood opened {opened} connections; it must have held 1,100"
    );
    health_ms.sort_by(f64::total_cmp);
    post_ms.sort_by(f64::total_cmp);
    println!(
        "idle flood of 1,100 connections held {hold:?} ({opened} opened in all): {n} rounds; /healthz max {:.1} ms, event max {:.1} ms",
        health_ms.last().copied().unwrap_or_default(),
        post_ms.last().copied().unwrap_or_default()
    );
    assert!(n >= 20, "only {n} rounds ran");
}

#[tokio::test]
async fn a_slow_header_client_is_closed_and_others_are_served() {
    let producer = start("header_read_timeout_ms = 1000\nidle_timeout_ms = 3000").await;
    let mut slow = TcpStream::connect(producer.addr).await.unwrap();
    slow.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // One header byte every 300 ms: never a complete header.
    let closed = loop {
        if started.elapsed() > Duration::from_secs(20) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow.write_all(b"X").await.is_err() {
            break true;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            // A 408 (or any answer) is the server giving up on the header too.
            Ok(Ok(_)) => break true,
            Err(_) => {}
        }
    };
    assert!(closed, "a header trickling in for 20 s was never cut off");
    println!(
        "slow-header client closed after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A connection that sends nothing at all is closed at the idle timeout.
    let mut idle = TcpStream::connect(producer.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut buf)).await;
    assert!(read.is_ok(), "an idle connection was still open after 20 s");
    let (status, _) = producer.post_events(EVENTS_TOKEN, &event(1)).await;
    assert_eq!(status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_browser_token_flooding_big_bodies_does_not_slow_another_sender() {
    let producer = start("").await;
    let flooder = audit_tests::bench::browser_token(
        "k1",
        BROWSER_SECRET,
        "mallory",
        Duration::from_secs(600),
    )
    .unwrap();
    let body = heavy_body();
    let stop = Instant::now() + Duration::from_secs(15);
    let mut flood = Vec::new();
    for _ in 0..48 {
        let (http, url, token, body) = (
            reqwest::Client::new(),
            producer.url("/v1/events"),
            flooder.clone(),
            body.clone(),
        );
        flood.push(tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            while Instant::now() < stop {
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .header("origin", "https://app.example.com")
                    .body(body.clone())
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                if let Ok(r) = r {
                    *statuses.entry(r.status().as_u16()).or_default() += 1;
                }
            }
            statuses
        }));
    }
    let mut latencies = Vec::new();
    let mut n = 0;
    while Instant::now() < stop {
        let t = Instant::now();
        let (status, body) = producer.post_events(EVENTS_TOKEN, &event(n)).await;
        assert_eq!(status, 202, "the other sender was refused: {body}");
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for f in flood {
        for (s, c) in f.await.unwrap() {
            *statuses.entry(s).or_default() += c;
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "flooder's answers {statuses:?}; the other sender: {n} events, p50 {:.1} ms, p99 {:.1} ms",
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99)
    );
    assert!(
        statuses.get(&429).copied().unwrap_or(0) > 0,
        "one browser token held 48 big requests at once and was never told 429: {statuses:?}"
    );
}

#[tokio::test]
async fn a_malformed_authorization_header_is_401_never_anonymous() {
    let producer = start("allow_anonymous = true").await;
    let post = |auth: Option<&'static str>, body: Value| {
        let producer = &producer;
        async move {
            producer
                .send(
                    reqwest::Method::POST,
                    "/v1/events",
                    auth,
                    body.to_string(),
                    Duration::from_secs(30),
                )
                .await
                .unwrap()
        }
    };
    let client_event =
        json!({"event_type": "query-created", "source": "CLIENT", "session_id": "s-1"});
    // No header at all: anonymous, CLIENT events only.
    assert_eq!(post(None, client_event.clone()).await.0, 202);
    let (status, body) = post(None, event(1)).await;
    assert_eq!(status, 422, "an anonymous SERVER event: {body}");
    for header in [
        "Basic dXNlcjpwYXNzd29yZA==",
        "bearer x",
        "Bearer",
        "Token abc",
        "Bearer a b",
        "Bearer wrong-token-0123456789",
    ] {
        let (status, body) = post(Some(header), client_event.clone()).await;
        assert_eq!(status, 401, "{header:?} was served: {body}");
    }
    // A valid token's scheme is case-insensitive.
    let lower = format!("bearer {EVENTS_TOKEN}");
    let (status, _) = producer
        .send(
            reqwest::Method::POST,
            "/v1/events",
            Some(&lower),
            event(2).to_string(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(status, 202);
}

#[test]
fn anonymous_mode_is_refused_on_a_network_address_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    let run = |settings: &str| {
        std::fs::write(
            &config,
            format!("[http]\nlisten = \"0.0.0.0:8080\"\n{settings}\n"),
        )
        .unwrap();
        Command::new(binary("audit-producer").unwrap())
            .arg("--config")
            .arg(&config)
            .arg("config")
            .output()
            .unwrap()
    };
    let refused = run("allow_anonymous = true");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("http.allow_anonymous"), "{stderr}");
    assert!(
        run("allow_anonymous = true\nallow_anonymous_on_network = true")
            .status
            .success()
    );
}

#[tokio::test]
async fn directory_writes_stay_within_the_token_scope_and_tenant() {
    let producer = start("").await;
    let session = json!({"user_id": "u-1", "started_at": "2026-12-01T10:00:00Z"});
    let (status, body) = producer
        .put_directory(
            SESSIONS_TOKEN,
            "/v1/directory/sessions/s-1",
            session.clone(),
        )
        .await;
    assert_eq!(status, 202, "a login service records a session: {body}");
    // ... but cannot move anyone into a group, or make groups.
    let (status, body) = producer
        .put_directory(
            SESSIONS_TOKEN,
            "/v1/directory/users/u-1",
            json!({"login": "alice", "group_ids": ["dropped-group"]}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("users"), "{body}");
    let (status, _) = producer
        .put_directory(
            SESSIONS_TOKEN,
            "/v1/directory/groups/g-1",
            json!({"name": "contractors"}),
        )
        .await;
    assert_eq!(status, 403);
    // Bulk: one line of a kind it may not write refuses the whole request.
    let bulk = json!([
        {"op": "put", "kind": "session", "id": "s-2", "user_id": "u-1", "started_at": "2026-12-01T10:00:00Z"},
        {"op": "put", "kind": "group", "id": "g-2", "name": "x"}
    ]);
    let (status, body) = producer
        .send(
            reqwest::Method::POST,
            "/v1/directory",
            Some(&format!("Bearer {SESSIONS_TOKEN}")),
            bulk.to_string(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(status == 403 || status == 422, "{status} {body}");
    // A tenant-bound token writes none of the shared directory.
    for (path, body) in [
        ("/v1/directory/sessions/s-9", session.clone()),
        ("/v1/directory/users/u-9", json!({"login": "eve"})),
    ] {
        let (status, answer) = producer.put_directory(TENANT_TOKEN, path, body).await;
        assert_eq!(status, 403, "{path}: {answer}");
        assert!(answer.to_string().contains("tenant"), "{answer}");
    }
    // An events-only token writes none of it either.
    let (status, _) = producer
        .put_directory(EVENTS_TOKEN, "/v1/directory/sessions/s-3", session)
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn bodies_shaped_to_blow_up_are_refused_before_parsing() {
    let producer = start("").await;
    let deep = format!(
        "[{{\"event_type\":\"x\",\"source\":\"SERVER\",\"params\":{{\"p\":{}1{}}}}}]",
        "[".repeat(100),
        "]".repeat(100)
    );
    let many_keys: serde_json::Map<String, Value> =
        (0..1_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let wide_array =
        json!([{"event_type": "x", "source": "SERVER", "params": {"p": vec![0; 5_000]}}]);
    for (what, body) in [
        ("deep nesting", deep),
        (
            "a thousand params",
            json!([{"event_type": "x", "source": "SERVER", "params": many_keys}]).to_string(),
        ),
        ("a 5,000-element array", wide_array.to_string()),
    ] {
        let (status, answer) = producer
            .send(
                reqwest::Method::POST,
                "/v1/events",
                Some(&format!("Bearer {EVENTS_TOKEN}")),
                body,
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(status, 413, "{what}: {answer}");
        assert!(answer.to_string().contains("http.max_"), "{what}: {answer}");
    }
    // The service is fine afterwards.
    assert_eq!(producer.post_events(EVENTS_TOKEN, &event(1)).await.0, 202);
}
