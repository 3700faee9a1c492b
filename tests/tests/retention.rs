//! Retention on the real stack (issue #26): ClickHouse's own TTL, on the columns the sink sets
//! it on (`migrations::RETAINED`), removes the links enriched before a moment; `verify` given
//! the retention counts them EXPIRED and proves the rest from the frontier stored with the
//! next checkpoint, while a deletion above the horizon and a changed frontier stay findings.
//! The TTL here is in seconds (the sink's is in days) so that the test sees it act.

use anyhow::Result;
use audit_schemas::Timestamp;
use audit_sink_clickhouse::migrations::RETAINED;
use audit_tests::pipeline::{Pipeline, Stage};
use audit_tests::*;
use serde_json::json;
use std::time::Duration;

fn events(batch: &str, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            json!({"event_type": "log", "source": "SERVER", "user_id": format!("u{}", i % 4),
                   "entities": [{"type": "dashboard", "id": format!("d{i}")}],
                   "message": format!("{batch} {i}")})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_links_are_not_findings_and_everything_after_them_is_still_proven() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let from = Timestamp::now().to_rfc3339();
    p.post(&events("old", 20)).await?;
    p.wait_for_rows(20, Duration::from_secs(60)).await;
    p.wait_signed(20, Duration::from_secs(60)).await?;
    // Each chain's size after the old batch: where the walk resumes once it expired.
    let sizes: Vec<(i32, String, u64)> = p
        .clickhouse()
        .query(
            "SELECT raw_partition, chain_epoch, toUInt64(max(chain_seq) + 1) FROM events
             WHERE event_type = 'log' GROUP BY raw_partition, chain_epoch",
        )
        .fetch_all()
        .await?;
    assert!(!sizes.is_empty());
    // An idle stretch (checkpoints each second, all at the old batch's sizes) around the cut.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cut = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    p.post(&events("new", 20)).await?;
    p.wait_for_rows(40, Duration::from_secs(60)).await;
    p.wait_signed(40, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The TTL acts: rows enriched (derived) before the cut are removed by ClickHouse.
    let ch = p.clickhouse();
    let ttl_s = cut.elapsed()?.as_secs();
    for (table, column) in RETAINED {
        ch.query(&format!(
            "ALTER TABLE {table} MODIFY TTL toDateTime({column}) + INTERVAL {ttl_s} SECOND
             SETTINGS mutations_sync = 2"
        ))
        .execute()
        .await?;
        ch.query(&format!("OPTIMIZE TABLE {table} FINAL"))
            .execute()
            .await?;
        // Held there: a TTL of seconds would go on to remove the new batch while we look.
        ch.query(&format!("ALTER TABLE {table} REMOVE TTL"))
            .execute()
            .await?;
    }
    // Each table's TTL acted at its own moment, so the last one cut latest: the verifier's
    // retention must reach at least that far back, as the sink's setting does in days.
    let ttl_cut = std::time::SystemTime::now() - Duration::from_secs(ttl_s);
    let left: u64 = ch
        .query("SELECT count() FROM events WHERE event_type = 'log'")
        .fetch_one()
        .await?;
    assert_eq!(left, 20, "the TTL removed the old batch, not the new one");
    let activity: u64 = ch
        .query("SELECT count() FROM entity_activity WHERE startsWith(message, 'old')")
        .fetch_one()
        .await?;
    assert_eq!(activity, 0, "the derived rows expire with their events");

    let to = Timestamp::now().to_rfc3339();
    let (ok, out) = p.verify_with(&from, &to, false, &["--grace-seconds", "1"])?;
    assert!(
        !ok && out.contains("DELETED"),
        "without the retention the removed links read as deleted:\n{out}"
    );
    // The verifier's retention: the TTL's, its cut where the last table's was.
    let verify_retained = || {
        let days = ttl_cut.elapsed().map_or(0.0, |d| d.as_secs_f64()) / 86_400.0;
        let days = format!("{days:.9}");
        p.verify_with(
            &from,
            &to,
            false,
            &["--grace-seconds", "1", "--retention-days", &days],
        )
    };
    let (ok, out) = verify_retained()?;
    assert!(ok, "expired links are no finding:\n{out}");
    assert!(
        out.contains("20 links in") && out.contains("20 links EXPIRED"),
        "the new batch proven, the old one counted as expired:\n{out}"
    );
    assert!(
        out.contains("Derived tables recomputed") && !out.contains("UNBACKED"),
        "{out}"
    );

    // A link above the horizon deleted: still a deletion.
    ch.query("ALTER TABLE events DELETE WHERE message = 'new 7' SETTINGS mutations_sync = 2")
        .execute()
        .await?;
    let (ok, out) = verify_retained()?;
    assert!(
        !ok && out.contains("DELETED  raw partition"),
        "a deletion after the horizon is named:\n{out}"
    );

    // The frontier the walk resumes from, changed: named, and it proves nothing.
    for (partition, epoch, size) in &sizes {
        ch.query(
            "ALTER TABLE chain_frontiers UPDATE peaks = arrayMap(x -> repeat('0', 64), peaks)
             WHERE raw_partition = ? AND epoch = ? AND tree_size = ? SETTINGS mutations_sync = 2",
        )
        .bind(partition)
        .bind(epoch)
        .bind(size)
        .execute()
        .await?;
    }
    let (ok, out) = verify_retained()?;
    assert!(
        !ok && out.contains("the frontier stored for chain"),
        "a changed frontier is named:\n{out}"
    );

    // Every frontier deleted: what follows the expired links is not taken as proven.
    ch.query("ALTER TABLE chain_frontiers DELETE WHERE 1 SETTINGS mutations_sync = 2")
        .execute()
        .await?;
    let (ok, out) = verify_retained()?;
    assert!(
        !ok && out.contains("above the retention horizon, cannot be proven"),
        "links nothing proves any more are a finding:\n{out}"
    );
    assert!(!out.contains("link 0, under a signed checkpoint"), "{out}");

    // Checkpoints just after the cut deleted, to move the horizon on (and with it what may
    // read as expired): the checkpoint that is now oldest names one that is gone, so nothing
    // counts as expired, and the old links read as deleted again.
    let cut_us = i64::try_from(ttl_cut.duration_since(std::time::UNIX_EPOCH)?.as_micros())?;
    ch.query(
        "ALTER TABLE chain_checkpoints DELETE
         WHERE signed_at BETWEEN fromUnixTimestamp64Micro(?) AND fromUnixTimestamp64Micro(?)
         SETTINGS mutations_sync = 2",
    )
    .bind(cut_us - 2_000_000)
    .bind(cut_us + 4_000_000)
    .execute()
    .await?;
    let (ok, out) = verify_retained()?;
    assert!(
        !ok && out.contains("link 0, under a signed checkpoint, is not stored"),
        "a horizon moved by deleting checkpoints explains nothing:\n{out}"
    );
    Ok(())
}
