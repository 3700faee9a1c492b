//! The checkpoints topic, read back: where a new owner of a raw partition finds the checkpoint
//! its epoch's first one must name (`prev`), so that a partition's checkpoints stay one list
//! across every enricher that owned it.
//!
//! Checkpoints of raw partition `p` are published to partition `p` of the topic, so the
//! newest one is its last record; a few records before are read in case something else was
//! written there.

use anyhow::{Context, Result};
use audit_runtime::config::KafkaConfig;
use audit_runtime::kafka::Reader;
use audit_schemas::chain::checkpoint::{Checkpoint, CHECKPOINT_TYPE};
use audit_schemas::{AvroRecord, EnrichedAuditEvent};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// How many records are read back at a time.
const WINDOW: i64 = 64;
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct CheckpointLog {
    reader: tokio::sync::Mutex<Reader>,
    topic: String,
}

impl CheckpointLog {
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Self> {
        let reader = audit_runtime::kafka::reader(kafka, &format!("audit-enricher-{topic}"))?;
        Ok(Self {
            reader: tokio::sync::Mutex::new(reader),
            topic: topic.to_string(),
        })
    }

    /// The newest checkpoint of `raw_partition`, or `None` when it never had one.
    pub async fn last(&self, raw_partition: i32) -> Result<Option<Checkpoint>> {
        let reader = self.reader.lock().await;
        let topic = self.topic.as_str();
        let marks =
            audit_runtime::kafka::watermarks(reader.client(), topic, &[raw_partition], TIMEOUT)
                .with_context(|| format!("reading the end of {topic} partition {raw_partition}"))?;
        let Some(&(_, low, high)) = marks.first() else {
            return Ok(None);
        };
        let mut end = high;
        while end > low {
            let start = (end - WINDOW).max(low);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, raw_partition, Offset::Offset(start))?;
            reader.assign(&tpl)?;
            let mut newest = None;
            let mut next = start;
            while next < end {
                let m = tokio::time::timeout(TIMEOUT, reader.recv())
                    .await
                    .with_context(|| {
                        format!("no record of {topic} partition {raw_partition} within {TIMEOUT:?}")
                    })?;
                match m {
                    Ok(m) => {
                        next = m.offset() + 1;
                        if m.offset() >= end {
                            break;
                        }
                        match checkpoint_of(m.payload().unwrap_or_default()) {
                            Some(c) if c.raw_partition == raw_partition => newest = Some(c),
                            Some(_) => {}
                            None => tracing::warn!(
                                topic,
                                partition = raw_partition,
                                offset = m.offset(),
                                "a record of the checkpoints topic is not a checkpoint; skipped"
                            ),
                        }
                    }
                    Err(KafkaError::PartitionEOF(_)) => break,
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("reading {topic} partition {raw_partition}"))
                    }
                }
            }
            if newest.is_some() {
                reader.unassign()?;
                return Ok(newest);
            }
            end = start;
        }
        reader.unassign()?;
        Ok(None)
    }
}

/// A checkpoint event's checkpoint.
pub fn checkpoint_of(payload: &[u8]) -> Option<Checkpoint> {
    let e = EnrichedAuditEvent::decode(payload).ok()?;
    (e.event.event_type.as_str() == CHECKPOINT_TYPE)
        .then(|| Checkpoint::from_params(&e.event.params))?
}
