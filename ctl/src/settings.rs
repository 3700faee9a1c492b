//! `auditctl`'s settings: the cluster and the pipeline's topics.

use crate::operator::OperatorSettings;
use crate::rule_impact::ClickHouseSettings;
use crate::verify::VerifySettings;
use crate::verify_cloudwatch::CloudWatchSettings;
use audit_runtime::config::{self, ConfigError, Validate};
use audit_runtime::{KafkaConfig, LogConfig, LogFormat, TopicsConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub log: LogConfig,
    /// Who is recorded as making changes; see `crate::operator`.
    pub operator: OperatorSettings,
    /// Where `rules set --dry-run` and `verify` read stored events.
    pub clickhouse: ClickHouseSettings,
    /// The public keys `verify` checks digests with.
    pub verify: VerifySettings,
    /// Where `verify` reads the CloudWatch copies.
    pub cloudwatch: CloudWatchSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            topics: TopicsConfig::default(),
            // A command-line tool stays quiet unless something is wrong.
            log: LogConfig {
                format: LogFormat::Human,
                level: "warn".to_string(),
            },
            operator: OperatorSettings::default(),
            clickhouse: ClickHouseSettings::default(),
            verify: VerifySettings::default(),
            cloudwatch: CloudWatchSettings::default(),
        }
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.topics.validate()?;
        self.operator.validate()
    }
}

impl Settings {
    pub fn load(file: Option<&Path>, brokers: Option<&str>) -> Result<Self, ConfigError> {
        let mut settings: Settings = config::load(file, &[])?;
        if let Some(brokers) = brokers {
            settings.kafka.brokers = brokers.to_string();
            settings.validate()?;
        }
        Ok(settings)
    }
}
