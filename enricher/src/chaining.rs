//! The enricher's side of tamper evidence (`audit_schemas::chain`): links in publication order,
//! digests only of what the broker acknowledged.
//!
//! Each enriched event is linked as it is built, so the chain's order is the order the batch
//! publishes in. A batch's delivery waits for the batch before it (deliveries run concurrently
//! and may finish out of order) and then records its chains' heads as acknowledged; a digest
//! signs acknowledged heads only, at most every `digest_interval`, so a crash can leave
//! unsigned links only after a chain's last digest.

use audit_schemas::chain::{self, ChainHead, Chains, Digest, SigningKey};
use audit_schemas::event::{
    EnrichedAuditEvent, Enrichment, EntityRef, PipelineMeta, RawAuditEvent, Source,
};
use audit_schemas::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Links events and prepares each batch's digest step.
pub struct Chaining {
    chains: Chains,
    /// Partitions linked since the last batch ended.
    touched: BTreeSet<i32>,
    signer: Option<Arc<SigningKey>>,
    interval: Duration,
    acked: Arc<Mutex<Acked>>,
    /// Resolved when the previous batch's heads are recorded as acknowledged.
    previous: Option<oneshot::Receiver<()>>,
    /// When the last batch ended: an idle wake-up comes an interval after it, not sooner.
    last_batch: Instant,
}

/// Heads the broker acknowledged, and which of them a digest signed.
struct Acked {
    heads: HashMap<i32, ChainHead>,
    signed: HashMap<i32, (String, i64)>,
    last_digest: Instant,
}

impl Acked {
    fn unsigned(&self) -> impl Iterator<Item = &ChainHead> {
        self.heads.values().filter(|h| {
            self.signed
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
                last_digest: Instant::now(),
            })),
            previous: None,
            last_batch: Instant::now(),
        }
    }

    /// Sets `event.chain` to the next link of its raw partition's chain.
    pub fn link(&mut self, event: &mut EnrichedAuditEvent) {
        let p = event.pipeline.raw_partition;
        let content = chain::event_digest(&event.event, p, event.pipeline.raw_offset);
        event.chain = Some(self.chains.link(p, &content));
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

    /// When an idle enricher should run an empty batch to sign what is still unsigned: links
    /// made (acknowledged or still on their way) that no digest covers yet.
    pub fn wake_at(&self) -> Option<Instant> {
        self.signer.as_ref()?;
        let acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        let unsigned = self.chains.heads().any(|h| {
            acked
                .signed
                .get(&h.raw_partition)
                .is_none_or(|(epoch, seq)| *epoch != h.epoch || *seq < h.seq)
        });
        unsigned.then(|| (acked.last_digest + self.interval).max(self.last_batch + self.interval))
    }
}

/// A batch's digest step, run by its delivery after the broker acknowledged the batch.
pub struct AfterAck {
    heads: Vec<ChainHead>,
    previous: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
    acked: Arc<Mutex<Acked>>,
    signer: Option<Arc<SigningKey>>,
    interval: Duration,
}

impl AfterAck {
    /// Records this batch's heads as acknowledged (after the batch before it did) and returns
    /// the digest events to publish now, if one is due.
    pub async fn acknowledged(self) -> Vec<EnrichedAuditEvent> {
        if let Some(previous) = self.previous {
            // An error means the previous batch failed; the service is stopping then.
            let _ = previous.await;
        }
        let digests = {
            let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
            for h in self.heads {
                acked.heads.insert(h.raw_partition, h);
            }
            match &self.signer {
                Some(key) if acked.last_digest.elapsed() >= self.interval => {
                    let now = Timestamp::now();
                    let due: Vec<ChainHead> = acked.unsigned().cloned().collect();
                    for h in &due {
                        acked
                            .signed
                            .insert(h.raw_partition, (h.epoch.clone(), h.seq));
                    }
                    acked.last_digest = Instant::now();
                    due.iter()
                        .map(|h| digest_event(&Digest::sign(h, now.as_micros(), key), now))
                        .collect()
                }
                _ => Vec::new(),
            }
        };
        let _ = self.done.send(());
        digests
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
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("chain-digest\n{}\n{}\n{}", d.raw_partition, d.epoch, d.seq).as_bytes(),
    );
    EnrichedAuditEvent {
        event: RawAuditEvent {
            event_id: id,
            timestamp: now,
            event_type: audit_schemas::control::reserved_type(chain::DIGEST_TYPE),
            source: Source::Server,
            service: "audit-enricher".into(),
            session_id: None,
            user_id: None,
            username: None,
            tenant: None,
            success: true,
            message: Some(format!(
                "chain {} of raw partition {}: {} links, head {}",
                d.epoch,
                d.raw_partition,
                d.seq + 1,
                d.head
            )),
            entities: vec![EntityRef {
                kind: "audit-chain".into(),
                id: d.epoch.clone(),
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
            raw_partition: d.raw_partition,
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
        let mut a = event(0, 1);
        chaining.link(&mut a);
        let first = chaining.end_batch();
        let mut b = event(0, 2);
        chaining.link(&mut b);
        let second = chaining.end_batch();
        // The second batch is acknowledged first: it waits for the first.
        let second = tokio::spawn(second.acknowledged());
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        let digests = first.acknowledged().await;
        assert_eq!(digests.len(), 1);
        assert_eq!(digests[0].event.params["seq"], "0");
        let digests = second.await.unwrap();
        assert_eq!(digests.len(), 1);
        assert_eq!(digests[0].event.params["seq"], "1");
        let link = b.chain.unwrap();
        assert_eq!(
            digests[0].event.params["head"],
            format!("\"{}\"", link.hash)
        );
        // Nothing new: no digest.
        assert!(chaining.end_batch().acknowledged().await.is_empty());
    }

    #[tokio::test]
    async fn without_a_key_links_are_made_and_nothing_is_signed() {
        let mut chaining = Chaining::new(None, Duration::ZERO);
        let mut a = event(0, 1);
        chaining.link(&mut a);
        assert!(a.chain.is_some());
        assert!(chaining.end_batch().acknowledged().await.is_empty());
        assert_eq!(chaining.wake_at(), None);
    }
}
