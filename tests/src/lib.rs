//! The harness for tests that talk to the real local stack (`dev/stack up`): addresses, unique
//! topic names, and small Kafka helpers. Addresses default to the stack's and can be pointed
//! elsewhere with `AUDIT_TEST_KAFKA`, `AUDIT_TEST_CLICKHOUSE_URL`, `AUDIT_TEST_CLOUDWATCH_URL`.
//!
//! Tests fail (never skip) when the stack is down: a green run must mean the real parts worked.

pub mod bench;
pub mod cloudwatch;
pub mod pipeline;

pub use cloudwatch::{logs_client, read_group, wait_for_distinct_events, wait_for_events};
pub use pipeline::{
    free_port, metric_sum, metrics_text, wait_metric, Pipeline, PrivateBroker, Service, Stage,
};

use anyhow::{bail, Context, Result};
use audit_runtime::{KafkaConfig, TopicConfig, TopicsConfig};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

pub fn kafka_brokers() -> String {
    std::env::var("AUDIT_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

pub fn clickhouse_url() -> String {
    std::env::var("AUDIT_TEST_CLICKHOUSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8123".to_string())
}

pub fn cloudwatch_url() -> String {
    std::env::var("AUDIT_TEST_CLOUDWATCH_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:4566".to_string())
}

pub fn kafka_config() -> KafkaConfig {
    KafkaConfig {
        brokers: kafka_brokers(),
        ..KafkaConfig::default()
    }
}

/// A name no other test (or earlier run) uses, so tests run in parallel on one broker.
/// Appends `lines` to the file at `path` (created, with its folders, when missing), each ended by
/// a newline: how a product writes its log.
pub fn append_lines(path: &std::path::Path, lines: &[impl AsRef<str>]) {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("creating the log's folder");
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("opening the log");
    for l in lines {
        writeln!(f, "{}", l.as_ref()).expect("appending to the log");
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The pipeline's topics under unique names, with few partitions to keep the broker light.
pub fn unique_topics(partitions: i32) -> TopicsConfig {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut topics = TopicsConfig::default();
    for t in [
        &mut topics.raw,
        &mut topics.directory,
        &mut topics.rules,
        &mut topics.stream_map,
        &mut topics.enriched,
        &mut topics.dlq,
    ] {
        *t = TopicConfig {
            name: format!("test.{run}.{}", t.name.trim_start_matches("audit.")),
            partitions: if t.compacted { 1 } else { partitions },
            ..t.clone()
        };
    }
    // Sessions are partitioned like the raw events.
    topics.sessions = TopicConfig {
        name: format!("test.{run}.sessions"),
        partitions,
        ..topics.sessions.clone()
    };
    // So are checkpoints: raw partition p's go to partition p.
    topics.checkpoints = TopicConfig {
        name: format!("test.{run}.checkpoints"),
        partitions,
        ..topics.checkpoints.clone()
    };
    topics
}

/// The environment that points a pipeline binary at `topics` (`AUDIT__TOPICS__<ROLE>__NAME`),
/// for `Command::envs`.
pub fn topics_env(topics: &TopicsConfig) -> Vec<(String, String)> {
    topics
        .all()
        .into_iter()
        .map(|(role, t)| {
            (
                format!("AUDIT__TOPICS__{}__NAME", role.to_uppercase()),
                t.name.clone(),
            )
        })
        .collect()
}

/// Creates the topics, failing with a hint when the broker is not there.
pub async fn create_topics(topics: &TopicsConfig) -> Result<()> {
    let admin = audit_runtime::kafka::admin(&kafka_config(), "audit-tests")?;
    audit_runtime::kafka::create_topics(&admin, topics)
        .await
        .with_context(|| {
            format!(
                "creating test topics on {} (is `dev/stack up` running?)",
                kafka_brokers()
            )
        })?;
    Ok(())
}

pub fn producer() -> Result<FutureProducer> {
    Ok(audit_runtime::kafka::producer(
        &kafka_config(),
        "audit-tests",
    )?)
}

/// The ingest publisher (raw events, directory writes, dead letters) on `topics`, holding at
/// most `max_in_flight` events, with a 1 MB size budget.
pub fn publisher(
    topics: &TopicsConfig,
    max_in_flight: usize,
) -> Result<audit_runtime::ingest::Publisher> {
    Ok(audit_runtime::ingest::Publisher::new(
        producer()?,
        topics,
        max_in_flight,
        audit_runtime::budget::SizeBudget::new(1_000_000),
    ))
}

pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
) -> Result<(i32, i64)> {
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    Ok((delivery.partition, delivery.offset))
}

/// A reader assigned to every partition of `topic` from the beginning, outside any group.
pub fn reader_from_beginning(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<audit_runtime::kafka::Reader> {
    let consumer = audit_runtime::kafka::reader(kafka, &unique("audit-tests"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reads `count` records from every partition of `topic` from the beginning, or fails after
/// `timeout`.
pub async fn consume_n(
    topic: &str,
    partitions: i32,
    count: usize,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>> {
    let consumer = reader_from_beginning(&kafka_config(), topic, partitions)?;
    let mut out = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < count {
        let next = tokio::time::timeout_at(deadline, consumer.recv()).await;
        match next {
            Err(_) => bail!(
                "only {} of {count} records arrived on {topic} within {timeout:?}",
                out.len()
            ),
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Ok(Err(e)) => bail!("consuming {topic}: {e}"),
        }
    }
    Ok(out)
}

/// Reads every partition of `topic` from the beginning until no record arrives for `idle`.
pub async fn consume_all(
    topic: &str,
    partitions: i32,
    idle: Duration,
) -> Result<Vec<OwnedMessage>> {
    let consumer = reader_from_beginning(&kafka_config(), topic, partitions)?;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Ok(Err(e)) => bail!("consuming {topic}: {e}"),
        }
    }
}

/// For benchmarks: reads `count` records of `topic` from the beginning, discarding them, and
/// returns records per second from the first record's arrival. Fails when no record arrives
/// for `stall`.
pub async fn read_rate(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
    count: usize,
    stall: Duration,
) -> Result<f64> {
    let consumer = reader_from_beginning(kafka, topic, partitions)?;
    let mut seen = 0usize;
    let mut first: Option<std::time::Instant> = None;
    while seen < count {
        match tokio::time::timeout(stall, consumer.recv()).await {
            Err(_) => bail!("stalled: {seen} of {count} records on {topic}"),
            Ok(Ok(_)) => {
                first.get_or_insert_with(std::time::Instant::now);
                seen += 1;
            }
            Ok(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Ok(Err(e)) => bail!("consuming {topic}: {e}"),
        }
    }
    Ok(count as f64 / first.map_or(1.0, |f| f.elapsed().as_secs_f64()))
}

/// For benchmarks: a count from the environment variable `name`, else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The payload of a message, or an error naming where it came from.
pub fn payload(m: &OwnedMessage) -> Result<&[u8]> {
    m.payload().with_context(|| {
        format!(
            "{}/{}@{} has no value",
            m.topic(),
            m.partition(),
            m.offset()
        )
    })
}
