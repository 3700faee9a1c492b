//! Publishing what enters the pipeline: events to `audit.raw`, directory writes to
//! `audit.directory` and `audit.sessions`, dead letters to `audit.dlq`. The ingest service, the
//! tailer and the client library (`audit-client`) share it. A publish returns only when the
//! broker acknowledged every record (`acks=all`).

use crate::budget::SizeBudget;
use crate::ops::Health;
use crate::TopicsConfig;
use audit_schemas::{AvroRecord, DeadLetter, DirectoryTopic, EncodeError, RawAuditEvent};
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The producer's queue cannot take the request now; nothing of it was enqueued.
    #[error("producer queue is full ({in_flight} records in flight); retry later")]
    Busy { in_flight: usize },
    #[error("Kafka did not acknowledge a record: {0}")]
    Kafka(#[from] KafkaError),
    /// The client's fault: nothing of the request was enqueued.
    #[error("event {index} is {size} bytes encoded; at most {limit} are accepted (kafka.message_max_bytes less room for enrichment)")]
    TooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
}

/// After this many publishes in a row fail, `/healthz` reports the `kafka` check unhealthy, so an
/// orchestrator restarts a producer whose client cannot recover (Tansu forgetting producer ids is
/// one such case); one success makes it healthy again.
pub const FAILURES_BEFORE_UNHEALTHY: u32 = 20;

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    raw_topic: String,
    dlq_topic: String,
    directory_topic: String,
    sessions_topic: String,
    max_in_flight: usize,
    budget: SizeBudget,
    health: Option<Health>,
    failures_in_a_row: Arc<AtomicU32>,
}

impl Publisher {
    pub fn new(
        producer: FutureProducer,
        topics: &TopicsConfig,
        max_in_flight: usize,
        budget: SizeBudget,
    ) -> Self {
        Self {
            producer,
            raw_topic: topics.raw.name.clone(),
            dlq_topic: topics.dlq.name.clone(),
            directory_topic: topics.directory.name.clone(),
            sessions_topic: topics.sessions.name.clone(),
            max_in_flight,
            budget,
            health: None,
            failures_in_a_row: Arc::default(),
        }
    }

    pub fn budget(&self) -> &SizeBudget {
        &self.budget
    }

    /// Key plus encoded value: what counts against [`SizeBudget::raw_record_max`].
    pub fn encoded_len(event: &RawAuditEvent) -> Result<usize, EncodeError> {
        Ok(event.partition_key().len() + event.encode()?.len())
    }

    /// Reports publish failures to `/healthz` (check `kafka`).
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    fn record_outcome(&self, result: &Result<(), PublishError>) {
        match result {
            Ok(()) => {
                if self.failures_in_a_row.swap(0, Ordering::Relaxed) >= FAILURES_BEFORE_UNHEALTHY {
                    if let Some(h) = &self.health {
                        h.set("kafka", true, "publishing again");
                    }
                }
            }
            Err(PublishError::Kafka(e)) => {
                let n = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= FAILURES_BEFORE_UNHEALTHY {
                    if let Some(h) = &self.health {
                        h.set(
                            "kafka",
                            false,
                            format!("{n} publishes failed in a row; last: {e}"),
                        );
                    }
                }
            }
            // Refused before anything was sent: says nothing about the broker.
            Err(
                PublishError::Busy { .. } | PublishError::Encode(_) | PublishError::TooLarge { .. },
            ) => {}
        }
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    pub fn raw_topic(&self) -> &str {
        &self.raw_topic
    }

    /// Publishes every event keyed by its partition key and waits for all acknowledgements.
    ///
    /// Encoding, the size budget and the capacity check happen before the first record is
    /// enqueued, so a request refused as too large, `Busy` or unencodable left nothing behind.
    pub async fn publish(&self, events: &[RawAuditEvent]) -> Result<(), PublishError> {
        let result = self.publish_all(events).await;
        self.record_outcome(&result);
        result
    }

    async fn publish_all(&self, events: &[RawAuditEvent]) -> Result<(), PublishError> {
        let encoded = events
            .iter()
            .map(|e| Ok((e.partition_key(), e.encode()?)))
            .collect::<Result<Vec<_>, EncodeError>>()?;
        let limit = self.budget.raw_record_max();
        if let Some((index, size)) = encoded
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .enumerate()
            .find(|(_, size)| *size > limit)
        {
            return Err(PublishError::TooLarge { index, size, limit });
        }
        let in_flight = self.producer.in_flight_count().max(0) as usize;
        if in_flight + encoded.len() > self.max_in_flight {
            return Err(PublishError::Busy { in_flight });
        }
        let records: Vec<(&str, &str, Option<&[u8]>)> = encoded
            .iter()
            .map(|(k, v)| (self.raw_topic.as_str(), k.as_str(), Some(v.as_slice())))
            .collect();
        self.send_all(&records, in_flight).await?;
        metrics::counter!("audit_producer_events_published_total").increment(events.len() as u64);
        Ok(())
    }

    /// Publishes directory changes (a delete as a tombstone) keyed by their compaction key, and
    /// waits for every acknowledgement. Records of one key keep their order. Sessions go to
    /// the sessions topic under their bare id, so the default partitioner puts each on the
    /// partition number its raw events have.
    /// Publishes directory writes together with their control events (`control`, to the raw
    /// topic): `Ok` only when every record of both is acknowledged, so a write that is stored is
    /// on record, and a failed call is retried whole.
    pub async fn publish_directory(
        &self,
        writes: &[audit_schemas::ingest::directory::DirectoryWrite],
        control: &[RawAuditEvent],
    ) -> Result<(), PublishError> {
        let encoded = writes
            .iter()
            .map(|w| w.encoded())
            .collect::<Result<Vec<_>, EncodeError>>()?;
        let events = control
            .iter()
            .map(|e| Ok((e.partition_key(), e.encode()?)))
            .collect::<Result<Vec<_>, EncodeError>>()?;
        let records: Vec<(&str, &str, Option<&[u8]>)> = encoded
            .iter()
            .map(|w| {
                let topic = match w.topic {
                    DirectoryTopic::Sessions => self.sessions_topic.as_str(),
                    DirectoryTopic::Directory => self.directory_topic.as_str(),
                };
                (topic, w.key.as_str(), w.value.as_deref())
            })
            .chain(
                events
                    .iter()
                    .map(|(k, v)| (self.raw_topic.as_str(), k.as_str(), Some(v.as_slice()))),
            )
            .collect();
        let in_flight = self.producer.in_flight_count().max(0) as usize;
        self.send_all(&records, in_flight).await?;
        metrics::counter!("audit_producer_directory_writes_total").increment(writes.len() as u64);
        Ok(())
    }

    /// Enqueues every record (a `None` value is a tombstone) and waits for every
    /// acknowledgement; a full librdkafka queue is `Busy` with `in_flight` as measured before.
    async fn send_all(
        &self,
        records: &[(&str, &str, Option<&[u8]>)],
        in_flight: usize,
    ) -> Result<(), PublishError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for (topic, key, value) in records {
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(*key);
            if let Some(value) = value {
                record = record.payload(*value);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(PublishError::Busy { in_flight });
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        for result in join_all(deliveries).await {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_canceled) => return Err(KafkaError::Canceled.into()),
            }
        }
        Ok(())
    }

    /// Publishes a dead letter and waits for its acknowledgement.
    pub async fn dead_letter(
        &self,
        key: Option<&[u8]>,
        letter: &DeadLetter,
    ) -> Result<(), PublishError> {
        let value = letter.encode()?;
        let mut record = FutureRecord::to(&self.dlq_topic).payload(&value);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .map_err(|(e, _)| PublishError::Kafka(e))?;
        let cause = audit_schemas::dead_letter::Cause::parse(&letter.cause)
            .map_or("unknown", |c| c.as_str());
        let stage = match letter.stage.as_str() {
            "tailer" => "tailer",
            "send" => "send",
            _ => "producer",
        };
        metrics::counter!("audit_dead_letters_total", "stage" => stage, "cause" => cause)
            .increment(1);
        Ok(())
    }

    /// Waits for everything enqueued to be delivered, for shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "records still undelivered at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_turns_bad_after_failures_in_a_row_and_recovers_on_success() {
        let kafka = crate::KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let producer = crate::kafka::producer(&kafka, "unit").unwrap();
        let health = Health::default();
        health.set("kafka", true, "producer created");
        let p = Publisher::new(
            producer,
            &TopicsConfig::default(),
            10,
            SizeBudget::new(1_000_000),
        )
        .with_health(health.clone());
        let failure = || Err(PublishError::Kafka(KafkaError::Canceled));
        for _ in 1..FAILURES_BEFORE_UNHEALTHY {
            p.record_outcome(&failure());
        }
        // A refusal before sending says nothing about the broker.
        p.record_outcome(&Err(PublishError::Busy { in_flight: 10 }));
        assert!(health.is_healthy());
        p.record_outcome(&failure());
        assert!(!health.is_healthy());
        p.record_outcome(&Ok(()));
        assert!(health.is_healthy());
    }
}
