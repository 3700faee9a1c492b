//! The CloudWatch witness of the checkpoints on the real stack (issue #26): the CloudWatch sink
//! ships every signed checkpoint to `cloudwatch.checkpoint_stream`, and `auditctl verify`
//! cross-checks ClickHouse's checkpoints against it. A ClickHouse writer who rolls the tables
//! back (which ClickHouse alone cannot tell from a pipeline that stopped then) is named from
//! the witness without any `--state`; a witness stream emptied or filled with a forged entry
//! is named too, and the untouched data verifies clean.

use anyhow::{Context, Result};
use audit_schemas::Timestamp;
use audit_tests::cloudwatch::{logs_client, read_witness, WITNESS_STREAM};
use audit_tests::pipeline::{Pipeline, Stage};
use audit_tests::*;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use serde_json::json;
use std::time::Duration;

fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_cross_checks_clickhouse_against_the_cloudwatch_witness() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let mut enricher = p.start(Stage::Enricher).await?;
    let mut sink = p.start(Stage::ClickHouseSink).await?;
    let mut cloudwatch = p.start(Stage::CloudWatchSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let batch = |n: usize| -> Vec<serde_json::Value> {
        (0..10)
            .map(|i| {
                json!({"event_type": "log", "source": "SERVER", "user_id": format!("u{i}"),
                            "message": format!("b{n} m{i}")})
            })
            .collect()
    };
    p.post(&batch(1)).await?;
    p.wait_for_rows(10, Duration::from_secs(60)).await;
    p.wait_signed(10, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let copy_us = Timestamp::now().as_micros();
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.post(&batch(2)).await?;
    p.wait_for_rows(20, Duration::from_secs(60)).await;
    p.wait_signed(20, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    enricher.stop()?;
    // Both sinks take the last checkpoints, then stop.
    let ch = p.clickhouse();
    let logs = logs_client(&cloudwatch_url()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let stored = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stored: u64 = ch
            .query("SELECT count() FROM (SELECT DISTINCT signature FROM chain_checkpoints)")
            .fetch_one()
            .await?;
        let witnessed = read_witness(&logs, &p.log_group).await?.len() as u64;
        if stored > 0 && witnessed >= stored {
            break stored;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the witness holds {witnessed} of {stored} checkpoints"
        );
    };
    sink.stop()?;
    cloudwatch.stop()?;
    // Past the grace of every checkpoint: each must be in both stores.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let to = Timestamp::now().to_rfc3339();
    let verify = || p.verify_with(&from, &to, true, &["--grace-seconds", "2"]);

    let (ok, text) = verify()?;
    assert!(ok, "untouched: {text}");
    let summary = lines(&text, "CloudWatch witness");
    assert_eq!(summary.len(), 1, "{text}");
    assert!(
        summary[0].contains(&format!(
            "{stored} checkpoints in the range, {stored} of them also in ClickHouse"
        )),
        "{text}"
    );

    // The witness emptied (someone allowed DeleteLogStream) and given a forged entry: a stored
    // checkpoint with a larger tree, its signature kept.
    let saved = read_witness(&logs, &p.log_group).await?;
    logs.delete_log_stream()
        .log_group_name(&p.log_group)
        .log_stream_name(WITNESS_STREAM)
        .send()
        .await?;
    logs.create_log_stream()
        .log_group_name(&p.log_group)
        .log_stream_name(WITNESS_STREAM)
        .send()
        .await?;
    let (at, first) = saved.first().context("a witness entry")?.clone();
    let mut forged = first.clone();
    forged["tree_size"] = json!(forged["tree_size"].as_u64().unwrap_or(0) + 1);
    logs.put_log_events()
        .log_group_name(&p.log_group)
        .log_stream_name(WITNESS_STREAM)
        .log_events(
            InputLogEvent::builder()
                .timestamp(at)
                .message(forged.to_string())
                .build()?,
        )
        .send()
        .await?;
    let (ok, text) = verify()?;
    assert!(!ok, "an emptied witness: {text}");
    let unwitnessed = lines(&text, "UNWITNESSED");
    // Both partitions' chains: every checkpoint ClickHouse holds is named, in a line per chain.
    let partitions: std::collections::BTreeSet<&str> = unwitnessed
        .iter()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(partitions.len(), 2, "{text}");
    let forged_lines = lines(&text, "FORGED   in CloudWatch witness");
    assert_eq!(forged_lines.len(), 1, "{text}");
    assert!(forged_lines[0].contains("does not verify"), "{text}");

    // The witness put back as it was: clean again.
    logs.delete_log_stream()
        .log_group_name(&p.log_group)
        .log_stream_name(WITNESS_STREAM)
        .send()
        .await?;
    logs.create_log_stream()
        .log_group_name(&p.log_group)
        .log_stream_name(WITNESS_STREAM)
        .send()
        .await?;
    let events = saved
        .iter()
        .map(|(t, m)| {
            InputLogEvent::builder()
                .timestamp(*t)
                .message(m.to_string())
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    logs.put_log_events()
        .log_group_name(&p.log_group)
        .log_stream_name(WITNESS_STREAM)
        .set_log_events(Some(events))
        .send()
        .await?;
    let (ok, text) = verify()?;
    assert!(ok, "the witness restored: {text}");

    // ClickHouse rolled back to the copy: everything enriched or signed after it is gone. The
    // witness names each partition's lost checkpoints, and the links under them as deleted.
    p.roll_back_clickhouse_to(copy_us).await?;
    let (rows, _) = p.clickhouse_counts().await;
    assert!(rows < 20, "rolled back to {rows} rows");
    let (ok, text) = p.verify_with(&from, &to, false, &["--grace-seconds", "2"])?;
    assert!(ok, "ClickHouse alone cannot tell: {text}");
    let (ok, text) = verify()?;
    assert!(!ok, "rolled back: {text}");
    let missing: Vec<&str> = lines(&text, "MISSING ")
        .into_iter()
        .filter(|l| l.contains("witnessed in CloudWatch stream"))
        .collect();
    assert_eq!(missing.len(), 2, "one line per partition's chain: {text}");
    let deleted: Vec<&str> = lines(&text, "DELETED  raw partition")
        .into_iter()
        .filter(|l| l.contains(": chain "))
        .collect();
    assert_eq!(
        deleted.len() as u64,
        20 - rows,
        "each rolled-back link under a witnessed checkpoint: {text}"
    );
    Ok(())
}
