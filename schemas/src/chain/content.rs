//! What a link commits to: the enriched event's canonical content, byte-exact.
//!
//! The content is the enriched event's serde JSON (everything a sink stores: the raw event as
//! redacted, the resolved user, groups, session, enrichment state, catalog match, pipeline
//! times and raw position), without its `chain` field, keys sorted, no whitespace. It is
//! computed once from the typed event, so one event has exactly one content; nothing is parsed
//! or normalised (a param's text `abc` and `"abc"` are different bytes).
//!
//! Personal data is committed, not included: every value at an [`ERASABLE`] path is replaced by
//! `sha256:<hex of SHA-256("audit-erasable-v2\n" ‖ salt ‖ value)>`, with a random 32-byte salt
//! per event kept beside the cleartext (the ClickHouse row's `chain_salt`). Erasing a person's
//! data deletes the cleartext and the salt; the commitment stays, so every proof still holds, and
//! without the salt the value cannot be recovered by guessing.

mod canonical;

use crate::event::EnrichedAuditEvent;
use sha2::{Digest as _, Sha256};

/// A per-event random salt for the commitments of its personal data.
pub type Salt = [u8; 32];

/// The paths (in the enriched event's serde form) whose values are personal data, committed
/// through salted digests so that they can be erased without breaking a proof.
pub const ERASABLE: &[&[&str]] = &[
    &["event", "user_id"],
    &["event", "username"],
    &["event", "client", "ip"],
    &["event", "client", "user_agent"],
    &["event", "ingest", "peer_ip"],
    &["user", "id"],
    &["user", "login"],
    &["user", "name"],
    &["session", "ip"],
];

/// The prefix of a commitment in the content.
pub const COMMITMENT_PREFIX: &str = "sha256:";

/// The commitment to one personal value: `sha256:` and the hex of
/// `SHA-256("audit-erasable-v2\n" ‖ salt ‖ UTF-8 value)`.
pub fn commitment(salt: &Salt, value: &str) -> String {
    // The prefix and hex digits are ASCII.
    String::from_utf8_lossy(&canonical::commitment_text(salt, value)).into_owned()
}

/// Whether `value` is the value `committed` (a [`commitment`]) was made from.
pub fn opens(committed: &str, salt: &Salt, value: &str) -> bool {
    commitment(salt, value) == committed
}

/// A fresh random salt, from the thread's CSPRNG (ChaCha, seeded and reseeded from the OS):
/// unguessable as an OS read is, without a system call per event.
pub fn new_salt() -> Salt {
    use rand::RngCore as _;
    let mut salt = [0u8; 32];
    rand::rng().fill_bytes(&mut salt);
    salt
}

/// The canonical content of `event` with its personal values committed under `salt`: the
/// event's `serde_json::Value` without `chain`, each [`ERASABLE`] string replaced by its
/// [`commitment`], written with keys sorted and no whitespace ([`canonical`] writes these bytes
/// in one pass).
pub fn content(event: &EnrichedAuditEvent, salt: &Salt) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    canonical::write(event, salt, &mut out);
    out
}

/// SHA-256 of a content.
pub fn content_digest(content: &[u8]) -> [u8; 32] {
    Sha256::digest(content).into()
}

/// The event a content holds, its personal values still commitments: what a verifier derives
/// the stored columns from.
pub fn parse(content: &[u8]) -> Result<EnrichedAuditEvent, serde_json::Error> {
    serde_json::from_slice(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
    use crate::Timestamp;

    fn example() -> EnrichedAuditEvent {
        let raw: RawAuditEvent = serde_json::from_value(serde_json::json!({
            "event_id": "6f1c2d3e-0000-4000-8000-000000000001",
            "timestamp": 1_700_000_000_000_000i64,
            "event_type": "dataset.create",
            "source": "SERVER",
            "service": "catalog",
            "session_id": "s1",
            "user_id": "u-7",
            "username": "ada",
            "tenant": null,
            "success": true,
            "message": "created",
            "entities": [],
            "params": {"q": "\"abc\"", "r": "abc"},
            "response": null,
            "error": null,
            "client": {"ip": "10.0.0.9", "user_agent": null},
            "ingest": null,
            "utc_offset_minutes": null
        }))
        .unwrap();
        EnrichedAuditEvent {
            event: raw,
            user: Some(ResolvedUser {
                id: "u-7".into(),
                login: "ada".into(),
                name: Some("Ada L".into()),
            }),
            groups: vec![GroupRef {
                id: "g1".into(),
                name: "admins".into(),
            }],
            session: None,
            enrichment: Enrichment::Enriched,
            claimed_user_mismatch: false,
            pipeline: PipelineMeta {
                received_at: Timestamp::from_micros(1),
                enriched_at: Timestamp::from_micros(2),
                raw_partition: 3,
                raw_offset: 9,
            },
            event_time: EventTimeCheck::Plausible,
            chain: None,
            catalog: None,
        }
    }

    /// The bytes of one content, fixed: a change to how content is written breaks every
    /// stored proof, so it must be deliberate (and a new version).
    #[test]
    fn the_content_of_an_example_is_fixed_to_the_byte() {
        let c = content(&example(), &[7u8; 32]);
        assert_eq!(
            hex::encode(content_digest(&c)),
            GOLDEN,
            "{}",
            String::from_utf8_lossy(&c)
        );
    }

    const GOLDEN: &str = "a85f93977d4d2ba41abda44d3e8395ed8cdb45d8fcc0c9eca5721c4b8492b493";

    #[test]
    fn personal_values_are_committed_and_everything_else_is_kept_byte_exact() {
        let e = example();
        let salt = [5u8; 32];
        let c = content(&e, &salt);
        let text = std::str::from_utf8(&c).unwrap();
        for secret in ["u-7", "ada", "Ada L", "10.0.0.9"] {
            assert!(
                !text.contains(&format!("\"{secret}\"")),
                "{secret} in {text}"
            );
        }
        assert!(text.contains(r#""q":"\"abc\"""#) && text.contains(r#""r":"abc""#));
        assert!(text.contains(r#""groups":[{"id":"g1","name":"admins"}]"#));
        let back = parse(&c).unwrap();
        assert!(opens(
            back.user.as_ref().unwrap().login.as_str(),
            &salt,
            "ada"
        ));
        assert!(!opens(&back.user.unwrap().login, &salt, "eve"));
        assert_eq!(back.groups, e.groups);
        // The same event gives the same bytes; any change gives others.
        assert_eq!(content(&e, &salt), c);
        let mut moved = e.clone();
        moved.pipeline.raw_partition = 4;
        assert_ne!(content(&moved, &salt), c);
        let mut regrouped = e.clone();
        regrouped.groups.clear();
        assert_ne!(content(&regrouped, &salt), c);
        assert_ne!(content(&e, &[6u8; 32]), c);
    }

    #[test]
    fn the_link_itself_is_not_part_of_the_content() {
        let mut e = example();
        let salt = [1u8; 32];
        let before = content(&e, &salt);
        e.chain = Some(crate::chain::ChainLink {
            epoch: "x".into(),
            seq: 1,
            prev: "p".into(),
            hash: "h".into(),
            salt: Some(hex::encode(salt)),
        });
        assert_eq!(content(&e, &salt), before);
    }

    /// The definition the one-pass writer must match: the `Value`, `chain` removed, erasable
    /// strings committed, written with keys sorted.
    fn value_form(event: &EnrichedAuditEvent, salt: &Salt) -> Vec<u8> {
        use serde_json::Value;
        let mut value = serde_json::to_value(event).unwrap_or(Value::Null);
        if let Value::Object(top) = &mut value {
            top.remove("chain");
        }
        for path in ERASABLE {
            let at = path.iter().try_fold(&mut value, |v, k| v.get_mut(*k));
            if let Some(Value::String(s)) = at {
                *s = commitment(salt, s);
            }
        }
        let mut out = Vec::new();
        crate::chain::write_sorted(&value, &mut out).unwrap();
        out
    }

    #[test]
    fn the_example_is_the_same_in_both_forms() {
        let salt = [7u8; 32];
        assert_eq!(content(&example(), &salt), value_form(&example(), &salt));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn same_bytes_as_the_value_form(e in crate::codec::tests::arb_enriched(), salt in proptest::prelude::any::<[u8; 32]>()) {
            proptest::prop_assert_eq!(content(&e, &salt), value_form(&e, &salt));
        }
    }
}
