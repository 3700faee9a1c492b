//! The ClickHouse sink's circuit breaker against the real broker and the real ClickHouse 26.9
//! server: when ClickHouse refuses every row for one reason (a column dropped under the running
//! sink, a constraint every row breaks), the sink pauses uncommitted and says why on `/healthz`
//! and in `audit_circuit_open`, dead-letters nothing for it, and goes on once the table is put
//! right, storing every event exactly once. One bad row among good ones is still a dead letter.

use audit_runtime::TopicsConfig;
use audit_schemas::*;
use audit_tests::pipeline::{free_port, metric_sum};
use audit_tests::*;
use rdkafka::producer::FutureProducer;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// The sink process, killed when the test ends, passing or failing.
struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(topics: &TopicsConfig, db: &str, group: &str, ops: SocketAddr) -> Sink {
    let child = Command::new(env!("CARGO_BIN_EXE_audit-sink-clickhouse"))
        .arg("run")
        .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__CLICKHOUSE__URL", clickhouse_url())
        .env("AUDIT__CLICKHOUSE__DATABASE", db)
        .env("AUDIT__CLICKHOUSE__GROUP_ID", group)
        .env("AUDIT__CLICKHOUSE__BATCH_MAX_WAIT_MS", "200")
        .env("AUDIT__CLICKHOUSE__MAX_BACKOFF_MS", "1000")
        // Probes soon, so the test does not wait out the production backoff.
        .env("AUDIT__CLICKHOUSE__BREAKER__PROBE_INITIAL_MS", "200")
        .env("AUDIT__CLICKHOUSE__BREAKER__PROBE_MAX_MS", "2000")
        .env("AUDIT__OPS__LISTEN", ops.to_string())
        .env(
            "AUDIT__LOG__LEVEL",
            std::env::var("SINK_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("AUDIT__TOPICS__ENRICHED__NAME", &topics.enriched.name)
        .env("AUDIT__TOPICS__DLQ__NAME", &topics.dlq.name)
        .stdout(Stdio::null())
        .spawn()
        .expect("the sink starts");
    Sink(child)
}

fn event(n: usize, event_type: &str) -> EnrichedAuditEvent {
    EnrichedAuditEvent {
        event: RawAuditEvent {
            event_id: Uuid::new_v4(),
            timestamp: Timestamp::now(),
            event_type: EventType::new(event_type).expect("a valid type"),
            source: Source::Server,
            service: "web".into(),
            session_id: Some(format!("s{}", n % 5)),
            user_id: Some("u1".into()),
            username: Some("alice".into()),
            tenant: None,
            success: true,
            message: Some(format!("event {n}")),
            entities: vec![EntityRef {
                kind: "query".into(),
                id: format!("q{}", n % 7),
                name: None,
                role: Default::default(),
            }],
            params: [("n".to_string(), n.to_string())].into(),
            response: None,
            error: None,
            client: Some(ClientInfo {
                ip: Some("10.0.0.7".into()),
                user_agent: Some("Mozilla".into()),
            }),
            ingest: None,
            utc_offset_minutes: None,
        },
        user: None,
        groups: vec![],
        session: None,
        enrichment: Enrichment::NoSession,
        claimed_user_mismatch: false,
        pipeline: PipelineMeta {
            received_at: Timestamp::now(),
            enriched_at: Timestamp::now(),
            raw_partition: 0,
            raw_offset: n as i64,
        },
        event_time: Default::default(),
        chain: None,
        catalog: None,
    }
}

/// A producer that lingers, so a burst goes to the broker as one record batch and the sink
/// reads it as one batch: what a sink behind a busy topic sees.
fn bursting_producer() -> FutureProducer {
    let mut kafka = kafka_config();
    kafka
        .properties
        .insert("linger.ms".to_string(), "300".to_string());
    audit_runtime::kafka::producer(&kafka, "audit-tests-breaker").expect("a producer")
}

async fn publish(p: &FutureProducer, topics: &TopicsConfig, events: &[EnrichedAuditEvent]) {
    let encoded: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| (e.event.partition_key(), e.encode().expect("encodes")))
        .collect();
    let sends = encoded
        .iter()
        .map(|(k, v)| produce(p, &topics.enriched.name, k, v));
    for r in futures::future::join_all(sends).await {
        r.expect("published");
    }
}

/// `/healthz`: status code and body.
async fn healthz(ops: SocketAddr) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(ops).await.ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: sink\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1)?.to_string();
    Some((status, body))
}

/// Waits until `/healthz` satisfies `want`; the last answer when it never does.
async fn wait_health(
    ops: SocketAddr,
    timeout: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> Result<(u16, String), Option<(u16, String)>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        last = healthz(ops).await;
        if let Some((status, body)) = &last {
            if want(*status, body) {
                return Ok((*status, body.clone()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// The breaker's check is unhealthy and names `class`.
fn breaker_open(class: &str) -> impl Fn(u16, &str) -> bool + '_ {
    move |status, body| {
        status == 503
            && body.contains(r#""circuit_breaker":{"healthy":false"#)
            && body.contains(class)
    }
}

async fn count(c: &clickhouse::Client) -> u64 {
    c.query("SELECT count() FROM events")
        .fetch_one()
        .await
        .unwrap_or(0)
}

async fn wait_count(c: &clickhouse::Client, n: u64, timeout: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = count(c).await;
        if got >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn dead_letters(topics: &TopicsConfig) -> Vec<DeadLetter> {
    consume_all(&topics.dlq.name, 1, Duration::from_secs(3))
        .await
        .expect("the dead-letter topic reads")
        .iter()
        .map(|m| DeadLetter::decode(payload(m).expect("a value")).expect("a dead letter"))
        .collect()
}

async fn exec(c: &clickhouse::Client, sql: &str) {
    c.query(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_refused_for_one_reason_pause_the_sink_and_nothing_is_dead_lettered() {
    let topics = unique_topics(1);
    create_topics(&topics).await.expect("topics");
    let p = bursting_producer();
    let db = unique("audit_breaker").replace('-', "_");
    let c = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&db);
    let ops = SocketAddr::from(([127, 0, 0, 1], free_port().expect("a free port")));
    let _sink = start(&topics, &db, &unique("g"), ops);
    wait_health(ops, Duration::from_secs(60), |s, _| s == 200)
        .await
        .expect("the sink starts healthy");

    // A stream in flow.
    let mut stored = 0u64;
    let first: Vec<_> = (0..100).map(|n| event(n, "log")).collect();
    publish(&p, &topics, &first).await;
    stored += 100;
    assert_eq!(
        wait_count(&c, stored, Duration::from_secs(60)).await,
        stored
    );

    // 1. A column the sink writes is dropped under it: every insert fails for the schema.
    exec(&c, "ALTER TABLE events DROP COLUMN client_user_agent").await;
    let second: Vec<_> = (100..400).map(|n| event(n, "log")).collect();
    publish(&p, &topics, &second).await;
    let (_, body) = wait_health(
        ops,
        Duration::from_secs(60),
        breaker_open("NO_SUCH_COLUMN_IN_TABLE"),
    )
    .await
    .expect("the breaker opens and /healthz says why");
    assert!(body.contains("client_user_agent"), "{body}");
    assert_eq!(metric_sum(ops, "audit_circuit_open").await.ok(), Some(1.0));
    assert_eq!(count(&c).await, stored, "nothing stored while paused");
    exec(
        &c,
        "ALTER TABLE events ADD COLUMN client_user_agent Nullable(String) AFTER client_ip",
    )
    .await;
    stored += 300;
    assert_eq!(
        wait_count(&c, stored, Duration::from_secs(60)).await,
        stored
    );
    wait_health(ops, Duration::from_secs(30), |s, _| s == 200)
        .await
        .expect("healthy again once the column is back");
    assert_eq!(metric_sum(ops, "audit_circuit_open").await.ok(), Some(0.0));

    // 2. A constraint every row breaks (a per-row refusal, but of every row): without the
    // breaker each row would be bisected out and dead-lettered, the whole stream with it.
    exec(
        &c,
        "ALTER TABLE events ADD CONSTRAINT misconfigured CHECK event_type != 'log'",
    )
    .await;
    let third: Vec<_> = (400..700).map(|n| event(n, "log")).collect();
    publish(&p, &topics, &third).await;
    let (_, body) = wait_health(
        ops,
        Duration::from_secs(60),
        breaker_open("VIOLATED_CONSTRAINT"),
    )
    .await
    .expect("the breaker opens and /healthz says why");
    assert!(body.contains("misconfigured"), "{body}");
    assert_eq!(metric_sum(ops, "audit_circuit_open").await.ok(), Some(1.0));
    assert!(
        metric_sum(ops, "audit_circuit_trips_total")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
    assert_eq!(count(&c).await, stored, "nothing stored while paused");
    assert!(
        dead_letters(&topics).await.is_empty(),
        "nothing dead-lettered while the breaker is open"
    );
    exec(&c, "ALTER TABLE events DROP CONSTRAINT misconfigured").await;
    stored += 300;
    assert_eq!(
        wait_count(&c, stored, Duration::from_secs(60)).await,
        stored
    );
    wait_health(ops, Duration::from_secs(30), |s, _| s == 200)
        .await
        .expect("healthy again once the constraint is gone");

    // 3. One bad row among good ones is still a dead letter, and the breaker stays closed.
    exec(
        &c,
        "ALTER TABLE events ADD CONSTRAINT no_poison CHECK event_type != 'poison'",
    )
    .await;
    let fourth: Vec<_> = (700..750)
        .map(|n| event(n, if n == 720 { "poison" } else { "log" }))
        .collect();
    publish(&p, &topics, &fourth).await;
    stored += 49;
    assert_eq!(
        wait_count(&c, stored, Duration::from_secs(60)).await,
        stored
    );
    let letters = consume_n(&topics.dlq.name, 1, 1, Duration::from_secs(60))
        .await
        .expect("the poisoned row is dead-lettered");
    let letter = DeadLetter::decode(payload(&letters[0]).expect("a value")).expect("decodes");
    assert_eq!(letter.cause, "rejected", "{}", letter.reason);
    assert_eq!(
        EnrichedAuditEvent::decode(letter.original_value.as_deref().expect("the original"))
            .expect("decodes")
            .event
            .event_id,
        fourth[20].event.event_id
    );
    let (status, body) = healthz(ops).await.expect("/healthz answers");
    assert_eq!(status, 200, "{body}");

    // Every event once, and the one dead letter is the only one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rows, ids): (u64, u64) = c
        .query("SELECT count(), uniqExact(event_id) FROM events")
        .fetch_one()
        .await
        .expect("counts");
    assert_eq!(
        (rows, ids),
        (stored, stored),
        "count() = uniqExact(event_id)"
    );
    let all = dead_letters(&topics).await;
    assert_eq!(all.len(), 1, "only the poisoned row: {all:?}");
}
