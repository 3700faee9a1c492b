//! `audit-sink-clickhouse`'s settings.

use audit_runtime::breaker::BreakerConfig;
use audit_runtime::config::{self, ConfigError, Validate};
use audit_runtime::{KafkaConfig, LogConfig, OpsConfig, TopicsConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub log: LogConfig,
    pub ops: OpsConfig,
    pub clickhouse: ClickHouseConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            topics: TopicsConfig::default(),
            log: LogConfig::default(),
            ops: OpsConfig::on_port(9102),
            clickhouse: ClickHouseConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint of the server.
    pub url: String,
    /// The database the migrations create and the sink writes to.
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Consumer group of audit.enriched for this sink.
    pub group_id: String,
    /// Flush a batch at this many rows...
    pub batch_max_rows: usize,
    /// ...or this many milliseconds after its first row while rows keep arriving; a batch is
    /// inserted at once when no more rows are ready.
    pub batch_max_wait_ms: u64,
    /// While rows keep coming, inserts are at least this many milliseconds apart, so a steady
    /// trickle does not make more parts than ClickHouse merges; an insert after a quiet spell
    /// goes at once.
    pub min_insert_interval_ms: u64,
    /// Rows are removed this many days after the enricher linked them (`events.enriched_at`;
    /// derived tables from when they were derived); unset keeps them forever. Checkpoints
    /// are kept. Give `auditctl verify` the same value (`verify.retention_days`) so it reads
    /// the removed links as EXPIRED, not DELETED.
    pub ttl_days: Option<u32>,
    /// Longest pause between retries while ClickHouse is unreachable, in milliseconds.
    pub max_backoff_ms: u64,
    /// Per partition, how many recently stored event ids are remembered to recognise events an
    /// enricher published again after a crash (they arrive soon after the originals). It must
    /// cover what reaches one partition between an enricher's crash and its partitions' takeover
    /// (its session timeout plus its batches in flight); ~40 bytes each.
    pub replay_window: usize,
    /// All partitions' windows together take at most about this many bytes: with many
    /// partitions each window holds fewer ids than `replay_window`.
    pub replay_window_bytes: usize,
    /// The circuit breaker for rows ClickHouse refuses (`[clickhouse.breaker]`, see
    /// `audit_runtime::breaker`): when more than `max_refused_share` (0.5) of an insert of at
    /// least `min_batch` (20) rows, or `max_consecutive` (10) rows in a row, are refused for
    /// the same reason, the sink holds them uncommitted instead of dead-lettering them, and
    /// probes every `probe_initial_ms` (1,000) doubling up to `probe_max_ms` (30,000) until
    /// ClickHouse takes them.
    pub breaker: BreakerConfig,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".to_string(),
            database: "audit".to_string(),
            user: None,
            password: None,
            group_id: "audit-sink-clickhouse".to_string(),
            batch_max_rows: 5_000,
            batch_max_wait_ms: 1_000,
            min_insert_interval_ms: 200,
            ttl_days: None,
            max_backoff_ms: 10_000,
            replay_window: 200_000,
            replay_window_bytes: 8 * 1024 * 1024,
            breaker: BreakerConfig::default(),
        }
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.topics.validate()?;
        let ch = &self.clickhouse;
        if ch.replay_window == 0 {
            return Err(ConfigError::invalid(
                "clickhouse.replay_window",
                "must be positive: without it an enricher's crash duplicates rows",
            ));
        }
        if !(ch.url.starts_with("http://") || ch.url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "clickhouse.url",
                format!("{:?} is not an http(s) URL", ch.url),
            ));
        }
        if ch.database.is_empty()
            || !ch
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(ConfigError::invalid(
                "clickhouse.database",
                "must be letters, digits and _",
            ));
        }
        if ch.batch_max_rows == 0 {
            return Err(ConfigError::invalid(
                "clickhouse.batch_max_rows",
                "must be positive",
            ));
        }
        ch.breaker.validate("clickhouse.breaker")?;
        if ch.ttl_days == Some(0) {
            return Err(ConfigError::invalid(
                "clickhouse.ttl_days",
                "must be positive or unset",
            ));
        }
        Ok(())
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        config::load(file, &[])
    }
}
