//! `auditctl verify`: checks stored events against the enricher's hash chains and signed
//! digests (`audit_schemas::chain`) and names every event deleted, altered or inserted.
//!
//! For each chain with a digest signed in the range, every link from the previous digest (or
//! the chain's start) to the last digest in the range is walked in order:
//!
//! - a stored row at the link whose content and `prev` give its hash: the link is intact;
//! - a stored row that does not: **altered** (its content, or its chain fields);
//! - no stored row: the sink may have left the link out as the copy of an event it had
//!   already stored (an enricher replaying after a crash); it then recorded a skip with the
//!   copy's content digest, which must hash to the link and match the stored event of that id.
//!   A link without a row and without such a skip: **deleted**;
//! - at each digest, the walked chain must end in the signed head.
//!
//! Rows enriched in the range that are no link of a walked chain are **inserted** when they
//! carry no link (or claim a link another row holds), and *unsigned* when their chain has no
//! digest after them yet. Events the rules dropped were never linked, so they leave no gap.

use crate::rule_impact::ClickHouseSettings;
use crate::settings::Settings;
use anyhow::{Context, Result};
use audit_schemas::chain::rotation::{KeyRotation, Keyring, ROTATION_TYPE};
use audit_schemas::chain::{self, Digest};
use audit_sink_clickhouse::encoder::{content_digest, ChainSkip, EventRow};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// `[verify]`: the public keys digests are checked with, by key id (`audit-enricher
/// public-key` prints them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifySettings {
    pub public_keys: BTreeMap<String, String>,
    /// The retention the ClickHouse sink applies (`clickhouse.ttl_days`), in days (fractions
    /// allowed). Links enriched longer ago may be gone: verify counts them EXPIRED and goes
    /// on from the frontier stored with the next checkpoint. Unset (the default): nothing
    /// expires, and every absent link is DELETED. Set it here, not from ClickHouse's own
    /// TTL, which a ClickHouse writer could change.
    pub retention_days: Option<f64>,
}

impl VerifySettings {
    /// The retention in microseconds, checked.
    pub fn retention_us(&self) -> Result<Option<i64>> {
        match self.retention_days {
            None => Ok(None),
            Some(d) if d.is_finite() && d > 0.0 => Ok(Some((d * 86_400e6).min(i64::MAX as f64) as i64)),
            Some(d) => anyhow::bail!("setting `verify.retention_days` = {d}: must be a positive number of days, or unset"),
        }
    }
}

/// One finding, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    Deleted {
        raw_partition: i32,
        epoch: String,
        seq: i64,
        /// The raw offsets of the links around the missing one, when stored.
        between: (Option<i64>, Option<i64>),
    },
    Altered {
        raw_partition: i32,
        raw_offset: i64,
        event_id: String,
        epoch: String,
        seq: i64,
    },
    Inserted {
        raw_partition: i32,
        raw_offset: i64,
        event_id: String,
        why: String,
    },
    /// The walked chain does not end in the head a digest signed.
    HeadMismatch {
        raw_partition: i32,
        epoch: String,
        seq: i64,
    },
    /// Rows no signed digest covers although they were enriched longer than the grace ago
    /// (or claim a time in the future): nothing is proven for them.
    Unsigned { rows: u64, grace_s: u64 },
    /// Events exist in the range but not one signed digest: every digest may have been deleted.
    NothingProven { rows: u64 },
    /// A digest whose signature does not verify with any configured key.
    BadDigest {
        raw_partition: i32,
        epoch: String,
        seq: i64,
        key_id: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Deleted {
                raw_partition,
                epoch,
                seq,
                between,
            } => {
                let around = |o: Option<i64>| o.map_or("?".to_string(), |o| o.to_string());
                write!(
                    f,
                    "DELETED  raw partition {raw_partition}, between raw offsets {} and {} (chain {epoch} link {seq})",
                    around(between.0),
                    around(between.1)
                )
            }
            Finding::Altered {
                raw_partition,
                raw_offset,
                event_id,
                epoch,
                seq,
            } => write!(
                f,
                "ALTERED  raw partition {raw_partition}, offset {raw_offset}: event {event_id} (chain {epoch} link {seq})"
            ),
            Finding::Inserted {
                raw_partition,
                raw_offset,
                event_id,
                why,
            } => write!(
                f,
                "INSERTED raw partition {raw_partition}, offset {raw_offset}: event {event_id} ({why})"
            ),
            Finding::HeadMismatch {
                raw_partition,
                epoch,
                seq,
            } => write!(
                f,
                "MISMATCH raw partition {raw_partition}: chain {epoch} does not end in the signed head at link {seq}"
            ),
            Finding::Unsigned { rows, grace_s } => write!(
                f,
                "UNSIGNED {rows} rows enriched more than {grace_s} s before the range's end (or dated after it) are under no signed digest: nothing proven for them"
            ),
            Finding::NothingProven { rows } => write!(
                f,
                "UNSIGNED {rows} events in the range and not one signed digest: nothing is proven (were the digests deleted?)"
            ),
            Finding::BadDigest {
                raw_partition,
                epoch,
                seq,
                key_id,
            } => write!(
                f,
                "FORGED   digest of raw partition {raw_partition}, chain {epoch} link {seq}: the signature does not verify with key {key_id:?}"
            ),
        }
    }
}

/// What a verification found and covered.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub links_verified: u64,
    pub chains: u64,
    pub digests: u64,
    /// Rows in the range whose chain has no digest after them yet.
    pub unsigned: u64,
    /// Of those, rows older than the grace (or dated after the range): a finding.
    pub unsigned_stale: u64,
    /// Rows in the range (digests aside).
    pub rows: u64,
    /// Exact copies of an intact row at its link (counted, not a finding).
    pub duplicates: u64,
    /// Links below the retention horizon no longer stored (not a finding).
    pub expired: u64,
    /// Links not stored that the ClickHouse sink's dead letters hold, proven from them.
    pub dead_lettered: u64,
    /// Links the sink left out as copies of stored events.
    pub skips: u64,
    /// The intact links, (partition, epoch, seq) -> what CloudWatch is checked against; kept
    /// only when `keep_intact` (a CloudWatch check follows), as it holds every link.
    pub intact: HashMap<(i32, String, i64), IntactLink>,
    pub keep_intact: bool,
    /// The content digests of every event an intact link holds, by event id: what explains an
    /// unsigned copy (a crashed enricher's tail, re-linked by the next owner). Binary, as it
    /// holds one entry per link.
    pub proven: HashMap<uuid::Uuid, Vec<[u8; 32]>>,
    /// The links walked per chain (first, last seq): a link outside is not judged here.
    pub walked: HashMap<(i32, String), (i64, i64)>,
}

impl Report {
    /// Records that an intact link holds `event_id` with the content digest `digest` (hex).
    /// Keeps an intact link for the CloudWatch check, when one follows.
    fn keep(
        &mut self,
        (partition, epoch, seq): (i32, &str, i64),
        link: impl FnOnce() -> IntactLink,
    ) {
        if self.keep_intact {
            self.intact
                .insert((partition, epoch.to_string(), seq), link());
        }
    }

    fn prove(&mut self, event_id: uuid::Uuid, digest: &str) {
        let digests = self.proven.entry(event_id).or_default();
        let d = hex_digest(digest).unwrap_or([0; 32]);
        if !digests.contains(&d) {
            digests.push(d);
        }
    }
}

/// An intact link as ClickHouse holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntactLink {
    pub hash: String,
    pub event_id: String,
    pub raw_offset: i64,
    /// `None` for a link the sink left out as a duplicate (its stored copy is elsewhere).
    pub event_type: Option<String>,
    pub enriched_at_us: i64,
}

impl IntactLink {
    fn of(row: &EventRow) -> Self {
        Self {
            hash: row.chain_hash.clone(),
            event_id: row.event_id.to_string(),
            raw_offset: row.raw_offset,
            event_type: Some(row.event_type.clone()),
            enriched_at_us: (row.enriched_at.unix_timestamp_nanos() / 1_000) as i64,
        }
    }
}

#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
struct DigestRow {
    raw_partition: i32,
    epoch: String,
    seq: i64,
    head: String,
    /// Aliased: ClickHouse would otherwise compare this alias, not the column, in WHERE.
    signed_us: i64,
    key_id: String,
    signature: String,
}

impl DigestRow {
    fn digest(&self) -> Digest {
        Digest {
            raw_partition: self.raw_partition,
            epoch: self.epoch.clone(),
            seq: self.seq,
            head: self.head.clone(),
            signed_at: self.signed_us,
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
        }
    }
}

pub fn client(ch: &ClickHouseSettings) -> clickhouse::Client {
    let mut client = clickhouse::Client::default()
        .with_url(&ch.url)
        .with_database(&ch.database);
    if let Some(user) = &ch.user {
        client = client.with_user(user);
    }
    if let Some(password) = &ch.password {
        client = client.with_password(password);
    }
    client
}

const DIGEST_COLUMNS: &str =
    "raw_partition, epoch, seq, head, toUnixTimestamp64Micro(signed_at) AS signed_us, key_id, signature";

/// Verifies the ClickHouse rows of every chain with a digest signed in `[from_us, to_us]`.
pub async fn verify_clickhouse(
    settings: &Settings,
    keys: &HashMap<String, ed25519_dalek::VerifyingKey>,
    from_us: i64,
    to_us: i64,
    grace_us: i64,
    keep_intact: bool,
    explanations: crate::verify_checkpoints::Explanations<'_>,
) -> Result<Report> {
    let crate::verify_checkpoints::Explanations {
        retention, letters, ..
    } = explanations;
    let db = client(&settings.clickhouse);
    let mut report = Report {
        keep_intact,
        ..Report::default()
    };
    let in_range: Vec<DigestRow> = db
        .query(&format!(
            "SELECT DISTINCT {DIGEST_COLUMNS} FROM chain_digests
             WHERE signed_at BETWEEN fromUnixTimestamp64Micro(?) AND fromUnixTimestamp64Micro(?)
             ORDER BY raw_partition, epoch, seq"
        ))
        .bind(from_us)
        .bind(to_us)
        .fetch_all()
        .await
        .with_context(|| {
            format!(
                "reading chain digests from {} (database {}; settings clickhouse.*)",
                settings.clickhouse.url, settings.clickhouse.database
            )
        })?;
    let mut chains: BTreeMap<(i32, String), Vec<DigestRow>> = BTreeMap::new();
    for d in in_range {
        let signed = keys.get(&d.key_id).is_some_and(|k| d.digest().verify(k));
        report.digests += 1;
        if !signed {
            report.findings.push(Finding::BadDigest {
                raw_partition: d.raw_partition,
                epoch: d.epoch.clone(),
                seq: d.seq,
                key_id: d.key_id.clone(),
            });
            continue;
        }
        chains
            .entry((d.raw_partition, d.epoch.clone()))
            .or_default()
            .push(d);
    }
    for ((partition, epoch), digests) in &chains {
        report.chains += 1;
        // Where the walk starts: after the last signed digest before the range, or the start.
        let before: Vec<DigestRow> = db
            .query(&format!(
                "SELECT {DIGEST_COLUMNS} FROM chain_digests
                 WHERE raw_partition = ? AND epoch = ? AND seq < ?
                 ORDER BY seq DESC LIMIT 1"
            ))
            .bind(partition)
            .bind(epoch)
            .bind(digests[0].seq)
            .fetch_all()
            .await?;
        let start = before
            .first()
            .filter(|d| keys.get(&d.key_id).is_some_and(|k| d.digest().verify(k)))
            .map_or((0, chain::genesis()), |d| (d.seq + 1, d.head.clone()));
        let expirable = match retention {
            Some(r) => expirable(&db, keys, (*partition, epoch), r, grace_us).await?,
            None => 0,
        };
        let chain = Chain {
            partition: *partition,
            epoch,
            expirable,
            letters,
        };
        walk(&db, &chain, start, digests, &mut report).await?;
    }
    find_inserted(&db, &chains, from_us, to_us, grace_us, &mut report).await?;
    if report.unsigned_stale > 0 {
        report.findings.push(Finding::Unsigned {
            rows: report.unsigned_stale,
            grace_s: (grace_us / 1_000_000) as u64,
        });
    }
    if report.rows > 0 && report.digests == 0 {
        report
            .findings
            .push(Finding::NothingProven { rows: report.rows });
    }
    report.findings.sort();
    report.findings.dedup();
    Ok(report)
}

/// The seq below which one chain's v1 links may have expired: one past the seq of its oldest
/// valid digest signed a grace after the retention cut (as for checkpoints); with none, all.
async fn expirable(
    db: &clickhouse::Client,
    keys: &HashMap<String, ed25519_dalek::VerifyingKey>,
    (partition, epoch): (i32, &str),
    retention: crate::verify_checkpoints::Retention,
    grace_us: i64,
) -> Result<i64> {
    let mut cursor = db
        .query(&format!(
            "SELECT {DIGEST_COLUMNS} FROM chain_digests
             WHERE raw_partition = ? AND epoch = ? AND signed_at >= fromUnixTimestamp64Micro(?)
             ORDER BY signed_at"
        ))
        .bind(partition)
        .bind(epoch)
        .bind(retention.before_us.saturating_add(grace_us))
        .fetch::<DigestRow>()?;
    while let Some(d) = cursor.next().await? {
        if keys.get(&d.key_id).is_some_and(|k| d.digest().verify(k)) {
            return Ok(d.seq + 1);
        }
    }
    Ok(i64::MAX)
}

/// A row `auditctl erase` blanked: no salt left beside a v2 content.
fn erased(r: &EventRow) -> bool {
    r.chain_salt.is_empty() && !r.chain_content.is_empty()
}

/// One chain, and what explains its absent links.
struct Chain<'a> {
    partition: i32,
    epoch: &'a str,
    /// Links below this may have been removed by retention.
    expirable: i64,
    letters: &'a crate::verify_dead_letters::DeadLettered,
}

/// Walks one chain from `start` (seq, prev) to its last digest in the range. The rows come
/// in seq order from one query, so memory holds one link's rows and the next's, not the chain.
async fn walk(
    db: &clickhouse::Client,
    chain: &Chain<'_>,
    (first, mut expected): (i64, String),
    digests: &[DigestRow],
    report: &mut Report,
) -> Result<()> {
    let (partition, epoch, expirable) = (chain.partition, chain.epoch, chain.expirable);
    let last = digests.last().map_or(first - 1, |d| d.seq);
    report
        .walked
        .insert((partition, epoch.to_string()), (first, last));
    let heads: HashMap<i64, &str> = digests.iter().map(|d| (d.seq, d.head.as_str())).collect();
    let mut last_offset: Option<i64> = None;
    let mut rows = Links {
        cursor: db
            .query(
                "SELECT ?fields FROM events WHERE raw_partition = ? AND chain_epoch = ?
                 AND chain_seq BETWEEN ? AND ? AND event_type != 'audit.chain-digest'
                 ORDER BY chain_seq",
            )
            .bind(partition)
            .bind(epoch)
            .bind(first)
            .bind(last + 1)
            .fetch::<EventRow>()?,
        read: None,
        next: None,
        done: false,
    };
    let skips: HashMap<i64, Vec<ChainSkip>> = {
        let list: Vec<ChainSkip> = db
            .query(
                "SELECT ?fields FROM chain_skips WHERE raw_partition = ? AND epoch = ?
                 AND seq BETWEEN ? AND ?",
            )
            .bind(partition)
            .bind(epoch)
            .bind(first)
            .bind(last)
            .fetch_all()
            .await?;
        let mut by_seq: HashMap<i64, Vec<ChainSkip>> = HashMap::new();
        for s in list {
            by_seq.entry(s.seq).or_default().push(s);
        }
        by_seq
    };
    let stored_digests = stored_content(db, skips.values().flatten()).await?;
    for seq in first..=last {
        let here = rows.take(seq).await?;
        let here = here.as_slice();
        // An erased row's v1 content (which held the claimed user and client) cannot be
        // rehashed; the v2 check proves its content and requires a signed erasure record.
        let intact = here.iter().find_map(|r| {
            if r.chain_prev != expected {
                return None;
            }
            let digest = content_digest(r);
            (chain_hash_of(r, &digest, partition, epoch, seq) == r.chain_hash || erased(r))
                .then_some((r, digest))
        });
        match intact {
            Some((row, digest)) => {
                report.links_verified += 1;
                report.keep((partition, epoch, seq), || IntactLink::of(row));
                report.prove(row.event_id, &digest);
                // Every other row at the link: an exact copy is counted; a copy of the event
                // with other content (same id and link kept) is altered; another event is
                // inserted. Analysts' counts would include each.
                for other in here.iter().filter(|r| !std::ptr::eq(*r, row)) {
                    if same_stored_event(other, row) {
                        report.duplicates += 1;
                    } else if other.event_id == row.event_id {
                        report.findings.push(Finding::Altered {
                            raw_partition: other.raw_partition,
                            raw_offset: other.raw_offset,
                            event_id: other.event_id.to_string(),
                            epoch: epoch.to_string(),
                            seq,
                        });
                    } else {
                        report.findings.push(Finding::Inserted {
                            raw_partition: other.raw_partition,
                            raw_offset: other.raw_offset,
                            event_id: other.event_id.to_string(),
                            why: format!(
                                "claims link {seq} of chain {epoch}, which another event holds"
                            ),
                        });
                    }
                }
                expected = row.chain_hash.clone();
                last_offset = Some(row.raw_offset);
            }
            None if !here.is_empty() => {
                for r in here {
                    report.findings.push(Finding::Altered {
                        raw_partition: r.raw_partition,
                        raw_offset: r.raw_offset,
                        event_id: r.event_id.to_string(),
                        epoch: epoch.to_string(),
                        seq,
                    });
                }
                // Go on from what the row says, so later links are judged on their own.
                expected = here[0].chain_hash.clone();
                last_offset = Some(here[0].raw_offset);
            }
            None => {
                let skip = skips.get(&seq).into_iter().flatten().find(|s| {
                    s.prev == expected
                        && hex_digest(&s.content_digest).is_some_and(|d| {
                            chain::link_hash(partition, epoch, seq, &s.prev, &d) == s.hash
                        })
                        && stored_digests
                            .get(&s.event_id.to_string())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.content_digest == s.content_digest)
                                    || is_resend(s, c)
                            })
                });
                // The row the ClickHouse sink would have stored, kept in its dead letter.
                let lettered = chain.letters.rows(partition, epoch, seq).iter().find(|r| {
                    r.chain_prev == expected
                        && chain_hash_of(r, &content_digest(r), partition, epoch, seq)
                            == r.chain_hash
                });
                match (skip, lettered) {
                    (None, Some(row)) => {
                        report.dead_lettered += 1;
                        report.links_verified += 1;
                        report.keep((partition, epoch, seq), || IntactLink::of(row));
                        report.prove(row.event_id, &content_digest(row));
                        expected = row.chain_hash.clone();
                    }
                    (Some(s), _) => {
                        report.skips += 1;
                        report.keep((partition, epoch, seq), || IntactLink {
                            hash: s.hash.clone(),
                            event_id: s.event_id.to_string(),
                            raw_offset: -1,
                            event_type: None,
                            enriched_at_us: 0,
                        });
                        report.prove(s.event_id, &s.content_digest);
                        expected = s.hash.clone();
                    }
                    (None, None) if seq < expirable => {
                        // Retention removed it. Its hash is what a digest signed for it, or
                        // what the next link names (proven by the next digest's head).
                        report.expired += 1;
                        if let Some(head) = heads.get(&seq) {
                            expected = head.to_string();
                        } else if let Some((_, r)) =
                            rows.peek().await?.filter(|(s, _)| *s == seq + 1)
                        {
                            if let Some(r) = r.first() {
                                expected = r.chain_prev.clone();
                            }
                        }
                    }
                    (None, None) => {
                        let next = rows.peek().await?;
                        report.findings.push(Finding::Deleted {
                            raw_partition: partition,
                            epoch: epoch.to_string(),
                            seq,
                            between: (
                                last_offset,
                                next.and_then(|(_, r)| r.first()).map(|r| r.raw_offset),
                            ),
                        });
                        // The next link says what this one's hash was.
                        if let Some((_, r)) = next.filter(|(s, _)| *s == seq + 1) {
                            if let Some(r) = r.first() {
                                expected = r.chain_prev.clone();
                            }
                        }
                    }
                }
            }
        }
        if let Some(head) = heads.get(&seq) {
            if expected != *head {
                report.findings.push(Finding::HeadMismatch {
                    raw_partition: partition,
                    epoch: epoch.to_string(),
                    seq,
                });
                expected = head.to_string();
            }
        }
    }
    Ok(())
}

/// One chain's rows, read in seq order, grouped by seq.
struct Links {
    cursor: clickhouse::query::RowCursor<EventRow>,
    /// A row read past the group in `next`.
    read: Option<EventRow>,
    /// The rows of the lowest seq not taken yet.
    next: Option<(i64, Vec<EventRow>)>,
    done: bool,
}

impl Links {
    /// Reads the next group, unless one is waiting.
    async fn fill(&mut self) -> Result<()> {
        if self.next.is_some() || (self.done && self.read.is_none()) {
            return Ok(());
        }
        let mut group: Option<(i64, Vec<EventRow>)> = None;
        loop {
            let row = match self.read.take() {
                Some(r) => Some(r),
                None if self.done => None,
                None => self
                    .cursor
                    .next()
                    .await
                    .context("reading a chain's links")?,
            };
            let Some(row) = row else {
                self.done = true;
                break;
            };
            match &mut group {
                None => group = Some((row.chain_seq, vec![row])),
                Some((seq, rows)) if *seq == row.chain_seq => rows.push(row),
                Some(_) => {
                    self.read = Some(row);
                    break;
                }
            }
        }
        self.next = group;
        Ok(())
    }

    /// The rows at `seq`; the seqs asked for must rise.
    async fn take(&mut self, seq: i64) -> Result<Vec<EventRow>> {
        self.fill().await?;
        match &self.next {
            Some((s, _)) if *s == seq => Ok(self.next.take().map(|(_, r)| r).unwrap_or_default()),
            _ => Ok(Vec::new()),
        }
    }

    /// The next seq holding rows, and its rows.
    async fn peek(&mut self) -> Result<Option<&(i64, Vec<EventRow>)>> {
        self.fill().await?;
        Ok(self.next.as_ref())
    }
}

/// `digest`: the row's [`content_digest`].
fn chain_hash_of(row: &EventRow, digest: &str, partition: i32, epoch: &str, seq: i64) -> String {
    let digest = hex_digest(digest).unwrap_or([0; 32]);
    chain::link_hash(partition, epoch, seq, &row.chain_prev, &digest)
}

fn hex_digest(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

/// The stored copies of the events the skips name, by event id.
async fn stored_content<'a>(
    db: &clickhouse::Client,
    skips: impl Iterator<Item = &'a ChainSkip>,
) -> Result<HashMap<String, Vec<StoredCopy>>> {
    let ids: Vec<String> = skips.map(|s| s.event_id.to_string()).collect();
    let mut out: HashMap<String, Vec<StoredCopy>> = HashMap::new();
    for chunk in ids.chunks(1_000) {
        let rows: Vec<EventRow> = db
            .query("SELECT ?fields FROM events WHERE toString(event_id) IN ?")
            .bind(chunk)
            .fetch_all()
            .await?;
        for r in rows {
            out.entry(r.event_id.to_string())
                .or_default()
                .push(StoredCopy {
                    content_digest: content_digest(&r),
                    raw_position: (r.raw_partition, r.raw_offset),
                });
        }
    }
    Ok(out)
}

/// A stored event a skip may point at.
struct StoredCopy {
    content_digest: String,
    raw_position: (i32, i64),
}

/// Whether `skip` left out a sender's resend: another raw record carrying an event id already
/// stored, with other content. Its kept content must hash to its digest and name that very
/// event id at a raw position no stored copy has, so a skip forged to hide a deleted row (whose
/// content names its own id) does not pass.
fn is_resend(skip: &ChainSkip, stored: &[StoredCopy]) -> bool {
    use sha2::Digest as _;
    if skip.content.is_empty()
        || hex::encode(sha2::Sha256::digest(skip.content.as_bytes())) != skip.content_digest
    {
        return false;
    }
    let Ok(content) = serde_json::from_str::<serde_json::Value>(&skip.content) else {
        return false;
    };
    let id = content["event"]["event_id"].as_str();
    let position = (
        content["raw_partition"].as_i64(),
        content["raw_offset"].as_i64(),
    );
    id == Some(skip.event_id.to_string().as_str())
        && !stored.is_empty()
        && stored.iter().all(|c| {
            (Some(i64::from(c.raw_position.0)), Some(c.raw_position.1)) != position
                && c.content_digest != skip.content_digest
        })
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Placed {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: uuid::Uuid,
    raw_partition: i32,
    raw_offset: i64,
    chain_epoch: String,
    chain_seq: i64,
    enriched_us: i64,
}

/// Rows enriched in the range that are no link of a walked chain. `enriched_at` is the
/// forger's to choose, so rows dated after the range are read too (a planted row cannot hide
/// in the future), and an unsigned row counts against the run once it is older than the grace.
async fn find_inserted(
    db: &clickhouse::Client,
    chains: &BTreeMap<(i32, String), Vec<DigestRow>>,
    from_us: i64,
    to_us: i64,
    grace_us: i64,
    report: &mut Report,
) -> Result<()> {
    let mut cursor = db
        .query(
            "SELECT event_id, raw_partition, raw_offset, chain_epoch, chain_seq,
             toUnixTimestamp64Micro(enriched_at) AS enriched_us FROM events
             WHERE enriched_at >= fromUnixTimestamp64Micro(?)
             AND event_type NOT IN ('audit.chain-digest', 'audit.chain-checkpoint', 'audit.key-rotation')",
        )
        .bind(from_us)
        .fetch::<Placed>()?;
    let stale_before = to_us.saturating_sub(grace_us);
    let mut stale: Vec<Placed> = Vec::new();
    while let Some(p) = cursor.next().await? {
        report.rows += 1;
        if p.chain_seq < 0 {
            report.findings.push(Finding::Inserted {
                raw_partition: p.raw_partition,
                raw_offset: p.raw_offset,
                event_id: p.event_id.to_string(),
                why: "carries no chain link".into(),
            });
            continue;
        }
        let walked_to = chains
            .get(&(p.raw_partition, p.chain_epoch.clone()))
            .and_then(|d| d.last())
            .map(|d| d.seq);
        match walked_to {
            // Within a walked chain: judged there.
            Some(last) if p.chain_seq <= last => {}
            _ => {
                report.unsigned += 1;
                if p.enriched_us < stale_before || p.enriched_us > to_us {
                    stale.push(p);
                }
            }
        }
    }
    // An old unsigned row is explained when an intact link proves the very same event: the
    // tail of an enricher killed before its digest, which the next owner linked again. A copy
    // with other content is altered; any other is unproven.
    let ids: Vec<String> = stale
        .iter()
        .filter(|p| report.proven.contains_key(&p.event_id))
        .map(|p| p.event_id.to_string())
        .collect();
    let mut copies: HashMap<(String, i32, i64), String> = HashMap::new();
    for chunk in ids.chunks(1_000) {
        let rows: Vec<EventRow> = db
            .query("SELECT ?fields FROM events WHERE toString(event_id) IN ?")
            .bind(chunk)
            .fetch_all()
            .await?;
        for r in rows {
            copies.insert(
                (r.event_id.to_string(), r.raw_partition, r.raw_offset),
                content_digest(&r),
            );
        }
    }
    for p in stale {
        let id = p.event_id.to_string();
        let Some(proven) = report.proven.get(&p.event_id) else {
            report.unsigned_stale += 1;
            continue;
        };
        match copies.get(&(id.clone(), p.raw_partition, p.raw_offset)) {
            Some(c) if hex_digest(c).is_some_and(|c| proven.contains(&c)) => {}
            _ => report.findings.push(Finding::Altered {
                raw_partition: p.raw_partition,
                raw_offset: p.raw_offset,
                event_id: id,
                epoch: p.chain_epoch.clone(),
                seq: p.chain_seq,
            }),
        }
    }
    Ok(())
}

/// Whether two rows hold the same event with the same content and link; where the sink read
/// them from (`source_*`) may differ.
fn same_stored_event(a: &EventRow, b: &EventRow) -> bool {
    let plain = |r: &EventRow| EventRow {
        source_topic: String::new(),
        source_partition: 0,
        source_offset: 0,
        ..r.clone()
    };
    plain(a) == plain(b)
}

/// The trusted keys with every rotation stored in ClickHouse followed from them; the
/// records that do not hold are returned with why (each a finding: only a ClickHouse writer
/// stores one).
pub async fn follow_rotations(
    db: &clickhouse::Client,
    configured: &HashMap<String, ed25519_dalek::VerifyingKey>,
) -> Result<(Keyring, Vec<(KeyRotation, String)>)> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Params {
        keys: Vec<String>,
        values: Vec<String>,
    }
    let rows: Vec<Params> = db
        .query(
            "SELECT DISTINCT mapKeys(params) AS keys, mapValues(params) AS values FROM events
             WHERE event_type = ?",
        )
        .bind(ROTATION_TYPE)
        .fetch_all()
        .await
        .context("reading key rotation records")?;
    let mut rotations = Vec::new();
    let mut refused = Vec::new();
    for Params { keys, values } in rows {
        let params: BTreeMap<String, String> = keys.into_iter().zip(values).collect();
        match KeyRotation::from_params(&params) {
            Some(r) => rotations.push(r),
            None => refused.push((
                KeyRotation {
                    old_key_id: params.get("old_key_id").cloned().unwrap_or_default(),
                    new_key_id: params.get("new_key_id").cloned().unwrap_or_default(),
                    new_public_key: String::new(),
                    rotated_at: 0,
                    old_signature: String::new(),
                    new_signature: String::new(),
                },
                "its fields are missing or mistyped".to_string(),
            )),
        }
    }
    let (ring, more) = Keyring::follow(configured, &rotations);
    refused.extend(more);
    Ok((ring, refused))
}

/// The configured public keys, checked.
/// The public keys checkpoints and digests are checked with: `verify.public_keys`, then each
/// `--public-key KEY_ID=BASE64` flag; an error names the bad one, and no key at all is one.
pub fn trusted_keys(
    configured: &BTreeMap<String, String>,
    flags: &[String],
) -> Result<HashMap<String, ed25519_dalek::VerifyingKey>> {
    let mut keys = HashMap::new();
    for (id, b64) in configured {
        let key =
            chain::public_key(b64).with_context(|| format!("setting `verify.public_keys.{id}`"))?;
        keys.insert(id.clone(), key);
    }
    for flag in flags {
        let (id, b64) = flag
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--public-key {flag:?}: expected KEY_ID=BASE64"))?;
        let key = chain::public_key(b64).with_context(|| format!("--public-key {id}=..."))?;
        keys.insert(id.to_string(), key);
    }
    if keys.is_empty() {
        anyhow::bail!("no public key: set verify.public_keys or pass --public-key KEY_ID=BASE64 (audit-enricher public-key prints it)");
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn skip(content: serde_json::Value, id: uuid::Uuid) -> ChainSkip {
        let text = chain::canonical_text(&content);
        ChainSkip {
            raw_partition: 0,
            epoch: "e".into(),
            seq: 3,
            prev: chain::genesis(),
            hash: String::new(),
            content_digest: hex::encode(sha2::Sha256::digest(text.as_bytes())),
            event_id: id,
            content: text,
            chain_content: String::new(),
        }
    }

    #[test]
    fn a_resend_is_told_from_a_skip_forged_to_hide_a_deletion() {
        let id = uuid::Uuid::new_v4();
        let stored = [StoredCopy {
            content_digest: "aa".into(),
            raw_position: (0, 5),
        }];
        let content = |event_id: String, offset: i64| {
            serde_json::json!({"event": {"event_id": event_id, "message": "second"},
                "raw_partition": 0, "raw_offset": offset})
        };
        // Another raw record with the same id: a resend.
        assert!(is_resend(&skip(content(id.to_string(), 9), id), &stored));
        // The content of a deleted row names its own id, not the stored one's.
        let other = uuid::Uuid::new_v4().to_string();
        assert!(!is_resend(&skip(content(other, 9), id), &stored));
        // The very raw record that is stored is no resend.
        assert!(!is_resend(&skip(content(id.to_string(), 5), id), &stored));
        // Content that does not hash to the digest.
        let mut forged = skip(content(id.to_string(), 9), id);
        forged.content = forged.content.replace("second", "third");
        assert!(!is_resend(&forged, &stored));
        // No stored copy at all.
        assert!(!is_resend(&skip(content(id.to_string(), 9), id), &[]));
    }
}
