//! Signed checkpoints: what an enricher states about one raw partition's chain, at least once
//! per interval whether anything happened or not.
//!
//! A checkpoint signs the chain's Merkle root and size, the raw offsets it answers for, and the
//! id of the partition's previous checkpoint, in this epoch or (for an epoch's first) where the
//! previous epoch ended. The checkpoints of a partition thus form one hash-linked list across
//! every enricher that ever owned it: a deleted checkpoint, run of checkpoints or whole epoch
//! leaves a hole the next one points across, and a partition whose list stops is cut short.
//! `docs/proof-format.md` gives the exact bytes, for verifiers written elsewhere.

use super::{Hex, SigningKey};
use base64::Engine;
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The event type of checkpoints in the enriched topic; reserved, not chained, not dropped.
pub const CHECKPOINT_TYPE: &str = "audit.chain-checkpoint";

/// The param of a checkpoint event holding the tree's peaks ([`frontier_param`]). Not signed:
/// [`Checkpoint::frontier`] accepts peaks only when they fold to the signed root.
pub const FRONTIER_PARAM: &str = "frontier";

/// The peaks as the JSON text of an array of hex strings, largest subtree first.
pub fn frontier_param(peaks: &[super::merkle::Hash]) -> String {
    serde_json::Value::from(peaks.iter().map(hex::encode).collect::<Vec<_>>()).to_string()
}

/// `prev` of a partition's very first checkpoint.
pub fn no_previous() -> Hex {
    "0".repeat(64)
}

/// A signed statement about one chain (raw partition, epoch) at `signed_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub raw_partition: i32,
    pub epoch: String,
    /// Links in the chain so far: seqs `0..tree_size`.
    pub tree_size: u64,
    /// Hex RFC 9162 Merkle tree hash of those links' leaf hashes.
    pub root: Hex,
    /// The first raw offset the epoch answers for (where its owner started reading), or -1
    /// when it has read nothing yet.
    pub raw_offset_start: i64,
    /// One past the last raw offset the epoch has answered for: each offset in
    /// `raw_offset_start..raw_offset_end` became a link, a rule drop or a dead letter.
    pub raw_offset_end: i64,
    /// [`Checkpoint::id`] of the partition's previous checkpoint; [`no_previous`] for the first.
    pub prev: Hex,
    /// Microseconds since the epoch.
    pub signed_at: i64,
    pub key_id: String,
    /// Base64 Ed25519 signature over [`Checkpoint::message`].
    pub signature: String,
}

/// What a checkpoint states, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub raw_partition: i32,
    pub epoch: String,
    pub tree_size: u64,
    pub root: Hex,
    pub raw_offset_start: i64,
    pub raw_offset_end: i64,
    pub prev: Hex,
    pub signed_at: i64,
}

impl Checkpoint {
    /// The bytes signed: one `name=value` line per field in a fixed order.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "audit-checkpoint-v2\nraw_partition={}\nepoch={}\ntree_size={}\nroot={}\n\
             raw_offset_start={}\nraw_offset_end={}\nprev={}\nsigned_at={}\nkey_id={}\n",
            self.raw_partition,
            self.epoch,
            self.tree_size,
            self.root,
            self.raw_offset_start,
            self.raw_offset_end,
            self.prev,
            self.signed_at,
            self.key_id
        )
        .into_bytes()
    }

    /// The checkpoint's id: hex SHA-256 of its message. The next checkpoint's `prev`.
    pub fn id(&self) -> Hex {
        hex::encode(Sha256::digest(self.message()))
    }

    pub fn sign(s: Statement, key: &SigningKey) -> Self {
        let mut c = Self {
            raw_partition: s.raw_partition,
            epoch: s.epoch,
            tree_size: s.tree_size,
            root: s.root,
            raw_offset_start: s.raw_offset_start,
            raw_offset_end: s.raw_offset_end,
            prev: s.prev,
            signed_at: s.signed_at,
            key_id: key.id.clone(),
            signature: String::new(),
        };
        let signature = key.key.sign(&c.message());
        c.signature = base64::engine::general_purpose::STANDARD.encode(signature.to_bytes());
        c
    }

    /// Whether the signature is `public`'s over this checkpoint.
    pub fn verify(&self, public: &ed25519_dalek::VerifyingKey) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&self.signature) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&bytes) else {
            return false;
        };
        public.verify(&self.message(), &signature).is_ok()
    }

    /// The tree this checkpoint signs, from its stored peaks (hex, largest subtree first):
    /// `None` unless they are exactly the tree whose root it signs.
    pub fn frontier(&self, peaks: &[String]) -> Option<super::merkle::Frontier> {
        let peaks: Vec<super::merkle::Hash> = peaks
            .iter()
            .map(|p| hex::decode(p).ok()?.try_into().ok())
            .collect::<Option<_>>()?;
        let f = super::merkle::Frontier::from_peaks(self.tree_size, &peaks)?;
        (hex::encode(f.root()) == self.root).then_some(f)
    }

    /// The checkpoint's fields as the params of its `audit.chain-checkpoint` event (each a
    /// JSON text, as every param is).
    pub fn to_params(&self) -> std::collections::BTreeMap<String, String> {
        let text = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        [
            ("raw_partition", self.raw_partition.to_string()),
            ("epoch", text(&self.epoch)),
            ("tree_size", self.tree_size.to_string()),
            ("root", text(&self.root)),
            ("raw_offset_start", self.raw_offset_start.to_string()),
            ("raw_offset_end", self.raw_offset_end.to_string()),
            ("prev", text(&self.prev)),
            ("signed_at", self.signed_at.to_string()),
            ("key_id", text(&self.key_id)),
            ("signature", text(&self.signature)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The inverse of [`Checkpoint::to_params`]; `None` when a field is missing or mistyped.
    pub fn from_params(p: &std::collections::BTreeMap<String, String>) -> Option<Self> {
        let num = |k: &str| p.get(k)?.parse::<i64>().ok();
        let text = |k: &str| serde_json::from_str::<String>(p.get(k)?).ok();
        Some(Self {
            raw_partition: i32::try_from(num("raw_partition")?).ok()?,
            epoch: text("epoch")?,
            tree_size: u64::try_from(num("tree_size")?).ok()?,
            root: text("root")?,
            raw_offset_start: num("raw_offset_start")?,
            raw_offset_end: num("raw_offset_end")?,
            prev: text("prev")?,
            signed_at: num("signed_at")?,
            key_id: text("key_id")?,
            signature: text("signature")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8, id: &str) -> SigningKey {
        SigningKey::from_seed_b64(
            id,
            &base64::engine::general_purpose::STANDARD.encode([seed; 32]),
        )
        .unwrap()
    }

    fn statement() -> Statement {
        Statement {
            raw_partition: 2,
            epoch: "5e0c4c1e-58c1-4f0e-9d0a-6a3f0b8f4a11".into(),
            tree_size: 3,
            root: "ab".repeat(32),
            raw_offset_start: 10,
            raw_offset_end: 14,
            prev: no_previous(),
            signed_at: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn a_checkpoint_verifies_with_its_key_only_and_any_change_breaks_it() {
        let k = key(7, "k1");
        let c = Checkpoint::sign(statement(), &k);
        let public = super::super::public_key(&k.public_b64()).unwrap();
        assert!(c.verify(&public));
        let other = key(8, "k2");
        assert!(!c.verify(&super::super::public_key(&other.public_b64()).unwrap()));
        let mut changed = c.clone();
        changed.raw_offset_end = 13;
        assert!(!changed.verify(&public));
        assert_ne!(changed.id(), c.id());
        let mut relinked = c.clone();
        relinked.prev = "11".repeat(32);
        assert!(!relinked.verify(&public));
    }

    #[test]
    fn params_round_trip() {
        let c = Checkpoint::sign(statement(), &key(7, "k1"));
        assert_eq!(Checkpoint::from_params(&c.to_params()), Some(c.clone()));
        let mut p = c.to_params();
        p.remove("root");
        assert_eq!(Checkpoint::from_params(&p), None);
    }

    #[test]
    fn only_the_signed_trees_peaks_give_a_frontier() {
        let mut f = super::super::merkle::Frontier::default();
        for i in 0..11u8 {
            f.push([i; 32]);
        }
        let mut s = statement();
        s.tree_size = 11;
        s.root = hex::encode(f.root());
        let c = Checkpoint::sign(s, &key(7, "k1"));
        let stored: Vec<String> = serde_json::from_str(&frontier_param(&f.peaks())).unwrap();
        assert_eq!(c.frontier(&stored), Some(f.clone()));
        let mut other = stored.clone();
        other[1] = "00".repeat(32);
        assert_eq!(c.frontier(&other), None);
        assert_eq!(c.frontier(&stored[..2]), None);
        assert_eq!(c.frontier(&["zz".into(), "00".into(), "11".into()]), None);
    }

    #[test]
    fn the_message_is_the_documented_text() {
        let c = Checkpoint::sign(statement(), &key(7, "k1"));
        let text = String::from_utf8(c.message()).unwrap();
        assert!(text.starts_with("audit-checkpoint-v2\nraw_partition=2\nepoch=5e0c4c1e"));
        assert!(text.ends_with(&format!(
            "prev={}\nsigned_at=1700000000000000\nkey_id=k1\n",
            no_previous()
        )));
    }
}
