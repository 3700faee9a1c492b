//! Dead letters, written once for every stage: build (with the original capped so the letter
//! always fits), publish (retrying while the broker is away, never giving up on a letter), and
//! count (`audit_dead_letters_total{stage, cause}`, both labels from closed sets).
//!
//! Also the typed decode step: [`decode`] turns a consumed record into the stage's record type
//! or into the [`Cause`] and reason its dead letter carries.

use crate::budget::{SizeBudget, DEAD_LETTER_KEY_MAX, DEAD_LETTER_REASON_MAX};
use crate::publish::{BatchProducer, PublishError, Record};
use crate::retry::{ErrorClass, GaveUp, RetryPolicy};
use audit_schemas::dead_letter::Cause;
use audit_schemas::{AvroRecord, DeadLetter, Timestamp};
use rdkafka::message::Message;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The stages that write dead letters (the `stage` field and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Producer,
    Tailer,
    Send,
    Enricher,
    SinkClickHouse,
    SinkCloudWatch,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Producer => "producer",
            Stage::Tailer => "tailer",
            Stage::Send => "send",
            Stage::Enricher => "enricher",
            Stage::SinkClickHouse => "sink-clickhouse",
            Stage::SinkCloudWatch => "sink-cloudwatch",
        }
    }
}

/// Where the failed record was read from, when it was read from a topic.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl<'a> Origin<'a> {
    pub fn of<M: Message>(m: &'a M) -> Self {
        Self {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
        }
    }
}

/// Builds a dead letter. The value is kept whole when it fits the budget, else as its first
/// bytes with `original_truncated`; size and SHA-256 of the whole value are always recorded so
/// a truncated original can still be matched to its source. Key and reason are capped too.
pub fn build(
    budget: &SizeBudget,
    stage: Stage,
    cause: Cause,
    reason: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    origin: Option<Origin<'_>>,
) -> DeadLetter {
    let value_max = budget.dead_letter_value_max();
    // Dead letters carry what failed, never a secret in it.
    let redactor = audit_schemas::redaction::built_in();
    // Text originals (JSON bodies, log lines) and undecodable records are scanned for secrets;
    // a decodable Avro original was redacted when it was made, and scanning its bytes could
    // corrupt it for replay (length prefixes can read as text).
    let (value, redacted) = match value {
        Some(v) if cause == Cause::Undecodable || std::str::from_utf8(v).is_ok() => {
            let (v, n) = redactor.redact_bytes(v);
            (Some(v), n)
        }
        other => (other.map(std::borrow::Cow::Borrowed), 0),
    };
    let value = value.as_deref();
    let key = key.map(|k| redactor.redact_bytes(k).0);
    let key = key.as_deref();
    let mut reason = reason.to_string();
    redactor.redact_text(&mut reason);
    if redacted > 0 {
        reason.push_str(&format!(
            " ({redacted} secret(s) replaced in the original; size and SHA-256 are of the redacted original)"
        ));
    }
    DeadLetter {
        original_key: key.map(|k| k[..k.len().min(DEAD_LETTER_KEY_MAX)].to_vec()),
        original_value: value.map(|v| v[..v.len().min(value_max)].to_vec()),
        stage: stage.as_str().to_string(),
        reason: cap_text(&reason, DEAD_LETTER_REASON_MAX),
        source_topic: origin.map(|o| o.topic.to_string()),
        source_partition: origin.map(|o| o.partition),
        source_offset: origin.map(|o| o.offset),
        failed_at: Timestamp::now(),
        cause: cause.as_str().to_string(),
        original_size: value.map(|v| v.len() as i64),
        original_sha256: value.map(sha256_hex),
        original_truncated: value.is_some_and(|v| v.len() > value_max),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub fn cap_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The typed decode step: a record's value as `T`, or why it becomes a dead letter.
pub fn decode<T: AvroRecord, M: Message>(m: &M) -> Result<T, (Cause, String)> {
    match m.payload() {
        None => Err((Cause::NoValue, "record has no value".to_string())),
        Some(bytes) => T::decode(bytes).map_err(|e| (Cause::Undecodable, e.to_string())),
    }
}

/// Publishes a stage's dead letters to the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: BatchProducer,
    topic: Arc<str>,
    stage: Stage,
    budget: SizeBudget,
    retry: RetryPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot encode a dead letter: {0}")]
    Encode(#[from] audit_schemas::EncodeError),
    /// The broker refused a capped letter: its `max.message.bytes` is below
    /// `kafka.message_max_bytes`, or the producer may not write the topic.
    #[error("the dead-letter topic {topic} refused a letter ({error}); check its max.message.bytes against kafka.message_max_bytes and the producer's ACLs")]
    Refused { topic: String, error: String },
    #[error("dead letters not published: {0}")]
    Publish(#[from] GaveUp<PublishError>),
}

impl DeadLetters {
    pub fn new(producer: BatchProducer, topic: &str, stage: Stage, budget: SizeBudget) -> Self {
        Self {
            producer,
            topic: topic.into(),
            stage,
            budget,
            retry: RetryPolicy::default(),
        }
    }

    pub fn budget(&self) -> &SizeBudget {
        &self.budget
    }

    /// [`build`] for this stage.
    pub fn letter(
        &self,
        cause: Cause,
        reason: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        origin: Option<Origin<'_>>,
    ) -> DeadLetter {
        build(&self.budget, self.stage, cause, reason, key, value, origin)
    }

    /// [`build`] for a consumed record.
    pub fn for_message<M: Message>(&self, m: &M, cause: Cause, reason: &str) -> DeadLetter {
        self.letter(cause, reason, m.key(), m.payload(), Some(Origin::of(m)))
    }

    /// Publishes the letters (keyed by their original key) and waits until every one is
    /// acknowledged, retrying the whole set while the broker is away. A letter is never given
    /// up on: an error here means the stage must stop without committing what it read.
    pub async fn publish(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        if letters.is_empty() {
            return Ok(());
        }
        let encoded = letters
            .iter()
            .map(|l| l.encode())
            .collect::<Result<Vec<_>, _>>()?;
        let topic = &*self.topic;
        let result = self
            .retry
            .run(
                "publishing dead letters",
                |e: &PublishError| match e {
                    PublishError::Enqueue { source, .. } => crate::publish::classify(source),
                    PublishError::NotAcknowledged(_) => ErrorClass::Retryable,
                },
                |_| metrics::counter!("audit_dead_letter_retries_total", "stage" => self.stage.as_str()).increment(1),
                || async {
                    let acks = self
                        .producer
                        .publish(letters.iter().zip(&encoded).map(|(l, value)| Record {
                            topic,
                            partition: None,
                            key: l.original_key.as_deref(),
                            payload: value,
                        }))
                        .await?;
                    acks.acknowledged().await
                },
            )
            .await?;
        if let Some(r) = result.first() {
            return Err(DeadLetterError::Refused {
                topic: topic.to_string(),
                error: r.error.to_string(),
            });
        }
        self.published(letters);
        Ok(())
    }

    /// Logs and counts letters a stage published itself (with its other output, in one
    /// acknowledged batch).
    pub fn published(&self, letters: &[DeadLetter]) {
        for l in letters {
            tracing::warn!(stage = self.stage.as_str(), cause = %l.cause, topic = ?l.source_topic, partition = ?l.source_partition, offset = ?l.source_offset, size = ?l.original_size, reason = %l.reason, "dead-lettered");
            metrics::counter!("audit_dead_letters_total", "stage" => self.stage.as_str(), "cause" => Cause::parse(&l.cause).map_or("unknown", Cause::as_str))
                .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MIN_MESSAGE_BYTES;

    #[test]
    fn letters_keep_what_fits_and_hash_the_whole() {
        let budget = SizeBudget::new(MIN_MESSAGE_BYTES);
        let small = build(
            &budget,
            Stage::Enricher,
            Cause::Undecodable,
            "bad",
            Some(b"k"),
            Some(b"abc"),
            Some(Origin {
                topic: "audit.raw",
                partition: 2,
                offset: 9,
            }),
        );
        assert_eq!(small.original_value.as_deref(), Some(&b"abc"[..]));
        assert!(!small.original_truncated);
        assert_eq!(
            small.original_sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(small.cause, "undecodable");
        assert_eq!(small.source_offset, Some(9));

        let huge = vec![b'x'; MIN_MESSAGE_BYTES * 3];
        let key = vec![b'k'; 100_000];
        let reason = "é".repeat(10_000);
        let big = build(
            &budget,
            Stage::Tailer,
            Cause::TooLarge,
            &reason,
            Some(&key),
            Some(&huge),
            None,
        );
        assert!(big.original_truncated);
        assert_eq!(big.original_size, Some(huge.len() as i64));
        assert_eq!(big.original_sha256, Some(sha256_hex(&huge)));
        assert!(big.reason.len() <= DEAD_LETTER_REASON_MAX);
        let encoded = big.encode().unwrap();
        let key_len = big.original_key.as_ref().map_or(0, Vec::len);
        assert!(
            budget.fits(key_len, encoded.len()),
            "a letter of {} bytes does not fit {}",
            encoded.len(),
            budget.message_max_bytes()
        );
    }

    #[test]
    fn letters_never_carry_a_secret() {
        let budget = SizeBudget::new(MIN_MESSAGE_BYTES);
        let body = br#"{"event_type": 7, "params": {"password": "hunter2!x"}, "message": "Bearer abc123def456ghi"}"#;
        let letter = build(
            &budget,
            Stage::Producer,
            Cause::Invalid,
            "/params/pin: \"token=zz9zz9zz9\" is not valid",
            Some(b"api_key=k3yk3yk3y"),
            Some(body),
            None,
        );
        let printed = format!("{letter:?}");
        for secret in ["hunter2!x", "abc123def456ghi", "zz9zz9zz9", "k3yk3yk3y"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            letter.reason.contains("2 secret(s) replaced"),
            "{}",
            letter.reason
        );
        // A decodable record's bytes are left as they are: they were redacted when made.
        let avro = [
            0xc3, 0x01, 0x80, b'p', b'a', b's', b's', b'w', b'o', b'r', b'd', b'=', b'x',
        ];
        let kept = build(
            &budget,
            Stage::SinkClickHouse,
            Cause::Rejected,
            "r",
            None,
            Some(&avro),
            None,
        );
        assert_eq!(kept.original_value.as_deref(), Some(&avro[..]));
    }

    #[test]
    fn capping_text_respects_char_boundaries() {
        assert_eq!(cap_text("héllo", 100), "héllo");
        let capped = cap_text(&"é".repeat(100), 10);
        assert!(capped.len() <= 10 && capped.ends_with("..."));
    }
}
