//! Proof files (`docs/proof-format.md` §5 and §6): what `auditctl prove` writes and
//! `auditctl check-proof` checks, offline, with nothing but the signer's public key.
//!
//! An inclusion proof carries one event's content bytes, its place in the chain, the audit path
//! and the signed checkpoint whose root the path leads to; a consistency proof carries two
//! checkpoints of one chain and the hashes that show the later tree extends the earlier one.
//! Checking is strict in the ways the document names (lower-case hex, canonical base64, JSON
//! integers, no member twice) so that one file has one reading.

use super::checkpoint::Checkpoint;
use super::{content, leaf, merkle, Hex};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const INCLUSION_FORMAT: &str = "audit-inclusion-proof-v2";
pub const CONSISTENCY_FORMAT: &str = "audit-consistency-proof-v2";

/// The public keys a checker trusts, by key id.
pub type Keys = HashMap<String, ed25519_dalek::VerifyingKey>;

/// Proof that one event's content is leaf `seq` of a signed chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub format: String,
    pub event_id: String,
    /// The content bytes exactly as hashed (§2), base64.
    pub content_b64: String,
    pub raw_partition: i32,
    pub epoch: String,
    pub seq: u64,
    pub tree_size: u64,
    pub audit_path: Vec<Hex>,
    pub checkpoint: Checkpoint,
}

/// Proof that checkpoint `new`'s tree extends checkpoint `old`'s (one chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub format: String,
    pub old: Checkpoint,
    pub new: Checkpoint,
    pub proof: Vec<Hex>,
}

/// Either kind of file, told apart by its `format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofFile {
    Inclusion(InclusionProof),
    Consistency(ConsistencyProof),
}

/// Why a proof does not hold, or the file is not a proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("not a proof file: {0}")]
    Malformed(String),
    #[error("format {0:?} is neither {INCLUSION_FORMAT} nor {CONSISTENCY_FORMAT}")]
    Format(String),
    #[error("{0} is not 64 lower-case hex digits")]
    Hex(String),
    #[error("{0} contains a newline")]
    Newline(String),
    #[error("{0} is not canonical base64")]
    Base64(String),
    #[error("{0}: no public key is given for key id {1:?}")]
    UnknownKey(String, String),
    #[error("{0}: the signature does not verify with key {1:?}")]
    Signature(String, String),
    #[error("{0}: the root of an empty tree is not SHA-256 of nothing")]
    EmptyRoot(String),
    #[error("{0} differs from the checkpoint's")]
    Differs(&'static str),
    #[error("seq {seq} is not in the tree of {tree_size} links")]
    NotInTree { seq: u64, tree_size: u64 },
    #[error("the content is not a JSON object with event.event_id {0:?}")]
    EventId(String),
    #[error("the audit path does not lead from the content's leaf to the signed root")]
    AuditPath,
    #[error("the two checkpoints are of different chains (raw partition and epoch)")]
    OtherChain,
    #[error("old tree_size {old} is larger than new tree_size {new}")]
    Shrinks { old: u64, new: u64 },
    #[error("the proof does not show the new signed tree extends the old one")]
    Inconsistent,
}

/// What a proof that holds shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proven {
    Inclusion {
        event_id: String,
        raw_partition: i32,
        epoch: String,
        seq: u64,
        tree_size: u64,
        key_id: String,
    },
    Consistency {
        raw_partition: i32,
        epoch: String,
        old_size: u64,
        new_size: u64,
        key_id: String,
        /// `new.prev` names `old`: the two are successive checkpoints.
        adjacent: bool,
    },
}

impl std::fmt::Display for Proven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inclusion {
                event_id,
                raw_partition,
                epoch,
                seq,
                tree_size,
                key_id,
            } => write!(
                f,
                "ok inclusion: event {event_id} is link {seq} of {tree_size} in chain {epoch} of raw partition {raw_partition}, signed by {key_id}"
            ),
            Self::Consistency {
                raw_partition,
                epoch,
                old_size,
                new_size,
                key_id,
                adjacent,
            } => write!(
                f,
                "ok consistency: chain {epoch} of raw partition {raw_partition} at {new_size} links extends itself at {old_size}, signed by {key_id}{}",
                if *adjacent { "; the two checkpoints are successive" } else { "" }
            ),
        }
    }
}

impl ProofFile {
    /// Reads a file of either kind. Members not in the format are ignored, as the document
    /// says; a member given twice, a wrong JSON type or a missing member is [`ProofError::Malformed`].
    pub fn parse(bytes: &[u8]) -> Result<Self, ProofError> {
        #[derive(Deserialize)]
        struct Format {
            format: String,
        }
        let bad = |e: serde_json::Error| ProofError::Malformed(e.to_string());
        let Format { format } = serde_json::from_slice(bytes).map_err(bad)?;
        match format.as_str() {
            INCLUSION_FORMAT => Ok(Self::Inclusion(serde_json::from_slice(bytes).map_err(bad)?)),
            CONSISTENCY_FORMAT => Ok(Self::Consistency(
                serde_json::from_slice(bytes).map_err(bad)?,
            )),
            _ => Err(ProofError::Format(format)),
        }
    }

    pub fn check(&self, keys: &Keys) -> Result<Proven, ProofError> {
        match self {
            Self::Inclusion(p) => p.check(keys),
            Self::Consistency(p) => p.check(keys),
        }
    }
}

impl InclusionProof {
    /// The proof for leaf `seq` of `tree` (the chain's leaf hashes), whose content is `content`,
    /// under `checkpoint`, which must sign `tree`'s first `checkpoint.tree_size` leaves.
    pub fn build(
        event_id: &str,
        content: &[u8],
        seq: u64,
        tree: &(impl merkle::Subtrees + ?Sized),
        checkpoint: Checkpoint,
    ) -> Self {
        Self {
            format: INCLUSION_FORMAT.to_string(),
            event_id: event_id.to_string(),
            content_b64: B64.encode(content),
            raw_partition: checkpoint.raw_partition,
            epoch: checkpoint.epoch.clone(),
            seq,
            tree_size: checkpoint.tree_size,
            audit_path: merkle::inclusion_path(tree, seq, checkpoint.tree_size)
                .iter()
                .map(hex::encode)
                .collect(),
            checkpoint,
        }
    }

    /// The content bytes, when `content_b64` is canonical base64.
    pub fn content(&self) -> Result<Vec<u8>, ProofError> {
        canonical_b64(&self.content_b64, "content_b64")
    }

    pub fn check(&self, keys: &Keys) -> Result<Proven, ProofError> {
        if self.format != INCLUSION_FORMAT {
            return Err(ProofError::Format(self.format.clone()));
        }
        let root = checked(&self.checkpoint, "checkpoint", keys)?;
        let cp = &self.checkpoint;
        if self.raw_partition != cp.raw_partition {
            return Err(ProofError::Differs("raw_partition"));
        }
        if self.epoch != cp.epoch {
            return Err(ProofError::Differs("epoch"));
        }
        if self.tree_size != cp.tree_size {
            return Err(ProofError::Differs("tree_size"));
        }
        if self.seq >= self.tree_size {
            return Err(ProofError::NotInTree {
                seq: self.seq,
                tree_size: self.tree_size,
            });
        }
        let content = self.content()?;
        let parsed: serde_json::Value = serde_json::from_slice(&content)
            .map_err(|_| ProofError::EventId(self.event_id.clone()))?;
        if parsed.pointer("/event/event_id").and_then(|v| v.as_str()) != Some(&self.event_id) {
            return Err(ProofError::EventId(self.event_id.clone()));
        }
        let path = self
            .audit_path
            .iter()
            .enumerate()
            .map(|(i, h)| hex32(h, &format!("audit_path[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let seq = i64::try_from(self.seq).map_err(|_| ProofError::NotInTree {
            seq: self.seq,
            tree_size: self.tree_size,
        })?;
        let leaf = leaf::link_leaf(
            self.raw_partition,
            &self.epoch,
            seq,
            &content::content_digest(&content),
        );
        if !merkle::verify_inclusion(self.seq, self.tree_size, &leaf, &path, &root) {
            return Err(ProofError::AuditPath);
        }
        Ok(Proven::Inclusion {
            event_id: self.event_id.clone(),
            raw_partition: self.raw_partition,
            epoch: self.epoch.clone(),
            seq: self.seq,
            tree_size: self.tree_size,
            key_id: cp.key_id.clone(),
        })
    }
}

impl ConsistencyProof {
    /// The proof that `new` extends `old`, both signing prefixes of `tree`.
    pub fn build(
        tree: &(impl merkle::Subtrees + ?Sized),
        old: Checkpoint,
        new: Checkpoint,
    ) -> Self {
        Self {
            format: CONSISTENCY_FORMAT.to_string(),
            proof: merkle::consistency_proof(tree, old.tree_size, new.tree_size)
                .iter()
                .map(hex::encode)
                .collect(),
            old,
            new,
        }
    }

    pub fn check(&self, keys: &Keys) -> Result<Proven, ProofError> {
        if self.format != CONSISTENCY_FORMAT {
            return Err(ProofError::Format(self.format.clone()));
        }
        let old_root = checked(&self.old, "old", keys)?;
        let new_root = checked(&self.new, "new", keys)?;
        let (old, new) = (&self.old, &self.new);
        if (old.raw_partition, &old.epoch) != (new.raw_partition, &new.epoch) {
            return Err(ProofError::OtherChain);
        }
        if old.tree_size > new.tree_size {
            return Err(ProofError::Shrinks {
                old: old.tree_size,
                new: new.tree_size,
            });
        }
        let proof = self
            .proof
            .iter()
            .enumerate()
            .map(|(i, h)| hex32(h, &format!("proof[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if !merkle::verify_consistency(old.tree_size, new.tree_size, &old_root, &new_root, &proof) {
            return Err(ProofError::Inconsistent);
        }
        Ok(Proven::Consistency {
            raw_partition: new.raw_partition,
            epoch: new.epoch.clone(),
            old_size: old.tree_size,
            new_size: new.tree_size,
            key_id: new.key_id.clone(),
            adjacent: new.prev == old.id(),
        })
    }
}

/// A checkpoint's form (§4) and signature; its root.
fn checked(cp: &Checkpoint, what: &str, keys: &Keys) -> Result<merkle::Hash, ProofError> {
    for (name, value) in [("epoch", &cp.epoch), ("key_id", &cp.key_id)] {
        if value.contains('\n') {
            return Err(ProofError::Newline(format!("{what}.{name}")));
        }
    }
    let root = hex32(&cp.root, &format!("{what}.root"))?;
    hex32(&cp.prev, &format!("{what}.prev"))?;
    if cp.tree_size == 0 && root != merkle::empty_root() {
        return Err(ProofError::EmptyRoot(what.to_string()));
    }
    canonical_b64(&cp.signature, &format!("{what}.signature"))?;
    let key = keys
        .get(&cp.key_id)
        .ok_or_else(|| ProofError::UnknownKey(what.to_string(), cp.key_id.clone()))?;
    if !cp.verify(key) {
        return Err(ProofError::Signature(what.to_string(), cp.key_id.clone()));
    }
    Ok(root)
}

fn hex32(s: &str, what: &str) -> Result<merkle::Hash, ProofError> {
    let lower = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    lower
        .then(|| hex::decode(s).ok()?.try_into().ok())
        .flatten()
        .ok_or_else(|| ProofError::Hex(what.to_string()))
}

fn canonical_b64(s: &str, what: &str) -> Result<Vec<u8>, ProofError> {
    match B64.decode(s) {
        Ok(bytes) if B64.encode(&bytes) == s => Ok(bytes),
        _ => Err(ProofError::Base64(what.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::checkpoint::{no_previous, Statement};
    use crate::chain::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_seed_b64("k1", &B64.encode([7u8; 32])).unwrap()
    }

    fn keys() -> Keys {
        let k = key();
        [(
            k.id.clone(),
            crate::chain::public_key(&k.public_b64()).unwrap(),
        )]
        .into()
    }

    fn content(n: u64) -> Vec<u8> {
        format!(r#"{{"event":{{"event_id":"e-{n}"}}}}"#).into_bytes()
    }

    fn tree(n: u64) -> Vec<merkle::Hash> {
        (0..n)
            .map(|i| leaf::link_leaf(2, "ep", i as i64, &content::content_digest(&content(i))))
            .collect()
    }

    fn checkpoint(leaves: &[merkle::Hash], size: u64, prev: Hex) -> Checkpoint {
        Checkpoint::sign(
            Statement {
                raw_partition: 2,
                epoch: "ep".into(),
                tree_size: size,
                root: hex::encode(merkle::root(&leaves[..size as usize])),
                raw_offset_start: 0,
                raw_offset_end: size as i64,
                prev,
                signed_at: 1,
            },
            &key(),
        )
    }

    #[test]
    fn a_built_inclusion_proof_round_trips_and_checks() {
        let t = tree(11);
        let cp = checkpoint(&t, 11, no_previous());
        let p = InclusionProof::build("e-6", &content(6), 6, &t, cp);
        let file = ProofFile::parse(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert!(matches!(
            file.check(&keys()),
            Ok(Proven::Inclusion {
                seq: 6,
                tree_size: 11,
                ..
            })
        ));
        let mut other = p.clone();
        other.content_b64 = B64.encode(content(7));
        assert_eq!(other.check(&keys()), Err(ProofError::EventId("e-6".into())));
        other.event_id = "e-7".into();
        assert_eq!(other.check(&keys()), Err(ProofError::AuditPath));
        assert!(matches!(
            p.check(&Keys::new()),
            Err(ProofError::UnknownKey(..))
        ));
    }

    #[test]
    fn a_consistency_proof_checks_and_a_shrinking_one_does_not() {
        let t = tree(20);
        let old = checkpoint(&t, 7, no_previous());
        let new = checkpoint(&t, 20, old.id());
        let p = ConsistencyProof::build(&t, old.clone(), new.clone());
        assert!(matches!(
            p.check(&keys()),
            Ok(Proven::Consistency { adjacent: true, .. })
        ));
        let back = ConsistencyProof::build(&t, new, old);
        assert!(matches!(
            back.check(&keys()),
            Err(ProofError::Shrinks { old: 20, new: 7 })
        ));
    }

    #[test]
    fn a_member_twice_or_a_float_is_malformed() {
        let t = tree(3);
        let p = InclusionProof::build("e-1", &content(1), 1, &t, checkpoint(&t, 3, no_previous()));
        let text = serde_json::to_string(&p).unwrap();
        let twice = text.replacen("{", r#"{"seq":0,"#, 1);
        assert!(matches!(
            ProofFile::parse(twice.as_bytes()),
            Err(ProofError::Malformed(_))
        ));
        let float = text.replace(r#""seq":1"#, r#""seq":1.0"#);
        assert!(matches!(
            ProofFile::parse(float.as_bytes()),
            Err(ProofError::Malformed(_))
        ));
        assert!(matches!(
            ProofFile::parse(br#"{"format":"audit-proof-v9"}"#),
            Err(ProofError::Format(_))
        ));
    }
}
