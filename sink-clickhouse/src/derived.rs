//! The tables ClickHouse derives from `events` through materialized views, as queries a
//! verifier can run again: what `entity_activity`, `entity_links` and `rule_drops` must hold,
//! computed from the (verified) events rows.
//!
//! Each `select` is the current view's SELECT, `{db}.` left out; a test holds the migrations
//! to these texts, so the view and the verifier cannot drift apart.

/// One derived table.
#[derive(Debug, Clone, Copy)]
pub struct DerivedTable {
    pub name: &'static str,
    /// The columns the view writes (the table's others are defaults, such as `inserted_at`).
    pub columns: &'static [&'static str],
    /// The column naming the event a row comes from.
    pub event_column: &'static str,
    /// The time column a range is taken on (on both sides, so both pick the same rows).
    pub time_column: &'static str,
    /// A `ReplacingMergeTree`: copies of a row collapse whenever parts merge, so only whether
    /// a row is there counts, not how often.
    pub collapses: bool,
    /// The view's SELECT over `events`.
    pub select: &'static str,
}

pub const ENTITY_ACTIVITY: DerivedTable = DerivedTable {
    name: "entity_activity",
    columns: &[
        "entity_type",
        "entity_id",
        "entity_name",
        "role",
        "timestamp",
        "event_id",
        "event_type",
        "catalog_type",
        "user_id",
        "user_login",
        "session_id",
        "success",
        "message",
    ],
    event_column: "event_id",
    time_column: "timestamp",
    collapses: false,
    select: r"SELECT
    entity.1 AS entity_type,
    entity.2 AS entity_id,
    entity.3 AS entity_name,
    role,
    timestamp, event_id, event_type, catalog_type, user_id, user_login, session_id, success, message
FROM events
ARRAY JOIN
    entities AS entity,
    arrayResize(entity_roles, length(entities), 'TARGET') AS role",
};

pub const ENTITY_LINKS: DerivedTable = DerivedTable {
    name: "entity_links",
    columns: &[
        "linked_type",
        "linked_id",
        "entity_type",
        "entity_id",
        "timestamp",
        "event_id",
    ],
    event_column: "event_id",
    time_column: "timestamp",
    collapses: true,
    select: r"SELECT
    linked.1 AS linked_type,
    linked.2 AS linked_id,
    target.1 AS entity_type,
    target.2 AS entity_id,
    timestamp,
    event_id
FROM events
ARRAY JOIN arrayFilter((e, r) -> r = 'TARGET', entities, arrayResize(entity_roles, length(entities), 'TARGET')) AS target
ARRAY JOIN arrayFilter((e, r) -> r = 'LINKED', entities, entity_roles) AS linked
WHERE has(entity_roles, 'LINKED')",
};

pub const RULE_DROPS: DerivedTable = DerivedTable {
    name: "rule_drops",
    columns: &[
        "minute",
        "rule",
        "event_type",
        "group_name",
        "dropped",
        "first_event_time",
        "last_event_time",
        "raw_partition",
        "raw_offsets",
        "summary_id",
    ],
    event_column: "summary_id",
    time_column: "minute",
    collapses: false,
    select: r"SELECT
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
FROM events AS e
-- Qualified: the alias event_type above would otherwise be what this compares.
WHERE e.event_type = 'audit.rule-drops'",
};

/// Every table a view fills from `events`.
pub const TABLES: [DerivedTable; 3] = [ENTITY_ACTIVITY, ENTITY_LINKS, RULE_DROPS];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::MIGRATIONS;

    fn words(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The newest view of each table, as the migrations create it.
    fn newest_view(table: &str) -> String {
        let into = format!("TO {{db}}.{table} AS");
        let view = MIGRATIONS
            .iter()
            .flat_map(|m| m.statements.iter())
            .rfind(|s| s.contains("CREATE MATERIALIZED VIEW") && s.contains(&into))
            .unwrap_or_else(|| panic!("no view fills {table}"));
        let select = &view[view.find(&into).unwrap() + into.len()..];
        words(&select.replace("{db}.", ""))
    }

    #[test]
    fn each_select_is_the_newest_view_of_its_table() {
        for t in TABLES {
            assert_eq!(newest_view(t.name), words(t.select), "{}", t.name);
        }
    }

    #[test]
    fn the_columns_are_what_each_select_names() {
        for t in TABLES {
            let head = &t.select[..t.select.find("FROM").unwrap()];
            for c in t.columns {
                assert!(head.contains(c), "{}: {c} not in its select", t.name);
            }
            assert!(t.columns.contains(&t.event_column), "{}", t.name);
            assert!(t.columns.contains(&t.time_column), "{}", t.name);
        }
    }
}
