//! Rows/s the sink inserts from the topic, next to a plain insert of the same rows with the
//! same crate in the same run (the ceiling), against the running stack:
//!
//! ```sh
//! cargo bench -p audit-sink-clickhouse --bench insert      # BENCH_EVENTS=200000 by default
//! ```

use audit_schemas::*;
use audit_sink_clickhouse::encoder::{row, EventRow, Origin};
use audit_tests::*;
use rdkafka::producer::FutureRecord;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn event(n: usize) -> EnrichedAuditEvent {
    let ty = catalog::CATALOG[n % 47].name;
    EnrichedAuditEvent {
        event: RawAuditEvent {
            event_id: uuid::Uuid::new_v4(),
            timestamp: Timestamp::now(),
            event_type: EventType::new(ty).unwrap(),
            source: Source::Server,
            service: "bench".into(),
            session_id: Some(format!("s{}", n % 1000)),
            user_id: Some(format!("u{}", n % 100)),
            username: None,
            tenant: Some("default".into()),
            success: n % 50 != 0,
            message: Some(format!("{ty} #{n}")),
            entities: vec![EntityRef {
                kind: "query".into(),
                id: format!("q{}", n % 500),
                name: None,
                role: Default::default(),
            }],
            params: [("rows".to_string(), n.to_string())].into(),
            response: None,
            error: None,
            client: None,
            ingest: None,
            utc_offset_minutes: None,
        },
        user: Some(ResolvedUser {
            id: format!("u{}", n % 100),
            login: format!("user{}", n % 100),
            name: None,
        }),
        groups: vec![GroupRef {
            id: "g1".into(),
            name: "analysts".into(),
        }],
        session: None,
        enrichment: Enrichment::Enriched,
        claimed_user_mismatch: false,
        pipeline: PipelineMeta {
            received_at: Timestamp::now(),
            enriched_at: Timestamp::now(),
            raw_partition: 0,
            raw_offset: n as i64,
        },
        event_time: Default::default(),
        chain: None,
        catalog: None,
    }
}

async fn count(c: &clickhouse::Client) -> u64 {
    c.query("SELECT count() FROM events")
        .fetch_one()
        .await
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = env_count("BENCH_EVENTS", 200_000);
    let topics = unique_topics(6);
    create_topics(&topics).await?;
    let producer = producer()?;
    let events: Vec<EnrichedAuditEvent> = (0..total).map(event).collect();
    for chunk in events.chunks(10_000) {
        let records: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|e| (e.event.partition_key(), e.encode().expect("encodes")))
            .collect();
        let sends = records.iter().map(|(k, v)| {
            producer.send(
                FutureRecord::to(&topics.enriched.name).key(k).payload(v),
                Duration::from_secs(60),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }
    let url = clickhouse_url();
    let admin = clickhouse::Client::default().with_url(&url);

    // The ceiling: the same rows, inserted directly in 50,000-row inserts.
    let plain_db = unique("bench_plain").replace('-', "_");
    audit_sink_clickhouse::migrations::migrate(&admin, &plain_db, None).await?;
    let plain = clickhouse::Client::default()
        .with_url(&url)
        .with_database(&plain_db);
    let rows: Vec<EventRow> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            row(
                e.clone(),
                &topics.enriched.name,
                Origin {
                    partition: 0,
                    offset: i as i64,
                },
            )
        })
        .collect();
    let start = Instant::now();
    for chunk in rows.chunks(50_000) {
        let mut insert = plain.insert::<EventRow>("events").await?;
        for r in chunk {
            insert.write(r).await?;
        }
        insert.end().await?;
    }
    let plain_rate = total as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(count(&plain).await == total as u64);

    // The sink, from the topic.
    let sink_db = unique("bench_sink").replace('-', "_");
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-sink-clickhouse"))
        .arg("run")
        .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__CLICKHOUSE__URL", &url)
        .env("AUDIT__CLICKHOUSE__DATABASE", &sink_db)
        .env("AUDIT__CLICKHOUSE__GROUP_ID", unique("bench"))
        .env("AUDIT__OPS__LISTEN", "127.0.0.1:0")
        .env("AUDIT__LOG__LEVEL", "warn")
        .env("AUDIT__TOPICS__ENRICHED__NAME", &topics.enriched.name)
        .env("AUDIT__TOPICS__DLQ__NAME", &topics.dlq.name)
        .stdout(Stdio::null())
        .spawn()?;
    let sink = clickhouse::Client::default()
        .with_url(&url)
        .with_database(&sink_db);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    let sink_rate = loop {
        let n = count(&sink).await;
        if first.is_none() && n > 0 {
            first = Some((Instant::now(), n));
        }
        if n >= total as u64 {
            let (t0, n0) = first.unwrap_or((Instant::now(), 0));
            break (n - n0) as f64 / t0.elapsed().as_secs_f64().max(1e-3);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sink did not finish: {n} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let (rows_in, unique_ids): (u64, u64) = sink
        .query("SELECT count(), uniqExact(event_id) FROM events")
        .fetch_one()
        .await?;
    for db in [&plain_db, &sink_db] {
        let _ = admin.query(&format!("DROP DATABASE {db}")).execute().await;
    }
    println!(
        "rows: {total} (6 partitions; count() = {rows_in}, uniqExact(event_id) = {unique_ids})"
    );
    println!("plain insert, same rows, same crate, 50,000-row inserts: {plain_rate:>9.0} rows/s");
    println!("sink from the topic (consume, decode, dedup check, insert, commit): {sink_rate:>9.0} rows/s");
    println!("ratio sink / plain insert: {:.2}", sink_rate / plain_rate);
    Ok(())
}
