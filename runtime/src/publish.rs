//! Publishing a batch of records and learning when every one of them is acknowledged.
//!
//! rdkafka's `FutureProducer` gives each record its own future (a oneshot channel and a waker),
//! which a stage that only needs "is the whole batch durable?" pays for on every record. Here
//! each record carries an `Arc` of its batch's [`Acks`] as librdkafka's delivery opaque, and the
//! producer's polling thread counts the reports down: one atomic decrement per record, one
//! wake-up per batch.
//!
//! A record the broker (or librdkafka's own checks) refuses for what it is — too large, invalid —
//! is a per-record failure: it is reported back by index ([`Rejected`]) for the caller to
//! dead-letter, and the rest of the batch counts as delivered. Any other failure (broker away,
//! timeouts) fails the batch, which the caller retries whole.

use crate::config::KafkaConfig;
use crate::kafka::{producer_config, KafkaSetupError};
use crate::retry::ErrorClass;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A producer whose records report to their batch's [`Acks`]; cheap to clone.
#[derive(Clone)]
pub struct BatchProducer {
    inner: Arc<ThreadedProducer<AckContext>>,
}

/// One record to publish.
pub struct Record<'a> {
    pub topic: &'a str,
    /// `None`: the partitioner picks one from the key.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// The acknowledgements still owed for one batch, the first batch-wide failure among them and
/// the records refused one by one.
pub struct Acks {
    pending: AtomicUsize,
    failure: Mutex<Option<String>>,
    rejected: Mutex<Vec<Rejected>>,
    done: Notify,
}

/// A record of a batch refused for what it is (by its index in the batch): the caller
/// dead-letters it; retrying would fail the same way.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub index: usize,
    pub error: KafkaError,
}

/// What a produce error means for the record: refused for its content or size (per record), a
/// setting or permission (fatal), or anything else, which a retry may cure.
pub fn classify(error: &KafkaError) -> ErrorClass {
    use RDKafkaErrorCode as C;
    let code = match error {
        KafkaError::MessageProduction(c) => *c,
        _ => return ErrorClass::Retryable,
    };
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::MessageBatchTooLarge
        | C::PolicyViolation
        | C::InvalidRequiredAcks
        | C::InvalidArgument => ErrorClass::PerRecord,
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => ErrorClass::Fatal,
        _ => ErrorClass::Retryable,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot enqueue a record for {topic}: {source}")]
    Enqueue { topic: String, source: KafkaError },
    #[error("the broker did not acknowledge a record: {0}")]
    NotAcknowledged(String),
}

impl BatchProducer {
    /// A producer with the same settings as [`crate::kafka::producer`] (`acks=all`, idempotent
    /// unless `kafka.idempotence = false`).
    pub fn new(kafka: &KafkaConfig, client_id: &str) -> Result<Self, KafkaSetupError> {
        let mut cfg = producer_config(kafka, client_id);
        // For the queue gauges (crate::kafka::report_queues).
        cfg.set("statistics.interval.ms", "5000");
        let producer =
            cfg.create_with_context(AckContext)
                .map_err(|source| KafkaSetupError::Client {
                    role: "producer",
                    source,
                })?;
        Ok(Self {
            inner: Arc::new(producer),
        })
    }

    /// Enqueues `records` in order, waiting while the producer's queue is full, and returns the
    /// batch's acknowledgements to await.
    pub async fn publish<'a>(
        &self,
        records: impl ExactSizeIterator<Item = Record<'a>>,
    ) -> Result<Arc<Acks>, PublishError> {
        let acks = Arc::new(Acks::new(records.len()));
        for (index, r) in records.enumerate() {
            let tag = Box::new(Tag {
                acks: acks.clone(),
                index,
            });
            let mut record = BaseRecord::with_opaque_to(r.topic, tag).payload(r.payload);
            if let Some(key) = r.key {
                record = record.key(key);
            }
            if let Some(partition) = r.partition {
                record = record.partition(partition);
            }
            loop {
                match self.inner.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((source, _)) if classify(&source) == ErrorClass::PerRecord => {
                        acks.reject(index, source);
                        break;
                    }
                    Err((source, _)) => {
                        // Records enqueued before this one still report to `acks`; the caller
                        // retries the batch.
                        return Err(PublishError::Enqueue {
                            topic: r.topic.to_string(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(acks)
    }
}

impl Acks {
    fn new(records: usize) -> Self {
        Self {
            pending: AtomicUsize::new(records),
            failure: Mutex::new(None),
            rejected: Mutex::new(Vec::new()),
            done: Notify::new(),
        }
    }

    /// Resolves once every record of the batch has reported: with the records refused one by
    /// one (empty when all were acknowledged), or with the first batch-wide failure.
    pub async fn acknowledged(&self) -> Result<Vec<Rejected>, PublishError> {
        loop {
            // Registered before the check, so a report landing in between is not missed.
            let notified = self.done.notified();
            if self.pending.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
        match self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(reason) => Err(PublishError::NotAcknowledged(reason)),
            None => Ok(std::mem::take(
                &mut *self.rejected.lock().unwrap_or_else(|p| p.into_inner()),
            )),
        }
    }

    fn reject(&self, index: usize, error: KafkaError) {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Rejected { index, error });
        self.report(None);
    }

    fn report(&self, failure: Option<String>) {
        if let Some(reason) = failure {
            self.failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(reason);
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
            // A waiter that registers after this still sees `pending == 0` first.
        }
    }
}

/// Routes librdkafka's delivery reports to each record's batch.
pub struct AckContext;

impl ClientContext for AckContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::kafka::report_queues("producer", &statistics);
    }
}

/// What each record carries to its delivery report.
pub struct Tag {
    acks: Arc<Acks>,
    index: usize,
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<Tag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<Tag>) {
        match result {
            Ok(_) => tag.acks.report(None),
            Err((e, _)) if classify(e) == ErrorClass::PerRecord => {
                tag.acks.reject(tag.index, e.clone())
            }
            Err((e, m)) => tag.acks.report(Some(format!(
                "{e} (topic {}, partition {})",
                m.topic(),
                m.partition()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_batch_is_acknowledged_at_once() {
        assert!(Acks::new(0).acknowledged().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn records_refused_one_by_one_are_returned_and_do_not_fail_the_batch() {
        let acks = Acks::new(3);
        acks.report(None);
        acks.reject(
            1,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        );
        acks.report(None);
        let rejected = acks.acknowledged().await.unwrap();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].index, 1);
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::BrokerTransportFailure
            )),
            ErrorClass::Retryable
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resolves_after_the_last_report_with_the_first_failure() {
        let acks = Arc::new(Acks::new(3));
        let waiter = tokio::spawn({
            let acks = acks.clone();
            async move { acks.acknowledged().await }
        });
        acks.report(None);
        acks.report(Some("first".into()));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one record is still out");
        acks.report(Some("second".into()));
        let err = waiter.await.unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "the broker did not acknowledge a record: first"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_racing_the_waiter_are_never_missed() {
        for _ in 0..1_000 {
            let acks = Arc::new(Acks::new(2));
            let reporter = std::thread::spawn({
                let acks = acks.clone();
                move || {
                    acks.report(None);
                    acks.report(None);
                }
            });
            tokio::time::timeout(Duration::from_secs(5), acks.acknowledged())
                .await
                .expect("no lost wake-up")
                .unwrap();
            reporter.join().unwrap();
        }
    }
}
