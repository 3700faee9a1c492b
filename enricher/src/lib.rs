//! Raw audit events in, enriched audit events out.
//!
//! - [`directory`] and [`rules`]: the two tables, pure data structures.
//! - [`enrich`]: the step for one event (join, rules, redaction), pure.
//! - [`follow`]: keeps the tables current from their compacted topics.
//! - [`parking`]: records waiting for a late session, held apart from their batch, pure.
//! - [`service`]: the batch handler — decode, hold back for late sessions, publish, dead-letter.
//! - [`config`]: the settings.

pub mod config;
pub mod directory;
pub mod enrich;
pub mod follow;
pub mod parking;
pub mod rules;
pub mod service;
