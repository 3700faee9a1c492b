//! Enriched audit events into AWS CloudWatch Logs.
//!
//! - [`config`]: the settings.
//! - [`routing`]: event type -> log stream (pure).
//! - [`batcher`]: PutLogEvents calls under every CloudWatch limit (pure).
//! - [`service`]: the CloudWatch I/O with retries.
//! - [`sink`]: the batch handler wiring it together.

pub mod batcher;
pub mod config;
pub mod message;
pub mod routing;
pub mod service;
pub mod sink;
