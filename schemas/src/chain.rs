//! Tamper evidence: hash chains over enriched events and signed digests of their heads.
//!
//! The enricher keeps one chain per raw partition it owns, with a new `epoch` (a UUID) each time
//! it starts on the partition. Every enriched event it publishes (drop summaries included) gets
//! the next link: `seq`, `prev` (the previous link's hash) and
//! `hash = SHA-256("audit-chain-v1" ‖ partition ‖ epoch ‖ seq ‖ prev ‖ content digest)`, where the
//! content digest is the SHA-256 of the event's [`canonical`] content: the raw event as stored
//! (after redaction) and its raw position, a form both sinks' copies reproduce exactly.
//! Enrichment (user, groups) is derived data and not covered.
//!
//! After a batch is acknowledged, the enricher publishes a [`Digest`] of each chain that moved:
//! its seq and head, signed with Ed25519. A digest covers only acknowledged links, so a crash
//! leaves unsigned links at most after a chain's last digest. `auditctl verify` checks stored
//! copies against the digests: every link up to a digest present (or shown to be a duplicate the
//! sink skipped), each hash recomputed, each `prev` the hash before it.
//!
//! The v2 proof format (issue #26) runs beside this: [`merkle`] (RFC 9162 trees and
//! proofs), [`leaf`] (a link's leaf), [`content`] (byte-exact content with erasable personal
//! data), [`checkpoint`] (signed, hash-linked per-partition checkpoints) and [`proof`] (the
//! files a third party checks offline). `docs/proof-format.md` describes the bytes.

use crate::event::{EntityRole, RawAuditEvent};
use base64::Engine;
pub use chains::{ChainHead, Chains};
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

pub mod chains;
pub mod checkpoint;
pub mod content;
pub mod leaf;
pub mod merkle;
pub mod proof;
pub mod rotation;

/// The event type of digests; reserved, not chained, not dropped.
pub const DIGEST_TYPE: &str = "audit.chain-digest";

/// A 32-byte hash as 64 lower-case hex digits.
pub type Hex = String;

/// `prev` of every chain's first link.
pub fn genesis() -> Hex {
    "0".repeat(64)
}

/// An event's place in its chain, carried in the enriched event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainLink {
    pub epoch: String,
    pub seq: i64,
    pub prev: Hex,
    pub hash: Hex,
    /// Hex of the salt of the v2 content's commitments ([`content`]); `None` on v1-only links.
    #[serde(default)]
    pub salt: Option<Hex>,
}

/// The event's content in a canonical form: `event` as JSON with params and response parsed
/// from their JSON text, nulls and empty objects left out, keys sorted, plus the raw position.
/// The ClickHouse row and the CloudWatch message of one event give the same value.
pub fn canonical(event: &RawAuditEvent, raw_partition: i32, raw_offset: i64) -> Value {
    let value = serde_json::to_value(event).unwrap_or(Value::Null);
    canonical_value(value, Form::Serde, raw_partition, raw_offset)
}

/// The JSON form an event is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Its serde form: params and response are JSON text.
    Serde,
    /// A CloudWatch message's `event`: params and response already parsed (parsing again would
    /// turn the string `"42"` into the number 42), `timestamp` in RFC 3339.
    Message,
}

/// [`canonical`] from an event already in JSON form.
pub fn canonical_value(mut event: Value, form: Form, raw_partition: i32, raw_offset: i64) -> Value {
    if let (Value::Object(e), Form::Serde) = (&mut event, form) {
        if let Some(Value::Object(params)) = e.get_mut("params") {
            for v in params.values_mut() {
                parse_text(v);
            }
        }
        if let Some(v) = e.get_mut("response") {
            parse_text(v);
        }
    }
    if let Value::Object(e) = &mut event {
        if let Some(t) = e.get_mut("timestamp") {
            if let Some(text) = t.as_str() {
                if let Ok(ts) = crate::Timestamp::parse_rfc3339(text) {
                    *t = Value::from(ts.as_micros());
                }
            }
        }
    }
    if let Some(Value::Array(entities)) = event.get_mut("entities") {
        // The default role is left out, so events from before roles hash as they did.
        for e in entities.iter_mut().filter_map(Value::as_object_mut) {
            if e.get("role").and_then(Value::as_str) == Some(EntityRole::Target.as_str()) {
                e.remove("role");
            }
        }
    }
    prune(&mut event);
    let mut out = Map::new();
    out.insert("event".into(), event);
    out.insert("raw_partition".into(), Value::from(raw_partition));
    out.insert("raw_offset".into(), Value::from(raw_offset));
    Value::Object(out)
}

fn parse_text(v: &mut Value) {
    if let Value::String(text) = v {
        if let Ok(parsed) = serde_json::from_str::<Value>(text) {
            *v = parsed;
        }
    }
}

/// Removes nulls and empty objects, recursively; returns whether `v` itself is now empty.
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => {
            m.retain(|_, x| !prune(x));
            m.is_empty()
        }
        Value::Array(items) => {
            for x in items.iter_mut() {
                prune(x);
            }
            false
        }
        _ => false,
    }
}

/// The canonical content's JSON text, keys sorted: the bytes [`content_digest`] hashes.
pub fn canonical_text(canonical: &Value) -> String {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, nor can serializing a Value.
    let _ = write_sorted(canonical, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// SHA-256 of the canonical content's JSON text, object keys sorted here (whatever order the
/// map kept them in: serde_json preserves insertion order when a dependency enables it). The
/// text is fed to the hash as it is written, never held.
pub fn content_digest(canonical: &Value) -> [u8; 32] {
    let mut hasher = Hashing(Sha256::new());
    // Writing into a hash cannot fail, nor can serializing a Value.
    let _ = write_sorted(canonical, &mut hasher);
    hasher.0.finalize().into()
}

/// [`content_digest`] of [`canonical`], written straight from the event: the same bytes (a
/// property test holds the two together), without building the JSON tree, for the enricher's
/// hot path.
pub fn event_digest(event: &RawAuditEvent, raw_partition: i32, raw_offset: i64) -> [u8; 32] {
    let mut h = Hashing(Sha256::new());
    // Writing into a hash cannot fail, nor can serializing strings and Values.
    let _ = write_event(event, raw_partition, raw_offset, &mut h);
    h.0.finalize().into()
}

/// Writes `"key":` after a comma when something came before in the object.
struct Fields<'a> {
    out: &'a mut Hashing,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, key: &str) -> serde_json::Result<()> {
        use std::io::Write;
        if !std::mem::replace(&mut self.first, false) {
            let _ = self.out.write(b",");
        }
        serde_json::to_writer(&mut *self.out, key)?;
        let _ = self.out.write(b":");
        Ok(())
    }

    fn string(&mut self, key: &str, value: &str) -> serde_json::Result<()> {
        self.key(key)?;
        serde_json::to_writer(&mut *self.out, value)
    }

    fn opt(&mut self, key: &str, value: Option<&str>) -> serde_json::Result<()> {
        match value {
            Some(v) => self.string(key, v),
            None => Ok(()),
        }
    }

    /// A JSON text field as its parsed value, left out when it prunes to nothing.
    fn parsed(&mut self, key: &str, text: &str) -> serde_json::Result<()> {
        let mut v =
            serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_string()));
        if prune(&mut v) {
            return Ok(());
        }
        self.key(key)?;
        write_sorted(&v, self.out)
    }
}

fn write_event(
    e: &RawAuditEvent,
    raw_partition: i32,
    raw_offset: i64,
    out: &mut Hashing,
) -> serde_json::Result<()> {
    use std::io::Write;
    let _ = out.write(b"{\"event\":{");
    let mut f = Fields { out, first: true };
    // Keys in sorted order, absent and empty values left out, as `canonical` does.
    if let Some(c) = &e.client {
        if c.ip.is_some() || c.user_agent.is_some() {
            f.key("client")?;
            let _ = f.out.write(b"{");
            let mut g = Fields {
                out: f.out,
                first: true,
            };
            g.opt("ip", c.ip.as_deref())?;
            g.opt("user_agent", c.user_agent.as_deref())?;
            let _ = f.out.write(b"}");
        }
    }
    f.key("entities")?;
    let _ = f.out.write(b"[");
    for (i, x) in e.entities.iter().enumerate() {
        if i > 0 {
            let _ = f.out.write(b",");
        }
        let _ = f.out.write(b"{");
        let mut g = Fields {
            out: f.out,
            first: true,
        };
        g.string("id", &x.id)?;
        g.opt("name", x.name.as_deref())?;
        if x.role != EntityRole::Target {
            g.string("role", x.role.as_str())?;
        }
        g.string("type", &x.kind)?;
        let _ = f.out.write(b"}");
    }
    let _ = f.out.write(b"]");
    if let Some(err) = &e.error {
        let fields = [
            ("code", err.code.as_deref()),
            ("fingerprint", err.fingerprint.as_deref()),
            ("message", err.message.as_deref()),
            ("stack_trace", err.stack_trace.as_deref()),
        ];
        if fields.iter().any(|(_, v)| v.is_some()) {
            f.key("error")?;
            let _ = f.out.write(b"{");
            let mut g = Fields {
                out: f.out,
                first: true,
            };
            for (k, v) in fields {
                g.opt(k, v)?;
            }
            let _ = f.out.write(b"}");
        }
    }
    f.key("event_id")?;
    serde_json::to_writer(&mut *f.out, &e.event_id.hyphenated().to_string())?;
    f.string("event_type", e.event_type.as_str())?;
    if let Some(i) = &e.ingest {
        f.key("ingest")?;
        let _ = f.out.write(b"{");
        let mut g = Fields {
            out: f.out,
            first: true,
        };
        g.string("credential", i.credential.as_str())?;
        g.opt("key_id", i.key_id.as_deref())?;
        if !i.overridden.is_empty() {
            g.key("overridden")?;
            let _ = g.out.write(b"{");
            let mut o = Fields {
                out: g.out,
                first: true,
            };
            for (k, v) in &i.overridden {
                o.string(k, v)?;
            }
            let _ = g.out.write(b"}");
        }
        g.opt("peer_ip", i.peer_ip.as_deref())?;
        let _ = f.out.write(b"}");
    }
    f.opt("message", e.message.as_deref())?;
    // Params: written into a buffer first, as all of them may prune away.
    let mut params: Vec<(&String, Value)> = Vec::new();
    for (k, text) in &e.params {
        let mut v =
            serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.clone()));
        if !prune(&mut v) {
            params.push((k, v));
        }
    }
    if !params.is_empty() {
        f.key("params")?;
        let _ = f.out.write(b"{");
        let mut g = Fields {
            out: f.out,
            first: true,
        };
        for (k, v) in &params {
            g.key(k)?;
            write_sorted(v, g.out)?;
        }
        let _ = f.out.write(b"}");
    }
    if let Some(r) = &e.response {
        f.parsed("response", r)?;
    }
    f.string("service", &e.service)?;
    f.opt("session_id", e.session_id.as_deref())?;
    f.string("source", e.source.as_str())?;
    f.key("success")?;
    let _ = f.out.write(if e.success { b"true" } else { b"false" });
    f.opt("tenant", e.tenant.as_deref())?;
    f.key("timestamp")?;
    serde_json::to_writer(&mut *f.out, &e.timestamp.as_micros())?;
    f.opt("user_id", e.user_id.as_deref())?;
    f.opt("username", e.username.as_deref())?;
    if let Some(m) = e.utc_offset_minutes {
        f.key("utc_offset_minutes")?;
        serde_json::to_writer(&mut *f.out, &m)?;
    }
    let _ = out.write(b"},\"raw_offset\":");
    serde_json::to_writer(&mut *out, &raw_offset)?;
    let _ = out.write(b",\"raw_partition\":");
    serde_json::to_writer(&mut *out, &raw_partition)?;
    let _ = out.write(b"}");
    Ok(())
}

/// An `io::Write` that hashes what is written.
struct Hashing(Sha256);

impl std::io::Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_sorted(v: &Value, out: &mut impl std::io::Write) -> serde_json::Result<()> {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            // serde_json's map iterates in key order already, unless its `preserve_order`
            // feature is on somewhere in the build.
            if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
                entries.sort_unstable_by_key(|e| e.0);
            }
            let _ = out.write(b"{");
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    let _ = out.write(b",");
                }
                serde_json::to_writer(&mut *out, k)?;
                let _ = out.write(b":");
                write_sorted(v, out)?;
            }
            let _ = out.write(b"}");
        }
        Value::Array(items) => {
            let _ = out.write(b"[");
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    let _ = out.write(b",");
                }
                write_sorted(x, out)?;
            }
            let _ = out.write(b"]");
        }
        other => serde_json::to_writer(&mut *out, other)?,
    }
    Ok(())
}

/// The hash of a link.
pub fn link_hash(partition: i32, epoch: &str, seq: i64, prev: &str, content: &[u8; 32]) -> Hex {
    let mut h = Sha256::new();
    h.update(b"audit-chain-v1\n");
    h.update(partition.to_be_bytes());
    h.update(epoch.as_bytes());
    h.update(b"\n");
    h.update(seq.to_be_bytes());
    h.update(prev.as_bytes());
    h.update(content);
    hex::encode(h.finalize())
}

/// A signed statement: chain (partition, epoch) had `seq + 1` links ending in `head` at
/// `signed_at` (microseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub raw_partition: i32,
    pub epoch: String,
    pub seq: i64,
    pub head: Hex,
    pub signed_at: i64,
    pub key_id: String,
    /// Base64 Ed25519 signature over [`Digest::message`].
    pub signature: String,
}

impl Digest {
    /// The bytes signed: every field but the signature, in a fixed layout.
    pub fn message(
        raw_partition: i32,
        epoch: &str,
        seq: i64,
        head: &str,
        signed_at: i64,
        key_id: &str,
    ) -> Vec<u8> {
        format!("audit-digest-v1\n{raw_partition}\n{epoch}\n{seq}\n{head}\n{signed_at}\n{key_id}\n")
            .into_bytes()
    }

    pub fn sign(head: &ChainHead, signed_at: i64, key: &SigningKey) -> Self {
        let message = Self::message(
            head.raw_partition,
            &head.epoch,
            head.seq,
            &head.head,
            signed_at,
            &key.id,
        );
        let signature = key.key.sign(&message);
        Self {
            raw_partition: head.raw_partition,
            epoch: head.epoch.clone(),
            seq: head.seq,
            head: head.head.clone(),
            signed_at,
            key_id: key.id.clone(),
            signature: base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
        }
    }

    /// Whether the signature is `public`'s over this digest.
    pub fn verify(&self, public: &ed25519_dalek::VerifyingKey) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&self.signature) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&bytes) else {
            return false;
        };
        let message = Self::message(
            self.raw_partition,
            &self.epoch,
            self.seq,
            &self.head,
            self.signed_at,
            &self.key_id,
        );
        public.verify(&message, &signature).is_ok()
    }
}

/// The enricher's digest key.
pub struct SigningKey {
    pub id: String,
    pub(crate) key: ed25519_dalek::SigningKey,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("is not base64 of a 32-byte Ed25519 seed")]
    Seed,
    #[error("is not base64 of a 32-byte Ed25519 public key")]
    Public,
}

impl SigningKey {
    /// From the base64 of a 32-byte seed (`openssl rand -base64 32`).
    pub fn from_seed_b64(id: &str, seed: &str) -> Result<Self, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(seed.trim())
            .map_err(|_| KeyError::Seed)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Seed)?;
        Ok(Self {
            id: id.to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// The public key as base64: what verifiers configure.
    pub fn public_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key.verifying_key().to_bytes())
    }
}

/// A verifier's public key from its base64.
pub fn public_key(b64: &str) -> Result<ed25519_dalek::VerifyingKey, KeyError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| KeyError::Public)?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Public)?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_seed_b64(
            "k1",
            &base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        )
        .unwrap()
    }

    #[test]
    fn digests_verify_with_the_public_key_only() {
        let mut chains = Chains::default();
        chains.link(0, 0, &[1; 32], &[1; 32], &[0; 32]);
        chains.link(0, 1, &[2; 32], &[2; 32], &[0; 32]);
        let head = chains.head(0).unwrap();
        let k = key();
        let d = Digest::sign(&head, 42, &k);
        let public = public_key(&k.public_b64()).unwrap();
        assert!(d.verify(&public));
        let mut forged = d.clone();
        forged.seq = 0;
        assert!(!forged.verify(&public));
        let other = SigningKey::from_seed_b64(
            "k2",
            &base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
        )
        .unwrap();
        assert!(!d.verify(&public_key(&other.public_b64()).unwrap()));
    }

    #[test]
    fn the_serde_form_and_a_cloudwatch_message_give_the_same_content() {
        let serde_form = json!({"event_id": "e1", "timestamp": 1_700_000_000_123_456i64,
            "params": {"rows": "12", "q": "\"select 1\"", "n": "\"42\"", "gone": "null"},
            "client": {"ip": null, "user_agent": null}, "message": null, "entities": []});
        let message_form = json!({"event_id": "e1",
            "timestamp": crate::Timestamp::from_micros(1_700_000_000_123_456).to_rfc3339(),
            "params": {"rows": 12, "q": "select 1", "n": "42"}, "client": {}, "entities": []});
        assert_eq!(
            canonical_value(serde_form, Form::Serde, 3, 9),
            canonical_value(message_form, Form::Message, 3, 9)
        );
    }
}
