//! Records a stage could not process, kept whole on `audit.dlq` with the reason, so nothing is
//! ever silently dropped and an operator can inspect and replay.

use crate::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    #[serde(with = "apache_avro::serde_avro_bytes_opt")]
    pub original_key: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt")]
    pub original_value: Option<Vec<u8>>,
    /// Which stage gave up: producer, tailer, enricher, sink-clickhouse, sink-cloudwatch.
    pub stage: String,
    pub reason: String,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub failed_at: Timestamp,
}
