//! `auditctl prove` and `auditctl check-proof`: proofs a third party checks offline, with the
//! enricher's public key and nothing else (`docs/proof-format.md`).
//!
//! `prove` reads one chain's stored links from ClickHouse, rebuilds its Merkle tree, and
//! refuses to write a proof unless the tree gives the root a checkpoint signed: a proof is only
//! ever made from a trail that verifies. The pure building and checking live in
//! `audit_schemas::chain::proof`; this module holds the queries and the files.

use crate::settings::Settings;
use crate::verify;
use anyhow::{bail, Context, Result};
use audit_schemas::chain::checkpoint::Checkpoint;
use audit_schemas::chain::proof::{ConsistencyProof, InclusionProof, Keys, ProofFile};
use audit_schemas::chain::{content, leaf, merkle};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["event_id", "consistency"])))]
pub struct ProveArgs {
    /// The event to prove: its content is a link under the newest signed checkpoint of its
    /// chain.
    event_id: Option<String>,
    /// Prove instead that checkpoint NEW's tree extends checkpoint OLD's (one chain). Each is
    /// a checkpoint id (64 hex digits), or a file holding a checkpoint or a proof (an
    /// inclusion proof's checkpoint, a consistency proof's `new`); NEW may be `latest`, the
    /// newest stored checkpoint of OLD's chain.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    consistency: Option<Vec<String>>,
    /// Write the proof to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
    /// A public key as KEY_ID=BASE64 (repeatable), beside verify.public_keys: only checkpoints
    /// that verify with one are used.
    #[arg(long = "public-key")]
    public_keys: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct CheckProofArgs {
    /// The proof file (`auditctl prove` writes them).
    file: PathBuf,
    /// The signer's public key as KEY_ID=BASE64 (repeatable), beside verify.public_keys.
    #[arg(long = "public-key")]
    public_keys: Vec<String>,
}

/// Checks a proof offline; nothing is read but the file and the keys.
pub fn check(args: CheckProofArgs, settings: &Settings) -> Result<()> {
    let keys = verify::trusted_keys(&settings.verify.public_keys, &args.public_keys)?;
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let proven = ProofFile::parse(&bytes)
        .and_then(|p| p.check(&keys))
        .with_context(|| format!("{} does not hold", args.file.display()))?;
    println!("{proven}");
    Ok(())
}

pub async fn run(args: ProveArgs, settings: &Settings) -> Result<()> {
    let keys = verify::trusted_keys(&settings.verify.public_keys, &args.public_keys)?;
    let keys = verify::follow_rotations(&verify::client(&settings.clickhouse), &keys)
        .await?
        .0
        .public_keys();
    let db = verify::client(&settings.clickhouse);
    let (json, summary) = match (&args.event_id, &args.consistency) {
        (Some(id), None) => {
            let p = inclusion(&db, &keys, id).await?;
            let summary = p.check(&keys)?.to_string();
            (serde_json::to_vec_pretty(&p)?, summary)
        }
        (None, Some(pair)) => {
            let [old, new] = pair.as_slice() else {
                bail!("--consistency takes two checkpoints: OLD NEW");
            };
            let p = consistency(&db, &keys, old, new).await?;
            let summary = p.check(&keys)?.to_string();
            (serde_json::to_vec_pretty(&p)?, summary)
        }
        _ => bail!("give either an EVENT_ID or --consistency OLD NEW"),
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("{summary}; written to {}", path.display());
        }
        None => {
            println!("{}", String::from_utf8_lossy(&json));
            eprintln!("{summary}");
        }
    }
    Ok(())
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Placed {
    raw_partition: i32,
    chain_epoch: String,
    chain_seq: i64,
    chain_content: String,
}

async fn inclusion(db: &clickhouse::Client, keys: &Keys, event_id: &str) -> Result<InclusionProof> {
    let id = uuid::Uuid::parse_str(event_id)
        .with_context(|| format!("EVENT_ID {event_id:?} is not a UUID"))?;
    let placed: Vec<Placed> = db
        .query(
            "SELECT DISTINCT raw_partition, chain_epoch, chain_seq, chain_content FROM events
             WHERE event_id = ? AND chain_seq >= 0 AND chain_content != ''",
        )
        .bind(id)
        .fetch_all()
        .await
        .context("looking the event up in events")?;
    if placed.is_empty() {
        bail!("event {id} is not stored with a v2 link (not stored, dropped by a rule, or older than the v2 chains)");
    }
    let mut last_error = None;
    // A stored copy altered in place has a content the tree does not give; the intact one does.
    for p in &placed {
        let seq = u64::try_from(p.chain_seq).unwrap_or(0);
        let Some(cp) = newest_covering(db, keys, p.raw_partition, &p.chain_epoch, seq).await?
        else {
            bail!(
                "event {id} (raw partition {}, chain {} link {seq}) is not yet under a signed checkpoint: the enricher signs one every chain.digest_interval_ms; try again shortly",
                p.raw_partition, p.chain_epoch
            );
        };
        let override_ = (seq, content::content_digest(p.chain_content.as_bytes()));
        match tree(db, &cp, Some(override_)).await {
            Ok(leaves) => {
                return Ok(InclusionProof::build(
                    &id.to_string(),
                    p.chain_content.as_bytes(),
                    seq,
                    &leaves,
                    cp,
                ))
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| anyhow::anyhow!("no stored copy of {id}"))
        .context(format!(
            "no stored copy of event {id} is under its signed root"
        )))
}

async fn consistency(
    db: &clickhouse::Client,
    keys: &Keys,
    old: &str,
    new: &str,
) -> Result<ConsistencyProof> {
    let old = resolve(db, old).await?;
    let new = if new == "latest" {
        newest_covering(db, keys, old.raw_partition, &old.epoch, 0)
            .await?
            .with_context(|| format!("no valid checkpoint of chain {} is stored", old.epoch))?
    } else {
        resolve(db, new).await?
    };
    for (what, c) in [("OLD", &old), ("NEW", &new)] {
        if !keys.get(&c.key_id).is_some_and(|k| c.verify(k)) {
            bail!(
                "{what} ({}) does not verify with any given key (key id {:?})",
                c.id(),
                c.key_id
            );
        }
    }
    if (old.raw_partition, &old.epoch) != (new.raw_partition, &new.epoch) {
        bail!(
            "OLD is of raw partition {} chain {} and NEW of raw partition {} chain {}: consistency holds within one chain; across chains the checkpoints are tied by prev",
            old.raw_partition, old.epoch, new.raw_partition, new.epoch
        );
    }
    if old.tree_size > new.tree_size {
        bail!(
            "OLD has {} links and NEW {}: NEW must be the later one",
            old.tree_size,
            new.tree_size
        );
    }
    let leaves = tree(db, &new, None).await?;
    if hex::encode(merkle::root(&leaves[..to_usize(old.tree_size)?])) != old.root {
        bail!(
            "the stored links of chain {} do not give OLD's signed root at size {}: run auditctl verify, which names what changed",
            old.epoch,
            old.tree_size
        );
    }
    Ok(ConsistencyProof::build(&leaves, old, new))
}

/// A checkpoint named by id, or read from a file holding one or a proof.
async fn resolve(db: &clickhouse::Client, name: &str) -> Result<Checkpoint> {
    let is_id = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_id {
        return from_file(Path::new(name));
    }
    let id = name.to_ascii_lowercase();
    let found = by_id(db, &id).await?;
    found
        .into_iter()
        .find(|c| c.id() == id)
        .with_context(|| format!("no checkpoint with id {id} is stored in chain_checkpoints"))
}

fn from_file(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "{}: neither a checkpoint id (64 hex digits) nor a readable file",
            path.display()
        )
    })?;
    if let Ok(p) = ProofFile::parse(&bytes) {
        return Ok(match p {
            ProofFile::Inclusion(p) => p.checkpoint,
            ProofFile::Consistency(p) => p.new,
        });
    }
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} holds neither a checkpoint nor a proof", path.display()))
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

const CHECKPOINT_COLUMNS: &str =
    "raw_partition, epoch, tree_size, root, raw_offset_start, raw_offset_end, prev,
     toUnixTimestamp64Micro(signed_at) AS signed_us, key_id, signature";

/// The checkpoint id (§4: SHA-256 of the signed message) computed by ClickHouse, so one can be
/// found without reading them all; the caller still compares [`Checkpoint::id`].
const ID_SQL: &str = r"lower(hex(SHA256(concat(
    'audit-checkpoint-v2\nraw_partition=', toString(raw_partition),
    '\nepoch=', epoch, '\ntree_size=', toString(tree_size), '\nroot=', root,
    '\nraw_offset_start=', toString(raw_offset_start),
    '\nraw_offset_end=', toString(raw_offset_end), '\nprev=', prev,
    '\nsigned_at=', toString(toUnixTimestamp64Micro(signed_at)), '\nkey_id=', key_id, '\n'))))";

async fn by_id(db: &clickhouse::Client, id: &str) -> Result<Vec<Checkpoint>> {
    let rows: Vec<CheckpointRow> = db
        .query(&format!(
            "SELECT DISTINCT {CHECKPOINT_COLUMNS} FROM chain_checkpoints WHERE {ID_SQL} = ?"
        ))
        .bind(id)
        .fetch_all()
        .await
        .context("looking the checkpoint up in chain_checkpoints")?;
    Ok(rows.into_iter().map(Checkpoint::from).collect())
}

/// The newest checkpoint of the chain over more than `seq` links that verifies with a key.
async fn newest_covering(
    db: &clickhouse::Client,
    keys: &Keys,
    raw_partition: i32,
    epoch: &str,
    seq: u64,
) -> Result<Option<Checkpoint>> {
    let rows: Vec<CheckpointRow> = db
        .query(&format!(
            "SELECT DISTINCT {CHECKPOINT_COLUMNS} FROM chain_checkpoints
             WHERE raw_partition = ? AND epoch = ? AND tree_size > ?
             ORDER BY tree_size DESC, signed_us DESC"
        ))
        .bind(raw_partition)
        .bind(epoch)
        .bind(seq)
        .fetch_all()
        .await
        .context("reading chain_checkpoints")?;
    Ok(rows
        .into_iter()
        .map(Checkpoint::from)
        .find(|c| keys.get(&c.key_id).is_some_and(|k| c.verify(k))))
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct LinkRow {
    seq: i64,
    content: String,
}

/// The leaf hashes of `cp`'s chain, links `0..cp.tree_size`, from the stored rows and the
/// sink's skips; `pin` sets one link's content digest (the copy being proved). Fails unless
/// every link is stored and the leaves give `cp`'s signed root.
async fn tree(
    db: &clickhouse::Client,
    cp: &Checkpoint,
    pin: Option<(u64, [u8; 32])>,
) -> Result<Vec<merkle::Hash>> {
    let size = to_usize(cp.tree_size)?;
    let end = i64::try_from(cp.tree_size).unwrap_or(i64::MAX);
    let mut digests: Vec<Option<[u8; 32]>> = vec![None; size];
    for (table, seq, content, epoch) in [
        ("events", "chain_seq", "chain_content", "chain_epoch"),
        ("chain_skips", "seq", "chain_content", "epoch"),
    ] {
        let mut cursor = db
            .query(&format!(
                "SELECT {seq} AS seq, {content} AS content FROM {table}
                 WHERE raw_partition = ? AND {epoch} = ? AND {seq} >= 0 AND {seq} < ?
                   AND {content} != ''"
            ))
            .bind(cp.raw_partition)
            .bind(&cp.epoch)
            .bind(end)
            .fetch::<LinkRow>()
            .with_context(|| format!("reading the links of chain {} from {table}", cp.epoch))?;
        while let Some(row) = cursor
            .next()
            .await
            .with_context(|| format!("reading the links of chain {} from {table}", cp.epoch))?
        {
            if let Some(slot) = usize::try_from(row.seq)
                .ok()
                .and_then(|s| digests.get_mut(s))
            {
                slot.get_or_insert_with(|| content::content_digest(row.content.as_bytes()));
            }
        }
    }
    if let Some((seq, digest)) = pin {
        if let Some(slot) = usize::try_from(seq).ok().and_then(|s| digests.get_mut(s)) {
            *slot = Some(digest);
        }
    }
    let mut leaves = Vec::with_capacity(size);
    for (seq, d) in digests.iter().enumerate() {
        let Some(d) = d else {
            bail!(
                "link {seq} of chain {} (raw partition {}) is not stored: run auditctl verify, which names what was deleted",
                cp.epoch,
                cp.raw_partition
            );
        };
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        leaves.push(leaf::link_leaf(cp.raw_partition, &cp.epoch, seq, d));
    }
    if hex::encode(merkle::root(&leaves)) != cp.root {
        bail!(
            "the stored links of chain {} (raw partition {}) do not give the root signed at size {}: run auditctl verify, which names what changed",
            cp.epoch,
            cp.raw_partition,
            cp.tree_size
        );
    }
    Ok(leaves)
}

fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n).with_context(|| format!("a tree of {n} links does not fit in memory"))
}

/// The event ids named by erasure records anywhere in `events` that are proven in the signed
/// trail: each record's content is a link under a checkpoint a configured key signed, the
/// stored links giving that root (as `prove` requires). Records are few, one chain read each.
pub async fn erasure_records_elsewhere(
    db: &clickhouse::Client,
    keys: &Keys,
) -> Result<Vec<uuid::Uuid>> {
    let records: Vec<Placed> = db
        .query(
            "SELECT DISTINCT raw_partition, chain_epoch, chain_seq, chain_content FROM events
             WHERE event_type = ? AND chain_seq >= 0 AND chain_content != ''",
        )
        .bind(audit_schemas::control::ERASURE_TYPE)
        .fetch_all()
        .await
        .context("reading the erasure records")?;
    let mut ids = Vec::new();
    for r in records {
        let seq = u64::try_from(r.chain_seq).unwrap_or(0);
        let Some(cp) = newest_covering(db, keys, r.raw_partition, &r.chain_epoch, seq).await?
        else {
            continue;
        };
        let pin = (seq, content::content_digest(r.chain_content.as_bytes()));
        if tree(db, &cp, Some(pin)).await.is_err() {
            continue;
        }
        if let Ok(signed) = content::parse(r.chain_content.as_bytes()) {
            ids.extend(audit_schemas::control::erased_ids(&signed.event).unwrap_or_default());
        }
    }
    Ok(ids)
}
