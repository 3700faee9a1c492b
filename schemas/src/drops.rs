//! What the rules dropped, as facts: each batch's drops become summary events
//! (`audit.rule-drops`) published with the batch's enriched events, so they are durable exactly
//! when the batch's offsets may be committed, and survive restarts in ClickHouse's
//! `rule_drops` table (per minute, rule, type and group).
//!
//! A batch done again after a crash publishes its summaries again. Each summary lists the raw
//! offsets it counts, so ClickHouse counts every dropped event once however often it was summed
//! (`dropped_by_rules.sql`), and a summary identical to an earlier one has the same event id,
//! which the sink's replay window recognises.

use crate::event::{
    EnrichedAuditEvent, Enrichment, EntityRef, PipelineMeta, RawAuditEvent, Source,
};
use crate::{EventType, Timestamp};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The summary events' type; reserved, so no rule drops it and no sender forges it.
pub const SUMMARY_TYPE: &str = "audit.rule-drops";

/// One dropped event, as the tally needs it.
#[derive(Debug, Clone)]
pub struct Drop {
    pub rule_id: String,
    pub event_type: String,
    /// The group the rule matched on; `None` when the rule names no group.
    pub group: Option<String>,
    pub event_time: Timestamp,
    pub raw_partition: i32,
    pub raw_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    raw_partition: i32,
    minute: i64,
    rule_id: String,
    event_type: String,
    group: Option<String>,
}

#[derive(Debug, Default)]
struct Tally {
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    offsets: Vec<i64>,
}

/// A batch's drops, by raw partition, minute of event time, rule, type and group.
#[derive(Debug, Default)]
pub struct DropTally {
    tallies: BTreeMap<Key, Tally>,
}

const MINUTE_US: i64 = 60_000_000;

impl DropTally {
    pub fn add(&mut self, d: Drop) {
        let key = Key {
            raw_partition: d.raw_partition,
            minute: d.event_time.as_micros().div_euclid(MINUTE_US),
            rule_id: d.rule_id,
            event_type: d.event_type,
            group: d.group,
        };
        let t = self.tallies.entry(key).or_default();
        t.first = Some(t.first.map_or(d.event_time, |f| f.min(d.event_time)));
        t.last = Some(t.last.map_or(d.event_time, |l| l.max(d.event_time)));
        t.offsets.push(d.raw_offset);
    }

    pub fn is_empty(&self) -> bool {
        self.tallies.is_empty()
    }

    /// The summary events, one per key; the tally is emptied.
    pub fn take_summaries(&mut self, now: Timestamp) -> Vec<EnrichedAuditEvent> {
        std::mem::take(&mut self.tallies)
            .into_iter()
            .filter_map(|(key, t)| summary(key, t, now))
            .collect()
    }
}

fn summary(key: Key, mut t: Tally, now: Timestamp) -> Option<EnrichedAuditEvent> {
    t.offsets.sort_unstable();
    t.offsets.dedup();
    let (first, last) = (t.first?, t.last?);
    let first_offset = *t.offsets.first()?;
    let minute = Timestamp::from_micros(key.minute * MINUTE_US);
    let offsets = serde_json::to_string(&t.offsets).unwrap_or_else(|_| "[]".into());
    // The same drops summed again give the same id.
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!(
            "rule-drops\n{}\n{}\n{}\n{}\n{offsets}",
            key.raw_partition,
            key.rule_id,
            key.event_type,
            key.group.as_deref().unwrap_or("")
        )
        .as_bytes(),
    );
    let text = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut params = BTreeMap::new();
    params.insert("rule".to_string(), text(&key.rule_id));
    params.insert("dropped_type".to_string(), text(&key.event_type));
    params.insert(
        "group".to_string(),
        key.group.as_deref().map_or("null".to_string(), &text),
    );
    params.insert("count".to_string(), t.offsets.len().to_string());
    params.insert("minute".to_string(), text(&minute.to_rfc3339()));
    params.insert("first_event_time".to_string(), text(&first.to_rfc3339()));
    params.insert("last_event_time".to_string(), text(&last.to_rfc3339()));
    params.insert("raw_partition".to_string(), key.raw_partition.to_string());
    params.insert("raw_offsets".to_string(), offsets);
    let event_type = EventType::trusted(SUMMARY_TYPE.to_string());
    Some(EnrichedAuditEvent {
        event: RawAuditEvent {
            event_id: id,
            timestamp: minute,
            event_type,
            source: Source::Server,
            service: "audit-enricher".into(),
            session_id: None,
            user_id: None,
            username: None,
            tenant: None,
            success: true,
            message: Some(format!(
                "rule {} dropped {} {} event(s)",
                key.rule_id,
                t.offsets.len(),
                key.event_type
            )),
            entities: vec![EntityRef {
                kind: "audit-rule".into(),
                id: key.rule_id.clone(),
                name: None,
                role: Default::default(),
            }],
            params,
            response: None,
            error: None,
            client: None,
            ingest: None,
            utc_offset_minutes: None,
        },
        user: None,
        groups: Vec::new(),
        session: None,
        enrichment: Enrichment::NoSession,
        claimed_user_mismatch: false,
        pipeline: PipelineMeta {
            received_at: now,
            enriched_at: now,
            raw_partition: key.raw_partition,
            raw_offset: first_offset,
        },
        event_time: Default::default(),
        chain: None,
        catalog: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop(rule: &str, ty: &str, t_s: i64, offset: i64) -> Drop {
        Drop {
            rule_id: rule.into(),
            event_type: ty.into(),
            group: Some("contractors".into()),
            event_time: Timestamp::from_micros(t_s * 1_000_000),
            raw_partition: 3,
            raw_offset: offset,
        }
    }

    #[test]
    fn drops_are_summed_per_minute_rule_and_type_with_their_offsets() {
        let mut tally = DropTally::default();
        tally.add(drop("r1", "query-created", 61, 10));
        tally.add(drop("r1", "query-created", 100, 11));
        tally.add(drop("r1", "query-created", 130, 12)); // next minute
        tally.add(drop("r2", "job-start", 70, 13));
        let summaries = tally.take_summaries(Timestamp::now());
        assert!(tally.is_empty());
        assert_eq!(summaries.len(), 3);
        let first = &summaries[0];
        assert_eq!(first.event.event_type.as_str(), SUMMARY_TYPE);
        assert_eq!(first.event.params["rule"], "\"r1\"");
        assert_eq!(first.event.params["count"], "2");
        assert_eq!(first.event.params["raw_offsets"], "[10,11]");
        assert_eq!(first.event.params["group"], "\"contractors\"");
        assert_eq!(
            first.event.params["first_event_time"],
            format!("\"{}\"", Timestamp::from_micros(61_000_000).to_rfc3339())
        );
        assert_eq!(first.pipeline.raw_partition, 3);
        assert_eq!(first.pipeline.raw_offset, 10);
        let total: usize = summaries
            .iter()
            .map(|s| s.event.params["count"].parse::<usize>().unwrap())
            .sum();
        assert_eq!(total, 4);
    }

    #[test]
    fn the_same_drops_summed_again_have_the_same_id() {
        let ids = |offsets: &[i64]| {
            let mut tally = DropTally::default();
            for &o in offsets {
                tally.add(drop("r1", "log", 5, o));
            }
            tally.take_summaries(Timestamp::now())[0].event.event_id
        };
        assert_eq!(ids(&[1, 2, 3]), ids(&[3, 1, 2]));
        assert_ne!(ids(&[1, 2, 3]), ids(&[1, 2]));
    }
}
