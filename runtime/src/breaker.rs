//! A circuit breaker for per-record errors: what keeps a misconfiguration from turning into
//! data loss.
//!
//! A stage dead-letters a record its destination refuses for what it is (a value, a size), and
//! goes on. But when the destination refuses *every* record for the same reason — a column
//! dropped under a running sink, a failing materialized view, a topic policy — dead-lettering
//! one by one and committing moves the whole stream to the dead-letter topic. The breaker tells
//! the two apart:
//!
//! | rule | trips when |
//! |---|---|
//! | share | of a batch of at least `min_batch` records, more than `max_refused_share` are refused for the same reason |
//! | run | `max_consecutive` records in a row are refused for the same reason (counted across batches; an accepted record ends the run) |
//!
//! Tripped (open), the stage dead-letters nothing for that cause and commits nothing: it holds
//! what was refused and, after a wait that doubles from `probe_initial_ms` up to `probe_max_ms`,
//! probes (half-open: the first held record again). Accepted, the breaker closes and the stage
//! goes on; refused for the same reason, it opens again with a longer wait. A record refused for
//! another reason while half-open is judged on its own (a dead letter), and the next probe goes
//! at once. One bad record among good ones never trips it: it stays a dead letter, as before.
//!
//! "The same reason" is the refusal's class (a bounded name the stage gives: a server error
//! code's name, a producer error code) and its text [`normalise`]d: quoted values, numbers and
//! ids stripped, so "cannot parse '12a' at row 7" and "cannot parse 'x' at row 9" are one reason.
//!
//! [`Breaker`] is the pure state machine (no I/O, no clock); [`Circuit`] shares one between a
//! stage's tasks and reports it: `/healthz` check `circuit_breaker` (503 with the reason while
//! open), `audit_circuit_open{stage, reason_class}` (1 while open) and
//! `audit_circuit_trips_total{stage, reason_class}`; both labels come from closed sets.

use crate::config::ConfigError;
use crate::ops::Health;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `/healthz` check the breaker reports under.
pub const CHECK: &str = "circuit_breaker";

/// The breaker's settings: a `breaker` table in each stage's own section
/// (`[clickhouse.breaker]`, `[enricher.breaker]`, `[cloudwatch.breaker]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Off, every refused record is a dead letter however many there are. Default on.
    pub enabled: bool,
    /// The share rule applies to batches of at least this many records. Default 20.
    pub min_batch: usize,
    /// The share rule: more than this fraction of a batch refused for the same reason trips
    /// the breaker. Between 0 (exclusive) and 1. Default 0.5.
    pub max_refused_share: f64,
    /// The run rule: this many records in a row refused for the same reason trip the breaker.
    /// At least 2. Default 10.
    pub max_consecutive: usize,
    /// Wait before the first probe, in milliseconds; doubles after each failed probe. Default
    /// 1,000.
    pub probe_initial_ms: u64,
    /// Longest wait between probes, in milliseconds. Default 30,000.
    pub probe_max_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_batch: 20,
            max_refused_share: 0.5,
            max_consecutive: 10,
            probe_initial_ms: 1_000,
            probe_max_ms: 30_000,
        }
    }
}

impl BreakerConfig {
    /// Checks the settings; `section` is where they live (`clickhouse.breaker`), so the error
    /// names the full setting.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{section}.{name}");
        if self.min_batch == 0 {
            return Err(ConfigError::invalid(
                field("min_batch"),
                "must be at least 1",
            ));
        }
        if !(self.max_refused_share > 0.0 && self.max_refused_share < 1.0) {
            return Err(ConfigError::invalid(
                field("max_refused_share"),
                format!(
                    "{} is not a fraction between 0 and 1 (exclusive)",
                    self.max_refused_share
                ),
            ));
        }
        if self.max_consecutive < 2 {
            return Err(ConfigError::invalid(
                field("max_consecutive"),
                "must be at least 2: with 1, any one bad record would stop the stage",
            ));
        }
        if self.probe_initial_ms == 0 {
            return Err(ConfigError::invalid(
                field("probe_initial_ms"),
                "must be positive",
            ));
        }
        if self.probe_max_ms < self.probe_initial_ms {
            return Err(ConfigError::invalid(
                field("probe_max_ms"),
                format!(
                    "{} is below probe_initial_ms ({})",
                    self.probe_max_ms, self.probe_initial_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Refused records are dead letters.
    Closed,
    /// Tripped: nothing is dead-lettered for the reason; the stage waits, then probes.
    Open(Trip),
    /// A probe is out: accepted closes the breaker, refused for the reason opens it again.
    HalfOpen(Trip),
}

/// Why the breaker tripped, and how its probes went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    /// The refusal's class as the stage gave it, bounded (see [`label`]): the metric label.
    pub class: String,
    /// The normalised reason.
    pub reason: String,
    /// The refusal that tripped it as the destination said it (capped), for people: the
    /// normalised reason has lost the names that tell which column or constraint.
    pub example: String,
    /// What tripped it, for people: "12 records in a row", "40 of 50 records of a batch".
    pub evidence: String,
    /// Probes refused for the same reason since the trip.
    pub failed_probes: u32,
}

/// What the stage does with a refused record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Refused for what it is: dead-letter it, as before.
    PerRecord,
    /// Refused for a reason that refuses (nearly) everything: dead-letter nothing for it,
    /// commit nothing, hold what was refused and probe after [`Breaker::probe_delay`].
    Open,
}

/// The pure decision logic: counts, thresholds and the closed / open / half-open machine.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// The current run of refusals: its key (class and normalised reason) and length.
    run: Option<(String, usize)>,
}

/// The key refusals are compared by.
fn key(class: &str, reason: &str) -> String {
    format!("{}: {}", label(class), normalise(reason))
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed,
            run: None,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Open or half-open: the stage is holding refused records.
    pub fn is_tripped(&self) -> bool {
        !matches!(self.state, State::Closed)
    }

    /// Records were accepted: the run of refusals ends, and a half-open breaker closes.
    /// Returns the trip that ended when this closed the breaker.
    pub fn accepted(&mut self, records: usize) -> Option<Trip> {
        if records == 0 {
            return None;
        }
        self.run = None;
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Closed => None,
            State::Open(trip) | State::HalfOpen(trip) => Some(trip),
        }
    }

    /// One record was refused, in order with [`Breaker::accepted`]: the run rule (and, while
    /// half-open, the probe's outcome).
    pub fn refused(&mut self, class: &str, reason: &str) -> Verdict {
        if !self.config.enabled {
            return Verdict::PerRecord;
        }
        let key = key(class, reason);
        if let State::Open(trip) | State::HalfOpen(trip) = &self.state {
            if key == trip_key(trip) {
                // Refused again for the reason: a failed probe when half-open; when open (a
                // record another task tried meanwhile), held like the others.
                if let State::HalfOpen(trip) = &mut self.state {
                    trip.failed_probes += 1;
                    self.state = State::Open(trip.clone());
                }
                return Verdict::Open;
            }
            // Another reason while the breaker is out: this record is judged on its own, and
            // the breaker waits for a record that tells about its own reason.
            self.run = Some((key, 1));
            return Verdict::PerRecord;
        }
        let run = match self.run.take() {
            Some((k, n)) if k == key => n + 1,
            _ => 1,
        };
        if run >= self.config.max_consecutive {
            self.trip(class, reason, format!("{run} records in a row"));
            return Verdict::Open;
        }
        self.run = Some((key, run));
        Verdict::PerRecord
    }

    /// The share rule for a batch of `total` records of which `refusals` (class, reason) were
    /// refused: `Open` when more than `max_refused_share` of them share a reason. Call it once
    /// the batch's outcome is known, before dead-lettering any of it.
    pub fn judge_batch(&mut self, total: usize, refusals: &[(&str, &str)]) -> Verdict {
        if !self.config.enabled || total < self.config.min_batch {
            return Verdict::PerRecord;
        }
        let mut counts: HashMap<String, (usize, &str, &str)> = HashMap::new();
        for &(class, reason) in refusals {
            counts
                .entry(key(class, reason))
                .or_insert((0, class, reason))
                .0 += 1;
        }
        let Some((_, (refused, class, reason))) = counts.into_iter().max_by_key(|(_, c)| c.0)
        else {
            return Verdict::PerRecord;
        };
        if refused as f64 > self.config.max_refused_share * total as f64 {
            // Already out (another task's batch tripped it): the trip and its backoff stay.
            if !self.is_tripped() {
                self.trip(
                    class,
                    reason,
                    format!("{refused} of {total} records of a batch"),
                );
            }
            return Verdict::Open;
        }
        Verdict::PerRecord
    }

    /// Both rules for a batch whose refusals are known at once, by their index in the batch
    /// (a producer's delivery reports, a call's rejected events): the share rule, then the run
    /// rule in index order. `PerRecord`: dead-letter every refusal.
    pub fn judge_indexed<'a>(
        &mut self,
        total: usize,
        refusals: &[(usize, &'a str, &'a str)],
    ) -> Verdict {
        let reasons: Vec<(&str, &str)> = refusals.iter().map(|(_, c, r)| (*c, *r)).collect();
        if self.judge_batch(total, &reasons) == Verdict::Open {
            return Verdict::Open;
        }
        let mut sorted: Vec<&(usize, &str, &str)> = refusals.iter().collect();
        sorted.sort_by_key(|(i, _, _)| *i);
        let mut next = 0;
        for (index, class, reason) in sorted {
            if *index > next {
                self.accepted(index - next);
            }
            next = index + 1;
            if self.refused(class, reason) == Verdict::Open {
                // The batch's other refusals are held with it.
                return Verdict::Open;
            }
        }
        if total > next {
            self.accepted(total - next);
        }
        Verdict::PerRecord
    }

    /// Opens the breaker for this reason (the stage saw evidence the rules do not cover).
    pub fn trip(&mut self, class: &str, reason: &str, evidence: String) {
        self.run = None;
        self.state = State::Open(Trip {
            class: label(class).to_string(),
            reason: normalise(reason),
            example: crate::dead_letter::cap_text(reason, REASON_MAX),
            evidence,
            failed_probes: 0,
        });
    }

    /// A probe is about to go out: open becomes half-open.
    pub fn probing(&mut self) {
        if let State::Open(trip) = &self.state {
            self.state = State::HalfOpen(trip.clone());
        }
    }

    /// How long to wait before the next probe: `probe_initial_ms`, doubled per failed probe,
    /// at most `probe_max_ms`.
    pub fn probe_delay(&self) -> Duration {
        let failed = match &self.state {
            State::Open(t) | State::HalfOpen(t) => t.failed_probes,
            State::Closed => 0,
        };
        let ms = self
            .config
            .probe_initial_ms
            .saturating_mul(1u64 << failed.min(30))
            .min(self.config.probe_max_ms);
        Duration::from_millis(ms)
    }
}

fn trip_key(trip: &Trip) -> String {
    // `trip.reason` is normalised already; normalising is idempotent.
    key(&trip.class, &trip.reason)
}

/// A refusal class as a metric label: letters, digits and `_`, at most 48 characters, else
/// "other". Stages pass names from closed sets (server error names, producer error codes).
pub fn label(class: &str) -> &str {
    if !class.is_empty()
        && class.len() <= 48
        && class
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        class
    } else {
        crate::labels::OTHER
    }
}

/// Longest normalised reason kept.
const REASON_MAX: usize = 240;

/// A reason without its record-specific values: quoted text becomes `'…'`, numbers and ids
/// (words starting with a digit, hex runs with digits, long words with digits) become `#`,
/// whitespace runs one space; at most 240 bytes. Idempotent.
pub fn normalise(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(REASON_MAX));
    let mut chars = reason.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        if is_value(word) {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        flush(&mut word, &mut out);
        match c {
            '\'' | '"' | '`' => {
                // Up to the closing quote (a backslash escapes), or the end.
                let mut escaped = false;
                for q in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if q == '\\' {
                        escaped = true;
                    } else if q == c {
                        break;
                    }
                }
                out.push_str("'…'");
            }
            c if c.is_whitespace() => {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            // Separators between the parts of a number or an id (1.5, 10:30, a-uuid).
            '.' | ':' | '-' | '/' | '+' | ','
                if out.ends_with('#') && chars.peek().is_some_and(|n| n.is_ascii_digit()) => {}
            c => out.push(c),
        }
    }
    flush(&mut word, &mut out);
    let trimmed = out.trim_end();
    crate::dead_letter::cap_text(trimmed, REASON_MAX)
}

/// A word that is a value rather than part of the message's wording.
fn is_value(word: &str) -> bool {
    let digits = word.bytes().filter(u8::is_ascii_digit).count();
    if digits == 0 {
        return word == "…";
    }
    word.starts_with(|c: char| c.is_ascii_digit())
        || (word.len() >= 6 && word.bytes().all(|b| b.is_ascii_hexdigit()))
        || word.len() >= 16
}

/// One stage's breaker, shared by its tasks and reported: `/healthz` check [`CHECK`], the
/// `audit_circuit_open` gauge and `audit_circuit_trips_total`. Cheap to clone.
#[derive(Clone)]
pub struct Circuit {
    inner: Arc<Mutex<Breaker>>,
    stage: &'static str,
    health: Health,
}

impl Circuit {
    /// `stage` is the metric label (a [`crate::dead_letter::Stage`] name).
    pub fn new(config: BreakerConfig, stage: &'static str, health: Health) -> Self {
        health.set(CHECK, true, "closed");
        Self {
            inner: Arc::new(Mutex::new(Breaker::new(config))),
            stage,
            health,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Breaker) -> T) -> (T, State, State) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let before = b.state.clone();
        let result = f(&mut b);
        (result, before, b.state.clone())
    }

    /// See [`Breaker::accepted`].
    pub fn accepted(&self, records: usize) {
        let (_, before, after) = self.with(|b| b.accepted(records));
        self.report(&before, &after);
    }

    /// See [`Breaker::refused`].
    pub fn refused(&self, class: &str, reason: &str) -> Verdict {
        let (verdict, before, after) = self.with(|b| b.refused(class, reason));
        self.report(&before, &after);
        verdict
    }

    /// See [`Breaker::judge_batch`].
    pub fn judge_batch(&self, total: usize, refusals: &[(&str, &str)]) -> Verdict {
        let (verdict, before, after) = self.with(|b| b.judge_batch(total, refusals));
        self.report(&before, &after);
        verdict
    }

    /// See [`Breaker::judge_indexed`].
    pub fn judge_indexed(&self, total: usize, refusals: &[(usize, &str, &str)]) -> Verdict {
        let (verdict, before, after) = self.with(|b| b.judge_indexed(total, refusals));
        self.report(&before, &after);
        verdict
    }

    pub fn is_tripped(&self) -> bool {
        self.with(|b| b.is_tripped()).0
    }

    /// Opens the breaker on the stage's own evidence (see [`Breaker::trip`]) unless it is out
    /// already; the stage closes it with `accepted` once records go through again.
    pub fn trip(&self, class: &str, reason: &str, evidence: &str) {
        let (_, before, after) = self.with(|b| {
            if !b.is_tripped() && b.config.enabled {
                b.trip(class, reason, evidence.to_string());
            }
        });
        self.report(&before, &after);
    }

    pub fn state(&self) -> State {
        self.with(|b| b.state.clone()).0
    }

    /// Waits out the probe delay, then turns the breaker half-open: the caller sends its probe
    /// next and reports the outcome with `accepted` or `refused`.
    pub async fn wait_for_probe(&self) {
        let delay = self.with(|b| b.probe_delay()).0;
        tokio::time::sleep(delay).await;
        let (_, before, after) = self.with(Breaker::probing);
        self.report(&before, &after);
    }

    /// Health, metrics and a log line for a change of state.
    fn report(&self, before: &State, after: &State) {
        if before == after {
            return;
        }
        let stage = self.stage;
        match (before, after) {
            (State::Closed, State::Open(trip)) => {
                metrics::counter!("audit_circuit_trips_total", "stage" => stage, "reason_class" => trip.class.clone()).increment(1);
                metrics::gauge!("audit_circuit_open", "stage" => stage, "reason_class" => trip.class.clone()).set(1.0);
                tracing::error!(
                    reason = %trip.example,
                    evidence = %trip.evidence,
                    "circuit breaker open: records are refused for one reason, so the cause is \
                     not the records; holding them uncommitted instead of dead-lettering them"
                );
                self.health.set(CHECK, false, detail(trip, self.delay()));
            }
            (_, State::Open(trip)) if trip.failed_probes > 0 => {
                let next = self.delay();
                tracing::warn!(reason = %trip.reason, failed_probes = trip.failed_probes, next_probe_s = next.as_secs_f64(), "probe refused for the same reason; circuit breaker stays open");
                metrics::counter!("audit_circuit_probes_total", "stage" => stage, "outcome" => "refused").increment(1);
                self.health.set(CHECK, false, detail(trip, next));
            }
            (State::Open(_) | State::HalfOpen(_), State::Closed) => {
                let class = match before {
                    State::Open(t) | State::HalfOpen(t) => t.class.clone(),
                    State::Closed => String::new(),
                };
                metrics::counter!("audit_circuit_probes_total", "stage" => stage, "outcome" => "accepted").increment(1);
                metrics::gauge!("audit_circuit_open", "stage" => stage, "reason_class" => class)
                    .set(0.0);
                tracing::info!("probe accepted; circuit breaker closed, the stage goes on");
                self.health.set(CHECK, true, "closed");
            }
            _ => {}
        }
    }

    fn delay(&self) -> Duration {
        // Called without the lock held: `report` runs after `with` released it.
        self.with(|b| b.probe_delay()).0
    }
}

fn detail(trip: &Trip, next_probe: Duration) -> String {
    format!(
        "open ({}): {} refused for the same reason, e.g. {}; nothing dead-lettered for it, \
         nothing committed; next probe in {:.1} s",
        trip.class,
        trip.evidence,
        trip.example,
        next_probe.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            min_batch: 10,
            max_refused_share: 0.5,
            max_consecutive: 4,
            probe_initial_ms: 100,
            probe_max_ms: 350,
        }
    }

    #[test]
    fn reasons_lose_their_record_specific_values() {
        assert_eq!(
            normalise("Cannot parse input: expected ',' before: '12abc' at row 17"),
            normalise("Cannot parse input: expected ',' before: 'zz' at row 9")
        );
        assert_eq!(
            normalise("No such column x in table audit_test_1733_ab12cd34.events (3f2a9c1e-5b7d-4e0f-9a8b-0c1d2e3f4a5b). (NO_SUCH_COLUMN_IN_TABLE) (version 26.9.1.1)"),
            "No such column x in table #.events (#). (NO_SUCH_COLUMN_IN_TABLE) (version #)"
        );
        // Different wording stays different.
        assert_ne!(
            normalise("No such column x in table t"),
            normalise("Constraint c violated")
        );
        // Type names with digits are wording, not values.
        assert_eq!(normalise("cannot read Int64"), "cannot read Int64");
        // Idempotent, and spaces collapse.
        let once = normalise("value   \"a\\\"b\"  is 12.5e3   too  large");
        assert_eq!(once, "value '…' is # too large");
        assert_eq!(normalise(&once), once);
        let long = "x ".repeat(400);
        assert!(normalise(&long).len() <= REASON_MAX);
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(label("NO_SUCH_COLUMN_IN_TABLE"), "NO_SUCH_COLUMN_IN_TABLE");
        assert_eq!(label("PolicyViolation"), "PolicyViolation");
        assert_eq!(label("a b"), "other");
        assert_eq!(label(""), "other");
        assert_eq!(label(&"A".repeat(49)), "other");
    }

    #[test]
    fn one_bad_record_among_good_ones_stays_a_dead_letter() {
        let mut b = Breaker::new(config());
        for _ in 0..100 {
            b.accepted(7);
            assert_eq!(b.refused("E", "bad value 'x1'"), Verdict::PerRecord);
        }
        // A batch of 50 with 3 refusals, even of one reason.
        let refusals = [(3, "E", "bad 1"), (20, "E", "bad 2"), (40, "E", "bad 3")];
        assert_eq!(b.judge_indexed(50, &refusals), Verdict::PerRecord);
        // Runs of other reasons do not add up.
        for i in 0..20 {
            let reason = if i % 2 == 0 {
                "constraint a"
            } else {
                "parse error"
            };
            assert_eq!(b.refused("E", reason), Verdict::PerRecord);
        }
        assert_eq!(b.state(), &State::Closed);
    }

    #[test]
    fn a_run_of_one_reason_trips_and_an_accepted_record_ends_the_run() {
        let mut b = Breaker::new(config());
        for row in 0..3 {
            assert_eq!(
                b.refused(
                    "NO_SUCH_COLUMN_IN_TABLE",
                    &format!("No such column x (row {row})")
                ),
                Verdict::PerRecord
            );
        }
        b.accepted(1);
        for row in 0..3 {
            assert_eq!(
                b.refused(
                    "NO_SUCH_COLUMN_IN_TABLE",
                    &format!("No such column x (row {row})")
                ),
                Verdict::PerRecord
            );
        }
        assert_eq!(
            b.refused("NO_SUCH_COLUMN_IN_TABLE", "No such column x (row 99)"),
            Verdict::Open
        );
        let State::Open(trip) = b.state().clone() else {
            panic!("open");
        };
        assert_eq!(trip.class, "NO_SUCH_COLUMN_IN_TABLE");
        assert_eq!(trip.evidence, "4 records in a row");
    }

    #[test]
    fn most_of_a_batch_refused_for_one_reason_trips_small_batches_do_not() {
        let mut b = Breaker::new(config());
        let reasons: Vec<String> = (0..6).map(|i| format!("Code: 395 throwIf {i}")).collect();
        let refusals: Vec<(&str, &str)> = reasons.iter().map(|r| ("E", r.as_str())).collect();
        // 6 of 9: below min_batch.
        assert_eq!(b.judge_batch(9, &refusals), Verdict::PerRecord);
        // 6 of 12: exactly half is not more than half.
        assert_eq!(b.judge_batch(12, &refusals), Verdict::PerRecord);
        // 6 of 11.
        assert_eq!(b.judge_batch(11, &refusals), Verdict::Open);
        // Interleaved with accepted records, so no run: the share rule still sees it.
        let mut b = Breaker::new(config());
        let indexed: Vec<(usize, &str, &str)> =
            (0..30).map(|i| (i * 2, "E", "mv failed")).collect();
        assert_eq!(b.judge_indexed(60, &indexed), Verdict::PerRecord);
        let indexed: Vec<(usize, &str, &str)> =
            (0..31).map(|i| (i * 2, "E", "mv failed")).collect();
        assert_eq!(b.judge_indexed(61, &indexed), Verdict::Open);
    }

    #[test]
    fn probes_back_off_reopen_on_the_same_reason_and_close_when_accepted() {
        let mut b = Breaker::new(config());
        b.trip("E", "no such column x", "test".into());
        assert!(b.is_tripped());
        assert_eq!(b.probe_delay(), Duration::from_millis(100));
        b.probing();
        assert!(matches!(b.state(), State::HalfOpen(_)));
        assert_eq!(b.refused("E", "no such column x"), Verdict::Open);
        assert_eq!(b.probe_delay(), Duration::from_millis(200));
        b.probing();
        assert_eq!(b.refused("E", "no such column x"), Verdict::Open);
        b.probing();
        assert_eq!(b.refused("E", "no such column x"), Verdict::Open);
        assert_eq!(b.probe_delay(), Duration::from_millis(350), "capped");
        // Refused for another reason while half-open: a dead letter of its own; still out.
        b.probing();
        assert_eq!(b.refused("E", "constraint c violated"), Verdict::PerRecord);
        assert!(b.is_tripped());
        let ended = b.accepted(1).expect("closed by the accepted probe");
        assert_eq!(ended.failed_probes, 3);
        assert_eq!(b.state(), &State::Closed);
        assert_eq!(b.probe_delay(), Duration::from_millis(100));
        // Closed again, counting starts over.
        for _ in 0..3 {
            assert_eq!(b.refused("E", "no such column x"), Verdict::PerRecord);
        }
    }

    #[test]
    fn while_open_the_reason_is_held_without_counting_as_a_probe() {
        let mut b = Breaker::new(config());
        b.trip("E", "policy violation", "test".into());
        // Another task's small batch, refused for the reason: held, not a dead letter.
        assert_eq!(
            b.judge_indexed(1, &[(0, "E", "policy violation")]),
            Verdict::Open
        );
        assert_eq!(
            b.judge_batch(30, &[("E", "policy violation"); 30]),
            Verdict::Open
        );
        assert_eq!(
            b.probe_delay(),
            Duration::from_millis(100),
            "no probe failed"
        );
        // Another reason meanwhile is a dead letter.
        assert_eq!(
            b.judge_indexed(1, &[(0, "E", "too large")]),
            Verdict::PerRecord
        );
    }

    #[test]
    fn disabled_never_trips() {
        let mut b = Breaker::new(BreakerConfig {
            enabled: false,
            ..config()
        });
        for _ in 0..100 {
            assert_eq!(b.refused("E", "same"), Verdict::PerRecord);
        }
        assert_eq!(
            b.judge_batch(100, &[("E", "same"); 100]),
            Verdict::PerRecord
        );
    }

    #[test]
    fn settings_are_checked_with_their_full_name() {
        assert!(BreakerConfig::default().validate("x.breaker").is_ok());
        for (bad, field) in [
            (
                BreakerConfig {
                    max_refused_share: 1.5,
                    ..Default::default()
                },
                "clickhouse.breaker.max_refused_share",
            ),
            (
                BreakerConfig {
                    max_consecutive: 1,
                    ..Default::default()
                },
                "clickhouse.breaker.max_consecutive",
            ),
            (
                BreakerConfig {
                    min_batch: 0,
                    ..Default::default()
                },
                "clickhouse.breaker.min_batch",
            ),
            (
                BreakerConfig {
                    probe_max_ms: 10,
                    ..Default::default()
                },
                "clickhouse.breaker.probe_max_ms",
            ),
        ] {
            let e = bad.validate("clickhouse.breaker").unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn the_circuit_reports_on_healthz() {
        let health = Health::default();
        let c = Circuit::new(config(), "sink-clickhouse", health.clone());
        assert!(health.is_healthy());
        for _ in 0..4 {
            c.refused("NO_SUCH_COLUMN_IN_TABLE", "No such column x");
        }
        assert!(c.is_tripped());
        assert!(!health.is_healthy());
        let State::Open(trip) = c.state() else {
            panic!("open");
        };
        let detail = detail(&trip, Duration::from_millis(100));
        assert!(detail.contains("NO_SUCH_COLUMN_IN_TABLE"), "{detail}");
        assert!(detail.contains("No such column x"), "{detail}");
        c.accepted(1);
        assert!(health.is_healthy());
    }
}
