//! `audit-sink-cloudwatch` as a process, from the real broker to the real moto server.

use audit_runtime::TopicsConfig;
use audit_schemas::*;
use audit_tests::*;
use rdkafka::producer::FutureProducer;
use std::collections::BTreeMap;
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

fn start(topics: &TopicsConfig, group: &str, endpoint: &str, extra_toml: &str) -> Sink {
    let dir = std::env::temp_dir().join(unique("cw"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "[cloudwatch]\nlog_group = \"{group}\"\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\nbatch_max_wait_ms = 200\nmax_attempts = 40\n{extra_toml}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-sink-cloudwatch"));
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__CLOUDWATCH__GROUP_ID", unique("cw"))
        .env("AUDIT__OPS__LISTEN", "127.0.0.1:0")
        .env("AUDIT__LOG__LEVEL", "warn")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdout(Stdio::null());
    cmd.envs(topics_env(topics));
    Sink(cmd.spawn().expect("sink starts"))
}

fn event(event_type: &str, timestamp: Timestamp, partition_hint: usize) -> EnrichedAuditEvent {
    EnrichedAuditEvent {
        event: RawAuditEvent {
            event_id: Uuid::new_v4(),
            timestamp,
            event_type: EventType::new(event_type).unwrap(),
            source: Source::Server,
            service: "test".into(),
            session_id: Some(format!("s{partition_hint}")),
            user_id: None,
            username: None,
            tenant: None,
            success: true,
            message: Some(format!("{event_type} at {timestamp}")),
            entities: vec![],
            params: [
                ("rows".to_string(), "3".to_string()),
                ("filters".to_string(), r#"{"region":"emea"}"#.to_string()),
            ]
            .into(),
            response: None,
            error: None,
            client: None,
            ingest: None,
            utc_offset_minutes: None,
        },
        user: None,
        groups: vec![],
        session: None,
        enrichment: Enrichment::SessionUnknown,
        claimed_user_mismatch: false,
        pipeline: PipelineMeta {
            received_at: timestamp,
            enriched_at: timestamp,
            raw_partition: 0,
            raw_offset: 0,
        },
        event_time: Default::default(),
        chain: None,
        catalog: None,
    }
}

async fn publish(p: &FutureProducer, topics: &TopicsConfig, events: &[EnrichedAuditEvent]) {
    for e in events {
        produce(
            p,
            &topics.enriched.name,
            &e.event.partition_key(),
            &e.encode().unwrap(),
        )
        .await
        .unwrap();
    }
}

/// The event id of every message `wait_for_events` read, repeats included.
fn event_ids(got: &BTreeMap<String, Vec<(i64, serde_json::Value)>>) -> Vec<String> {
    got.values()
        .flatten()
        .map(|(_, b)| b["event"]["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// Every event of every stream of the group: stream -> (timestamp, message).
const STREAMS: &str = "[cloudwatch.streams]\n\"log\" = \"datagrok_log\"\n\"error\" = \"datagrok_errors\"\n\"query-*\" = \"queries\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn globs_default_stream_time_order_across_partitions_and_dead_letters() {
    let topics = unique_topics(3);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let now = Timestamp::now().as_micros();
    let minute = 60_000_000;
    // Out of time order, spread over partitions by session.
    let mut events = Vec::new();
    for i in 0..30i64 {
        let t = Timestamp::from_micros(now - ((i * 7919) % 30) * minute);
        let ty = ["log", "error", "query-created", "query-edited", "job-start"][i as usize % 5];
        events.push(event(ty, t, i as usize));
    }
    let too_old = event(
        "log",
        Timestamp::from_micros(now - 15 * 24 * 3600 * 1_000_000),
        1,
    );
    let too_new = event("log", Timestamp::from_micros(now + 3 * 3600 * 1_000_000), 2);
    events.push(too_old.clone());
    events.push(too_new.clone());
    publish(&p, &topics, &events).await;

    let group = unique("/audit/test");
    let _sink = start(
        &topics,
        &group,
        &cloudwatch_url(),
        &format!("default_stream = \"other\"\n{STREAMS}"),
    );
    let client = logs_client(&cloudwatch_url()).await;
    let got = wait_for_events(&client, &group, 30, Duration::from_secs(60))
        .await
        .unwrap();

    let count = |s: &str| got.get(s).map_or(0, Vec::len);
    assert_eq!(
        (
            count("datagrok_log"),
            count("datagrok_errors"),
            count("queries"),
            count("other")
        ),
        (6, 6, 12, 6),
        "{:?}",
        got.keys()
    );
    for (stream, events) in &got {
        assert!(
            events.windows(2).all(|w| w[0].0 <= w[1].0),
            "{stream} is not in time order"
        );
        for (ts, body) in events {
            // Read back as a Logs Insights user reads it: RFC 3339 times, params as JSON values,
            // no null fields.
            let time = body["event"]["timestamp"].as_str().unwrap();
            assert_eq!(
                *ts,
                Timestamp::parse_rfc3339(time).unwrap().as_millis(),
                "the event time is the CloudWatch timestamp"
            );
            assert_eq!(body["event"]["params"]["rows"], 3, "{body}");
            assert_eq!(body["event"]["params"]["filters"]["region"], "emea");
            assert!(body["pipeline"]["received_at"].is_string());
            assert!(
                body["event"].get("user_id").is_none(),
                "null fields are left out: {body}"
            );
        }
    }
    assert!(got["queries"].iter().all(|(_, b)| b["event"]["event_type"]
        .as_str()
        .unwrap()
        .starts_with("query-")));

    let letters: Vec<DeadLetter> = consume_n(
        &topics.dlq.name,
        topics.dlq.partitions,
        2,
        Duration::from_secs(30),
    )
    .await
    .unwrap()
    .iter()
    .map(|m| DeadLetter::decode(payload(m).unwrap()).unwrap())
    .collect();
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("older than 14 days")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("2 hours in the future")),
        "{reasons:?}"
    );
    assert!(letters.iter().all(|l| l.stage == "sink-cloudwatch"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unmapped_types_are_skipped_and_a_deleted_group_is_recreated() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let group = unique("/audit/test");
    let _sink = start(
        &topics,
        &group,
        &cloudwatch_url(),
        &format!("default_stream = \"\"\n{STREAMS}"),
    );
    let client = logs_client(&cloudwatch_url()).await;
    publish(
        &p,
        &topics,
        &[
            event("log", Timestamp::now(), 0),
            event("job-start", Timestamp::now(), 0),
        ],
    )
    .await;
    let got = wait_for_events(&client, &group, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        got.keys()
            .filter(|k| !got[*k].is_empty())
            .collect::<Vec<_>>(),
        vec!["datagrok_log"]
    );

    // Someone deletes the group: the next events create it again and arrive.
    client
        .delete_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    publish(&p, &topics, &[event("error", Timestamp::now(), 0)]).await;
    let got = wait_for_events(&client, &group, 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(got.get("datagrok_errors").map(Vec::len), Some(1), "{got:?}");
}

/// A private moto server, paused with SIGSTOP for 30 s mid-stream (unreachable, its data kept)
/// and resumed: every event still arrives.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_of_30_seconds_loses_nothing() {
    let tools = std::env::var("AUDIT_TOOLS_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.local/share/audit-pipeline",
            std::env::var("HOME").unwrap()
        )
    });
    let port = 4500 + (std::process::id() % 60) as u16;
    let moto = Sink(
        Command::new(format!("{tools}/venv-moto/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server from dev/stack install"),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = logs_client(&endpoint).await;
    for _ in 0..100 {
        if client.describe_log_groups().send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let group = unique("/audit/outage");
    let _sink = start(&topics, &group, &endpoint, STREAMS);
    let first: Vec<_> = (0..200)
        .map(|i| event("log", Timestamp::now(), i))
        .collect();
    publish(&p, &topics, &first).await;
    wait_for_events(&client, &group, 200, Duration::from_secs(30))
        .await
        .unwrap();

    let pid = moto.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let second: Vec<_> = (0..300)
        .map(|i| event("error", Timestamp::now(), i))
        .collect();
    publish(&p, &topics, &second).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());

    let got = wait_for_events(&client, &group, 500, Duration::from_secs(120))
        .await
        .unwrap();
    drop(moto);
    let ids: std::collections::HashSet<String> = event_ids(&got).into_iter().collect();
    for e in first.iter().chain(&second) {
        assert!(
            ids.contains(&e.event.event_id.to_string()),
            "lost {}",
            e.event.event_id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn records_read_again_are_not_shipped_twice() {
    // One partition, so a later record is handled only after every earlier one.
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let group = unique("/audit/reread");
    let types = ["log", "error", "query-created"];
    let first: Vec<_> = (0..60)
        .map(|i| event(types[i % 3], Timestamp::now(), i))
        .collect();
    publish(&p, &topics, &first).await;
    let client = logs_client(&cloudwatch_url()).await;
    {
        let _sink = start(&topics, &group, &cloudwatch_url(), STREAMS);
        wait_for_events(&client, &group, 60, Duration::from_secs(60))
            .await
            .unwrap();
    }
    // A second instance in a new consumer group reads everything again, as the partition's next
    // owner does after a crash that lost the commits.
    let _again = start(&topics, &group, &cloudwatch_url(), STREAMS);
    let marker = event("log", Timestamp::now(), 0);
    publish(&p, &topics, std::slice::from_ref(&marker)).await;
    let got = wait_for_events(&client, &group, 61, Duration::from_secs(60))
        .await
        .unwrap();
    let ids = event_ids(&got);
    assert!(
        ids.contains(&marker.event.event_id.to_string()),
        "the new record arrived"
    );
    assert_eq!(ids.len(), 61, "no record shipped twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_an_enricher_published_again_are_shipped_once() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let group = unique("/audit/replay");
    let first: Vec<_> = (0..30)
        .map(|i| event(["log", "error"][i % 2], Timestamp::now(), i))
        .collect();
    publish(&p, &topics, &first).await;
    let _sink = start(&topics, &group, &cloudwatch_url(), STREAMS);
    let client = logs_client(&cloudwatch_url()).await;
    wait_for_events(&client, &group, 30, Duration::from_secs(60))
        .await
        .unwrap();
    // The same events at new offsets, as an enricher publishes them after a crash, then a new one.
    let marker = event("log", Timestamp::now(), 0);
    publish(&p, &topics, &first).await;
    publish(&p, &topics, std::slice::from_ref(&marker)).await;
    let got = wait_for_events(&client, &group, 31, Duration::from_secs(60))
        .await
        .unwrap();
    let ids = event_ids(&got);
    assert!(ids.contains(&marker.event.event_id.to_string()));
    assert_eq!(ids.len(), 31, "no event shipped twice");
}

/// An event time is the sender's claim: one claimed 30 days back or a day ahead, but received
/// now, is filed at the time it was received (CloudWatch would refuse the claim), and the
/// message keeps the claim.
#[tokio::test(flavor = "multi_thread")]
async fn implausible_claimed_times_are_filed_at_the_received_time() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    let now = Timestamp::now();
    let day = 24 * 3600 * 1_000_000;
    let mut backdated = event("log", Timestamp::from_micros(now.as_micros() - 30 * day), 0);
    backdated.pipeline.received_at = now;
    let mut ahead = event("log", Timestamp::from_micros(now.as_micros() + day), 0);
    ahead.pipeline.received_at = now;
    publish(&p, &topics, &[backdated.clone(), ahead.clone()]).await;
    let group = unique("/audit/test");
    let _sink = start(&topics, &group, &cloudwatch_url(), STREAMS);
    let client = logs_client(&cloudwatch_url()).await;
    let got = wait_for_events(&client, &group, 2, Duration::from_secs(60))
        .await
        .unwrap();
    let logged = &got["datagrok_log"];
    assert_eq!(logged.len(), 2);
    for (ts, body) in logged {
        assert_eq!(*ts, now.as_millis(), "filed at the received time");
        let claimed = Timestamp::parse_rfc3339(body["event"]["timestamp"].as_str().unwrap())
            .unwrap()
            .as_micros();
        assert!(
            claimed == backdated.event.timestamp.as_micros()
                || claimed == ahead.event.timestamp.as_micros(),
            "the claim is kept: {body}"
        );
    }
    assert!(
        consume_n(&topics.dlq.name, 1, 1, Duration::from_secs(2))
            .await
            .is_err(),
        "nothing dead-lettered"
    );
}
