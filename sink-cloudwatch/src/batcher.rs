//! Pure planning of PutLogEvents calls under every CloudWatch limit (moto enforces none of
//! them, so this is where they are kept):
//!
//! - at most 10,000 events and 1,048,576 bytes per call, counting each message's UTF-8 bytes
//!   plus 26;
//! - events in chronological order within a call, spanning at most 24 hours;
//! - an event of at most 256 KiB (message plus 26 bytes): a larger one is dead-lettered whole
//!   rather than truncated, so the audit record stays intact in the dead-letter topic;
//! - no event older than 14 days or more than 2 hours ahead of now: dead-lettered with the
//!   reason, since CloudWatch would reject it.

use std::collections::BTreeMap;

pub const MAX_EVENTS_PER_CALL: usize = 10_000;
pub const MAX_BYTES_PER_CALL: usize = 1_048_576;
pub const EVENT_OVERHEAD_BYTES: usize = 26;
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
pub const MAX_SPAN_MS: i64 = 24 * 60 * 60 * 1000;
pub const MAX_AGE_MS: i64 = 14 * 24 * 60 * 60 * 1000;
pub const MAX_AHEAD_MS: i64 = 2 * 60 * 60 * 1000;

/// One log event, with the index of the record it came from (for dead letters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub timestamp_ms: i64,
    pub message: String,
    pub origin: usize,
}

impl LogEvent {
    pub fn size(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD_BYTES
    }
}

/// One PutLogEvents call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub stream: String,
    pub events: Vec<LogEvent>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub calls: Vec<Call>,
    /// Events CloudWatch would refuse: origin and reason.
    pub rejected: Vec<(usize, String)>,
}

/// Splits events per stream into calls that CloudWatch accepts as they are.
pub fn plan(events: Vec<(String, LogEvent)>, now_ms: i64) -> Plan {
    let mut plan = Plan::default();
    let mut by_stream: BTreeMap<String, Vec<LogEvent>> = BTreeMap::new();
    for (stream, event) in events {
        if event.size() > MAX_EVENT_BYTES {
            plan.rejected.push((
                event.origin,
                format!(
                    "event is {} bytes with CloudWatch's 26-byte overhead; the limit is {MAX_EVENT_BYTES}",
                    event.size()
                ),
            ));
        } else if event.timestamp_ms < now_ms - MAX_AGE_MS {
            plan.rejected.push((
                event.origin,
                "event is older than 14 days; CloudWatch refuses it".to_string(),
            ));
        } else if event.timestamp_ms > now_ms + MAX_AHEAD_MS {
            plan.rejected.push((
                event.origin,
                "event is more than 2 hours in the future; CloudWatch refuses it".to_string(),
            ));
        } else {
            by_stream.entry(stream).or_default().push(event);
        }
    }
    for (stream, mut events) in by_stream {
        // Stable: events with equal timestamps keep their order in the topic.
        events.sort_by_key(|e| e.timestamp_ms);
        let mut current: Vec<LogEvent> = Vec::new();
        let mut bytes = 0;
        for event in events {
            let full = current.len() == MAX_EVENTS_PER_CALL
                || bytes + event.size() > MAX_BYTES_PER_CALL
                || current
                    .first()
                    .is_some_and(|first| event.timestamp_ms - first.timestamp_ms > MAX_SPAN_MS);
            if full {
                plan.calls.push(Call {
                    stream: stream.clone(),
                    events: std::mem::take(&mut current),
                });
                bytes = 0;
            }
            bytes += event.size();
            current.push(event);
        }
        if !current.is_empty() {
            plan.calls.push(Call {
                stream,
                events: current,
            });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn ev(ts: i64, size: usize, origin: usize) -> (String, LogEvent) {
        (
            "s".to_string(),
            LogEvent {
                timestamp_ms: ts,
                message: "x".repeat(size),
                origin,
            },
        )
    }

    fn check_limits(plan: &Plan) {
        for call in &plan.calls {
            assert!(!call.events.is_empty());
            assert!(call.events.len() <= MAX_EVENTS_PER_CALL);
            assert!(call.events.iter().map(LogEvent::size).sum::<usize>() <= MAX_BYTES_PER_CALL);
            assert!(
                call.events
                    .windows(2)
                    .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms),
                "chronological"
            );
            let span = call.events.last().unwrap().timestamp_ms - call.events[0].timestamp_ms;
            assert!(span <= MAX_SPAN_MS);
        }
    }

    #[test]
    fn ten_thousand_events_per_call() {
        let events = (0..25_001).map(|i| ev(NOW - i as i64, 10, i)).collect();
        let p = plan(events, NOW);
        check_limits(&p);
        assert_eq!(
            p.calls.iter().map(|c| c.events.len()).collect::<Vec<_>>(),
            vec![10_000, 10_000, 5_001]
        );
    }

    #[test]
    fn a_megabyte_per_call_counting_26_bytes_per_event() {
        // 1,022 events of 1,000 + 26 bytes are 1,048,572 bytes: they fit, the 1,023rd does not.
        let events = (0..2_100).map(|i| ev(NOW, 1_000, i)).collect();
        let p = plan(events, NOW);
        check_limits(&p);
        assert_eq!(p.calls[0].events.len(), 1_022);
        // Exactly at the limit fits: four largest-allowed events are exactly 1,048,576 bytes.
        let quarter = MAX_BYTES_PER_CALL / 4 - EVENT_OVERHEAD_BYTES;
        let p = plan((0..4).map(|i| ev(NOW, quarter, i)).collect(), NOW);
        assert_eq!((p.calls.len(), p.rejected.len()), (1, 0));
        // One byte more opens a second call.
        let p = plan(
            (0..5)
                .map(|i| ev(NOW, if i == 4 { 1 } else { quarter }, i))
                .collect(),
            NOW,
        );
        assert_eq!(
            p.calls.iter().map(|c| c.events.len()).collect::<Vec<_>>(),
            vec![4, 1]
        );
    }

    #[test]
    fn chronological_within_a_call_and_24_hours_at_most() {
        let hour = 3_600_000;
        let events = vec![
            ev(NOW - 2 * hour, 1, 0),
            ev(NOW - 30 * hour, 1, 1),
            ev(NOW - 5 * hour, 1, 2),
            ev(NOW - 6 * hour - 1, 1, 3),
        ];
        let p = plan(events, NOW);
        check_limits(&p);
        let origins: Vec<Vec<usize>> = p
            .calls
            .iter()
            .map(|c| c.events.iter().map(|e| e.origin).collect())
            .collect();
        // 30 h ago cannot share a call with 5 h ago (25 h apart) but can with 6 h ago (24 h - 1 ms).
        assert_eq!(origins, vec![vec![1, 3], vec![2, 0]]);
    }

    #[test]
    fn oversized_too_old_and_too_new_events_are_rejected() {
        let events = vec![
            ev(NOW, MAX_EVENT_BYTES - EVENT_OVERHEAD_BYTES, 0),
            ev(NOW, MAX_EVENT_BYTES - EVENT_OVERHEAD_BYTES + 1, 1),
            ev(NOW - MAX_AGE_MS - 1, 1, 2),
            ev(NOW - MAX_AGE_MS, 1, 3),
            ev(NOW + MAX_AHEAD_MS + 1, 1, 4),
            ev(NOW + MAX_AHEAD_MS, 1, 5),
        ];
        let p = plan(events, NOW);
        check_limits(&p);
        let rejected: Vec<usize> = p.rejected.iter().map(|(o, _)| *o).collect();
        assert_eq!(rejected, vec![1, 2, 4]);
        assert!(p.rejected[0].1.contains("bytes"));
        assert!(p.rejected[1].1.contains("14 days"));
        assert!(p.rejected[2].1.contains("2 hours"));
        assert_eq!(p.calls.iter().map(|c| c.events.len()).sum::<usize>(), 3);
    }

    #[test]
    fn streams_are_batched_separately() {
        let mut events: Vec<(String, LogEvent)> = (0..5).map(|i| ev(NOW, 1, i)).collect();
        events.push((
            "t".into(),
            LogEvent {
                timestamp_ms: NOW,
                message: "y".into(),
                origin: 9,
            },
        ));
        let p = plan(events, NOW);
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.calls[1].stream, "t");
    }
}
