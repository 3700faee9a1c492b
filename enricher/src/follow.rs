//! Following a compacted topic as a table: every partition from the beginning (not
//! group-assigned: every instance needs the whole table), then on for as long as the service
//! runs. `ready` turns true once the topic was read up to the end it had at start.

use anyhow::{Context, Result};
use audit_runtime::{KafkaConfig, Shutdown};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

/// Reads `topic` and hands each record's key and value (`None` for a tombstone) to `apply`.
pub async fn follow<F>(
    kafka: &KafkaConfig,
    topic: &str,
    ready: watch::Sender<bool>,
    shutdown: Shutdown,
    mut apply: F,
) -> Result<()>
where
    F: FnMut(&[u8], Option<&[u8]>, i32, i64) + Send,
{
    let consumer = audit_runtime::kafka::reader(kafka, &format!("audit-enricher-{topic}"))?;
    let (partitions, mut behind) = tokio::task::block_in_place(|| -> Result<_> {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .with_context(|| format!("reading metadata of {topic}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(
            !partitions.is_empty(),
            "topic {topic} does not exist (create it with `auditctl topics create`)"
        );
        let mut behind = HashMap::new();
        for &p in &partitions {
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(30))?;
            if high > low {
                behind.insert(p, high);
            }
        }
        Ok((partitions, behind))
    })?;
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    if behind.is_empty() {
        let _ = ready.send(true);
    }
    loop {
        let message = tokio::select! {
            _ = shutdown.requested() => return Ok(()),
            m = consumer.recv() => m,
        };
        match message {
            Ok(m) => {
                apply(
                    m.key().unwrap_or_default(),
                    m.payload(),
                    m.partition(),
                    m.offset(),
                );
                if behind
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    behind.remove(&m.partition());
                    if behind.is_empty() {
                        let _ = ready.send(true);
                    }
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                if behind.remove(&p).is_some() && behind.is_empty() {
                    let _ = ready.send(true);
                }
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "error while following");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
