//! One enriched event -> one `events` row (pure), and the resume rule that makes inserts
//! effectively-once.

use audit_schemas::chain::{self, ChainLink};
use audit_schemas::{
    ClientInfo, Credential, EnrichedAuditEvent, EntityRef, EntityRole, ErrorInfo, EventType,
    IngestContext, RawAuditEvent, Source, Timestamp,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// A row of `<db>.events`; field names are the column names.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct EventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    #[serde(with = "clickhouse::serde::time::datetime64::micros")]
    pub timestamp: OffsetDateTime,
    pub event_type: String,
    pub source: String,
    pub service: String,
    pub session_id: Option<String>,
    pub claimed_user_id: Option<String>,
    pub username: Option<String>,
    pub tenant: Option<String>,
    pub success: bool,
    pub message: Option<String>,
    pub entities: Vec<(String, String, Option<String>)>,
    pub params: Vec<(String, String)>,
    pub response: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub error_stack_trace: Option<String>,
    pub client_ip: Option<String>,
    pub client_user_agent: Option<String>,
    pub user_id: Option<String>,
    pub user_login: Option<String>,
    pub user_name: Option<String>,
    pub group_ids: Vec<String>,
    pub group_names: Vec<String>,
    #[serde(with = "clickhouse::serde::time::datetime64::micros::option")]
    pub session_started_at: Option<OffsetDateTime>,
    pub session_ip: Option<String>,
    pub enrichment: String,
    pub claimed_user_mismatch: bool,
    #[serde(with = "clickhouse::serde::time::datetime64::micros")]
    pub received_at: OffsetDateTime,
    #[serde(with = "clickhouse::serde::time::datetime64::micros")]
    pub enriched_at: OffsetDateTime,
    pub raw_partition: i32,
    pub raw_offset: i64,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub event_time_check: String,
    pub error_fingerprint: Option<String>,
    pub credential: String,
    pub credential_key_id: Option<String>,
    pub peer_ip: Option<String>,
    pub overridden_claims: Vec<(String, String)>,
    /// The event's link in its raw partition's hash chain; '' and -1 without one.
    pub chain_epoch: String,
    pub chain_seq: i64,
    pub chain_prev: String,
    pub chain_hash: String,
    /// Hex salt of the link's v2 content and that content itself (docs/proof-format.md): what
    /// the link's Merkle leaf, which checkpoints sign, is made from; '' for v1-only links.
    pub chain_salt: String,
    pub chain_content: String,
    /// Each entity's role (`entities[i]` is `entity_roles[i]`); rows from before roles have none,
    /// which reads as all `TARGET`.
    pub entity_roles: Vec<String>,
    /// The UTC offset the source wrote the time with, in minutes.
    pub utc_offset_minutes: Option<i32>,
    /// The catalog type the event's type means, with its entity kind and action; '' for none.
    pub catalog_type: String,
    pub catalog_kind: String,
    pub catalog_action: String,
    /// The person the event is about when the logged user is someone else (a login's system
    /// user): the first `SUBJECT` entity.
    pub subject_id: Option<String>,
    pub subject_name: Option<String>,
    /// Who acted: the `ACTOR` entity (a schedule that started a run), else the user.
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub actor_name: Option<String>,
}

/// The columns of `events` that hold a person's data: each is a salted commitment in the
/// signed content (`chain::content::ERASABLE`, and the columns derived from those), so
/// `auditctl erase` can blank them, with the salt, and every proof still holds. All Nullable.
pub const ERASABLE_COLUMNS: &[&str] = &[
    "claimed_user_id",
    "username",
    "client_ip",
    "client_user_agent",
    "user_id",
    "user_login",
    "user_name",
    "session_ip",
    "peer_ip",
    "actor_id",
    "actor_name",
];

impl EventRow {
    /// The [`ERASABLE_COLUMNS`], in that order.
    pub fn erasable(&self) -> [&Option<String>; 11] {
        [
            &self.claimed_user_id,
            &self.username,
            &self.client_ip,
            &self.client_user_agent,
            &self.user_id,
            &self.user_login,
            &self.user_name,
            &self.session_ip,
            &self.peer_ip,
            &self.actor_id,
            &self.actor_name,
        ]
    }

    /// The [`ERASABLE_COLUMNS`], in that order, to read or blank in place.
    pub fn erasable_mut(&mut self) -> [&mut Option<String>; 11] {
        [
            &mut self.claimed_user_id,
            &mut self.username,
            &mut self.client_ip,
            &mut self.client_user_agent,
            &mut self.user_id,
            &mut self.user_login,
            &mut self.user_name,
            &mut self.session_ip,
            &mut self.peer_ip,
            &mut self.actor_id,
            &mut self.actor_name,
        ]
    }
}

/// Where a row was read from: its identity for effectively-once inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub partition: i32,
    pub offset: i64,
}

/// DateTime64 holds years 1900-2299; a time outside (the ingest API refuses one, a producer
/// writing to Kafka directly may not) is clamped to that range so the event is still stored
/// rather than refused.
fn datetime(t: Timestamp) -> OffsetDateTime {
    let range = audit_schemas::ingest::STORABLE_MICROS;
    Timestamp::from_micros(t.as_micros().clamp(*range.start(), *range.end())).to_datetime()
}

pub fn row(e: EnrichedAuditEvent, topic: &str, origin: Origin) -> EventRow {
    let (chain_salt, chain_content) = v2_content(&e);
    let raw = e.event;
    let chain = e.chain.unwrap_or(ChainLink {
        epoch: String::new(),
        seq: -1,
        prev: String::new(),
        hash: String::new(),
        salt: None,
    });
    let error = raw.error.unwrap_or_default();
    let client = raw.client.unwrap_or_default();
    let (credential, credential_key_id, peer_ip, overridden_claims) = match raw.ingest {
        Some(i) => (
            i.credential.as_str().to_string(),
            i.key_id,
            i.peer_ip,
            i.overridden.into_iter().collect(),
        ),
        None => (String::new(), None, None, Vec::new()),
    };
    let (user_id, user_login, user_name) = match e.user {
        Some(u) => (Some(u.id), Some(u.login), u.name),
        None => (None, None, None),
    };
    let (group_ids, group_names) = e.groups.into_iter().map(|g| (g.id, g.name)).unzip();
    let with_role = |role: EntityRole| raw.entities.iter().find(|x| x.role == role);
    let subject = with_role(EntityRole::Subject);
    let (subject_id, subject_name) = (
        subject.map(|x| x.id.clone()),
        subject.and_then(|x| x.name.clone()),
    );
    let (actor_type, actor_id, actor_name) = match with_role(EntityRole::Actor) {
        Some(a) => (a.kind.clone(), Some(a.id.clone()), a.name.clone()),
        None => (
            "user".to_string(),
            user_id.clone().or_else(|| raw.user_id.clone()),
            user_login.clone().or_else(|| raw.username.clone()),
        ),
    };
    let (catalog_type, catalog_kind, catalog_action) = match e.catalog {
        Some(c) => (
            c.event_type.to_string(),
            c.kind.unwrap_or_default(),
            c.action,
        ),
        None => Default::default(),
    };
    let entity_roles = raw
        .entities
        .iter()
        .map(|x| x.role.as_str().to_string())
        .collect();
    EventRow {
        event_id: raw.event_id,
        timestamp: datetime(raw.timestamp),
        event_type: raw.event_type.to_string(),
        source: raw.source.as_str().to_string(),
        service: raw.service,
        session_id: raw.session_id,
        claimed_user_id: raw.user_id,
        username: raw.username,
        tenant: raw.tenant,
        success: raw.success,
        message: raw.message,
        entities: raw
            .entities
            .into_iter()
            .map(|x| (x.kind, x.id, x.name))
            .collect(),
        entity_roles,
        utc_offset_minutes: raw.utc_offset_minutes,
        catalog_type,
        catalog_kind,
        catalog_action,
        subject_id,
        subject_name,
        actor_type,
        actor_id,
        actor_name,
        params: raw.params.into_iter().collect(),
        response: raw.response,
        error_code: error.code,
        error_message: error.message,
        error_stack_trace: error.stack_trace,
        client_ip: client.ip,
        client_user_agent: client.user_agent,
        user_id,
        user_login,
        user_name,
        group_ids,
        group_names,
        session_started_at: e.session.as_ref().map(|s| datetime(s.started_at)),
        session_ip: e.session.and_then(|s| s.ip),
        enrichment: e.enrichment.as_str().to_string(),
        claimed_user_mismatch: e.claimed_user_mismatch,
        received_at: datetime(e.pipeline.received_at),
        enriched_at: datetime(e.pipeline.enriched_at),
        raw_partition: e.pipeline.raw_partition,
        raw_offset: e.pipeline.raw_offset,
        source_topic: topic.to_string(),
        source_partition: origin.partition,
        source_offset: origin.offset,
        event_time_check: e.event_time.as_str().to_string(),
        error_fingerprint: error.fingerprint,
        credential,
        credential_key_id,
        peer_ip,
        overridden_claims,
        chain_epoch: chain.epoch,
        chain_seq: chain.seq,
        chain_prev: chain.prev,
        chain_hash: chain.hash,
        chain_salt,
        chain_content,
    }
}

/// The link's salt and the v2 content it commits to, recomputed from the typed event exactly
/// as the enricher made it; empty without a salted link.
fn v2_content(e: &EnrichedAuditEvent) -> (String, String) {
    let Some(salt_hex) = e.chain.as_ref().and_then(|c| c.salt.as_deref()) else {
        return (String::new(), String::new());
    };
    let Some(salt) = hex::decode(salt_hex)
        .ok()
        .and_then(|b| <chain::content::Salt>::try_from(b).ok())
    else {
        // Not a salt the enricher made: stored as given, so verify finds the link altered.
        return (salt_hex.to_string(), String::new());
    };
    let content = chain::content::content(e, &salt);
    (
        salt_hex.to_string(),
        String::from_utf8(content).unwrap_or_default(),
    )
}

/// The raw event a row holds, as the enricher published it: what the chain's content digest
/// is computed over (`audit_schemas::chain::canonical`). The inverse of [`row`] for the event.
pub fn raw_event(row: &EventRow) -> RawAuditEvent {
    let ingest = (!row.credential.is_empty()).then(|| IngestContext {
        credential: match row.credential.as_str() {
            "BROWSER_TOKEN" => Credential::BrowserToken,
            "ANONYMOUS" => Credential::Anonymous,
            _ => Credential::ServiceToken,
        },
        key_id: row.credential_key_id.clone(),
        peer_ip: row.peer_ip.clone(),
        overridden: row.overridden_claims.iter().cloned().collect(),
    });
    RawAuditEvent {
        event_id: row.event_id,
        timestamp: Timestamp::from_datetime(row.timestamp),
        event_type: EventType::new(row.event_type.clone())
            .unwrap_or_else(|_| audit_schemas::control::reserved_type("audit.invalid-type")),
        source: if row.source == "CLIENT" {
            Source::Client
        } else {
            Source::Server
        },
        service: row.service.clone(),
        session_id: row.session_id.clone(),
        user_id: row.claimed_user_id.clone(),
        username: row.username.clone(),
        tenant: row.tenant.clone(),
        success: row.success,
        message: row.message.clone(),
        entities: row
            .entities
            .iter()
            .enumerate()
            .map(|(i, (kind, id, name))| EntityRef {
                kind: kind.clone(),
                id: id.clone(),
                name: name.clone(),
                role: row
                    .entity_roles
                    .get(i)
                    .and_then(|r| EntityRole::parse(r))
                    .unwrap_or_default(),
            })
            .collect(),
        params: row.params.iter().cloned().collect(),
        response: row.response.clone(),
        error: Some(ErrorInfo {
            code: row.error_code.clone(),
            message: row.error_message.clone(),
            stack_trace: row.error_stack_trace.clone(),
            fingerprint: row.error_fingerprint.clone(),
        }),
        client: Some(ClientInfo {
            ip: row.client_ip.clone(),
            user_agent: row.client_user_agent.clone(),
        }),
        ingest,
        utc_offset_minutes: row.utc_offset_minutes,
    }
}

/// A row of `<db>.chain_skips`: a chain link whose event the sink did not insert because the
/// same event (same id, same content) was stored before.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct ChainSkip {
    pub raw_partition: i32,
    pub epoch: String,
    pub seq: i64,
    pub prev: String,
    pub hash: String,
    pub content_digest: String,
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    /// The skipped copy's canonical content (`chain::canonical_text`), so `verify` can see a
    /// sender's resend of an event id (another raw record) for what it is.
    pub content: String,
    /// The skipped copy's v2 content (its link's Merkle leaf is over it).
    pub chain_content: String,
}

impl ChainSkip {
    /// The skip of a row left out as a replay; `None` for a row without a chain link.
    pub fn of(row: &EventRow) -> Option<Self> {
        (row.chain_seq >= 0).then(|| Self {
            raw_partition: row.raw_partition,
            epoch: row.chain_epoch.clone(),
            seq: row.chain_seq,
            prev: row.chain_prev.clone(),
            hash: row.chain_hash.clone(),
            content_digest: content_digest(row),
            event_id: row.event_id,
            content: chain::canonical_text(&chain::canonical(
                &raw_event(row),
                row.raw_partition,
                row.raw_offset,
            )),
            chain_content: row.chain_content.clone(),
        })
    }
}

/// The SHA-256 (hex) of a row's canonical content: what its chain link must have been made from.
pub fn content_digest(row: &EventRow) -> String {
    hex::encode(chain::event_digest(
        &raw_event(row),
        row.raw_partition,
        row.raw_offset,
    ))
}

/// The month partition of the events table a row lands in (`toYYYYMM(timestamp)`).
pub fn month(row: &EventRow) -> u32 {
    row.timestamp.year() as u32 * 100 + row.timestamp.month() as u32
}

/// What the table holds at a row's topic partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Nothing: insert it.
    No,
    /// This very event: a restart, a rebalance or a retried batch read it again; skip it.
    Yes,
    /// Another event: the topic was deleted and re-created, so offsets started again. The row
    /// is new and is inserted; offsets alone never make it "already stored".
    OffsetReused,
}

/// Effectively-once: a row is already stored iff the table holds the same event id at the same
/// topic partition and offset. `stored` maps (partition, offset) to the event id stored there.
pub fn already_stored(row: &EventRow, stored: &HashMap<(i32, i64), Uuid>) -> Stored {
    match stored.get(&(row.source_partition, row.source_offset)) {
        None => Stored::No,
        Some(id) if *id == row.event_id => Stored::Yes,
        Some(_) => Stored::OffsetReused,
    }
}

/// The deduplication token of one insert: topic partition, month, offset range and a digest of
/// the event ids, so a retry of the same insert is dropped by the server while the same offsets
/// of a re-created topic (other events) are not.
pub fn dedup_token(rows: &[EventRow]) -> String {
    use sha2::{Digest, Sha256};
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return String::new();
    };
    let mut ids = Sha256::new();
    for r in rows {
        ids.update(r.event_id.as_bytes());
    }
    let digest = ids.finalize();
    format!(
        "{}:{}:{}:{}:{}:{}",
        first.source_topic,
        first.source_partition,
        month(first),
        first.source_offset,
        last.source_offset,
        digest[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Groups rows into the inserts described at [`already_stored`], each in offset order.
pub fn insert_groups(rows: Vec<EventRow>) -> Vec<((i32, u32), Vec<EventRow>)> {
    let mut groups: std::collections::BTreeMap<(i32, u32), Vec<EventRow>> = Default::default();
    for r in rows {
        groups
            .entry((r.source_partition, month(&r)))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by_key(|r| r.source_offset);
            (k, v)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use audit_schemas::*;

    /// A full event (every optional field set) at `ts`, with a fresh id.
    pub(crate) fn event(ts: i64) -> EnrichedAuditEvent {
        EnrichedAuditEvent {
            event: RawAuditEvent {
                event_id: Uuid::new_v4(),
                timestamp: Timestamp::from_micros(ts),
                event_type: EventType::new("query-created").unwrap(),
                source: Source::Client,
                service: "web".into(),
                session_id: Some("s".into()),
                user_id: Some("claimed".into()),
                username: None,
                tenant: None,
                success: false,
                message: None,
                entities: vec![EntityRef {
                    kind: "query".into(),
                    id: "q1".into(),
                    name: Some("Sales".into()),
                    role: Default::default(),
                }],
                params: [("a".to_string(), "1".to_string())].into(),
                response: None,
                error: Some(ErrorInfo {
                    code: Some("E".into()),
                    message: None,
                    stack_trace: None,
                    fingerprint: None,
                }),
                client: None,
                ingest: None,
                utc_offset_minutes: None,
            },
            user: Some(ResolvedUser {
                id: "u".into(),
                login: "alice".into(),
                name: None,
            }),
            groups: vec![
                GroupRef {
                    id: "g1".into(),
                    name: "analysts".into(),
                },
                GroupRef {
                    id: "g0".into(),
                    name: "all".into(),
                },
            ],
            session: Some(SessionInfo {
                id: "s".into(),
                started_at: Timestamp::from_micros(5),
                ip: Some("::1".into()),
            }),
            enrichment: Enrichment::Enriched,
            claimed_user_mismatch: true,
            pipeline: PipelineMeta {
                received_at: Timestamp::from_micros(6),
                enriched_at: Timestamp::from_micros(7),
                raw_partition: 1,
                raw_offset: 2,
            },
            event_time: Default::default(),
            chain: None,
            catalog: None,
        }
    }

    #[test]
    fn a_row_gives_back_the_content_its_chain_link_was_made_from() {
        let mut e = event(1_700_000_000_123_456);
        e.event.ingest = Some(IngestContext {
            credential: Credential::BrowserToken,
            key_id: Some("k1".into()),
            peer_ip: Some("10.0.0.9".into()),
            overridden: [("user_id".to_string(), "mallory".to_string())].into(),
        });
        e.event.client = Some(ClientInfo {
            ip: Some("1.2.3.4".into()),
            user_agent: None,
        });
        e.event
            .params
            .insert("q".into(), "{\"rows\": [1, 2.5, null]}".into());
        e.event.utc_offset_minutes = Some(-420);
        e.event.entities.push(EntityRef {
            role: EntityRole::Subject,
            ..EntityRef::target("user", "User1234", Some("User1234".into()))
        });
        let want = chain::canonical(&e.event, 1, 2);
        let r = row(
            e,
            "t",
            Origin {
                partition: 0,
                offset: 0,
            },
        );
        assert_eq!(
            chain::canonical(&raw_event(&r), r.raw_partition, r.raw_offset),
            want
        );
        assert_eq!(r.chain_seq, -1, "no link: -1");
        assert_eq!(r.entity_roles, ["TARGET", "SUBJECT"]);
        assert_eq!(
            (r.subject_id.as_deref(), r.subject_name.as_deref()),
            (Some("User1234"), Some("User1234"))
        );
        let mut altered = r.clone();
        altered.message = Some("edited".into());
        assert_ne!(content_digest(&altered), content_digest(&r));
    }

    #[test]
    fn flattens_every_field() {
        let r = row(
            event(1_700_000_000_000_000),
            "audit.enriched",
            Origin {
                partition: 3,
                offset: 9,
            },
        );
        assert_eq!(r.timestamp.unix_timestamp(), 1_700_000_000);
        assert_eq!(
            (
                r.claimed_user_id.as_deref(),
                r.user_id.as_deref(),
                r.user_login.as_deref()
            ),
            (Some("claimed"), Some("u"), Some("alice"))
        );
        assert_eq!(r.group_names, vec!["analysts", "all"]);
        assert_eq!(
            r.entities,
            vec![(
                "query".to_string(),
                "q1".to_string(),
                Some("Sales".to_string())
            )]
        );
        assert_eq!(r.error_code.as_deref(), Some("E"));
        assert_eq!(
            (r.source_partition, r.source_offset, r.raw_offset),
            (3, 9, 2)
        );
        assert_eq!(r.session_ip.as_deref(), Some("::1"));
        assert_eq!(month(&r), 202311);
    }

    #[test]
    fn resume_skips_exactly_what_is_stored() {
        let mk = |partition, offset, ts| row(event(ts), "t", Origin { partition, offset });
        let nov = 1_700_000_000_000_000;
        let dec = nov + 30 * 86_400_000_000;
        let rows = vec![
            mk(0, 5, dec),
            mk(0, 1, nov),
            mk(0, 3, nov),
            mk(1, 2, nov),
            mk(0, 4, dec),
        ];
        let groups = insert_groups(rows);
        let keys: Vec<_> = groups
            .iter()
            .map(|(k, v)| (*k, v.iter().map(|r| r.source_offset).collect::<Vec<_>>()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ((0, 202311), vec![1, 3]),
                ((0, 202312), vec![4, 5]),
                ((1, 202311), vec![2])
            ]
        );
        let stored_row = mk(0, 3, nov);
        let stored = HashMap::from([((0, 3), stored_row.event_id)]);
        assert_eq!(already_stored(&stored_row, &stored), Stored::Yes);
        assert_eq!(already_stored(&mk(0, 4, dec), &stored), Stored::No);
        assert_eq!(
            already_stored(&mk(0, 3, nov), &stored),
            Stored::OffsetReused,
            "another event at the same offset: the topic was re-created"
        );
        let a = vec![mk(0, 1, nov), mk(0, 2, nov)];
        let mut b = a.clone();
        assert_eq!(dedup_token(&a), dedup_token(&b));
        b[1].event_id = Uuid::new_v4();
        assert_ne!(dedup_token(&a), dedup_token(&b));
    }

    #[test]
    fn absurd_times_are_clamped_not_refused() {
        let r = row(
            event(i64::MAX),
            "t",
            Origin {
                partition: 0,
                offset: 0,
            },
        );
        assert_eq!(r.timestamp.year(), 2299);
    }

    /// The row a verifier rebuilds from a signed content holds a commitment exactly in the
    /// erasable columns, for an event with every personal value set.
    #[test]
    fn the_erasable_columns_are_those_the_content_commits() {
        let mut e = event(1_700_000_000_000_000);
        e.event.username = Some("alice".into());
        e.event.client = Some(ClientInfo {
            ip: Some("10.0.0.1".into()),
            user_agent: Some("curl".into()),
        });
        e.event.ingest = Some(IngestContext {
            credential: Credential::ServiceToken,
            key_id: None,
            peer_ip: Some("10.0.0.2".into()),
            overridden: Default::default(),
        });
        e.user = Some(ResolvedUser {
            id: "u".into(),
            login: "alice".into(),
            name: Some("Alice".into()),
        });
        e.session = Some(SessionInfo {
            id: "s".into(),
            started_at: Timestamp::from_micros(1),
            ip: Some("10.0.0.3".into()),
        });
        let salt = [9u8; 32];
        let signed = chain::content::parse(&chain::content::content(&e, &salt)).unwrap();
        let rebuilt = row(
            signed,
            "t",
            Origin {
                partition: 0,
                offset: 0,
            },
        );
        let serde_json::Value::Object(columns) = serde_json::to_value(&rebuilt).unwrap() else {
            panic!("a row is an object");
        };
        let committed: Vec<&str> = columns
            .iter()
            .filter(|(_, v)| {
                v.as_str()
                    .is_some_and(|s| s.starts_with(chain::content::COMMITMENT_PREFIX))
            })
            .map(|(k, _)| k.as_str())
            .collect();
        // erasable_mut's fields are the named columns, in order.
        let mut marked = rebuilt.clone();
        for (i, v) in marked.erasable_mut().into_iter().enumerate() {
            *v = Some(format!("marked-{i}"));
        }
        let serde_json::Value::Object(m) = serde_json::to_value(&marked).unwrap() else {
            panic!("a row is an object");
        };
        for (i, c) in ERASABLE_COLUMNS.iter().enumerate() {
            assert_eq!(m[*c], serde_json::json!(format!("marked-{i}")), "{c}");
        }
        let mut want: Vec<&str> = ERASABLE_COLUMNS.to_vec();
        want.sort();
        let mut got = committed.clone();
        got.sort();
        assert_eq!(got, want);
    }
}
