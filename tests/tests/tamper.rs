//! Tamper evidence on the real stack: events through the enricher (hash chains, signed digests)
//! into ClickHouse and CloudWatch, `auditctl verify` passing on the untouched range, finding an
//! event removed from its CloudWatch stream, then naming exactly the row deleted, the row
//! altered (`ALTER TABLE ... UPDATE`) and the row inserted by hand in ClickHouse.

use anyhow::Result;
use audit_schemas::Timestamp;
use audit_tests::pipeline::{Pipeline, Stage};
use audit_tests::*;
use serde_json::json;
use std::time::Duration;

fn verify(p: &Pipeline, from: &str, to: &str, cloudwatch: bool) -> Result<(bool, String)> {
    p.verify(from, to, cloudwatch)
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Link {
    event_id: String,
    raw_partition: i32,
    raw_offset: i64,
    chain_seq: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_untouched_and_names_the_row_deleted_altered_and_inserted() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let mut cloudwatch = p.start(Stage::CloudWatchSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let events: Vec<_> = (0..40)
        .map(|i| {
            json!({"event_type": "log", "source": "SERVER", "user_id": format!("u{}", i % 4),
                   "message": format!("m{i}"), "params": {"n": i}})
        })
        .collect();
    p.post(&events).await?;
    p.wait_for_rows(40, Duration::from_secs(60)).await;
    p.wait_signed(40, Duration::from_secs(60)).await?;
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000).to_rfc3339();

    let logs = logs_client(&cloudwatch_url()).await;
    wait_for_distinct_events(&logs, &p.log_group, 40, Duration::from_secs(60)).await?;
    let (ok, text) = verify(&p, &from, &to, true)?;
    assert!(ok, "untouched: {text}");
    assert!(text.contains("40 links verified"), "{text}");
    assert!(text.contains("40 of 40 events verified"), "{text}");

    // One event removed from its CloudWatch stream (CloudWatch has no call for that: the stream
    // is written again without it, the sink stopped meanwhile).
    cloudwatch.stop()?;
    let stream = p.stream_of("log").to_string();
    let stored = read_group(&logs, &p.log_group).await?;
    let events = &stored[&stream];
    let removed = events[events.len() / 2].1["event"]["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    logs.delete_log_stream()
        .log_group_name(&p.log_group)
        .log_stream_name(&stream)
        .send()
        .await?;
    logs.create_log_stream()
        .log_group_name(&p.log_group)
        .log_stream_name(&stream)
        .send()
        .await?;
    let kept: Vec<_> = events
        .iter()
        .filter(|(_, m)| m["event"]["event_id"] != removed.as_str())
        .map(|(t, m)| {
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(*t)
                .message(m.to_string())
                .build()
        })
        .collect::<Result<_, _>>()?;
    logs.put_log_events()
        .log_group_name(&p.log_group)
        .log_stream_name(&stream)
        .set_log_events(Some(kept))
        .send()
        .await?;
    let (ok, text) = verify(&p, &from, &to, true)?;
    assert!(!ok, "removed from CloudWatch: {text}");
    let findings: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["DELETED", "ALTERED", "INSERTED", "MISMATCH", "FORGED"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect();
    assert_eq!(findings.len(), 1, "{text}");
    assert!(
        findings[0].starts_with("DELETED  from CloudWatch") && findings[0].contains(&removed),
        "{text}"
    );

    // Three rows in the middle of their chains: one deleted, one altered, one copied as new.
    let links: Vec<Link> = p
        .clickhouse()
        .query(
            "SELECT toString(event_id) AS event_id, raw_partition, raw_offset, chain_seq FROM events
             WHERE event_type = 'log' AND chain_seq BETWEEN 1 AND 5 ORDER BY raw_partition, chain_seq",
        )
        .fetch_all()
        .await?;
    assert!(links.len() >= 3, "{links:?}");
    let (deleted, altered, copied) = (&links[0], &links[1], &links[2]);
    let ch = p.clickhouse();
    ch.query("ALTER TABLE events DELETE WHERE toString(event_id) = ? SETTINGS mutations_sync = 2")
        .bind(&deleted.event_id)
        .execute()
        .await?;
    ch.query("ALTER TABLE events UPDATE message = 'nothing happened' WHERE toString(event_id) = ? SETTINGS mutations_sync = 2")
        .bind(&altered.event_id)
        .execute()
        .await?;
    let inserted = uuid::Uuid::new_v4().to_string();
    // (Filtered on columns the REPLACE leaves alone: ClickHouse would read the new event_id.)
    ch.query("INSERT INTO events SELECT * REPLACE (toUUID(?) AS event_id, 'planted' AS message) FROM events WHERE raw_partition = ? AND raw_offset = ?")
        .bind(&inserted)
        .bind(copied.raw_partition)
        .bind(copied.raw_offset)
        .execute()
        .await?;

    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "tampered: {text}");
    let findings: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["DELETED", "ALTERED", "INSERTED", "MISMATCH", "FORGED"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect();
    // Three from the v1 chain; from the v2 checkpoints the deleted row and the columns of the
    // altered and the inserted row.
    assert_eq!(findings.len(), 6, "{text}");
    assert!(
        findings.iter().any(|l| l.starts_with("ALTERED")
            && l.contains(&format!(
                "event {}: column message differs",
                altered.event_id
            ))),
        "{text}"
    );
    assert!(
        findings.iter().any(|l| l.starts_with("ALTERED")
            && l.contains(&format!(
                "event {inserted}: columns event_id, message differ"
            ))),
        "{text}"
    );
    assert!(
        findings.iter().any(|l| l.starts_with("DELETED")
            && l.contains(&format!("raw partition {},", deleted.raw_partition))
            && l.contains(&format!("link {})", deleted.chain_seq))),
        "{text}"
    );
    assert!(
        findings.iter().any(|l| l.starts_with("DELETED")
            && l.contains(&format!("raw partition {}:", deleted.raw_partition))
            && l.contains(&format!(
                "link {}, under a signed checkpoint",
                deleted.chain_seq
            ))),
        "{text}"
    );
    assert!(
        findings.iter().any(|l| l.starts_with("ALTERED")
            && l.contains(&format!(
                "offset {}: event {}",
                altered.raw_offset, altered.event_id
            ))),
        "{text}"
    );
    assert!(
        findings
            .iter()
            .any(|l| l.starts_with("INSERTED") && l.contains(&inserted)),
        "{text}"
    );
    Ok(())
}

/// Rows `verify` must judge by what a forger cannot choose.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Placed {
    event_id: String,
    raw_partition: i32,
    raw_offset: i64,
}

fn findings(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            [
                "DELETED",
                "ALTERED",
                "INSERTED",
                "MISMATCH",
                "FORGED",
                "UNSIGNED",
                "MISSING",
                "TRUNCATED",
                "UNBACKED",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .collect()
}

/// Attacks the first verifier passed as clean: a copy of an event with other content that
/// keeps its id and link, a planted row in a chain no digest names dated after the range, and
/// every digest deleted. Each is named, and the run fails.
#[tokio::test(flavor = "multi_thread")]
async fn verify_names_altered_copies_unproven_rows_and_a_trail_without_digests() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let events: Vec<_> = (0..20)
        .map(|i| json!({"event_type": "log", "source": "SERVER", "message": format!("m{i}")}))
        .collect();
    p.post(&events).await?;
    p.wait_for_rows(20, Duration::from_secs(60)).await;
    p.wait_signed(20, Duration::from_secs(60)).await?;
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000).to_rfc3339();
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(ok, "untouched: {text}");
    let ch = p.clickhouse();
    let target: Placed = ch
        .query(
            "SELECT toString(event_id) AS event_id, raw_partition, raw_offset FROM events
             WHERE event_type = 'log' AND chain_seq BETWEEN 1 AND 5 ORDER BY raw_partition, chain_seq LIMIT 1",
        )
        .fetch_one()
        .await?;

    // A second row for the event: same id, same link, another message.
    ch.query("INSERT INTO events SELECT * REPLACE ('not what happened' AS message) FROM events WHERE raw_partition = ? AND raw_offset = ?")
        .bind(target.raw_partition)
        .bind(target.raw_offset)
        .execute()
        .await?;
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "altered copy: {text}");
    let found = findings(&text);
    // v1 sees two contents at the link; v2 names the copy's column.
    assert_eq!(found.len(), 2, "{text}");
    assert!(
        found
            .iter()
            .all(|l| l.starts_with("ALTERED") && l.contains(&target.event_id)),
        "{text}"
    );
    assert!(
        found.iter().any(|l| l.contains("column message differs")),
        "{text}"
    );
    ch.query(
        "ALTER TABLE events DELETE WHERE message = 'not what happened' SETTINGS mutations_sync = 2",
    )
    .execute()
    .await?;

    // A planted event in a chain that does not exist, dated a day after the range.
    let planted = uuid::Uuid::new_v4().to_string();
    ch.query("INSERT INTO events SELECT * REPLACE (toUUID(?) AS event_id, 'planted' AS message, '00000000-0000-4000-8000-00000000f00d' AS chain_epoch, enriched_at + INTERVAL 1 DAY AS enriched_at) FROM events WHERE raw_partition = ? AND raw_offset = ?")
        .bind(&planted)
        .bind(target.raw_partition)
        .bind(target.raw_offset)
        .execute()
        .await?;
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "planted in no chain: {text}");
    let found = findings(&text);
    assert_eq!(found.len(), 1, "{text}");
    assert!(found[0].starts_with("UNSIGNED 1 rows"), "{text}");
    ch.query("ALTER TABLE events DELETE WHERE message = 'planted' SETTINGS mutations_sync = 2")
        .execute()
        .await?;
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(ok, "restored: {text}");

    // Every digest deleted: nothing is proven, and verify says so.
    ch.query("ALTER TABLE events DELETE WHERE event_type = 'audit.chain-digest' SETTINGS mutations_sync = 2")
        .execute()
        .await?;
    ch.query("TRUNCATE TABLE chain_digests").execute().await?;
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "no digests: {text}");
    assert!(
        findings(&text)
            .iter()
            .any(|l| l.contains("not one signed digest")),
        "{text}"
    );
    Ok(())
}

/// A sender that posts its own event id again with other content is no tampering: the sink
/// keeps the first, and `verify` explains the second's link instead of calling it deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_sender_resending_its_event_id_with_other_content_is_no_finding() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let id = uuid::Uuid::new_v4().to_string();
    let mut events: Vec<_> = (0..10)
        .map(|i| json!({"event_type": "log", "source": "SERVER", "message": format!("m{i}")}))
        .collect();
    events
        .push(json!({"event_id": id, "event_type": "log", "source": "SERVER", "message": "first"}));
    p.post(&events).await?;
    p.post(&[
        json!({"event_id": id, "event_type": "log", "source": "SERVER", "message": "second"}),
    ])
    .await?;
    p.wait_for_rows(11, Duration::from_secs(60)).await;
    p.wait_signed(12, Duration::from_secs(60)).await?;
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000).to_rfc3339();
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(ok, "a resend: {text}");
    assert!(findings(&text).is_empty(), "{text}");
    Ok(())
}

/// The v2 checkpoints against someone who deletes them: a checkpoint in the middle of a
/// partition's list (MISSING), one partition's tail of rows and checkpoints (TRUNCATED), and
/// every checkpoint (nothing proven).
#[tokio::test(flavor = "multi_thread")]
async fn verify_names_deleted_checkpoints_a_cut_tail_and_no_checkpoints() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let mut enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let events: Vec<_> = (0..20)
        .map(|i| {
            json!({"event_type": "log", "source": "SERVER", "user_id": format!("u{}", i % 4),
                   "message": format!("m{i}")})
        })
        .collect();
    p.post(&events).await?;
    p.wait_for_rows(20, Duration::from_secs(60)).await;
    p.wait_signed(20, Duration::from_secs(60)).await?;
    // Checkpoints go on every second; some seconds of them after the events.
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Stopped, as a copy of the database would be: every partition's list ends together.
    enricher.stop()?;
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000).to_rfc3339();
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(ok, "untouched: {text}");
    assert!(
        text.contains("ClickHouse checkpoints (v2)") && text.contains("0 findings"),
        "{text}"
    );
    let ch = p.clickhouse();

    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Cp {
        raw_partition: i32,
        signed_us: i64,
    }
    let list: Vec<Cp> = ch
        .query("SELECT raw_partition, toUnixTimestamp64Micro(signed_at) AS signed_us FROM chain_checkpoints ORDER BY raw_partition, signed_at")
        .fetch_all()
        .await?;
    let partition = list[0].raw_partition;
    let mine: Vec<&Cp> = list
        .iter()
        .filter(|c| c.raw_partition == partition)
        .collect();
    assert!(mine.len() >= 6, "{list:?}");

    // One checkpoint in the middle of the list.
    let middle = mine[mine.len() / 2].signed_us;
    ch.query("ALTER TABLE chain_checkpoints DELETE WHERE raw_partition = ? AND toUnixTimestamp64Micro(signed_at) = ? SETTINGS mutations_sync = 2")
        .bind(partition)
        .bind(middle)
        .execute()
        .await?;
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "a checkpoint deleted: {text}");
    let found = findings(&text);
    assert!(
        found.len() == 1 && found[0].starts_with(&format!("MISSING  raw partition {partition}:")),
        "{text}"
    );

    // The partition's tail: everything signed or enriched in its last few seconds.
    let cut = mine[mine.len() - 4].signed_us;
    ch.query("ALTER TABLE chain_checkpoints DELETE WHERE raw_partition = ? AND toUnixTimestamp64Micro(signed_at) >= ? SETTINGS mutations_sync = 2")
        .bind(partition)
        .bind(cut)
        .execute()
        .await?;
    // A grace shorter than the cut, so that the tail's absence is not within it.
    let (ok, text) = p.verify_with(&from, &to, false, &["--grace-seconds", "1"])?;
    assert!(!ok, "a tail cut: {text}");
    assert!(
        findings(&text)
            .iter()
            .any(|l| l.starts_with(&format!("TRUNCATED raw partition {partition}:"))),
        "{text}"
    );

    // Every checkpoint.
    ch.query("TRUNCATE TABLE chain_checkpoints")
        .execute()
        .await?;
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "no checkpoints: {text}");
    assert!(
        findings(&text)
            .iter()
            .any(|l| l.contains("not one valid checkpoint")),
        "{text}"
    );
    Ok(())
}

/// The columns v1's chain does not cover: the resolved user, the groups, the enrichment state.
/// Each changed by `ALTER TABLE ... UPDATE` on its own row is named with its columns by the v2
/// column check, and nothing else is.
#[tokio::test(flavor = "multi_thread")]
async fn verify_names_a_row_given_to_another_user_other_groups_or_another_enrichment() -> Result<()>
{
    use audit_schemas::{DirectoryEntry, Group, User};
    let p = Pipeline::create(kafka_config(), 2).await?;
    let user = |id: &str, login: &str, group: &str| {
        DirectoryEntry::User(User {
            id: id.into(),
            login: login.into(),
            name: None,
            group_ids: vec![group.into()],
            scim: None,
        })
    };
    p.put_directory(vec![
        DirectoryEntry::Group(Group {
            id: "g-ctr".into(),
            name: "contractors".into(),
            parent_ids: vec![],
            scim: None,
        }),
        user("u-carl", "carl", "g-ctr"),
    ])
    .await?;
    // The directory is in place before the enricher starts, so every event is enriched.
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let events: Vec<_> = (0..12)
        .map(|i| json!({"event_type": "log", "source": "SERVER", "user_id": "u-carl", "message": format!("m{i}")}))
        .collect();
    p.post(&events).await?;
    p.wait_for_rows(12, Duration::from_secs(60)).await;
    p.wait_signed(12, Duration::from_secs(60)).await?;
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000).to_rfc3339();
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(ok, "untouched: {text}");
    let ch = p.clickhouse();
    let rows: Vec<Placed> = ch
        .query(
            "SELECT toString(event_id) AS event_id, raw_partition, raw_offset FROM events
             WHERE event_type = 'log' AND user_login = 'carl' ORDER BY raw_partition, raw_offset LIMIT 3",
        )
        .fetch_all()
        .await?;
    assert_eq!(rows.len(), 3, "enriched rows: {rows:?}");
    let attacks = [
        (
            "user_id = 'u-eve', user_login = 'eve'",
            "columns user_id, user_login differ",
        ),
        (
            "group_ids = ['g-adm'], group_names = ['admins']",
            "columns group_ids, group_names differ",
        ),
        ("enrichment = 'USER_UNKNOWN'", "column enrichment differs"),
    ];
    for ((set, _), row) in attacks.iter().zip(&rows) {
        ch.query(&format!(
            "ALTER TABLE events UPDATE {set} WHERE toString(event_id) = ? SETTINGS mutations_sync = 2"
        ))
        .bind(&row.event_id)
        .execute()
        .await?;
    }
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "tampered: {text}");
    let found = findings(&text);
    assert_eq!(found.len(), attacks.len(), "{text}");
    for ((_, named), row) in attacks.iter().zip(&rows) {
        assert!(
            found.iter().any(|l| l.starts_with("ALTERED")
                && l.contains(&format!(
                    "event {}: {named} from the signed content",
                    row.event_id
                ))),
            "{named} of {}: {text}",
            row.event_id
        );
    }
    Ok(())
}

/// ClickHouse rolled back to an earlier copy between two `verify --state` runs: every
/// partition's tail goes at one moment, which ClickHouse alone cannot tell from a pipeline
/// that stopped then (verify without the state passes, which is why the witness exists); the
/// state names each partition whose proven checkpoint is gone, and keeps naming it.
#[tokio::test(flavor = "multi_thread")]
async fn verify_state_names_a_rollback_to_an_earlier_copy() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let mut enricher = p.start(Stage::Enricher).await?;
    let mut sink = p.start(Stage::ClickHouseSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let batch = |n: usize| -> Vec<serde_json::Value> {
        (0..10)
            .map(|i| json!({"event_type": "log", "source": "SERVER", "message": format!("b{n} m{i}")}))
            .collect()
    };
    p.post(&batch(1)).await?;
    p.wait_for_rows(10, Duration::from_secs(60)).await;
    p.wait_signed(10, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The moment the older copy was taken.
    let copy_us = Timestamp::now().as_micros();
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.post(&batch(2)).await?;
    p.wait_for_rows(20, Duration::from_secs(60)).await;
    p.wait_signed(20, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    enricher.stop()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sink.stop()?;
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000).to_rfc3339();

    let dir = std::env::temp_dir().join(format!("verify-state-{}", p.database));
    std::fs::create_dir_all(&dir)?;
    let state = dir.join("state.json");
    let state_arg = state.to_string_lossy().to_string();
    let with_state = ["--state", state_arg.as_str()];
    let (ok, text) = p.verify_with(&from, &to, false, &with_state)?;
    assert!(ok, "untouched: {text}");
    assert!(text.contains("2 partitions moved on"), "{text}");
    let (ok, text) = p.verify_with(&from, &to, false, &with_state)?;
    assert!(ok, "untouched, again: {text}");
    assert!(
        text.contains("2 of 2 checkpoints kept from earlier runs still stored"),
        "{text}"
    );

    // Back to the copy: everything enriched or signed after it is gone.
    p.roll_back_clickhouse_to(copy_us).await?;
    let (rows, _) = p.clickhouse_counts().await;
    assert!(rows < 20, "rolled back to {rows} rows");
    let (ok, text) = p.verify(&from, &to, false)?;
    assert!(ok, "the copy alone is consistent: {text}");
    for run in ["first", "second"] {
        let (ok, text) = p.verify_with(&from, &to, false, &with_state)?;
        assert!(!ok, "rolled back ({run} run): {text}");
        let found: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ROLLED BACK"))
            .collect();
        assert_eq!(found.len(), 2, "{run} run: {text}");
        assert!(
            text.contains("0 of 2 checkpoints kept from earlier runs still stored"),
            "{run} run: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Attacks on a row's place: a row moved to another raw partition, two rows of one chain
/// swapping their seqs, and the rows of one stretch of time deleted across every partition.
/// Each is named where it happened (after each is undone, the trail verifies clean again).
#[tokio::test(flavor = "multi_thread")]
async fn verify_names_a_moved_row_swapped_seqs_and_a_stretch_deleted_in_every_partition(
) -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let batch = |n: usize| -> Vec<serde_json::Value> {
        (0..12)
            .map(|i| {
                json!({"event_type": "log", "source": "SERVER", "user_id": format!("u{i}"),
                            "message": format!("b{n} m{i}")})
            })
            .collect()
    };
    let mut stretch = (0, 0);
    for n in 0..3 {
        if n == 1 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            stretch.0 = Timestamp::now().as_micros();
        }
        p.post(&batch(n)).await?;
        p.wait_for_rows(12 * (n as u64 + 1), Duration::from_secs(60))
            .await;
        if n == 1 {
            stretch.1 = Timestamp::now().as_micros();
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    p.wait_signed(36, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000).to_rfc3339();
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(ok, "untouched: {text}");
    let ch = p.clickhouse();
    let links: Vec<Link> = ch
        .query(
            "SELECT toString(event_id) AS event_id, raw_partition, raw_offset, chain_seq FROM events
             WHERE event_type = 'log' ORDER BY raw_partition, chain_seq",
        )
        .fetch_all()
        .await?;
    let partitions: std::collections::BTreeSet<i32> =
        links.iter().map(|l| l.raw_partition).collect();
    assert_eq!(partitions.len(), 2, "events in both partitions: {links:?}");
    let a = links
        .iter()
        .find(|l| l.chain_seq == 3)
        .expect("a fourth link");
    let b = links
        .iter()
        .find(|l| l.raw_partition == a.raw_partition && l.chain_seq == 7)
        .expect("an eighth link");

    // Two rows of one chain swap their seqs.
    let swap = "ALTER TABLE events UPDATE chain_seq = if(chain_seq = 3, 7, 3)
                WHERE toString(event_id) IN (?, ?) SETTINGS mutations_sync = 2";
    ch.query(swap)
        .bind(&a.event_id)
        .bind(&b.event_id)
        .execute()
        .await?;
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "seqs swapped: {text}");
    let found = findings(&text);
    for id in [&a.event_id, &b.event_id] {
        assert!(
            found
                .iter()
                .any(|l| l.starts_with("ALTERED") && l.contains(id.as_str())),
            "v1 names each swapped row ({id}): {text}"
        );
    }
    assert!(
        found.iter().any(|l| l.starts_with(&format!(
            "ALTERED  raw partition {}: chain",
            a.raw_partition
        )) && l.contains("do not give the signed Merkle root")),
        "v2 names the chain whose root no longer holds: {text}"
    );
    ch.query(swap)
        .bind(&a.event_id)
        .bind(&b.event_id)
        .execute()
        .await?;
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(ok, "swapped back: {text}");

    // A row moved to the other partition.
    let other = partitions
        .iter()
        .find(|&&q| q != a.raw_partition)
        .copied()
        .unwrap();
    let moving = |to_partition: i32| {
        ch.query(
            "ALTER TABLE events UPDATE raw_partition = ? WHERE toString(event_id) = ?
             SETTINGS mutations_sync = 2",
        )
        .bind(to_partition)
        .bind(&a.event_id)
    };
    moving(other).execute().await?;
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "moved: {text}");
    assert!(
        findings(&text).iter().any(|l| l.starts_with(&format!(
            "DELETED  raw partition {}: chain",
            a.raw_partition
        )) && l.contains("link 3,")),
        "its link is gone from its partition: {text}"
    );
    moving(a.raw_partition).execute().await?;
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(ok, "moved back: {text}");

    // Everything enriched in one stretch of time (the second batch), in every partition.
    ch.query(
        "ALTER TABLE events DELETE WHERE event_type = 'log' AND enriched_at
         BETWEEN fromUnixTimestamp64Micro(?) AND fromUnixTimestamp64Micro(?)
         SETTINGS mutations_sync = 2",
    )
    .bind(stretch.0)
    .bind(stretch.1)
    .execute()
    .await?;
    let (rows, _) = p.clickhouse_counts().await;
    assert_eq!(rows, 24, "the second batch deleted");
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "a stretch deleted: {text}");
    let v2: Vec<&str> = findings(&text)
        .into_iter()
        .filter(|l| l.starts_with("DELETED  raw partition") && l.contains(": chain "))
        .collect();
    assert_eq!(
        v2.len(),
        12,
        "each deleted link, under its checkpoint: {text}"
    );
    for q in &partitions {
        assert!(
            v2.iter()
                .any(|l| l.starts_with(&format!("DELETED  raw partition {q}:"))),
            "partition {q}: {text}"
        );
    }
    Ok(())
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct ActivityRow {
    event_id: String,
    entity_id: String,
    user_login: Option<String>,
}

/// Attacks on the tables analysts read besides `events`: an `entity_activity` row given to
/// another person, one deleted, and rows planted in `entity_activity`, `entity_links` and
/// `rule_drops`. Each is named with its event (and the altered column); each undone, the
/// range verifies clean.
#[tokio::test(flavor = "multi_thread")]
async fn verify_names_derived_rows_altered_deleted_or_planted() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let events: Vec<_> = (0..10)
        .map(|i| {
            json!({"event_type": "log", "source": "SERVER", "message": format!("m{i}"),
                   "username": "ann", "entities": [{"type": "query", "id": format!("q-{i}")}]})
        })
        .collect();
    p.post(&events).await?;
    p.wait_for_rows(10, Duration::from_secs(60)).await;
    p.wait_signed(10, Duration::from_secs(60)).await?;
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 300_000_000).to_rfc3339();
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(ok, "untouched: {text}");
    assert!(
        text.contains("Derived tables recomputed from the stored events: entity_activity"),
        "{text}"
    );

    let ch = p.clickhouse();
    let picked: Vec<ActivityRow> = ch
        .query(
            "SELECT toString(event_id) AS event_id, entity_id, user_login FROM entity_activity
             WHERE entity_type = 'query' ORDER BY entity_id LIMIT 2",
        )
        .fetch_all()
        .await?;
    assert_eq!(picked.len(), 2, "two query rows");
    let (given, removed) = (&picked[0], &picked[1]);
    ch.query("ALTER TABLE entity_activity UPDATE user_login = 'mallory' WHERE toString(event_id) = ? AND entity_id = ? SETTINGS mutations_sync = 2")
        .bind(&given.event_id)
        .bind(&given.entity_id)
        .execute()
        .await?;
    ch.query(&format!(
        "CREATE TABLE kept_{} AS entity_activity",
        p.database.replace('-', "_")
    ))
    .execute()
    .await?;
    let kept = format!("kept_{}", p.database.replace('-', "_"));
    ch.query(&format!("INSERT INTO {kept} SELECT * FROM entity_activity WHERE toString(event_id) = ? AND entity_id = ?"))
        .bind(&removed.event_id)
        .bind(&removed.entity_id)
        .execute()
        .await?;
    ch.query("ALTER TABLE entity_activity DELETE WHERE toString(event_id) = ? AND entity_id = ? SETTINGS mutations_sync = 2")
        .bind(&removed.event_id)
        .bind(&removed.entity_id)
        .execute()
        .await?;
    let planted: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    ch.query(
        "INSERT INTO entity_activity (entity_type, entity_id, timestamp, event_id, event_type, user_login, success)
         VALUES ('query', 'q-0', now64(6), toUUID(?), 'log', 'ann', true)",
    )
    .bind(&planted[0])
    .execute()
    .await?;
    ch.query(
        "INSERT INTO entity_links (linked_type, linked_id, entity_type, entity_id, timestamp, event_id)
         VALUES ('dataflow', 'df-1', 'schedule', 's-1', now64(6), toUUID(?))",
    )
    .bind(&planted[1])
    .execute()
    .await?;
    ch.query(
        "INSERT INTO rule_drops (minute, rule, event_type, group_name, dropped, first_event_time,
                                 last_event_time, raw_partition, raw_offsets, summary_id)
         VALUES (toStartOfMinute(now() + 90), 'quiet', 'log', 'ops', 5, now64(6), now64(6), 0, [1, 2], toUUID(?))",
    )
    .bind(&planted[2])
    .execute()
    .await?;

    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(!ok, "attacked: {text}");
    let found = findings(&text);
    let expected = [
        format!(
            "ALTERED entity_activity: the rows of event {} differ from what the event gives: columns user_login",
            given.event_id
        ),
        format!(
            "DELETED entity_activity: 1 rows event {} gives are not stored",
            removed.event_id
        ),
        format!("UNBACKED entity_activity: 1 rows of event {} ", planted[0]),
        format!("UNBACKED entity_links: 1 rows of event {} ", planted[1]),
        format!("UNBACKED rule_drops: 1 rows of event {} ", planted[2]),
    ];
    for e in &expected {
        assert!(
            found.iter().any(|f| f.starts_with(e.as_str())),
            "{e}: {text}"
        );
    }
    assert_eq!(found.len(), expected.len(), "nothing else: {text}");

    ch.query("ALTER TABLE entity_activity UPDATE user_login = ? WHERE toString(event_id) = ? AND entity_id = ? SETTINGS mutations_sync = 2")
        .bind(&given.user_login)
        .bind(&given.event_id)
        .bind(&given.entity_id)
        .execute()
        .await?;
    ch.query(&format!("INSERT INTO entity_activity SELECT * FROM {kept}"))
        .execute()
        .await?;
    for (table, column) in [
        ("entity_activity", "event_id"),
        ("entity_links", "event_id"),
        ("rule_drops", "summary_id"),
    ] {
        ch.query(&format!(
            "ALTER TABLE {table} DELETE WHERE has(?, toString({column})) SETTINGS mutations_sync = 2"
        ))
        .bind(&planted)
        .execute()
        .await?;
    }
    let (ok, text) = verify(&p, &from, &to, false)?;
    assert!(ok, "undone: {text}");
    Ok(())
}
