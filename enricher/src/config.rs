//! `audit-enricher`'s settings.

use audit_runtime::breaker::BreakerConfig;
use audit_runtime::config::{self, ConfigError, Validate};
use audit_runtime::{KafkaConfig, LogConfig, OpsConfig, TopicsConfig};
use audit_schemas::redaction::RedactionSettings;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub log: LogConfig,
    pub ops: OpsConfig,
    pub enricher: EnricherConfig,
    pub redaction: RedactionSettings,
    /// Tamper evidence: hash chains and signed digests (see `audit_schemas::chain`).
    pub chain: ChainConfig,
    /// `[vocabulary]`: server audit codes and the catalog types they mean, over the shipped
    /// pairs (`audit_schemas::vocabulary::SHIPPED`), e.g.
    /// `"executionSessionService.execute" = "job-start"`. Stored beside each event's type, so a
    /// rule or stream mapping on the catalog type covers the code too.
    pub vocabulary: std::collections::BTreeMap<String, String>,
}

/// `[chain]`: the hash chain over enriched events and the signed digests of its heads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainConfig {
    /// Link every enriched event into its raw partition's hash chain.
    pub enabled: bool,
    /// Base64 of the 32-byte Ed25519 seed digests are signed with (`openssl rand -base64 32`).
    /// Unset: links are still made, but no digest is published and `auditctl verify` can prove
    /// nothing. `audit-enricher public-key` prints the public key verifiers configure.
    pub signing_key: Option<String>,
    /// A file holding that base64 seed instead (a mounted secret, mode 0400): keeps the key
    /// out of config files and the environment. At most one of the two is set.
    pub signing_key_file: Option<std::path::PathBuf>,
    /// The key's id, carried in each digest (rotate by adding a new id).
    pub key_id: String,
    /// Digests at most this often (after a batch is acknowledged, or when idle): links after a
    /// chain's last digest are not yet provable.
    pub digest_interval_ms: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            signing_key: None,
            signing_key_file: None,
            key_id: "default".into(),
            digest_interval_ms: 1_000,
        }
    }
}

impl ChainConfig {
    /// The signing key from `signing_key` or `signing_key_file`, if either is set.
    pub fn signer(&self) -> Result<Option<audit_schemas::chain::SigningKey>, ConfigError> {
        let (setting, seed) = match (&self.signing_key, &self.signing_key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "chain.signing_key_file",
                    "set either chain.signing_key or chain.signing_key_file, not both",
                ))
            }
            (Some(seed), None) => ("chain.signing_key", seed.clone()),
            (None, Some(path)) => (
                "chain.signing_key_file",
                std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::invalid(
                        "chain.signing_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?,
            ),
            (None, None) => return Ok(None),
        };
        audit_schemas::chain::SigningKey::from_seed_b64(&self.key_id, seed.trim())
            .map(Some)
            .map_err(|e| ConfigError::invalid(setting, e.to_string()))
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            topics: TopicsConfig::default(),
            log: LogConfig::default(),
            ops: OpsConfig::on_port(9101),
            enricher: EnricherConfig::default(),
            redaction: RedactionSettings::default(),
            chain: ChainConfig::default(),
            vocabulary: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnricherConfig {
    /// Consumer group of audit.raw; every instance with the same group shares the partitions.
    pub group_id: String,
    /// How long an event whose session is not in the directory yet waits for it before it goes
    /// on marked SESSION_UNKNOWN.
    pub session_wait_ms: u64,
    /// A session that was waited for in vain is not waited for again for this long.
    pub unknown_session_ttl_ms: u64,
    /// Most sessions remembered as waited for in vain (the oldest is forgotten first).
    pub max_unknown_sessions: usize,
    /// An event whose claimed time is more than this many milliseconds before the pipeline
    /// received it is flagged `event_time = TOO_OLD` (kept, never refused).
    pub max_event_age_ms: u64,
    /// An event whose claimed time is more than this many milliseconds after the pipeline
    /// received it is flagged `event_time = AHEAD`.
    pub max_event_lead_ms: u64,
    /// Most records held back for late sessions at once; when full, the session waiting
    /// longest goes on as SESSION_UNKNOWN early. Held records never hold back other records.
    pub max_waiting_records: usize,
    /// Most raw records handled (and their offsets committed) together.
    pub batch_max_records: usize,
    /// Longest a batch stays open while records keep arriving, in milliseconds; a batch is
    /// handed over at once when no more records are ready.
    pub batch_max_wait_ms: u64,
    /// Batches published and not yet acknowledged while the next ones are prepared; their
    /// offsets are committed in order, each once it and every earlier batch are acknowledged.
    /// 1 makes the enricher handle one batch at a time.
    pub max_in_flight_batches: usize,
    /// A session deleted from the directory (a logout) still joins for this many milliseconds,
    /// so the events racing its logout through the pipeline keep their user; then it leaves
    /// memory. 0 removes it at once.
    pub session_end_grace_ms: u64,
    /// A session with no activity for this many milliseconds ends (activity: the platform's
    /// `last_activity_at`, or the newest event of the session the enricher saw). 0: never.
    /// Measured on the wall clock: an enricher behind by more than this ends sessions whose
    /// events are still in its backlog, so keep it well above any expected lag.
    pub session_idle_timeout_ms: u64,
    /// A session ends this many milliseconds after it started, active or not. 0: never.
    pub session_max_lifetime_ms: u64,
    /// The circuit breaker for enriched events the broker refuses one by one
    /// (`[enricher.breaker]`, see `audit_runtime::breaker`): when more than
    /// `max_refused_share` (0.5) of a batch of at least `min_batch` (20), or `max_consecutive`
    /// (10) in a row, are refused for the same reason (a topic policy, a size limit below
    /// `kafka.message_max_bytes`), they are held and published again with backoff (from
    /// `probe_initial_ms`, 1,000, up to `probe_max_ms`, 30,000) instead of dead-lettered, and
    /// nothing after them is committed.
    pub breaker: BreakerConfig,
}

impl Default for EnricherConfig {
    fn default() -> Self {
        Self {
            group_id: "audit-enricher".to_string(),
            session_wait_ms: 2_000,
            unknown_session_ttl_ms: 60_000,
            max_unknown_sessions: 100_000,
            max_event_age_ms: 7 * 24 * 3_600_000,
            max_event_lead_ms: 5 * 60_000,
            max_waiting_records: 100_000,
            batch_max_records: 2_000,
            batch_max_wait_ms: 50,
            max_in_flight_batches: 4,
            session_end_grace_ms: 5 * 60_000,
            session_idle_timeout_ms: 8 * 3_600_000,
            session_max_lifetime_ms: 7 * 24 * 3_600_000,
            breaker: BreakerConfig::default(),
        }
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        audit_schemas::vocabulary::Vocabulary::with(&self.vocabulary)
            .map_err(|e| ConfigError::invalid("vocabulary", e.to_string()))?;
        self.topics.validate()?;
        if self.enricher.group_id.trim().is_empty() {
            return Err(ConfigError::invalid(
                "enricher.group_id",
                "must not be empty",
            ));
        }
        if self.enricher.batch_max_records == 0 {
            return Err(ConfigError::invalid(
                "enricher.batch_max_records",
                "must be positive",
            ));
        }
        if !(1..=64).contains(&self.enricher.max_in_flight_batches) {
            return Err(ConfigError::invalid(
                "enricher.max_in_flight_batches",
                "must be between 1 and 64",
            ));
        }
        if self.enricher.session_wait_ms > 600_000 {
            return Err(ConfigError::invalid(
                "enricher.session_wait_ms",
                "at most 600000 (10 minutes): waiting records hold back their partitions' commits",
            ));
        }
        if self.enricher.max_waiting_records == 0 {
            return Err(ConfigError::invalid(
                "enricher.max_waiting_records",
                "must be positive",
            ));
        }
        self.chain.signer()?;
        if self.chain.digest_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "chain.digest_interval_ms",
                "must be positive",
            ));
        }
        self.enricher.breaker.validate("enricher.breaker")?;
        if self.enricher.max_unknown_sessions == 0 {
            return Err(ConfigError::invalid(
                "enricher.max_unknown_sessions",
                "must be positive",
            ));
        }
        Ok(())
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        config::load(file, &["redaction.keys", "redaction.keep"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";

    fn with_file(contents: &str) -> (ChainConfig, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("audit-key-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).unwrap();
        let chain = ChainConfig {
            signing_key_file: Some(path.clone()),
            ..ChainConfig::default()
        };
        (chain, path)
    }

    #[test]
    fn the_signing_key_comes_from_a_file_as_from_the_setting() {
        let (chain, path) = with_file(&format!("{SEED}\n"));
        let from_file = chain.signer().unwrap().unwrap();
        let inline = ChainConfig {
            signing_key: Some(SEED.into()),
            ..ChainConfig::default()
        };
        assert_eq!(
            inline.signer().unwrap().unwrap().public_b64(),
            from_file.public_b64()
        );
        std::fs::remove_file(path).unwrap();
        assert_eq!(ChainConfig::default().signer().unwrap().map(|k| k.id), None);
    }

    #[test]
    fn a_bad_or_doubled_key_setting_is_named() {
        let (mut chain, path) = with_file("not base64");
        let e = chain.signer().err().unwrap().to_string();
        assert!(e.contains("chain.signing_key_file"), "{e}");
        chain.signing_key = Some(SEED.into());
        let e = chain.signer().err().unwrap().to_string();
        assert!(e.contains("not both"), "{e}");
        std::fs::remove_file(&path).unwrap();
        chain.signing_key = None;
        let e = chain.signer().err().unwrap().to_string();
        assert!(
            e.contains("cannot read") && e.contains("chain.signing_key_file"),
            "{e}"
        );
    }
}
