//! The enricher's I/O: decoding raw records, holding back the ones whose session is late,
//! publishing enriched events and dead letters, and saying when a batch is durable so its
//! offsets can be committed.
//!
//! What each failure does:
//!
//! | failure | what happens |
//! |---|---|
//! | a raw record does not decode | dead letter (`undecodable`, `no_value`); the batch goes on |
//! | its enriched form exceeds `kafka.message_max_bytes` | dead letter (`too_large`) with the raw record |
//! | the broker refuses one enriched record | dead letter (`rejected`) with the enriched record |
//! | the broker refuses most records for one reason (a topic policy, a size limit) | the circuit breaker (`enricher.breaker`) opens: nothing is dead-lettered for it; the refused records are published again with backoff until the broker takes them, and neither this batch nor any later one is committed meanwhile; `/healthz` says why (check `circuit_breaker`) |
//! | the broker is away (any other produce error) | the batch is published again with backoff; after `PUBLISH_ATTEMPTS` the service stops uncommitted |
//! | the session is not in the directory yet | that record (and later ones of its session) wait in the [`ParkingLot`], up to `enricher.session_wait_ms`; the rest of the batch goes on |
//! | its partition was just assigned and its sessions are still being read | the batch waits for them (see [`crate::ownership`]) |
//! | its partition was revoked meanwhile | the record is left to the partition's new owner |

use crate::chaining::{Chaining, Signed};
use crate::checkpoint_log::CheckpointLog;
use crate::directory::Directory;
use crate::enrich::{enrich, Lookup, RawPosition, Step};
use crate::ownership::{Gate, Ownership};
use crate::parking::{Held, ParkingLot, Release, UnknownSessions};
use crate::rules::RuleSet;
use crate::sessions::Sessions;
use audit_runtime::breaker::{Circuit, Verdict};
use audit_runtime::budget::SizeBudget;
use audit_runtime::consume::PipelinedHandler;
use audit_runtime::dead_letter::{self, DeadLetters, Origin};
use audit_runtime::publish::{Acks, BatchProducer, PublishError, Record, Rejected};
use audit_runtime::retry::{ErrorClass, GaveUp, RetryPolicy};
use audit_runtime::Shutdown;
use audit_schemas::chain::checkpoint;
use audit_schemas::dead_letter::Cause;
use audit_schemas::drops::{self, Drop, DropTally};
use audit_schemas::redaction::Redactor;
use audit_schemas::vocabulary::Vocabulary;
use audit_schemas::{
    AvroRecord, DeadLetter, EnrichedAuditEvent, EventTimeCheck, RawAuditEvent, Timestamp,
};
use futures::future::BoxFuture;
use rdkafka::message::{Message, OwnedMessage};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The tables the followers keep current and every batch reads.
pub struct Tables {
    /// Sessions of the owned raw partitions.
    pub sessions: RwLock<Sessions>,
    pub directory: RwLock<Directory>,
    pub rules: RwLock<RuleSet>,
    /// Session ids the directory follower applied since the enricher last looked: the sessions
    /// whose held records can go on.
    pub arrived_sessions: Mutex<Arrivals>,
    /// Owned raw partitions and whether their sessions are loaded: set by the consumer's
    /// rebalances and the sessions follower, awaited by each batch.
    pub ownership: tokio::sync::watch::Sender<Ownership>,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            sessions: RwLock::default(),
            directory: RwLock::default(),
            rules: RwLock::default(),
            arrived_sessions: Mutex::default(),
            ownership: tokio::sync::watch::Sender::new(Ownership::default()),
        }
    }
}

/// Sessions that arrived in the directory, bounded: past the bound the enricher re-checks every
/// waiting session instead.
#[derive(Default)]
pub struct Arrivals {
    pub sessions: Vec<String>,
    pub overflowed: bool,
}

const MAX_ARRIVALS: usize = 100_000;

impl Tables {
    /// Called by the directory follower for each session record it applies.
    pub fn session_arrived(&self, id: &str) {
        let mut a = self
            .arrived_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if a.sessions.len() >= MAX_ARRIVALS {
            a.overflowed = true;
            a.sessions.clear();
        }
        if !a.overflowed {
            a.sessions.push(id.to_string());
        }
    }
}

/// The enricher's settings that shape one batch's work.
pub struct Options {
    pub raw_topic: String,
    pub enriched_topic: String,
    pub dlq_topic: String,
    /// Where checkpoints go besides the enriched topic (partition = raw partition).
    pub checkpoints_topic: String,
    /// Where a newly owned partition's last checkpoint is read; `None` starts every chain as
    /// if its partition had none (tests without a broker, or no signing key).
    pub checkpoint_log: Option<Arc<CheckpointLog>>,
    pub budget: SizeBudget,
    pub session_wait: Duration,
    pub unknown_session_ttl: Duration,
    /// Most records held back for late sessions at once.
    pub max_waiting: usize,
    /// Most sessions remembered as waited for in vain.
    pub max_unknown_sessions: usize,
    /// An event time further before its receipt than this is flagged TOO_OLD.
    pub max_event_age: Duration,
    /// An event time further after its receipt than this is flagged AHEAD.
    pub max_event_lead: Duration,
    /// Hash chains and digests; `None` with `chain.enabled = false`.
    pub chaining: Option<Chaining>,
    pub vocabulary: Vocabulary,
}

pub struct Enricher {
    pub tables: Arc<Tables>,
    publisher: Publisher,
    letters: DeadLetters,
    pub redactor: Redactor,
    raw_topic: String,
    session_wait: Duration,
    waiting: ParkingLot<Parked>,
    unknown: UnknownSessions,
    max_event_age_us: i64,
    max_event_lead_us: i64,
    /// Behind a mutex only because linking happens in `process(&self)`; never contended.
    chaining: Option<Mutex<Chaining>>,
    checkpoint_log: Option<Arc<CheckpointLog>>,
    vocabulary: Vocabulary,
    /// Tells records the broker refuses for what they are from a cause that refuses them all.
    circuit: Circuit,
    /// Ends a delivery the breaker holds when the enricher stops (uncommitted).
    shutdown: Shutdown,
}

/// A raw record held back for its session: decoded again when released (rare), so nothing is
/// held twice.
#[derive(Debug)]
struct Parked {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    received_at: Timestamp,
}

/// How often a batch waiting for a partition's sessions says so.
const RESTORE_LOG_EVERY: Duration = Duration::from_secs(10);

/// How often a held session is looked up again while records wait.
const WAITING_POLL: Duration = Duration::from_millis(20);

impl Enricher {
    pub fn new(
        tables: Arc<Tables>,
        producer: BatchProducer,
        redactor: Redactor,
        options: Options,
    ) -> Self {
        let letters = DeadLetters::new(
            producer.clone(),
            &options.dlq_topic,
            dead_letter::Stage::Enricher,
            options.budget,
        );
        Self {
            tables,
            publisher: Publisher {
                producer,
                enriched_topic: options.enriched_topic.into(),
                dlq_topic: options.dlq_topic.into(),
                checkpoints_topic: options.checkpoints_topic.into(),
                budget: options.budget,
            },
            letters,
            redactor,
            raw_topic: options.raw_topic,
            session_wait: options.session_wait,
            waiting: ParkingLot::new(options.max_waiting),
            unknown: UnknownSessions::new(
                options.max_unknown_sessions,
                options.unknown_session_ttl,
            ),
            max_event_age_us: options.max_event_age.as_micros().min(i64::MAX as u128) as i64,
            max_event_lead_us: options.max_event_lead.as_micros().min(i64::MAX as u128) as i64,
            chaining: options.chaining.map(Mutex::new),
            checkpoint_log: options.checkpoint_log,
            vocabulary: options.vocabulary,
            circuit: Circuit::new(
                Default::default(),
                dead_letter::Stage::Enricher.as_str(),
                audit_runtime::ops::Health::default(),
            ),
            shutdown: Shutdown::new(),
        }
    }

    /// The circuit breaker (`enricher.breaker`, reporting on the service's `/healthz`) and the
    /// shutdown that ends a delivery it holds; without this call, the default settings and no
    /// health report.
    pub fn with_circuit(mut self, circuit: Circuit, shutdown: Shutdown) -> Self {
        self.circuit = circuit;
        self.shutdown = shutdown;
        self
    }

    fn chaining(&self) -> Option<std::sync::MutexGuard<'_, Chaining>> {
        self.chaining
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Join, rules and redaction for one event, with metrics.
    fn step(&self, raw: RawAuditEvent, position: RawPosition, give_up: bool) -> Step {
        let mut step = {
            let sessions = self
                .tables
                .sessions
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let directory = self
                .tables
                .directory
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let rules = self.tables.rules.read().unwrap_or_else(|p| p.into_inner());
            enrich(
                raw,
                position,
                Lookup {
                    sessions: &sessions,
                    directory: &directory,
                    rules: &rules,
                    vocabulary: &self.vocabulary,
                },
                &self.redactor,
                give_up,
                Timestamp::now(),
            )
        };
        if let Step::Publish { event, .. } = &mut step {
            // The claimed time is kept; the flag tells analysts not to trust it.
            event.event_time = EventTimeCheck::of(
                event.event.timestamp,
                event.pipeline.received_at,
                self.max_event_age_us,
                self.max_event_lead_us,
            );
            if event.event_time != EventTimeCheck::Plausible {
                metrics::counter!("audit_enricher_implausible_event_time_total", "check" => event.event_time.as_str())
                    .increment(1);
            }
        }
        match &step {
            Step::Publish { event, redacted } => {
                if *redacted > 0 {
                    metrics::counter!("audit_enricher_secrets_redacted_total")
                        .increment(*redacted as u64);
                }
                if event.claimed_user_mismatch {
                    metrics::counter!("audit_enricher_claimed_user_mismatch_total").increment(1);
                }
                metrics::counter!("audit_enricher_events_out_total", "enrichment" => event.enrichment.as_str())
                    .increment(1);
            }
            Step::Dropped { drop, groups } => {
                let rule_id = &drop.rule_id;
                // Labels from closed sets only: catalog types, rule ids and the groups rules
                // name; a sender's invented types or groups count as "other".
                let event_type = audit_runtime::labels::event_type(&drop.event_type);
                let rules = self.tables.rules.read().unwrap_or_else(|p| p.into_inner());
                let mut labels: Vec<String> = groups
                    .iter()
                    .map(|g| audit_runtime::labels::configured(g, |g| rules.names_group(g)))
                    .collect();
                labels.sort_unstable();
                labels.dedup();
                if labels.is_empty() {
                    labels.push(String::new());
                }
                for group in labels {
                    metrics::counter!("audit_enricher_events_dropped_total", "event_type" => event_type, "group" => group, "rule" => rule_id.clone())
                        .increment(1);
                }
            }
            Step::AwaitSession(_) => {}
        }
        step
    }

    /// What one raw record becomes: an enriched record or a dead letter to publish, nothing
    /// (dropped by a rule), or `Err(event)` when it must wait for its session.
    fn process(
        &self,
        raw: RawAuditEvent,
        key: Option<&[u8]>,
        value: &[u8],
        position: RawPosition,
        give_up: bool,
    ) -> Result<Option<Out>, Box<RawAuditEvent>> {
        let origin = Origin {
            topic: &self.raw_topic,
            partition: position.partition,
            offset: position.offset,
        };
        match self.step(raw, position, give_up) {
            Step::AwaitSession(raw) => Err(raw),
            Step::Dropped { drop, .. } => Ok(Some(Out::Dropped(drop))),
            Step::Publish { mut event, .. } => {
                if let Some(mut c) = self.chaining() {
                    c.link(&mut event);
                }
                // Not published after all: its link is taken back, or the chain would show a
                // gap where nothing was deleted.
                let unlink = |event: &EnrichedAuditEvent| {
                    if let (Some(mut c), Some(link)) = (self.chaining(), event.chain.as_ref()) {
                        c.unlink(event.pipeline.raw_partition, link);
                    }
                };
                let payload = match event.encode() {
                    Ok(p) => p,
                    Err(e) => {
                        unlink(&event);
                        return Ok(Some(Out::Letter(self.letters.letter(
                            Cause::Invalid,
                            &format!("cannot encode the enriched event: {e}"),
                            key,
                            Some(value),
                            Some(origin),
                        ))));
                    }
                };
                let key_len = key.map_or(0, <[u8]>::len);
                if !self.publisher.budget.fits(key_len, payload.len()) {
                    unlink(&event);
                    return Ok(Some(Out::Letter(self.letters.letter(
                        Cause::TooLarge,
                        &format!(
                            "the enriched event is {} bytes, over kafka.message_max_bytes ({})",
                            payload.len() + key_len,
                            self.publisher.budget.message_max_bytes()
                        ),
                        key,
                        Some(value),
                        Some(origin),
                    ))));
                }
                Ok(Some(Out::Record(OutRecord {
                    to: Target::Enriched,
                    key: key.map(<[u8]>::to_vec),
                    payload,
                    origin: (position.partition, position.offset),
                })))
            }
        }
    }

    fn hold(&mut self, session: &str, m: &OwnedMessage, position: RawPosition, out: &mut Vec<Out>) {
        let held = Held {
            partition: position.partition,
            offset: position.offset,
            item: Parked {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                received_at: position.received_at,
            },
        };
        let pushed_out = self
            .waiting
            .park(session, held, Instant::now() + self.session_wait);
        if !pushed_out.is_empty() {
            metrics::counter!("audit_enricher_waiting_released_early_total")
                .increment(pushed_out.len() as u64);
        }
        self.released(pushed_out, out);
    }

    /// Processes released records, in the order they were held.
    fn released(&mut self, released: Vec<(Held<Parked>, Release)>, out: &mut Vec<Out>) {
        let now = Instant::now();
        for (held, why) in released {
            let position = RawPosition {
                partition: held.partition,
                offset: held.offset,
                received_at: held.item.received_at,
            };
            let key = held.item.key.as_deref();
            let value = &held.item.value;
            let raw = match RawAuditEvent::decode(value) {
                Ok(raw) => raw,
                Err(e) => {
                    out.push(Out::Letter(self.letters.letter(
                        Cause::Undecodable,
                        &e.to_string(),
                        key,
                        Some(value),
                        Some(Origin {
                            topic: &self.raw_topic,
                            partition: held.partition,
                            offset: held.offset,
                        }),
                    )));
                    continue;
                }
            };
            let session = raw.session_id.clone();
            let give_up = why == Release::GaveUp;
            let result = match self.process(raw, key, value, position, give_up) {
                // The session went away again between arrival and now: it is unknown.
                Err(raw) => self
                    .process(*raw, key, value, position, true)
                    .unwrap_or(None),
                Ok(o) => o,
            };
            if give_up {
                if let Some(s) = session.as_deref() {
                    self.unknown.remember(s, now);
                }
            }
            out.extend(result);
        }
    }

    /// Releases what waits for sessions that arrived or whose wait ran out.
    fn release_ready(&mut self, out: &mut Vec<Out>) {
        if self.waiting.is_empty() {
            // Nothing waits: arrivals matter to no one.
            let mut a = self
                .tables
                .arrived_sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            a.sessions.clear();
            a.overflowed = false;
            return;
        }
        let arrivals = std::mem::take(
            &mut *self
                .tables
                .arrived_sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let mut released = Vec::new();
        if arrivals.overflowed {
            tracing::debug!("many sessions arrived at once; checking every waiting session");
        }
        for s in &arrivals.sessions {
            self.unknown.forget(s);
            released.extend(self.waiting.release(s, Release::Arrived));
        }
        if arrivals.overflowed {
            let known: Vec<String> = {
                let sessions = self
                    .tables
                    .sessions
                    .read()
                    .unwrap_or_else(|p| p.into_inner());
                self.waiting_sessions()
                    .filter(|s| sessions.get(s).is_some())
                    .collect()
            };
            for s in known {
                released.extend(self.waiting.release(&s, Release::Arrived));
            }
        }
        for (_, r) in self.waiting.release_expired(Instant::now()) {
            metrics::counter!("audit_enricher_session_wait_expired_total")
                .increment(r.len() as u64);
            released.extend(r);
        }
        self.released(released, out);
    }

    fn waiting_sessions(&self) -> impl Iterator<Item = String> + '_ {
        self.waiting.sessions().map(str::to_string)
    }

    /// Waits until the sessions of every partition in the batch are loaded; returns the
    /// partitions that are no longer owned (their records are left to the new owner).
    async fn await_sessions(&self, batch: &[OwnedMessage]) -> Vec<i32> {
        let mut partitions: Vec<i32> = batch.iter().map(Message::partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut ownership = self.tables.ownership.subscribe();
        let started = Instant::now();
        loop {
            let waiting: Vec<i32> = {
                let o = ownership.borrow_and_update();
                partitions
                    .iter()
                    .copied()
                    .filter(|p| o.gate(*p) == Gate::Wait)
                    .collect()
            };
            if waiting.is_empty() {
                break;
            }
            match tokio::time::timeout(RESTORE_LOG_EVERY, ownership.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => tracing::info!(
                    partitions = ?waiting,
                    waited_s = started.elapsed().as_secs(),
                    "waiting for the sessions of newly assigned partitions"
                ),
            }
        }
        let o = ownership.borrow();
        partitions
            .into_iter()
            .filter(|p| o.gate(*p) == Gate::NotOwned)
            .collect()
    }
}

/// What one record turns into.
enum Out {
    Record(OutRecord),
    Letter(DeadLetter),
    /// Dropped by a rule: counted in the batch's drop summaries.
    Dropped(Drop),
}

impl Enricher {
    /// Starts a chain for every partition owned (ready) or in the batch that has none, each
    /// naming its partition's last checkpoint, read from the checkpoints topic (retried while
    /// the broker is away: a chain that named none would hide a deleted epoch before it).
    async fn start_chains(&self, batch: &[OwnedMessage], not_owned: &[i32]) {
        let wanted: BTreeSet<i32> = {
            let Some(c) = self.chaining() else {
                return;
            };
            let o = self.tables.ownership.borrow();
            batch
                .iter()
                .map(|m| m.partition())
                .filter(|p| !not_owned.contains(p))
                .chain(o.ready())
                .filter(|p| !c.has(*p))
                .collect()
        };
        for p in wanted {
            let prev = match (
                &self.checkpoint_log,
                self.chaining().is_some_and(|c| c.signs()),
            ) {
                (Some(log), true) => self.previous_checkpoint(log, p).await,
                _ => checkpoint::no_previous(),
            };
            if let Some(mut c) = self.chaining() {
                c.start(p, prev);
            }
        }
    }

    async fn previous_checkpoint(&self, log: &CheckpointLog, partition: i32) -> String {
        let mut wait = Duration::from_millis(200);
        loop {
            match log.last(partition).await {
                Ok(Some(c)) => {
                    tracing::info!(partition, previous_epoch = %c.epoch, tree_size = c.tree_size, "chain started after the partition's last checkpoint");
                    return c.id();
                }
                Ok(None) => return checkpoint::no_previous(),
                Err(e) => {
                    tracing::warn!(partition, error = %format!("{e:#}"), "cannot read the partition's last checkpoint; retrying");
                    if self.shutdown.is_triggered() {
                        return checkpoint::no_previous();
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn position_of(m: &OwnedMessage) -> RawPosition {
    let received_at = m
        .timestamp()
        .to_millis()
        .map(|ms| Timestamp::from_micros(ms.saturating_mul(1_000)))
        .unwrap_or_else(Timestamp::now);
    RawPosition {
        partition: m.partition(),
        offset: m.offset(),
        received_at,
    }
}

impl PipelinedHandler for Enricher {
    type Delivery = BoxFuture<'static, anyhow::Result<()>>;

    async fn submit(&mut self, batch: &[OwnedMessage]) -> anyhow::Result<Self::Delivery> {
        metrics::counter!("audit_enricher_events_in_total").increment(batch.len() as u64);
        let not_owned = self.await_sessions(batch).await;
        self.start_chains(batch, &not_owned).await;
        let mut outs: Vec<Out> = Vec::with_capacity(batch.len());
        // Released records are older than this batch's: they go first.
        self.release_ready(&mut outs);
        let now = Instant::now();
        for m in batch {
            if not_owned.contains(&m.partition()) {
                metrics::counter!("audit_consumer_revoked_records_dropped_total").increment(1);
                continue;
            }
            let position = position_of(m);
            let raw = match dead_letter::decode::<RawAuditEvent, _>(m) {
                Ok(raw) => raw,
                Err((cause, reason)) => {
                    outs.push(Out::Letter(self.letters.for_message(m, cause, &reason)));
                    continue;
                }
            };
            let session = raw.session_id.clone();
            if let Some(s) = session.as_deref() {
                if self.waiting.is_waiting(s) {
                    // Behind an earlier event of its session: keeps the session's order.
                    self.hold(s, m, position, &mut outs);
                    continue;
                }
            }
            let give_up = session
                .as_deref()
                .is_some_and(|s| self.unknown.contains(s, now));
            let value = m.payload().unwrap_or_default();
            match self.process(raw, m.key(), value, position, give_up) {
                Ok(out) => outs.extend(out),
                Err(raw) => {
                    let s = raw.session_id.as_deref().unwrap_or_default().to_string();
                    self.hold(&s, m, position, &mut outs);
                }
            }
        }
        metrics::gauge!("audit_enricher_waiting_for_session").set(self.waiting.len() as f64);
        metrics::gauge!("audit_enricher_unknown_sessions_remembered")
            .set(self.unknown.len() as f64);

        // Enriched events first, then dead letters, each keeping the raw record's key.
        let mut records = Vec::with_capacity(outs.len());
        let mut letters = Vec::new();
        let mut drops = DropTally::default();
        for out in outs {
            match out {
                Out::Record(r) => records.push(r),
                Out::Letter(l) => letters.push(l),
                Out::Dropped(d) => drops.add(d),
            }
        }
        // What the rules dropped goes with the batch: on record exactly when the batch is done.
        for mut summary in drops.take_summaries(Timestamp::now()) {
            if let Some(mut c) = self.chaining() {
                c.link(&mut summary);
            }
            let origin = (summary.pipeline.raw_partition, summary.pipeline.raw_offset);
            records.push(OutRecord {
                to: Target::Enriched,
                key: Some(drops::SUMMARY_TYPE.as_bytes().to_vec()),
                payload: summary.encode()?,
                origin,
            });
        }
        for l in &letters {
            records.push(OutRecord {
                to: Target::DeadLetters,
                key: l.original_key.clone(),
                payload: l.encode()?,
                origin: (
                    l.source_partition.unwrap_or(-1),
                    l.source_offset.unwrap_or(-1),
                ),
            });
        }

        // Enqueued now, so batches reach the broker in order; acknowledged in the background
        // while the next batch is prepared.
        let after_ack = self.chaining().map(|mut c| c.end_batch());
        let publisher = self.publisher.clone();
        let dead_letters = self.letters.clone();
        let raw_topic = self.raw_topic.clone();
        let first = publisher.enqueue(&records).await;
        let circuit = self.circuit.clone();
        let shutdown = self.shutdown.clone();
        Ok(Box::pin(async move {
            let first = match first {
                Ok(acks) => acks.acknowledged().await,
                Err(e) => Err(e),
            };
            let rejected = publisher.retry_until_acknowledged(&records, first).await?;
            dead_letters.published(&letters);
            if let Some(r) = rejected.iter().find(|r| {
                matches!(
                    records.get(r.index).map(|r| r.to),
                    Some(Target::DeadLetters)
                )
            }) {
                anyhow::bail!("the broker refused a dead letter ({}); check audit.dlq's max.message.bytes against kafka.message_max_bytes", r.error);
            }
            // Records the broker refused one by one: through the breaker, then dead letters.
            let rejected = publisher
                .settle_refused(&circuit, &shutdown, &records, rejected)
                .await?;
            let mut refused = Vec::new();
            for r in rejected {
                let Some(record) = records.get(r.index) else {
                    continue;
                };
                refused.push(dead_letters.letter(
                    Cause::Rejected,
                    &format!("the broker refused the enriched event: {}", r.error),
                    record.key.as_deref(),
                    Some(&record.payload),
                    Some(Origin {
                        topic: &raw_topic,
                        partition: record.origin.0,
                        offset: record.origin.1,
                    }),
                ));
            }
            dead_letters.publish(&refused).await?;
            if let Some(after_ack) = after_ack {
                let signed = after_ack.acknowledged().await;
                publisher.publish_signed(&signed).await?;
                signed.published();
            }
            Ok(())
        }))
    }

    fn held_back(&self) -> Vec<(i32, i64)> {
        self.waiting.floors().collect()
    }

    fn revoked(&mut self, partitions: &[i32]) {
        if let Some(mut c) = self.chaining() {
            c.forget(partitions);
        }
        let dropped = self.waiting.forget_partitions(partitions);
        metrics::counter!("audit_enricher_waiting_left_on_revoke_total").increment(dropped as u64);
        metrics::gauge!("audit_enricher_waiting_for_session").set(self.waiting.len() as f64);
    }

    fn wake_at(&mut self) -> Option<tokio::time::Instant> {
        let waiting = self
            .waiting
            .next_deadline()
            .map(|deadline| deadline.min(Instant::now() + WAITING_POLL));
        // An idle enricher still signs what it linked last.
        let digest = self.chaining().and_then(|c| c.wake_at());
        let at = match (waiting, digest) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(tokio::time::Instant::from_std(at))
    }
}

/// A batch's publication is retried for as long as the broker stays away, like every stage's
/// writes: exiting would not bring the broker back, and a restarted enricher would face the same
/// outage with its chains broken. Meanwhile the consumer fetches nothing more (at most
/// `max_in_flight` batches wait), so memory stays bounded; backoff stays short so a returning
/// broker is used within seconds.
const PUBLISH_RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(200),
    max_backoff: Duration::from_secs(5),
    max_attempts: None,
};

/// A produce error as the breaker compares it: the error code's name (a closed set) and the
/// message.
fn refusal(error: &rdkafka::error::KafkaError) -> (String, String) {
    let class = match error {
        rdkafka::error::KafkaError::MessageProduction(code) => format!("{code:?}"),
        _ => audit_runtime::labels::OTHER.to_string(),
    };
    (class, error.to_string())
}

/// The breaker's verdict on the records refused out of `published` (each by its place among
/// them).
fn judge(circuit: &Circuit, published: usize, refused: &[(usize, Rejected)]) -> Verdict {
    let reasons: Vec<(usize, (String, String))> = refused
        .iter()
        .map(|(at, r)| (*at, refusal(&r.error)))
        .collect();
    let indexed: Vec<(usize, &str, &str)> = reasons
        .iter()
        .map(|(i, (c, r))| (*i, c.as_str(), r.as_str()))
        .collect();
    circuit.judge_indexed(published, &indexed)
}

/// Where an output record goes.
#[derive(Clone, Copy)]
enum Target {
    Enriched,
    DeadLetters,
    /// The checkpoints topic, at the partition of the record's raw partition.
    Checkpoints,
}

/// One record to publish, owned so a batch's delivery can outlive the consumer's batch.
#[derive(Clone)]
struct OutRecord {
    to: Target,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// The raw record's partition and offset.
    origin: (i32, i64),
}

/// The producer and the topics output goes to; cheap to clone into each batch's delivery.
#[derive(Clone)]
struct Publisher {
    producer: BatchProducer,
    enriched_topic: Arc<str>,
    dlq_topic: Arc<str>,
    checkpoints_topic: Arc<str>,
    budget: SizeBudget,
}

impl Publisher {
    /// Enqueues every record in order, waiting while the producer's queue is full.
    async fn enqueue(&self, records: &[OutRecord]) -> Result<Arc<Acks>, PublishError> {
        self.producer
            .publish(records.iter().map(|r| Record {
                topic: match r.to {
                    Target::Enriched => &self.enriched_topic,
                    Target::DeadLetters => &self.dlq_topic,
                    Target::Checkpoints => &self.checkpoints_topic,
                },
                partition: matches!(r.to, Target::Checkpoints).then_some(r.origin.0),
                key: r.key.as_deref(),
                payload: &r.payload,
            }))
            .await
    }

    /// Judges the records the broker refused one by one (indexes into `records`) with the
    /// circuit breaker and returns those to dead-letter. While it is open they are held: the
    /// first is published again after the breaker's backoff until the broker takes it (or
    /// refuses it for another reason: a dead letter), then the rest are published again and
    /// judged anew. Meanwhile this delivery is not done, so neither its batch nor any later
    /// one is committed.
    async fn settle_refused(
        &self,
        circuit: &Circuit,
        shutdown: &Shutdown,
        records: &[OutRecord],
        rejected: Vec<Rejected>,
    ) -> anyhow::Result<Vec<Rejected>> {
        let mut letters = Vec::new();
        // The refused records, each with its place among those published with it (what the
        // breaker's run rule orders by), and how many were published.
        let mut pending: Vec<(usize, Rejected)> =
            rejected.into_iter().map(|r| (r.index, r)).collect();
        let mut published = records.len();
        while !pending.is_empty() {
            if judge(circuit, published, &pending) == Verdict::PerRecord {
                letters.extend(pending.into_iter().map(|(_, r)| r));
                break;
            }
            let (_, first) = pending.remove(0);
            loop {
                tokio::select! {
                    () = circuit.wait_for_probe() => {}
                    () = shutdown.requested() => anyhow::bail!(
                        "stopping while the circuit breaker holds records the broker refuses; their batch is not committed, so a restart reads it again"
                    ),
                }
                let probe = [records[first.index].clone()];
                let refused = self.publish_again(&probe).await?;
                let Some(again) = refused.into_iter().next() else {
                    circuit.accepted(1);
                    break;
                };
                let (class, reason) = refusal(&again.error);
                if circuit.refused(&class, &reason) == Verdict::PerRecord {
                    letters.push(Rejected {
                        index: first.index,
                        error: again.error,
                    });
                    break;
                }
            }
            // The rest, published again together and judged as a batch of their own.
            let rest: Vec<OutRecord> = pending
                .iter()
                .map(|(_, r)| records[r.index].clone())
                .collect();
            let refused = self.publish_again(&rest).await?;
            published = rest.len();
            pending = refused
                .into_iter()
                .filter_map(|again| {
                    pending.get(again.index).map(|(_, r)| {
                        (
                            again.index,
                            Rejected {
                                index: r.index,
                                error: again.error,
                            },
                        )
                    })
                })
                .collect();
        }
        letters.sort_by_key(|r| r.index);
        Ok(letters)
    }

    /// Publishes `records` again until acknowledged; returns those refused one by one.
    async fn publish_again(&self, records: &[OutRecord]) -> anyhow::Result<Vec<Rejected>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let first = match self.enqueue(records).await {
            Ok(acks) => acks.acknowledged().await,
            Err(e) => Err(e),
        };
        self.retry_until_acknowledged(records, first).await
    }

    /// Publishes digest and checkpoint events (checkpoints to the enriched topic, for the
    /// sinks, and to the checkpoints topic, for the next owner) and waits for their
    /// acknowledgement, retried like a batch (a statement published twice is the same signed
    /// statement twice).
    async fn publish_signed(&self, signed: &Signed) -> anyhow::Result<()> {
        if signed.digests.is_empty() && signed.checkpoints.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(signed.digests.len() + 2 * signed.checkpoints.len());
        for d in &signed.digests {
            records.push(OutRecord {
                to: Target::Enriched,
                key: Some(audit_schemas::chain::DIGEST_TYPE.as_bytes().to_vec()),
                payload: d.encode()?,
                origin: (-1, -1),
            });
        }
        let now = Timestamp::now();
        for stated in &signed.checkpoints {
            let c = &stated.checkpoint;
            let payload = crate::chaining::checkpoint_event(stated, now).encode()?;
            let key = c.raw_partition.to_string().into_bytes();
            records.push(OutRecord {
                to: Target::Enriched,
                key: Some(key.clone()),
                payload: payload.clone(),
                origin: (c.raw_partition, -1),
            });
            records.push(OutRecord {
                to: Target::Checkpoints,
                key: Some(key),
                payload,
                origin: (c.raw_partition, -1),
            });
        }
        let first = match self.enqueue(&records).await {
            Ok(acks) => acks.acknowledged().await,
            Err(e) => Err(e),
        };
        let rejected = self.retry_until_acknowledged(&records, first).await?;
        anyhow::ensure!(
            rejected.is_empty(),
            "the broker refused a chain digest or checkpoint: {:?}",
            rejected.first().map(|r| r.error.to_string())
        );
        Ok(())
    }

    /// A broker restart or leader move can fail records the producer already retried; the
    /// whole batch is published again (records that did land become duplicates downstream,
    /// never losses, and a retried batch can land after its successors) until the broker takes
    /// it; only a setting or permission error fails the batch, which stops the service. Records
    /// refused one by one are returned, not retried.
    async fn retry_until_acknowledged(
        &self,
        records: &[OutRecord],
        first: Result<Vec<audit_runtime::publish::Rejected>, PublishError>,
    ) -> anyhow::Result<Vec<audit_runtime::publish::Rejected>> {
        let mut first = Some(first);
        let result = PUBLISH_RETRY
            .run(
                "publishing a batch",
                |e: &PublishError| match e {
                    PublishError::Enqueue { source, .. } => {
                        audit_runtime::publish::classify(source)
                    }
                    PublishError::NotAcknowledged(_) => ErrorClass::Retryable,
                },
                |_| metrics::counter!("audit_enricher_publish_retries_total").increment(1),
                || {
                    let taken = first.take();
                    async move {
                        match taken {
                            Some(result) => result,
                            None => self.enqueue(records).await?.acknowledged().await,
                        }
                    }
                },
            )
            .await;
        result.map_err(|e| match e {
            GaveUp::Exhausted { attempts, last } => {
                anyhow::anyhow!("publishing a batch failed {attempts} times: {last}")
            }
            GaveUp::PerRecord(e) | GaveUp::Fatal(e) => anyhow::anyhow!("publishing a batch: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    fn refused(at: usize, code: RDKafkaErrorCode) -> (usize, Rejected) {
        (
            at,
            Rejected {
                index: at,
                error: KafkaError::MessageProduction(code),
            },
        )
    }

    fn circuit() -> Circuit {
        Circuit::new(
            Default::default(),
            "enricher",
            audit_runtime::ops::Health::default(),
        )
    }

    #[test]
    fn one_refused_record_among_good_ones_is_a_dead_letter() {
        let c = circuit();
        let one = [refused(7, RDKafkaErrorCode::MessageSizeTooLarge)];
        for _ in 0..50 {
            assert_eq!(judge(&c, 100, &one), Verdict::PerRecord);
        }
        assert!(!c.is_tripped());
    }

    #[test]
    fn most_of_a_batch_refused_for_one_reason_holds_it() {
        let c = circuit();
        let many: Vec<_> = (0..60)
            .filter(|i| i % 5 != 0)
            .map(|i| refused(i, RDKafkaErrorCode::PolicyViolation))
            .collect();
        assert_eq!(judge(&c, 60, &many), Verdict::Open);
        assert!(c.is_tripped());
        let State::Open(trip) = c.state() else {
            panic!("open");
        };
        assert_eq!(trip.class, "PolicyViolation");
    }

    use audit_runtime::breaker::State;
}
