//! `auditctl verify`, v2: the signed checkpoints (`audit_schemas::chain::checkpoint`) and the
//! stored links under them.
//!
//! Each checkpoint signed in the range is judged:
//!
//! - its signature must verify with a configured key (else **FORGED**, and it proves nothing);
//! - its `prev` must name a stored checkpoint of the same partition, or be the very first
//!   (else **MISSING**: a checkpoint, a run of them or a whole epoch was deleted);
//! - each chain's stored links `0..tree_size` (rows, or the sink's skips of replayed copies)
//!   must give the signed Merkle root (else **ALTERED**, narrowed to the links between the
//!   last checkpoint that still matches and the first that does not), and none may be
//!   absent (**DELETED**).
//!
//! An enricher checkpoints every partition it owns every interval, idle or not, so one
//! partition's list that stops more than the grace before the newest checkpoint of any
//! partition was cut short (**TRUNCATED**). What this cannot see from ClickHouse alone: the
//! tails of every partition cut at the same moment; a witness of the newest checkpoints kept
//! elsewhere closes that.

use crate::verify_columns;
use anyhow::{Context, Result};
use audit_schemas::chain::{checkpoint, content, leaf, merkle};
use audit_schemas::control;
use audit_sink_clickhouse::encoder::EventRow;
use checkpoint::Checkpoint;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// How far before the range checkpoints are read, so that the range's first checkpoints find
/// the ones they name.
const LOOKBACK_US: i64 = 600 * 1_000_000;

/// What the checkpoints and the links under them show.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckpointFinding {
    Forged {
        raw_partition: i32,
        epoch: String,
        tree_size: u64,
        key_id: String,
    },
    Missing {
        raw_partition: i32,
        epoch: String,
        tree_size: u64,
        signed_at: i64,
    },
    Truncated {
        raw_partition: i32,
        newest_us: i64,
        latest_us: i64,
    },
    Altered {
        raw_partition: i32,
        epoch: String,
        /// Some stored link in `first..end` is not the one signed.
        first: u64,
        end: u64,
    },
    Deleted {
        raw_partition: i32,
        epoch: String,
        seq: u64,
    },
    /// More than one stored content claims one link: all but one are not the event signed.
    Conflict {
        raw_partition: i32,
        epoch: String,
        seq: u64,
        contents: usize,
    },
    /// A stored row whose columns are not what its signed content gives.
    Columns {
        raw_partition: i32,
        epoch: String,
        seq: u64,
        event_id: String,
        columns: Vec<String>,
    },
    /// A checkpoint signed with a key after a rotation retired it.
    Retired {
        raw_partition: i32,
        epoch: String,
        tree_size: u64,
        key_id: String,
        signed_at: i64,
        retired_at: i64,
    },
    /// A rotation record that does not hold (forged, or from a key nobody trusts).
    Rotation {
        old_key_id: String,
        new_key_id: String,
        why: String,
    },
    /// Links above the retention horizon that no stored frontier lets the walk reach.
    Unprovable {
        raw_partition: i32,
        epoch: String,
        first: u64,
        end: u64,
    },
    /// Stored peaks beside a checkpoint that do not fold to its signed root.
    Frontier {
        raw_partition: i32,
        epoch: String,
        tree_size: u64,
    },
    /// Events stored but not one valid checkpoint: were the checkpoints deleted?
    NothingProven { rows: u64 },
    /// A checkpoint an earlier `verify --state` run proved is no longer stored as it was.
    RolledBack {
        raw_partition: i32,
        epoch: String,
        tree_size: u64,
        signed_at: i64,
    },
    /// A row whose personal data is blanked, as `auditctl erase` does, with no signed erasure
    /// record naming it: someone who writes to ClickHouse removed who did it.
    ErasedUnrecorded {
        raw_partition: i32,
        epoch: String,
        seq: u64,
        event_id: String,
    },
    /// Checkpoints of one chain the CloudWatch witness holds and ClickHouse does not.
    NotStored {
        stream: String,
        raw_partition: i32,
        epoch: String,
        run: Run,
    },
    /// Checkpoints of one chain ClickHouse holds, older than the grace, that the CloudWatch
    /// witness does not: its entries were deleted, or these were planted.
    Unwitnessed {
        stream: String,
        raw_partition: i32,
        epoch: String,
        run: Run,
    },
}

/// A run of one chain's checkpoints, for naming many in one line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Run {
    pub count: u64,
    pub sizes: (u64, u64),
    pub signed: (i64, i64),
}

impl Run {
    fn of<'a>(list: impl IntoIterator<Item = &'a Checkpoint>) -> Option<Self> {
        let mut run: Option<Self> = None;
        for c in list {
            let r = run.get_or_insert(Self {
                count: 0,
                sizes: (c.tree_size, c.tree_size),
                signed: (c.signed_at, c.signed_at),
            });
            r.count += 1;
            r.sizes = (r.sizes.0.min(c.tree_size), r.sizes.1.max(c.tree_size));
            r.signed = (r.signed.0.min(c.signed_at), r.signed.1.max(c.signed_at));
        }
        run
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            write!(
                f,
                "1 checkpoint (size {}, signed at {} us)",
                self.sizes.0, self.signed.0
            )
        } else {
            write!(
                f,
                "{} checkpoints (sizes {}..={}, signed {}..={} us)",
                self.count, self.sizes.0, self.sizes.1, self.signed.0, self.signed.1
            )
        }
    }
}

/// Witnesses of the checkpoints kept outside ClickHouse (all already verified).
#[derive(Debug, Default)]
pub struct Witnesses<'a> {
    /// `verify --state`: the newest checkpoint each earlier run proved per partition.
    pub state: &'a [Checkpoint],
    /// The CloudWatch witness stream's name and its valid checkpoints.
    pub cloudwatch: Option<(&'a str, &'a [Checkpoint])>,
}

impl fmt::Display for CheckpointFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Forged {
                raw_partition,
                epoch,
                tree_size,
                key_id,
            } => write!(
                f,
                "FORGED   checkpoint of raw partition {raw_partition}, chain {epoch} at size {tree_size}: the signature does not verify with key {key_id:?}"
            ),
            Self::Missing {
                raw_partition,
                epoch,
                tree_size,
                signed_at,
            } => write!(
                f,
                "MISSING  raw partition {raw_partition}: the checkpoint before chain {epoch}'s at size {tree_size} (signed at {} us) is not stored: checkpoints, or a whole chain, were deleted",
                signed_at
            ),
            Self::Truncated {
                raw_partition,
                newest_us,
                latest_us,
            } => write!(
                f,
                "TRUNCATED raw partition {raw_partition}: its newest checkpoint was signed {:.1} s before the newest of any partition: its tail was deleted",
                (latest_us - newest_us) as f64 / 1e6
            ),
            Self::Altered {
                raw_partition,
                epoch,
                first,
                end,
            } => write!(
                f,
                "ALTERED  raw partition {raw_partition}: chain {epoch}'s stored links {first}..{end} do not give the signed Merkle root"
            ),
            Self::Deleted {
                raw_partition,
                epoch,
                seq,
            } => write!(
                f,
                "DELETED  raw partition {raw_partition}: chain {epoch} link {seq}, under a signed checkpoint, is not stored"
            ),
            Self::Conflict {
                raw_partition,
                epoch,
                seq,
                contents,
            } => write!(
                f,
                "ALTERED  raw partition {raw_partition}: {contents} different stored events claim chain {epoch} link {seq}"
            ),
            Self::Columns {
                raw_partition,
                epoch,
                seq,
                event_id,
                columns,
            } => write!(
                f,
                "ALTERED  raw partition {raw_partition}: chain {epoch} link {seq}, event {event_id}: {} {} from the signed content",
                if columns.len() == 1 { "column" } else { "columns" },
                if columns.len() == 1 {
                    format!("{} differs", columns[0])
                } else {
                    format!("{} differ", columns.join(", "))
                }
            ),
            Self::Retired {
                raw_partition,
                epoch,
                tree_size,
                key_id,
                signed_at,
                retired_at,
            } => write!(
                f,
                "RETIRED  checkpoint of raw partition {raw_partition}, chain {epoch} at size {tree_size}: signed with key {key_id:?} at {signed_at} us, after a rotation retired that key at {retired_at} us (a stolen old key, or an enricher still on it): it proves nothing"
            ),
            Self::Rotation {
                old_key_id,
                new_key_id,
                why,
            } => write!(
                f,
                "FORGED   key rotation from {old_key_id:?} to {new_key_id:?} stored in ClickHouse: {why}"
            ),
            Self::Unprovable {
                raw_partition,
                epoch,
                first,
                end,
            } => write!(
                f,
                "UNSIGNED raw partition {raw_partition}: chain {epoch}'s links {first}..{end}, above the retention horizon, cannot be proven: no stored frontier follows the expired links (chain_frontiers rows deleted, or checkpoints from before frontiers were kept)"
            ),
            Self::Frontier {
                raw_partition,
                epoch,
                tree_size,
            } => write!(
                f,
                "ALTERED  raw partition {raw_partition}: the frontier stored for chain {epoch}'s checkpoint at size {tree_size} does not give its signed root, so the links after expired ones cannot be proven from it"
            ),
            Self::NothingProven { rows } => write!(
                f,
                "UNSIGNED {rows} events stored and not one valid checkpoint: nothing is proven (were the checkpoints deleted?)"
            ),
            Self::RolledBack {
                raw_partition,
                epoch,
                tree_size,
                signed_at,
            } => write!(
                f,
                "ROLLED BACK raw partition {raw_partition}: the checkpoint an earlier run proved (chain {epoch} at size {tree_size}, signed at {signed_at} us) is not in ClickHouse: it was rolled back to an older copy or its history rewritten"
            ),
            Self::ErasedUnrecorded {
                raw_partition,
                epoch,
                seq,
                event_id,
            } => write!(
                f,
                "ALTERED  raw partition {raw_partition}: chain {epoch} link {seq}, event {event_id}: its personal data is blanked with no signed erasure record naming it (auditctl erase records every erasure)"
            ),
            Self::NotStored {
                stream,
                raw_partition,
                epoch,
                run,
            } => write!(
                f,
                "MISSING  raw partition {raw_partition}: {run} of chain {epoch} witnessed in CloudWatch stream {stream} {} not in ClickHouse: deleted, or ClickHouse rolled back",
                if run.count == 1 { "is" } else { "are" }
            ),
            Self::Unwitnessed {
                stream,
                raw_partition,
                epoch,
                run,
            } => write!(
                f,
                "UNWITNESSED raw partition {raw_partition}: {run} of chain {epoch} in ClickHouse {} not in CloudWatch stream {stream}: its witness entries were deleted, or {} planted (or the CloudWatch sink is more than the grace behind)",
                if run.count == 1 { "is" } else { "are" },
                if run.count == 1 { "it was" } else { "they were" }
            ),
        }
    }
}

/// What the checkpoint check found and covered.
#[derive(Debug, Default)]
pub struct CheckpointReport {
    pub findings: Vec<CheckpointFinding>,
    /// Valid checkpoints signed in the range.
    pub checkpoints: u64,
    /// Chains whose roots were recomputed, and the links under them.
    pub chains: u64,
    pub links: u64,
    /// The valid checkpoints signed in the range, for a witness to keep.
    pub proven: Vec<Checkpoint>,
    /// Checkpoints of an earlier run found stored as they were, their links re-proven.
    pub witnessed: u64,
    /// Checkpoints in the range the CloudWatch witness holds, and of them those ClickHouse
    /// holds too.
    pub cloudwatch_witnessed: u64,
    pub cloudwatch_matched: u64,
    /// Rows under a checkpoint whose personal data a signed erasure record erased.
    pub erased: u64,
    /// Links below the retention horizon no longer stored, and those still stored there that
    /// nothing proves any more ([`Walked`]).
    pub expired: u64,
    pub unproven: u64,
}

/// The checks on the checkpoints alone: signatures, the `prev` list and truncation.
///
/// `context` holds checkpoints signed before the range (what the first in-range ones name);
/// `in_range` those signed in it. Returns the valid in-range ones for the root check.
pub fn judge_lists(
    context: &[Checkpoint],
    in_range: &[Checkpoint],
    keys: &HashMap<String, ed25519_dalek::VerifyingKey>,
    retired: &HashMap<String, i64>,
    grace_us: i64,
    findings: &mut Vec<CheckpointFinding>,
) -> Vec<Checkpoint> {
    // A key's checkpoints count up to its rotation; one it signs later proves nothing.
    let valid = |c: &Checkpoint| {
        keys.get(&c.key_id).is_some_and(|k| c.verify(k))
            && retired.get(&c.key_id).is_none_or(|t| c.signed_at <= *t)
    };
    let mut ids: HashSet<(i32, String)> = HashSet::new();
    for c in context.iter().chain(in_range).filter(|c| valid(c)) {
        ids.insert((c.raw_partition, c.id()));
    }
    let mut good = Vec::new();
    for c in in_range {
        if let Some(&retired_at) = retired.get(&c.key_id).filter(|t| c.signed_at > **t) {
            if keys.get(&c.key_id).is_some_and(|k| c.verify(k)) {
                findings.push(CheckpointFinding::Retired {
                    raw_partition: c.raw_partition,
                    epoch: c.epoch.clone(),
                    tree_size: c.tree_size,
                    key_id: c.key_id.clone(),
                    signed_at: c.signed_at,
                    retired_at,
                });
                continue;
            }
        }
        if !valid(c) {
            findings.push(CheckpointFinding::Forged {
                raw_partition: c.raw_partition,
                epoch: c.epoch.clone(),
                tree_size: c.tree_size,
                key_id: c.key_id.clone(),
            });
            continue;
        }
        if c.prev != checkpoint::no_previous() && !ids.contains(&(c.raw_partition, c.prev.clone()))
        {
            findings.push(CheckpointFinding::Missing {
                raw_partition: c.raw_partition,
                epoch: c.epoch.clone(),
                tree_size: c.tree_size,
                signed_at: c.signed_at,
            });
        }
        good.push(c.clone());
    }
    let mut newest: BTreeMap<i32, i64> = BTreeMap::new();
    for c in context.iter().chain(&good).filter(|c| valid(c)) {
        let n = newest.entry(c.raw_partition).or_insert(i64::MIN);
        *n = (*n).max(c.signed_at);
    }
    if let Some(&latest) = newest.values().max() {
        for (&raw_partition, &newest_us) in &newest {
            if newest_us < latest.saturating_sub(grace_us) {
                findings.push(CheckpointFinding::Truncated {
                    raw_partition,
                    newest_us,
                    latest_us: latest,
                });
            }
        }
    }
    good
}

/// Recomputes one chain's tree from its stored links, in seq order, against its checkpoints.
///
/// `links` yields `(seq, content)` ordered by seq (a seq may repeat); `checkpoints` are the
/// chain's valid ones. Links below [`RootCheck::expiring_below`] may be absent (retention
/// removed them: EXPIRED, not DELETED); after such a gap the walk resumes at the next
/// [`RootCheck::offer`]ed frontier, and the stored links between are counted as not proven.
/// Pure, so it is tested without a server.
pub struct RootCheck<'a> {
    raw_partition: i32,
    epoch: &'a str,
    /// Signed roots by tree size, ascending.
    signed: Vec<(u64, String)>,
    frontier: merkle::Frontier,
    /// The seq the next leaf is for; equals `frontier.size()` while `synced`.
    next: u64,
    /// Whether `frontier` is the tree of links `0..next` (false after an expired gap).
    synced: bool,
    /// Links below this may have been removed by retention.
    expirable: u64,
    expired: u64,
    unproven: u64,
    /// Stored links above the horizon the walk could not prove (no frontier after a gap).
    unprovable: Option<(u64, u64)>,
    unproven_above: u64,
    /// The tree size of the last signed root that matched.
    matched: u64,
    /// The link being gathered (seq, distinct contents).
    pending: Option<(u64, Vec<String>)>,
    altered: bool,
    /// A link since the last match is not stored: its DELETED already explains a mismatch.
    gap: bool,
}

/// What one chain's walk covered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// Links recomputed into a signed root (or found absent: each then a finding).
    pub links: u64,
    /// Links below the retention horizon that are no longer stored.
    pub expired: u64,
    /// Links stored below the horizon between expired ones and the next frontier: the tree
    /// around them is gone, so nothing proves them (they expire next).
    pub unproven: u64,
}

impl<'a> RootCheck<'a> {
    pub fn new(raw_partition: i32, epoch: &'a str, checkpoints: &[&Checkpoint]) -> Self {
        let mut signed: Vec<(u64, String)> = checkpoints
            .iter()
            .map(|c| (c.tree_size, c.root.clone()))
            .collect();
        signed.sort();
        signed.dedup();
        Self {
            raw_partition,
            epoch,
            signed,
            frontier: merkle::Frontier::default(),
            next: 0,
            synced: true,
            expirable: 0,
            expired: 0,
            unproven: 0,
            unprovable: None,
            unproven_above: 0,
            matched: 0,
            pending: None,
            altered: false,
            gap: false,
        }
    }

    /// Links `0..end` may be gone by retention (see [`expiring_below`]).
    pub fn expiring_below(mut self, end: u64) -> Self {
        self.expirable = end;
        self
    }

    /// Links up to this seq (exclusive) are needed.
    pub fn end(&self) -> u64 {
        self.signed.last().map_or(0, |(size, _)| *size)
    }

    pub fn push(&mut self, seq: u64, content: String, findings: &mut Vec<CheckpointFinding>) {
        match &mut self.pending {
            Some((s, contents)) if *s == seq => {
                if !contents.contains(&content) {
                    contents.push(content);
                }
            }
            _ => {
                self.flush(findings);
                self.pending = Some((seq, vec![content]));
            }
        }
    }

    /// A stored frontier of the tree at `size`: every link below `size` was pushed already.
    /// After an expired gap the walk resumes from it, if `authentic` gives it (the peaks fold
    /// to a validly signed root of this chain at `size`); `None` there is a finding, since
    /// only a ClickHouse writer changes stored peaks.
    pub fn offer(
        &mut self,
        size: u64,
        authentic: impl FnOnce() -> Option<merkle::Frontier>,
        findings: &mut Vec<CheckpointFinding>,
    ) {
        if self.pending.as_ref().is_some_and(|(seq, _)| *seq < size) {
            self.flush(findings);
        }
        if self.altered || size > self.end() || size < self.next {
            return;
        }
        self.absent_until(size, findings);
        if self.synced || self.next != size {
            return;
        }
        match authentic() {
            Some(f) if f.size() == size => {
                self.frontier = f;
                self.synced = true;
                self.matched = size;
            }
            _ => findings.push(CheckpointFinding::Frontier {
                raw_partition: self.raw_partition,
                epoch: self.epoch.to_string(),
                tree_size: size,
            }),
        }
    }

    fn flush(&mut self, findings: &mut Vec<CheckpointFinding>) {
        let Some((seq, contents)) = self.pending.take() else {
            return;
        };
        if seq >= self.end() || self.altered || seq < self.next {
            return;
        }
        self.absent_until(seq, findings);
        if contents.len() > 1 {
            findings.push(CheckpointFinding::Conflict {
                raw_partition: self.raw_partition,
                epoch: self.epoch.to_string(),
                seq,
                contents: contents.len(),
            });
        }
        // Of several, the one that keeps the tree matching at the next signed size cannot be
        // told apart here; the first stands in and a wrong choice shows as ALTERED too.
        self.leaf(contents.first().map(String::as_str), findings);
    }

    /// Links `next..seq` are not stored: expired below the horizon, deleted above it.
    fn absent_until(&mut self, seq: u64, findings: &mut Vec<CheckpointFinding>) {
        while self.next < seq && !self.altered {
            if self.next < self.expirable {
                let upto = seq.min(self.expirable);
                self.expired += upto - self.next;
                self.next = upto;
                self.synced = false;
            } else {
                self.leaf(None, findings);
            }
        }
    }

    /// The leaf at `next`; `None` when no content is stored for it.
    fn leaf(&mut self, content: Option<&str>, findings: &mut Vec<CheckpointFinding>) {
        let seq = self.next;
        self.next += 1;
        let digest = match content {
            Some(c) => content::content_digest(c.as_bytes()),
            None => {
                findings.push(CheckpointFinding::Deleted {
                    raw_partition: self.raw_partition,
                    epoch: self.epoch.to_string(),
                    seq,
                });
                // A stand-in leaf: the root will not match, which the DELETED already says.
                self.gap = true;
                [0u8; 32]
            }
        };
        if !self.synced {
            if content.is_some() {
                if seq < self.expirable {
                    self.unproven += 1;
                } else {
                    // Above the horizon every link must be proven: no frontier took the walk
                    // on after the expired ones.
                    let (first, _) = *self.unprovable.get_or_insert((seq, seq));
                    self.unprovable = Some((first, seq + 1));
                    self.unproven_above += 1;
                }
            }
            return;
        }
        let seq_i64 = i64::try_from(seq).unwrap_or(i64::MAX);
        self.frontier.push(leaf::link_leaf(
            self.raw_partition,
            self.epoch,
            seq_i64,
            &digest,
        ));
        self.compare(findings);
    }

    fn compare(&mut self, findings: &mut Vec<CheckpointFinding>) {
        let size = self.frontier.size();
        let root = hex::encode(self.frontier.root());
        for (signed_size, signed_root) in &self.signed {
            if *signed_size != size {
                continue;
            }
            if *signed_root == root {
                self.matched = size;
            } else if !self.gap && !self.altered {
                // Only the first mismatch says where; every later root differs as well.
                findings.push(CheckpointFinding::Altered {
                    raw_partition: self.raw_partition,
                    epoch: self.epoch.to_string(),
                    first: self.matched,
                    end: size,
                });
                self.altered = true;
            }
        }
    }

    /// Ends the walk: links up to the largest signed size that were never stored are deleted
    /// (or expired, below the horizon).
    pub fn finish(mut self, findings: &mut Vec<CheckpointFinding>) -> Walked {
        self.flush(findings);
        let end = self.end();
        self.absent_until(end, findings);
        if let Some((first, end)) = self.unprovable {
            findings.push(CheckpointFinding::Unprovable {
                raw_partition: self.raw_partition,
                epoch: self.epoch.to_string(),
                first,
                end,
            });
        }
        Walked {
            links: self.next - self.expired - self.unproven - self.unproven_above,
            expired: self.expired,
            unproven: self.unproven,
        }
    }
}

#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
struct CheckpointRow {
    raw_partition: i32,
    epoch: String,
    tree_size: u64,
    root: String,
    raw_offset_start: i64,
    raw_offset_end: i64,
    prev: String,
    signed_us: i64,
    key_id: String,
    signature: String,
}

impl From<CheckpointRow> for Checkpoint {
    fn from(r: CheckpointRow) -> Self {
        Checkpoint {
            raw_partition: r.raw_partition,
            epoch: r.epoch,
            tree_size: r.tree_size,
            root: r.root,
            raw_offset_start: r.raw_offset_start,
            raw_offset_end: r.raw_offset_end,
            prev: r.prev,
            signed_at: r.signed_us,
            key_id: r.key_id,
            signature: r.signature,
        }
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct LinkRow {
    seq: i64,
    content: String,
}

const COLUMNS: &str =
    "raw_partition, epoch, tree_size, root, raw_offset_start, raw_offset_end, prev,
     toUnixTimestamp64Micro(signed_at) AS signed_us, key_id, signature";

/// `tail`: the WHERE clause and any ORDER BY / LIMIT, with `?` for `binds`.
async fn read(db: &clickhouse::Client, tail: &str, binds: &[i64]) -> Result<Vec<Checkpoint>> {
    let mut q = db.query(&format!(
        "SELECT DISTINCT {COLUMNS} FROM chain_checkpoints {tail}"
    ));
    for b in binds {
        q = q.bind(*b);
    }
    let rows: Vec<CheckpointRow> = q.fetch_all().await.context("reading chain_checkpoints")?;
    Ok(rows.into_iter().map(Checkpoint::from).collect())
}

/// A frontier as `chain_frontiers` stores it: the peaks of the tree a checkpoint signs.
#[derive(Debug, clickhouse::Row, Deserialize)]
struct FrontierRow {
    tree_size: u64,
    root: String,
    peaks: Vec<String>,
}

/// One chain's stored frontiers below its retention horizon, in size order, offered to the
/// walk as it passes each size. Only sizes from the chain's first stored link on are read: a
/// walk resumes after a gap, and there is none before the first stored link it could resume
/// into. (Read whole, not streamed beside the links' cursor.)
struct Frontiers<'k> {
    rows: std::iter::Peekable<std::vec::IntoIter<FrontierRow>>,
    /// The checkpoints the frontiers belong to, by (tree size, root).
    checkpoints: HashMap<(u64, String), Checkpoint>,
    keys: &'k HashMap<String, ed25519_dalek::VerifyingKey>,
}

impl<'k> Frontiers<'k> {
    async fn load(
        db: &clickhouse::Client,
        keys: &'k HashMap<String, ed25519_dalek::VerifyingKey>,
        (partition, epoch): (i32, &str),
        upto: u64,
    ) -> Result<Self> {
        let first: i64 = db
            .query(
                "SELECT toInt64(ifNull(min(chain_seq), -1)) FROM events
                 WHERE raw_partition = ? AND chain_epoch = ? AND chain_seq >= 0",
            )
            .bind(partition)
            .bind(epoch)
            .fetch_one()
            .await
            .with_context(|| format!("reading the first stored link of chain {epoch}"))?;
        let from = u64::try_from(first).unwrap_or(0);
        let rows: Vec<FrontierRow> = db
            .query(
                "SELECT DISTINCT tree_size, root, peaks FROM chain_frontiers
                 WHERE raw_partition = ? AND epoch = ? AND tree_size BETWEEN ? AND ?
                 ORDER BY tree_size",
            )
            .bind(partition)
            .bind(epoch)
            .bind(from)
            .bind(upto)
            .fetch_all()
            .await
            .with_context(|| format!("reading the frontiers of chain {epoch}"))?;
        let checkpoints: Vec<CheckpointRow> = db
            .query(&format!(
                "SELECT {COLUMNS} FROM chain_checkpoints
                 WHERE raw_partition = ? AND epoch = ? AND tree_size BETWEEN ? AND ?
                 ORDER BY signed_at LIMIT 1 BY tree_size, root"
            ))
            .bind(partition)
            .bind(epoch)
            .bind(from)
            .bind(upto)
            .fetch_all()
            .await
            .with_context(|| format!("reading the checkpoints of chain {epoch}"))?;
        Ok(Self {
            rows: rows.into_iter().peekable(),
            checkpoints: checkpoints
                .into_iter()
                .map(Checkpoint::from)
                .map(|c| ((c.tree_size, c.root.clone()), c))
                .collect(),
            keys,
        })
    }

    /// Offers every frontier of size at most `upto` (all links below it were pushed). One
    /// with no stored checkpoint of its size and root is no frontier of this chain.
    fn offer_upto(
        &mut self,
        upto: u64,
        check: &mut RootCheck<'_>,
        findings: &mut Vec<CheckpointFinding>,
    ) {
        while let Some(row) = self.rows.next_if(|r| r.tree_size <= upto) {
            let Some(c) = self.checkpoints.get(&(row.tree_size, row.root.clone())) else {
                continue;
            };
            let keys = self.keys;
            check.offer(
                row.tree_size,
                || {
                    let signed = keys.get(&c.key_id).is_some_and(|k| c.verify(k));
                    signed.then(|| c.frontier(&row.peaks)).flatten()
                },
                findings,
            );
        }
    }
}

/// What explains a link that is not stored, other than tampering.
#[derive(Debug, Clone, Copy)]
pub struct Explanations<'a> {
    pub retention: Option<Retention>,
    pub letters: &'a crate::verify_dead_letters::DeadLettered,
    /// Keys a rotation retired, and when: what they sign later is no explanation of anything.
    pub retired: &'a HashMap<String, i64>,
}

/// How far retention reaches: links enriched before `before_us` may have been removed.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub before_us: i64,
}

/// The seq below which one chain's links may have expired: the size of its oldest valid
/// checkpoint C signed a grace after the retention cut (a later link was linked after C was
/// signed, so after the cut; the grace covers the enricher's wait for the broker and the
/// clocks of the enricher and ClickHouse). C counts only when the checkpoint it names is
/// stored, valid and of the same chain: C is then not an epoch's first (whose links were all
/// made after the cut), and no run of checkpoints after the cut was deleted to move the
/// horizon on. Otherwise nothing may have expired. With no checkpoint after the cut, the
/// whole chain is older and may be gone.
async fn expirable(
    db: &clickhouse::Client,
    keys: &HashMap<String, ed25519_dalek::VerifyingKey>,
    (partition, epoch): (i32, &str),
    retention: Retention,
    grace_us: i64,
    end: u64,
) -> Result<u64> {
    let valid = |c: &Checkpoint| keys.get(&c.key_id).is_some_and(|k| c.verify(k));
    let cut = retention.before_us.saturating_add(grace_us);
    let read = |tail: &'static str| {
        db.query(&format!(
            "SELECT {COLUMNS} FROM chain_checkpoints
             WHERE raw_partition = ? AND epoch = ? AND {tail}"
        ))
        .bind(partition)
        .bind(epoch)
        .bind(cut)
    };
    let mut after = read("signed_at >= fromUnixTimestamp64Micro(?) ORDER BY signed_at")
        .fetch::<CheckpointRow>()
        .with_context(|| format!("reading the checkpoints of chain {epoch}"))?;
    let horizon = loop {
        match after.next().await? {
            None => return Ok(end),
            Some(row) => {
                let c = Checkpoint::from(row);
                if valid(&c) {
                    break c;
                }
            }
        }
    };
    let before: Vec<CheckpointRow> =
        read("signed_at < fromUnixTimestamp64Micro(?) ORDER BY signed_at DESC LIMIT 16")
            .fetch_all()
            .await
            .with_context(|| format!("reading the checkpoints of chain {epoch}"))?;
    let named = before
        .into_iter()
        .map(Checkpoint::from)
        .any(|c| c.id() == horizon.prev && valid(&c));
    Ok(if named { horizon.tree_size.min(end) } else { 0 })
}

/// Checks the checkpoints signed in `[from_us, to_us]` and the links under them.
///
/// Each witnessed checkpoint must be stored exactly, and the links under it are recomputed to
/// its root with the range's (stored or not: a witnessed checkpoint proves what should be
/// there), so a rollback, a rewrite of what an earlier run saw or checkpoints deleted with
/// their rows are findings. ClickHouse's checkpoints older than the grace must be in the
/// CloudWatch witness.
pub async fn verify(
    db: &clickhouse::Client,
    keys: &HashMap<String, ed25519_dalek::VerifyingKey>,
    (from_us, to_us): (i64, i64),
    grace_us: i64,
    rows_in_range: u64,
    witnesses: &Witnesses<'_>,
    explanations: Explanations<'_>,
) -> Result<CheckpointReport> {
    let Explanations {
        retention,
        letters,
        retired,
    } = explanations;
    let mut report = CheckpointReport::default();
    let window =
        "WHERE signed_at BETWEEN fromUnixTimestamp64Micro(?) AND fromUnixTimestamp64Micro(?)
                  ORDER BY raw_partition, signed_us";
    let in_range = read(db, window, &[from_us, to_us]).await?;
    let mut context = read(
        db,
        window,
        &[
            from_us.saturating_sub(LOOKBACK_US),
            from_us.saturating_sub(1),
        ],
    )
    .await?;
    // A partition left unowned for longer than the lookback: its list resumes after a gap.
    let known: HashSet<String> = context.iter().chain(&in_range).map(|c| c.id()).collect();
    let unresolved: HashSet<i32> = in_range
        .iter()
        .filter(|c| c.prev != checkpoint::no_previous() && !known.contains(&c.prev))
        .map(|c| c.raw_partition)
        .collect();
    for p in unresolved {
        let older = read(
            db,
            "WHERE raw_partition = ? AND signed_at < fromUnixTimestamp64Micro(?)
             ORDER BY signed_at DESC LIMIT 1000",
            &[i64::from(p), from_us.saturating_sub(LOOKBACK_US)],
        )
        .await?;
        context.extend(older);
    }
    let valid = judge_lists(
        &context,
        &in_range,
        keys,
        retired,
        grace_us,
        &mut report.findings,
    );
    report.checkpoints = valid.len() as u64;
    if valid.is_empty() && rows_in_range > 0 {
        report.findings.push(CheckpointFinding::NothingProven {
            rows: rows_in_range,
        });
    }
    for w in witnesses.state {
        let stored = read_one(db, w).await?;
        if stored.as_ref() == Some(w) {
            report.witnessed += 1;
        } else {
            report.findings.push(CheckpointFinding::RolledBack {
                raw_partition: w.raw_partition,
                epoch: w.epoch.clone(),
                tree_size: w.tree_size,
                signed_at: w.signed_at,
            });
        }
    }
    let mut cloudwatch: Vec<&Checkpoint> = Vec::new();
    if let Some((stream, witnessed)) = witnesses.cloudwatch {
        // Both sinks ship a little after the signing: the grace's last stretch is judged later.
        let required_before = to_us.saturating_sub(grace_us);
        cloudwatch = witnessed
            .iter()
            .filter(|c| c.signed_at >= from_us && c.signed_at < required_before)
            .collect();
        let (matched, findings) = cross_check(stream, &cloudwatch, &valid, required_before);
        report.cloudwatch_witnessed = cloudwatch.len() as u64;
        report.cloudwatch_matched = matched;
        report.findings.extend(findings);
    }
    let mut chains: BTreeMap<(i32, String), Vec<&Checkpoint>> = BTreeMap::new();
    for c in valid
        .iter()
        .chain(witnesses.state)
        .chain(cloudwatch.iter().copied())
    {
        chains
            .entry((c.raw_partition, c.epoch.clone()))
            .or_default()
            .push(c);
    }
    let mut erased: Vec<Place> = Vec::new();
    let mut recorded: HashSet<uuid::Uuid> = HashSet::new();
    for ((partition, epoch), list) in &chains {
        let mut check = RootCheck::new(*partition, epoch, list);
        if check.end() == 0 {
            continue;
        }
        let mut frontiers = None;
        if let Some(retention) = retention {
            let below = expirable(
                db,
                keys,
                (*partition, epoch),
                retention,
                grace_us,
                check.end(),
            )
            .await?;
            check = check.expiring_below(below);
            if below > 0 {
                frontiers = Some(Frontiers::load(db, keys, (*partition, epoch), below).await?);
            }
        }
        let end = i64::try_from(check.end()).unwrap_or(i64::MAX);
        let skips: Vec<LinkRow> = db
            .query(
                "SELECT DISTINCT seq, chain_content AS content FROM chain_skips
                 WHERE raw_partition = ? AND epoch = ? AND seq >= 0 AND seq < ? ORDER BY seq",
            )
            .bind(partition)
            .bind(epoch)
            .bind(end)
            .fetch_all()
            .await
            .with_context(|| format!("reading the skips of chain {epoch}"))?;
        // The sink's skips and its dead letters: contents of links that are no stored row.
        let mut skips: Vec<LinkRow> =
            skips
                .into_iter()
                .chain(letters.contents(*partition, epoch).into_iter().filter_map(
                    |(seq, content)| {
                        Some(LinkRow {
                            seq: i64::try_from(seq).ok()?,
                            content,
                        })
                    },
                ))
                .collect();
        skips.sort_by_key(|s| s.seq);
        let mut skips = skips.into_iter().peekable();
        let mut cursor = db
            .query(
                "SELECT ?fields FROM events
                 WHERE raw_partition = ? AND chain_epoch = ? AND chain_seq >= 0 AND chain_seq < ?
                 ORDER BY chain_seq",
            )
            .bind(partition)
            .bind(epoch)
            .bind(end)
            .fetch::<EventRow>()
            .with_context(|| format!("reading the links of chain {epoch}"))?;
        while let Some(row) = cursor.next().await? {
            let Ok(seq) = u64::try_from(row.chain_seq) else {
                continue;
            };
            while let Some(skip) = skips.next_if(|s| s.seq <= row.chain_seq) {
                if let Ok(s) = u64::try_from(skip.seq) {
                    if let Some(f) = &mut frontiers {
                        f.offer_upto(s, &mut check, &mut report.findings);
                    }
                    check.push(s, skip.content, &mut report.findings);
                }
            }
            if let Some(f) = &mut frontiers {
                f.offer_upto(seq, &mut check, &mut report.findings);
            }
            match verify_columns::check(&row) {
                verify_columns::ColumnCheck::Differ(columns) => {
                    report.findings.push(CheckpointFinding::Columns {
                        raw_partition: *partition,
                        epoch: epoch.clone(),
                        seq,
                        event_id: row.event_id.to_string(),
                        columns,
                    })
                }
                verify_columns::ColumnCheck::Erased => erased.push(Place {
                    raw_partition: *partition,
                    epoch: epoch.clone(),
                    seq,
                    event_id: row.event_id,
                }),
                verify_columns::ColumnCheck::Matches => {}
            }
            // An erasure record under this run's checkpoints is proven with its chain (a
            // forged one would break the chain's root, which is its own finding).
            if row.event_type == control::ERASURE_TYPE {
                if let Ok(signed) = content::parse(row.chain_content.as_bytes()) {
                    recorded.extend(control::erased_ids(&signed.event).unwrap_or_default());
                }
            }
            check.push(seq, row.chain_content, &mut report.findings);
        }
        for skip in skips {
            if let Ok(s) = u64::try_from(skip.seq) {
                if let Some(f) = &mut frontiers {
                    f.offer_upto(s, &mut check, &mut report.findings);
                }
                check.push(s, skip.content, &mut report.findings);
            }
        }
        if let Some(f) = &mut frontiers {
            f.offer_upto(u64::MAX, &mut check, &mut report.findings);
        }
        let walked = check.finish(&mut report.findings);
        report.links += walked.links;
        report.expired += walked.expired;
        report.unproven += walked.unproven;
        report.chains += 1;
    }
    if erased.iter().any(|e| !recorded.contains(&e.event_id)) {
        // Records signed outside the range: each proven on its own, as `auditctl prove` would.
        recorded.extend(crate::prove::erasure_records_elsewhere(db, keys).await?);
    }
    for e in erased {
        if recorded.contains(&e.event_id) {
            report.erased += 1;
        } else {
            report.findings.push(CheckpointFinding::ErasedUnrecorded {
                raw_partition: e.raw_partition,
                epoch: e.epoch,
                seq: e.seq,
                event_id: e.event_id.to_string(),
            });
        }
    }
    report.findings.sort();
    report.findings.dedup();
    report.proven = valid;
    Ok(report)
}

/// A row's place in its chain.
struct Place {
    raw_partition: i32,
    epoch: String,
    seq: u64,
    event_id: uuid::Uuid,
}

/// ClickHouse's valid checkpoints in the range against the CloudWatch witness's (those signed
/// before `required_before`): each side's checkpoints the other lacks, by chain; ClickHouse's
/// only when signed before `required_before` too. Returns how many witnessed ones ClickHouse
/// holds too. Pure.
pub fn cross_check(
    stream: &str,
    witnessed: &[&Checkpoint],
    stored: &[Checkpoint],
    required_before: i64,
) -> (u64, Vec<CheckpointFinding>) {
    let key = |c: &Checkpoint| (c.id(), c.signature.clone());
    let in_clickhouse: HashSet<_> = stored.iter().map(key).collect();
    let in_witness: HashSet<_> = witnessed.iter().map(|c| key(c)).collect();
    let mut not_stored: BTreeMap<(i32, String), Vec<&Checkpoint>> = BTreeMap::new();
    let mut matched = 0;
    for c in witnessed {
        if in_clickhouse.contains(&key(c)) {
            matched += 1;
        } else {
            not_stored
                .entry((c.raw_partition, c.epoch.clone()))
                .or_default()
                .push(c);
        }
    }
    let mut unwitnessed: BTreeMap<(i32, String), Vec<&Checkpoint>> = BTreeMap::new();
    for c in stored {
        if c.signed_at < required_before && !in_witness.contains(&key(c)) {
            unwitnessed
                .entry((c.raw_partition, c.epoch.clone()))
                .or_default()
                .push(c);
        }
    }
    let mut findings = Vec::new();
    for ((raw_partition, epoch), list) in not_stored {
        if let Some(run) = Run::of(list.iter().copied()) {
            findings.push(CheckpointFinding::NotStored {
                stream: stream.to_string(),
                raw_partition,
                epoch,
                run,
            });
        }
    }
    for ((raw_partition, epoch), list) in unwitnessed {
        if let Some(run) = Run::of(list.iter().copied()) {
            findings.push(CheckpointFinding::Unwitnessed {
                stream: stream.to_string(),
                raw_partition,
                epoch,
                run,
            });
        }
    }
    (matched, findings)
}

/// The stored checkpoint with `c`'s partition, chain and size signed at its time, if any.
async fn read_one(db: &clickhouse::Client, c: &Checkpoint) -> Result<Option<Checkpoint>> {
    let rows: Vec<CheckpointRow> = db
        .query(&format!(
            "SELECT DISTINCT {COLUMNS} FROM chain_checkpoints
             WHERE raw_partition = ? AND epoch = ? AND tree_size = ?
               AND signed_at = fromUnixTimestamp64Micro(?) AND signature = ?"
        ))
        .bind(c.raw_partition)
        .bind(&c.epoch)
        .bind(c.tree_size)
        .bind(c.signed_at)
        .bind(&c.signature)
        .fetch_all()
        .await
        .context("reading chain_checkpoints")?;
    Ok(rows
        .into_iter()
        .map(Checkpoint::from)
        .find(|stored| stored == c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_schemas::chain::{checkpoint::Statement, SigningKey};

    fn key() -> SigningKey {
        SigningKey::from_seed_b64("k1", &base64_seed(7)).unwrap()
    }

    fn base64_seed(b: u8) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    }

    fn keys() -> HashMap<String, ed25519_dalek::VerifyingKey> {
        let k = key();
        let public = audit_schemas::chain::public_key(&k.public_b64()).unwrap();
        HashMap::from([(k.id.clone(), public)])
    }

    fn contents(n: u64) -> Vec<String> {
        (0..n)
            .map(|i| format!("{{\"message\":\"m{i}\"}}"))
            .collect()
    }

    fn root_of(partition: i32, epoch: &str, contents: &[String]) -> String {
        let leaves: Vec<_> = contents
            .iter()
            .enumerate()
            .map(|(i, c)| {
                leaf::link_leaf(
                    partition,
                    epoch,
                    i as i64,
                    &content::content_digest(c.as_bytes()),
                )
            })
            .collect();
        hex::encode(merkle::root(&leaves))
    }

    /// Checkpoints of one partition at the given sizes, each naming the one before.
    fn list(
        partition: i32,
        epoch: &str,
        all: &[String],
        sizes: &[u64],
        t0: i64,
    ) -> Vec<Checkpoint> {
        let mut prev = checkpoint::no_previous();
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let c = Checkpoint::sign(
                    Statement {
                        raw_partition: partition,
                        epoch: epoch.into(),
                        tree_size: size,
                        root: root_of(partition, epoch, &all[..size as usize]),
                        raw_offset_start: 0,
                        raw_offset_end: size as i64,
                        prev: prev.clone(),
                        signed_at: t0 + i as i64 * 1_000_000,
                    },
                    &key(),
                );
                prev = c.id();
                c
            })
            .collect()
    }

    fn check(all: &[String], stored: &[(u64, String)], sizes: &[u64]) -> Vec<CheckpointFinding> {
        let cps = list(0, "e", all, sizes, 0);
        let refs: Vec<&Checkpoint> = cps.iter().collect();
        let mut findings = Vec::new();
        let mut rc = RootCheck::new(0, "e", &refs);
        for (seq, c) in stored {
            rc.push(*seq, c.clone(), &mut findings);
        }
        rc.finish(&mut findings);
        findings
    }

    fn stored(all: &[String]) -> Vec<(u64, String)> {
        all.iter()
            .cloned()
            .enumerate()
            .map(|(i, c)| (i as u64, c))
            .collect()
    }

    #[test]
    fn an_intact_chain_gives_every_signed_root() {
        let all = contents(10);
        assert_eq!(check(&all, &stored(&all), &[0, 3, 3, 7, 10]), vec![]);
        // An exact copy stored twice is one content.
        let mut twice = stored(&all);
        twice.insert(4, (4, all[4].clone()));
        assert_eq!(check(&all, &twice, &[10]), vec![]);
    }

    #[test]
    fn an_altered_link_is_narrowed_to_between_checkpoints() {
        let all = contents(10);
        let mut s = stored(&all);
        s[5].1 = "{\"message\":\"forged\"}".into();
        assert_eq!(
            check(&all, &s, &[3, 7, 10]),
            vec![CheckpointFinding::Altered {
                raw_partition: 0,
                epoch: "e".into(),
                first: 3,
                end: 7
            }]
        );
    }

    #[test]
    fn a_missing_link_or_a_missing_tail_is_deleted() {
        let all = contents(10);
        let mut s = stored(&all);
        s.remove(2);
        let f = check(&all, &s, &[10]);
        assert_eq!(
            f,
            vec![CheckpointFinding::Deleted {
                raw_partition: 0,
                epoch: "e".into(),
                seq: 2
            }],
            "the deletion explains the root: no ALTERED beside it"
        );
        let f = check(&all, &stored(&all[..6]), &[10]);
        assert_eq!(
            f.iter()
                .filter(|f| matches!(f, CheckpointFinding::Deleted { .. }))
                .count(),
            4,
            "{f:?}"
        );
    }

    /// The tree of `all[..size]`, as a stored frontier would give it.
    fn frontier_of(all: &[String], size: u64) -> merkle::Frontier {
        let mut f = merkle::Frontier::default();
        for (i, c) in all[..size as usize].iter().enumerate() {
            f.push(leaf::link_leaf(
                0,
                "e",
                i as i64,
                &content::content_digest(c.as_bytes()),
            ));
        }
        f
    }

    /// Walks `stored` with links below `expirable` allowed to be gone, offering frontiers at
    /// `frontiers` (`None`: a frontier that fails to authenticate).
    fn check_retained(
        all: &[String],
        stored: &[(u64, String)],
        sizes: &[u64],
        expirable: u64,
        frontiers: &[(u64, bool)],
    ) -> (Vec<CheckpointFinding>, Walked) {
        let cps = list(0, "e", all, sizes, 0);
        let refs: Vec<&Checkpoint> = cps.iter().collect();
        let mut findings = Vec::new();
        let mut rc = RootCheck::new(0, "e", &refs).expiring_below(expirable);
        let mut offers = frontiers.iter().peekable();
        for (seq, c) in stored {
            while let Some((size, good)) = offers.next_if(|(size, _)| size <= seq) {
                let f = frontier_of(all, *size);
                rc.offer(*size, || good.then_some(f), &mut findings);
            }
            rc.push(*seq, c.clone(), &mut findings);
        }
        let walked = rc.finish(&mut findings);
        (findings, walked)
    }

    #[test]
    fn links_expired_below_the_horizon_are_counted_and_the_walk_resumes_at_a_frontier() {
        let all = contents(10);
        let sizes = [2, 4, 7, 10];
        let offers = [(2, true), (4, true), (7, true)];
        // The first four expired: the rest is proven from the frontier at 4.
        let (f, w) = check_retained(&all, &stored(&all)[4..], &sizes, 4, &offers);
        assert_eq!(f, vec![]);
        assert_eq!(
            w,
            Walked {
                links: 6,
                expired: 4,
                unproven: 0
            }
        );
        // Retention removes parts, not a clean prefix: what stays between gaps is unproven.
        let kept: Vec<(u64, String)> = stored(&all)
            .into_iter()
            .filter(|(seq, _)| ![1, 3].contains(seq))
            .collect();
        let (f, w) = check_retained(&all, &kept, &sizes, 4, &offers[1..]);
        assert_eq!(f, vec![]);
        assert_eq!(
            w,
            Walked {
                links: 7,
                expired: 2,
                unproven: 1
            }
        );
        // ... unless a frontier right after a gap takes the walk on from there.
        let (f, w) = check_retained(&all, &kept, &sizes, 4, &offers);
        assert_eq!((f.len(), w.links, w.unproven), (0, 8, 0));
        // No frontier at 4: links 4..7 are unproven until the one at 7.
        // Those are above the horizon, so they had to be proven: a finding.
        let (f, w) = check_retained(&all, &stored(&all)[4..], &sizes, 4, &[(7, true)]);
        assert_eq!(
            f,
            vec![CheckpointFinding::Unprovable {
                raw_partition: 0,
                epoch: "e".into(),
                first: 4,
                end: 7
            }]
        );
        assert_eq!((w.links, w.expired), (3, 4));
        // Below the horizon they are only counted.
        let (f, w) = check_retained(&all, &stored(&all)[4..], &sizes, 7, &[(7, true)]);
        assert_eq!(f, vec![]);
        assert_eq!((w.links, w.expired, w.unproven), (3, 4, 3));
    }

    #[test]
    fn retention_explains_nothing_above_the_horizon_nor_a_change_after_it() {
        let all = contents(10);
        let sizes = [2, 4, 7, 10];
        let offers = [(4, true), (7, true)];
        let kept: Vec<(u64, String)> = stored(&all)
            .into_iter()
            .filter(|(seq, _)| ![0, 5].contains(seq))
            .collect();
        let (f, _) = check_retained(&all, &kept, &sizes, 4, &offers);
        assert_eq!(
            f,
            vec![CheckpointFinding::Deleted {
                raw_partition: 0,
                epoch: "e".into(),
                seq: 5
            }]
        );
        let mut s = stored(&all)[3..].to_vec();
        s[5].1 = "{\"message\":\"forged\"}".into();
        let (f, _) = check_retained(&all, &s, &sizes, 4, &offers);
        assert_eq!(
            f,
            vec![CheckpointFinding::Altered {
                raw_partition: 0,
                epoch: "e".into(),
                first: 7,
                end: 10
            }]
        );
        // A frontier that does not give its root is named, and proves nothing.
        let (f, w) = check_retained(&all, &stored(&all)[4..], &sizes, 4, &[(4, false)]);
        assert_eq!(
            f,
            vec![
                CheckpointFinding::Frontier {
                    raw_partition: 0,
                    epoch: "e".into(),
                    tree_size: 4
                },
                CheckpointFinding::Unprovable {
                    raw_partition: 0,
                    epoch: "e".into(),
                    first: 4,
                    end: 10
                }
            ]
        );
        assert_eq!(w.links, 0);
        // Without retention the same gap is a deletion.
        let (f, _) = check_retained(&all, &stored(&all)[4..], &sizes, 0, &offers);
        assert_eq!(f.len(), 4, "{f:?}");
    }

    #[test]
    fn what_a_key_signs_after_its_rotation_proves_nothing() {
        let all = contents(4);
        let cps = list(0, "e", &all, &[1, 2, 3, 4], 0);
        let retired = HashMap::from([("k1".to_string(), 1_500_000)]);
        let mut findings = Vec::new();
        let good = judge_lists(&[], &cps, &keys(), &retired, 120_000_000, &mut findings);
        assert_eq!(good.len(), 2, "signed at 0 s and 1 s, before the rotation");
        assert_eq!(
            findings
                .iter()
                .filter(|f| matches!(
                    f,
                    CheckpointFinding::Retired {
                        retired_at: 1_500_000,
                        ..
                    }
                ))
                .count(),
            2,
            "{findings:?}"
        );
    }

    #[test]
    fn a_second_content_at_one_link_is_a_conflict() {
        let all = contents(4);
        let mut s = stored(&all);
        s.insert(2, (1, "{\"message\":\"copy\"}".into()));
        let f = check(&all, &s, &[4]);
        assert!(f.contains(&CheckpointFinding::Conflict {
            raw_partition: 0,
            epoch: "e".into(),
            seq: 1,
            contents: 2
        }));
    }

    #[test]
    fn a_deleted_checkpoint_leaves_its_successor_naming_nothing() {
        let all = contents(5);
        let cps = list(0, "e", &all, &[1, 2, 3, 4, 5], 0);
        let mut findings = Vec::new();
        let kept: Vec<Checkpoint> = cps
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, c)| c.clone())
            .collect();
        judge_lists(
            &[],
            &kept,
            &keys(),
            &HashMap::new(),
            120_000_000,
            &mut findings,
        );
        assert_eq!(
            findings,
            vec![CheckpointFinding::Missing {
                raw_partition: 0,
                epoch: "e".into(),
                tree_size: 4,
                signed_at: 3_000_000
            }]
        );
        let mut findings = Vec::new();
        judge_lists(
            &[],
            &cps,
            &keys(),
            &HashMap::new(),
            120_000_000,
            &mut findings,
        );
        assert_eq!(findings, vec![], "the whole list is clean");
    }

    #[test]
    fn a_forged_or_unknown_key_checkpoint_proves_nothing() {
        let all = contents(2);
        let mut cps = list(0, "e", &all, &[1, 2], 0);
        cps[1].root = cps[0].root.clone();
        let mut findings = Vec::new();
        let good = judge_lists(&[], &cps, &keys(), &HashMap::new(), 1, &mut findings);
        assert_eq!(good.len(), 1);
        assert!(matches!(
            findings[0],
            CheckpointFinding::Forged { tree_size: 2, .. }
        ));
        let mut findings = Vec::new();
        assert!(judge_lists(
            &[],
            &cps[..1],
            &HashMap::new(),
            &HashMap::new(),
            1,
            &mut findings
        )
        .is_empty());
        assert_eq!(findings.len(), 1);
    }

    #[test]
    fn a_partition_whose_list_stops_early_is_truncated() {
        let all = contents(3);
        let mut cps = list(0, "a", &all, &[1, 2, 3], 0);
        let other = list(1, "b", &all, &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3], 0);
        cps.extend(other);
        let mut findings = Vec::new();
        judge_lists(
            &[],
            &cps,
            &keys(),
            &HashMap::new(),
            5_000_000,
            &mut findings,
        );
        assert_eq!(
            findings,
            vec![CheckpointFinding::Truncated {
                raw_partition: 0,
                newest_us: 2_000_000,
                latest_us: 9_000_000
            }]
        );
        let mut findings = Vec::new();
        judge_lists(
            &[],
            &cps,
            &keys(),
            &HashMap::new(),
            8_000_000,
            &mut findings,
        );
        assert_eq!(findings, vec![], "within the grace");
    }

    #[test]
    fn the_cloudwatch_witness_and_clickhouse_each_name_what_the_other_lacks() {
        let all = contents(6);
        let cps = list(0, "a", &all, &[1, 2, 3, 4, 5, 6], 0);
        let witnessed: Vec<&Checkpoint> = cps.iter().collect();
        // Everything in both: nothing to say.
        let (matched, findings) = cross_check("w", &witnessed, &cps, i64::MAX);
        assert_eq!((matched, findings), (6, vec![]));
        // ClickHouse lost its last three (a rollback, or deleted with their rows).
        let (matched, findings) = cross_check("w", &witnessed, &cps[..3], i64::MAX);
        assert_eq!(matched, 3);
        assert_eq!(
            findings,
            vec![CheckpointFinding::NotStored {
                stream: "w".into(),
                raw_partition: 0,
                epoch: "a".into(),
                run: Run {
                    count: 3,
                    sizes: (4, 6),
                    signed: (3_000_000, 5_000_000)
                }
            }]
        );
        // The witness lost its first two; the newest is within the grace and not required.
        let (_, findings) = cross_check("w", &witnessed[2..5], &cps, 5_000_000);
        assert_eq!(
            findings,
            vec![CheckpointFinding::Unwitnessed {
                stream: "w".into(),
                raw_partition: 0,
                epoch: "a".into(),
                run: Run {
                    count: 2,
                    sizes: (1, 2),
                    signed: (0, 1_000_000)
                }
            }]
        );
        // Another copy of the same statement with another signature is not the one witnessed.
        let mut resigned = cps[0].clone();
        resigned.signature = cps[1].signature.clone();
        let (matched, _) = cross_check("w", &[&resigned], &cps, i64::MAX);
        assert_eq!(matched, 0);
    }
}
