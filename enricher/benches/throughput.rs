//! The enricher's throughput on the real broker, next to the raw consume rate of the same topic
//! in the same run. Meant for the broker's memory storage:
//!
//! ```sh
//! dev/stack down; AUDIT_KAFKA_STORAGE=memory dev/stack up
//! cargo bench -p audit-enricher --bench throughput      # BENCH_EVENTS=200000 by default
//! ```
//!
//! `BENCH_UNKNOWN_SESSIONS=0.1` makes that share of the events name a random session the
//! directory never learns: they wait `enricher.session_wait_ms` apart from the others, and the
//! rate shows whether the others are held up (timed as before, to every record's commit; the
//! waiting ones are let out before the read-back, untimed).
//!
//! `BENCH_TIMELINE=1` prints the enricher's progress every 100 ms (how the 1 s fetch stalls were
//! found); `BENCH_LOG=info` shows its log.
//!
//! 1. publishes the generator's directory and BENCH_EVENTS raw events to fresh topics;
//! 2. reads the raw topic with a plain rdkafka consumer that discards records (the ceiling);
//! 3. starts one `audit-enricher` and times it from the first record it takes in to the last
//!    one acknowledged downstream (its own metrics), then reads the enriched topic back to check
//!    that all of them are there. Nothing else reads meanwhile: on a small machine a concurrent
//!    reader of the enriched topic took a core from the enricher and the broker.

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
            topics.for_directory(r.key().topic()),
            &r.key().record_key(),
            &r.encode()?,
        )
        .await?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let unknown: f64 = std::env::var("BENCH_UNKNOWN_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let start = Instant::now();
    for chunk in (0..total as u64).collect::<Vec<_>>().chunks(10_000) {
        let records: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|&n| {
                let mut e = gen::event(&mut rng, &population.sessions, n);
                if unknown > 0.0 && rand::Rng::random_bool(&mut rng, unknown.min(1.0)) {
                    e.session_id = Some(format!("unknown-{}", uuid::Uuid::new_v4()));
                }
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

    // The enricher twice over the same raw records, each run into its own enriched topic:
    // without the hash chain, then with it and signed digests.
    let plain = enrich_once(&topics, total, &[("AUDIT__CHAIN__ENABLED", "false")]).await?;
    let mut chained_topics = topics.clone();
    chained_topics.enriched.name = format!("{}-chained", topics.enriched.name);
    create_topics(&chained_topics).await?;
    let chained = enrich_once(
        &chained_topics,
        total,
        &[
            ("AUDIT__CHAIN__ENABLED", "true"),
            (
                "AUDIT__CHAIN__SIGNING_KEY",
                audit_tests::pipeline::CHAIN_SEED,
            ),
        ],
    )
    .await?;
    let enricher_rate = chained;

    println!("events: {total} over {PARTITIONS} partitions (produce rate {produce_rate:.0}/s), share naming unknown sessions: {unknown}");
    println!("raw consume rate (plain rdkafka consumer, discarding): {raw_rate:>9.0} events/s");
    println!("enricher throughput without the hash chain:         {plain:>9.0} events/s");
    println!("enricher throughput (decode, join, rules, chain, encode, produce, commit): {enricher_rate:>9.0} events/s");
    println!("ratio with chain / without: {:.2}", chained / plain);
    println!(
        "ratio enricher / raw consume: {:.2}",
        enricher_rate / raw_rate
    );
    Ok(())
}

/// One enricher process over `topics` (with `chain` settings), timed from the first record it
/// takes in to the moment every record's output is acknowledged and its offset stored
/// (`audit_consumer_records_committed_total`, read from its /metrics); then the enriched topic
/// is read back to prove every record is there.
async fn enrich_once(
    topics: &audit_runtime::TopicsConfig,
    total: usize,
    chain: &[(&str, &str)],
) -> anyhow::Result<f64> {
    let ops = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-enricher"));
    cmd.arg("run")
        .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__ENRICHER__GROUP_ID", unique("bench"))
        .env("AUDIT__OPS__LISTEN", ops.to_string())
        .env(
            "AUDIT__LOG__LEVEL",
            std::env::var("BENCH_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::null());
    cmd.envs(topics_env(topics));
    cmd.envs(chain.iter().copied());
    let mut child = cmd.spawn()?;
    let timed = async {
        let poll = Duration::from_millis(10);
        let deadline = Instant::now() + Duration::from_secs(120);
        // What it took in before the first look is left out of the count.
        let (started, taken_in) = loop {
            let seen = metric_sum(ops, "audit_enricher_events_in_total")
                .await
                .unwrap_or(0.0);
            if seen > 0.0 {
                break (Instant::now(), seen);
            }
            anyhow::ensure!(Instant::now() < deadline, "the enricher took in nothing");
            tokio::time::sleep(poll).await;
        };
        // BENCH_TIMELINE=1 prints the progress every 100 ms, to see stalls.
        let timeline = std::env::var_os("BENCH_TIMELINE").is_some();
        let mut next_line = Duration::ZERO;
        loop {
            let stored = metric_sum(ops, "audit_consumer_records_committed_total")
                .await
                .unwrap_or(0.0);
            if stored >= total as f64 {
                break;
            }
            if timeline && started.elapsed() >= next_line {
                let taken = metric_sum(ops, "audit_enricher_events_in_total").await?;
                println!(
                    "{:>6} ms: taken in {taken:>8}, acknowledged {stored:>8}",
                    started.elapsed().as_millis()
                );
                next_line += Duration::from_millis(100);
            }
            anyhow::ensure!(Instant::now() < deadline, "the enricher did not finish");
            tokio::time::sleep(poll).await;
        }
        Ok((total as f64 - taken_in) / started.elapsed().as_secs_f64())
    };
    let enricher_rate = timed.await;
    // Records still waiting for their (never coming) session go on after the wait: let them
    // out before stopping the enricher, so the read-back finds every record.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_sum(ops, "audit_enricher_events_out_total")
        .await
        .unwrap_or(0.0)
        < total as f64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = child.kill();
    let _ = child.wait();
    let enricher_rate = enricher_rate?;
    // Proof that the records are there, not only acknowledged: read the enriched topic back
    // (Tansu's watermarks on memory storage do not equal record counts, so it is counted).
    read_rate(
        &kafka_config(),
        &topics.enriched.name,
        PARTITIONS,
        total,
        Duration::from_secs(60),
    )
    .await?;
    Ok(enricher_rate)
}
