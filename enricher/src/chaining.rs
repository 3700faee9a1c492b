//! The enricher's side of tamper evidence (`audit_schemas::chain`): links in publication order,
//! digests and checkpoints only of what the broker acknowledged.
//!
//! Each enriched event is linked as it is built, so the chain's order is the order the batch
//! publishes in. A batch's delivery waits for the batch before it (deliveries run concurrently
//! and may finish out of order) and then records its chains' heads as acknowledged. Every
//! `digest_interval` (batches or not: an idle enricher wakes for it) it signs a v1 digest of
//! each chain that moved and a v2 checkpoint of every chain it owns, moved or not, each naming
//! the partition's previous checkpoint; the next signing waits until these are published, so a
//! checkpoint never reaches the broker before the one it names. A crash can thus leave
//! unsigned links only after a chain's last checkpoint.

use audit_schemas::chain::checkpoint::{self, Checkpoint, Statement, CHECKPOINT_TYPE};
use audit_schemas::chain::{self, content, ChainHead, Chains, Digest, Hex, SigningKey};
use audit_schemas::event::{
    EnrichedAuditEvent, Enrichment, EntityRef, PipelineMeta, RawAuditEvent, Source,
};
use audit_schemas::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Links events and prepares each batch's signing step.
pub struct Chaining {
    chains: Chains,
    /// Partitions linked since the last batch ended.
    touched: BTreeSet<i32>,
    signer: Option<Arc<SigningKey>>,
    interval: Duration,
    acked: Arc<Mutex<Acked>>,
    /// Resolved when the previous batch's signing step is done (its statements published).
    previous: Option<oneshot::Receiver<()>>,
    /// When the last batch ended: an idle wake-up comes an interval after it, not sooner.
    last_batch: Instant,
}

/// Heads the broker acknowledged, and what was signed of them.
struct Acked {
    heads: HashMap<i32, ChainHead>,
    /// The (epoch, seq) each v1 digest signed last.
    signed: HashMap<i32, (String, i64)>,
    /// Each owned chain's epoch and the id its next checkpoint names as `prev`.
    checkpoints: HashMap<i32, (String, Hex)>,
    last_signed: Instant,
}

impl Acked {
    fn unsigned(&self) -> impl Iterator<Item = &ChainHead> {
        self.heads.values().filter(|h| {
            h.tree_size > 0
                && self
                    .signed
                    .get(&h.raw_partition)
                    .is_none_or(|(epoch, seq)| *epoch != h.epoch || *seq < h.seq)
        })
    }
}

impl Chaining {
    pub fn new(signer: Option<SigningKey>, interval: Duration) -> Self {
        Self {
            chains: Chains::default(),
            touched: BTreeSet::new(),
            signer: signer.map(Arc::new),
            interval,
            acked: Arc::new(Mutex::new(Acked {
                heads: HashMap::new(),
                signed: HashMap::new(),
                checkpoints: HashMap::new(),
                last_signed: Instant::now(),
            })),
            previous: None,
            last_batch: Instant::now(),
        }
    }

    /// Whether checkpoints are signed (a signing key is set): only then does a new chain need
    /// its partition's previous checkpoint.
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// Whether `partition` has a chain in this epoch.
    pub fn has(&self, partition: i32) -> bool {
        self.chains.has(partition)
    }

    /// Starts `partition`'s chain (a new epoch) unless it has one; its first checkpoint will
    /// name `prev`, the partition's last checkpoint before (from the checkpoints topic).
    pub fn start(&mut self, partition: i32, prev: Hex) {
        if !self.chains.start(partition) {
            return;
        }
        let Some(head) = self.chains.head(partition) else {
            return;
        };
        let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        acked
            .checkpoints
            .insert(partition, (head.epoch.clone(), prev));
        acked.heads.insert(partition, head);
    }

    /// Sets `event.chain` to the next link of its raw partition's chain.
    pub fn link(&mut self, event: &mut EnrichedAuditEvent) {
        let p = event.pipeline.raw_partition;
        if !self.chains.has(p) {
            // The service starts every chain before linking; this is a fallback that cannot
            // name the partition's previous checkpoint.
            tracing::warn!(
                partition = p,
                "a chain started without reading its previous checkpoint"
            );
            self.start(p, checkpoint::no_previous());
        }
        let offset = event.pipeline.raw_offset;
        let v1 = chain::event_digest(&event.event, p, offset);
        let salt = content::new_salt();
        let v2 = content::content_digest(&content::content(event, &salt));
        event.chain = Some(self.chains.link(p, offset, &v1, &v2, &salt));
        self.touched.insert(p);
    }

    /// Takes back the partition's last link (its event was not published after all).
    pub fn unlink(&mut self, partition: i32, link: &chain::ChainLink) {
        self.chains.unlink(partition, link);
    }

    pub fn forget(&mut self, partitions: &[i32]) {
        self.chains.forget(partitions);
        let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        for p in partitions {
            acked.heads.remove(p);
            acked.signed.remove(p);
            acked.checkpoints.remove(p);
        }
    }

    /// Ends a batch: what its delivery does once the batch is acknowledged.
    pub fn end_batch(&mut self) -> AfterAck {
        let heads: Vec<ChainHead> = std::mem::take(&mut self.touched)
            .into_iter()
            .filter_map(|p| self.chains.head(p))
            .collect();
        let (done, next) = oneshot::channel();
        self.last_batch = Instant::now();
        AfterAck {
            heads,
            previous: self.previous.replace(next),
            done,
            acked: self.acked.clone(),
            signer: self.signer.clone(),
            interval: self.interval,
        }
    }

    /// When an idle enricher should run an empty batch to sign: an interval after the last
    /// signing, as long as it owns a chain (checkpoints are signed idle or not).
    pub fn wake_at(&self) -> Option<Instant> {
        self.signer.as_ref()?;
        let acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        (!acked.checkpoints.is_empty())
            .then(|| (acked.last_signed + self.interval).max(self.last_batch + self.interval))
    }
}

/// A batch's signing step, run by its delivery after the broker acknowledged the batch.
pub struct AfterAck {
    heads: Vec<ChainHead>,
    previous: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
    acked: Arc<Mutex<Acked>>,
    signer: Option<Arc<SigningKey>>,
    interval: Duration,
}

/// What a batch's signing step produced, to publish before [`Signed::published`] lets the next
/// batch sign.
pub struct Signed {
    pub digests: Vec<EnrichedAuditEvent>,
    pub checkpoints: Vec<Stated>,
    done: oneshot::Sender<()>,
}

/// A signed checkpoint and the peaks of the tree it signs, published side by side.
#[derive(Debug, Clone)]
pub struct Stated {
    pub checkpoint: Checkpoint,
    pub peaks: Vec<chain::merkle::Hash>,
}

impl Signed {
    /// The statements are acknowledged by the broker: the next batch may sign.
    pub fn published(self) {
        let _ = self.done.send(());
    }
}

impl AfterAck {
    /// Records this batch's heads as acknowledged (after the batch before it was done) and
    /// returns the digests and checkpoints to publish now, if they are due.
    pub async fn acknowledged(self) -> Signed {
        if let Some(previous) = self.previous {
            // An error means the previous batch failed; the service is stopping then.
            let _ = previous.await;
        }
        let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        for h in self.heads {
            // Only chains still owned: a batch acknowledged after its partition left is not
            // this instance's to sign.
            if acked
                .checkpoints
                .get(&h.raw_partition)
                .is_some_and(|(epoch, _)| *epoch == h.epoch)
            {
                acked.heads.insert(h.raw_partition, h);
            }
        }
        let mut signed = Signed {
            digests: Vec::new(),
            checkpoints: Vec::new(),
            done: self.done,
        };
        let Some(key) = &self.signer else {
            return signed;
        };
        if acked.last_signed.elapsed() < self.interval {
            return signed;
        }
        let now = Timestamp::now();
        let due: Vec<ChainHead> = acked.unsigned().cloned().collect();
        for h in &due {
            acked
                .signed
                .insert(h.raw_partition, (h.epoch.clone(), h.seq));
        }
        signed.digests = due
            .iter()
            .map(|h| digest_event(&Digest::sign(h, now.as_micros(), key), now))
            .collect();
        let mut partitions: Vec<i32> = acked.checkpoints.keys().copied().collect();
        partitions.sort_unstable();
        for p in partitions {
            let (Some(head), Some((_, prev))) = (acked.heads.get(&p), acked.checkpoints.get(&p))
            else {
                continue;
            };
            let peaks = head.peaks.clone();
            let c = Checkpoint::sign(
                Statement {
                    raw_partition: p,
                    epoch: head.epoch.clone(),
                    tree_size: head.tree_size,
                    root: head.root.clone(),
                    raw_offset_start: head.raw_offset_start,
                    raw_offset_end: head.raw_offset_end,
                    prev: prev.clone(),
                    signed_at: now.as_micros(),
                },
                key,
            );
            if let Some(entry) = acked.checkpoints.get_mut(&p) {
                entry.1 = c.id();
            }
            signed.checkpoints.push(Stated {
                checkpoint: c,
                peaks,
            });
        }
        acked.last_signed = Instant::now();
        signed
    }
}

/// A digest as the event the sinks store (`audit.chain-digest`); ClickHouse's `chain_digests`
/// view reads its params.
pub fn digest_event(d: &Digest, now: Timestamp) -> EnrichedAuditEvent {
    let text = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut params = BTreeMap::new();
    params.insert("raw_partition".to_string(), d.raw_partition.to_string());
    params.insert("epoch".to_string(), text(&d.epoch));
    params.insert("seq".to_string(), d.seq.to_string());
    params.insert("head".to_string(), text(&d.head));
    params.insert("signed_at".to_string(), d.signed_at.to_string());
    params.insert("key_id".to_string(), text(&d.key_id));
    params.insert("signature".to_string(), text(&d.signature));
    bookkeeping_event(
        chain::DIGEST_TYPE,
        &format!("chain-digest\n{}\n{}\n{}", d.raw_partition, d.epoch, d.seq),
        params,
        format!(
            "chain {} of raw partition {}: {} links, head {}",
            d.epoch,
            d.raw_partition,
            d.seq + 1,
            d.head
        ),
        d.raw_partition,
        &d.epoch,
        now,
    )
}

/// A checkpoint as the event the sinks store (`audit.chain-checkpoint`) and the checkpoints
/// topic holds; its event id is derived from the checkpoint's id, so a copy is the same event.
/// The tree's peaks ride along unsigned ([`checkpoint::FRONTIER_PARAM`]).
pub fn checkpoint_event(stated: &Stated, now: Timestamp) -> EnrichedAuditEvent {
    let c = &stated.checkpoint;
    let mut params = c.to_params();
    params.insert(
        checkpoint::FRONTIER_PARAM.to_string(),
        checkpoint::frontier_param(&stated.peaks),
    );
    bookkeeping_event(
        CHECKPOINT_TYPE,
        &format!("chain-checkpoint\n{}", c.id()),
        params,
        format!(
            "checkpoint of raw partition {}, chain {}: {} links, root {}",
            c.raw_partition, c.epoch, c.tree_size, c.root
        ),
        c.raw_partition,
        &c.epoch,
        now,
    )
}

/// A key rotation as the event the sinks store (`audit.key-rotation`); its event id is derived
/// from the record, so publishing it twice is one event.
pub fn rotation_event(r: &chain::rotation::KeyRotation, now: Timestamp) -> EnrichedAuditEvent {
    bookkeeping_event(
        chain::rotation::ROTATION_TYPE,
        &format!("key-rotation\n{}", r.id()),
        r.to_params(),
        format!(
            "chain signing key {} retires at {} us in favour of {}",
            r.old_key_id, r.rotated_at, r.new_key_id
        ),
        -1,
        "",
        now,
    )
}

fn bookkeeping_event(
    event_type: &'static str,
    id_name: &str,
    params: BTreeMap<String, String>,
    message: String,
    raw_partition: i32,
    epoch: &str,
    now: Timestamp,
) -> EnrichedAuditEvent {
    EnrichedAuditEvent {
        event: RawAuditEvent {
            event_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, id_name.as_bytes()),
            timestamp: now,
            event_type: audit_schemas::control::reserved_type(event_type),
            source: Source::Server,
            service: "audit-enricher".into(),
            session_id: None,
            user_id: None,
            username: None,
            tenant: None,
            success: true,
            message: Some(message),
            entities: vec![EntityRef {
                kind: "audit-chain".into(),
                id: epoch.to_string(),
                name: None,
                role: Default::default(),
            }],
            params,
            response: None,
            error: None,
            client: None,
            ingest: None,
            utc_offset_minutes: None,
        },
        user: None,
        groups: Vec::new(),
        session: None,
        enrichment: Enrichment::NoSession,
        claimed_user_mismatch: false,
        pipeline: PipelineMeta {
            received_at: now,
            enriched_at: now,
            raw_partition,
            raw_offset: -1,
        },
        event_time: Default::default(),
        chain: None,
        catalog: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_schemas::EventType;
    use base64::Engine;

    fn key() -> SigningKey {
        SigningKey::from_seed_b64(
            "k",
            &base64::engine::general_purpose::STANDARD.encode([3u8; 32]),
        )
        .unwrap()
    }

    fn event(partition: i32, offset: i64) -> EnrichedAuditEvent {
        let d = Digest {
            raw_partition: partition,
            epoch: "e".into(),
            seq: offset,
            head: "h".into(),
            signed_at: 0,
            key_id: "k".into(),
            signature: "s".into(),
        };
        let mut e = digest_event(&d, Timestamp::now());
        e.pipeline.raw_offset = offset;
        e.event.event_type = EventType::new("log").unwrap();
        e
    }

    #[test]
    fn the_digest_type_is_a_valid_type() {
        assert!(EventType::new(chain::DIGEST_TYPE).is_ok());
    }

    #[tokio::test]
    async fn digests_sign_acknowledged_heads_in_batch_order() {
        let mut chaining = Chaining::new(Some(key()), Duration::ZERO);
        chaining.start(0, checkpoint::no_previous());
        let mut a = event(0, 1);
        chaining.link(&mut a);
        let first = chaining.end_batch();
        let mut b = event(0, 2);
        chaining.link(&mut b);
        let second = chaining.end_batch();
        // The second batch is acknowledged first: it waits for the first to be published.
        let second = tokio::spawn(second.acknowledged());
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        let signed = first.acknowledged().await;
        assert_eq!(signed.digests.len(), 1);
        assert_eq!(signed.digests[0].event.params["seq"], "0");
        tokio::task::yield_now().await;
        assert!(
            !second.is_finished(),
            "waits until the first batch's statements are published"
        );
        signed.published();
        let signed = second.await.unwrap();
        assert_eq!(signed.digests.len(), 1);
        assert_eq!(signed.digests[0].event.params["seq"], "1");
        let link = b.chain.unwrap();
        assert_eq!(
            signed.digests[0].event.params["head"],
            format!("\"{}\"", link.hash)
        );
        signed.published();
        // Nothing new: no digest, but still a checkpoint.
        let signed = chaining.end_batch().acknowledged().await;
        assert!(signed.digests.is_empty());
        assert_eq!(signed.checkpoints.len(), 1);
    }

    #[tokio::test]
    async fn every_owned_chain_is_checkpointed_idle_or_not_each_naming_the_one_before() {
        let k = key();
        let public = chain::public_key(&k.public_b64()).unwrap();
        let mut chaining = Chaining::new(Some(k), Duration::ZERO);
        let before = "ab".repeat(32);
        chaining.start(0, before.clone());
        chaining.start(1, checkpoint::no_previous());
        assert!(chaining.wake_at().is_some(), "an idle owner wakes to sign");
        let mut a = event(0, 7);
        chaining.link(&mut a);
        let mut b = event(0, 9);
        chaining.link(&mut b);
        let signed = chaining.end_batch().acknowledged().await;
        let [c0, c1] = &signed
            .checkpoints
            .iter()
            .map(|s| s.checkpoint.clone())
            .collect::<Vec<_>>()[..]
        else {
            panic!("one checkpoint per owned chain: {:?}", signed.checkpoints);
        };
        let signed_c0 = signed.checkpoints[0].clone();
        signed.published();
        assert!(c0.verify(&public) && c1.verify(&public));
        assert_eq!((c0.raw_partition, c0.prev.as_str()), (0, before.as_str()));
        assert_eq!(
            (c0.tree_size, c0.raw_offset_start, c0.raw_offset_end),
            (2, 7, 10)
        );
        // The root is over the leaves of the two events' v2 contents.
        let leaf = |e: &EnrichedAuditEvent| {
            let link = e.chain.as_ref().unwrap();
            let salt: content::Salt = hex::decode(link.salt.as_ref().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            let digest = content::content_digest(&content::content(e, &salt));
            chain::leaf::link_leaf(0, &link.epoch, link.seq, &digest)
        };
        let root = chain::merkle::root(&[leaf(&a), leaf(&b)]);
        assert_eq!(c0.root, hex::encode(root));
        // The idle partition: an empty tree, nothing answered for.
        assert_eq!((c1.tree_size, c1.raw_offset_start), (0, -1));
        assert_eq!(c1.root, hex::encode(chain::merkle::empty_root()));
        // The next round names these.
        let signed = chaining.end_batch().acknowledged().await;
        let next: Vec<Checkpoint> = signed
            .checkpoints
            .iter()
            .map(|s| s.checkpoint.clone())
            .collect();
        signed.published();
        assert_eq!(next[0].prev, c0.id());
        assert_eq!(next[1].prev, c1.id());
        assert_eq!(next[0].epoch, c0.epoch);
        // A chain that left is no longer checkpointed; a new epoch starts when it comes back.
        chaining.forget(&[1]);
        chaining.start(1, next[1].id());
        let again = chaining.end_batch().acknowledged().await;
        assert_eq!(again.checkpoints.len(), 2);
        let c = &again.checkpoints[1].checkpoint;
        assert_ne!(c.epoch, c1.epoch);
        assert_eq!(c.prev, next[1].id());
        let event = checkpoint_event(&again.checkpoints[1], Timestamp::now());
        assert_eq!(
            Checkpoint::from_params(&event.event.params).as_ref(),
            Some(c)
        );
        // The peaks beside it are the signed tree's.
        let event = checkpoint_event(&signed_c0, Timestamp::now());
        let peaks: Vec<String> =
            serde_json::from_str(&event.event.params[checkpoint::FRONTIER_PARAM]).unwrap();
        assert_eq!(peaks.len(), 1, "two links: one perfect subtree");
        assert!(c0.frontier(&peaks).is_some());
    }

    #[tokio::test]
    async fn without_a_key_links_are_made_and_nothing_is_signed() {
        let mut chaining = Chaining::new(None, Duration::ZERO);
        let mut a = event(0, 1);
        chaining.link(&mut a);
        assert!(a.chain.is_some());
        let signed = chaining.end_batch().acknowledged().await;
        assert!(signed.digests.is_empty() && signed.checkpoints.is_empty());
        assert_eq!(chaining.wake_at(), None);
    }
}
