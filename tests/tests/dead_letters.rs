//! Links a sink dead-lettered, on the real stack (issue #26): `verify` reads the dead-letter
//! topic, so a sender whose event a sink cannot take does not raise a false alarm, and a
//! letter is no way to explain away a deletion.
//!
//! - An event over CloudWatch's 256 KiB is dead-lettered by the CloudWatch sink: verify with
//!   the CloudWatch group passes and counts it, where it read "deleted from CloudWatch".
//! - A row the ClickHouse sink dead-lettered (published here as the sink does, for a row then
//!   removed, since ClickHouse refuses almost nothing) is proven from its letter by both the
//!   hash chain and the Merkle root; a letter whose event was changed proves nothing.

use anyhow::Result;
use audit_runtime::budget::SizeBudget;
use audit_runtime::dead_letter::{self, Stage as LetterStage};
use audit_schemas::dead_letter::Cause;
use audit_schemas::{AvroRecord, EnrichedAuditEvent, Timestamp};
use audit_tests::pipeline::{Pipeline, Stage};
use audit_tests::*;
use serde_json::json;
use std::time::Duration;

fn events(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            json!({"event_type": "log", "source": "SERVER", "user_id": format!("u{i}"),
                   "message": format!("m{i}")})
        })
        .collect()
}

async fn letters_of(p: &Pipeline, stage: &str) -> Result<usize> {
    let all = consume_all(
        &p.topics.dlq.name,
        p.topics.dlq.partitions,
        Duration::from_secs(2),
    )
    .await?;
    Ok(all
        .iter()
        .filter_map(|m| audit_schemas::DeadLetter::decode(payload(m).ok()?).ok())
        .filter(|l| l.stage == stage)
        .count())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_too_large_for_cloudwatch_is_dead_lettered_not_deleted() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let _cloudwatch = p.start(Stage::CloudWatchSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let mut batch = events(10);
    batch.push(
        json!({"event_type": "log", "source": "SERVER", "user_id": "u-big",
                      "message": "x".repeat(60 * 1024),
               "error": {"code": "E", "stack_trace": "at f()\n".repeat(30 * 1024)}}),
    );
    p.post(&batch).await?;
    p.wait_for_rows(11, Duration::from_secs(60)).await;
    p.wait_signed(11, Duration::from_secs(60)).await?;
    let logs = audit_tests::cloudwatch::logs_client(&cloudwatch_url()).await;
    audit_tests::cloudwatch::wait_for_events(&logs, &p.log_group, 10, Duration::from_secs(60))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while letters_of(&p, "sink-cloudwatch").await? == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no letter of the CloudWatch sink"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let to = Timestamp::now().to_rfc3339();
    let (ok, out) = p.verify_with(&from, &to, true, &["--grace-seconds", "1"])?;
    assert!(ok, "a sender's oversized event is no finding:\n{out}");
    assert!(
        out.contains("1 the CloudWatch sink dead-lettered"),
        "counted:\n{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_clickhouse_sink_dead_lettered_is_proven_from_its_letter() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let from = Timestamp::now().to_rfc3339();
    p.post(&events(10)).await?;
    p.wait_for_rows(10, Duration::from_secs(60)).await;
    p.wait_signed(10, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Two enriched events as the sink read them; each becomes a letter, its row removed.
    // (The enriched topic is never idle: checkpoints arrive each second.)
    let reader = reader_from_beginning(
        &kafka_config(),
        &p.topics.enriched.name,
        p.topics.enriched.partitions,
    )?;
    let mut picked: Vec<(rdkafka::message::OwnedMessage, EnrichedAuditEvent)> = Vec::new();
    while picked.len() < 2 {
        let m = match tokio::time::timeout(Duration::from_secs(30), reader.recv()).await? {
            Ok(m) => m.detach(),
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let Ok(e) = EnrichedAuditEvent::decode(payload(&m)?) else {
            continue;
        };
        if matches!(e.event.message.as_deref(), Some("m3" | "m6")) {
            picked.push((m, e));
        }
    }
    assert_eq!(picked.len(), 2);
    let budget = SizeBudget::new(1024 * 1024);
    let producer = producer()?;
    let ch = p.clickhouse();
    let publish = |value: Vec<u8>, m: &rdkafka::message::OwnedMessage| {
        use rdkafka::Message;
        dead_letter::build(
            &budget,
            LetterStage::SinkClickHouse,
            Cause::Rejected,
            "Code: 53. Type mismatch (as ClickHouse would say)",
            m.key(),
            Some(&value),
            Some(dead_letter::Origin::of(m)),
        )
        .encode()
    };
    let (m3, _) = &picked
        .iter()
        .find(|(_, e)| e.event.message.as_deref() == Some("m3"))
        .unwrap();
    let letter = publish(payload(m3)?.to_vec(), m3)?;
    audit_tests::produce(&producer, &p.topics.dlq.name, "m3", &letter).await?;
    ch.query("ALTER TABLE events DELETE WHERE message = 'm3' SETTINGS mutations_sync = 2")
        .execute()
        .await?;
    let to = Timestamp::now().to_rfc3339();
    let (ok, out) = p.verify_with(&from, &to, false, &["--grace-seconds", "1"])?;
    assert!(
        ok,
        "a row only in the sink's dead letter is no deletion:\n{out}"
    );
    assert!(
        out.contains("1 only in the ClickHouse sink's dead letters"),
        "counted:\n{out}"
    );

    // A letter whose event says something else explains nothing.
    let (m6, e6) = &picked
        .iter()
        .find(|(_, e)| e.event.message.as_deref() == Some("m6"))
        .unwrap();
    let mut forged = e6.clone();
    forged.event.message = Some("nothing to see".into());
    let letter = publish(forged.encode()?, m6)?;
    audit_tests::produce(&producer, &p.topics.dlq.name, "m6", &letter).await?;
    ch.query("ALTER TABLE events DELETE WHERE message = 'm6' SETTINGS mutations_sync = 2")
        .execute()
        .await?;
    let (ok, out) = p.verify_with(&from, &to, false, &["--grace-seconds", "1"])?;
    assert!(!ok, "a changed letter proves nothing:\n{out}");
    assert!(
        out.contains("DELETED") || out.contains("ALTERED"),
        "named:\n{out}"
    );
    Ok(())
}
