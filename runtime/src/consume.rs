//! The consume -> process -> commit loop.
//!
//! Records are gathered into a batch and handed to a [`BatchHandler`]. A batch is handed over as
//! soon as the consumer has no more records ready (librdkafka's fetch queue is empty), when it
//! holds `max_records`, or `max_wait` after its first record while records keep arriving: under
//! load batches stay large (a backlog fills them from the fetch queue), and a quiet topic adds
//! no wait. Only when the handler returns
//! `Ok` — meaning everything derived from the batch is durable downstream (published and
//! acknowledged, inserted, shipped) — are the batch's offsets stored for commit. A handler error
//! stops the loop without storing, so a restart re-reads the batch: at-least-once, never
//! at-most-once. Handlers deal with bad records themselves (dead letters) and retry transient
//! failures internally, returning `Err` only when they must give up.
//!
//! A durable batch's offsets go to librdkafka's offset store (`enable.auto.offset.store=false`
//! plus an explicit store) and are committed from there asynchronously: the loop goes on with
//! the next batch instead of waiting a broker round trip. Commits are cumulative per partition,
//! so a failed one (reported through the consumer context) is covered by the next; the loop
//! commits what is stored synchronously before it returns. A crash loses at most the commits
//! still in flight: those records are read again (duplicates, never loss). A store refused
//! because a rebalance moved the partition is logged and counted, not fatal: the partition's new
//! owner re-reads the batch.
//!
//! A stage whose output is itself a Kafka produce spends most of a batch waiting for the
//! broker's acknowledgements. [`run_pipelined`] lets a [`PipelinedHandler`] start the next batch
//! while earlier ones are still being acknowledged; offsets are still committed strictly in
//! batch order, each only after its own batch and every earlier one are durable.

use crate::Shutdown;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How records are grouped before they are handled.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    pub max_records: usize,
    pub max_wait: Duration,
    /// Batches are at least this far apart while records keep coming (a batch after a quiet
    /// spell goes at once): for a destination that pays per write, like ClickHouse's parts.
    pub min_interval: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_records: 1_000,
            max_wait: Duration::from_millis(100),
            min_interval: Duration::ZERO,
        }
    }
}

/// What a stage does with a batch.
pub trait BatchHandler {
    /// Returns `Ok` only once everything derived from `batch` is durable.
    fn handle(&mut self, batch: &[OwnedMessage])
        -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What a stage does with a batch when batches may overlap.
pub trait PipelinedHandler {
    /// Resolves once everything derived from its batch is durable; it runs as its own task, so
    /// it owns what it needs (retries included).
    type Delivery: Future<Output = anyhow::Result<()>> + Send + 'static;

    /// Does the batch's work and starts its delivery, in batch order: whatever `submit` enqueues
    /// is enqueued before anything the next call enqueues.
    /// `batch` may be empty when [`PipelinedHandler::wake_at`] asked for a call.
    fn submit(
        &mut self,
        batch: &[OwnedMessage],
    ) -> impl Future<Output = anyhow::Result<Self::Delivery>> + Send;

    /// Records the handler holds outside every submitted batch (waiting for something), as the
    /// lowest held offset per partition: a batch's commit stops there, so a crash re-reads
    /// them instead of skipping them. Asked right after each `submit`.
    fn held_back(&self) -> Vec<(i32, i64)> {
        Vec::new()
    }

    /// When the handler wants `submit` called even if no record arrives (to release what it
    /// holds).
    fn wake_at(&mut self) -> Option<tokio::time::Instant> {
        None
    }

    /// Partitions the handler holds records of (see `held_back`) were revoked: their new owner
    /// reads those records from the last commit, so the handler must let them go unhandled.
    fn revoked(&mut self, _partitions: &[i32]) {}
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
/// committed before returning, as is every batch finished before a handler error.
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
    subscribe(consumer, topics)?;
    let mut stats = RunStats::default();
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(options.max_records);
    let mut none_in_flight = VecDeque::new();
    let mut last_batch: Option<tokio::time::Instant> = None;
    let result = async {
        while !shutdown.is_triggered() {
            fill_batch(
                consumer,
                &mut batch,
                options,
                shutdown,
                &mut none_in_flight,
                &mut stats,
                Pace {
                    wake: None,
                    not_before: last_batch.map(|t| t + options.min_interval),
                },
            )
            .await?;
            retain_assigned(consumer, &mut batch);
            if batch.is_empty() {
                continue;
            }
            last_batch = Some(tokio::time::Instant::now());
            handler
                .handle(&batch)
                .await
                .map_err(ConsumeError::Handler)?;
            committed(consumer, offsets_to_commit(&batch), batch.len(), &mut stats);
            batch.clear();
        }
        Ok(())
    }
    .await;
    commit_stored(consumer);
    result.map(|()| stats)
}

/// Like [`run`], with up to `max_in_flight` batches submitted and not yet durable. When
/// shutdown comes, every submitted batch is awaited and committed before returning; when one
/// fails, the batches before it are still committed and none after it.
pub async fn run_pipelined<C, H>(
    consumer: &StreamConsumer<C>,
    topics: &[&str],
    handler: &mut H,
    options: BatchOptions,
    max_in_flight: usize,
    shutdown: &Shutdown,
) -> Result<RunStats, ConsumeError>
where
    C: ConsumerContext + 'static,
    H: PipelinedHandler,
{
    subscribe(consumer, topics)?;
    let max_in_flight = max_in_flight.max(1);
    let mut stats = RunStats::default();
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(options.max_records);
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(max_in_flight);
    let mut last_batch: Option<tokio::time::Instant> = None;
    let result = async {
        while !shutdown.is_triggered() {
            while in_flight.len() >= max_in_flight {
                finish_head(consumer, &mut in_flight, &mut stats).await?;
            }
            let wake = handler.wake_at();
            fill_batch(
                consumer,
                &mut batch,
                options,
                shutdown,
                &mut in_flight,
                &mut stats,
                Pace {
                    wake,
                    not_before: last_batch.map(|t| t + options.min_interval),
                },
            )
            .await?;
            retain_assigned(consumer, &mut batch);
            release_revoked(consumer, handler);
            let woken = wake.is_some_and(|w| tokio::time::Instant::now() >= w);
            if batch.is_empty() && !woken {
                continue;
            }
            last_batch = Some(tokio::time::Instant::now());
            let delivery = handler
                .submit(&batch)
                .await
                .map_err(ConsumeError::Handler)?;
            let mut offsets = offsets_to_commit(&batch);
            cap_at_held(&mut offsets, &handler.held_back());
            in_flight.push_back(InFlight {
                offsets,
                records: batch.len(),
                delivery: tokio::spawn(delivery),
            });
            metrics::gauge!("audit_consumer_batches_in_flight").set(in_flight.len() as f64);
            batch.clear();
        }
        Ok(())
    }
    .await;
    // Whatever was submitted before a stop or a failed `submit` is still awaited, and committed
    // in order up to the first batch that fails (a failed delivery already emptied the queue).
    let mut drained = Ok(());
    while !in_flight.is_empty() {
        if let Err(e) = finish_head(consumer, &mut in_flight, &mut stats).await {
            drained = Err(e);
            break;
        }
    }
    metrics::gauge!("audit_consumer_batches_in_flight").set(0.0);
    commit_stored(consumer);
    // The first failure is the one to report.
    result.and(drained).map(|()| stats)
}

fn subscribe<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    topics: &[&str],
) -> Result<(), ConsumeError> {
    consumer
        .subscribe(topics)
        .map_err(|source| ConsumeError::Subscribe {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            source,
        })
}

/// Fences a rebalance: records of partitions this consumer no longer owns (revoked while the
/// batch was being gathered) are dropped unhandled. Their new owner reads them from the last
/// commit; handling them here too would race it (two instances inserting the same rows).
fn retain_assigned<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    batch: &mut Vec<OwnedMessage>,
) {
    if batch.is_empty() {
        return;
    }
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the consumer's assignment; keeping the batch");
            return;
        }
    };
    let elements = assignment.elements();
    // A consumer holds few partitions: a scan per record, no allocation on this hot path.
    let owned = |m: &OwnedMessage| {
        elements
            .iter()
            .any(|e| e.partition() == m.partition() && e.topic() == m.topic())
    };
    if batch.iter().all(owned) {
        return;
    }
    let before = batch.len();
    batch.retain(owned);
    let dropped = before - batch.len();
    if dropped > 0 {
        tracing::info!(
            dropped,
            "records of partitions revoked while the batch was gathered; left to their new owner"
        );
        metrics::counter!("audit_consumer_revoked_records_dropped_total").increment(dropped as u64);
    }
}

/// Tells the handler which of the partitions it holds records of are no longer assigned.
fn release_revoked<C: ConsumerContext + 'static, H: PipelinedHandler>(
    consumer: &StreamConsumer<C>,
    handler: &mut H,
) {
    let held = handler.held_back();
    if held.is_empty() {
        return;
    }
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let elements = assignment.elements();
    let revoked: Vec<i32> = held
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !elements.iter().any(|e| e.partition() == *p))
        .collect();
    if !revoked.is_empty() {
        tracing::info!(
            ?revoked,
            "partitions with held records were revoked; leaving them to their new owner"
        );
        handler.revoked(&revoked);
    }
}

/// Lowers each partition's commit to the lowest offset the handler still holds there.
fn cap_at_held(offsets: &mut BTreeMap<(String, i32), i64>, held: &[(i32, i64)]) {
    for &(partition, floor) in held {
        for ((_, p), next) in offsets.iter_mut() {
            if *p == partition {
                *next = (*next).min(floor);
            }
        }
    }
}

/// A submitted batch: what to commit once its delivery succeeds.
struct InFlight {
    offsets: BTreeMap<(String, i32), i64>,
    records: usize,
    delivery: JoinHandle<anyhow::Result<()>>,
}

/// Waits for the oldest batch in flight (pending forever when there is none).
async fn head_delivered(in_flight: &mut VecDeque<InFlight>) -> anyhow::Result<()> {
    match in_flight.front_mut() {
        Some(head) => match (&mut head.delivery).await {
            Ok(result) => result,
            Err(e) => Err(anyhow::anyhow!("the delivery task of a batch failed: {e}")),
        },
        None => std::future::pending().await,
    }
}

/// Waits for the oldest batch in flight and commits it.
async fn finish_head<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    in_flight: &mut VecDeque<InFlight>,
    stats: &mut RunStats,
) -> Result<(), ConsumeError> {
    let delivered = head_delivered(in_flight).await;
    head_finished(consumer, in_flight, delivered, stats)
}

/// Takes the oldest batch off the queue and commits it if `delivered` says it is durable; if
/// not, abandons every batch after it.
fn head_finished<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    in_flight: &mut VecDeque<InFlight>,
    delivered: anyhow::Result<()>,
    stats: &mut RunStats,
) -> Result<(), ConsumeError> {
    let head = in_flight.pop_front();
    if let Err(e) = delivered {
        // Nothing after a failed batch may be committed: the later batches are abandoned
        // (a restart re-reads them from the failed batch on).
        for later in in_flight.drain(..) {
            later.delivery.abort();
        }
        metrics::gauge!("audit_consumer_batches_in_flight").set(0.0);
        return Err(ConsumeError::Handler(e));
    }
    metrics::gauge!("audit_consumer_batches_in_flight").set(in_flight.len() as f64);
    if let Some(head) = head {
        committed(consumer, head.offsets, head.records, stats);
    }
    Ok(())
}

/// Commits a durable batch's offsets and counts it.
fn committed<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    offsets: BTreeMap<(String, i32), i64>,
    records: usize,
    stats: &mut RunStats,
) {
    if offsets.is_empty() {
        // A wake-up batch: what it released is covered by the commits of the batches around it.
        stats.batches += 1;
        return;
    }
    let stored = store(consumer, offsets).and_then(|()| {
        consumer
            .commit_consumer_state(CommitMode::Async)
            .map_err(ConsumeError::Commit)
    });
    if let Err(e) = stored {
        // Commits are cumulative per partition: the next batch's commit covers this one, and
        // if the partition moved, its new owner re-reads the batch (duplicates, never loss).
        tracing::warn!(error = %e, records, "offsets not committed; the next batch's commit covers them");
        metrics::counter!("audit_consumer_commit_failures_total").increment(1);
    }
    stats.records += records as u64;
    stats.batches += 1;
    metrics::counter!("audit_consumer_records_committed_total").increment(records as u64);
}

/// When a batch being gathered must be handed over, or may not be yet.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Hand over whatever is gathered at this time (the handler's own timer).
    wake: Option<tokio::time::Instant>,
    /// Do not hand a batch over for lack of records before this time.
    not_before: Option<tokio::time::Instant>,
}

/// Gathers the next batch; batches in flight that finish meanwhile are committed on the way,
/// so an idle topic does not hold their commits back.
async fn fill_batch<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    batch: &mut Vec<OwnedMessage>,
    options: BatchOptions,
    shutdown: &Shutdown,
    in_flight: &mut VecDeque<InFlight>,
    stats: &mut RunStats,
    pace: Pace,
) -> Result<(), ConsumeError> {
    let Pace { wake, not_before } = pace;
    let mut deadline: Option<tokio::time::Instant> = None;
    while batch.len() < options.max_records {
        let wait = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let woken = async {
            match wake {
                Some(w) => tokio::time::sleep_until(w).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.requested() => return Ok(()),
            _ = wait => return Ok(()),
            _ = woken => return Ok(()),
            delivered = head_delivered(in_flight) => {
                head_finished(consumer, in_flight, delivered, stats)?;
            }
            received = consumer.recv() => match received {
                Ok(message) => {
                    batch.push(message.detach());
                    let now = tokio::time::Instant::now();
                    let open_until = *deadline.get_or_insert(now + options.max_wait);
                    if take_ready(consumer, batch, options.max_records) == Ready::Drained {
                        // Nothing more is waiting in the fetch queue: flush now rather than
                        // wait out max_wait for records that are not coming, unless the last
                        // batch went less than min_interval ago.
                        match not_before {
                            Some(t) if now < t => deadline = Some(open_until.min(t)),
                            _ => return Ok(()),
                        }
                    }
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
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Ready {
    /// The fetch queue had no more records.
    Drained,
    /// The batch filled up, or an error ended the take.
    Stopped,
}

/// Moves the records librdkafka already holds into `batch` without waiting. `recv` is
/// cancel-safe: a poll that finds nothing takes nothing.
fn take_ready<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    batch: &mut Vec<OwnedMessage>,
    max_records: usize,
) -> Ready {
    use futures::FutureExt;
    while batch.len() < max_records {
        match consumer.recv().now_or_never() {
            Some(Ok(message)) => batch.push(message.detach()),
            Some(Err(_)) => return Ready::Stopped, // the select loop logs and backs off
            None => return Ready::Drained,
        }
    }
    Ready::Stopped
}

/// Per partition of a batch, its first and last offsets: where a sink checks whether the batch
/// follows on from what it handled before.
pub fn partition_spans(batch: &[OwnedMessage]) -> std::collections::HashMap<i32, (i64, i64)> {
    let mut spans = std::collections::HashMap::new();
    for m in batch {
        let span = spans
            .entry(m.partition())
            .or_insert((m.offset(), m.offset()));
        *span = (m.offset().min(span.0), m.offset().max(span.1));
    }
    spans
}

/// The offsets to commit for a batch: per partition, one past the highest offset handled.
pub fn offsets_to_commit(batch: &[OwnedMessage]) -> BTreeMap<(String, i32), i64> {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    // Batches come from one or a few partitions, in offset order: remember the last entry
    // instead of building a key (a String) per record.
    let mut last: Option<(&str, i32, i64)> = None;
    for m in batch {
        let offset = m.offset() + 1;
        match &mut last {
            Some((topic, partition, highest))
                if *topic == m.topic() && *partition == m.partition() =>
            {
                *highest = (*highest).max(offset);
            }
            _ => {
                if let Some((topic, partition, highest)) = last {
                    merge_highest(&mut next, topic, partition, highest);
                }
                last = Some((m.topic(), m.partition(), offset));
            }
        }
    }
    if let Some((topic, partition, highest)) = last {
        merge_highest(&mut next, topic, partition, highest);
    }
    next
}

fn merge_highest(
    next: &mut BTreeMap<(String, i32), i64>,
    topic: &str,
    partition: i32,
    offset: i64,
) {
    let entry = next.entry((topic.to_string(), partition)).or_insert(0);
    *entry = (*entry).max(offset);
}

/// Hands a durable batch's offsets to librdkafka's offset store, where commits take them from.
fn store<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    offsets: BTreeMap<(String, i32), i64>,
) -> Result<(), ConsumeError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
            .map_err(ConsumeError::Commit)?;
    }
    consumer.store_offsets(&tpl).map_err(ConsumeError::Commit)
}

/// Commits whatever is stored and not yet committed, waiting for the broker: the last step of a
/// run, so that a clean stop leaves nothing to read again.
fn commit_stored<C: ConsumerContext + 'static>(consumer: &StreamConsumer<C>) {
    match tokio::task::block_in_place(|| consumer.commit_consumer_state(CommitMode::Sync)) {
        Ok(()) => {}
        // Nothing stored since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "final offset commit failed; those records will be read again");
            metrics::counter!("audit_consumer_commit_failures_total").increment(1);
        }
    }
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
    fn commits_stop_at_records_the_handler_still_holds() {
        let batch = [msg("a", 0, 5), msg("a", 1, 9)];
        let mut next = offsets_to_commit(&batch);
        cap_at_held(&mut next, &[(0, 3), (2, 1)]);
        assert_eq!(next[&("a".to_string(), 0)], 3);
        assert_eq!(next[&("a".to_string(), 1)], 10);
        assert_eq!(next.len(), 2);
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
