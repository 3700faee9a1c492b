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
    /// Browser tokens: what lets a logged-in user's browser post CLIENT events.
    pub browser: BrowserConfig,
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
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is believed. An event's
    /// `ingest.peer_ip` is the connection's peer, or, when that is a trusted proxy, the last
    /// address in `X-Forwarded-For` that is not one. Empty: the header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
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
            trusted_proxies: Vec::new(),
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
    /// When set, every event sent with this token is of this tenant: an event naming another
    /// tenant is refused (422), one naming none gets this one.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// Short-lived tokens the platform's server signs for a logged-in user, so that user's browser
/// can post CLIENT events without ever holding a service token. See README, "Browser logging".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrowserConfig {
    /// The service name events sent with a browser token are published under.
    pub service: String,
    /// The `aud` claim a token must carry, so a token minted for another API is refused here.
    pub audience: String,
    /// Origins (`https://app.example.com`) whose pages may post; CORS answers for these only.
    /// Empty: no browser may post (no CORS headers at all).
    pub origins: Vec<String>,
    /// Longest lifetime (`exp` - `iat`, and `exp` - now) a token may have, in seconds.
    pub max_ttl_s: u64,
    /// Clock skew allowed when checking `exp` and `iat`, in seconds.
    pub leeway_s: u64,
    /// How long a browser may cache a CORS preflight answer, in seconds.
    pub preflight_max_age_s: u64,
    /// Signing keys, chosen by the token's `kid`. Rotate by adding the new key, minting with
    /// it, and removing the old one after `max_ttl_s`.
    pub keys: Vec<BrowserKeyConfig>,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        Self {
            service: "web".to_string(),
            audience: "audit-ingest".to_string(),
            origins: Vec::new(),
            max_ttl_s: 3_600,
            leeway_s: 30,
            preflight_max_age_s: 600,
            keys: Vec::new(),
        }
    }
}

/// One browser-token signing key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserKeyConfig {
    /// The `kid` header of tokens signed with this key.
    pub id: String,
    /// `HS256` (shared secret) or `EdDSA` (Ed25519: the platform holds the private key).
    pub algorithm: BrowserKeyAlgorithm,
    /// HS256: the shared secret, at least 32 bytes.
    #[serde(default)]
    pub secret: Option<String>,
    /// EdDSA: the public key, PEM (`-----BEGIN PUBLIC KEY-----`).
    #[serde(default)]
    pub public_key_pem: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrowserKeyAlgorithm {
    HS256,
    EdDSA,
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
    /// Given the site's `logs` folder: how often `nodes/` is listed for node audit logs, in
    /// milliseconds.
    pub node_scan_ms: u64,
    /// A node audit log that has not grown for this many milliseconds is finished: its last
    /// line is taken even without a newline, and it is no longer read unless it grows.
    pub node_idle_ms: u64,
    /// How long one attempt at finding which lines of a batch in flight reached the raw topic
    /// (after a crash or a broker outage) reads before it saves how far it got and starts a new
    /// attempt from there; no attempt starts over from the batch's own marks.
    pub recovery_budget_ms: u64,
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
            node_scan_ms: 1_000,
            node_idle_ms: 30_000,
            recovery_budget_ms: 60_000,
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
        for (i, t) in self.tokens.iter().enumerate() {
            if t.tenant.as_deref().is_some_and(|x| x.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    format!("tokens[{i}].tenant"),
                    "must not be empty when set",
                ));
            }
        }
        self.browser.validate()?;
        if self.tail.batch_lines == 0 {
            return Err(ConfigError::invalid("tail.batch_lines", "must be positive"));
        }
        if self.tail.node_scan_ms == 0 {
            return Err(ConfigError::invalid(
                "tail.node_scan_ms",
                "must be positive",
            ));
        }
        if self.tail.poll_ms == 0 {
            return Err(ConfigError::invalid("tail.poll_ms", "must be positive"));
        }
        Ok(())
    }
}

impl Validate for BrowserConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.service.trim().is_empty() {
            return Err(ConfigError::invalid("browser.service", "must not be empty"));
        }
        if self.audience.trim().is_empty() {
            return Err(ConfigError::invalid(
                "browser.audience",
                "must not be empty",
            ));
        }
        if self.max_ttl_s == 0 {
            return Err(ConfigError::invalid(
                "browser.max_ttl_s",
                "must be positive",
            ));
        }
        for (i, origin) in self.origins.iter().enumerate() {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin != "*"
                && axum::http::HeaderValue::from_str(origin).is_ok();
            if !ok {
                return Err(ConfigError::invalid(
                    format!("browser.origins[{i}]"),
                    format!(
                        "{origin:?} is not an origin: scheme://host[:port], no path, no wildcard"
                    ),
                ));
            }
        }
        if !self.origins.is_empty() && self.keys.is_empty() {
            return Err(ConfigError::invalid(
                "browser.keys",
                "browser.origins is set but no key can verify a browser token",
            ));
        }
        for (i, key) in self.keys.iter().enumerate() {
            if key.id.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("browser.keys[{i}].id"),
                    "must not be empty",
                ));
            }
            if self.keys[..i].iter().any(|k| k.id == key.id) {
                return Err(ConfigError::invalid(
                    format!("browser.keys[{i}].id"),
                    format!("{:?} is used by an earlier key", key.id),
                ));
            }
            crate::browser::decoding_key(key)
                .map_err(|reason| ConfigError::invalid(format!("browser.keys[{i}]"), reason))?;
        }
        Ok(())
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        config::load(file, &["redaction.keys", "redaction.keep"])
    }
}
