//! `auditctl prove` and `check-proof` on the real stack (issue #26): a proof made from what the
//! pipeline stored is accepted by `schemas/tests/check_proof.py`, a checker written from
//! `docs/proof-format.md` alone, and by `check-proof`; one changed byte makes both refuse, and
//! `prove` itself refuses to make a proof from a chain whose stored links were changed.

use anyhow::{Context, Result};
use audit_tests::pipeline::{chain_public_key, Pipeline, Stage};
use audit_tests::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Python of the moto venv (`dev/stack install` gives it `cryptography`).
fn python() -> PathBuf {
    let tools = std::env::var("AUDIT_TOOLS_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.local/share/audit-pipeline",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    PathBuf::from(format!("{tools}/venv-moto/bin/python"))
}

/// The independent checker's verdict: `Ok(stdout)` or `Err(stdout)` (it exits 1 with
/// `invalid: ...`); anything else fails the test.
fn independent(kind: &str, file: &Path) -> Result<String, String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/tests/check_proof.py"
    );
    let out = Command::new(python())
        .args([script, kind])
        .arg(file)
        .arg(chain_public_key())
        .output()
        .expect("run the Python checker (dev/stack install)");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(stdout),
        Some(1) => Err(stdout),
        other => panic!(
            "the checker exited {other:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

struct Ctl<'a> {
    p: &'a Pipeline,
    key: String,
}

impl Ctl<'_> {
    fn run(&self, args: &[&str]) -> Result<(bool, String)> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--public-key", &self.key]);
        let out = self.p.auditctl(
            &all,
            &[
                ("AUDIT__CLICKHOUSE__URL", &clickhouse_url()),
                ("AUDIT__CLICKHOUSE__DATABASE", &self.p.database),
            ],
        )?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

fn write(dir: &Path, name: &str, v: &Value) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(v)?)?;
    Ok(path)
}

fn read(path: &Path) -> Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proof_from_the_stored_trail_is_checked_independently_and_fails_for_a_changed_byte(
) -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let events: Vec<_> = (0..40)
        .map(|i| {
            json!({"event_type": "log", "source": "SERVER", "user_id": format!("u{}", i % 3),
                   "message": format!("proof {i} «ü» \"quoted\"")})
        })
        .collect();
    p.post(&events[..25]).await?;
    p.wait_for_rows(25, Duration::from_secs(60)).await;
    p.wait_signed(25, Duration::from_secs(60)).await?;
    // Two intervals: a checkpoint over the first batch, kept as OLD below.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ch = p.clickhouse();
    let old_id: String = ch
        .query(
            "SELECT lower(hex(SHA256(concat('audit-checkpoint-v2\\nraw_partition=', toString(raw_partition),
                '\\nepoch=', epoch, '\\ntree_size=', toString(tree_size), '\\nroot=', root,
                '\\nraw_offset_start=', toString(raw_offset_start), '\\nraw_offset_end=', toString(raw_offset_end),
                '\\nprev=', prev, '\\nsigned_at=', toString(toUnixTimestamp64Micro(signed_at)),
                '\\nkey_id=', key_id, '\\n'))))
             FROM chain_checkpoints WHERE tree_size > 3 ORDER BY tree_size DESC, signed_at LIMIT 1",
        )
        .fetch_one()
        .await
        .context("a checkpoint over the first batch")?;
    p.post(&events[25..]).await?;
    p.wait_for_rows(40, Duration::from_secs(60)).await;
    p.wait_signed(40, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let ctl = Ctl {
        p: &p,
        key: format!("e2e={}", chain_public_key()),
    };
    let dir = tempfile::tempdir()?;
    // An event in the middle of a chain of the first batch.
    let (event_id, seq): (String, i64) = ch
        .query(
            "SELECT toString(event_id), chain_seq FROM events
             WHERE event_type = 'log' AND chain_seq > 2 ORDER BY chain_seq LIMIT 1",
        )
        .fetch_one()
        .await?;

    // Inclusion: auditctl writes it, both checkers accept it.
    let proof = dir.path().join("inclusion.json");
    let (ok, out) = ctl.run(&["prove", &event_id, "--out", proof.to_str().unwrap()])?;
    assert!(ok, "auditctl prove: {out}");
    let file = read(&proof)?;
    assert_eq!(file["event_id"], json!(event_id));
    assert_eq!(file["seq"], json!(seq));
    let said = independent("inclusion", &proof).map_err(anyhow::Error::msg)?;
    assert!(said.starts_with("ok inclusion"), "{said}");
    let (ok, out) = ctl.run(&["check-proof", proof.to_str().unwrap()])?;
    assert!(ok && out.contains("ok inclusion"), "check-proof: {out}");

    // One changed byte of the content (inside the message text): both refuse.
    let mut content = B64.decode(file["content_b64"].as_str().unwrap())?;
    let at = content
        .windows(5)
        .position(|w| w == b"proof")
        .context("the message in the content")?;
    content[at] ^= 0x01;
    let mut changed = file.clone();
    changed["content_b64"] = json!(B64.encode(&content));
    let bad = write(dir.path(), "changed-content.json", &changed)?;
    let why = independent("inclusion", &bad).expect_err("the checker accepts a changed content");
    assert!(why.contains("audit path"), "{why}");
    let (ok, out) = ctl.run(&["check-proof", bad.to_str().unwrap()])?;
    assert!(!ok && out.contains("audit path"), "check-proof: {out}");
    // ... of the signed root, and of an audit-path hash.
    let mut changed = file.clone();
    let root = changed["checkpoint"]["root"].as_str().unwrap().to_string();
    changed["checkpoint"]["root"] = json!(format!(
        "{}{}",
        if root.starts_with('0') { "1" } else { "0" },
        &root[1..]
    ));
    let bad = write(dir.path(), "changed-root.json", &changed)?;
    assert!(independent("inclusion", &bad).is_err());
    let (ok, out) = ctl.run(&["check-proof", bad.to_str().unwrap()])?;
    assert!(!ok && out.contains("signature"), "check-proof: {out}");
    let mut changed = file.clone();
    let first = changed["audit_path"][0].as_str().unwrap().to_string();
    changed["audit_path"][0] = json!(format!(
        "{}{}",
        if first.starts_with('0') { "1" } else { "0" },
        &first[1..]
    ));
    let bad = write(dir.path(), "changed-path.json", &changed)?;
    assert!(independent("inclusion", &bad).is_err());
    assert!(!ctl.run(&["check-proof", bad.to_str().unwrap()])?.0);
    // Another key: the proof shows nothing to whoever trusts only that key.
    let other = audit_schemas::chain::SigningKey::from_seed_b64("e2e", &B64.encode([9u8; 32]))?;
    let out = p.auditctl(
        &[
            "check-proof",
            proof.to_str().unwrap(),
            "--public-key",
            &format!("e2e={}", other.public_b64()),
        ],
        &[],
    )?;
    assert!(
        !out.status.success(),
        "a proof checks with a key that did not sign it"
    );

    // Consistency: OLD (over the first batch) to the newest checkpoint of its chain.
    let cons = dir.path().join("consistency.json");
    let (ok, out) = ctl.run(&[
        "prove",
        "--consistency",
        &old_id,
        "latest",
        "--out",
        cons.to_str().unwrap(),
    ])?;
    assert!(ok, "auditctl prove --consistency: {out}");
    let file = read(&cons)?;
    assert!(
        file["new"]["tree_size"].as_u64() > file["old"]["tree_size"].as_u64(),
        "the second batch grew the chain: {file:#}"
    );
    let said = independent("consistency", &cons).map_err(anyhow::Error::msg)?;
    assert!(said.starts_with("ok consistency"), "{said}");
    let (ok, out) = ctl.run(&["check-proof", cons.to_str().unwrap()])?;
    assert!(ok && out.contains("ok consistency"), "check-proof: {out}");
    // The inclusion proof names a checkpoint too: it works as OLD or NEW.
    let (ok, out) = ctl.run(&["prove", "--consistency", proof.to_str().unwrap(), "latest"])?;
    assert!(ok, "prove --consistency from a proof file: {out}");
    let mut changed = file.clone();
    let h = changed["proof"][0].as_str().unwrap().to_string();
    changed["proof"][0] = json!(format!(
        "{}{}",
        if h.starts_with('0') { "1" } else { "0" },
        &h[1..]
    ));
    let bad = write(dir.path(), "changed-consistency.json", &changed)?;
    assert!(independent("consistency", &bad).is_err());
    let (ok, out) = ctl.run(&["check-proof", bad.to_str().unwrap()])?;
    assert!(!ok && out.contains("extends"), "check-proof: {out}");

    // A stored link changed in ClickHouse: prove makes no proof from that chain.
    ch.query(
        "ALTER TABLE events UPDATE chain_content = replaceOne(chain_content, 'proof', 'prooF')
         WHERE toString(event_id) = ? SETTINGS mutations_sync = 2",
    )
    .bind(&event_id)
    .execute()
    .await?;
    let (ok, out) = ctl.run(&["prove", &event_id])?;
    assert!(!ok, "prove made a proof from an altered link: {out}");
    assert!(out.contains("auditctl verify"), "{out}");
    Ok(())
}
