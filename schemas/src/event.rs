//! Audit events as they travel through `audit.raw` and `audit.enriched`.
//!
//! Field names and order mirror `schemas/avro/*.avsc`; serde is the bridge the Avro codec uses,
//! so renaming a field here without the schema fails the codec tests.

use crate::{EventType, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Who emitted an event. CLIENT events (a browser) are untrusted: the enricher takes their user
/// from the session, never from the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Source {
    Client,
    Server,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "CLIENT",
            Source::Server => "SERVER",
        }
    }
}

/// An entity an event touched; every entity has an activity history downstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntityRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub name: Option<String>,
    /// What the entity is to the event; events from before roles existed read as `TARGET`.
    #[serde(default)]
    pub role: EntityRole,
}

impl EntityRef {
    /// A target entity: what the event acted on.
    pub fn target(kind: impl Into<String>, id: impl Into<String>, name: Option<String>) -> Self {
        Self {
            kind: kind.into(),
            id: id.into(),
            name,
            role: EntityRole::Target,
        }
    }
}

/// What an entity is to its event. An entity's activity history shows every event that names it
/// in any role: a folder's history holds what happened inside it (`CONTAINER`), a person's the
/// logins they attempted (`SUBJECT`), a schedule's the runs it started (`ACTOR`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntityRole {
    /// What the event acted on (the last segment of a locator or resource path).
    #[default]
    Target,
    /// Holds a target: an earlier segment of its locator or path (tenant excepted).
    Container,
    /// The person the event is about when the logged user is someone else: who tried to log in
    /// (the log names the system user), whose password was stored.
    Subject,
    /// Who acted when it was not the logged user: the schedule that started a run.
    Actor,
    /// Tied to the target without being acted on: the data flow a schedule runs. Links let an
    /// entity's history include what was done through the entities linked to it.
    Linked,
}

impl EntityRole {
    pub const ALL: [EntityRole; 5] = [
        EntityRole::Target,
        EntityRole::Container,
        EntityRole::Subject,
        EntityRole::Actor,
        EntityRole::Linked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityRole::Target => "TARGET",
            EntityRole::Container => "CONTAINER",
            EntityRole::Subject => "SUBJECT",
            EntityRole::Actor => "ACTOR",
            EntityRole::Linked => "LINKED",
        }
    }

    /// The Avro enum index.
    pub fn index(self) -> i64 {
        self as i64
    }

    pub fn from_index(i: i64) -> Option<Self> {
        Self::ALL.get(usize::try_from(i).ok()?).copied()
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: Option<String>,
    pub message: Option<String>,
    pub stack_trace: Option<String>,
    /// Groups occurrences of one error (a hash of the stack's frames, set by the logger).
    #[serde(default)]
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// One audit event as its service emitted it (after validation and redaction at ingest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawAuditEvent {
    #[serde(with = "uuid_text")]
    pub event_id: Uuid,
    pub timestamp: Timestamp,
    pub event_type: EventType,
    pub source: Source,
    pub service: String,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub tenant: Option<String>,
    pub success: bool,
    pub message: Option<String>,
    pub entities: Vec<EntityRef>,
    /// Each value is JSON text, so any JSON a service sends survives unchanged.
    pub params: BTreeMap<String, String>,
    /// JSON text.
    pub response: Option<String>,
    pub error: Option<ErrorInfo>,
    pub client: Option<ClientInfo>,
    /// What the ingest API saw of the request; `None` for events that did not come through it.
    #[serde(default)]
    pub ingest: Option<IngestContext>,
    /// The UTC offset the event time was written with (`+01:00` -> 60), when the source wrote
    /// one: `timestamp` is UTC, this keeps the local time the log showed.
    #[serde(default)]
    pub utc_offset_minutes: Option<i32>,
}

/// What authenticated an ingest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Credential {
    /// A configured service token (`tokens[]`).
    ServiceToken,
    /// A short-lived token the platform minted for a logged-in browser user.
    BrowserToken,
    /// No token, where `http.allow_anonymous` allows it (development only).
    Anonymous,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::ServiceToken => "SERVICE_TOKEN",
            Credential::BrowserToken => "BROWSER_TOKEN",
            Credential::Anonymous => "ANONYMOUS",
        }
    }
}

/// The ingest API's own observations, kept apart from what the sender claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestContext {
    pub credential: Credential,
    /// The browser token's signing key id.
    pub key_id: Option<String>,
    /// The connection's peer, or the last address before a trusted proxy.
    pub peer_ip: Option<String>,
    /// Body fields the credential decided instead, with the value the body claimed.
    pub overridden: BTreeMap<String, String>,
}

impl RawAuditEvent {
    /// The Kafka key that keeps one session's events in order: session id, else user id, else
    /// event id.
    pub fn partition_key(&self) -> String {
        self.session_id
            .clone()
            .or_else(|| self.user_id.clone())
            .unwrap_or_else(|| self.event_id.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUser {
    pub id: String,
    pub login: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupRef {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub started_at: Timestamp,
    pub ip: Option<String>,
}

/// How far the directory join got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Enrichment {
    /// Session, user and groups resolved.
    Enriched,
    /// The event named a session the directory did not learn of within the wait.
    SessionUnknown,
    /// The event named no session.
    NoSession,
}

impl Enrichment {
    pub fn as_str(self) -> &'static str {
        match self {
            Enrichment::Enriched => "ENRICHED",
            Enrichment::SessionUnknown => "SESSION_UNKNOWN",
            Enrichment::NoSession => "NO_SESSION",
        }
    }
}

/// Where and when the pipeline handled the event; lets a sink resume or deduplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineMeta {
    pub received_at: Timestamp,
    pub enriched_at: Timestamp,
    pub raw_partition: i32,
    pub raw_offset: i64,
}

/// A raw event joined with its session, user and groups; what both sinks consume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichedAuditEvent {
    pub event: RawAuditEvent,
    pub user: Option<ResolvedUser>,
    pub groups: Vec<GroupRef>,
    pub session: Option<SessionInfo>,
    pub enrichment: Enrichment,
    pub claimed_user_mismatch: bool,
    pub pipeline: PipelineMeta,
    /// Whether the claimed event time is plausible next to `pipeline.received_at`.
    #[serde(default)]
    pub event_time: EventTimeCheck,
    /// The event's link in its raw partition's hash chain (see [`crate::chain`]).
    #[serde(default)]
    pub chain: Option<crate::chain::ChainLink>,
    /// The catalog type the event's type means ([`crate::vocabulary`]): the type itself when it
    /// is a catalog type, a server audit code's equivalent, or none.
    #[serde(default)]
    pub catalog: Option<CatalogMatch>,
}

/// A catalog type, with its entity kind and action, that an event's type maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CatalogMatch {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub kind: Option<String>,
    pub action: String,
}

/// The event time is the sender's claim; the enricher checks it against the time the pipeline
/// received the event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventTimeCheck {
    #[default]
    Plausible,
    /// Older than the limit before it was received.
    TooOld,
    /// Further ahead of its receipt than the limit.
    Ahead,
}

impl EventTimeCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            EventTimeCheck::Plausible => "PLAUSIBLE",
            EventTimeCheck::TooOld => "TOO_OLD",
            EventTimeCheck::Ahead => "AHEAD",
        }
    }

    /// `claimed` against `received`, with the allowed age and lead in microseconds.
    pub fn of(claimed: Timestamp, received: Timestamp, max_age_us: i64, max_lead_us: i64) -> Self {
        let (c, r) = (claimed.as_micros(), received.as_micros());
        if r.saturating_sub(c) > max_age_us {
            EventTimeCheck::TooOld
        } else if c.saturating_sub(r) > max_lead_us {
            EventTimeCheck::Ahead
        } else {
            EventTimeCheck::Plausible
        }
    }
}

/// UUIDs as their hyphenated text in every format: the Avro schema says `string`, and
/// `uuid`'s own serde impl switches to 16 raw bytes for serializers that are not
/// human-readable, which apache-avro's deserializer claims to be.
mod uuid_text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(id: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&id.hyphenated())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Uuid::parse_str(&text)
            .map_err(|e| D::Error::custom(format!("event_id {text:?} is not a UUID: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_times_are_checked_against_receipt() {
        let r = Timestamp::from_micros(1_000_000_000);
        let check = |c: i64| EventTimeCheck::of(Timestamp::from_micros(c), r, 100, 10);
        assert_eq!(check(1_000_000_000), EventTimeCheck::Plausible);
        assert_eq!(check(1_000_000_000 - 100), EventTimeCheck::Plausible);
        assert_eq!(check(1_000_000_000 - 101), EventTimeCheck::TooOld);
        assert_eq!(check(1_000_000_010), EventTimeCheck::Plausible);
        assert_eq!(check(1_000_000_011), EventTimeCheck::Ahead);
        assert_eq!(
            EventTimeCheck::of(Timestamp::from_micros(i64::MIN), r, 100, 10),
            EventTimeCheck::TooOld
        );
    }
}
