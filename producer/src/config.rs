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
    /// A second address serving only /metrics and /healthz, outside the ingest API's
    /// connection caps, for probes that must answer whatever senders do. Unset: none.
    pub ops_listen: Option<SocketAddr>,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most events in one request; more get 413.
    pub max_events: usize,
    /// Events allowed in the producer's queue before requests get 503 with Retry-After instead
    /// of growing memory.
    pub max_in_flight: usize,
    /// Requests handled at once; more get 503 with Retry-After at once instead of queueing.
    pub max_in_flight_requests: usize,
    /// Connections open at once. At the cap a new connection takes the slot of the one idle
    /// the longest; only when every connection is handling a request does it wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// Connections open at once from one address; past it a new one takes that address's
    /// longest-idle slot, or is closed when all of them are busy.
    pub max_connections_per_ip: usize,
    /// A request header must be complete within this many milliseconds of the connection
    /// going idle (slow-header clients are closed).
    pub header_read_timeout_ms: u64,
    /// A connection with no request being handled (before its first, or between keep-alive
    /// requests) is closed after this many milliseconds.
    pub idle_timeout_ms: u64,
    /// A request body must arrive within this many milliseconds, else 408.
    pub body_timeout_ms: u64,
    /// A request must be answered within this many milliseconds, body and the broker's
    /// acknowledgement included, else 503 with Retry-After (resend with the same event ids).
    pub request_timeout_ms: u64,
    /// Requests one credential (a service token, a browser token's user, or an anonymous
    /// sender's address) may have in flight; more get 429 with Retry-After.
    pub max_requests_per_caller: usize,
    /// Bytes one credential may have in flight: each request's body (its Content-Length, or
    /// `max_body_bytes` without one) plus 64 bytes for each JSON value it parses into; past it
    /// requests get 429 with Retry-After.
    pub max_bytes_per_caller: usize,
    /// Requests a browser token's user (or an anonymous sender's address) may have in
    /// flight; more get 429 with Retry-After. A page sends a few at a time.
    pub max_requests_per_browser: usize,
    /// Bytes, counted as for `max_bytes_per_caller`, a browser token's user (or an anonymous
    /// address) may have in flight.
    pub max_bytes_per_browser: usize,
    /// The same count for all requests in flight together; past it requests get 503 with
    /// Retry-After. This, not the connection count, is what bounds the API's memory.
    pub max_bytes_in_flight: usize,
    /// Deepest nesting of arrays and objects in a body; deeper gets 413.
    pub max_json_depth: usize,
    /// Most JSON values (every scalar, array and object) in one body; more gets 413.
    pub max_json_values: usize,
    /// Most keys in one JSON object (an event's params included); more gets 413.
    pub max_object_keys: usize,
    /// Most elements in one JSON array below the top level (entities, a param's list); more
    /// gets 413. The top level is bounded by `max_events`.
    pub max_array_elements: usize,
    /// Most event errors a 422 lists (it also says how many there were).
    pub max_errors_listed: usize,
    /// Accept requests without an `Authorization` header, as CLIENT events of
    /// `anonymous_service` (never SERVER, never directory writes). Only for local development:
    /// refused unless `listen` is a loopback address or `allow_anonymous_on_network` is set.
    pub allow_anonymous: bool,
    /// Let `allow_anonymous` serve a non-loopback `listen` address.
    pub allow_anonymous_on_network: bool,
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
            ops_listen: None,
            max_body_bytes: 1024 * 1024,
            max_events: 1_000,
            max_in_flight: 50_000,
            max_in_flight_requests: 256,
            max_connections: 1_024,
            max_connections_per_ip: 256,
            header_read_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            body_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            max_requests_per_caller: 16,
            max_bytes_per_caller: 16 * 1024 * 1024,
            max_requests_per_browser: 4,
            max_bytes_per_browser: 8 * 1024 * 1024,
            max_bytes_in_flight: 48 * 1024 * 1024,
            max_json_depth: 32,
            max_json_values: 100_000,
            max_object_keys: 256,
            max_array_elements: 1_000,
            max_errors_listed: 100,
            allow_anonymous: false,
            allow_anonymous_on_network: false,
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
    /// What the token may do: `events` (post events; the default), `sessions`, `users`,
    /// `groups` (directory writes of that kind, SCIM included), or `directory` for all three.
    /// A platform's login service typically holds `events` and `sessions`.
    #[serde(default = "events_only")]
    pub scopes: Vec<Scope>,
    /// When set, every event sent with this token is of this tenant: an event naming another
    /// tenant is refused (422), one naming none gets this one. The directory is shared by all
    /// tenants, so a tenant-bound token can write none of it (403).
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

/// What an API token may do. Directory writes are split by what they decide: a session binds
/// events to a person, while users and groups decide which rules apply to them, so a login
/// service that records sessions cannot move anyone into a group a rule drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `POST /v1/events`.
    Events,
    /// Directory writes of sessions (`/v1/directory/sessions/...`, bulk `session:` lines).
    Sessions,
    /// Directory writes of users, and SCIM `/Users`.
    Users,
    /// Directory writes of groups, and SCIM `/Groups`.
    Groups,
    /// Shorthand for `sessions`, `users` and `groups` together (an identity provider that
    /// also records logins); prefer naming the narrower scopes.
    Directory,
}

impl Scope {
    /// Whether holding `self` grants `wanted`.
    pub fn grants(self, wanted: Scope) -> bool {
        self == wanted
            || (self == Scope::Directory
                && matches!(wanted, Scope::Sessions | Scope::Users | Scope::Groups))
    }
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
            (
                "http.max_connections_per_ip",
                self.http.max_connections_per_ip as u64,
            ),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.idle_timeout_ms", self.http.idle_timeout_ms),
            ("http.body_timeout_ms", self.http.body_timeout_ms),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            (
                "http.max_requests_per_caller",
                self.http.max_requests_per_caller as u64,
            ),
            (
                "http.max_requests_per_browser",
                self.http.max_requests_per_browser as u64,
            ),
            ("http.max_json_depth", self.http.max_json_depth as u64),
            ("http.max_json_values", self.http.max_json_values as u64),
            ("http.max_object_keys", self.http.max_object_keys as u64),
            (
                "http.max_array_elements",
                self.http.max_array_elements as u64,
            ),
            ("http.max_errors_listed", self.http.max_errors_listed as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(setting, "must be positive"));
            }
        }
        let largest = self.http.max_body_bytes.saturating_add(
            self.http
                .max_json_values
                .saturating_mul(crate::quota::BYTES_PER_JSON_VALUE),
        );
        for (setting, value) in [
            ("http.max_bytes_per_caller", self.http.max_bytes_per_caller),
            (
                "http.max_bytes_per_browser",
                self.http.max_bytes_per_browser,
            ),
        ] {
            if value < largest {
                return Err(ConfigError::invalid(
                    setting,
                    format!("must be at least http.max_body_bytes + 64 x http.max_json_values ({largest}), or the largest request allowed could never be taken"),
                ));
            }
        }
        if self.http.max_bytes_in_flight < self.http.max_bytes_per_caller {
            return Err(ConfigError::invalid(
                "http.max_bytes_in_flight",
                "must be at least http.max_bytes_per_caller",
            ));
        }
        if self.http.allow_anonymous
            && !self.http.listen.ip().is_loopback()
            && !self.http.allow_anonymous_on_network
        {
            return Err(ConfigError::invalid(
                "http.allow_anonymous",
                format!(
                    "anonymous senders are only served on a loopback address, and http.listen is {}; set http.allow_anonymous_on_network = true to force it",
                    self.http.listen
                ),
            ));
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
                    "must name at least one of events, sessions, users, groups (directory = all three)",
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
