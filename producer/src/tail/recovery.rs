//! Finding which lines of a batch in flight reached the raw topic, after a crash or while a
//! broker outage lasts.
//!
//! Before a batch is sent its record says, for each line, the event id and the raw partition the
//! line's key goes to (computed with the producer's own partitioner, [`Partitioner`]), next to the
//! raw topic's end offsets (the marks). Whatever of the batch arrived is after the marks, on those
//! partitions. Recovery reads only those partitions, from the marks up to the end offsets noted
//! when it began (nothing of the batch can be later: no attempt to send it was under way since),
//! and stops as soon as every id is found. Its progress, per partition, is saved with the batch
//! (at least every [`CHECKPOINT`] and at the end of every attempt), so a restart or an attempt cut
//! off by `tail.recovery_budget_ms` goes on from there instead of from the marks: on a topic as
//! busy as any, and after an outage of any length, recovery ends. Lines not found by then were not
//! delivered and are sent again.

use super::until_broker_answers;
use anyhow::{Context, Result};
use audit_runtime::ingest::Publisher;
use audit_runtime::KafkaConfig;
use audit_schemas::{AvroRecord, RawAuditEvent};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// How often a running scan saves how far it got (besides at the end of every attempt): what a
/// `kill -9` in the middle of a scan costs at most.
pub const CHECKPOINT: Duration = Duration::from_secs(1);

/// A partition number standing for "could not be computed": such ids are looked for on every
/// partition.
const ANY_PARTITION: i32 = -1;

/// How librdkafka picks a keyed record's partition, as configured (`kafka.properties.partitioner`,
/// default `consistent_random`). Only the keyed, deterministic ones can be computed; for the
/// others every partition is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// `consistent`, `consistent_random`: CRC-32 of the key modulo the partition count.
    Crc32,
    /// `murmur2`, `murmur2_random`: Java's murmur2 of the key, made positive, modulo the count.
    Murmur2,
    /// Random or unknown: a record can be on any partition.
    Unknown,
}

impl Partitioner {
    /// The partitioner a producer built from these librdkafka properties uses.
    pub fn from_properties<'a>(properties: impl IntoIterator<Item = (String, &'a str)>) -> Self {
        let mut name = "consistent_random".to_string();
        for (key, value) in properties {
            if key == "partitioner" {
                name = value.trim().to_string();
            }
        }
        match name.as_str() {
            "consistent" | "consistent_random" => Self::Crc32,
            "murmur2" | "murmur2_random" => Self::Murmur2,
            _ => Self::Unknown,
        }
    }

    /// The partition a record with `key` goes to among `count`, or `None` when that cannot be
    /// known (an empty key is placed at random by the `*_random` partitioners).
    pub fn partition(self, key: &[u8], count: usize) -> Option<i32> {
        let count = u32::try_from(count).ok().filter(|c| *c > 0)?;
        if key.is_empty() {
            return None;
        }
        let hash = match self {
            Self::Crc32 => crc32(key),
            Self::Murmur2 => murmur2(key) & 0x7fff_ffff,
            Self::Unknown => return None,
        };
        i32::try_from(hash % count).ok()
    }
}

/// CRC-32 (IEEE, as zlib and librdkafka's `rd_crc32`).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Java Kafka's `Utils.murmur2` (librdkafka's `rd_murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    // The length is folded in modulo 2^32, as Java's int does.
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// A batch's lines as recovery needs them: each event id under the raw partition its key goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lines {
    /// The raw topic's partition count the partitions were computed for: with another count now,
    /// every partition is looked at.
    pub partitions: usize,
    /// `(partition, ids)`, partitions ascending; partition -1 holds the ids whose partition could
    /// not be computed.
    pub ids: Vec<(i32, Vec<Uuid>)>,
}

impl Lines {
    /// Groups `(event id, partition key)` pairs by the partition `partitioner` sends them to.
    pub fn group<'k>(
        events: impl IntoIterator<Item = (Uuid, &'k [u8])>,
        partitioner: Partitioner,
        partitions: usize,
    ) -> Self {
        let mut by: BTreeMap<i32, Vec<Uuid>> = BTreeMap::new();
        for (id, key) in events {
            let p = partitioner
                .partition(key, partitions)
                .unwrap_or(ANY_PARTITION);
            by.entry(p).or_default().push(id);
        }
        Self {
            partitions,
            ids: by.into_iter().collect(),
        }
    }

    /// Ids whose partition is not known (a batch recorded by an older tailer).
    pub fn anywhere(ids: impl IntoIterator<Item = Uuid>, partitions: usize) -> Self {
        let ids: Vec<Uuid> = ids.into_iter().collect();
        Self {
            partitions,
            ids: if ids.is_empty() {
                Vec::new()
            } else {
                vec![(ANY_PARTITION, ids)]
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.iter().all(|(_, ids)| ids.is_empty())
    }
}

/// How far a recovery got: saved with the batch, so it goes on from there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    /// Per partition, the next offset to read; a partition not named starts at the batch's mark.
    #[serde(default)]
    pub next: Vec<(i32, i64)>,
    /// The raw topic's end offsets when this recovery began: it reads no further. Cleared when
    /// the batch is sent again (that attempt may add records past them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Vec<(i32, i64)>>,
    /// The batch's ids found on the raw topic so far (or known delivered before the batch was
    /// recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub found: Vec<Uuid>,
    /// Records read so far, all attempts and restarts together (for the logs).
    #[serde(default)]
    pub read: u64,
}

impl Scan {
    /// A scan that already knows `found` (ids of the batch delivered earlier), not yet started.
    pub fn knowing(found: impl IntoIterator<Item = Uuid>) -> Option<Self> {
        let found: Vec<Uuid> = found.into_iter().collect();
        (!found.is_empty()).then(|| Self {
            found,
            ..Self::default()
        })
    }
}

/// What recovery looks for, by where it can be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    on: BTreeMap<i32, HashSet<Uuid>>,
    anywhere: HashSet<Uuid>,
}

impl Wanted {
    /// The ids of `lines`, placed on the partitions of `partitions` (the raw topic's now): when
    /// the count changed since the batch was recorded, or a line's partition is not known, its id
    /// may be on any partition.
    pub fn new(lines: &Lines, partitions: &[i32]) -> Self {
        let same_count = lines.partitions == partitions.len();
        let mut wanted = Self::default();
        for (p, ids) in &lines.ids {
            if same_count && partitions.contains(p) {
                wanted.on.entry(*p).or_default().extend(ids.iter().copied());
            } else {
                wanted.anywhere.extend(ids.iter().copied());
            }
        }
        wanted
    }

    /// The partitions worth reading: those holding a wanted id not yet found.
    pub fn partitions(&self, all: &[i32], found: &HashSet<Uuid>) -> Vec<i32> {
        all.iter()
            .copied()
            .filter(|&p| self.missing_on(p, found))
            .collect()
    }

    /// Whether an id that may be on partition `p` is still not found.
    pub fn missing_on(&self, p: i32, found: &HashSet<Uuid>) -> bool {
        let unfound = |ids: &HashSet<Uuid>| ids.iter().any(|id| !found.contains(id));
        unfound(&self.anywhere) || self.on.get(&p).is_some_and(unfound)
    }

    pub fn all_found(&self, found: &HashSet<Uuid>) -> bool {
        self.anywhere.iter().all(|id| found.contains(id))
            && self.on.values().flatten().all(|id| found.contains(id))
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.anywhere.contains(id) || self.on.values().any(|ids| ids.contains(id))
    }

    /// The ids not found: the lines that did not reach the broker.
    pub fn missing(&self, found: &HashSet<Uuid>) -> Vec<Uuid> {
        let mut out: Vec<Uuid> = self
            .anywhere
            .iter()
            .chain(self.on.values().flatten())
            .filter(|id| !found.contains(id))
            .copied()
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Per partition still to read, `(partition, from, to)`: from the saved progress (else the
/// batch's mark, else the partition's start) up to the end noted when recovery began, for the
/// partitions that may still hold a wanted id.
pub fn to_read(
    wanted: &Wanted,
    found: &HashSet<Uuid>,
    marks: &[(i32, i64)],
    scan: &Scan,
    until: &[(i32, i64)],
) -> Vec<(i32, i64, i64)> {
    let lookup = |list: &[(i32, i64)], p: i32| list.iter().find(|(q, _)| *q == p).map(|(_, o)| *o);
    until
        .iter()
        .filter(|(p, _)| wanted.missing_on(*p, found))
        .filter_map(|&(p, to)| {
            let from = lookup(&scan.next, p)
                .or_else(|| lookup(marks, p))
                .unwrap_or(0);
            (from < to).then_some((p, from, to))
        })
        .collect()
}

/// Where recovery reads, and how long one attempt may take.
pub struct Recovery<'a> {
    pub publisher: &'a Publisher,
    pub kafka: &'a KafkaConfig,
    /// The raw topic's partitions.
    pub partitions: &'a [i32],
    /// `tail.recovery_budget_ms`.
    pub budget: Duration,
}

/// How one attempt ended.
enum Attempt {
    /// Everything it had to read is read (or every id found).
    Done,
    /// Cut off by the budget; `read` records were read.
    CutOff { read: u64 },
}

impl Recovery<'_> {
    /// Which of the batch's `lines` (sent after `marks`) are on the raw topic, going on from
    /// `scan` and saving it (through `save`) as it goes. Waits out an outage of any length;
    /// returns only an error of `save`.
    pub async fn run(
        &self,
        marks: &[(i32, i64)],
        lines: &Lines,
        scan: &mut Scan,
        mut save: impl FnMut(&Scan) -> Result<()>,
    ) -> Result<HashSet<Uuid>> {
        let wanted = Wanted::new(lines, self.partitions);
        let mut found: HashSet<Uuid> = scan.found.iter().copied().collect();
        let targets = wanted.partitions(self.partitions, &found);
        if targets.is_empty() {
            return Ok(found);
        }
        let until = match &scan.until {
            Some(until) => until.clone(),
            None => {
                let until = until_broker_answers("reading the raw topic's end offsets", || async {
                    super::watermarks(self.publisher, &targets)
                })
                .await?;
                scan.until = Some(until.clone());
                save(scan)?;
                until
            }
        };
        let started_at = scan.read;
        let mut fruitless = 0u32;
        let mut attempts = 0u32;
        loop {
            let plan = to_read(&wanted, &found, marks, scan, &until);
            if plan.is_empty() || wanted.all_found(&found) {
                break;
            }
            attempts += 1;
            // An attempt that read nothing within the budget (the broker away, or slower to
            // answer than the budget) gets a longer one next time, so some attempt always moves.
            let budget = self.budget.saturating_mul(1 << fruitless.min(5));
            let outcome = self
                .attempt(&plan, &wanted, &mut found, scan, budget, &mut save)
                .await;
            scan.found = found.iter().copied().collect();
            save(scan)?;
            match outcome {
                Ok(Attempt::Done) => break,
                Ok(Attempt::CutOff { read }) if read > 0 => {
                    fruitless = 0;
                    tracing::info!(
                        read,
                        budget_ms = budget.as_millis() as u64,
                        "recovery attempt cut off by tail.recovery_budget_ms; its progress is saved and the next attempt goes on from there"
                    );
                }
                Ok(Attempt::CutOff { .. }) => {
                    fruitless += 1;
                    let delay = audit_runtime::retry::RetryPolicy::default().delay(fruitless);
                    tracing::warn!(
                        budget_ms = budget.as_millis() as u64,
                        retry_in_ms = delay.as_millis() as u64,
                        "recovery read nothing within its budget; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    fruitless += 1;
                    let delay = audit_runtime::retry::RetryPolicy::default().delay(fruitless);
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "reading the raw topic to recover a batch in flight failed; retrying from the saved progress");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        let missing = wanted.missing(&found).len();
        tracing::info!(
            found = found.len(),
            missing,
            records_read = scan.read - started_at,
            records_read_in_all = scan.read,
            attempts,
            "recovered a batch in flight: the lines found are not sent again, the missing ones are"
        );
        Ok(found)
    }

    /// One pass over `plan` with a fresh reader, for at most `budget`, saving progress every
    /// [`CHECKPOINT`].
    async fn attempt(
        &self,
        plan: &[(i32, i64, i64)],
        wanted: &Wanted,
        found: &mut HashSet<Uuid>,
        scan: &mut Scan,
        budget: Duration,
        save: &mut impl FnMut(&Scan) -> Result<()>,
    ) -> Result<Attempt> {
        let topic = self.publisher.raw_topic();
        let consumer = audit_runtime::kafka::reader(self.kafka, "audit-producer-tail-recovery")?;
        let mut tpl = TopicPartitionList::new();
        for &(p, from, _) in plan {
            tpl.add_partition_offset(topic, p, Offset::Offset(from))?;
        }
        consumer.assign(&tpl)?;
        let ends: BTreeMap<i32, i64> = plan.iter().map(|&(p, _, to)| (p, to)).collect();
        let mut open: BTreeSet<i32> = ends.keys().copied().collect();
        let mut next: BTreeMap<i32, i64> = plan.iter().map(|&(p, from, _)| (p, from)).collect();
        let mut read = 0u64;
        let deadline = tokio::time::Instant::now() + budget;
        let mut checkpoint = tokio::time::Instant::now() + CHECKPOINT;
        let close = |p: i32, open: &mut BTreeSet<i32>| {
            open.remove(&p);
            // Records past the end keep coming on a busy topic: stop fetching them.
            // Pausing is only a saving: records that still come are ignored below.
            let mut one = TopicPartitionList::new();
            one.add_partition(topic, p);
            let _ = consumer.pause(&one);
        };
        let record = |scan: &mut Scan, next: &BTreeMap<i32, i64>, found: &HashSet<Uuid>| {
            for (&p, &o) in next {
                match scan.next.iter_mut().find(|(q, _)| *q == p) {
                    Some(entry) => entry.1 = entry.1.max(o),
                    None => scan.next.push((p, o)),
                }
            }
            scan.next.sort();
            scan.found = found.iter().copied().collect();
        };
        while !open.is_empty() && !wanted.all_found(found) {
            let wake = deadline.min(checkpoint);
            let message = match tokio::time::timeout_at(wake, consumer.recv()).await {
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    record(scan, &next, found);
                    return Ok(Attempt::CutOff { read });
                }
                Err(_) => {
                    record(scan, &next, found);
                    save(scan)?;
                    checkpoint = tokio::time::Instant::now() + CHECKPOINT;
                    continue;
                }
                Ok(m) => m,
            };
            match message {
                Ok(m) => {
                    let p = m.partition();
                    let Some(&to) = ends.get(&p) else { continue };
                    if !open.contains(&p) {
                        continue;
                    }
                    if m.offset() >= to {
                        next.insert(p, to);
                        close(p, &mut open);
                        continue;
                    }
                    read += 1;
                    scan.read += 1;
                    // Another producer's record that does not decode is not ours: skip it.
                    if let Some(Ok(event)) = m.payload().map(RawAuditEvent::decode) {
                        if wanted.contains(&event.event_id) {
                            found.insert(event.event_id);
                        }
                    }
                    next.insert(p, m.offset() + 1);
                    if m.offset() + 1 >= to || !wanted.missing_on(p, found) {
                        close(p, &mut open);
                    }
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    // At the partition's end, which is at or past where this recovery stops.
                    if let Some(&to) = ends.get(&p) {
                        next.insert(p, to);
                        close(p, &mut open);
                    }
                }
                Err(e) => {
                    record(scan, &next, found);
                    return Err(e).context("reading the raw topic to recover a batch in flight");
                }
            }
            if tokio::time::Instant::now() >= checkpoint {
                record(scan, &next, found);
                save(scan)?;
                checkpoint = tokio::time::Instant::now() + CHECKPOINT;
            }
        }
        record(scan, &next, found);
        Ok(Attempt::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn hashes_match_librdkafka_and_java() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        // librdkafka's own murmur2 vectors (rdmurmur2.c), checked against Java Kafka.
        let unaligned: &[u8] = b"PreAmbleWillBeRemoved,ThePrePartThatIs";
        for (key, want) in [
            (&b"kafka"[..], 0xd067_cf64u32),
            (b"giberish123456789", 0x8f55_2b0c),
            (b"1234", 0x9fc9_7b14),
            (b"234", 0xe7c0_09ca),
            (b"34", 0x8739_30da),
            (b"4", 0x5a4b_5ca1),
            (unaligned, 0x7842_4f1c),
            (&unaligned[1..], 0x4a62_b377),
            (&unaligned[2..], 0xe0e4_e09e),
            (&unaligned[3..], 0x62b8_b43f),
            (b"", 0x106e_08d9),
        ] {
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn the_configured_partitioner_places_keys() {
        let none: [(String, &str); 0] = [];
        assert_eq!(Partitioner::from_properties(none), Partitioner::Crc32);
        let set = |v: &'static str| [("partitioner".to_string(), v)];
        assert_eq!(
            Partitioner::from_properties(set("murmur2_random")),
            Partitioner::Murmur2
        );
        assert_eq!(
            Partitioner::from_properties(set("random")),
            Partitioner::Unknown
        );
        assert_eq!(
            Partitioner::from_properties(set("fnv1a")),
            Partitioner::Unknown
        );
        let crc = Partitioner::Crc32;
        assert_eq!(
            crc.partition(b"123456789", 7),
            Some((0xcbf4_3926u32 % 7) as i32)
        );
        // Java: toPositive(murmur2("kafka")) % 10 == 0.
        assert_eq!(Partitioner::Murmur2.partition(b"kafka", 10), Some(0));
        assert_eq!(crc.partition(b"", 3), None, "an empty key may go anywhere");
        assert_eq!(crc.partition(b"k", 0), None);
        assert_eq!(Partitioner::Unknown.partition(b"k", 3), None);
    }

    #[test]
    fn lines_are_grouped_by_partition_and_unknown_ones_are_looked_for_everywhere() {
        let keys: Vec<(Uuid, Vec<u8>)> = (0..40u128)
            .map(|n| (id(n), format!("session-{n}").into_bytes()))
            .collect();
        let lines = Lines::group(
            keys.iter()
                .map(|(i, k)| (*i, k.as_slice()))
                .chain([(id(99), &b""[..])]),
            Partitioner::Crc32,
            3,
        );
        assert_eq!(lines.partitions, 3);
        assert_eq!(lines.ids[0].0, ANY_PARTITION);
        assert_eq!(lines.ids[0].1, vec![id(99)]);
        for (p, ids) in &lines.ids[1..] {
            for i in ids {
                let key = &keys.iter().find(|(k, _)| k == i).unwrap().1;
                assert_eq!(Partitioner::Crc32.partition(key, 3), Some(*p));
            }
        }
        let all = [0, 1, 2];
        let wanted = Wanted::new(&lines, &all);
        let mut found = HashSet::new();
        assert_eq!(wanted.partitions(&all, &found), vec![0, 1, 2]);
        // Once the id that may be anywhere is found, only partitions with missing ids remain.
        found.insert(id(99));
        let (p0, ids0) = &lines.ids[1];
        found.extend(ids0.iter().copied());
        assert!(!wanted.missing_on(*p0, &found));
        assert!(!wanted.partitions(&all, &found).contains(p0));
        assert!(!wanted.all_found(&found));
        for (_, ids) in &lines.ids {
            found.extend(ids.iter().copied());
        }
        assert!(wanted.all_found(&found));
        assert!(wanted.partitions(&all, &found).is_empty());
        assert!(wanted.missing(&found).is_empty());
        assert!(!wanted.contains(&id(1000)));
    }

    #[test]
    fn a_changed_partition_count_looks_everywhere() {
        let lines = Lines {
            partitions: 2,
            ids: vec![(0, vec![id(1)]), (1, vec![id(2)])],
        };
        let wanted = Wanted::new(&lines, &[0, 1, 2]);
        let found = HashSet::from([id(2)]);
        assert_eq!(wanted.partitions(&[0, 1, 2], &found), vec![0, 1, 2]);
        assert_eq!(wanted.missing(&found), vec![id(1)]);
    }

    #[test]
    fn what_is_left_to_read_goes_on_from_the_saved_progress() {
        let lines = Lines {
            partitions: 3,
            ids: vec![(0, vec![id(1)]), (2, vec![id(2), id(3)])],
        };
        let wanted = Wanted::new(&lines, &[0, 1, 2]);
        let marks = [(0, 10), (1, 20), (2, 30)];
        let until = [(0, 1_000), (2, 2_000)];
        let mut found = HashSet::new();
        let fresh = Scan::default();
        assert_eq!(
            to_read(&wanted, &found, &marks, &fresh, &until),
            vec![(0, 10, 1_000), (2, 30, 2_000)]
        );
        let scan = Scan {
            next: vec![(0, 400), (2, 2_000)],
            until: Some(until.to_vec()),
            found: vec![],
            read: 2_360,
        };
        // Partition 2 is read to its end: only partition 0 is left, from where it stopped.
        assert_eq!(
            to_read(&wanted, &found, &marks, &scan, &until),
            vec![(0, 400, 1_000)]
        );
        // Every id of partition 0 found: nothing is left, however far the end.
        found.insert(id(1));
        assert!(to_read(&wanted, &found, &marks, &scan, &until).is_empty());
        // A partition missing from the marks (added since) is read from its start.
        let anywhere = Wanted::new(&Lines::anywhere([id(7)], 3), &[0, 1, 2]);
        assert_eq!(
            to_read(&anywhere, &found, &[(0, 5)], &fresh, &[(0, 6), (1, 3)]),
            vec![(0, 5, 6), (1, 0, 3)]
        );
    }

    #[test]
    fn the_progress_record_round_trips_and_old_records_still_load() {
        let scan = Scan {
            next: vec![(0, 400), (2, 2_000)],
            until: Some(vec![(0, 1_000), (2, 2_000)]),
            found: vec![id(5)],
            read: 2_360,
        };
        let text = serde_json::to_string(&scan).unwrap();
        assert_eq!(
            text,
            r#"{"next":[[0,400],[2,2000]],"until":[[0,1000],[2,2000]],"found":["00000000-0000-0000-0000-000000000005"],"read":2360}"#
        );
        assert_eq!(serde_json::from_str::<Scan>(&text).unwrap(), scan);
        assert_eq!(serde_json::from_str::<Scan>("{}").unwrap(), Scan::default());
        assert_eq!(Scan::knowing([]), None);
        assert_eq!(Scan::knowing([id(1)]).unwrap().found, vec![id(1)]);
        let lines = Lines {
            partitions: 3,
            ids: vec![(1, vec![id(1)])],
        };
        let text = serde_json::to_string(&lines).unwrap();
        assert_eq!(serde_json::from_str::<Lines>(&text).unwrap(), lines);
        assert!(Lines::anywhere([], 3).is_empty());
    }
}
