//! The pipeline at steady rates, run by `dev/bench` before the backlog benchmark: what a user
//! feels at an ordinary load, not at saturation.
//!
//! All four services run with their default settings. For each rate (`BENCH_RATES`, default
//! 1000,2500,5000 events/s: a 2-core machine running the whole stack sustains about 4,000) events are posted for `BENCH_SECONDS` (30) in requests every 100 ms,
//! each event timed when its request is built. When the phase's events are all in ClickHouse and
//! CloudWatch, one line is printed at once: the rate achieved; p50/p99/p99.9 from event time to
//! ClickHouse `inserted_at` and to CloudWatch's ingestion time; and per service the CPU seconds
//! it spent per 1,000,000 events (from /proc) and its peak resident memory so far.

use audit_tests::bench::{bootstrap, event, quantile};
use audit_tests::cloudwatch::ingestion_delays_ms;
use audit_tests::pipeline::{Pipeline, Service, Stage};
use audit_tests::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;
const SESSIONS: usize = 200;
const TICK: Duration = Duration::from_millis(100);
/// The ingest API's default per-request limit.
const MAX_PER_REQUEST: usize = 1_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rates: Vec<usize> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "1000,2500,5000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let seconds = env_count("BENCH_SECONDS", 30);
    let pipeline = Arc::new(Pipeline::create(kafka_config(), PARTITIONS).await?);
    bootstrap(&pipeline, SESSIONS).await?;
    let mut services: BTreeMap<&str, Service> = BTreeMap::new();
    for stage in Stage::ALL {
        services.insert(stage.binary(), pipeline.start(stage).await?);
    }
    for s in services.values().filter(|s| s.stage != Stage::Producer) {
        s.wait_assigned(Duration::from_secs(60)).await?;
    }
    let cw = logs_client(&cloudwatch_url()).await;

    println!("steady load: {PARTITIONS} partitions, {SESSIONS} sessions, {seconds} s per rate, default settings");
    println!(
        "{:>7} {:>9} | {:>27} | {:>27} | CPU s per 1M events, peak RSS MiB",
        "rate/s", "achieved", "to ClickHouse p50/p99/p99.9", "to CloudWatch p50/p99/p99.9"
    );
    let mut first = 0usize;
    for rate in rates {
        let count = rate * seconds;
        let marker = format!("steady-{rate}-");
        let cpu_before: BTreeMap<&str, f64> = services
            .iter()
            .map(|(n, s)| (*n, s.cpu_seconds().unwrap_or(0.0)))
            .collect();
        let started = Instant::now();
        post_at_rate(&pipeline, first, count, rate, &marker).await?;
        let achieved = count as f64 / started.elapsed().as_secs_f64();
        first += count;

        let to_clickhouse = clickhouse_delays(&pipeline, &marker, count).await?;
        let to_cloudwatch = cloudwatch_delays(&cw, &pipeline.log_group, &marker, count).await?;
        let mut usage = Vec::new();
        for (name, s) in &services {
            let cpu = s.cpu_seconds().unwrap_or(0.0) - cpu_before[name];
            let rss = s.peak_memory_kib().unwrap_or(0) as f64 / 1024.0;
            usage.push(format!(
                "{}: {:.0} s, {:.0} MiB",
                name.trim_start_matches("audit-"),
                cpu / count as f64 * 1e6,
                rss
            ));
        }
        println!(
            "{rate:>7} {achieved:>9.0} | {} | {} | {}",
            triple(&to_clickhouse),
            triple(&to_cloudwatch),
            usage.join("; ")
        );
    }
    Ok(())
}

fn triple(sorted: &[f64]) -> String {
    format!(
        "{:>7.0} {:>7.0} {:>7.0} ms",
        quantile(sorted, 0.5),
        quantile(sorted, 0.99),
        quantile(sorted, 0.999)
    )
}

/// Posts `count` events at `rate` per second: every 100 ms one tick's share, in requests of
/// at most 1,000 sent side by side, so a slow request does not hold the schedule back.
async fn post_at_rate(
    pipeline: &Arc<Pipeline>,
    first: usize,
    count: usize,
    rate: usize,
    marker: &str,
) -> anyhow::Result<()> {
    let per_tick = (rate as f64 * TICK.as_secs_f64()).round().max(1.0) as usize;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = first;
    while next < first + count {
        ticker.tick().await;
        let end = (next + per_tick).min(first + count);
        for start in (next..end).step_by(MAX_PER_REQUEST) {
            let stop = (start + MAX_PER_REQUEST).min(end);
            let events: Vec<Value> = (start..stop)
                .map(|n| event(n, SESSIONS, format!("{marker}{n}")))
                .collect();
            let p = pipeline.clone();
            tasks.spawn(async move {
                p.post_until_accepted(&events, Duration::from_secs(120))
                    .await
            });
        }
        next = end;
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Event time -> `inserted_at` of every event of the phase, sorted, once all are stored.
async fn clickhouse_delays(
    pipeline: &Pipeline,
    marker: &str,
    count: usize,
) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut delays: Vec<f64> = pipeline
            .clickhouse()
            .query(
                "SELECT toFloat64(dateDiff('microsecond', timestamp, inserted_at)) / 1e3 FROM events
                 WHERE startsWith(message, ?)",
            )
            .bind(marker)
            .fetch_all()
            .await
            .unwrap_or_default();
        if delays.len() >= count {
            delays.sort_by(f64::total_cmp);
            return Ok(delays);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {count} events of {marker} in ClickHouse after 600 s",
            delays.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Event time -> CloudWatch ingestion of every event of the phase, sorted, once all arrived.
async fn cloudwatch_delays(
    cw: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    marker: &str,
    count: usize,
) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut delays = ingestion_delays_ms(cw, group, marker).await?;
        if delays.len() >= count {
            delays.sort_by(f64::total_cmp);
            return Ok(delays);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {count} events of {marker} in CloudWatch after 600 s",
            delays.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
