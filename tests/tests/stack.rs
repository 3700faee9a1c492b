//! The foundation against the real local stack: events through the real broker, a query on the
//! real ClickHouse server, a log group in the real moto server.

use audit_schemas::audit_log::{convert_line, sample_lines};
use audit_schemas::redaction::Redactor;
use audit_schemas::*;
use audit_tests::*;
use rdkafka::message::Message;
use std::time::Duration;
use uuid::Uuid;

const SEED_003: &str = include_str!("../../schemas/testdata/seed-003-server-audit-log.txt");

fn raw_event(session: &str) -> RawAuditEvent {
    RawAuditEvent {
        event_id: Uuid::new_v4(),
        timestamp: Timestamp::now(),
        event_type: EventType::new("query-created").unwrap(),
        source: Source::Client,
        service: "web".into(),
        session_id: Some(session.into()),
        user_id: Some("u-1".into()),
        username: Some("alice".into()),
        tenant: None,
        success: true,
        message: Some("HELLO WORLD ✓ \u{0} '\"; DROP TABLE".into()),
        entities: vec![EntityRef {
            kind: "query".into(),
            id: "q-1".into(),
            name: Some("Sales".into()),
            role: Default::default(),
        }],
        params: [("test".to_string(), "\"value\"".to_string())].into(),
        response: None,
        error: None,
        client: Some(ClientInfo {
            ip: Some("127.0.0.1".into()),
            user_agent: Some("test".into()),
        }),
        ingest: None,
        utc_offset_minutes: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_and_enriched_events_survive_the_real_broker() {
    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let producer = producer().unwrap();

    let raw = raw_event("s-1");
    let enriched = EnrichedAuditEvent {
        event: raw_event("s-2"),
        user: Some(ResolvedUser {
            id: "u-1".into(),
            login: "alice".into(),
            name: None,
        }),
        groups: vec![GroupRef {
            id: "g-1".into(),
            name: "analysts".into(),
        }],
        session: Some(SessionInfo {
            id: "s-2".into(),
            started_at: Timestamp::from_micros(1),
            ip: None,
        }),
        enrichment: Enrichment::Enriched,
        claimed_user_mismatch: false,
        pipeline: PipelineMeta {
            received_at: Timestamp::now(),
            enriched_at: Timestamp::now(),
            raw_partition: 1,
            raw_offset: 42,
        },
        event_time: Default::default(),
        chain: None,
        catalog: None,
    };
    produce(
        &producer,
        &topics.raw.name,
        &raw.partition_key(),
        &raw.encode().unwrap(),
    )
    .await
    .unwrap();
    produce(
        &producer,
        &topics.enriched.name,
        &enriched.event.partition_key(),
        &enriched.encode().unwrap(),
    )
    .await
    .unwrap();

    let got = consume_n(&topics.raw.name, 2, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got[0].key(), Some("s-1".as_bytes()));
    assert_eq!(
        RawAuditEvent::decode(payload(&got[0]).unwrap()).unwrap(),
        raw
    );

    let got = consume_n(&topics.enriched.name, 2, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        EnrichedAuditEvent::decode(payload(&got[0]).unwrap()).unwrap(),
        enriched
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_seed_sample_line_travels_through_the_broker() {
    let topics = unique_topics(3);
    create_topics(&topics).await.unwrap();
    let producer = producer().unwrap();
    let redactor = Redactor::default();
    let mut sent = Vec::new();
    for line in sample_lines(SEED_003) {
        let event = convert_line(line, "data360-analyze", Uuid::new_v4(), &redactor).unwrap();
        produce(
            &producer,
            &topics.raw.name,
            &event.partition_key(),
            &event.encode().unwrap(),
        )
        .await
        .unwrap();
        sent.push(event);
    }
    assert_eq!(sent.len(), 52);
    let got = consume_n(&topics.raw.name, 3, sent.len(), Duration::from_secs(60))
        .await
        .unwrap();
    let mut received: Vec<RawAuditEvent> = got
        .iter()
        .map(|m| RawAuditEvent::decode(payload(m).unwrap()).unwrap())
        .collect();
    received.sort_by_key(|e| e.event_id);
    sent.sort_by_key(|e| e.event_id);
    assert_eq!(received, sent);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_clickhouse_server_answers_queries() {
    let client = clickhouse::Client::default().with_url(clickhouse_url());
    let version: String = client
        .query("SELECT version()")
        .fetch_one()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "ClickHouse at {} (is `dev/stack up` running?): {e}",
                clickhouse_url()
            )
        });
    assert!(
        version.starts_with("26."),
        "expected ClickHouse 26.x, got {version}"
    );

    let table = unique("t").replace('-', "_");
    client
        .query(&format!("CREATE TABLE default.{table} (id UInt64, event_type LowCardinality(String)) ENGINE = MergeTree ORDER BY id"))
        .execute()
        .await
        .unwrap();
    #[derive(clickhouse::Row, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Row {
        id: u64,
        event_type: String,
    }
    let mut insert = client
        .clone()
        .with_database("default")
        .insert::<Row>(&table)
        .await
        .unwrap();
    for id in 0..100 {
        insert
            .write(&Row {
                id,
                event_type: if id % 2 == 0 {
                    "log".into()
                } else {
                    "error".into()
                },
            })
            .await
            .unwrap();
    }
    insert.end().await.unwrap();
    let errors: u64 = client
        .query(&format!(
            "SELECT count() FROM default.{table} WHERE event_type = ?"
        ))
        .bind("error")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(errors, 50);
    client
        .query(&format!("DROP TABLE default.{table}"))
        .execute()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_group_is_created_in_the_moto_server() {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(cloudwatch_url())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_cloudwatchlogs::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .load()
        .await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&config);
    let group = unique("/audit/test");
    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "moto at {} (is `dev/stack up` running?): {e:?}",
                cloudwatch_url()
            )
        });
    let found = logs
        .describe_log_groups()
        .log_group_name_prefix(&group)
        .send()
        .await
        .unwrap();
    let names: Vec<_> = found
        .log_groups()
        .iter()
        .filter_map(|g| g.log_group_name())
        .collect();
    assert_eq!(names, vec![group.as_str()]);
}
