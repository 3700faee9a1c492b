//! `audit-producer`'s settings.

use audit_runtime::config::{self, ConfigError, Validate};
use audit_runtime::{KafkaConfig, LogConfig, TopicsConfig};
use audit_schemas::redaction::RedactionSettings;
use audit_schemas::Source;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub redaction: RedactionSettings,
    pub tail: TailConfig,
    /// API tokens; each is bound to one service and the sources it may claim.
    pub tokens: Vec<TokenConfig>,
}

/// The ingest API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the ingest API, which also serves /metrics and /healthz.
    pub listen: SocketAddr,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most events in one request; more get 413.
    pub max_events: usize,
    /// Events allowed in the producer's queue before requests get 503 with Retry-After instead
    /// of growing memory.
    pub max_in_flight: usize,
    /// Requests handled at once; more get 503 with Retry-After at once instead of queueing.
    pub max_in_flight_requests: usize,
    /// Connections open at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A request body must arrive within this many milliseconds, else 408.
    pub body_timeout_ms: u64,
    /// Most event errors a 422 lists (it also says how many there were).
    pub max_errors_listed: usize,
    /// Accept requests without a token. Only for local development.
    pub allow_anonymous: bool,
    /// The service name given to anonymous events that name none.
    pub anonymous_service: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            max_events: 1_000,
            max_in_flight: 50_000,
            max_in_flight_requests: 256,
            max_connections: 1_024,
            body_timeout_ms: 10_000,
            max_errors_listed: 100,
            allow_anonymous: false,
            anonymous_service: "anonymous".to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The bearer token. Keep the settings file readable by the service only.
    pub token: String,
    /// Every event sent with this token is from this service.
    pub service: String,
    /// The sources events sent with this token may claim; when only one, it is the default.
    #[serde(default = "server_only")]
    pub sources: Vec<Source>,
    /// What the token may do: `events` (post events; the default) and `directory` (write
    /// sessions, users and groups). A platform's login service typically holds both.
    #[serde(default = "events_only")]
    pub scopes: Vec<Scope>,
}

fn server_only() -> Vec<Source> {
    vec![Source::Server]
}

fn events_only() -> Vec<Scope> {
    vec![Scope::Events]
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `POST /v1/events`.
    Events,
    /// `PUT`/`DELETE /v1/directory/{kind}/{id}` and `POST /v1/directory`.
    Directory,
}

/// The audit-log tailer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailConfig {
    /// The service name the log's events are published under.
    pub service: String,
    /// Where the read position is kept; default: `<PATH>.position` beside the log.
    pub position_file: Option<PathBuf>,
    /// How often to look for new lines and rotation, in milliseconds.
    pub poll_ms: u64,
    /// Most lines published (and acknowledged) before the position is saved.
    pub batch_lines: usize,
    /// A renamed (rotated) file is read until it has not grown for this many milliseconds, so
    /// lines the writer appends just after the rename are not lost.
    pub rotation_grace_ms: u64,
    /// On a first start (no position file), read the rotated files beside the log (oldest
    /// first) before the live one.
    pub backfill: bool,
}

impl Default for TailConfig {
    fn default() -> Self {
        Self {
            service: "data360-analyze".to_string(),
            position_file: None,
            poll_ms: 250,
            batch_lines: 500,
            rotation_grace_ms: 1_000,
            backfill: false,
        }
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.topics.validate()?;
        if self.http.max_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be positive",
            ));
        }
        if self.http.max_events == 0 {
            return Err(ConfigError::invalid("http.max_events", "must be positive"));
        }
        for (setting, value) in [
            (
                "http.max_in_flight_requests",
                self.http.max_in_flight_requests as u64,
            ),
            ("http.max_connections", self.http.max_connections as u64),
            ("http.body_timeout_ms", self.http.body_timeout_ms),
            ("http.max_errors_listed", self.http.max_errors_listed as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(setting, "must be positive"));
            }
        }
        if self.http.max_in_flight < self.http.max_events {
            return Err(ConfigError::invalid(
                "http.max_in_flight",
                "must be at least http.max_events, or no full request could ever be accepted",
            ));
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.len() < 16 {
                return Err(ConfigError::invalid(
                    format!("tokens[{i}].token"),
                    "must be at least 16 characters",
                ));
            }
            if t.service.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("tokens[{i}].service"),
                    "must not be empty",
                ));
            }
            if t.sources.is_empty() {
                return Err(ConfigError::invalid(
                    format!("tokens[{i}].sources"),
                    "must name CLIENT, SERVER or both",
                ));
            }
            if t.scopes.is_empty() {
                return Err(ConfigError::invalid(
                    format!("tokens[{i}].scopes"),
                    "must name events, directory or both",
                ));
            }
        }
        if self.tail.batch_lines == 0 {
            return Err(ConfigError::invalid("tail.batch_lines", "must be positive"));
        }
        if self.tail.poll_ms == 0 {
            return Err(ConfigError::invalid("tail.poll_ms", "must be positive"));
        }
        Ok(())
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        config::load(file, &["redaction.keys", "redaction.keep"])
    }
}
