//! Events/s delivered to CloudWatch Logs (the moto server of `dev/stack up`) by one sink:
//!
//! ```sh
//! cargo bench -p audit-sink-cloudwatch --bench delivery     # BENCH_EVENTS=100000 by default
//! ```
//!
//! Publishes BENCH_EVENTS enriched events first, then starts the sink and times it until its
//! consumer group has committed every offset — which it does only after CloudWatch accepted
//! the events.

use audit_schemas::*;
use audit_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;

fn event(n: usize) -> EnrichedAuditEvent {
    let ty = catalog::CATALOG[n % 47].name;
    EnrichedAuditEvent {
        event: RawAuditEvent {
            event_id: uuid::Uuid::new_v4(),
            timestamp: Timestamp::now(),
            event_type: EventType::new(ty).unwrap(),
            source: Source::Server,
            service: "bench".into(),
            session_id: Some(format!("s{}", n % 1000)),
            user_id: Some(format!("u{}", n % 100)),
            username: None,
            tenant: Some("default".into()),
            success: true,
            message: Some(format!("{ty} #{n}")),
            entities: vec![EntityRef {
                kind: "query".into(),
                id: format!("q{}", n % 500),
                name: None,
                role: Default::default(),
            }],
            params: [("rows".to_string(), n.to_string())].into(),
            response: None,
            error: None,
            client: None,
            ingest: None,
            utc_offset_minutes: None,
        },
        user: Some(ResolvedUser {
            id: format!("u{}", n % 100),
            login: format!("user{}", n % 100),
            name: None,
        }),
        groups: vec![GroupRef {
            id: "g1".into(),
            name: "analysts".into(),
        }],
        session: None,
        enrichment: Enrichment::Enriched,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = env_count("BENCH_EVENTS", 100_000);
    let topics = unique_topics(PARTITIONS);
    create_topics(&topics).await?;
    let producer = producer()?;
    for chunk in (0..total).collect::<Vec<_>>().chunks(10_000) {
        let records: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|&n| {
                let e = event(n);
                (e.event.partition_key(), e.encode().expect("encodes"))
            })
            .collect();
        let sends = records.iter().map(|(k, v)| {
            producer.send(
                FutureRecord::to(&topics.enriched.name).key(k).payload(v),
                Duration::from_secs(60),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }

    let group = unique("bench-cw");
    let config = std::env::temp_dir().join(format!("{group}.toml"));
    std::fs::write(&config, format!(
        "[cloudwatch]\nlog_group = \"/audit/{group}\"\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\ngroup_id = \"{group}\"\n[cloudwatch.streams]\n\"log\" = \"log\"\n\"error\" = \"errors\"\n\"query-*\" = \"queries\"\n",
        cloudwatch_url()
    ))?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-sink-cloudwatch"));
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__OPS__LISTEN", "127.0.0.1:0")
        .env("AUDIT__LOG__LEVEL", "warn")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AUDIT__TOPICS__ENRICHED__NAME", &topics.enriched.name)
        .env("AUDIT__TOPICS__DLQ__NAME", &topics.dlq.name)
        .stdout(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn()?;

    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(&topics.enriched.name, p);
    }
    let mut first: Option<(Instant, i64)> = None;
    let rate = loop {
        let committed = tokio::task::block_in_place(|| {
            watcher.committed_offsets(tpl.clone(), Duration::from_secs(10))
        })?;
        let done: i64 = committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum();
        if first.is_none() && done > 0 {
            first = Some((Instant::now(), done));
        }
        if done as usize >= total {
            let (t0, d0) = first.unwrap_or((start, 0));
            break (done - d0) as f64 / t0.elapsed().as_secs_f64().max(1e-3);
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(900),
            "sink did not finish: {done} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    println!("events: {total} over {PARTITIONS} partitions, 3 mapped streams + default");
    println!("delivered to CloudWatch Logs (moto), committed: {rate:>9.0} events/s (from the first committed batch to the last)");
    println!(
        "wall time including start-up: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
