//! Wiring: a consumed batch of enriched records -> rows -> the rows not yet stored -> one
//! insert per (Kafka partition, month) -> dead letters for what ClickHouse rejects -> `Ok`, so
//! the offsets are committed only after everything is durable.

use crate::encoder::{already_stored, insert_groups, row, EventRow, Origin};
use crate::service::Store;
use audit_runtime::consume::{partition_spans, BatchHandler};
use audit_runtime::replays::RecentIds;
use audit_schemas::{AvroRecord, DeadLetter, EnrichedAuditEvent, Timestamp};
use futures::future::join_all;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::time::Duration;

pub struct ClickHouseSink {
    pub store: Store,
    pub producer: FutureProducer,
    pub dlq_topic: String,
    pub recent: RecentIds,
}

fn letter(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    topic: &str,
    partition: i32,
    offset: i64,
    reason: String,
) -> DeadLetter {
    DeadLetter {
        original_key: key.map(<[u8]>::to_vec),
        original_value: value.map(<[u8]>::to_vec),
        stage: "sink-clickhouse".to_string(),
        reason,
        source_topic: Some(topic.to_string()),
        source_partition: Some(partition),
        source_offset: Some(offset),
        failed_at: Timestamp::now(),
    }
}

impl ClickHouseSink {
    async fn dead_letter(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        metrics::counter!("audit_clickhouse_dead_letters_total").increment(letters.len() as u64);
        let encoded = letters
            .iter()
            .map(|l| Ok((l.original_key.clone(), l.encode()?)))
            .collect::<Result<Vec<_>, audit_schemas::EncodeError>>()?;
        let sends = encoded.iter().map(|(key, value)| {
            let mut record: FutureRecord<[u8], Vec<u8>> =
                FutureRecord::to(&self.dlq_topic).payload(value);
            if let Some(k) = key {
                record = record.key(k.as_slice());
            }
            self.producer.send(record, Duration::from_secs(60))
        });
        for r in join_all(sends).await {
            r.map_err(|(e, _)| anyhow::anyhow!("dead letter not acknowledged: {e}"))?;
        }
        Ok(())
    }
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
        if replays > 0 {
            tracing::info!(
                replays,
                "events published again by an enricher (same event id); not inserted again"
            );
            metrics::counter!("audit_clickhouse_replays_skipped_total").increment(replays as u64);
        }
        for (&partition, &(_, last)) in &spans {
            self.recent.handled(partition, last);
        }
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
            match m.payload().map(EnrichedAuditEvent::decode) {
                Some(Ok(e)) => rows.push(row(
                    e,
                    &topic,
                    Origin {
                        partition: m.partition(),
                        offset: m.offset(),
                    },
                )),
                Some(Err(e)) => letters.push(letter(
                    m.key(),
                    m.payload(),
                    &topic,
                    m.partition(),
                    m.offset(),
                    e.to_string(),
                )),
                None => letters.push(letter(
                    m.key(),
                    None,
                    &topic,
                    m.partition(),
                    m.offset(),
                    "record has no value".into(),
                )),
            }
        }
        let mut partitions: Vec<i32> = rows.iter().map(|r| r.source_partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        if !rows.is_empty() {
            let min_offset = rows.iter().map(|r| r.source_offset).min().unwrap_or(0);
            let stored = self
                .store
                .stored_offsets(&topic, &partitions, min_offset)
                .await?;
            let before = rows.len();
            rows.retain(|r| !already_stored(r, &stored));
            let skipped = before - rows.len();
            if skipped > 0 {
                tracing::info!(
                    skipped,
                    "rows already stored before a restart or rebalance; not inserted again"
                );
                metrics::counter!("audit_clickhouse_rows_already_stored_total")
                    .increment(skipped as u64);
            }
        }
        let mut rows = self.without_replays(&topic, batch, rows).await?;
        for (_, group) in insert_groups(std::mem::take(&mut rows)) {
            let rejected = self.store.insert(&group).await?;
            // Dead-letter before the next insert: a crash after it must not leave a rejected
            // row neither stored nor dead-lettered.
            let group_letters: Vec<DeadLetter> = rejected
                .into_iter()
                .map(|(r, error)| {
                    let m = originals.get(&(r.source_partition, r.source_offset));
                    letter(
                        m.and_then(|m| m.key()),
                        m.and_then(|m| m.payload()),
                        &topic,
                        r.source_partition,
                        r.source_offset,
                        format!("ClickHouse rejected the row: {error}"),
                    )
                })
                .collect();
            self.dead_letter(&group_letters).await?;
        }
        self.dead_letter(&letters).await?;
        Ok(())
    }
}
