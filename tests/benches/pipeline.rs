//! The whole pipeline's speed at saturation, run by `dev/bench` after `steady.rs`:
//!
//! 1. streaming: all four services up, BENCH_EVENTS events posted to the ingest API (batches of
//!    500, 4 requests in flight); end-to-end events/s and p50/p99 latency from each event's time
//!    to its row being visible in ClickHouse (`inserted_at`);
//! 2. backlog: the three consumers stopped, BENCH_EVENTS more events posted; the raw topic read
//!    by a plain rdkafka consumer discarding records (the broker's ceiling); then the enricher
//!    alone drains its backlog, then the ClickHouse sink, then the CloudWatch sink;
//! 3. each service's peak resident memory, and the ratio of end-to-end rate to raw consume rate.

use audit_tests::bench::{bootstrap, event};
use audit_tests::pipeline::{Pipeline, Service, Stage};
use audit_tests::*;
use futures::StreamExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;
const SESSIONS: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = env_count("BENCH_EVENTS", 100_000);
    let pipeline = Pipeline::create(kafka_config(), PARTITIONS).await?;
    bootstrap(&pipeline, SESSIONS).await?;
    let mut peak: BTreeMap<&str, u64> = BTreeMap::new();
    let mut services: BTreeMap<&str, Service> = BTreeMap::new();
    for stage in Stage::ALL {
        services.insert(stage.binary(), pipeline.start(stage).await?);
    }

    // 1. Streaming.
    let started = Instant::now();
    post_all(&pipeline, 0, total).await?;
    let post_rate = total as f64 / started.elapsed().as_secs_f64();
    let (rows, _) = pipeline
        .wait_for_rows(total as u64, Duration::from_secs(900))
        .await;
    anyhow::ensure!(rows == total as u64, "only {rows} of {total} rows arrived");
    let (span_s, p50_ms, p99_ms): (f64, f64, f64) = pipeline
        .clickhouse()
        .query(
            "SELECT dateDiff('microsecond', min(timestamp), max(inserted_at)) / 1e6,
                    quantileExact(0.5)(dateDiff('microsecond', timestamp, inserted_at)) / 1e3,
                    quantileExact(0.99)(dateDiff('microsecond', timestamp, inserted_at)) / 1e3
             FROM events",
        )
        .fetch_one()
        .await?;
    let e2e_rate = total as f64 / span_s;
    println!("events: {total} per phase over {PARTITIONS} partitions, {SESSIONS} sessions");
    println!("ingest API (batches of 500, 4 in flight):          {post_rate:>9.0} events/s");
    println!("end to end, event time -> row visible:              {e2e_rate:>9.0} events/s");
    println!("end-to-end latency:                                 p50 {p50_ms:.0} ms, p99 {p99_ms:.0} ms");

    // 2. Backlog: stop every consumer, post again, then drain stage by stage so each stage's
    //    rate is its own (moto, a Python server, would otherwise share the CPU).
    let mut shipped_before = 0.0;
    for name in [
        "audit-enricher",
        "audit-sink-clickhouse",
        "audit-sink-cloudwatch",
    ] {
        let mut s = services.remove(name).expect("started above");
        record_peak(&mut peak, &s);
        if s.stage == Stage::CloudWatchSink {
            shipped_before = s
                .metric_sum("audit_cloudwatch_events_shipped_total")
                .await?;
        }
        s.stop()?;
    }
    post_all(&pipeline, total, total).await?;
    let raw_rate = read_rate(
        &pipeline.kafka,
        &pipeline.topics.raw.name,
        PARTITIONS,
        2 * total,
        Duration::from_secs(60),
    )
    .await?;
    println!("raw consume rate (plain consumer, discarding):     {raw_rate:>9.0} events/s");

    let enricher = pipeline.start(Stage::Enricher).await?;
    let enricher_rate = drain_rate(&enricher, "audit_enricher_events_in_total", total).await?;
    println!("enricher draining a backlog:                        {enricher_rate:>9.0} events/s");
    let sink = pipeline.start(Stage::ClickHouseSink).await?;
    let sink_rate = drain_rate(&sink, "audit_clickhouse_rows_inserted_total", total).await?;
    println!("ClickHouse sink draining a backlog:                 {sink_rate:>9.0} rows/s");
    services.insert("audit-enricher", enricher);
    services.insert("audit-sink-clickhouse", sink);

    let cw = pipeline.start(Stage::CloudWatchSink).await?;
    let cw_rate = drain_rate(
        &cw,
        "audit_cloudwatch_events_shipped_total",
        2 * total - shipped_before as usize,
    )
    .await?;
    println!("CloudWatch sink draining a backlog (moto):          {cw_rate:>9.0} events/s");
    services.insert("audit-sink-cloudwatch", cw);
    for s in services.values() {
        record_peak(&mut peak, s);
    }

    println!(
        "ratio end-to-end / raw consume:                     {:>9.2}",
        e2e_rate / raw_rate
    );
    for (name, kib) in &peak {
        println!(
            "peak memory {name:<24}               {:>9.1} MiB",
            *kib as f64 / 1024.0
        );
    }
    Ok(())
}

fn record_peak(peak: &mut BTreeMap<&'static str, u64>, s: &Service) {
    if let Some(kib) = s.peak_memory_kib() {
        let e = peak.entry(s.stage.binary()).or_insert(0);
        *e = (*e).max(kib);
    }
}

/// Posts events `first..first + count` in batches of 500, four requests in flight; event
/// times are taken when each batch is built, so latency includes the ingest request.
async fn post_all(pipeline: &Pipeline, first: usize, count: usize) -> anyhow::Result<()> {
    let batches: Vec<(usize, usize)> = (first..first + count)
        .step_by(500)
        .map(|s| (s, (s + 500).min(first + count)))
        .collect();
    let results: Vec<anyhow::Result<usize>> = futures::stream::iter(batches)
        .map(|(s, e)| async move {
            let bodies: Vec<Value> = (s..e)
                .map(|n| event(n, SESSIONS, format!("bench event {n}")))
                .collect();
            pipeline
                .post_until_accepted(&bodies, Duration::from_secs(60))
                .await
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// Polls a counter of `service` until it reaches `count`; the rate from its first increase.
async fn drain_rate(service: &Service, counter: &str, count: usize) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first: Option<(Instant, f64)> = None;
    loop {
        let n = service.metric_sum(counter).await?;
        if n > 0.0 {
            first.get_or_insert((Instant::now(), n));
        }
        if n >= count as f64 {
            let (t0, n0) = first.unwrap_or((Instant::now(), 0.0));
            return Ok((n - n0) / t0.elapsed().as_secs_f64().max(1e-3));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{counter} stuck at {n} of {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
