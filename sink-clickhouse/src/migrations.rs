//! Versioned, idempotent schema migrations, run at start.
//!
//! Each migration is DDL that is harmless to repeat (`IF NOT EXISTS`); applied versions are
//! recorded in `<db>.schema_migrations`, so a migration runs once per database and two sinks
//! starting together do no harm.

use clickhouse::Client;

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: &'static [&'static str],
}

/// The analytics schema. `{db}` is the configured database.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events table",
        statements: &[r"
CREATE TABLE IF NOT EXISTS {db}.events
(
    event_id              UUID,
    timestamp             DateTime64(6, 'UTC') COMMENT 'event time',
    event_type            LowCardinality(String),
    source                LowCardinality(String) COMMENT 'CLIENT or SERVER',
    service               LowCardinality(String),
    session_id            Nullable(String),
    claimed_user_id       Nullable(String) COMMENT 'user_id as the event claimed it; untrusted for CLIENT events',
    username              Nullable(String),
    tenant                LowCardinality(Nullable(String)),
    success               Bool,
    message               Nullable(String),
    entities              Array(Tuple(LowCardinality(String), String, Nullable(String))) COMMENT '(type, id, name)',
    params                Map(String, String) COMMENT 'values are JSON text',
    response              Nullable(String) COMMENT 'JSON text',
    error_code            Nullable(String),
    error_message         Nullable(String),
    error_stack_trace     Nullable(String),
    client_ip             Nullable(String),
    client_user_agent     Nullable(String),
    user_id               Nullable(String) COMMENT 'resolved by the enricher',
    user_login            Nullable(String),
    user_name             Nullable(String),
    group_ids             Array(String),
    group_names           Array(LowCardinality(String)),
    session_started_at    Nullable(DateTime64(6, 'UTC')),
    session_ip            Nullable(String),
    enrichment            LowCardinality(String),
    claimed_user_mismatch Bool,
    received_at           DateTime64(6, 'UTC'),
    enriched_at           DateTime64(6, 'UTC'),
    raw_partition         Int32,
    raw_offset            Int64,
    source_topic          LowCardinality(String) COMMENT 'the enriched topic the row was read from',
    source_partition      Int32,
    source_offset         Int64,
    inserted_at           DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_source_offset source_offset TYPE minmax GRANULARITY 1,
    INDEX idx_event_id event_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (event_type, timestamp, event_id)
SETTINGS non_replicated_deduplication_window = 10000
"],
    },
    Migration {
        version: 2,
        name: "entity activity",
        statements: &[
            r"
CREATE TABLE IF NOT EXISTS {db}.entity_activity
(
    entity_type LowCardinality(String),
    entity_id   String,
    entity_name Nullable(String),
    timestamp   DateTime64(6, 'UTC'),
    event_id    UUID,
    event_type  LowCardinality(String),
    user_id     Nullable(String),
    user_login  Nullable(String),
    session_id  Nullable(String),
    success     Bool,
    message     Nullable(String)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (entity_type, entity_id, timestamp, event_id)
",
            r"
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.entity_activity_mv TO {db}.entity_activity AS
SELECT
    entity.1 AS entity_type,
    entity.2 AS entity_id,
    entity.3 AS entity_name,
    timestamp, event_id, event_type, user_id, user_login, session_id, success, message
FROM {db}.events
ARRAY JOIN entities AS entity
",
        ],
    },
    Migration {
        version: 3,
        name: "user and session projections",
        statements: &[
            "ALTER TABLE {db}.events ADD PROJECTION IF NOT EXISTS by_user (SELECT * ORDER BY user_id, timestamp)",
            "ALTER TABLE {db}.events ADD PROJECTION IF NOT EXISTS by_session (SELECT * ORDER BY session_id, timestamp)",
            "ALTER TABLE {db}.events MATERIALIZE PROJECTION by_user",
            "ALTER TABLE {db}.events MATERIALIZE PROJECTION by_session",
        ],
    },
    Migration {
        version: 4,
        name: "event time check",
        statements: &[
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS event_time_check LowCardinality(String) DEFAULT 'PLAUSIBLE' COMMENT 'PLAUSIBLE, TOO_OLD or AHEAD: the claimed timestamp next to received_at'",
        ],
    },
    Migration {
        version: 5,
        name: "ingest context and error fingerprint",
        statements: &[
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS error_fingerprint Nullable(String) COMMENT 'groups occurrences of one error (hash of the stack frames)'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS credential LowCardinality(String) DEFAULT '' COMMENT 'SERVICE_TOKEN, BROWSER_TOKEN, ANONYMOUS; empty for events that did not come through the ingest API'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS credential_key_id LowCardinality(Nullable(String)) COMMENT 'the browser token signing key id'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS peer_ip Nullable(String) COMMENT 'the sender address as the ingest API saw it (through trusted proxies); client_ip is the sender claim'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS overridden_claims Map(String, String) COMMENT 'body fields the credential decided instead, with the value the body claimed'",
        ],
    },
    Migration {
        version: 6,
        name: "rule drop summaries",
        statements: &[
            r"
CREATE TABLE IF NOT EXISTS {db}.rule_drops
(
    minute            DateTime('UTC') COMMENT 'the minute of the dropped events'' time',
    rule              LowCardinality(String),
    event_type        LowCardinality(String) COMMENT 'the dropped events'' type',
    group_name        String COMMENT 'the group the rule matched on; empty when the rule names none',
    dropped           UInt64 COMMENT 'events this summary counts; a batch done twice is summed twice, see raw_offsets',
    first_event_time  DateTime64(6, 'UTC'),
    last_event_time   DateTime64(6, 'UTC'),
    raw_partition     Int32,
    raw_offsets       Array(Int64) COMMENT 'the raw records counted: what makes each dropped event count once',
    summary_id        UUID,
    inserted_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (minute, rule, event_type, group_name)
",
            r"
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rule_drops_from_events TO {db}.rule_drops AS
SELECT
    toStartOfMinute(parseDateTime64BestEffortOrZero(JSONExtractString(params['minute']), 6, 'UTC')) AS minute,
    JSONExtractString(params['rule']) AS rule,
    JSONExtractString(params['dropped_type']) AS event_type,
    JSONExtractString(params['group']) AS group_name,
    toUInt64OrZero(params['count']) AS dropped,
    parseDateTime64BestEffortOrZero(JSONExtractString(params['first_event_time']), 6, 'UTC') AS first_event_time,
    parseDateTime64BestEffortOrZero(JSONExtractString(params['last_event_time']), 6, 'UTC') AS last_event_time,
    toInt32OrZero(params['raw_partition']) AS raw_partition,
    JSONExtract(params['raw_offsets'], 'Array(Int64)') AS raw_offsets,
    e.event_id AS summary_id
FROM {db}.events AS e
-- Qualified: the alias event_type above would otherwise be what this compares.
WHERE e.event_type = 'audit.rule-drops'
",
        ],
    },
    Migration {
        version: 7,
        name: "hash chains, digests and skips",
        statements: &[
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS chain_epoch String DEFAULT '' COMMENT 'the hash chain (one per raw partition and enricher start) the event is a link of'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS chain_seq Int64 DEFAULT -1 COMMENT 'the link''s place in its chain; -1: not chained'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS chain_prev String DEFAULT '' COMMENT 'hex SHA-256 of the previous link'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS chain_hash String DEFAULT '' COMMENT 'hex SHA-256 of this link (chain, seq, prev, content)'",
            r"
CREATE TABLE IF NOT EXISTS {db}.chain_digests
(
    raw_partition Int32,
    epoch         String,
    seq           Int64 COMMENT 'the last link the digest covers',
    head          String COMMENT 'hex SHA-256 of that link',
    signed_at     DateTime64(6, 'UTC'),
    key_id        String,
    signature     String COMMENT 'base64 Ed25519 over the fields above',
    digest_id     UUID,
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (raw_partition, epoch, seq)
",
            r"
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.chain_digests_from_events TO {db}.chain_digests AS
SELECT
    toInt32OrZero(e.params['raw_partition']) AS raw_partition,
    JSONExtractString(e.params['epoch']) AS epoch,
    toInt64OrZero(e.params['seq']) AS seq,
    JSONExtractString(e.params['head']) AS head,
    fromUnixTimestamp64Micro(toInt64OrZero(e.params['signed_at']), 'UTC') AS signed_at,
    JSONExtractString(e.params['key_id']) AS key_id,
    JSONExtractString(e.params['signature']) AS signature,
    e.event_id AS digest_id
FROM {db}.events AS e
WHERE e.event_type = 'audit.chain-digest'
",
            r"
CREATE TABLE IF NOT EXISTS {db}.chain_skips
(
    raw_partition  Int32,
    epoch          String,
    seq            Int64,
    prev           String,
    hash           String,
    content_digest String COMMENT 'hex SHA-256 of the skipped copy''s content: a stored event with this id must have it',
    event_id       UUID,
    skipped_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (raw_partition, epoch, seq)
",
        ],
    },
    Migration {
        version: 8,
        name: "entity roles, links, subject and actor, catalog vocabulary, UTC offset",
        statements: &[
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS entity_roles Array(LowCardinality(String)) DEFAULT [] COMMENT 'role of each entity (TARGET, CONTAINER, SUBJECT, ACTOR, LINKED); none: all TARGET'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS utc_offset_minutes Nullable(Int32) COMMENT 'the UTC offset the source wrote the time with'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS catalog_type LowCardinality(String) DEFAULT '' COMMENT 'the catalog type the event type means (itself, or a server code''s equivalent); empty: none'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS catalog_kind LowCardinality(String) DEFAULT '' COMMENT 'the catalog type''s entity kind'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS catalog_action LowCardinality(String) DEFAULT '' COMMENT 'the catalog type''s action'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS subject_id Nullable(String) COMMENT 'the person the event is about when the logged user is someone else (a login''s system user)'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS subject_name Nullable(String)",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS actor_type LowCardinality(String) DEFAULT 'user' COMMENT 'who acted: user, or the entity kind of an ACTOR entity (scheduled-task)'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS actor_id Nullable(String)",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS actor_name Nullable(String)",
            "ALTER TABLE {db}.entity_activity ADD COLUMN IF NOT EXISTS role LowCardinality(String) DEFAULT 'TARGET' COMMENT 'what the entity is to the event'",
            "ALTER TABLE {db}.entity_activity ADD COLUMN IF NOT EXISTS catalog_type LowCardinality(String) DEFAULT ''",
            "DROP VIEW IF EXISTS {db}.entity_activity_mv",
            r"
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.entity_activity_mv TO {db}.entity_activity AS
SELECT
    entity.1 AS entity_type,
    entity.2 AS entity_id,
    entity.3 AS entity_name,
    role,
    timestamp, event_id, event_type, catalog_type, user_id, user_login, session_id, success, message
FROM {db}.events
ARRAY JOIN
    entities AS entity,
    arrayResize(entity_roles, length(entities), 'TARGET') AS role
",
            r"
CREATE TABLE IF NOT EXISTS {db}.entity_links
(
    linked_type LowCardinality(String) COMMENT 'the entity linked to (a data flow)',
    linked_id   String,
    entity_type LowCardinality(String) COMMENT 'the target tied to it (a schedule)',
    entity_id   String,
    timestamp   DateTime64(6, 'UTC'),
    event_id    UUID
)
ENGINE = ReplacingMergeTree
ORDER BY (linked_type, linked_id, entity_type, entity_id, event_id)
",
            r"
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.entity_links_mv TO {db}.entity_links AS
SELECT
    linked.1 AS linked_type,
    linked.2 AS linked_id,
    target.1 AS entity_type,
    target.2 AS entity_id,
    timestamp,
    event_id
FROM {db}.events
ARRAY JOIN arrayFilter((e, r) -> r = 'TARGET', entities, arrayResize(entity_roles, length(entities), 'TARGET')) AS target
ARRAY JOIN arrayFilter((e, r) -> r = 'LINKED', entities, entity_roles) AS linked
WHERE has(entity_roles, 'LINKED')
",
        ],
    },
    Migration {
        version: 9,
        name: "chain skips keep the skipped copy's content",
        statements: &[
            "ALTER TABLE {db}.chain_skips ADD COLUMN IF NOT EXISTS content String DEFAULT '' CODEC(ZSTD(3)) COMMENT 'the skipped copy''s canonical content (its SHA-256 is content_digest): shows a sender''s resend of an event id with other content for what it is'",
        ],
    },
    Migration {
        version: 10,
        name: "v2 link content and signed checkpoints",
        statements: &[
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS chain_salt String DEFAULT '' COMMENT 'hex salt of the commitments to the event''s personal data in its v2 content'",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS chain_content String DEFAULT '' CODEC(ZSTD(3)) COMMENT 'the v2 content (docs/proof-format.md) the link''s Merkle leaf is made from'",
            "ALTER TABLE {db}.chain_skips ADD COLUMN IF NOT EXISTS chain_content String DEFAULT '' CODEC(ZSTD(3)) COMMENT 'the skipped copy''s v2 content'",
            r"
CREATE TABLE IF NOT EXISTS {db}.chain_checkpoints
(
    raw_partition    Int32,
    epoch            String,
    tree_size        UInt64 COMMENT 'links 0..tree_size of the chain are under root',
    root             String COMMENT 'hex RFC 9162 Merkle root of their leaves',
    raw_offset_start Int64,
    raw_offset_end   Int64,
    prev             String COMMENT 'id (hex SHA-256 of the signed message) of the partition''s previous checkpoint',
    signed_at        DateTime64(6, 'UTC'),
    key_id           String,
    signature        String COMMENT 'base64 Ed25519 over the checkpoint message',
    event_id         UUID,
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (raw_partition, signed_at, epoch)
",
            r"
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.chain_checkpoints_from_events TO {db}.chain_checkpoints AS
SELECT
    toInt32OrZero(e.params['raw_partition']) AS raw_partition,
    JSONExtractString(e.params['epoch']) AS epoch,
    toUInt64OrZero(e.params['tree_size']) AS tree_size,
    JSONExtractString(e.params['root']) AS root,
    toInt64OrZero(e.params['raw_offset_start']) AS raw_offset_start,
    toInt64OrZero(e.params['raw_offset_end']) AS raw_offset_end,
    JSONExtractString(e.params['prev']) AS prev,
    fromUnixTimestamp64Micro(toInt64OrZero(e.params['signed_at']), 'UTC') AS signed_at,
    JSONExtractString(e.params['key_id']) AS key_id,
    JSONExtractString(e.params['signature']) AS signature,
    e.event_id AS event_id
FROM {db}.events AS e
WHERE e.event_type = 'audit.chain-checkpoint'
",
        ],
    },
    Migration {
        version: 11,
        name: "checkpoint frontiers and retention that verify can follow",
        statements: &[
            // Beside chain_checkpoints, not in it: that view keeps running untouched.
            r"
CREATE TABLE IF NOT EXISTS {db}.chain_frontiers
(
    raw_partition Int32,
    epoch         String,
    tree_size     UInt64,
    root          String COMMENT 'the checkpoint''s signed root, which the peaks must fold to',
    peaks         Array(String) COMMENT 'hex roots of the tree''s perfect subtrees, largest first: verify goes on from them past links that retention removed',
    event_id      UUID
)
ENGINE = ReplacingMergeTree
ORDER BY (raw_partition, epoch, tree_size, root)
",
            r"
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.chain_frontiers_from_events TO {db}.chain_frontiers AS
SELECT
    toInt32OrZero(e.params['raw_partition']) AS raw_partition,
    JSONExtractString(e.params['epoch']) AS epoch,
    toUInt64OrZero(e.params['tree_size']) AS tree_size,
    JSONExtractString(e.params['root']) AS root,
    JSONExtract(e.params['frontier'], 'Array(String)') AS peaks,
    e.event_id AS event_id
FROM {db}.events AS e
WHERE e.event_type = 'audit.chain-checkpoint' AND mapContains(e.params, 'frontier')
",
            // When each derived row was made (its event's enrichment, plus the sink's lag):
            // retention counts from it, so a derived row outlives its event only briefly.
            "ALTER TABLE {db}.entity_activity ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was derived; retention counts from it'",
            "ALTER TABLE {db}.entity_links ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was derived; retention counts from it'",
            "ALTER TABLE {db}.rule_drops ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the row was derived; retention counts from it'",
        ],
    },
];

/// Tables whose rows retention removes, and the column it counts from. `events` counts from
/// `enriched_at`: set by the enricher as it links the event (a sender cannot backdate it),
/// and never later than the checkpoint that first signs the link, which is what lets
/// `auditctl verify` tell an expired link from a deleted one. The chain tables
/// (checkpoints, frontiers, skips) are kept: they are small and hold no personal data.
pub const RETAINED: &[(&str, &str)] = &[
    ("events", "enriched_at"),
    ("entity_activity", "stored_at"),
    ("entity_links", "stored_at"),
    ("rule_drops", "stored_at"),
];

/// Applies every migration not yet recorded; returns the versions applied now.
pub async fn migrate(
    client: &Client,
    db: &str,
    ttl_days: Option<u32>,
) -> Result<Vec<u32>, clickhouse::error::Error> {
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version"
        ))
        .execute()
        .await?;
    let applied: Vec<u32> = client
        .query(&format!(
            "SELECT DISTINCT version FROM {db}.schema_migrations"
        ))
        .fetch_all()
        .await?;
    let mut now = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        for statement in m.statements {
            client
                .query(&statement.replace("{db}", db))
                .execute()
                .await?;
        }
        client
            .query(&format!(
                "INSERT INTO {db}.schema_migrations (version, name) VALUES (?, ?)"
            ))
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        now.push(m.version);
    }
    // Retention follows the settings on every start, so changing it needs no migration.
    for (table, column) in RETAINED {
        let ttl = match ttl_days {
            Some(days) => format!(
                "ALTER TABLE {db}.{table} MODIFY TTL toDateTime({column}) + INTERVAL {days} DAY"
            ),
            None => format!("ALTER TABLE {db}.{table} REMOVE TTL"),
        };
        if let Err(e) = client.query(&ttl).execute().await {
            // REMOVE TTL on a table without one is an error on some versions: nothing to do.
            if ttl_days.is_some() {
                return Err(e);
            }
        }
    }
    Ok(now)
}
