//! The enricher's I/O: decoding raw records, waiting for late sessions, publishing enriched
//! events and dead letters, and saying when a batch is durable so its offsets can be committed.

use crate::directory::Directory;
use crate::enrich::{enrich, RawPosition, Step};
use crate::rules::RuleSet;
use audit_runtime::consume::PipelinedHandler;
use audit_runtime::publish::{Acks, BatchProducer, PublishError, Record};
use audit_schemas::redaction::Redactor;
use audit_schemas::{AvroRecord, DeadLetter, RawAuditEvent, Timestamp};
use futures::future::BoxFuture;
use rdkafka::message::{Message, OwnedMessage};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The tables the followers keep current and every batch reads.
#[derive(Default)]
pub struct Tables {
    pub directory: RwLock<Directory>,
    pub rules: RwLock<RuleSet>,
}

pub struct Enricher {
    pub tables: Arc<Tables>,
    publisher: Publisher,
    pub redactor: Redactor,
    pub session_wait: Duration,
    pub unknown_session_ttl: Duration,
    /// Sessions recently waited for in vain, so their next events do not wait again.
    unknown_sessions: HashMap<String, Instant>,
}

/// What one raw record turns into.
enum Output {
    Enriched(Vec<u8>),
    DeadLetter(DeadLetter),
    Dropped,
    Waiting(Box<RawAuditEvent>, RawPosition),
}

impl Enricher {
    pub fn new(
        tables: Arc<Tables>,
        producer: BatchProducer,
        enriched_topic: String,
        dlq_topic: String,
        redactor: Redactor,
        session_wait: Duration,
        unknown_session_ttl: Duration,
    ) -> Self {
        Self {
            tables,
            publisher: Publisher {
                producer,
                enriched_topic: enriched_topic.into(),
                dlq_topic: dlq_topic.into(),
            },
            redactor,
            session_wait,
            unknown_session_ttl,
            unknown_sessions: HashMap::new(),
        }
    }

    fn step(
        &self,
        raw: RawAuditEvent,
        position: RawPosition,
        give_up: bool,
        now: Timestamp,
    ) -> Output {
        let step = {
            let directory = self
                .tables
                .directory
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let rules = self.tables.rules.read().unwrap_or_else(|p| p.into_inner());
            enrich(
                raw,
                position,
                &directory,
                &rules,
                &self.redactor,
                give_up,
                now,
            )
        };
        match step {
            Step::Publish { event, redacted } => {
                if redacted > 0 {
                    metrics::counter!("audit_enricher_secrets_redacted_total")
                        .increment(redacted as u64);
                }
                if event.claimed_user_mismatch {
                    metrics::counter!("audit_enricher_claimed_user_mismatch_total").increment(1);
                }
                metrics::counter!("audit_enricher_events_out_total", "enrichment" => event.enrichment.as_str())
                    .increment(1);
                match event.encode() {
                    Ok(bytes) => Output::Enriched(bytes),
                    Err(e) => Output::DeadLetter(dead_letter(
                        None,
                        &position,
                        format!("cannot encode the enriched event: {e}"),
                    )),
                }
            }
            Step::Dropped {
                rule_id,
                event_type,
                groups,
            } => {
                if groups.is_empty() {
                    metrics::counter!("audit_enricher_events_dropped_total", "event_type" => event_type, "group" => "", "rule" => rule_id)
                        .increment(1);
                } else {
                    for group in groups {
                        metrics::counter!("audit_enricher_events_dropped_total", "event_type" => event_type.clone(), "group" => group, "rule" => rule_id.clone())
                            .increment(1);
                    }
                }
                Output::Dropped
            }
            Step::AwaitSession(raw) => Output::Waiting(raw, position),
        }
    }

    fn recently_unknown(&mut self, session: Option<&str>) -> bool {
        let Some(session) = session else { return false };
        match self.unknown_sessions.get(session) {
            Some(since) if since.elapsed() < self.unknown_session_ttl => true,
            Some(_) => {
                self.unknown_sessions.remove(session);
                false
            }
            None => false,
        }
    }

    fn remember_unknown(&mut self, session: Option<&str>) {
        if let Some(session) = session {
            if self.unknown_sessions.len() >= 100_000 {
                let ttl = self.unknown_session_ttl;
                self.unknown_sessions
                    .retain(|_, since| since.elapsed() < ttl);
            }
            self.unknown_sessions
                .insert(session.to_string(), Instant::now());
        }
    }
}

fn dead_letter(
    message: Option<&OwnedMessage>,
    position: &RawPosition,
    reason: String,
) -> DeadLetter {
    DeadLetter {
        original_key: message.and_then(|m| m.key().map(<[u8]>::to_vec)),
        original_value: message.and_then(|m| m.payload().map(<[u8]>::to_vec)),
        stage: "enricher".to_string(),
        reason,
        source_topic: message.map(|m| m.topic().to_string()),
        source_partition: Some(position.partition),
        source_offset: Some(position.offset),
        failed_at: Timestamp::now(),
    }
}

fn position_of(m: &OwnedMessage) -> RawPosition {
    let received_at = m
        .timestamp()
        .to_millis()
        .map(|ms| Timestamp::from_micros(ms.saturating_mul(1_000)))
        .unwrap_or_else(Timestamp::now);
    RawPosition {
        partition: m.partition(),
        offset: m.offset(),
        received_at,
    }
}

impl PipelinedHandler for Enricher {
    type Delivery = BoxFuture<'static, anyhow::Result<()>>;

    async fn submit(&mut self, batch: &[OwnedMessage]) -> anyhow::Result<Self::Delivery> {
        metrics::counter!("audit_enricher_events_in_total").increment(batch.len() as u64);
        let now = Timestamp::now();
        let mut outputs: Vec<Output> = Vec::with_capacity(batch.len());
        for m in batch {
            let position = position_of(m);
            let output = match m.payload().map(RawAuditEvent::decode) {
                None => Output::DeadLetter(dead_letter(
                    Some(m),
                    &position,
                    "record has no value".into(),
                )),
                Some(Err(e)) => Output::DeadLetter(dead_letter(Some(m), &position, e.to_string())),
                Some(Ok(raw)) => {
                    let give_up = self.recently_unknown(raw.session_id.as_deref());
                    self.step(raw, position, give_up, now)
                }
            };
            outputs.push(output);
        }
        self.wait_for_late_sessions(&mut outputs).await;

        // Enriched events first, then dead letters, each keeping the raw record's key.
        let mut records = Vec::with_capacity(outputs.len());
        let mut letters = Vec::new();
        for (m, output) in batch.iter().zip(outputs) {
            let key = m.key().map(<[u8]>::to_vec);
            match output {
                Output::Enriched(payload) => records.push(OutRecord {
                    to: Target::Enriched,
                    key,
                    payload,
                }),
                Output::DeadLetter(letter) => {
                    tracing::warn!(partition = m.partition(), offset = m.offset(), reason = %letter.reason, "raw record dead-lettered");
                    metrics::counter!("audit_enricher_dead_letters_total").increment(1);
                    letters.push(OutRecord {
                        to: Target::DeadLetters,
                        key,
                        payload: letter.encode()?,
                    });
                }
                Output::Dropped | Output::Waiting(..) => {}
            }
        }
        records.append(&mut letters);

        // Enqueued now, so batches reach the broker in order; acknowledged in the background
        // while the next batch is prepared.
        let publisher = self.publisher.clone();
        let first = publisher.enqueue(&records).await;
        Ok(Box::pin(async move {
            let first = match first {
                Ok(acks) => acks.acknowledged().await.map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            };
            publisher.retry_until_acknowledged(&records, first).await
        }))
    }
}

impl Enricher {
    /// Late sessions: waits (bounded) for the directory follower to learn them. The batch is
    /// published in order afterwards, so a session's events stay in order.
    async fn wait_for_late_sessions(&mut self, outputs: &mut [Output]) {
        let waiting = outputs
            .iter()
            .filter(|o| matches!(o, Output::Waiting(..)))
            .count();
        if waiting == 0 {
            return;
        }
        metrics::gauge!("audit_enricher_waiting_for_session").set(waiting as f64);
        let deadline = Instant::now() + self.session_wait;
        loop {
            let give_up = Instant::now() >= deadline;
            let mut still = 0;
            for output in outputs.iter_mut() {
                if let Output::Waiting(..) = output {
                    let Output::Waiting(raw, position) = std::mem::replace(output, Output::Dropped)
                    else {
                        unreachable!("matched above")
                    };
                    let session = raw.session_id.clone();
                    *output = self.step(*raw, position, give_up, Timestamp::now());
                    if give_up {
                        self.remember_unknown(session.as_deref());
                    }
                    if matches!(output, Output::Waiting(..)) {
                        still += 1;
                    }
                }
            }
            if still == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        metrics::gauge!("audit_enricher_waiting_for_session").set(0.0);
    }
}

/// How often a batch's publication is tried before the enricher gives up and exits (its
/// offsets uncommitted, so a restart redoes the batch): about a minute in all.
const PUBLISH_ATTEMPTS: u32 = 8;
const PUBLISH_BACKOFF: Duration = Duration::from_millis(500);
const PUBLISH_MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Where an output record goes.
#[derive(Clone, Copy)]
enum Target {
    Enriched,
    DeadLetters,
}

/// One record to publish, owned so a batch's delivery can outlive the consumer's batch.
struct OutRecord {
    to: Target,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// The producer and the topics output goes to; cheap to clone into each batch's delivery.
#[derive(Clone)]
struct Publisher {
    producer: BatchProducer,
    enriched_topic: Arc<str>,
    dlq_topic: Arc<str>,
}

impl Publisher {
    /// Enqueues every record in order and waits for all their acknowledgements.
    async fn publish(&self, records: &[OutRecord]) -> anyhow::Result<()> {
        Ok(self.enqueue(records).await?.acknowledged().await?)
    }

    /// Enqueues every record in order, waiting while the producer's queue is full.
    async fn enqueue(&self, records: &[OutRecord]) -> Result<Arc<Acks>, PublishError> {
        self.producer
            .publish(records.iter().map(|r| Record {
                topic: match r.to {
                    Target::Enriched => &self.enriched_topic,
                    Target::DeadLetters => &self.dlq_topic,
                },
                key: r.key.as_deref(),
                payload: &r.payload,
            }))
            .await
    }

    /// A broker restart or leader move can fail records the producer already retried; the
    /// whole batch is published again (records that did land become duplicates downstream,
    /// never losses, and a retried batch can land after its successors), and only a failure
    /// that outlasts every attempt fails the batch, which stops the service.
    async fn retry_until_acknowledged(
        &self,
        records: &[OutRecord],
        mut result: anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut backoff = PUBLISH_BACKOFF;
        let mut attempt = 1;
        loop {
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt < PUBLISH_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, retry_in = ?backoff, "publishing a batch failed; retrying it whole");
                    metrics::counter!("audit_enricher_publish_retries_total").increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(PUBLISH_MAX_BACKOFF);
                    attempt += 1;
                    result = self.publish(records).await;
                }
                Err(e) => {
                    return Err(e.context(format!("publishing a batch failed {attempt} times")))
                }
            }
        }
    }
}
