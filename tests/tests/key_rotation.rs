//! Key rotation on the real stack (issue #26): `audit-enricher rotate-key` publishes a record
//! in which the retiring key hands over to the new one; `verify`, told only the first key,
//! proves the old checkpoints with the old key and the new ones through the record. A
//! checkpoint the old key signs after the rotation (a stolen key) and a planted rotation record
//! are named.

use anyhow::Result;
use audit_schemas::chain::checkpoint::{Checkpoint, Statement};
use audit_schemas::chain::SigningKey;
use audit_schemas::Timestamp;
use audit_tests::pipeline::{binary, Pipeline, Stage, CHAIN_SEED};
use audit_tests::*;
use base64::Engine;
use serde_json::json;
use std::time::Duration;

fn batch(n: usize) -> Vec<serde_json::Value> {
    (0..10)
        .map(|i| {
            json!({"event_type": "log", "source": "SERVER", "user_id": format!("u{i}"),
                   "message": format!("b{n} m{i}")})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_follows_a_signed_rotation_and_names_what_the_retired_key_signs_after_it(
) -> Result<()> {
    let mut p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let mut enricher = p.start(Stage::Enricher).await?;
    let from = Timestamp::now().to_rfc3339();
    p.post(&batch(1)).await?;
    p.wait_for_rows(10, Duration::from_secs(60)).await;
    p.wait_signed(10, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    enricher.stop()?;

    // The hand-over: the new key configured, the old one given by file.
    let new_seed = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let old_file = std::env::temp_dir().join(unique("old-chain-key"));
    std::fs::write(&old_file, CHAIN_SEED)?;
    let out = std::process::Command::new(binary(Stage::Enricher.binary())?)
        .args([
            "rotate-key",
            "--previous-key-id",
            "e2e",
            "--previous-key-file",
        ])
        .arg(&old_file)
        .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .envs(topics_env(&p.topics))
        .env("AUDIT__CHAIN__SIGNING_KEY", &new_seed)
        .env("AUDIT__CHAIN__KEY_ID", "e2e-2")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&old_file)?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("\"new_key_id\":\"e2e-2\"") && !printed.contains(&new_seed),
        "the record is printed, no secret in it: {printed}"
    );
    let rotated_us = Timestamp::now().as_micros();

    p.extra_env = vec![
        ("AUDIT__CHAIN__SIGNING_KEY".into(), new_seed.clone()),
        ("AUDIT__CHAIN__KEY_ID".into(), "e2e-2".into()),
    ];
    let _enricher = p.start(Stage::Enricher).await?;
    p.post(&batch(2)).await?;
    p.wait_for_rows(20, Duration::from_secs(60)).await;
    p.wait_signed(20, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ch = p.clickhouse();
    let by_new: u64 = ch
        .query("SELECT count() FROM chain_checkpoints WHERE key_id = 'e2e-2'")
        .fetch_one()
        .await?;
    assert!(by_new > 0, "the new enricher signs with the new key");

    let to = Timestamp::now().to_rfc3339();
    let (ok, out) = p.verify_with(&from, &to, false, &["--grace-seconds", "2"])?;
    assert!(
        ok,
        "told only the old key, verify follows the rotation:\n{out}"
    );
    assert!(
        out.contains("1 configured, 1 trusted through signed rotations, 1 retired"),
        "{out}"
    );

    // A stolen old key signs a checkpoint after the rotation.
    let old = SigningKey::from_seed_b64("e2e", CHAIN_SEED)?;
    let forged = Checkpoint::sign(
        Statement {
            raw_partition: 0,
            epoch: "stolen".into(),
            tree_size: 0,
            root: audit_schemas::chain::chains::empty_root(),
            raw_offset_start: -1,
            raw_offset_end: -1,
            prev: audit_schemas::chain::checkpoint::no_previous(),
            signed_at: rotated_us + 1_000_000,
        },
        &old,
    );
    ch.query(
        "INSERT INTO chain_checkpoints (raw_partition, epoch, tree_size, root, raw_offset_start,
         raw_offset_end, prev, signed_at, key_id, signature, event_id)
         VALUES (?, ?, ?, ?, ?, ?, ?, fromUnixTimestamp64Micro(?), ?, ?, generateUUIDv4())",
    )
    .bind(forged.raw_partition)
    .bind(&forged.epoch)
    .bind(forged.tree_size)
    .bind(&forged.root)
    .bind(forged.raw_offset_start)
    .bind(forged.raw_offset_end)
    .bind(&forged.prev)
    .bind(forged.signed_at)
    .bind(&forged.key_id)
    .bind(&forged.signature)
    .execute()
    .await?;
    let (ok, out) = p.verify_with(&from, &to, false, &["--grace-seconds", "2"])?;
    assert!(
        !ok && out.contains("RETIRED  checkpoint of raw partition 0, chain stolen"),
        "{out}"
    );
    ch.query(
        "ALTER TABLE chain_checkpoints DELETE WHERE epoch = 'stolen' SETTINGS mutations_sync = 2",
    )
    .execute()
    .await?;

    // A planted rotation record: someone's own key claiming to succeed the trusted one.
    let mallory = SigningKey::from_seed_b64(
        "e2e",
        &base64::engine::general_purpose::STANDARD.encode([66u8; 32]),
    )?;
    let planted = audit_schemas::chain::rotation::KeyRotation::sign(
        &mallory,
        &SigningKey::from_seed_b64(
            "mallory",
            &base64::engine::general_purpose::STANDARD.encode([67u8; 32]),
        )?,
        rotated_us,
    );
    let params: Vec<(String, String)> = planted.to_params().into_iter().collect();
    ch.query(
        "INSERT INTO events (event_id, event_type, params, raw_partition, chain_seq)
         VALUES (generateUUIDv4(), 'audit.key-rotation', CAST(? AS Map(String, String)), -1, -1)",
    )
    .bind(params)
    .execute()
    .await?;
    let (ok, out) = p.verify_with(&from, &to, false, &["--grace-seconds", "2"])?;
    assert!(
        !ok && out.contains("FORGED   key rotation from \"e2e\" to \"mallory\""),
        "{out}"
    );
    Ok(())
}
