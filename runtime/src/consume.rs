//! The consume -> process -> commit loop.
//!
//! Records are gathered into a batch (up to `max_records`, or whatever arrived within `max_wait`
//! of the batch's first record) and handed to a [`BatchHandler`]. Only when the handler returns
//! `Ok` — meaning everything derived from the batch is durable downstream (published and
//! acknowledged, inserted, shipped) — are the batch's offsets committed. A handler error stops the
//! loop without committing, so a restart re-reads the batch: at-least-once, never at-most-once.
//! Handlers deal with bad records themselves (dead letters) and retry transient failures
//! internally, returning `Err` only when they must give up. A failed commit (a rebalance moved
//! the partition) is logged and counted, not fatal: the partition's new owner re-reads the batch.

use crate::Shutdown;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// How records are grouped before they are handled.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    pub max_records: usize,
    pub max_wait: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_records: 1_000,
            max_wait: Duration::from_millis(100),
        }
    }
}

/// What a stage does with a batch.
pub trait BatchHandler {
    /// Returns `Ok` only once everything derived from `batch` is durable.
    fn handle(&mut self, batch: &[OwnedMessage])
        -> impl Future<Output = anyhow::Result<()>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("handler failed; offsets of the failed batch were not committed: {0:#}")]
    Handler(anyhow::Error),
    #[error("cannot commit offsets: {0}")]
    Commit(rdkafka::error::KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: rdkafka::error::KafkaError,
    },
}

/// Counters of one run, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    pub records: u64,
    pub batches: u64,
}

/// Subscribes and runs until shutdown; the batch in hand when shutdown comes is finished and
/// committed before returning.
pub async fn run<C, H>(
    consumer: &StreamConsumer<C>,
    topics: &[&str],
    handler: &mut H,
    options: BatchOptions,
    shutdown: &Shutdown,
) -> Result<RunStats, ConsumeError>
where
    C: ConsumerContext + 'static,
    H: BatchHandler,
{
    consumer
        .subscribe(topics)
        .map_err(|source| ConsumeError::Subscribe {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            source,
        })?;
    let mut stats = RunStats::default();
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(options.max_records);
    while !shutdown.is_triggered() {
        fill_batch(consumer, &mut batch, options, shutdown).await;
        if batch.is_empty() {
            continue;
        }
        handler
            .handle(&batch)
            .await
            .map_err(ConsumeError::Handler)?;
        if let Err(e) = commit(consumer, &batch) {
            // Commits are cumulative per partition: the next batch's commit covers this one, and
            // if the partition moved, its new owner re-reads the batch (duplicates, never loss).
            tracing::warn!(error = %e, records = batch.len(), "offsets not committed; the next commit covers them");
            metrics::counter!("audit_consumer_commit_failures_total").increment(1);
        }
        stats.records += batch.len() as u64;
        stats.batches += 1;
        metrics::counter!("audit_consumer_records_committed_total").increment(batch.len() as u64);
        batch.clear();
    }
    Ok(stats)
}

async fn fill_batch<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    batch: &mut Vec<OwnedMessage>,
    options: BatchOptions,
    shutdown: &Shutdown,
) {
    let mut deadline: Option<tokio::time::Instant> = None;
    while batch.len() < options.max_records {
        let wait = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.requested() => return,
            _ = wait => return,
            received = consumer.recv() => match received {
                Ok(message) => {
                    batch.push(message.detach());
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + options.max_wait);
                }
                Err(e) => {
                    // librdkafka reconnects by itself; the error is worth a log line, not a stop.
                    tracing::warn!(error = %e, "Kafka consumer error");
                    metrics::counter!("audit_consumer_errors_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// The offsets to commit for a batch: per partition, one past the highest offset handled.
pub fn offsets_to_commit(batch: &[OwnedMessage]) -> BTreeMap<(String, i32), i64> {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for m in batch {
        let entry = next
            .entry((m.topic().to_string(), m.partition()))
            .or_insert(0);
        *entry = (*entry).max(m.offset() + 1);
    }
    next
}

fn commit<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    batch: &[OwnedMessage],
) -> Result<(), ConsumeError> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets_to_commit(batch) {
        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
            .map_err(ConsumeError::Commit)?;
    }
    tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync))
        .map_err(ConsumeError::Commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;

    fn msg(topic: &str, partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            topic.to_string(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn commits_one_past_the_highest_offset_per_partition() {
        let batch = [
            msg("a", 0, 5),
            msg("a", 0, 3),
            msg("a", 1, 9),
            msg("b", 0, 0),
        ];
        let next = offsets_to_commit(&batch);
        assert_eq!(next[&("a".to_string(), 0)], 6);
        assert_eq!(next[&("a".to_string(), 1)], 10);
        assert_eq!(next[&("b".to_string(), 0)], 1);
        assert_eq!(next.len(), 3);
    }
}
