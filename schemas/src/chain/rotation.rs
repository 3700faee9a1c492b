//! Key rotation as a signed statement: the retiring key names its successor, so a verifier
//! that trusts only the first key follows every rotation, and a checkpoint signed with a
//! retired key after its rotation (a stolen old key, an enricher left on it) is a finding.
//!
//! The statement is signed twice: by the old key (the endorsement) and by the new one (proof
//! that whoever holds the new key asked for it). `docs/proof-format.md` gives the bytes.

use super::{public_key, Hex, SigningKey};
use base64::Engine;
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// The event type of rotation records in the enriched topic; reserved, not chained.
pub const ROTATION_TYPE: &str = "audit.key-rotation";

/// `old_key_id` retires at `rotated_at`; `new_key_id` (`new_public_key`) signs from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotation {
    pub old_key_id: String,
    pub new_key_id: String,
    /// Base64 of the new Ed25519 public key's 32 bytes.
    pub new_public_key: String,
    /// Microseconds since the epoch: the old key signs nothing after this.
    pub rotated_at: i64,
    /// Base64 Ed25519 signatures over [`KeyRotation::message`].
    pub old_signature: String,
    pub new_signature: String,
}

/// Why a rotation record does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    #[error("the key ids must differ and hold no line break")]
    Ids,
    #[error("new_public_key is not a base64 Ed25519 public key")]
    PublicKey,
    #[error("the retiring key {0:?} did not sign it")]
    OldSignature(String),
    #[error("the new key {0:?} did not sign it")]
    NewSignature(String),
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn signature(text: &str) -> Option<ed25519_dalek::Signature> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    ed25519_dalek::Signature::from_slice(&bytes).ok()
}

impl KeyRotation {
    /// The bytes both keys sign: one `name=value` line per field in a fixed order.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "audit-key-rotation-v1\nold_key_id={}\nnew_key_id={}\nnew_public_key={}\nrotated_at={}\n",
            self.old_key_id, self.new_key_id, self.new_public_key, self.rotated_at
        )
        .into_bytes()
    }

    /// Hex SHA-256 of the message: names the rotation (its event id derives from it).
    pub fn id(&self) -> Hex {
        hex::encode(Sha256::digest(self.message()))
    }

    pub fn sign(old: &SigningKey, new: &SigningKey, rotated_at: i64) -> Self {
        let mut r = Self {
            old_key_id: old.id.clone(),
            new_key_id: new.id.clone(),
            new_public_key: new.public_b64(),
            rotated_at,
            old_signature: String::new(),
            new_signature: String::new(),
        };
        let message = r.message();
        r.old_signature = b64(&old.key.sign(&message).to_bytes());
        r.new_signature = b64(&new.key.sign(&message).to_bytes());
        r
    }

    /// The new key, when `old` (the retiring key's public key) and the new key both signed.
    pub fn verify(
        &self,
        old: &ed25519_dalek::VerifyingKey,
    ) -> Result<ed25519_dalek::VerifyingKey, RotationError> {
        let bad_id = |id: &str| id.is_empty() || id.contains('\n');
        if bad_id(&self.old_key_id)
            || bad_id(&self.new_key_id)
            || self.old_key_id == self.new_key_id
        {
            return Err(RotationError::Ids);
        }
        let new = public_key(&self.new_public_key).map_err(|_| RotationError::PublicKey)?;
        let message = self.message();
        let signed_by = |key: &ed25519_dalek::VerifyingKey, sig: &str| {
            signature(sig).is_some_and(|s| key.verify(&message, &s).is_ok())
        };
        if !signed_by(old, &self.old_signature) {
            return Err(RotationError::OldSignature(self.old_key_id.clone()));
        }
        if !signed_by(&new, &self.new_signature) {
            return Err(RotationError::NewSignature(self.new_key_id.clone()));
        }
        Ok(new)
    }

    /// The record's fields as the params of its `audit.key-rotation` event (JSON texts).
    pub fn to_params(&self) -> BTreeMap<String, String> {
        let text = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        [
            ("old_key_id", text(&self.old_key_id)),
            ("new_key_id", text(&self.new_key_id)),
            ("new_public_key", text(&self.new_public_key)),
            ("rotated_at", self.rotated_at.to_string()),
            ("old_signature", text(&self.old_signature)),
            ("new_signature", text(&self.new_signature)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The inverse of [`KeyRotation::to_params`]; `None` when a field is missing or mistyped.
    pub fn from_params(p: &BTreeMap<String, String>) -> Option<Self> {
        let text = |k: &str| serde_json::from_str::<String>(p.get(k)?).ok();
        Some(Self {
            old_key_id: text("old_key_id")?,
            new_key_id: text("new_key_id")?,
            new_public_key: text("new_public_key")?,
            rotated_at: p.get("rotated_at")?.parse().ok()?,
            old_signature: text("old_signature")?,
            new_signature: text("new_signature")?,
        })
    }
}

/// The keys a verifier trusts: the configured ones, and every key a trusted key handed over
/// to, each with the moment it retired (if it did).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: std::collections::HashMap<String, (ed25519_dalek::VerifyingKey, Option<i64>)>,
}

impl Keyring {
    /// From the configured keys and every rotation record found (in any order, any number,
    /// forged ones among them): rotations are followed from the trusted keys on, each only
    /// when signed by a key trusted at that point, until none adds anything. Returns the ring
    /// and the records that did not hold, with why.
    pub fn follow(
        configured: &std::collections::HashMap<String, ed25519_dalek::VerifyingKey>,
        rotations: &[KeyRotation],
    ) -> (Self, Vec<(KeyRotation, String)>) {
        let mut ring = Self {
            keys: configured
                .iter()
                .map(|(id, k)| (id.clone(), (*k, None)))
                .collect(),
        };
        let mut pending: Vec<&KeyRotation> = rotations.iter().collect();
        pending.sort_by_key(|r| r.rotated_at);
        loop {
            let before = pending.len();
            pending.retain(|r| {
                let Some((old, _)) = ring.keys.get(&r.old_key_id).copied() else {
                    return true;
                };
                let Ok(new) = r.verify(&old) else {
                    return true;
                };
                if let Some(entry) = ring.keys.get_mut(&r.old_key_id) {
                    // The earliest rotation of a key is when it retired.
                    entry.1 = Some(entry.1.map_or(r.rotated_at, |t| t.min(r.rotated_at)));
                }
                ring.keys.entry(r.new_key_id.clone()).or_insert((new, None));
                false
            });
            if pending.len() == before {
                break;
            }
        }
        let refused = pending
            .into_iter()
            .map(|r| {
                let why = match ring.keys.get(&r.old_key_id) {
                    None => format!("the retiring key {:?} is not trusted", r.old_key_id),
                    Some((old, _)) => match r.verify(old) {
                        Err(e) => e.to_string(),
                        Ok(_) => "already followed".to_string(),
                    },
                };
                (r.clone(), why)
            })
            .collect();
        (ring, refused)
    }

    /// The public keys by id, for checks that do not care about retirement.
    pub fn public_keys(&self) -> std::collections::HashMap<String, ed25519_dalek::VerifyingKey> {
        self.keys
            .iter()
            .map(|(id, (k, _))| (id.clone(), *k))
            .collect()
    }

    /// When `key_id` retired, if a rotation retired it.
    pub fn retired_at(&self, key_id: &str) -> Option<i64> {
        self.keys.get(key_id).and_then(|(_, t)| *t)
    }

    /// Each retired key's id and when it retired.
    pub fn retirements(&self) -> std::collections::HashMap<String, i64> {
        self.keys
            .iter()
            .filter_map(|(id, (_, t))| Some((id.clone(), (*t)?)))
            .collect()
    }

    /// How many keys are trusted, configured or handed over to.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8, id: &str) -> SigningKey {
        SigningKey::from_seed_b64(id, &b64(&[seed; 32])).unwrap()
    }

    fn public(k: &SigningKey) -> ed25519_dalek::VerifyingKey {
        public_key(&k.public_b64()).unwrap()
    }

    #[test]
    fn a_rotation_holds_only_with_both_signatures_and_any_change_breaks_it() {
        let (a, b) = (key(1, "a"), key(2, "b"));
        let r = KeyRotation::sign(&a, &b, 1_000);
        assert_eq!(r.verify(&public(&a)), Ok(public(&b)));
        assert_eq!(
            r.verify(&public(&b)),
            Err(RotationError::OldSignature("a".into()))
        );
        let mut later = r.clone();
        later.rotated_at = 2_000;
        assert!(later.verify(&public(&a)).is_err());
        // Someone holding the old key alone cannot hand over to a key of their choosing.
        let mallory = key(3, "b");
        let mut swapped = r.clone();
        swapped.new_public_key = mallory.public_b64();
        swapped.old_signature = b64(&a.key.sign(&swapped.message()).to_bytes());
        assert_eq!(
            swapped.verify(&public(&a)),
            Err(RotationError::NewSignature("b".into()))
        );
        assert_eq!(KeyRotation::from_params(&r.to_params()), Some(r));
    }

    #[test]
    fn the_ring_follows_rotations_from_the_trusted_keys_only() {
        let (a, b, c, m) = (key(1, "a"), key(2, "b"), key(3, "c"), key(4, "m"));
        let configured = std::collections::HashMap::from([("a".to_string(), public(&a))]);
        let rotations = vec![
            // Out of order on purpose, and one from a key nobody trusts.
            KeyRotation::sign(&b, &c, 2_000),
            KeyRotation::sign(&m, &key(5, "n"), 1_500),
            KeyRotation::sign(&a, &b, 1_000),
        ];
        let (ring, refused) = Keyring::follow(&configured, &rotations);
        let keys = ring.public_keys();
        assert_eq!(keys.get("c"), Some(&public(&c)));
        assert!(!keys.contains_key("n"));
        assert_eq!(ring.retired_at("a"), Some(1_000));
        assert_eq!(ring.retired_at("b"), Some(2_000));
        assert_eq!(ring.retired_at("c"), None);
        assert_eq!(refused.len(), 1);
        assert!(refused[0].1.contains("not trusted"), "{refused:?}");
    }
}
