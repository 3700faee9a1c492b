//! Wiring: a consumed batch of enriched records -> routed log events -> planned calls ->
//! CloudWatch, with every record that cannot go dead-lettered, and `Ok` only when all is durable.
//! Events CloudWatch rejects go through the circuit breaker (`cloudwatch.breaker`): when most of
//! a call, or a run of events, is rejected for one reason, they are held and sent again with
//! backoff instead of dead-lettered, and `/healthz` says why (check `circuit_breaker`).

use crate::batcher::{plan, Call, LogEvent};
use crate::message::{checkpoint_message, message};
use crate::routing::{Routes, StreamMap};
use crate::service::CloudWatch;
use audit_runtime::breaker::{Circuit, Verdict};
use audit_runtime::consume::{partition_spans, BatchHandler};
use audit_runtime::dead_letter::{self, DeadLetters};
use audit_runtime::replays::RecentIds;
use audit_schemas::chain::checkpoint::CHECKPOINT_TYPE;
use audit_schemas::dead_letter::Cause;
use audit_schemas::{DeadLetter, EnrichedAuditEvent, Timestamp};
use rdkafka::message::{Message, OwnedMessage};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

pub struct CloudWatchSink {
    pub cloudwatch: CloudWatch,
    pub routes: Routes,
    /// `cloudwatch.checkpoint_stream`: where checkpoints go, whatever the routes say.
    pub checkpoint_stream: Option<String>,
    /// The routes as configured and as the stream-map topic changes them; followed on its own
    /// task, taken up here at the start of the next batch.
    pub stream_map: std::sync::Arc<std::sync::RwLock<StreamMap>>,
    /// The stream map's version `routes` was built from.
    pub routes_version: u64,
    pub letters: DeadLetters,
    /// Per partition, the ids shipped lately and where this instance's reading left off.
    pub recent: RecentIds,
    /// Tells events CloudWatch rejects for what they are from a cause that rejects them all
    /// (a clock off, a retention shorter than the backlog): `cloudwatch.breaker`.
    pub circuit: Circuit,
    /// Ends a batch the breaker holds when the sink stops (uncommitted).
    pub shutdown: audit_runtime::Shutdown,
}

/// A CloudWatch rejection's class (a closed set): the breaker's reason class.
fn rejection_class(reason: &str) -> &'static str {
    if reason.contains("too new") {
        "too_new"
    } else if reason.contains("too old") {
        "too_old"
    } else if reason.contains("retention") {
        "expired"
    } else {
        audit_runtime::labels::OTHER
    }
}

/// The time CloudWatch files an event under. The claimed event time when CloudWatch would take
/// it; when the claim is outside CloudWatch's window (older than 14 days, more than 2 hours
/// ahead) the time the pipeline received it, so an implausible claim can neither get a
/// just-received event refused nor filed where retention deletes it at once. The message keeps
/// the claim either way.
pub fn placement_ms(event: &EnrichedAuditEvent, now_ms: i64) -> i64 {
    const MARGIN_MS: i64 = 10 * 60 * 1000;
    let oldest = now_ms - crate::batcher::MAX_AGE_MS + MARGIN_MS;
    let newest = now_ms + crate::batcher::MAX_AHEAD_MS - MARGIN_MS;
    let claimed = event.event.timestamp.as_millis();
    if (oldest..=newest).contains(&claimed) {
        claimed
    } else {
        event.pipeline.received_at.as_millis()
    }
}

impl CloudWatchSink {
    /// Takes up a changed stream map: new routes, their streams created first. A map that does
    /// not compile keeps the routes in use (the mapping was checked when it was read, so this is
    /// a safeguard, said in the log).
    async fn refresh_routes(&mut self) -> anyhow::Result<()> {
        let (version, routes) = {
            let map = self.stream_map.read().unwrap_or_else(|p| p.into_inner());
            if map.version() == self.routes_version {
                return Ok(());
            }
            (map.version(), map.routes())
        };
        match routes {
            Ok(routes) => {
                let streams: Vec<&str> = routes.streams().collect();
                self.cloudwatch.ensure(&streams).await?;
                tracing::info!(
                    version,
                    streams = streams.len(),
                    "stream map changed; new routes in effect"
                );
                self.routes = routes;
            }
            Err(e) => {
                tracing::error!(error = %e, "the changed stream map does not compile; the routes in use stay")
            }
        }
        self.routes_version = version;
        Ok(())
    }
}

impl BatchHandler for CloudWatchSink {
    async fn handle(&mut self, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        self.refresh_routes().await?;
        let mut letters: Vec<DeadLetter> = Vec::new();
        let mut events = Vec::with_capacity(batch.len());
        let now_ms = Timestamp::now().as_millis();
        for (origin, m) in batch.iter().enumerate() {
            let decoded = match dead_letter::decode::<EnrichedAuditEvent, _>(m) {
                Ok(e) => e,
                Err((cause, reason)) => {
                    letters.push(self.letters.for_message(m, cause, &reason));
                    continue;
                }
            };
            let checkpoint = decoded.event.event_type.as_str() == CHECKPOINT_TYPE;
            let stream = match (checkpoint, &self.checkpoint_stream) {
                (true, Some(witness)) => Some(witness.as_str()),
                (true, None) => None,
                (false, _) => self.routes.stream_for(
                    decoded.event.event_type.as_str(),
                    decoded.catalog.as_ref().map(|c| c.event_type.as_str()),
                ),
            };
            let Some(stream) = stream else {
                metrics::counter!("audit_cloudwatch_skipped_total", "event_type" => audit_runtime::labels::event_type(decoded.event.event_type.as_str())).increment(1);
                continue;
            };
            let rendered = if checkpoint {
                checkpoint_message(&decoded)
                    .ok_or_else(|| "its params do not hold a checkpoint".to_string())
            } else {
                message(&decoded).map_err(|e| e.to_string())
            };
            match rendered {
                Ok(text) => events.push(Rendered {
                    stream: stream.to_string(),
                    event_id: decoded.event.event_id,
                    event: LogEvent {
                        timestamp_ms: placement_ms(&decoded, now_ms),
                        message: text,
                        origin,
                    },
                }),
                Err(e) => letters.push(self.letters.for_message(
                    m,
                    Cause::Invalid,
                    &format!("cannot render the event for CloudWatch: {e}"),
                )),
            }
        }
        let spans = partition_spans(batch);
        let resumed: HashSet<i32> = spans
            .iter()
            .filter(|(&partition, &(first, _))| !self.recent.follows_on(partition, first))
            .map(|(&partition, _)| partition)
            .collect();
        if !resumed.is_empty() {
            self.drop_shipped(batch, &mut events, &resumed).await?;
            for &partition in &resumed {
                self.recent.load(partition, spans[&partition].0, []);
            }
        }
        let replays = self
            .recent
            .drop_replays(&mut events, |r| {
                (batch[r.event.origin].partition(), r.event_id)
            })
            .len();
        if replays > 0 {
            tracing::info!(
                replays,
                "events published again by an enricher (same event id); not shipped again"
            );
            metrics::counter!("audit_cloudwatch_duplicates_skipped_total")
                .increment(replays as u64);
        }
        let events = events.into_iter().map(|r| (r.stream, r.event)).collect();
        let planned = plan(events, now_ms);
        for (origin, reason) in planned.rejected {
            let cause = if reason.contains("bytes") {
                Cause::TooLarge
            } else {
                Cause::Unroutable
            };
            letters.push(self.letters.for_message(&batch[origin], cause, &reason));
        }
        for call in &planned.calls {
            let rejected = self.cloudwatch.put(call).await?;
            let rejected = self.settle_rejected(call, rejected).await?;
            let shipped = call.events.len() - rejected.len();
            metrics::counter!("audit_cloudwatch_events_shipped_total", "stream" => call.stream.clone()).increment(shipped as u64);
            for (index, reason) in rejected {
                letters.push(self.letters.for_message(
                    &batch[call.events[index].origin],
                    Cause::Rejected,
                    &reason,
                ));
            }
        }
        self.letters.publish(&letters).await?;
        for (partition, (_, last)) in spans {
            self.recent.handled(partition, last);
        }
        metrics::gauge!("audit_replay_window_ids").set(self.recent.ids_held() as f64);
        metrics::gauge!("audit_replay_window_bytes").set(self.recent.bytes_held() as f64);
        Ok(())
    }
}

/// A log event on its way, with what recognising it again takes.
struct Rendered {
    stream: String,
    event_id: Uuid,
    event: LogEvent,
}

impl CloudWatchSink {
    /// Judges the events CloudWatch rejected from `call` (by index) with the circuit breaker and
    /// returns those to dead-letter. While it is open they are held (this batch is not done,
    /// so nothing is committed): the first is sent again after the breaker's backoff until
    /// CloudWatch takes it (or rejects it for another reason: a dead letter), then the rest are
    /// sent again and judged anew.
    async fn settle_rejected(
        &self,
        call: &Call,
        rejected: Vec<(usize, String)>,
    ) -> anyhow::Result<Vec<(usize, String)>> {
        let mut letters = Vec::new();
        // Each rejection with its place among the events sent with it, and how many were sent.
        let mut pending: Vec<(usize, (usize, String))> =
            rejected.into_iter().map(|r| (r.0, r)).collect();
        let mut sent = call.events.len();
        while !pending.is_empty() {
            let indexed: Vec<(usize, &str, &str)> = pending
                .iter()
                .map(|(at, (_, reason))| (*at, rejection_class(reason), reason.as_str()))
                .collect();
            let verdict = self.circuit.judge_indexed(sent, &indexed);
            drop(indexed);
            if verdict == Verdict::PerRecord {
                letters.extend(pending.into_iter().map(|(_, r)| r));
                break;
            }
            let (_, (first, _)) = pending.remove(0);
            loop {
                tokio::select! {
                    () = self.circuit.wait_for_probe() => {}
                    () = self.shutdown.requested() => anyhow::bail!(
                        "stopping while the circuit breaker holds events CloudWatch rejects; the batch is not committed, so a restart reads it again"
                    ),
                }
                let probe = Call {
                    stream: call.stream.clone(),
                    events: call.events.get(first).cloned().into_iter().collect(),
                };
                let again = self.cloudwatch.put(&probe).await?;
                let Some((_, reason)) = again.into_iter().next() else {
                    self.circuit.accepted(1);
                    break;
                };
                if self.circuit.refused(rejection_class(&reason), &reason) == Verdict::PerRecord {
                    letters.push((first, reason));
                    break;
                }
            }
            let rest = Call {
                stream: call.stream.clone(),
                events: pending
                    .iter()
                    .filter_map(|(_, (i, _))| call.events.get(*i).cloned())
                    .collect(),
            };
            if rest.events.is_empty() {
                break;
            }
            sent = rest.events.len();
            let again = self.cloudwatch.put(&rest).await?;
            pending = again
                .into_iter()
                .filter_map(|(at, reason)| pending.get(at).map(|(_, (i, _))| (at, (*i, reason))))
                .collect();
        }
        letters.sort_by_key(|(i, _)| *i);
        Ok(letters)
    }

    /// Records of `resumed` partitions may have been shipped before a crash or by the
    /// partition's previous owner: those CloudWatch already holds (same stream, same event id,
    /// within the batch's time span) are skipped and counted as the duplicates they would be.
    async fn drop_shipped(
        &self,
        batch: &[OwnedMessage],
        events: &mut Vec<Rendered>,
        resumed: &HashSet<i32>,
    ) -> anyhow::Result<()> {
        let mut spans: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for r in events.iter() {
            if resumed.contains(&batch[r.event.origin].partition()) {
                let t = r.event.timestamp_ms;
                let span = spans.entry(r.stream.as_str()).or_insert((t, t));
                *span = (span.0.min(t), span.1.max(t));
            }
        }
        let mut shipped: HashMap<String, HashSet<Uuid>> = HashMap::new();
        for (stream, (start, end)) in spans {
            let ids = self
                .cloudwatch
                .event_ids_between(stream, start, end)
                .await?;
            shipped.insert(stream.to_string(), ids);
        }
        let before = events.len();
        events.retain(|r| {
            !shipped
                .get(&r.stream)
                .is_some_and(|ids| ids.contains(&r.event_id))
        });
        let skipped = before - events.len();
        if skipped > 0 {
            tracing::info!(skipped, partitions = ?resumed, "records read again were already in CloudWatch; skipped");
            metrics::counter!("audit_cloudwatch_duplicates_skipped_total")
                .increment(skipped as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod breaker_tests {
    use super::*;
    use audit_runtime::breaker::BreakerConfig;

    #[test]
    fn rejections_have_bounded_classes_and_one_stays_a_dead_letter() {
        assert_eq!(
            rejection_class("CloudWatch rejected the event: too new"),
            "too_new"
        );
        assert_eq!(
            rejection_class("CloudWatch rejected the event: older than the group's retention"),
            "expired"
        );
        assert_eq!(rejection_class("anything else"), "other");
        let c = Circuit::new(
            BreakerConfig::default(),
            "sink-cloudwatch",
            audit_runtime::ops::Health::default(),
        );
        let reason = "CloudWatch rejected the event: too old";
        assert_eq!(
            c.judge_indexed(100, &[(3, rejection_class(reason), reason)]),
            Verdict::PerRecord
        );
        // A whole call rejected as too new (the sink's clock is off): held.
        let reason = "CloudWatch rejected the event: too new";
        let all: Vec<(usize, &str, &str)> = (0..30).map(|i| (i, "too_new", reason)).collect();
        assert_eq!(c.judge_indexed(30, &all), Verdict::Open);
    }
}
