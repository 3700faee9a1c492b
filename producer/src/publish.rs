//! Publishing to `audit.raw` (and dead letters to `audit.dlq`): the only Kafka I/O of the
//! producer. A publish returns only when the broker acknowledged every record (`acks=all`).

use audit_runtime::TopicsConfig;
use audit_schemas::{AvroRecord, DeadLetter, EncodeError, RawAuditEvent};
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
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
}

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    raw_topic: String,
    dlq_topic: String,
    max_in_flight: usize,
}

impl Publisher {
    pub fn new(producer: FutureProducer, topics: &TopicsConfig, max_in_flight: usize) -> Self {
        Self {
            producer,
            raw_topic: topics.raw.name.clone(),
            dlq_topic: topics.dlq.name.clone(),
            max_in_flight,
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
    /// Encoding and the capacity check happen before the first record is enqueued, so a request
    /// refused as `Busy` or unencodable left nothing behind.
    pub async fn publish(&self, events: &[RawAuditEvent]) -> Result<(), PublishError> {
        let encoded = events
            .iter()
            .map(|e| Ok((e.partition_key(), e.encode()?)))
            .collect::<Result<Vec<_>, EncodeError>>()?;
        let in_flight = self.producer.in_flight_count().max(0) as usize;
        if in_flight + encoded.len() > self.max_in_flight {
            return Err(PublishError::Busy { in_flight });
        }
        let mut deliveries = Vec::with_capacity(encoded.len());
        for (key, value) in &encoded {
            let record = FutureRecord::to(&self.raw_topic).key(key).payload(value);
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
        metrics::counter!("audit_producer_events_published_total").increment(events.len() as u64);
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
        metrics::counter!("audit_producer_dead_letters_total", "stage" => letter.stage.clone())
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
