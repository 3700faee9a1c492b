//! A quiet pipeline adds no batching wait: each consuming stage flushes as soon as its consumer
//! has nothing more ready, so `batch_max_wait` only bounds batches while records keep coming.
//! The figures (p50/p99 at steady rates) are the benchmark's; this test proves the behaviour.

use anyhow::{bail, Result};
use audit_tests::pipeline::{Pipeline, Stage};
use audit_tests::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn one_event_into_a_quiet_pipeline_arrives_without_waiting_out_batch_max_wait() -> Result<()>
{
    // A minute per stage: waiting it out anywhere would miss the deadline below by far.
    const MAX_WAIT_MS: &str = "60000";
    let mut p = Pipeline::create(kafka_config(), 2).await?;
    p.extra_env = vec![
        (
            "AUDIT__ENRICHER__BATCH_MAX_WAIT_MS".into(),
            MAX_WAIT_MS.into(),
        ),
        (
            "AUDIT__CLICKHOUSE__BATCH_MAX_WAIT_MS".into(),
            MAX_WAIT_MS.into(),
        ),
        (
            "AUDIT__CLOUDWATCH__BATCH_MAX_WAIT_MS".into(),
            MAX_WAIT_MS.into(),
        ),
        // No session wait: the event names none.
        ("AUDIT__ENRICHER__SESSION_WAIT_MS".into(), "0".into()),
    ];
    let _producer = p.start(Stage::Producer).await?;
    let enricher = p.start(Stage::Enricher).await?;
    let sink = p.start(Stage::ClickHouseSink).await?;
    enricher.wait_assigned(Duration::from_secs(60)).await?;
    sink.wait_assigned(Duration::from_secs(60)).await?;
    let started = Instant::now();
    p.post(&[json!({"event_type": "log", "source": "SERVER", "message": "quiet"})])
        .await?;
    let deadline = Duration::from_secs(30);
    loop {
        let (rows, _) = p.clickhouse_counts().await;
        if rows == 1 {
            eprintln!("one event stored after {:?}", started.elapsed());
            return Ok(());
        }
        if started.elapsed() > deadline {
            bail!(
                "not stored within {deadline:?}, while one batch_max_wait is {MAX_WAIT_MS} ms per stage"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Memory is read where it is spent: every service reports its own resident memory, the
/// consumers what librdkafka's prefetch holds, the enricher what its producer queue holds, and
/// the sinks how many ids their replay windows remember.
#[tokio::test(flavor = "multi_thread")]
async fn every_service_reports_what_its_structures_hold() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let mut services = Vec::new();
    for stage in Stage::ALL {
        services.push(p.start(stage).await?);
    }
    let events: Vec<_> = (0..20)
        .map(|i| json!({"event_type": "log", "source": "SERVER", "message": format!("m{i}")}))
        .collect();
    p.post(&events).await?;
    p.wait_for_rows(20, Duration::from_secs(60)).await;

    // librdkafka's statistics come every 5 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &services {
        let name = s.stage.binary();
        let mut wanted: Vec<(&str, f64)> = vec![("process_resident_memory_bytes", 1.0)];
        match s.stage {
            Stage::Producer => {}
            Stage::Enricher => {
                wanted.push(("audit_kafka_fetch_queue_bytes", 0.0));
                wanted.push(("audit_kafka_produce_queue_bytes", 0.0));
                wanted.push(("audit_enricher_directory_bytes", 0.0));
            }
            Stage::ClickHouseSink | Stage::CloudWatchSink => {
                wanted.push(("audit_kafka_fetch_queue_bytes", 0.0));
                wanted.push(("audit_replay_window_ids", 20.0));
                wanted.push(("audit_replay_window_bytes", 20.0));
            }
        }
        for (metric, at_least) in wanted {
            loop {
                let text = s.metrics().await?;
                let present = text.lines().any(|l| {
                    l.strip_prefix(metric)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                });
                let value = s.metric_sum(metric).await?;
                if present && value >= at_least {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{name} reports {metric} = {value} (present: {present}), want >= {at_least}");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    Ok(())
}
