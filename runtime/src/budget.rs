//! One size budget for every record the pipeline produces.
//!
//! `kafka.message_max_bytes` is the largest record any producer sends (set explicitly as
//! librdkafka's `message.max.bytes`). From it follow the limits every stage checks before it
//! produces, so no record can be accepted at one end and refused by the broker further on:
//!
//! - ingest takes a raw event (key and value) only up to [`SizeBudget::raw_record_max`], which
//!   leaves [`ENRICHMENT_HEADROOM`] for what the enricher adds (user, groups, session, pipeline
//!   metadata);
//! - any stage whose output would still exceed [`SizeBudget::fits`] dead-letters it instead;
//! - a dead letter keeps at most [`SizeBudget::dead_letter_value_max`] bytes of the original
//!   (plus its size and SHA-256), so a dead letter is never itself too large.

/// Smallest `kafka.message_max_bytes` accepted: room for the headroom below and a useful event.
pub const MIN_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest `kafka.message_max_bytes` accepted.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// What the enricher may add to a raw event: resolved user, transitive groups, session and
/// pipeline metadata. Events whose groups list outgrows it are dead-lettered by the enricher.
pub const ENRICHMENT_HEADROOM: usize = 64 * 1024;
/// librdkafka counts more than key and value against `message.max.bytes` (record and batch
/// framing, headers); this margin covers it.
pub const RECORD_OVERHEAD: usize = 1024;
/// The most of an original key a dead letter keeps.
pub const DEAD_LETTER_KEY_MAX: usize = 4 * 1024;
/// The most of a reason a dead letter keeps.
pub const DEAD_LETTER_REASON_MAX: usize = 4 * 1024;
/// Room for a dead letter's other fields (stage, topic, hash, Avro framing).
const DEAD_LETTER_FIELDS: usize = 2 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeBudget {
    message_max_bytes: usize,
}

impl SizeBudget {
    /// `message_max_bytes` is validated into
    /// [`MIN_MESSAGE_BYTES`]..=[`MAX_MESSAGE_BYTES`] by the settings; smaller values are raised
    /// to the minimum so the arithmetic below cannot underflow.
    pub fn new(message_max_bytes: usize) -> Self {
        Self {
            message_max_bytes: message_max_bytes.max(MIN_MESSAGE_BYTES),
        }
    }

    pub fn message_max_bytes(&self) -> usize {
        self.message_max_bytes
    }

    /// Whether a record with this key and value can be produced.
    pub fn fits(&self, key_len: usize, value_len: usize) -> bool {
        key_len + value_len + RECORD_OVERHEAD <= self.message_max_bytes
    }

    /// The largest raw event (key plus encoded value) the ingest points accept.
    pub fn raw_record_max(&self) -> usize {
        self.message_max_bytes - ENRICHMENT_HEADROOM - RECORD_OVERHEAD
    }

    /// The most of an original value a dead letter keeps whole.
    pub fn dead_letter_value_max(&self) -> usize {
        self.message_max_bytes
            - RECORD_OVERHEAD
            - DEAD_LETTER_KEY_MAX * 2 // the letter's own key is the original key, capped
            - DEAD_LETTER_REASON_MAX
            - DEAD_LETTER_FIELDS
    }
}

impl From<&crate::KafkaConfig> for SizeBudget {
    fn from(kafka: &crate::KafkaConfig) -> Self {
        Self::new(kafka.message_max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_events_leave_room_for_enrichment_and_letters_fit() {
        for max in [MIN_MESSAGE_BYTES, 1_000_000, MAX_MESSAGE_BYTES] {
            let b = SizeBudget::new(max);
            assert!(b.raw_record_max() + ENRICHMENT_HEADROOM + RECORD_OVERHEAD <= max);
            assert!(b.fits(0, b.raw_record_max()));
            assert!(!b.fits(0, max));
            let letter = b.dead_letter_value_max()
                + DEAD_LETTER_KEY_MAX * 2
                + DEAD_LETTER_REASON_MAX
                + DEAD_LETTER_FIELDS;
            assert!(b.fits(0, letter));
        }
        assert_eq!(SizeBudget::new(10).message_max_bytes(), MIN_MESSAGE_BYTES);
    }
}
