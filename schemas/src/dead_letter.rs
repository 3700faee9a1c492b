//! Records a stage could not process, kept on `audit.dlq` with the reason, so nothing is ever
//! silently dropped and an operator can inspect and replay.
//!
//! A dead letter must itself always fit on the topic, so an original too large to keep whole is
//! kept as its first bytes plus its size and SHA-256 (`original_truncated`); building and
//! capping letters is `audit_runtime::dead_letter`'s job.

use crate::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    #[serde(with = "apache_avro::serde_avro_bytes_opt")]
    pub original_key: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt")]
    pub original_value: Option<Vec<u8>>,
    /// Which stage gave up: producer, tailer, send, enricher, sink-clickhouse, sink-cloudwatch.
    pub stage: String,
    pub reason: String,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub failed_at: Timestamp,
    /// The failure's class (a [`Cause`] name; `unknown` for letters written before v2).
    #[serde(default = "unknown_cause")]
    pub cause: String,
    /// Length of the whole original value.
    #[serde(default)]
    pub original_size: Option<i64>,
    /// Hex SHA-256 of the whole original value.
    #[serde(default)]
    pub original_sha256: Option<String>,
    /// `original_value` holds only the first bytes of the original.
    #[serde(default)]
    pub original_truncated: bool,
}

fn unknown_cause() -> String {
    "unknown".to_string()
}

/// Why a record became a dead letter: a small closed set, so it can label metrics and select
/// letters to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Not a record of the expected schema (or not Avro, or not UTF-8 JSON).
    Undecodable,
    /// A record with no value where one is required.
    NoValue,
    /// Too large for the stage's output.
    TooLarge,
    /// Decoded, but not valid (a log line that does not convert, a field out of range).
    Invalid,
    /// The backend refused this one record (ClickHouse, CloudWatch, the broker).
    Rejected,
    /// The backend's limits leave it nowhere to go (e.g. outside CloudWatch's time window).
    Unroutable,
}

impl Cause {
    pub const ALL: [Cause; 6] = [
        Cause::Undecodable,
        Cause::NoValue,
        Cause::TooLarge,
        Cause::Invalid,
        Cause::Rejected,
        Cause::Unroutable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Undecodable => "undecodable",
            Cause::NoValue => "no_value",
            Cause::TooLarge => "too_large",
            Cause::Invalid => "invalid",
            Cause::Rejected => "rejected",
            Cause::Unroutable => "unroutable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
