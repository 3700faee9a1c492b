//! What every audit pipeline binary needs to run, written once.
//!
//! - [`budget`]: the one size budget (`kafka.message_max_bytes`) every stage checks its output
//!   against.
//! - [`dead_letter`]: building, capping, publishing and counting dead letters, and the typed
//!   decode step that dead-letters what does not decode.
//! - [`retry`]: the one retry policy (backoff with jitter); backends only classify their errors.
//! - [`labels`]: metric labels that never take an unbounded value from senders.
//! - [`config`]: layered settings (built-in defaults < TOML file < `AUDIT__SECTION__KEY`
//!   environment), validated at start with errors that name the setting.
//! - [`kafka`]: client construction with any librdkafka property passed through, and the
//!   pipeline's topic settings.
//! - [`publish`]: a producer that reports when a whole batch is acknowledged.
//! - [`consume`]: the consume -> process -> commit loop that commits an offset only after the
//!   caller says everything derived from it is durable.
//! - [`follow`]: a compacted topic read whole and followed, as a table.
//! - [`replays`]: recognising events published again (same id, new offset) in a sink.
//! - [`telemetry`]: tracing setup (human or JSON logs).
//! - [`ops`]: the `/metrics` (Prometheus text) and `/healthz` endpoint.
//! - [`shutdown`]: SIGINT/SIGTERM handling that lets in-flight work finish.

pub mod breaker;
pub mod budget;
pub mod config;
pub mod consume;
pub mod dead_letter;
pub mod follow;
pub mod ingest;
pub mod kafka;
pub mod labels;
pub mod ops;
pub mod publish;
pub mod replays;
pub mod retry;
pub mod shutdown;
pub mod telemetry;

pub use config::{
    ConfigError, KafkaConfig, LogConfig, LogFormat, OpsConfig, TopicConfig, TopicsConfig,
};
pub use shutdown::Shutdown;
