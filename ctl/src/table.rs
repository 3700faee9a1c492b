//! Reading and writing the compacted topics (rules, directory) as key -> value tables.

use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use audit_runtime::kafka;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Publishes one record (`None`: a tombstone, which deletes the key) and waits for the ack.
pub async fn put(settings: &Settings, topic: &str, key: &str, value: Option<&[u8]>) -> Result<()> {
    let producer = kafka::producer(&settings.kafka, "auditctl")?;
    let mut record: FutureRecord<str, [u8]> = FutureRecord::to(topic).key(key);
    record = record.payload(value.unwrap_or_default());
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("publishing {key} to {topic} on {}", settings.kafka.brokers))?;
    Ok(())
}

/// Publishes many records (topic, key, value) with one producer (in order per key) and waits
/// for every ack.
pub async fn put_many(
    settings: &Settings,
    records: &[(&str, String, Option<Vec<u8>>)],
) -> Result<()> {
    let producer = kafka::producer(&settings.kafka, "auditctl")?;
    let mut deliveries = Vec::with_capacity(records.len());
    for (topic, key, value) in records {
        let record: FutureRecord<str, [u8]> = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(value.as_deref().unwrap_or_default());
        deliveries.push(producer.send(record, Duration::from_secs(30)));
    }
    for (result, (topic, key, _)) in futures::future::join_all(deliveries)
        .await
        .into_iter()
        .zip(records)
    {
        result.map_err(|(e, _)| e).with_context(|| {
            format!("publishing {key} to {topic} on {}", settings.kafka.brokers)
        })?;
    }
    Ok(())
}

/// The current value of every key: the topic read to its end, later records replacing earlier
/// ones and tombstones removing keys, as compaction will eventually leave it.
pub async fn read(settings: &Settings, topic: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let consumer = kafka::reader(&settings.kafka, "auditctl")?;
    let timeout = Duration::from_secs(10);
    let partitions = kafka::partitions(consumer.client(), topic, timeout)?;
    let mut pending: HashSet<i32> =
        kafka::watermarks(consumer.client(), topic, &partitions, timeout)?
            .into_iter()
            .filter(|(_, low, high)| high > low)
            .map(|(p, _, _)| p)
            .collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut table = BTreeMap::new();
    while !pending.is_empty() {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Err(_) => bail!("timed out reading {topic}"),
            Ok(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                match m.payload() {
                    None | Some([]) => {
                        table.remove(&key);
                    }
                    Some(v) => {
                        table.insert(key, v.to_vec());
                    }
                }
            }
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Ok(Err(e)) => return Err(e).with_context(|| format!("reading {topic}")),
        }
    }
    Ok(table)
}
