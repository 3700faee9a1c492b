//! Following a compacted topic as a table: every partition from the beginning (not
//! group-assigned: every instance needs the whole table), then on for as long as the service
//! runs. `ready` turns true once the topic was read up to the end it had at start.

use crate::{KafkaConfig, Shutdown};
use anyhow::Result;
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
    client_id: &str,
    topic: &str,
    ready: watch::Sender<bool>,
    shutdown: Shutdown,
    mut apply: F,
) -> Result<()>
where
    F: FnMut(&[u8], Option<&[u8]>, i32, i64) + Send,
{
    let consumer = crate::kafka::reader(kafka, &format!("{client_id}-{topic}"))?;
    let timeout = Duration::from_secs(30);
    let partitions = crate::kafka::partitions(consumer.client(), topic, timeout)?;
    // Partition -> the end it had at start; the table is loaded once every one is reached.
    let mut behind: HashMap<i32, i64> =
        crate::kafka::watermarks(consumer.client(), topic, &partitions, timeout)?
            .into_iter()
            .filter(|(_, low, high)| high > low)
            .map(|(p, _, high)| (p, high))
            .collect();
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
