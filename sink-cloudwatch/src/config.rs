//! `audit-sink-cloudwatch`'s settings.

use audit_runtime::breaker::BreakerConfig;
use audit_runtime::config::{self, ConfigError, Validate};
use audit_runtime::{KafkaConfig, LogConfig, OpsConfig, TopicsConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub log: LogConfig,
    pub ops: OpsConfig,
    pub cloudwatch: CloudWatchConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            topics: TopicsConfig::default(),
            log: LogConfig::default(),
            ops: OpsConfig::on_port(9103),
            cloudwatch: CloudWatchConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatchConfig {
    /// Consumer group of audit.enriched for this sink.
    pub group_id: String,
    /// The log group; created when missing.
    pub log_group: String,
    /// Retention set on the group when this sink creates it; unset keeps events forever.
    pub retention_days: Option<i32>,
    /// Event type (or glob such as "query-*") -> log stream. An exact type wins over globs;
    /// among globs the longest pattern wins.
    pub streams: BTreeMap<String, String>,
    /// Stream for types no entry maps; "" skips them (counted in
    /// `audit_cloudwatch_skipped_total`).
    pub default_stream: Option<String>,
    /// The witness stream: every signed chain checkpoint goes here as its bare JSON
    /// (`docs/proof-format.md` §4), whatever the routes say, so `auditctl verify` can
    /// cross-check ClickHouse's checkpoints against a store a ClickHouse writer cannot change.
    /// Grant PutLogEvents on it to this sink only, and DeleteLogStream to no one (README,
    /// "Witnesses"). "" ships no checkpoints.
    pub checkpoint_stream: String,
    /// CloudWatch Logs endpoint override, e.g. http://127.0.0.1:4566 for moto or LocalStack.
    pub endpoint_url: Option<String>,
    /// AWS region; unset uses the standard chain (AWS_REGION, profile).
    pub region: Option<String>,
    /// Most records per consumed batch.
    pub batch_max_records: usize,
    /// Longest a batch stays open while records keep arriving, in milliseconds; a batch is
    /// handed over at once when no more records are ready.
    pub batch_max_wait_ms: u64,
    /// Attempts per PutLogEvents call on throttling and server errors before the sink stops
    /// (it restarts from the last committed offset, losing nothing).
    pub max_attempts: u32,
    /// Per partition, how many recent event ids are remembered to recognise events an enricher
    /// published again (same id, new offset, soon after the originals); ~40 bytes each.
    pub replay_window: usize,
    /// All partitions' windows together take at most about this many bytes: with many
    /// partitions each window holds fewer ids than `replay_window`.
    pub replay_window_bytes: usize,
    /// The circuit breaker for events CloudWatch rejects (`[cloudwatch.breaker]`, see
    /// `audit_runtime::breaker`): when more than `max_refused_share` (0.5) of a call of at
    /// least `min_batch` (20) events, or `max_consecutive` (10) in a row, are rejected for the
    /// same reason (too new: the clock is off; expired: a retention shorter than the backlog),
    /// they are held uncommitted and sent again from `probe_initial_ms` (1,000) up to every
    /// `probe_max_ms` (30,000) instead of dead-lettered. `enabled = false` dead-letters them.
    pub breaker: BreakerConfig,
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        Self {
            group_id: "audit-sink-cloudwatch".to_string(),
            log_group: "/audit/events".to_string(),
            retention_days: None,
            streams: BTreeMap::from([
                ("log".to_string(), "audit_log".to_string()),
                ("error".to_string(), "audit_errors".to_string()),
            ]),
            default_stream: Some("audit_events".to_string()),
            checkpoint_stream: "audit_checkpoints".to_string(),
            endpoint_url: None,
            region: None,
            batch_max_records: 2_000,
            batch_max_wait_ms: 1_000,
            max_attempts: 30,
            replay_window: 100_000,
            replay_window_bytes: 8 * 1024 * 1024,
            breaker: BreakerConfig::default(),
        }
    }
}

/// CloudWatch's rule for group and stream names: 1-512 characters, no ':' or '*'.
fn check_name(setting: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 512 || name.contains(':') || name.contains('*') {
        return Err(ConfigError::invalid(
            setting,
            format!("{name:?} is not a CloudWatch Logs name (1-512 characters, no ':' or '*')"),
        ));
    }
    Ok(())
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.topics.validate()?;
        let cw = &self.cloudwatch;
        check_name("cloudwatch.log_group", &cw.log_group)?;
        for (pattern, stream) in &cw.streams {
            check_name(&format!("cloudwatch.streams.{pattern:?}"), stream)?;
            globset::Glob::new(pattern).map_err(|e| {
                ConfigError::invalid(format!("cloudwatch.streams.{pattern:?}"), e.to_string())
            })?;
        }
        if let Some(d) = cw.default_stream.as_deref().filter(|d| !d.is_empty()) {
            check_name("cloudwatch.default_stream", d)?;
        }
        if let Some(w) = cw.checkpoint_stream() {
            check_name("cloudwatch.checkpoint_stream", w)?;
            if cw
                .streams
                .values()
                .chain(cw.default_stream.iter())
                .any(|s| s == w)
            {
                return Err(ConfigError::invalid(
                    "cloudwatch.checkpoint_stream",
                    format!("{w:?} is also an events stream: the witness holds checkpoints only"),
                ));
            }
        }
        if let Some(days) = cw.retention_days {
            const ALLOWED: [i32; 22] = [
                1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                2557, 2922, 3288, 3653,
            ];
            if !ALLOWED.contains(&days) {
                return Err(ConfigError::invalid(
                    "cloudwatch.retention_days",
                    format!("{days} is not a retention CloudWatch offers ({ALLOWED:?})"),
                ));
            }
        }
        cw.breaker.validate("cloudwatch.breaker")?;
        if cw.replay_window == 0 {
            return Err(ConfigError::invalid(
                "cloudwatch.replay_window",
                "must be positive: without it an enricher's republished events are shipped twice",
            ));
        }
        if cw.batch_max_records == 0 || cw.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "cloudwatch.batch_max_records",
                "batch_max_records and max_attempts must be positive",
            ));
        }
        Ok(())
    }
}

impl CloudWatchConfig {
    /// The default stream, `None` when unmapped types are skipped.
    pub fn default_stream(&self) -> Option<String> {
        self.default_stream.clone().filter(|d| !d.is_empty())
    }

    /// The witness stream, `None` when checkpoints are not shipped.
    pub fn checkpoint_stream(&self) -> Option<&str> {
        Some(self.checkpoint_stream.as_str()).filter(|s| !s.is_empty())
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        config::load(file, &[])
    }
}
