//! `auditctl verify`: the tables analysts read besides `events` hold exactly what the events
//! give.
//!
//! `entity_activity`, `entity_links` and `rule_drops` are filled by materialized views from
//! `events`, whose rows the chain checks prove column by column. So each derived table's rows
//! in the range are recomputed from the stored events with the view's own SELECT
//! ([`audit_sink_clickhouse::derived`]) and compared, in ClickHouse, with the stored ones: a
//! row no event gives (planted, or left behind by a deleted event) is **UNBACKED**, a row an
//! event gives that is not stored is **DELETED**, and an event whose rows differ from what it
//! gives is **ALTERED**, naming the columns. Extra exact copies of a row are counted, as
//! `events`' are: a resend or a restore from a backup makes them, and they change no row.

use anyhow::{Context, Result};
use audit_sink_clickhouse::derived::{DerivedTable, TABLES};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// Events named one by one per table; past that, one line says how many more there are.
const MAX_NAMED: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DerivedFinding {
    /// Stored rows no stored event gives.
    Unbacked {
        table: &'static str,
        event_id: String,
        rows: usize,
    },
    /// Rows a stored event gives that are not stored.
    Deleted {
        table: &'static str,
        event_id: String,
        rows: usize,
    },
    /// Rows of an event that differ from what it gives.
    Altered {
        table: &'static str,
        event_id: String,
        columns: Vec<String>,
    },
    /// More events' rows differ than are named.
    More { table: &'static str, named: usize },
}

impl fmt::Display for DerivedFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unbacked {
                table,
                event_id,
                rows,
            } => write!(
                f,
                "UNBACKED {table}: {rows} rows of event {event_id} that no stored event gives (planted, or its event deleted)"
            ),
            Self::Deleted {
                table,
                event_id,
                rows,
            } => write!(
                f,
                "DELETED {table}: {rows} rows event {event_id} gives are not stored"
            ),
            Self::Altered {
                table,
                event_id,
                columns,
            } => write!(
                f,
                "ALTERED {table}: the rows of event {event_id} differ from what the event gives: columns {}",
                columns.join(", ")
            ),
            Self::More { table, named } => write!(
                f,
                "MORE {table}: the rows of more events than the {named} named differ from what the events give"
            ),
        }
    }
}

/// One table's rows compared.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableReport {
    /// Stored rows in the range.
    pub rows: u64,
    /// Stored exact copies beyond what the events give.
    pub copies: u64,
}

#[derive(Debug, Default)]
pub struct DerivedReport {
    pub findings: Vec<DerivedFinding>,
    pub tables: BTreeMap<&'static str, TableReport>,
}

/// A row, its columns as text (`None`: NULL), in [`DerivedTable::columns`]' order.
type Values = Vec<Option<String>>;

/// Judges one event's stored rows against the rows it gives. Pure.
pub fn judge(
    table: &DerivedTable,
    event_id: &str,
    mut stored: Vec<Values>,
    mut expected: Vec<Values>,
) -> Option<DerivedFinding> {
    for rows in [&mut stored, &mut expected] {
        rows.sort();
        rows.dedup();
    }
    let unbacked: Vec<&Values> = stored.iter().filter(|r| !expected.contains(r)).collect();
    let missing: Vec<&Values> = expected.iter().filter(|r| !stored.contains(r)).collect();
    let event_id = event_id.to_string();
    match (unbacked.is_empty(), missing.is_empty()) {
        (true, true) => None,
        (false, true) => Some(DerivedFinding::Unbacked {
            table: table.name,
            event_id,
            rows: unbacked.len(),
        }),
        (true, false) => Some(DerivedFinding::Deleted {
            table: table.name,
            event_id,
            rows: missing.len(),
        }),
        (false, false) => {
            let mut columns: Vec<String> = Vec::new();
            for (u, m) in unbacked.iter().zip(&missing) {
                for (i, c) in table.columns.iter().enumerate() {
                    if u.get(i) != m.get(i) && !columns.iter().any(|k| k == c) {
                        columns.push((*c).to_string());
                    }
                }
            }
            if unbacked.len() != missing.len() {
                columns.push("(row count)".into());
            }
            Some(DerivedFinding::Altered {
                table: table.name,
                event_id,
                columns,
            })
        }
    }
}

/// The two sides of the comparison as one union: `side` 0 the stored rows, 1 the rows the
/// events give; `extra` the columns each side selects before the table's own.
fn union(t: &DerivedTable, extra: &str, filter: &str) -> String {
    let range = format!(
        "{} BETWEEN fromUnixTimestamp64Micro(?, 'UTC') AND fromUnixTimestamp64Micro(?, 'UTC')",
        t.time_column
    );
    format!(
        "SELECT 0 AS side, {extra} FROM {name} WHERE {range}{filter}
         UNION ALL
         SELECT 1 AS side, {extra} FROM (\n{select}\n) WHERE {range}{filter}",
        name = t.name,
        select = t.select,
    )
}

/// `cityHash64` of the whole row: groups equal rows without carrying them.
fn row_hash(t: &DerivedTable) -> String {
    format!(
        "toString({k}) AS event_key, cityHash64(toString(tuple({cols}))) AS h",
        k = t.event_column,
        cols = t.columns.join(", ")
    )
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Key {
    event_key: String,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Counts {
    stored_rows: u64,
    copies: u64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct SideRow {
    side: u8,
    event_key: String,
    vals: Vec<Option<String>>,
}

/// Compares every derived table's rows in `[from_us, to_us]` with what the stored events give.
///
/// Under retention a derived row and its event are removed by separate merges, hours apart:
/// a row whose event is gone, or an event whose rows are gone, is not judged once it is older
/// than `expired_before_us` (rows by `stored_at`, events by `enriched_at`).
pub async fn verify(
    db: &clickhouse::Client,
    (from_us, to_us): (i64, i64),
    expired_before_us: Option<i64>,
) -> Result<DerivedReport> {
    let cut = expired_before_us.unwrap_or(i64::MIN);
    let mut report = DerivedReport::default();
    for t in &TABLES {
        let grouped = format!(
            "SELECT event_key, h, countIf(side = 0) AS s, countIf(side = 1) AS e
             FROM ({}) GROUP BY event_key, h",
            union(t, &row_hash(t), "")
        );
        let mut q = db.query(&format!(
            "SELECT toUInt64(sum(s)) AS stored_rows, toUInt64(sumIf(s - e, s > e AND e > 0)) AS copies FROM ({grouped})"
        ));
        for _ in 0..2 {
            q = q.bind(from_us).bind(to_us);
        }
        let counts: Counts = q
            .fetch_one()
            .await
            .with_context(|| format!("comparing {} with what the events give", t.name))?;
        let mut q = db.query(&format!(
            "SELECT DISTINCT event_key FROM ({grouped}) WHERE (s > 0) != (e > 0)
             AND NOT (e = 0 AND event_key IN (SELECT toString({k}) FROM {name}
                      WHERE stored_at < fromUnixTimestamp64Micro(?, 'UTC')))
             AND NOT (s = 0 AND event_key IN (SELECT toString(event_id) FROM events
                      WHERE enriched_at < fromUnixTimestamp64Micro(?, 'UTC')))
             ORDER BY event_key LIMIT {}",
            MAX_NAMED + 1,
            k = t.event_column,
            name = t.name,
        ));
        for _ in 0..2 {
            q = q.bind(from_us).bind(to_us);
        }
        q = q.bind(cut).bind(cut);
        let mut keys: Vec<String> = q
            .fetch_all::<Key>()
            .await
            .with_context(|| format!("finding the events whose {} rows differ", t.name))?
            .into_iter()
            .map(|k| k.event_key)
            .collect();
        report.tables.insert(
            t.name,
            TableReport {
                rows: counts.stored_rows,
                copies: counts.copies,
            },
        );
        if keys.is_empty() {
            continue;
        }
        if keys.len() > MAX_NAMED {
            keys.truncate(MAX_NAMED);
            report.findings.push(DerivedFinding::More {
                table: t.name,
                named: MAX_NAMED,
            });
        }
        // Read again, row by row, to name what differs; a difference a sink's insert in
        // progress made is gone by now and judged as no finding.
        let vals: Vec<String> = t
            .columns
            .iter()
            .map(|c| format!("CAST(toString({c}) AS Nullable(String))"))
            .collect();
        let extra = format!(
            "toString({}) AS event_key, [{}] AS vals",
            t.event_column,
            vals.join(", ")
        );
        let filter = format!(" AND has(?, toString({}))", t.event_column);
        let mut q = db.query(&format!(
            "SELECT side, event_key, vals FROM ({})",
            union(t, &extra, &filter)
        ));
        for _ in 0..2 {
            q = q.bind(from_us).bind(to_us).bind(&keys);
        }
        let rows: Vec<SideRow> = q
            .fetch_all()
            .await
            .with_context(|| format!("reading the {} rows that differ", t.name))?;
        let mut by_key: BTreeMap<String, (Vec<Values>, Vec<Values>)> = BTreeMap::new();
        for r in rows {
            let sides = by_key.entry(r.event_key).or_default();
            match r.side {
                0 => sides.0.push(r.vals),
                _ => sides.1.push(r.vals),
            }
        }
        for (key, (stored, expected)) in by_key {
            report.findings.extend(judge(t, &key, stored, expected));
        }
    }
    report.findings.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_sink_clickhouse::derived::{ENTITY_ACTIVITY, ENTITY_LINKS};

    fn row(user: &str, message: &str) -> Values {
        let mut r: Values = ENTITY_ACTIVITY
            .columns
            .iter()
            .map(|_| Some("x".into()))
            .collect();
        let at = |c: &str| {
            ENTITY_ACTIVITY
                .columns
                .iter()
                .position(|k| *k == c)
                .unwrap()
        };
        r[at("user_login")] = Some(user.into());
        r[at("message")] = Some(message.into());
        r[at("entity_name")] = None;
        r
    }

    #[test]
    fn equal_rows_and_extra_exact_copies_are_no_finding() {
        let rows = vec![row("ann", "m"), row("ann", "m")];
        assert_eq!(
            judge(&ENTITY_ACTIVITY, "e", rows, vec![row("ann", "m")]),
            None
        );
    }

    #[test]
    fn a_changed_column_is_named() {
        let found = judge(
            &ENTITY_ACTIVITY,
            "e",
            vec![row("mallory", "m")],
            vec![row("ann", "m")],
        );
        assert_eq!(
            found,
            Some(DerivedFinding::Altered {
                table: "entity_activity",
                event_id: "e".into(),
                columns: vec!["user_login".into()],
            })
        );
        let text = found.unwrap().to_string();
        assert!(text.starts_with("ALTERED entity_activity"), "{text}");
    }

    #[test]
    fn rows_with_no_event_and_an_events_missing_rows_are_named() {
        assert_eq!(
            judge(&ENTITY_LINKS, "p", vec![vec![None]; 1], vec![]),
            Some(DerivedFinding::Unbacked {
                table: "entity_links",
                event_id: "p".into(),
                rows: 1,
            })
        );
        assert_eq!(
            judge(
                &ENTITY_ACTIVITY,
                "d",
                vec![row("ann", "a")],
                vec![row("ann", "a"), row("ann", "b")]
            ),
            Some(DerivedFinding::Deleted {
                table: "entity_activity",
                event_id: "d".into(),
                rows: 1,
            })
        );
    }
}
