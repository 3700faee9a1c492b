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

/// The current value of every key: the topic read to its end, later records replacing earlier
/// ones and tombstones removing keys, as compaction will eventually leave it.
pub async fn read(settings: &Settings, topic: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let consumer = kafka::reader(&settings.kafka, "auditctl")?;
    let (partitions, mut pending) = tokio::task::block_in_place(|| -> Result<_> {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("reading metadata of {topic}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            bail!("topic {topic} does not exist (see `auditctl topics create`)");
        }
        let mut pending = HashSet::new();
        for &p in &partitions {
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            if high > low {
                pending.insert(p);
            }
        }
        Ok((partitions, pending))
    })?;
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
