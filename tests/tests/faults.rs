//! Faults across services: ClickHouse sinks joining and leaving while events flow, and dead
//! letters replayed (twice) with `auditctl dlq replay`.

use audit_schemas::{AvroRecord, DeadLetter, EnrichedAuditEvent, Timestamp};
use audit_tests::pipeline::binary;
use audit_tests::*;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Two sinks started while events already flow, a third added mid-stream: each event is
/// stored once (`count() = uniqExact(event_id)`), however the partitions moved between them.
#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_sinks_joining_while_events_flow_store_each_event_once() {
    let pipeline = Arc::new(Pipeline::create(kafka_config(), 3).await.unwrap());
    let _producer = pipeline.start(Stage::Producer).await.unwrap();
    let _enricher = pipeline.start(Stage::Enricher).await.unwrap();
    let batches = 60;
    let per_batch = 100;
    let poster = tokio::spawn({
        let pipeline = pipeline.clone();
        async move {
            for b in 0..batches {
                let events: Vec<_> = (0..per_batch)
                    .map(|i| {
                        json!({"event_type": "log", "source": "SERVER",
                               "user_id": format!("u-{}", (b * per_batch + i) % 17),
                               "message": format!("flow {b}/{i}")})
                    })
                    .collect();
                pipeline
                    .post_until_accepted(&events, Duration::from_secs(60))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _a = pipeline.start(Stage::ClickHouseSink).await.unwrap();
    let _b = pipeline.start(Stage::ClickHouseSink).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _c = pipeline.start(Stage::ClickHouseSink).await.unwrap();
    poster.await.unwrap();
    let total = (batches * per_batch) as u64;
    let (rows, ids) = pipeline
        .wait_for_rows(total, Duration::from_secs(180))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rows_later, _) = pipeline.clickhouse_counts().await;
    assert_eq!((rows, ids, rows_later), (total, total, total));
}

/// A row dead-lettered by the ClickHouse sink, replayed once the cause is fixed, then replayed
/// again by mistake: it is stored once.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_replayed_twice_is_stored_once() {
    let pipeline = Pipeline::create(kafka_config(), 1).await.unwrap();
    let _sink = pipeline.start(Stage::ClickHouseSink).await.unwrap();
    let event = EnrichedAuditEvent {
        event: audit_schemas::RawAuditEvent {
            event_id: uuid::Uuid::new_v4(),
            timestamp: Timestamp::now(),
            event_type: audit_schemas::EventType::new("log").unwrap(),
            source: audit_schemas::Source::Server,
            service: "replay".into(),
            session_id: None,
            user_id: Some("u1".into()),
            username: None,
            tenant: None,
            success: true,
            message: Some("replayed".into()),
            entities: vec![],
            params: Default::default(),
            response: None,
            error: None,
            client: None,
            ingest: None,
            utc_offset_minutes: None,
        },
        user: None,
        groups: vec![],
        session: None,
        enrichment: audit_schemas::Enrichment::NoSession,
        claimed_user_mismatch: false,
        pipeline: audit_schemas::PipelineMeta {
            received_at: Timestamp::now(),
            enriched_at: Timestamp::now(),
            raw_partition: 0,
            raw_offset: 0,
        },
        event_time: Default::default(),
        chain: None,
        catalog: None,
    };
    let original = event.encode().unwrap();
    let letter = audit_runtime::dead_letter::build(
        &audit_runtime::budget::SizeBudget::new(1_000_000),
        audit_runtime::dead_letter::Stage::SinkClickHouse,
        audit_schemas::dead_letter::Cause::Rejected,
        "ClickHouse rejected the row (fixed since)",
        Some(b"u1"),
        Some(&original),
        Some(audit_runtime::dead_letter::Origin {
            topic: &pipeline.topics.enriched.name,
            partition: 0,
            offset: 0,
        }),
    );
    let p = producer().unwrap();
    produce(
        &p,
        &pipeline.topics.dlq.name,
        "u1",
        &letter.encode().unwrap(),
    )
    .await
    .unwrap();
    // A letter of another stage and cause, not selected by the filter below.
    let other = DeadLetter {
        stage: "enricher".into(),
        cause: "undecodable".into(),
        ..letter.clone()
    };
    produce(
        &p,
        &pipeline.topics.dlq.name,
        "u1",
        &other.encode().unwrap(),
    )
    .await
    .unwrap();
    let replay = || {
        let out = std::process::Command::new(binary("auditctl").unwrap())
            .args([
                "dlq",
                "replay",
                "--stage",
                "sink-clickhouse",
                "--cause",
                "rejected",
            ])
            .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
            .env("AUDIT__TOPICS__DLQ__NAME", &pipeline.topics.dlq.name)
            .env("AUDIT__TOPICS__RAW__NAME", &pipeline.topics.raw.name)
            .env(
                "AUDIT__TOPICS__ENRICHED__NAME",
                &pipeline.topics.enriched.name,
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = replay();
    assert_eq!(first.lines().count(), 1, "{first}");
    assert!(first.contains(&event.event.event_id.to_string()), "{first}");
    assert_eq!(
        pipeline.wait_for_rows(1, Duration::from_secs(60)).await,
        (1, 1)
    );
    replay();
    // The second copy reaches the sink (a new offset) and is recognised by its id.
    let replays = consume_n(
        &pipeline.topics.enriched.name,
        1,
        2,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(replays.len(), 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pipeline.clickhouse_counts().await, (1, 1));
}
