//! The v2 proof files of `docs/proof-format.md`, made from a real tree over real event contents
//! and checked by `schemas/tests/check_proof.py`, a checker written from that document alone
//! (Python's hashlib and `cryptography`). The good files must pass it and this crate's own
//! verifiers; every copy with one byte changed must fail both.
//!
//! Needs the Python of the moto venv (`dev/stack install`): without it the test fails.

use audit_schemas::chain::checkpoint::{no_previous, Checkpoint, Statement};
use audit_schemas::chain::content::{self, Salt};
use audit_schemas::chain::proof::{ConsistencyProof, InclusionProof, Keys, ProofFile};
use audit_schemas::chain::{leaf, merkle, public_key, SigningKey};
use audit_schemas::event::*;
use audit_schemas::Timestamp;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const PARTITION: i32 = 3;
const EPOCH: &str = "0b7c5a52-3d43-4f3b-a9a4-96c2b1c0e3f7";
const LINKS: u64 = 37;
const SEED: [u8; 32] = [7; 32];

fn python() -> PathBuf {
    let tools = std::env::var("AUDIT_TOOLS_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.local/share/audit-pipeline",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let python = PathBuf::from(format!("{tools}/venv-moto/bin/python"));
    let probe = Command::new(&python)
        .args(["-c", "import cryptography"])
        .output();
    match probe {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import cryptography ({}): run `dev/stack install`",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "no Python at {} ({e}): run `dev/stack install`",
            python.display()
        ),
    }
}

fn key() -> SigningKey {
    SigningKey::from_seed_b64("proof-test-key", &B64.encode(SEED)).unwrap()
}

/// Event `n` of the chain, as the enricher would publish it.
fn event(n: u64) -> EnrichedAuditEvent {
    let raw: RawAuditEvent = serde_json::from_value(json!({
        "event_id": format!("6f1c2d3e-0000-4000-8000-{n:012x}"),
        "timestamp": 1_700_000_000_000_000i64 + n as i64,
        "event_type": "dataset.create",
        "source": "SERVER",
        "service": "catalog",
        "session_id": "s1",
        "user_id": format!("u-{n}"),
        "username": "ada",
        "tenant": null,
        "success": n % 5 != 0,
        "message": format!("created dataset {n} «ü»\n\"quoted\""),
        "entities": [{"type": "dataset", "id": format!("d{n}"), "name": null}],
        "params": {"q": "\"abc\"", "r": "abc"},
        "response": null,
        "error": null,
        "client": {"ip": "10.0.0.9", "user_agent": "curl/8"},
        "ingest": null,
        "utc_offset_minutes": 60
    }))
    .unwrap();
    EnrichedAuditEvent {
        event: raw,
        user: Some(ResolvedUser {
            id: format!("u-{n}"),
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
            received_at: Timestamp::from_micros(1_700_000_000_000_100 + n as i64),
            enriched_at: Timestamp::from_micros(1_700_000_000_000_200 + n as i64),
            raw_partition: PARTITION,
            raw_offset: 1000 + n as i64,
        },
        event_time: EventTimeCheck::Plausible,
        chain: None,
        catalog: None,
    }
}

struct Chain {
    ids: Vec<String>,
    contents: Vec<Vec<u8>>,
    leaves: Vec<merkle::Hash>,
}

fn chain() -> Chain {
    let mut c = Chain {
        ids: vec![],
        contents: vec![],
        leaves: vec![],
    };
    for n in 0..LINKS {
        let e = event(n);
        let salt: Salt = [n as u8 ^ 0x5a; 32];
        let bytes = content::content(&e, &salt);
        c.leaves.push(leaf::link_leaf(
            PARTITION,
            EPOCH,
            n as i64,
            &content::content_digest(&bytes),
        ));
        c.ids.push(e.event.event_id.to_string());
        c.contents.push(bytes);
    }
    c
}

fn checkpoint(leaves: &[merkle::Hash], size: u64, prev: String, key: &SigningKey) -> Checkpoint {
    Checkpoint::sign(
        Statement {
            raw_partition: PARTITION,
            epoch: EPOCH.into(),
            tree_size: size,
            root: hex::encode(merkle::root(&leaves[..size as usize])),
            raw_offset_start: 1000,
            raw_offset_end: 1000 + size as i64 + 2,
            prev,
            signed_at: 1_700_000_060_000_000 + size as i64,
        },
        key,
    )
}

fn inclusion_file(c: &Chain, seq: u64, cp: &Checkpoint) -> Value {
    let p = InclusionProof::build(
        &c.ids[seq as usize],
        &c.contents[seq as usize],
        seq,
        &c.leaves,
        cp.clone(),
    );
    serde_json::to_value(p).unwrap()
}

fn consistency_file(c: &Chain, old: &Checkpoint, new: &Checkpoint) -> Value {
    serde_json::to_value(ConsistencyProof::build(&c.leaves, old.clone(), new.clone())).unwrap()
}

/// This crate's verdict (`audit_schemas::chain::proof`, what `auditctl check-proof` runs).
fn rust_accepts(kind: &str, f: &Value, public: &str) -> bool {
    let Ok(key) = public_key(public) else {
        return false;
    };
    let keys: Keys = [("proof-test-key".to_string(), key)].into();
    match ProofFile::parse(&serde_json::to_vec(f).unwrap()) {
        Ok(file @ ProofFile::Inclusion(_)) if kind == "inclusion" => file.check(&keys).is_ok(),
        Ok(file @ ProofFile::Consistency(_)) if kind == "consistency" => file.check(&keys).is_ok(),
        _ => false,
    }
}

struct Checker {
    python: PathBuf,
    dir: tempfile::TempDir,
    public: String,
    files: usize,
}

impl Checker {
    /// Writes `file` and runs the Python checker on it: `Ok(stdout)` when it accepts,
    /// `Err(stdout)` when it rejects (exit 1 with `invalid: ...`); panics on anything else.
    fn run(&mut self, kind: &str, file: &Value) -> Result<String, String> {
        self.files += 1;
        let path = self.dir.path().join(format!("{kind}-{}.json", self.files));
        std::fs::write(&path, serde_json::to_vec_pretty(file).unwrap()).unwrap();
        self.run_path(kind, &path)
    }

    fn run_path(&self, kind: &str, path: &Path) -> Result<String, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/check_proof.py");
        let out = Command::new(&self.python)
            .arg(script)
            .arg(kind)
            .arg(path)
            .arg(&self.public)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.trim().is_empty(),
            "the checker wrote to stderr on {}:\n{stderr}",
            path.display()
        );
        match out.status.code() {
            Some(0) if stdout.starts_with(&format!("ok {kind} ")) => Ok(stdout),
            Some(1) if stdout.starts_with("invalid: ") => Err(stdout),
            other => panic!(
                "the checker exited {other:?} on {}: {stdout}",
                path.display()
            ),
        }
    }

    fn accepts(&mut self, kind: &str, file: &Value) {
        let rust = rust_accepts(kind, file, &self.public);
        match self.run(kind, file) {
            Ok(_) => assert!(rust, "Python accepts but Rust rejects:\n{file:#}"),
            Err(why) => panic!("the checker rejects a good {kind} proof: {why}\n{file:#}"),
        }
    }

    /// The checker and this crate both reject `file`, the checker saying `reason`.
    fn rejects(&mut self, kind: &str, what: &str, file: &Value, reason: &str) {
        let rust = rust_accepts(kind, file, &self.public);
        assert!(!rust, "Rust accepts {kind} proof with {what}");
        match self.run(kind, file) {
            Ok(out) => panic!("the checker accepts {kind} proof with {what}: {out}"),
            Err(why) => assert!(
                why.contains(reason),
                "{kind} proof with {what}: expected a reason with {reason:?}, got {why:?}"
            ),
        }
    }
}

/// Changes one byte of a hex value: its first digit.
fn bump_hex(s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    b[0] = if b[0] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}

/// Changes one byte of a base64 value's decoded bytes at `at`.
fn bump_b64(s: &str, at: usize) -> String {
    let mut b = B64.decode(s).unwrap();
    b[at] ^= 0x01;
    B64.encode(b)
}

fn edit(v: &Value, f: impl FnOnce(&mut Value)) -> Value {
    let mut v = v.clone();
    f(&mut v);
    v
}

fn resign(v: &Value, key: &SigningKey, f: impl FnOnce(&mut Checkpoint)) -> Value {
    let mut cp: Checkpoint = serde_json::from_value(v.clone()).unwrap();
    f(&mut cp);
    let cp = Checkpoint::sign(
        Statement {
            raw_partition: cp.raw_partition,
            epoch: cp.epoch,
            tree_size: cp.tree_size,
            root: cp.root,
            raw_offset_start: cp.raw_offset_start,
            raw_offset_end: cp.raw_offset_end,
            prev: cp.prev,
            signed_at: cp.signed_at,
        },
        key,
    );
    serde_json::to_value(cp).unwrap()
}

#[test]
fn the_python_checker_accepts_real_proofs_and_rejects_any_changed_byte() {
    let key = key();
    let mut checker = Checker {
        python: python(),
        dir: tempfile::tempdir().unwrap(),
        public: key.public_b64(),
        files: 0,
    };
    let c = chain();
    let first = checkpoint(&c.leaves, 13, no_previous(), &key);
    let power = checkpoint(&c.leaves, 16, first.id(), &key);
    let last = checkpoint(&c.leaves, LINKS, power.id(), &key);

    // Good proofs: both verdicts agree for every leaf of the newest checkpoint, and some of an
    // older one.
    for seq in 0..LINKS {
        checker.accepts("inclusion", &inclusion_file(&c, seq, &last));
    }
    for seq in [0, 5, 12] {
        checker.accepts("inclusion", &inclusion_file(&c, seq, &first));
    }
    for (old, new) in [
        (&first, &power),
        (&first, &last),
        (&power, &last),
        (&last, &last),
    ] {
        checker.accepts("consistency", &consistency_file(&c, old, new));
    }
    let one = checkpoint(&c.leaves, 1, no_previous(), &key);
    checker.accepts("consistency", &consistency_file(&c, &one, &last));
    let out = checker
        .run("consistency", &consistency_file(&c, &power, &last))
        .unwrap();
    assert!(out.ends_with(" adjacent"), "{out}");

    // Inclusion: one changed byte anywhere that matters.
    let good = inclusion_file(&c, 21, &last);
    let content_at = c.contents[21]
        .windows(7)
        .position(|w| w == b"catalog")
        .unwrap();
    let mut cases: Vec<(&str, Value, &str)> = vec![
        (
            "a changed content byte",
            edit(&good, |v| {
                v["content_b64"] = json!(bump_b64(v["content_b64"].as_str().unwrap(), content_at))
            }),
            "audit path",
        ),
        (
            "a changed audit-path hash",
            edit(&good, |v| {
                v["audit_path"][2] = json!(bump_hex(v["audit_path"][2].as_str().unwrap()))
            }),
            "audit path",
        ),
        (
            "a changed root",
            edit(&good, |v| {
                v["checkpoint"]["root"] = json!(bump_hex(v["checkpoint"]["root"].as_str().unwrap()))
            }),
            "signature",
        ),
        (
            "another root, signed",
            edit(&good, |v| {
                v["checkpoint"] = resign(&v["checkpoint"], &key, |cp| cp.root = bump_hex(&cp.root))
            }),
            "audit path",
        ),
        (
            "a changed signature byte",
            edit(&good, |v| {
                v["checkpoint"]["signature"] =
                    json!(bump_b64(v["checkpoint"]["signature"].as_str().unwrap(), 9))
            }),
            "signature",
        ),
        (
            "a changed tree_size",
            edit(&good, |v| v["tree_size"] = json!(LINKS + 1)),
            "differs",
        ),
        (
            "a changed checkpoint tree_size",
            edit(&good, |v| v["checkpoint"]["tree_size"] = json!(LINKS - 1)),
            "signature",
        ),
        (
            "a changed seq",
            edit(&good, |v| v["seq"] = json!(22)),
            "audit path",
        ),
        (
            "a changed raw_partition",
            edit(&good, |v| v["raw_partition"] = json!(PARTITION + 1)),
            "differs",
        ),
        (
            "another event_id",
            edit(&good, |v| v["event_id"] = json!(c.ids[22])),
            "event_id",
        ),
        (
            "a signature by another key",
            edit(&good, |v| {
                let other =
                    SigningKey::from_seed_b64("proof-test-key", &B64.encode([8u8; 32])).unwrap();
                v["checkpoint"] = resign(&v["checkpoint"], &other, |_| ())
            }),
            "signature",
        ),
        (
            "an upper-case root",
            edit(&good, |v| {
                let upper = v["checkpoint"]["root"].as_str().unwrap().to_uppercase();
                v["checkpoint"] = resign(&v["checkpoint"], &key, |cp| cp.root = upper)
            }),
            "hex",
        ),
        (
            "a seq past the tree",
            edit(&good, |v| v["seq"] = json!(LINKS)),
            "not in the tree",
        ),
    ];
    // Deleting the last path element proves nothing either.
    cases.push((
        "a shortened audit path",
        edit(&good, |v| {
            v["audit_path"].as_array_mut().unwrap().pop();
        }),
        "audit path",
    ));
    for (what, file, reason) in &cases {
        checker.rejects("inclusion", what, file, reason);
    }

    // Consistency: the same for the proof and both checkpoints.
    let good = consistency_file(&c, &first, &last);
    let other_epoch = resign(&serde_json::to_value(&last).unwrap(), &key, |cp| {
        cp.epoch = "0b7c5a52-3d43-4f3b-a9a4-96c2b1c0e3f8".into()
    });
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "a changed proof hash",
            edit(&good, |v| {
                v["proof"][1] = json!(bump_hex(v["proof"][1].as_str().unwrap()))
            }),
            "does not show",
        ),
        (
            "a changed old root",
            edit(&good, |v| {
                v["old"]["root"] = json!(bump_hex(v["old"]["root"].as_str().unwrap()))
            }),
            "signature",
        ),
        (
            "another old root, signed",
            edit(&good, |v| {
                v["old"] = resign(&v["old"], &key, |cp| cp.root = bump_hex(&cp.root))
            }),
            "does not show",
        ),
        (
            "another new root, signed",
            edit(&good, |v| {
                v["new"] = resign(&v["new"], &key, |cp| cp.root = bump_hex(&cp.root))
            }),
            "does not show",
        ),
        (
            "a changed new signature byte",
            edit(&good, |v| {
                v["new"]["signature"] = json!(bump_b64(v["new"]["signature"].as_str().unwrap(), 40))
            }),
            "signature",
        ),
        (
            "a changed old tree_size",
            edit(&good, |v| v["old"]["tree_size"] = json!(14)),
            "signature",
        ),
        (
            "another old tree_size, signed",
            edit(&good, |v| {
                v["old"] = resign(&v["old"], &key, |cp| cp.tree_size = 14)
            }),
            "does not show",
        ),
        (
            "a checkpoint of another epoch",
            edit(&good, |v| v["new"] = other_epoch.clone()),
            "different epoch",
        ),
        (
            "old and new swapped",
            edit(&good, |v| {
                let old = v["old"].take();
                v["old"] = v["new"].take();
                v["new"] = old;
            }),
            "larger",
        ),
        (
            "no proof",
            edit(&good, |v| v["proof"] = json!([])),
            "does not show",
        ),
    ];
    for (what, file, reason) in &cases {
        checker.rejects("consistency", what, file, reason);
    }

    // Not JSON the document allows.
    let path = checker.dir.path().join("duplicate.json");
    let text = serde_json::to_string(&inclusion_file(&c, 3, &last)).unwrap();
    let dup = text.replacen("{", r#"{"seq":4,"#, 1);
    std::fs::write(&path, dup).unwrap();
    let why = checker.run_path("inclusion", &path).unwrap_err();
    assert!(why.contains("twice"), "{why}");
}

/// The test vectors of `docs/proof-format.md` §7 are what this crate computes.
#[test]
fn the_documented_test_vectors_hold() {
    assert_eq!(
        content::commitment(&[5; 32], "ada"),
        "sha256:335c95cc2ee9547cc278c06fcce6f4392ab3d7964de174d37d0951ef839cb2a9"
    );
    let d = content::content_digest(b"x");
    assert_eq!(
        hex::encode(leaf::leaf_data(2, "e", 1, &d)),
        "61756469742d6c6561662d76320a00000002650a0000000000000001\
         2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    );
    assert_eq!(
        hex::encode(leaf::link_leaf(2, "e", 1, &d)),
        "8014308e6a90ae331544337a12199d66ee783c8444c96849f0f7fd95fbf629d2"
    );
    let key = SigningKey::from_seed_b64("k1", &B64.encode([7u8; 32])).unwrap();
    assert_eq!(
        key.public_b64(),
        "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="
    );
    let cp = Checkpoint::sign(
        Statement {
            raw_partition: 2,
            epoch: "5e0c4c1e-58c1-4f0e-9d0a-6a3f0b8f4a11".into(),
            tree_size: 3,
            root: "ab".repeat(32),
            raw_offset_start: 10,
            raw_offset_end: 14,
            prev: no_previous(),
            signed_at: 1_700_000_000_000_000,
        },
        &key,
    );
    assert_eq!(
        cp.id(),
        "e756b4456af9213ca9164dcbac2bbca1b156493998f4ba43e7859141040b1261"
    );
    assert_eq!(
        cp.signature,
        "y1DC8a1u6cPwP+VJUiSJqew6wFwM7yVau3+ToFir/wvkWfrQmhcIuAPny/wHzQjNzT0ET04A1qf3ssWHRTTIDQ=="
    );
}
