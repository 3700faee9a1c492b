//! Ingest for the audit pipeline: everything that puts events on `audit.raw`.
//!
//! - [`http`]: the ingest API's routes; its pure request handling is in [`body`] and [`auth`],
//!   and [`serve`] accepts and times its connections.
//! - [`scim`]: the SCIM 2.0 endpoint identity providers provision the directory through.
//! - [`tail`]: the audit-log tailer.
//! - [`send`]: JSON / NDJSON from a file or stdin.
//! - [`gen`]: the load generator, with matching directory records.
//! - [`browser`] and [`peer`]: browser tokens, and the sender's address through trusted proxies.
//!
//! The Kafka I/O all of them share is `audit_runtime::ingest`; the library services link to
//! log audit events is the `audit-client` crate.

pub mod auth;
pub mod body;
pub mod browser;
pub mod config;
pub mod gen;
pub mod http;
pub mod peer;
pub mod quota;
pub mod scim;
pub mod send;
pub mod serve;
pub mod tail;
