//! Wiring: a consumed batch of enriched records -> rows -> the rows not yet stored -> one
//! insert per (Kafka partition, month) -> dead letters for what ClickHouse rejects -> `Ok`, so
//! the offsets are committed only after everything is durable.
//!
//! | failure | what happens |
//! |---|---|
//! | a record does not decode | dead letter (`undecodable`, `no_value`) |
//! | ClickHouse rejects a row (its values, a constraint) | found by bisection; dead letter (`rejected`) before any later row of its partition is inserted |
//! | ClickHouse is away, read-only, out of disk or memory, the table missing, too many parts | the insert is retried with backoff and jitter, as long as it takes; nothing is dead-lettered |
//! | wrong credentials or permissions | the sink stops, uncommitted, saying which setting to check |
//! | a partition was revoked while its batch was in hand | its records are not inserted (the runtime drops them; the new owner reads them) |

use crate::encoder::{already_stored, insert_groups, row, ChainSkip, EventRow, Origin, Stored};
use crate::service::Store;
use audit_runtime::consume::{partition_spans, BatchHandler};
use audit_runtime::dead_letter::{self, DeadLetters};
use audit_runtime::replays::RecentIds;
use audit_schemas::dead_letter::Cause;
use audit_schemas::EnrichedAuditEvent;
use rdkafka::message::{Message, OwnedMessage};
use std::collections::HashMap;

pub struct ClickHouseSink {
    pub store: Store,
    pub letters: DeadLetters,
    pub recent: RecentIds,
}

impl ClickHouseSink {
    /// Drops rows an enricher published again (same event id, new offset), after reloading the
    /// recent ids of every partition whose batch does not follow on from the last one seen here.
    async fn without_replays(
        &mut self,
        topic: &str,
        batch: &[OwnedMessage],
        mut rows: Vec<EventRow>,
    ) -> anyhow::Result<Vec<EventRow>> {
        let spans = partition_spans(batch);
        for (&partition, &(first, _)) in &spans {
            if !self.recent.follows_on(partition, first) {
                let from = first.saturating_sub(self.recent.window() as i64);
                let ids = self.store.stored_ids(topic, partition, from, first).await?;
                self.recent.load(partition, first, ids);
            }
        }
        rows.sort_by_key(|r| (r.source_partition, r.source_offset));
        let replays = self
            .recent
            .drop_replays(&mut rows, |r| (r.source_partition, r.event_id));
        if !replays.is_empty() {
            tracing::info!(
                replays = replays.len(),
                "events published again by an enricher (same event id); not inserted again"
            );
            metrics::counter!("audit_clickhouse_replays_skipped_total")
                .increment(replays.len() as u64);
            // Each replay is a link of its own chain: kept as a skip, so `auditctl verify` can
            // tell the link left out here from one deleted later.
            let skips: Vec<ChainSkip> = replays.iter().filter_map(ChainSkip::of).collect();
            self.store.insert_skips(&skips).await?;
        }
        for (&partition, &(_, last)) in &spans {
            self.recent.handled(partition, last);
        }
        metrics::gauge!("audit_replay_window_ids").set(self.recent.ids_held() as f64);
        metrics::gauge!("audit_replay_window_bytes").set(self.recent.bytes_held() as f64);
        Ok(rows)
    }
}

impl BatchHandler for ClickHouseSink {
    async fn handle(&mut self, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        let Some(topic) = batch.first().map(|m| m.topic().to_string()) else {
            return Ok(());
        };
        let mut letters = Vec::new();
        let mut rows: Vec<EventRow> = Vec::with_capacity(batch.len());
        let mut originals: HashMap<(i32, i64), &OwnedMessage> = HashMap::with_capacity(batch.len());
        for m in batch {
            originals.insert((m.partition(), m.offset()), m);
            match dead_letter::decode::<EnrichedAuditEvent, _>(m) {
                Ok(e) => rows.push(row(
                    e,
                    &topic,
                    Origin {
                        partition: m.partition(),
                        offset: m.offset(),
                    },
                )),
                Err((cause, reason)) => letters.push(self.letters.for_message(m, cause, &reason)),
            }
        }
        // Undecodable records first: nothing of theirs can be skipped by a later crash then.
        self.letters.publish(&letters).await?;
        let mut partitions: Vec<i32> = rows.iter().map(|r| r.source_partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        if !rows.is_empty() {
            let min_offset = rows.iter().map(|r| r.source_offset).min().unwrap_or(0);
            let max_offset = rows.iter().map(|r| r.source_offset).max().unwrap_or(0);
            let stored = self
                .store
                .stored_at(&topic, &partitions, min_offset, max_offset)
                .await?;
            let before = rows.len();
            let mut reused = 0u64;
            rows.retain(|r| match already_stored(r, &stored) {
                Stored::Yes => false,
                Stored::No => true,
                Stored::OffsetReused => {
                    reused += 1;
                    true
                }
            });
            let skipped = before - rows.len();
            if skipped > 0 {
                tracing::info!(
                    skipped,
                    "rows already stored before a restart or rebalance; not inserted again"
                );
                metrics::counter!("audit_clickhouse_rows_already_stored_total")
                    .increment(skipped as u64);
            }
            if reused > 0 {
                tracing::warn!(
                    rows = reused,
                    topic = %topic,
                    "offsets already stored hold other events: the topic was re-created; storing the new events"
                );
                metrics::counter!("audit_clickhouse_offsets_reused_total").increment(reused);
            }
        }
        let rows = self.without_replays(&topic, batch, rows).await?;
        for (_, group) in insert_groups(rows) {
            let mut rest: &[EventRow] = &group;
            while let Some((index, error)) = self.store.insert_until_rejected(rest).await? {
                // Dead-lettered before any later row of the partition is inserted: a crash
                // now can neither skip it nor lose it.
                let r = &rest[index];
                let m = originals.get(&(r.source_partition, r.source_offset));
                let letter = self.letters.letter(
                    Cause::Rejected,
                    &format!("ClickHouse rejected the row: {error}"),
                    m.and_then(|m| m.key()),
                    m.and_then(|m| m.payload()),
                    Some(dead_letter::Origin {
                        topic: &topic,
                        partition: r.source_partition,
                        offset: r.source_offset,
                    }),
                );
                self.letters.publish(std::slice::from_ref(&letter)).await?;
                rest = &rest[index + 1..];
            }
        }
        Ok(())
    }
}
