//! `audit-sink-clickhouse` against the real broker and the real ClickHouse 26.9 server.

use audit_runtime::TopicsConfig;
use audit_schemas::*;
use audit_sink_clickhouse::encoder::{row, EventRow, Origin};
use audit_tests::*;
use rdkafka::producer::FutureProducer;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

/// A child process that is killed when the test ends, passing or failing.
struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cmd(topics: &TopicsConfig, db: &str, url: &str, group: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-sink-clickhouse"));
    cmd.env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__CLICKHOUSE__URL", url)
        .env("AUDIT__CLICKHOUSE__DATABASE", db)
        .env("AUDIT__CLICKHOUSE__GROUP_ID", group)
        .env("AUDIT__CLICKHOUSE__BATCH_MAX_WAIT_MS", "200")
        .env("AUDIT__CLICKHOUSE__BATCH_MAX_ROWS", "2000")
        .env("AUDIT__CLICKHOUSE__MAX_BACKOFF_MS", "2000")
        .env("AUDIT__OPS__LISTEN", "127.0.0.1:0")
        .env(
            "AUDIT__LOG__LEVEL",
            std::env::var("SINK_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("AUDIT__TOPICS__ENRICHED__NAME", &topics.enriched.name)
        .env("AUDIT__TOPICS__DLQ__NAME", &topics.dlq.name)
        .stdout(Stdio::null());
    cmd
}

fn start(topics: &TopicsConfig, db: &str, url: &str, group: &str) -> Sink {
    Sink(
        cmd(topics, db, url, group)
            .arg("run")
            .spawn()
            .expect("sink starts"),
    )
}

fn client(url: &str, db: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(url)
        .with_database(db)
}

fn db() -> String {
    unique("audit_test").replace('-', "_")
}

fn event(
    n: usize,
    event_type: &str,
    ts: Timestamp,
    entities: Vec<EntityRef>,
) -> EnrichedAuditEvent {
    EnrichedAuditEvent {
        event: RawAuditEvent {
            event_id: Uuid::new_v4(),
            timestamp: ts,
            event_type: EventType::new(event_type).unwrap(),
            source: if n % 2 == 0 {
                Source::Client
            } else {
                Source::Server
            },
            service: "web".into(),
            session_id: Some(format!("s{}", n % 5)),
            user_id: Some("claimed".into()),
            username: Some("alice".into()),
            tenant: Some("default".into()),
            success: n % 3 != 0,
            message: Some(format!("event {n} '\"\\ ✓")),
            entities,
            params: [
                ("n".to_string(), n.to_string()),
                ("nested".to_string(), r#"{"a":[1,2]}"#.to_string()),
            ]
            .into(),
            response: Some(r#"{"ok":true}"#.into()),
            error: (n % 3 == 0).then(|| ErrorInfo {
                code: Some("E42".into()),
                message: Some("boom".into()),
                stack_trace: Some("at f()\nat g()".into()),
                fingerprint: Some(format!("fp{}", n % 2)),
            }),
            client: Some(ClientInfo {
                ip: Some("10.0.0.7".into()),
                user_agent: Some("Mozilla".into()),
            }),
            ingest: None,
            utc_offset_minutes: None,
        },
        user: Some(ResolvedUser {
            id: "u1".into(),
            login: "alice@example.com".into(),
            name: Some("Alice".into()),
        }),
        groups: vec![
            GroupRef {
                id: "g-data".into(),
                name: "data".into(),
            },
            GroupRef {
                id: "g-all".into(),
                name: "everyone".into(),
            },
        ],
        session: Some(SessionInfo {
            id: format!("s{}", n % 5),
            started_at: Timestamp::from_micros(1_600_000_000_123_456),
            ip: Some("10.0.0.8".into()),
        }),
        enrichment: Enrichment::Enriched,
        claimed_user_mismatch: n % 2 == 0,
        pipeline: PipelineMeta {
            received_at: Timestamp::from_micros(1_700_000_000_000_001),
            enriched_at: Timestamp::from_micros(1_700_000_000_000_002),
            raw_partition: 4,
            raw_offset: n as i64,
        },
        event_time: Default::default(),
        chain: None,
        catalog: None,
    }
}

async fn publish(
    p: &FutureProducer,
    topics: &TopicsConfig,
    events: &[EnrichedAuditEvent],
) -> Vec<(i32, i64)> {
    let mut positions = Vec::new();
    for chunk in events.chunks(5_000) {
        let encoded: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|e| (e.event.partition_key(), e.encode().unwrap()))
            .collect();
        let sends = encoded
            .iter()
            .map(|(k, v)| produce(p, &topics.enriched.name, k, v));
        for r in futures::future::join_all(sends).await {
            positions.push(r.unwrap());
        }
    }
    positions
}

async fn wait_count(c: &clickhouse::Client, n: u64, timeout: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got: u64 = c
            .query("SELECT count() FROM events")
            .fetch_one()
            .await
            .unwrap_or(0);
        if got >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn counts(c: &clickhouse::Client) -> (u64, u64) {
    c.query("SELECT count(), uniqExact(event_id) FROM events")
        .fetch_one()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_twice_are_harmless() {
    let topics = unique_topics(1);
    let db = db();
    for _ in 0..2 {
        let out = cmd(&topics, &db, &clickhouse_url(), "g")
            .arg("migrate")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let c = client(&clickhouse_url(), &db);
    let versions: Vec<u32> = c
        .query("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let tables: Vec<String> = c
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&db)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        tables,
        vec![
            "chain_checkpoints",
            "chain_checkpoints_from_events",
            "chain_digests",
            "chain_digests_from_events",
            "chain_frontiers",
            "chain_frontiers_from_events",
            "chain_skips",
            "entity_activity",
            "entity_activity_mv",
            "entity_links",
            "entity_links_mv",
            "events",
            "rule_drops",
            "rule_drops_from_events",
            "schema_migrations"
        ]
    );
    // Retention on every start: from enriched_at (derived rows from stored_at), and off again.
    let ttl = |days: Option<&str>| {
        let mut c = cmd(&topics, &db, &clickhouse_url(), "g");
        if let Some(d) = days {
            c.env("AUDIT__CLICKHOUSE__TTL_DAYS", d);
        }
        assert!(c.arg("migrate").output().unwrap().status.success());
    };
    let create = |table: &str| {
        let c = client(&clickhouse_url(), &db);
        let table = table.to_string();
        async move {
            c.query("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = ?")
                .bind(table)
                .fetch_one::<String>()
                .await
                .unwrap()
        }
    };
    ttl(Some("30"));
    for (table, column) in audit_sink_clickhouse::migrations::RETAINED {
        let q = create(table).await;
        assert!(
            q.contains(&format!("TTL toDateTime({column}) + toIntervalDay(30)")),
            "{table}: {q}"
        );
    }
    assert!(!create("chain_checkpoints").await.contains("TTL"));
    ttl(None);
    assert!(!create("events").await.contains("TTL"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_field_round_trips_and_entity_activity_is_in_time_order() {
    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let db = db();
    let base = Timestamp::now().as_micros();
    let query = |id: &str| EntityRef {
        kind: "query".into(),
        id: id.into(),
        name: Some("Sales".into()),
        role: Default::default(),
    };
    let events = [
        event(
            0,
            "query-created",
            Timestamp::from_micros(base - 3_000_000),
            vec![query("q1")],
        ),
        event(
            1,
            "query-edited",
            Timestamp::from_micros(base - 2_000_000),
            vec![
                query("q1"),
                EntityRef {
                    kind: "project".into(),
                    id: "p1".into(),
                    name: None,
                    role: Default::default(),
                },
            ],
        ),
        event(
            2,
            "entity-shared",
            Timestamp::from_micros(base - 1_000_000),
            vec![query("q1")],
        ),
        event(
            3,
            "query-deleted",
            Timestamp::from_micros(base),
            vec![query("q1")],
        ),
        event(4, "log", Timestamp::from_micros(base), vec![]),
    ];
    // Published out of time order.
    let order = [2, 0, 4, 3, 1];
    let shuffled: Vec<_> = order.iter().map(|&i| events[i].clone()).collect();
    let positions = publish(&p, &topics, &shuffled).await;
    let _sink = start(&topics, &db, &clickhouse_url(), &unique("g"));
    let c = client(&clickhouse_url(), &db);
    assert_eq!(wait_count(&c, 5, Duration::from_secs(60)).await, 5);

    let mut stored: Vec<EventRow> = c
        .query("SELECT ?fields FROM events")
        .fetch_all()
        .await
        .unwrap();
    stored.sort_by_key(|r| r.event_id);
    let mut expected: Vec<EventRow> = shuffled
        .iter()
        .zip(&positions)
        .map(|(e, (partition, offset))| {
            row(
                e.clone(),
                &topics.enriched.name,
                Origin {
                    partition: *partition,
                    offset: *offset,
                },
            )
        })
        .collect();
    expected.sort_by_key(|r| r.event_id);
    assert_eq!(stored, expected);

    let activity: Vec<(String, String)> = c
        .query("SELECT event_type, toString(timestamp) FROM entity_activity WHERE entity_type = 'query' AND entity_id = 'q1' ORDER BY timestamp")
        .fetch_all()
        .await
        .unwrap();
    let types: Vec<&str> = activity.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "query-created",
            "query-edited",
            "entity-shared",
            "query-deleted"
        ]
    );
    let project: u64 = c
        .query("SELECT count() FROM entity_activity WHERE entity_type = 'project'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(project, 1);
}

/// Every analyst query in sink-clickhouse/queries runs against the real schema.
#[tokio::test(flavor = "multi_thread")]
async fn every_analyst_query_runs() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let db = db();
    let events: Vec<_> = (0..20)
        .map(|n| {
            event(
                n,
                ["authenticationFailure", "query-created", "error", "log"][n % 4],
                Timestamp::now(),
                vec![EntityRef {
                    kind: "query".into(),
                    id: "q1".into(),
                    name: None,
                    role: Default::default(),
                }],
            )
        })
        .collect();
    publish(&p, &topics, &events).await;
    let _sink = start(&topics, &db, &clickhouse_url(), &unique("g"));
    let c = client(&clickhouse_url(), &db);
    assert_eq!(wait_count(&c, 20, Duration::from_secs(60)).await, 20);

    // Drop summaries as the enricher publishes them: a batch summed, then done again after a
    // crash with other boundaries (offsets 101 and 102 counted twice): 4 events dropped.
    let mut summaries = Vec::new();
    for offsets in [[100, 101, 102], [101, 102, 103]] {
        let mut tally = audit_schemas::drops::DropTally::default();
        for offset in offsets {
            tally.add(audit_schemas::drops::Drop {
                rule_id: "r1".into(),
                event_type: "query-created".into(),
                group: Some("contractors".into()),
                event_time: Timestamp::now(),
                raw_partition: 0,
                raw_offset: offset,
            });
        }
        summaries.extend(tally.take_summaries(Timestamp::now()));
    }
    publish(&p, &topics, &summaries).await;
    assert_eq!(wait_count(&c, 22, Duration::from_secs(60)).await, 22);

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/queries");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 10);
    let http = post_with_params;
    for f in files {
        let sql = std::fs::read_to_string(&f)
            .unwrap()
            .replace("audit.", &format!("{db}."));
        assert!(
            sql.trim_start().starts_with("--"),
            "{} must open with a comment saying what it answers",
            f.display()
        );
        let params = [
            ("entity_type", "query"),
            ("entity_id", "q1"),
            ("user_id", "u1"),
            ("from", "2000-01-01 00:00:00"),
            ("to", "2100-01-01 00:00:00"),
        ];
        let (status, body) = http(&clickhouse_url(), &sql, &params).await;
        assert_eq!(status, 200, "{}: {body}", f.display());
        let rows = body.lines().count();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        match name.as_str() {
            "entity_activity.sql" | "user_actions.sql" | "entity_history.sql" => {
                assert_eq!(rows, 20, "{name}: {body}")
            }
            // n = 0, 3, ..., 18 carry errors; fingerprints fp0 (even n) and fp1 (odd n).
            "errors_by_fingerprint.sql" => {
                let counts: Vec<(String, String)> = body
                    .lines()
                    .map(|l| {
                        let f: Vec<&str> = l.split('\t').collect();
                        (f[0].to_string(), f[1].to_string())
                    })
                    .collect();
                assert_eq!(
                    counts,
                    vec![("fp0".into(), "4".into()), ("fp1".into(), "3".into())],
                    "{body}"
                );
            }
            "dropped_by_rules.sql" => {
                let fields: Vec<&str> = body.trim().split('\t').collect();
                assert!(fields.len() >= 5, "{name}: {body:?}");
                assert_eq!(
                    fields[1..5],
                    ["r1", "query-created", "contractors", "4"],
                    "{body}"
                );
            }
            "failed_logins_per_day.sql"
            | "failed_logins_per_user.sql"
            | "sessions_of_user.sql"
            | "errors_by_type.sql"
            | "top_event_types_per_group.sql" => assert!(rows > 0, "{name}: {body}"),
            other => panic!("no expectation for {other}"),
        }
    }
}

/// Runs SQL with server-side query parameters (`{name:Type}`, sent as `param_<name>`), as an
/// analyst's tool would, and returns the status (200, or 500 with the error) and the TSV body.
async fn post_with_params(url: &str, sql: &str, params: &[(&str, &str)]) -> (u16, String) {
    let mut query = clickhouse::Client::default().with_url(url).query(sql);
    for (k, v) in params {
        query = query.param(k, v);
    }
    let result = match query.fetch_bytes("TSV") {
        Ok(mut cursor) => cursor.collect().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(body) => (200, String::from_utf8_lossy(&body).into_owned()),
        Err(e) => (500, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_and_restart_gives_no_loss_and_no_duplicate() {
    let topics = unique_topics(3);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let db = db();
    let total = 30_000;
    let now = Timestamp::now().as_micros();
    // Events spread over two months, so inserts span month partitions.
    let events: Vec<_> = (0..total)
        .map(|n| {
            event(
                n,
                "log",
                Timestamp::from_micros(now - (n as i64 % 2) * 40 * 86_400_000_000),
                vec![],
            )
        })
        .collect();
    publish(&p, &topics, &events).await;
    let group = unique("g");
    let c = client(&clickhouse_url(), &db);
    let mut sink = start(&topics, &db, &clickhouse_url(), &group);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while wait_count(&c, 1, Duration::from_secs(1)).await < 3_000
        && tokio::time::Instant::now() < deadline
    {}
    sink.0.kill().unwrap(); // SIGKILL, mid-stream
    sink.0.wait().unwrap();
    let at_kill = counts(&c).await.0;
    assert!(
        at_kill < total as u64,
        "killed too late to test anything ({at_kill} rows)"
    );
    // Restart once the group has noticed the dead member (session.timeout.ms = 10 s): Tansu
    // 0.6 hands a member that joins while a dead one is still registered no partitions.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let _again = start(&topics, &db, &clickhouse_url(), &group);
    assert_eq!(
        wait_count(&c, total as u64, Duration::from_secs(120)).await,
        total as u64
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        counts(&c).await,
        (total as u64, total as u64),
        "count() = uniqExact(event_id) = events"
    );
}

/// An enricher that crashed after publishing and before committing publishes the same events
/// again at new offsets: they are not stored twice, whether the sink meets them in the batch
/// after the originals, after its own restart (the window is reloaded from ClickHouse), or in
/// the same batch.
#[tokio::test(flavor = "multi_thread")]
async fn events_an_enricher_published_again_are_stored_once() {
    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let db = db();
    let c = client(&clickhouse_url(), &db);
    let now = Timestamp::now().as_micros();
    let events: Vec<_> = (0..600)
        .map(|n| event(n, "log", Timestamp::from_micros(now - n as i64), vec![]))
        .collect();
    let group = unique("g");

    // Originals, then the replay of the last 100 while the sink runs.
    publish(&p, &topics, &events[..300]).await;
    let mut sink = start(&topics, &db, &clickhouse_url(), &group);
    assert_eq!(wait_count(&c, 300, Duration::from_secs(60)).await, 300);
    publish(&p, &topics, &events[200..400]).await;
    assert_eq!(wait_count(&c, 400, Duration::from_secs(60)).await, 400);

    // Stopped; a replay and new events wait in the topic; a new instance starts cold.
    sink.0.kill().unwrap();
    sink.0.wait().unwrap();
    publish(&p, &topics, &events[350..500]).await;
    // Originals and their replay in one batch.
    publish(&p, &topics, &events[500..600]).await;
    publish(&p, &topics, &events[500..600]).await;
    tokio::time::sleep(Duration::from_secs(12)).await; // Tansu's session timeout, as above
    let _again = start(&topics, &db, &clickhouse_url(), &group);
    assert_eq!(wait_count(&c, 600, Duration::from_secs(60)).await, 600);
    // Give any duplicate time to land before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        counts(&c).await,
        (600, 600),
        "count() = uniqExact(event_id) = distinct events"
    );
}

/// A sink that reads the topic again from the start (its committed offsets lost, a new group,
/// or a crash long after storing and before committing) meets rows it stored and replays of
/// them at later offsets: the stored rows still count as seen, so no replay is stored.
#[tokio::test(flavor = "multi_thread")]
async fn replays_of_rows_stored_but_not_committed_are_not_stored() {
    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let db = db();
    let c = client(&clickhouse_url(), &db);
    let now = Timestamp::now().as_micros();
    let events: Vec<_> = (0..150)
        .map(|n| event(n, "log", Timestamp::from_micros(now - n as i64), vec![]))
        .collect();
    publish(&p, &topics, &events[..100]).await;
    publish(&p, &topics, &events[50..150]).await;
    let first = start(&topics, &db, &clickhouse_url(), &unique("g"));
    assert_eq!(wait_count(&c, 150, Duration::from_secs(60)).await, 150);
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(first);
    assert_eq!(counts(&c).await, (150, 150), "the first reading");

    // Nothing committed for this group: every record is read again.
    let _again = start(&topics, &db, &clickhouse_url(), &unique("g"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        counts(&c).await,
        (150, 150),
        "count() = uniqExact(event_id) = distinct events after reading everything again"
    );
}

/// A private ClickHouse server paused (SIGSTOP) for 30 s mid-stream, then resumed.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_of_30_seconds_loses_nothing() {
    let tools = std::env::var("AUDIT_TOOLS_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.local/share/audit-pipeline",
            std::env::var("HOME").unwrap()
        )
    });
    let dir = std::env::temp_dir().join(unique("ch"));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let port = 18_000 + (std::process::id() % 500) as u16;
    std::fs::write(
        dir.join("config.xml"),
        format!("<clickhouse><listen_host>127.0.0.1</listen_host><http_port>{port}</http_port><tcp_port>{}</tcp_port></clickhouse>", port + 1000),
    )
    .unwrap();
    let server = Sink(
        Command::new(format!("{tools}/venv-clickhouse/bin/python"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../dev/clickhouse-server.py"
            ))
            .args(["data", "stop.fifo"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chdb from dev/stack install"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let probe = clickhouse::Client::default().with_url(&url);
    for _ in 0..150 {
        if probe.query("SELECT 1").fetch_one::<u8>().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let db = db();
    let _sink = start(&topics, &db, &url, &unique("g"));
    let first: Vec<_> = (0..1000)
        .map(|n| event(n, "log", Timestamp::now(), vec![]))
        .collect();
    publish(&p, &topics, &first).await;
    let c = client(&url, &db);
    assert_eq!(wait_count(&c, 1000, Duration::from_secs(60)).await, 1000);

    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let second: Vec<_> = (1000..3000)
        .map(|n| event(n, "error", Timestamp::now(), vec![]))
        .collect();
    publish(&p, &topics, &second).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());

    let got = wait_count(&c, 3000, Duration::from_secs(120)).await;
    let (count, unique_ids) = counts(&c).await;
    drop(server);
    assert_eq!(got, 3000);
    assert_eq!((count, unique_ids), (3000, 3000));
}

async fn letters(topics: &TopicsConfig, n: usize) -> Vec<DeadLetter> {
    consume_n(&topics.dlq.name, 1, n, Duration::from_secs(60))
        .await
        .unwrap()
        .iter()
        .map(|m| DeadLetter::decode(payload(m).unwrap()).unwrap())
        .collect()
}

async fn wait_table(c: &clickhouse::Client) {
    for _ in 0..300 {
        if c.query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sink did not create the events table");
}

/// A row ClickHouse rejects (a table constraint here) is found, dead-lettered before any later
/// row of its partition counts as stored, and a kill -9 right after it neither loses it nor
/// duplicates anything. A server-wide failure (the table detached: "does not exist") is waited
/// out and sends nothing to the dead-letter topic.
#[tokio::test(flavor = "multi_thread")]
async fn rejected_rows_are_dead_lettered_and_server_wide_errors_are_waited_out() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let db = db();
    let group = unique("g");
    let c = client(&clickhouse_url(), &db);
    let mut sink = start(&topics, &db, &clickhouse_url(), &group);
    wait_table(&c).await;
    c.query("ALTER TABLE events ADD CONSTRAINT no_poison CHECK event_type != 'poison'")
        .execute()
        .await
        .unwrap();
    let events: Vec<_> = (0..50)
        .map(|n| {
            let t = if n == 20 { "poison" } else { "log" };
            event(n, t, Timestamp::now(), vec![])
        })
        .collect();
    let positions = publish(&p, &topics, &events).await;
    let got = letters(&topics, 1).await;
    sink.0.kill().unwrap(); // SIGKILL right after the rejection
    sink.0.wait().unwrap();
    assert_eq!(got[0].cause, "rejected", "{}", got[0].reason);
    assert!(got[0].reason.contains("no_poison"), "{}", got[0].reason);
    assert_eq!(got[0].source_offset, Some(positions[20].1));
    assert_eq!(
        EnrichedAuditEvent::decode(got[0].original_value.as_deref().unwrap())
            .unwrap()
            .event
            .event_id,
        events[20].event.event_id
    );

    // The table goes away for a while (server-wide: retried, never dead-lettered), then back.
    tokio::time::sleep(Duration::from_secs(11)).await;
    c.query("DETACH TABLE events").execute().await.unwrap();
    let _again = start(&topics, &db, &clickhouse_url(), &group);
    let more: Vec<_> = (50..80)
        .map(|n| event(n, "log", Timestamp::now(), vec![]))
        .collect();
    publish(&p, &topics, &more).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.query("ATTACH TABLE events").execute().await.unwrap();
    assert_eq!(wait_count(&c, 79, Duration::from_secs(90)).await, 79);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counts(&c).await, (79, 79));
    let all = consume_all(&topics.dlq.name, 1, Duration::from_secs(3))
        .await
        .unwrap();
    let all: Vec<DeadLetter> = all
        .iter()
        .map(|m| DeadLetter::decode(payload(m).unwrap()).unwrap())
        .collect();
    assert!(
        all.iter().all(|l| l.source_offset == Some(positions[20].1)),
        "only the poisoned row was dead-lettered: {all:?}"
    );
}

/// A topic deleted and created again starts its offsets over. (Tansu 0.6 breaks on topic
/// deletion, so the old incarnation's rows are written straight into the table here: same topic,
/// partition and offsets, other events.) The new events are stored, never skipped as "already
/// stored" because their offsets were.
#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_topic_is_not_mistaken_for_stored_rows() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let db = db();
    let c = client(&clickhouse_url(), &db);
    let group = unique("g");
    let migrated = cmd(&topics, &db, &clickhouse_url(), &group)
        .arg("migrate")
        .status()
        .unwrap();
    assert!(migrated.success());
    // The old incarnation: offsets 0..30 of the same topic partition, stored.
    let mut insert = c.insert::<EventRow>("events").await.unwrap();
    for n in 0..30 {
        let old = event(n, "log", Timestamp::now(), vec![]);
        insert
            .write(&row(
                old,
                &topics.enriched.name,
                Origin {
                    partition: 0,
                    offset: n as i64,
                },
            ))
            .await
            .unwrap();
    }
    insert.end().await.unwrap();
    let new: Vec<_> = (30..50)
        .map(|n| event(n, "log", Timestamp::now(), vec![]))
        .collect();
    let positions = publish(&p, &topics, &new).await;
    assert_eq!(positions[0], (0, 0), "the new events take the old offsets");
    tokio::time::sleep(Duration::from_secs(11)).await;
    let _sink = start(&topics, &db, &clickhouse_url(), &group);
    assert_eq!(wait_count(&c, 50, Duration::from_secs(60)).await, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counts(&c).await, (50, 50));
}
