//! The enricher's throughput on the real broker, next to the raw consume rate of the same topic
//! in the same run. Meant for the broker's memory storage:
//!
//! ```sh
//! dev/stack down; AUDIT_KAFKA_STORAGE=memory dev/stack up
//! cargo bench -p audit-enricher --bench throughput      # BENCH_EVENTS=200000 by default
//! ```
//!
//! 1. publishes the generator's directory and BENCH_EVENTS raw events to fresh topics;
//! 2. reads the raw topic with a plain rdkafka consumer that discards records (the ceiling);
//! 3. starts one `audit-enricher` and times it from its first enriched record to its last.

use audit_producer::gen;
use audit_schemas::AvroRecord;
use audit_tests::*;
use rand::SeedableRng;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let topics = unique_topics(PARTITIONS);
    create_topics(&topics).await?;
    let producer = producer()?;

    let population = gen::population(1_000, 7);
    for r in &population.records {
        produce(
            &producer,
            &topics.directory.name,
            &r.key().to_string(),
            &r.encode()?,
        )
        .await?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = Instant::now();
    for chunk in (0..total as u64).collect::<Vec<_>>().chunks(10_000) {
        let records: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|&n| {
                let e = gen::event(&mut rng, &population.sessions, n);
                (e.partition_key(), e.encode().expect("encodes"))
            })
            .collect();
        let sends = records.iter().map(|(k, v)| {
            producer.send(
                FutureRecord::to(&topics.raw.name).key(k).payload(v),
                Duration::from_secs(60),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }
    let produce_rate = total as f64 / start.elapsed().as_secs_f64();

    // The ceiling: a plain consumer reading every raw record and discarding it.
    let consumer = audit_runtime::kafka::reader(&kafka_config(), &unique("bench-raw"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&topics.raw.name, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut seen = 0usize;
    let mut first: Option<Instant> = None;
    while seen < total {
        match tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await? {
            Ok(_) => {
                first.get_or_insert_with(Instant::now);
                seen += 1;
            }
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let raw_rate = total as f64 / first.map_or(1.0, |f| f.elapsed().as_secs_f64());
    drop(consumer);

    // The enricher, as a process.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-enricher"));
    cmd.arg("run")
        .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__ENRICHER__GROUP_ID", unique("bench"))
        .env("AUDIT__OPS__LISTEN", "127.0.0.1:0")
        .env("AUDIT__LOG__LEVEL", "warn")
        .stdout(Stdio::null());
    for (role, t) in topics.all() {
        cmd.env(
            format!("AUDIT__TOPICS__{}__NAME", role.to_uppercase()),
            &t.name,
        );
    }
    let mut child = cmd.spawn()?;
    let watcher = audit_runtime::kafka::reader(&kafka_config(), &unique("bench-watch"))?;
    let count = |w: &audit_runtime::kafka::Reader| -> anyhow::Result<i64> {
        let mut sum = 0;
        for p in 0..PARTITIONS {
            let (low, high) =
                w.fetch_watermarks(&topics.enriched.name, p, Duration::from_secs(10))?;
            sum += high - low;
        }
        Ok(sum)
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut started: Option<(Instant, i64)> = None;
    let enricher_rate = loop {
        let n = tokio::task::block_in_place(|| count(&watcher))?;
        if started.is_none() && n > 0 {
            started = Some((Instant::now(), n));
        }
        if n as usize >= total {
            let (t0, n0) = started.unwrap_or((Instant::now(), 0));
            break (n - n0) as f64 / t0.elapsed().as_secs_f64().max(1e-3);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "enricher did not finish: {n} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();

    println!("events: {total} over {PARTITIONS} partitions (produce rate {produce_rate:.0}/s)");
    println!("raw consume rate (plain rdkafka consumer, discarding): {raw_rate:>9.0} events/s");
    println!("enricher throughput (decode, join, rules, encode, produce, commit): {enricher_rate:>9.0} events/s");
    println!(
        "ratio enricher / raw consume: {:.2}",
        enricher_rate / raw_rate
    );
    Ok(())
}
