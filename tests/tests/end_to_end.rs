//! The four services as real processes, end to end: HTTP ingest -> raw topic -> enricher ->
//! enriched topic -> ClickHouse and CloudWatch (moto), under kill -9 of each service, a broker
//! restart, and two instances of the consuming stages sharing partitions.

use audit_schemas::{AuditRule, DirectoryEntry, Group, RuleAction, Session, Timestamp, User};
use audit_tests::pipeline::Pipeline;
use audit_tests::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

const TYPES: [&str; 5] = [
    "query-created",
    "query-edited",
    "log",
    "job-start",
    "script-created",
];

/// Event `n` of a run: its id, type, and whether the rule drops it (contractor Carl's `job-*`).
struct Planned {
    id: String,
    event_type: &'static str,
    user: &'static str,
    dropped: bool,
}

fn plan(n: usize) -> Planned {
    let event_type = TYPES[n % TYPES.len()];
    let user = if (n / TYPES.len()) % 2 == 0 {
        "u-carl"
    } else {
        "u-erin"
    };
    Planned {
        id: uuid::Uuid::new_v4().to_string(),
        event_type,
        user,
        dropped: user == "u-carl" && event_type.starts_with("job-"),
    }
}

fn body(p: &Planned, n: usize) -> Value {
    let session = if p.user == "u-carl" {
        "s-carl"
    } else {
        "s-erin"
    };
    json!({
        "event_id": p.id,
        "event_type": p.event_type,
        "source": "SERVER",
        "session_id": session,
        "message": format!("e2e event {n}"),
        "entities": [{"type": "query", "id": format!("q-{}", n % 50)}],
        "params": {"n": n, "password": "never-stored"}
    })
}

async fn bootstrap(pipeline: &Pipeline) {
    let group = |id: &str, name: &str, parents: &[&str]| {
        DirectoryEntry::Group(Group {
            id: id.into(),
            name: name.into(),
            parent_ids: parents.iter().map(|p| p.to_string()).collect(),
            scim: None,
        })
    };
    let user = |id: &str, login: &str, group: &str| {
        DirectoryEntry::User(User {
            id: id.into(),
            login: login.into(),
            name: None,
            group_ids: vec![group.into()],
            scim: None,
        })
    };
    let session = |id: &str, user: &str| {
        DirectoryEntry::Session(Session {
            id: id.into(),
            user_id: user.into(),
            started_at: Timestamp::now(),
            ip: Some("10.1.2.3".into()),
            user_agent: None,
            last_activity_at: None,
            ended_at: None,
        })
    };
    pipeline
        .put_directory(vec![
            group("g-all", "everyone", &[]),
            group("g-ctr", "contractors", &["g-all"]),
            group("g-eng", "engineering", &["g-all"]),
            user("u-carl", "carl", "g-ctr"),
            user("u-erin", "erin", "g-eng"),
            session("s-carl", "u-carl"),
            session("s-erin", "u-erin"),
        ])
        .await
        .unwrap();
    pipeline
        .put_rule(&AuditRule {
            id: "no-jobs-for-contractors".into(),
            order: 1,
            description: Some("e2e".into()),
            groups: vec!["contractors".into()],
            users: vec![],
            event_types: vec!["job-*".into()],
            action: RuleAction::Drop,
        })
        .await
        .unwrap();
}

/// What ClickHouse and CloudWatch must hold once `planned` went through.
struct Expected {
    rows: u64,
    /// Events the rule drops (all by `no-jobs-for-contractors`).
    dropped: u64,
    by_type_user: BTreeMap<(String, String), u64>,
    by_stream: BTreeMap<String, HashSet<String>>,
}

fn expected(pipeline: &Pipeline, planned: &[Planned]) -> Expected {
    let mut by_type_user = BTreeMap::new();
    let mut by_stream: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for p in planned.iter().filter(|p| !p.dropped) {
        *by_type_user
            .entry((p.event_type.to_string(), p.user.to_string()))
            .or_insert(0) += 1;
        by_stream
            .entry(pipeline.stream_of(p.event_type).to_string())
            .or_default()
            .insert(p.id.clone());
    }
    Expected {
        rows: by_type_user.values().sum(),
        dropped: planned.iter().filter(|p| p.dropped).count() as u64,
        by_type_user,
        by_stream,
    }
}

/// ClickHouse: exactly the expected rows (no loss, no duplicate), per type and user.
async fn assert_clickhouse_exact(pipeline: &Pipeline, want: &Expected) {
    let (rows, ids) = pipeline
        .wait_for_rows(want.rows, Duration::from_secs(180))
        .await;
    assert_eq!(
        (rows, ids),
        (want.rows, want.rows),
        "ClickHouse rows and distinct ids"
    );
    let got: BTreeMap<(String, String), u64> = pipeline
        .clickhouse()
        .query("SELECT event_type, assumeNotNull(user_id), count() FROM events WHERE event_type NOT IN ('audit.rule-drops', 'audit.chain-digest', 'audit.chain-checkpoint') GROUP BY 1, 2")
        .fetch_all::<(String, String, u64)>()
        .await
        .unwrap()
        .into_iter()
        .map(|(t, u, c)| ((t, u), c))
        .collect();
    assert_eq!(got, want.by_type_user, "rows per (event_type, user)");
    let leaked: u64 = pipeline
        .clickhouse()
        .query("SELECT count() FROM events WHERE arrayExists(v -> position(v, 'never-stored') > 0, mapValues(params))")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(leaked, 0, "a secret reached ClickHouse");
    // What the rule dropped is on record too: each dropped event counted once.
    let drops = pipeline
        .rule_drops(want.dropped, Duration::from_secs(60))
        .await;
    let want_drops: BTreeMap<String, u64> = (want.dropped > 0)
        .then(|| ("no-jobs-for-contractors".to_string(), want.dropped))
        .into_iter()
        .collect();
    assert_eq!(
        drops, want_drops,
        "events dropped per rule, from rule_drops"
    );
}

/// CloudWatch: every expected event in its stream; returns the number of duplicates.
async fn assert_cloudwatch_complete(pipeline: &Pipeline, want: &Expected) -> usize {
    let client = logs_client(&cloudwatch_url()).await;
    let got = wait_for_distinct_events(
        &client,
        &pipeline.log_group,
        want.rows as usize,
        Duration::from_secs(180),
    )
    .await
    .unwrap();
    let mut duplicates = 0;
    for (stream, ids) in &want.by_stream {
        let events = got.get(stream).map(Vec::as_slice).unwrap_or_default();
        let seen: Vec<String> = events
            .iter()
            .filter_map(|(_, e)| e["event"]["event_id"].as_str().map(String::from))
            .collect();
        let distinct: HashSet<String> = seen.iter().cloned().collect();
        duplicates += seen.len() - distinct.len();
        let missing = ids.difference(&distinct).count();
        assert_eq!(missing, 0, "{missing} events missing from stream {stream}");
        assert_eq!(&distinct, ids, "stream {stream} holds other events");
    }
    let filled: Vec<&String> = got
        .iter()
        .filter(|(_, e)| !e.is_empty())
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        filled,
        want.by_stream.keys().collect::<Vec<_>>(),
        "streams holding events"
    );
    duplicates
}

/// Sends `total` planned events in batches of `batch`, pausing `pace` between batches, each
/// batch retried (same ids) until accepted. `gate` is held while a batch is in flight.
async fn send_all(
    pipeline: Arc<Pipeline>,
    planned: Arc<Vec<Planned>>,
    batch: usize,
    pace: Duration,
    gate: Arc<Mutex<()>>,
) -> usize {
    let mut retries = 0;
    for (i, chunk) in planned.chunks(batch).enumerate() {
        let bodies: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(j, p)| body(p, i * batch + j))
            .collect();
        {
            let _held = gate.lock().await;
            retries += pipeline
                .post_until_accepted(&bodies, Duration::from_secs(120))
                .await
                .unwrap()
                - 1;
        }
        tokio::time::sleep(pace).await;
    }
    retries
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_once_with_two_enrichers_and_two_clickhouse_sinks() {
    let pipeline = Arc::new(Pipeline::create(kafka_config(), 4).await.unwrap());
    bootstrap(&pipeline).await;
    let _producer = pipeline.start(Stage::Producer).await.unwrap();
    let enrichers = [
        pipeline.start(Stage::Enricher).await.unwrap(),
        pipeline.start(Stage::Enricher).await.unwrap(),
    ];
    let sinks = [
        pipeline.start(Stage::ClickHouseSink).await.unwrap(),
        pipeline.start(Stage::ClickHouseSink).await.unwrap(),
    ];
    let _cloudwatch = pipeline.start(Stage::CloudWatchSink).await.unwrap();
    for s in enrichers.iter().chain(&sinks) {
        s.wait_assigned(Duration::from_secs(60)).await.unwrap();
    }

    let planned: Arc<Vec<Planned>> = Arc::new((0..4_000).map(plan).collect());
    let want = expected(&pipeline, &planned);
    let gate = Arc::new(Mutex::new(()));
    send_all(pipeline.clone(), planned.clone(), 200, Duration::ZERO, gate).await;

    assert_clickhouse_exact(&pipeline, &want).await;
    assert_eq!(assert_cloudwatch_complete(&pipeline, &want).await, 0);
    // Both instances of each consuming stage did part of the work.
    let work = enrichers
        .iter()
        .map(|s| (s, "audit_enricher_events_in_total"))
        .chain(
            sinks
                .iter()
                .map(|s| (s, "audit_clickhouse_rows_inserted_total")),
        );
    for (service, counter) in work {
        let n = service.metric_sum(counter).await.unwrap();
        assert!(
            n > 0.0,
            "an instance of {} got no partition",
            service.stage.binary()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_each_service_in_turn_then_restart_loses_nothing() {
    let started = Timestamp::now().to_rfc3339();
    let pipeline = Arc::new(Pipeline::create(kafka_config(), 4).await.unwrap());
    bootstrap(&pipeline).await;
    let mut running: HashMap<&str, Service> = HashMap::new();
    for stage in Stage::ALL {
        running.insert(stage.binary(), pipeline.start(stage).await.unwrap());
    }

    // 8,000 events over about a minute, while each service in turn is killed and restarted.
    let planned: Arc<Vec<Planned>> = Arc::new((0..8_000).map(plan).collect());
    let want = expected(&pipeline, &planned);
    let gate = Arc::new(Mutex::new(()));
    let sender = tokio::spawn(send_all(
        pipeline.clone(),
        planned.clone(),
        100,
        Duration::from_millis(500),
        gate.clone(),
    ));
    for stage in Stage::ALL {
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The producer dies between requests: a request cut off mid-way is retried by its
        // client with the same ids, which only the ClickHouse sink's replay window would catch
        // (see README); this test is about crashes, not client retries.
        let held = if stage == Stage::Producer {
            Some(gate.lock().await)
        } else {
            None
        };
        running
            .get_mut(stage.binary())
            .expect("started above")
            .kill9();
        if stage == Stage::Producer {
            running.insert(stage.binary(), pipeline.start(stage).await.unwrap());
        } else {
            // Tansu 0.6 keeps a killed member registered until its 10 s session timeout and
            // gives a newcomer no partition meanwhile; real Kafka rebalances at once.
            tokio::time::sleep(Duration::from_secs(12)).await;
            running.insert(stage.binary(), pipeline.start(stage).await.unwrap());
        }
        drop(held);
    }
    let retries = sender.await.unwrap();
    eprintln!("sender retried {retries} batches while the producer was down");

    assert_clickhouse_exact(&pipeline, &want).await;
    let duplicates = assert_cloudwatch_complete(&pipeline, &want).await;
    eprintln!("CloudWatch duplicates after the kills: {duplicates}");
    // The crashes leave replays and unsigned chain tails, never a false alarm.
    assert_verified(&pipeline, &started).await;
}

/// `auditctl verify` passes over everything since `from`, ClickHouse and CloudWatch.
async fn assert_verified(pipeline: &Pipeline, from: &str) {
    // The enricher signs its last links about a second after it goes idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000).to_rfc3339();
    let (ok, text) = pipeline.verify(from, &to, true).unwrap();
    eprintln!("{text}");
    assert!(ok, "verify after the run: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_run_loses_nothing() {
    let mut broker = PrivateBroker::start().await.unwrap();
    let pipeline = Arc::new(Pipeline::create(broker.kafka(), 2).await.unwrap());
    bootstrap(&pipeline).await;
    let mut services = Vec::new();
    for stage in Stage::ALL {
        services.push(pipeline.start(stage).await.unwrap());
    }

    let planned: Arc<Vec<Planned>> = Arc::new((0..3_000).map(plan).collect());
    let want = expected(&pipeline, &planned);
    let sender = tokio::spawn(send_all(
        pipeline.clone(),
        planned.clone(),
        100,
        Duration::from_millis(300),
        Arc::new(Mutex::new(())),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.restart().await.unwrap();
    let retries = sender.await.unwrap();
    eprintln!("sender retried {retries} batches while the broker was down");

    // No loss; a batch whose acknowledgement the restart cut off may be stored twice.
    let (rows, ids) = pipeline
        .wait_for_rows(want.rows, Duration::from_secs(180))
        .await;
    assert_eq!(ids, want.rows, "distinct events in ClickHouse");
    eprintln!(
        "ClickHouse duplicates after the broker restart: {}",
        rows - ids
    );
    let duplicates = assert_cloudwatch_complete(&pipeline, &want).await;
    eprintln!("CloudWatch duplicates after the broker restart: {duplicates}");
    for s in &services {
        assert!(
            s.metric_sum("audit_consumer_errors_total").await.is_ok(),
            "{} stopped answering after the restart",
            s.stage.binary()
        );
    }
}
