//! Wiring: a consumed batch of enriched records -> rows -> the rows not yet stored -> one
//! insert per (Kafka partition, month) -> dead letters for what ClickHouse rejects -> `Ok`, so
//! the offsets are committed only after everything is durable.
//!
//! | failure | what happens |
//! |---|---|
//! | a record does not decode | dead letter (`undecodable`, `no_value`) |
//! | ClickHouse rejects a row (its values, a constraint) | found by bisection; dead letter (`rejected`), published before the batch's offsets are committed |
//! | ClickHouse rejects (nearly) every row for one reason (a column dropped or renamed under the sink, a failing materialized view, a constraint every row breaks) | the circuit breaker ([`audit_runtime::breaker`], `clickhouse.breaker`) opens: nothing is dead-lettered for it, nothing committed; the rows are held and the first is tried again with backoff (up to `probe_max_ms`) until it goes in, then the sink goes on; `/healthz` says why (503, check `circuit_breaker`) |
//! | ClickHouse is away, read-only, out of disk or memory, the table missing, too many parts | the insert is retried with backoff and jitter, as long as it takes; nothing is dead-lettered |
//! | wrong credentials or permissions | the sink stops, uncommitted, saying which setting to check |
//! | a partition was revoked while its batch was in hand | its records are not inserted (the runtime drops them; the new owner reads them) |

use crate::encoder::{already_stored, insert_groups, row, ChainSkip, EventRow, Origin, Stored};
use crate::service::{error_name, Store};
use audit_runtime::breaker::{Circuit, Verdict};
use audit_runtime::consume::{partition_spans, BatchHandler};
use audit_runtime::dead_letter::{self, DeadLetters};
use audit_runtime::replays::RecentIds;
use audit_runtime::Shutdown;
use audit_schemas::dead_letter::Cause;
use audit_schemas::{DeadLetter, EnrichedAuditEvent};
use rdkafka::message::{Message, OwnedMessage};
use std::collections::HashMap;

pub struct ClickHouseSink {
    pub store: Store,
    pub letters: DeadLetters,
    pub recent: RecentIds,
    /// Tells rows refused for what they are (dead letters) from a cause that refuses them all.
    pub circuit: Circuit,
    /// A stop requested while the breaker holds rows ends the batch uncommitted.
    pub shutdown: Shutdown,
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
        // Replays first: every row of the batch, stored before a restart or not, puts its id in
        // the window, or a replay of a row stored but not committed before a crash would pass.
        let mut rows = self.without_replays(&topic, batch, rows).await?;
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
        for (_, group) in insert_groups(rows) {
            let refused = self.store_group(group).await?;
            let letters: Vec<DeadLetter> = refused
                .iter()
                .map(|(r, error)| {
                    let m = originals.get(&(r.source_partition, r.source_offset));
                    self.letters.letter(
                        Cause::Rejected,
                        &format!("ClickHouse rejected the row: {error}"),
                        m.and_then(|m| m.key()),
                        m.and_then(|m| m.payload()),
                        Some(dead_letter::Origin {
                            topic: &topic,
                            partition: r.source_partition,
                            offset: r.source_offset,
                        }),
                    )
                })
                .collect();
            // Published before the batch's offsets are committed. Rows after a rejected one
            // may be stored before its letter is out; a crash in between loses nothing: the
            // batch is read again, the stored rows are recognised by (offset, event id) and
            // the rejected one is refused and dead-lettered again.
            self.letters.publish(&letters).await?;
        }
        Ok(())
    }
}

impl ClickHouseSink {
    /// Inserts one insert group (one partition and month, in offset order) and returns the rows
    /// ClickHouse refused for what they are, with its error: the dead letters. Refusals go
    /// through the circuit breaker first: when it opens, the refused rows and those not tried
    /// yet are held (not dead-lettered; the batch is not done, so nothing is committed) and the
    /// first of them is probed until it goes in; then the rest is inserted as usual.
    async fn store_group(
        &mut self,
        group: Vec<EventRow>,
    ) -> anyhow::Result<Vec<(EventRow, String)>> {
        let mut todo = group;
        let mut letters: Vec<(EventRow, String)> = Vec::new();
        while !todo.is_empty() {
            let (refused, tripped_at) = self.insert_pass(&todo).await?;
            let reasons: Vec<(&str, &str)> = refused
                .iter()
                .map(|(_, e)| (error_name(e), e.as_str()))
                .collect();
            let tripped = tripped_at.is_some()
                || self.circuit.judge_batch(todo.len(), &reasons) == Verdict::Open;
            drop(reasons);
            if !tripped {
                let mut refused = refused.into_iter().peekable();
                for (i, row) in todo.into_iter().enumerate() {
                    if let Some((_, error)) = refused.next_if(|(at, _)| *at == i) {
                        letters.push((row, error));
                    }
                }
                break;
            }
            // Held: the rows refused in this pass and those after the trip, in offset order.
            let untried = tripped_at.unwrap_or(todo.len());
            let refused_at: std::collections::HashSet<usize> =
                refused.iter().map(|(at, _)| *at).collect();
            let held: Vec<EventRow> = todo
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i >= untried || refused_at.contains(i))
                .map(|(_, row)| row)
                .collect();
            let mut held = held.into_iter();
            let Some(first) = held.next() else {
                break;
            };
            if let Some(error) = self.probe(&first).await? {
                letters.push((first, error));
            }
            todo = held.collect();
        }
        letters.sort_by_key(|(r, _)| r.source_offset);
        Ok(letters)
    }

    /// Inserts `rows` around the ones ClickHouse refuses: the refused ones by index with the
    /// error, and the index the breaker opened at (that row and the rest were not inserted).
    async fn insert_pass(
        &self,
        rows: &[EventRow],
    ) -> anyhow::Result<(Vec<(usize, String)>, Option<usize>)> {
        let mut refused = Vec::new();
        let mut start = 0;
        while start < rows.len() {
            let Some((index, error)) = self.store.insert_until_rejected(&rows[start..]).await?
            else {
                self.circuit.accepted(rows.len() - start);
                break;
            };
            self.circuit.accepted(index);
            let at = start + index;
            let verdict = self.circuit.refused(error_name(&error), &error);
            refused.push((at, error));
            if verdict == Verdict::Open {
                return Ok((refused, Some(at + 1)));
            }
            start = at + 1;
        }
        Ok((refused, None))
    }

    /// Probes the open breaker with one held row, after its backoff, until ClickHouse takes
    /// the row (`None`) or refuses it for another reason (`Some(error)`: a dead letter).
    async fn probe(&self, row: &EventRow) -> anyhow::Result<Option<String>> {
        loop {
            tokio::select! {
                () = self.circuit.wait_for_probe() => {}
                () = self.shutdown.requested() => anyhow::bail!(
                    "stopping while the circuit breaker holds rows ClickHouse refuses; their offsets are not committed, so a restart reads them again"
                ),
            }
            match self
                .store
                .insert_until_rejected(std::slice::from_ref(row))
                .await?
            {
                None => {
                    self.circuit.accepted(1);
                    return Ok(None);
                }
                Some((_, error)) => {
                    if self.circuit.refused(error_name(&error), &error) == Verdict::PerRecord {
                        return Ok(Some(error));
                    }
                }
            }
        }
    }
}
