//! `auditctl verify`, v2: every column of a stored row against the content its link signed.
//!
//! The Merkle root proves a row's `chain_content`; analysts read the columns. This rebuilds
//! the row a sink would store from the signed content alone (the personal values opened with
//! the row's salt) and names every column that differs, so `ALTER TABLE events UPDATE
//! user_id = ...` or an altered copy that keeps the original's link and content is a finding.
//! Pure, so it is tested without a server.

use audit_schemas::chain::{content, ChainLink};
use audit_sink_clickhouse::encoder::{self, EventRow, Origin};
use serde_json::Value;

/// Why a row's columns could not be checked, or which differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnCheck {
    /// Every column is what the signed content gives.
    Matches,
    /// These columns differ from the signed content.
    Differ(Vec<String>),
    /// The person's data was erased (`auditctl erase`): the salt and every column holding a
    /// commitment are blank, and every other column is what the signed content gives. Whether
    /// a signed erasure record names the event is the caller's to check.
    Erased,
}

/// Checks `row`'s columns against its own `chain_content` (whose digest the root check proves;
/// `chain_content` itself is left to that check).
pub fn check(row: &EventRow) -> ColumnCheck {
    let erased = row.chain_salt.is_empty();
    let salt = match hex::decode(&row.chain_salt)
        .ok()
        .and_then(|b| content::Salt::try_from(b).ok())
    {
        Some(salt) => Some(salt),
        None if erased => None,
        None => return ColumnCheck::Differ(vec!["chain_salt".into()]),
    };
    // The row a sink would store from the signed content, its commitments kept.
    let rebuild = || {
        let mut signed = content::parse(row.chain_content.as_bytes()).ok()?;
        // No salt: the sink would recompute the content, which is not compared here (the
        // root check proves it) and is the dearest part of a row.
        signed.chain = Some(ChainLink {
            epoch: row.chain_epoch.clone(),
            seq: row.chain_seq,
            prev: row.chain_prev.clone(),
            hash: row.chain_hash.clone(),
            salt: None,
        });
        let origin = Origin {
            partition: row.source_partition,
            offset: row.source_offset,
        };
        let mut rebuilt = encoder::row(signed, &row.source_topic, origin);
        rebuilt.chain_salt = row.chain_salt.clone();
        Some(rebuilt)
    };
    let Some(mut expected) = rebuild() else {
        return ColumnCheck::Differ(vec!["chain_content".into()]);
    };
    expected.chain_content = row.chain_content.clone();
    // The common case first: each personal value opens its commitment (or, erased, is gone),
    // and then the rows are equal field for field. Only when they are not are columns named.
    let personal_ok = expected
        .erasable_mut()
        .into_iter()
        .zip(row.erasable())
        .all(|(e, s)| {
            let committed = e
                .as_deref()
                .filter(|c| c.starts_with(content::COMMITMENT_PREFIX));
            match (committed, s.as_deref(), salt.as_ref()) {
                (Some(c), Some(v), Some(salt)) => {
                    let ok = content::opens(c, salt, v);
                    *e = Some(v.to_string());
                    ok
                }
                (Some(_), None, None) => {
                    *e = None;
                    true
                }
                (Some(_), _, _) => false,
                (None, s, _) => e.as_deref() == s,
            }
        });
    if personal_ok && expected == *row {
        return if erased {
            ColumnCheck::Erased
        } else {
            ColumnCheck::Matches
        };
    }
    // Rare: the row is rebuilt again, its commitments kept, to name what differs.
    let Some(expected) = rebuild() else {
        return ColumnCheck::Differ(vec!["chain_content".into()]);
    };
    let differ = differing_columns(row, &expected, salt.as_ref());
    match (differ.is_empty(), erased) {
        (true, false) => ColumnCheck::Matches,
        (true, true) => ColumnCheck::Erased,
        (false, _) => ColumnCheck::Differ(differ),
    }
}

/// The names of the columns whose values differ. Where the signed content holds a commitment
/// to a personal value, the stored value must open it under the row's salt: the signed event
/// keeps its commitments, so a column derived from a personal value (`actor_id` from the
/// resolved user) is judged by the same rule as the column it comes from. Without a salt
/// (erased) such a column must be null: a value left there can be neither checked nor erased.
fn differing_columns(
    stored: &EventRow,
    expected: &EventRow,
    salt: Option<&content::Salt>,
) -> Vec<String> {
    let as_map = |r: &EventRow| match serde_json::to_value(r) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (stored, expected) = (as_map(stored), as_map(expected));
    if stored.is_empty() || expected.is_empty() {
        return vec!["(row)".into()];
    }
    stored
        .iter()
        .filter(|(k, _)| k.as_str() != "chain_content")
        .filter(|(k, v)| match (expected.get(*k), v) {
            (Some(Value::String(c)), v) if c.starts_with(content::COMMITMENT_PREFIX) => {
                match (salt, v) {
                    (Some(salt), Value::String(v)) => !content::opens(c, salt, v),
                    (None, Value::Null) => false,
                    _ => true,
                }
            }
            (e, v) => e != Some(v),
        })
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_schemas::event::*;
    use audit_schemas::{EnrichedAuditEvent, Timestamp};

    fn event() -> EnrichedAuditEvent {
        let raw: RawAuditEvent = serde_json::from_value(serde_json::json!({
            "event_id": "6f1c2d3e-0000-4000-8000-000000000001",
            "timestamp": 1_700_000_000_000_000i64,
            "event_type": "query-created",
            "source": "SERVER",
            "service": "catalog",
            "session_id": "s1",
            "user_id": "u-7",
            "username": "ada",
            "tenant": "t1",
            "success": true,
            "message": "created",
            "entities": [{"type": "query", "id": "q-1", "name": "Q", "role": "SUBJECT"}],
            "params": {"q": "\"abc\"", "r": "abc"},
            "response": null,
            "error": null,
            "client": {"ip": "10.0.0.9", "user_agent": "curl"},
            "ingest": null,
            "utc_offset_minutes": 60
        }))
        .unwrap();
        let salt = [7u8; 32];
        EnrichedAuditEvent {
            event: raw,
            user: Some(ResolvedUser {
                id: "u-7".into(),
                login: "ada".into(),
                name: Some("Ada L".into()),
            }),
            groups: vec![GroupRef {
                id: "g1".into(),
                name: "admins".into(),
            }],
            session: Some(SessionInfo {
                id: "s1".into(),
                started_at: Timestamp::from_micros(1_699_999_000_000_000),
                ip: Some("10.0.0.9".into()),
            }),
            enrichment: Enrichment::Enriched,
            claimed_user_mismatch: false,
            pipeline: PipelineMeta {
                received_at: Timestamp::from_micros(1_700_000_000_100_000),
                enriched_at: Timestamp::from_micros(1_700_000_000_200_000),
                raw_partition: 3,
                raw_offset: 9,
            },
            event_time: EventTimeCheck::Plausible,
            chain: Some(ChainLink {
                epoch: "e1".into(),
                seq: 4,
                prev: "p".into(),
                hash: "h".into(),
                salt: Some(hex::encode(salt)),
            }),
            catalog: None,
        }
    }

    fn stored() -> EventRow {
        encoder::row(
            event(),
            "audit.enriched",
            Origin {
                partition: 1,
                offset: 2,
            },
        )
    }

    #[test]
    fn a_row_as_the_sink_stored_it_matches_its_content() {
        assert_eq!(check(&stored()), ColumnCheck::Matches);
    }

    #[test]
    fn every_changed_column_is_named() {
        let mut r = stored();
        r.user_id = Some("u-9".into());
        r.user_login = Some("eve".into());
        assert_eq!(
            check(&r),
            ColumnCheck::Differ(vec!["user_id".into(), "user_login".into()])
        );
        let mut r = stored();
        r.group_names = vec!["nobody".into()];
        r.enrichment = "SESSION_UNKNOWN".into();
        r.actor_name = Some("eve".into());
        assert_eq!(
            check(&r),
            ColumnCheck::Differ(vec![
                "actor_name".into(),
                "enrichment".into(),
                "group_names".into()
            ])
        );
        let mut r = stored();
        r.message = Some("nothing happened".into());
        r.timestamp += time::Duration::seconds(1);
        r.params.push(("extra".into(), "1".into()));
        let ColumnCheck::Differ(cols) = check(&r) else {
            panic!("not found")
        };
        assert_eq!(cols, ["message", "params", "timestamp"]);
    }

    #[test]
    fn a_personal_value_that_does_not_open_its_commitment_is_named() {
        let mut r = stored();
        r.client_ip = Some("10.0.0.10".into());
        r.session_ip = None;
        assert_eq!(
            check(&r),
            ColumnCheck::Differ(vec!["client_ip".into(), "session_ip".into()])
        );
    }

    #[test]
    fn a_content_or_salt_that_does_not_read_is_named() {
        let mut r = stored();
        r.chain_salt = "zz".into();
        assert_eq!(check(&r), ColumnCheck::Differ(vec!["chain_salt".into()]));
        let mut r = stored();
        r.chain_content.truncate(10);
        assert_eq!(check(&r), ColumnCheck::Differ(vec!["chain_content".into()]));
        // Another content under the row's salt: every column it changes is named (the root
        // check separately finds that content unsigned).
        let mut other = event();
        other.event.message = Some("other".into());
        let mut r = stored();
        r.chain_content = encoder::row(
            other,
            "audit.enriched",
            Origin {
                partition: 1,
                offset: 2,
            },
        )
        .chain_content;
        assert_eq!(check(&r), ColumnCheck::Differ(vec!["message".into()]));
    }

    fn erased(mut r: EventRow) -> EventRow {
        for column in encoder::ERASABLE_COLUMNS {
            match *column {
                "claimed_user_id" => r.claimed_user_id = None,
                "username" => r.username = None,
                "client_ip" => r.client_ip = None,
                "client_user_agent" => r.client_user_agent = None,
                "user_id" => r.user_id = None,
                "user_login" => r.user_login = None,
                "user_name" => r.user_name = None,
                "session_ip" => r.session_ip = None,
                "peer_ip" => r.peer_ip = None,
                "actor_id" => r.actor_id = None,
                "actor_name" => r.actor_name = None,
                other => panic!("a column this test does not know: {other}"),
            }
        }
        r.chain_salt.clear();
        r
    }

    #[test]
    fn an_erased_row_reads_as_erased_and_a_value_left_or_another_change_does_not() {
        assert_eq!(check(&erased(stored())), ColumnCheck::Erased);
        let mut r = erased(stored());
        r.user_login = Some("ada".into());
        assert_eq!(check(&r), ColumnCheck::Differ(vec!["user_login".into()]));
        let mut r = erased(stored());
        r.group_names = vec!["nobody".into()];
        assert_eq!(check(&r), ColumnCheck::Differ(vec!["group_names".into()]));
        // Blanking the salt alone erases nothing: every personal value is still there.
        let mut r = stored();
        r.chain_salt.clear();
        let ColumnCheck::Differ(cols) = check(&r) else {
            panic!("not found")
        };
        assert!(cols.contains(&"user_id".to_string()), "{cols:?}");
    }
}
