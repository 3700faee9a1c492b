//! Raw audit events in, enriched audit events out.
//!
//! - [`sessions`], [`directory`] and [`rules`]: the tables, pure data structures: the sessions
//!   of the raw partitions this instance owns, all users and groups, all rules.
//! - [`ownership`]: which raw partitions are owned and whether their sessions are loaded, pure.
//! - [`enrich`]: the step for one event (join, rules, redaction), pure.
//! - [`follow`]: keeps the tables current from their compacted topics (sessions by partition).
//! - [`parking`]: records waiting for a late session, held apart from their batch, pure.
//! - [`service`]: the batch handler — decode, hold back for late sessions, publish, dead-letter.
//! - [`config`]: the settings.

pub mod chaining;
pub mod checkpoint_log;
pub mod config;
pub mod directory;
pub mod enrich;
pub mod follow;
pub mod ownership;
pub mod parking;
pub mod rules;
pub mod service;
pub mod sessions;
