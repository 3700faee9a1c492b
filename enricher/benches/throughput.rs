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
use rdkafka::producer::FutureRecord;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = env_count("BENCH_EVENTS", 200_000);
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
    let stall = Duration::from_secs(60);
    let raw_rate = read_rate(&kafka_config(), &topics.raw.name, PARTITIONS, total, stall).await?;

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
    // Counted by reading the enriched topic as it fills: Tansu's watermarks on memory storage do
    // not equal record counts, and reading proves the records are there, not only acknowledged.
    let enricher_rate = read_rate(
        &kafka_config(),
        &topics.enriched.name,
        PARTITIONS,
        total,
        Duration::from_secs(120),
    )
    .await?;
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
