//! Ingest throughput against the running local stack (`dev/stack up`):
//!
//! ```sh
//! cargo bench -p audit-producer --bench ingest
//! ```
//!
//! Prints HTTP ingest events/s for single-event requests and for batches of 100, and the
//! broker's own produce rate for the same records measured in the same run (an idempotent
//! `acks=all` producer sending the encoded records directly), with the ratios.

use audit_producer::auth::Tokens;
use audit_producer::config::TokenConfig;
use audit_producer::http::{router, IngestState, Limits};
use audit_runtime::ingest::Publisher;
use audit_runtime::ops::Health;
use audit_schemas::redaction::Redactor;
use audit_schemas::{AvroRecord, Source};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

const TOKEN: &str = "bench-token-0123456789";

fn event(n: usize) -> Value {
    json!({
        "event_type": "query-edited", "source": "SERVER", "session_id": format!("s-{}", n % 500),
        "user_id": format!("u-{}", n % 100), "message": "edited the query",
        "entities": [{"type": "query", "id": format!("q-{}", n % 1000)}],
        "params": {"rows": n, "filter": {"column": "region", "value": "EMEA"}}
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let singles = audit_tests::env_count("BENCH_SINGLE", 5_000);
    let batches = audit_tests::env_count("BENCH_BATCHES", 300);
    let topics = audit_tests::unique_topics(6);
    audit_tests::create_topics(&topics).await?;
    let publisher = Publisher::new(
        audit_tests::producer()?,
        &topics,
        200_000,
        audit_runtime::budget::SizeBudget::new(1_000_000),
    );
    let state = Arc::new(IngestState {
        publisher: publisher.clone(),
        tokens: Tokens::new(
            &[TokenConfig {
                token: TOKEN.into(),
                service: "bench".into(),
                sources: vec![Source::Server],
                scopes: vec![audit_producer::config::Scope::Events],
                tenant: None,
            }],
            None,
        ),
        redactor: Redactor::default(),
        limits: Limits::default(),
        scim: None,
        network: Default::default(),
    });
    let app = router(state, Health::default())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/events", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();

    let post = |body: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http
                .post(&url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 202, "status {}", r.status());
            anyhow::Ok(())
        }
    };

    // Warm-up: connections, metadata, producer id.
    post(Value::Array((0..100).map(event).collect()).to_string()).await?;

    let start = Instant::now();
    let results: Vec<_> = stream::iter((0..singles).map(|n| post(event(n).to_string())))
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let single_rate = singles as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let results: Vec<_> =
        stream::iter((0..batches).map(|b| {
            post(Value::Array((0..100).map(|i| event(b * 100 + i)).collect()).to_string())
        }))
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let batch_events = batches * 100;
    let batch_rate = batch_events as f64 / start.elapsed().as_secs_f64();

    // The broker's own rate for the same records: validated and encoded beforehand, then sent
    // with the same producer settings, all in flight at once.
    let defaults = audit_schemas::ingest::IngestDefaults {
        now: audit_schemas::Timestamp::now(),
        service: Some("bench".into()),
        source: Some(Source::Server),
    };
    let records: Vec<(String, Vec<u8>)> = (0..batch_events)
        .map(|n| {
            let e =
                audit_schemas::ingest::event_from_json(event(n), &defaults, &Redactor::default())
                    .expect("valid");
            (e.partition_key(), e.encode().expect("encodes"))
        })
        .collect();
    let producer = publisher.producer();
    let start = Instant::now();
    let sends = records.iter().map(|(k, v)| {
        producer.send(
            rdkafka::producer::FutureRecord::to(&topics.raw.name)
                .key(k)
                .payload(v),
            std::time::Duration::from_secs(60),
        )
    });
    for r in futures::future::join_all(sends).await {
        r.map_err(|(e, _)| e)?;
    }
    let broker_rate = batch_events as f64 / start.elapsed().as_secs_f64();

    println!("HTTP ingest, single-event requests ({singles}, 64 concurrent): {single_rate:>9.0} events/s");
    println!(
        "HTTP ingest, batches of 100 ({batches}, 16 concurrent):       {batch_rate:>9.0} events/s"
    );
    println!("broker produce rate, same records ({batch_events}):             {broker_rate:>9.0} events/s");
    println!("ratio single / broker: {:.3}", single_rate / broker_rate);
    println!("ratio batch-100 / broker: {:.3}", batch_rate / broker_rate);
    Ok(())
}
