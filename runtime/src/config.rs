//! Layered configuration.
//!
//! Each binary defines one settings struct (with `Default` giving the documented defaults) out of
//! the shared sections here. [`load`] layers, lowest first:
//!
//! 1. the struct's `Default`,
//! 2. a TOML file, when one is given (`--config`),
//! 3. environment variables `AUDIT__<SECTION>__<KEY>`, e.g. `AUDIT__KAFKA__BROKERS=host:9092`
//!    or `AUDIT__TOPICS__RAW__PARTITIONS=12`.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), and [`Validate`]
//! runs before anything connects, so a bad setting fails at start with its full name.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

/// The environment prefix and separator: `AUDIT__KAFKA__BROKERS`.
pub const ENV_PREFIX: &str = "AUDIT";
pub const ENV_SEPARATOR: &str = "__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("setting `{setting}` is invalid: {reason}")]
    Invalid { setting: String, reason: String },
}

impl ConfigError {
    pub fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// Checks that need more than types: ranges, non-empty names, consistency.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// The effective settings as TOML for `<binary> config`, with every secret replaced by
/// `"<redacted>"`: operators paste this output into tickets, and it must not carry passwords,
/// API tokens or SASL/SSL key passwords.
pub fn to_redacted_toml<T: Serialize>(settings: &T) -> Result<String, toml::ser::Error> {
    let mut value = toml::Value::try_from(settings)?;
    redact_secrets(&mut value);
    toml::to_string_pretty(&value)
}

/// librdkafka properties that hold key material or may embed secrets, although their names
/// do not say so by the built-in rule.
const SECRET_PROPERTIES: &[&str] = &[
    "ssl.key.pem",
    "ssl_key",
    "ssl.keystore.location.pem",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.extensions",
];

fn is_secret_key(key: &str) -> bool {
    audit_schemas::redaction::keys::names_a_secret(key)
        || SECRET_PROPERTIES.contains(&key.to_ascii_lowercase().as_str())
}

fn redact_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret_key(key) && !v.is_table() && !v.is_array() {
                    *v = toml::Value::String("<redacted>".to_string());
                } else {
                    redact_secrets(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        // URLs with a password, PEM blocks, tokens by their shape.
        toml::Value::String(text) => {
            audit_schemas::redaction::built_in().redact_text(text);
        }
        _ => {}
    }
}

/// Loads defaults < file < environment, then validates.
///
/// `list_keys` names the settings whose environment value is a comma-separated list
/// (e.g. `redaction.keys`); other values keep their commas (`kafka.brokers`).
pub fn load<T>(file: Option<&Path>, list_keys: &[&str]) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    load_from_env(file, list_keys, None)
}

/// [`load`] with an explicit environment, so tests do not touch the process's.
pub fn load_from_env<T>(
    file: Option<&Path>,
    list_keys: &[&str],
    env: Option<std::collections::HashMap<String, String>>,
) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    let mut builder =
        config::Config::builder().add_source(config::Config::try_from(&T::default())?);
    if let Some(path) = file {
        builder = builder.add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let mut environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .try_parsing(true);
    if !list_keys.is_empty() {
        environment = environment.list_separator(",");
        for key in list_keys {
            environment = environment.with_list_parse_key(key);
        }
    }
    // One environment file is often shared by every service (compose, Kubernetes): variables of
    // sections this binary does not have belong to another binary and are left alone; unknown
    // keys inside its own sections are still refused.
    let env = env.unwrap_or_else(|| std::env::vars().collect());
    environment = environment.source(Some(own_sections(env, &T::default())?));
    let settings: T = builder.add_source(environment).build()?.try_deserialize()?;
    settings.validate()?;
    Ok(settings)
}

/// The variables of `env` that name one of the top-level sections of `defaults` (or any
/// variable that is not `AUDIT__...` at all, which the environment source ignores anyway).
fn own_sections<T: Serialize>(
    env: std::collections::HashMap<String, String>,
    defaults: &T,
) -> Result<std::collections::HashMap<String, String>, ConfigError> {
    let sections: std::collections::HashSet<String> = match toml::Value::try_from(defaults) {
        Ok(toml::Value::Table(t)) => t.keys().map(|k| k.to_ascii_lowercase()).collect(),
        _ => std::collections::HashSet::new(),
    };
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    Ok(env
        .into_iter()
        .filter(|(k, _)| {
            let Some(rest) = k.strip_prefix(&prefix) else {
                return false;
            };
            let section = rest.split(ENV_SEPARATOR).next().unwrap_or("");
            // Sections some settings lack but whose TOML form omits them (an unset Option)
            // still need to reach the deserializer to be refused or taken.
            sections.is_empty() || sections.contains(&section.to_ascii_lowercase())
        })
        .collect())
}

/// How to reach the Kafka cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated host:port list.
    pub brokers: String,
    /// Passed to librdkafka unchanged (SSL, SASL, timeouts...). In the environment write the
    /// property with `_` for `.`: `AUDIT__KAFKA__PROPERTIES__SECURITY_PROTOCOL=SASL_SSL`.
    pub properties: BTreeMap<String, String>,
    /// Producers are idempotent (retries never duplicate or reorder). Default true. Turn off only
    /// for brokers that forget producer ids on restart, such as Tansu 0.6: there a long-lived
    /// idempotent producer fails every record after the broker restarts.
    pub idempotence: bool,
    /// The largest record any producer of the pipeline sends (librdkafka's `message.max.bytes`,
    /// set explicitly on every producer). Every stage checks its output against it before
    /// producing: what would not fit becomes a dead letter, and dead letters are capped below
    /// it. Keep it at or under the topics' `max.message.bytes` (checked at start where the
    /// broker describes topic settings).
    pub message_max_bytes: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_string(),
            properties: BTreeMap::new(),
            idempotence: true,
            message_max_bytes: 1_000_000,
        }
    }
}

impl Validate for KafkaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.brokers",
                "must name at least one host:port",
            ));
        }
        for broker in self.brokers.split(',') {
            let broker = broker.trim();
            let ok = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError::invalid(
                    "kafka.brokers",
                    format!("{broker:?} is not host:port"),
                ));
            }
        }
        if !(crate::budget::MIN_MESSAGE_BYTES..=crate::budget::MAX_MESSAGE_BYTES)
            .contains(&self.message_max_bytes)
        {
            return Err(ConfigError::invalid(
                "kafka.message_max_bytes",
                format!(
                    "must be between {} and {} bytes",
                    crate::budget::MIN_MESSAGE_BYTES,
                    crate::budget::MAX_MESSAGE_BYTES
                ),
            ));
        }
        if self
            .properties
            .keys()
            .any(|k| k.replace('_', ".") == "message.max.bytes")
        {
            return Err(ConfigError::invalid(
                "kafka.properties.message.max.bytes",
                "set kafka.message_max_bytes instead: every stage sizes its output by it",
            ));
        }
        Ok(())
    }
}

impl KafkaConfig {
    /// The librdkafka properties with environment-style names (`_`) turned into dotted ones.
    pub fn librdkafka_properties(&self) -> impl Iterator<Item = (String, &str)> {
        self.properties
            .iter()
            .map(|(k, v)| (k.replace('_', "."), v.as_str()))
    }
}

/// One topic's name and creation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    /// Compacted topics keep the latest value per key: the directory and the rules.
    pub compacted: bool,
    /// `retention.ms`; unset keeps the broker's default. Ignored for compacted topics.
    pub retention_ms: Option<i64>,
}

impl TopicConfig {
    fn new(name: &str, partitions: i32, compacted: bool) -> Self {
        Self {
            name: name.to_string(),
            partitions,
            replication: 1,
            compacted,
            retention_ms: None,
        }
    }

    fn validate(&self, setting: &str) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || self.name.len() > 249
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConfigError::invalid(
                format!("{setting}.name"),
                format!(
                    "{:?} is not a Kafka topic name ([A-Za-z0-9._-]{{1,249}})",
                    self.name
                ),
            ));
        }
        if self.partitions < 1 {
            return Err(ConfigError::invalid(
                format!("{setting}.partitions"),
                "must be at least 1",
            ));
        }
        if self.replication < 1 {
            return Err(ConfigError::invalid(
                format!("{setting}.replication"),
                "must be at least 1",
            ));
        }
        if self.retention_ms.is_some_and(|r| r < -1) {
            return Err(ConfigError::invalid(
                format!("{setting}.retention_ms"),
                "must be -1 (forever) or a positive number of milliseconds",
            ));
        }
        Ok(())
    }
}

/// The pipeline's topics (DESIGN.md, "Topics").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub raw: TopicConfig,
    pub directory: TopicConfig,
    /// Partitioned like `raw` (same count, same key): must keep `raw`'s partition count.
    pub sessions: TopicConfig,
    pub rules: TopicConfig,
    /// The CloudWatch sink's routes, set live by `auditctl streams`.
    pub stream_map: TopicConfig,
    pub enriched: TopicConfig,
    pub dlq: TopicConfig,
    /// The enrichers' signed chain checkpoints, one partition per raw partition (same count:
    /// the record for raw partition `p` goes to partition `p`), kept forever by default: a new
    /// owner of a raw partition reads its last checkpoint here to link the next one to it.
    pub checkpoints: TopicConfig,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            raw: TopicConfig::new("audit.raw", 6, false),
            directory: TopicConfig::new("audit.directory", 3, true),
            sessions: TopicConfig::new("audit.sessions", 6, true),
            rules: TopicConfig::new("audit.rules", 1, true),
            stream_map: TopicConfig::new("audit.stream-map", 1, true),
            enriched: TopicConfig::new("audit.enriched", 6, false),
            dlq: TopicConfig::new("audit.dlq", 1, false),
            checkpoints: TopicConfig {
                retention_ms: Some(-1),
                ..TopicConfig::new("audit.checkpoints", 6, false)
            },
        }
    }
}

impl TopicsConfig {
    /// Where a directory entry of this kind is published.
    pub fn for_directory(&self, topic: audit_schemas::DirectoryTopic) -> &str {
        match topic {
            audit_schemas::DirectoryTopic::Sessions => &self.sessions.name,
            audit_schemas::DirectoryTopic::Directory => &self.directory.name,
        }
    }

    pub fn all(&self) -> [(&'static str, &TopicConfig); 8] {
        [
            ("raw", &self.raw),
            ("directory", &self.directory),
            ("sessions", &self.sessions),
            ("rules", &self.rules),
            ("stream_map", &self.stream_map),
            ("enriched", &self.enriched),
            ("dlq", &self.dlq),
            ("checkpoints", &self.checkpoints),
        ]
    }
}

impl Validate for TopicsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (role, topic) in self.all() {
            topic.validate(&format!("topics.{role}"))?;
            if !names.insert(&topic.name) {
                return Err(ConfigError::invalid(
                    format!("topics.{role}.name"),
                    format!("{:?} is used for two topics", topic.name),
                ));
            }
        }
        if self.sessions.partitions != self.raw.partitions {
            return Err(ConfigError::invalid(
                "topics.sessions.partitions",
                format!(
                    "is {} but topics.raw.partitions is {}: sessions are partitioned like the raw \
                     events, so both must have the same count (README: changing the raw topic's \
                     partition count)",
                    self.sessions.partitions, self.raw.partitions
                ),
            ));
        }
        if self.checkpoints.partitions != self.raw.partitions {
            return Err(ConfigError::invalid(
                "topics.checkpoints.partitions",
                format!(
                    "is {} but topics.raw.partitions is {}: a raw partition's checkpoints go to \
                     the checkpoints partition of the same number, so both must have the same count",
                    self.checkpoints.partitions, self.raw.partitions
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line for log shippers.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,audit_enricher=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_string(),
        }
    }
}

/// Where `/metrics` and `/healthz` are served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    pub listen: SocketAddr,
}

impl OpsConfig {
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    #[test]
    fn printed_settings_carry_no_secret() {
        #[derive(Serialize)]
        struct S {
            kafka: BTreeMap<String, String>,
            tokens: Vec<BTreeMap<String, String>>,
            password: Option<String>,
        }
        let s = S {
            kafka: BTreeMap::from([
                ("sasl.password".to_string(), "hunter2".to_string()),
                ("ssl.key.password".to_string(), "hunter3".to_string()),
                ("sasl.username".to_string(), "svc".to_string()),
                (
                    "ssl.key.pem".to_string(),
                    "-----BEGIN PRIVATE KEY-----\nMIIEv9\n-----END PRIVATE KEY-----".to_string(),
                ),
                (
                    "sasl.oauthbearer.client.secret".to_string(),
                    "hunter5".to_string(),
                ),
                (
                    "bootstrap".to_string(),
                    "https://svc:hunter6@broker:9093".to_string(),
                ),
            ]),
            tokens: vec![BTreeMap::from([
                ("token".to_string(), "tok-0123456789abcdef".to_string()),
                ("service".to_string(), "web".to_string()),
            ])],
            password: Some("hunter4".to_string()),
        };
        let printed = to_redacted_toml(&s).unwrap();
        for secret in [
            "hunter2",
            "hunter3",
            "hunter4",
            "hunter5",
            "hunter6",
            "MIIEv9",
            "tok-0123456789abcdef",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
        }
        assert!(
            printed.contains("svc") && printed.contains("web"),
            "{printed}"
        );
        assert_eq!(printed.matches("<redacted>").count(), 6, "{printed}");
        assert!(
            printed.contains("https://svc:[NOT OUTPUT]@broker:9093"),
            "{printed}"
        );
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Settings {
        kafka: KafkaConfig,
        topics: TopicsConfig,
        log: LogConfig,
        keys: Vec<String>,
    }

    impl Validate for Settings {
        fn validate(&self) -> Result<(), ConfigError> {
            self.kafka.validate()?;
            self.topics.validate()
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[kafka]\nbrokers = \"file:9092\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n[topics.raw]\nname = \"raw\"\npartitions = 3\nreplication = 1\ncompacted = false\n[log]\nformat = \"json\""
        )
        .unwrap();
        let s: Settings = load_from_env(
            Some(file.path()),
            &["keys"],
            env(&[
                ("AUDIT__KAFKA__BROKERS", "a:1,b:2"),
                ("AUDIT__TOPICS__RAW__PARTITIONS", "12"),
                ("AUDIT__TOPICS__SESSIONS__PARTITIONS", "12"),
                ("AUDIT__TOPICS__CHECKPOINTS__PARTITIONS", "12"),
                ("AUDIT__KEYS", "x,y"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kafka.brokers, "a:1,b:2");
        assert_eq!(s.kafka.properties["security.protocol"], "SSL");
        assert_eq!(s.topics.raw.name, "raw");
        assert_eq!(s.topics.raw.partitions, 12);
        assert_eq!(s.topics.enriched.name, "audit.enriched");
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.keys, vec!["x", "y"]);
    }

    #[test]
    fn environment_properties_become_dotted() {
        let s: Settings = load_from_env(
            None,
            &[],
            env(&[("AUDIT__KAFKA__PROPERTIES__SASL_MECHANISM", "PLAIN")]),
        )
        .unwrap();
        let props: Vec<_> = s.kafka.librdkafka_properties().collect();
        assert_eq!(props, vec![("sasl.mechanism".to_string(), "PLAIN")]);
    }

    #[test]
    fn errors_name_the_setting() {
        let e =
            load_from_env::<Settings>(None, &[], env(&[("AUDIT__TOPICS__DLQ__PARTITIONS", "0")]))
                .unwrap_err();
        assert!(e.to_string().contains("topics.dlq.partitions"), "{e}");
        let e = load_from_env::<Settings>(None, &[], env(&[("AUDIT__KAFKA__BROKERS", "nohost")]))
            .unwrap_err();
        assert!(e.to_string().contains("kafka.brokers"), "{e}");
        let e = load_from_env::<Settings>(
            None,
            &[],
            env(&[("AUDIT__TOPICS__RAW__PARTITIONS", "many")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("partitions"), "{e}");
        let e =
            load_from_env::<Settings>(None, &[], env(&[("AUDIT__TOPICS__RAW__PARTITIONS", "8")]))
                .unwrap_err();
        assert!(e.to_string().contains("topics.sessions.partitions"), "{e}");
        let e = load_from_env::<Settings>(None, &[], env(&[("AUDIT__LOG__COLOUR", "red")]))
            .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = load_from_env::<Settings>(
            None,
            &[],
            env(&[("AUDIT__TOPICS__RULES__NAME", "audit.raw")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("topics.rules.name"), "{e}");
    }

    #[test]
    fn other_binaries_sections_are_left_alone_and_own_typos_refused() {
        let s: Settings = load_from_env(
            None,
            &[],
            env(&[
                ("AUDIT__CLICKHOUSE__URL", "http://ch:8123"),
                ("AUDIT__HTTP__LISTEN", "0.0.0.0:1"),
                ("AUDIT__KAFKA__BROKERS", "k:9092"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kafka.brokers, "k:9092");
        let e = load_from_env::<Settings>(None, &[], env(&[("AUDIT__KAFKA__BROKRES", "k:1")]))
            .unwrap_err();
        assert!(e.to_string().contains("brokres"), "{e}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let e =
            load_from_env::<Settings>(Some(Path::new("/nonexistent/audit.toml")), &[], env(&[]))
                .unwrap_err();
        assert!(e.to_string().contains("audit.toml"), "{e}");
    }
}
