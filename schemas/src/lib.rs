//! The audit pipeline's event model, shared by every stage.
//!
//! Everything that crosses a Kafka topic is defined here once:
//!
//! - [`event`]: [`RawAuditEvent`] (what services emit) and [`EnrichedAuditEvent`] (what the
//!   enricher publishes for the sinks).
//! - [`directory`], [`rule`], [`dead_letter`]: the records of the compacted directory and rules
//!   topics and of the dead-letter topic.
//! - [`codec`]: the Avro single-object wire format, with every schema version ever published kept
//!   so that old records still decode.
//! - [`catalog`]: the event-type catalog and the pattern custom types must match.
//! - [`chain`]: hash chains over enriched events and signed digests of their heads.
//! - [`drops`]: the enricher's summaries of what rules dropped, read by ClickHouse's `rule_drops`.
//! - [`stream_map`]: the CloudWatch sink's routes that `auditctl streams` changes live.
//! - [`control`]: changes to rules, directory and stream map as audit events of reserved types.
//! - [`ingest`]: JSON -> [`RawAuditEvent`] with validation that reports every error by field path.
//! - [`audit_log`] and [`locator`]: conversion of a server product's JSON audit-log line.
//! - [`redaction`]: the secret-key redaction applied at ingest and again by the enricher.
//!
//! The `.avsc` files under `schemas/avro/` are the contract; the Rust types mirror them and a
//! unit test keeps the two in step.

pub mod audit_log;
pub mod catalog;
pub mod chain;
pub mod codec;
pub mod control;
pub mod dead_letter;
pub mod directory;
pub mod drops;
pub mod event;
pub mod ingest;
pub mod locator;
pub mod redaction;
pub mod rule;
pub mod stream_map;
pub mod timestamp;
pub mod vocabulary;

pub use catalog::EventType;
pub use codec::{AvroRecord, DecodeError, EncodeError};
pub use dead_letter::DeadLetter;
pub use directory::{
    DirectoryEntry, DirectoryKey, DirectoryRecord, DirectoryTopic, Group, Session, User,
};
pub use event::{
    CatalogMatch, ClientInfo, Credential, EnrichedAuditEvent, Enrichment, EntityRef, EntityRole,
    ErrorInfo, EventTimeCheck, GroupRef, IngestContext, PipelineMeta, RawAuditEvent, ResolvedUser,
    SessionInfo, Source,
};
pub use rule::{AuditRule, RuleAction};
pub use stream_map::StreamMapping;
pub use timestamp::Timestamp;
