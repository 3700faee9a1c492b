//! Erasure on the real stack (issue #26, GDPR article 17): `auditctl erase --user` puts
//! erasure records through the pipeline, then blanks the person's columns and salts in
//! ClickHouse. Nothing of the person remains in the stored rows, every proof still holds,
//! `verify` reports the rows ERASED and passes, and the same blanking done by a ClickHouse
//! writer without a record is named as tampering.

use anyhow::Result;
use audit_schemas::{DirectoryEntry, Group, Timestamp, User};
use audit_tests::pipeline::{chain_public_key, Pipeline, Stage};
use audit_tests::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_user_leaves_no_trace_and_every_proof_holds() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let user = |id: &str, login: &str| {
        DirectoryEntry::User(User {
            id: id.into(),
            login: login.into(),
            name: Some(format!("{login} L")),
            group_ids: vec!["g-eng".into()],
            scim: None,
        })
    };
    p.put_directory(vec![
        DirectoryEntry::Group(Group {
            id: "g-eng".into(),
            name: "engineers".into(),
            parent_ids: vec![],
            scim: None,
        }),
        user("u-lovelace", "lovelace"),
        user("u-bob", "bob"),
    ])
    .await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let from = Timestamp::now().to_rfc3339();
    let events: Vec<_> = (0..20)
        .map(|i| {
            let who = if i % 2 == 0 { "u-lovelace" } else { "u-bob" };
            json!({"event_type": "log", "source": "SERVER", "user_id": who,
                   "client": {"ip": format!("10.1.0.{i}"), "user_agent": "curl/8"},
                   "message": format!("m{i}")})
        })
        .collect();
    p.post(&events).await?;
    p.wait_for_rows(20, Duration::from_secs(60)).await;
    p.wait_signed(20, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ch = p.clickhouse();
    let ada_rows: u64 = ch
        .query("SELECT count() FROM events WHERE user_login = 'lovelace'")
        .fetch_one()
        .await?;
    assert_eq!(ada_rows, 10, "every event of ada enriched");

    let env = [
        ("AUDIT__CLICKHOUSE__URL", clickhouse_url()),
        ("AUDIT__CLICKHOUSE__DATABASE", p.database.clone()),
        ("AUDIT__OPERATOR__NAME", "dpo-team".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = |args: &[&str]| -> Result<(bool, String)> {
        let out = p.auditctl(args, &env)?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let reason = "GDPR request 2026-117";
    let (ok, out) = run(&[
        "erase",
        "--user",
        "u-lovelace",
        "--reason",
        reason,
        "--dry-run",
    ])?;
    assert!(
        ok && out.contains("Would erase the personal data of 10 events"),
        "{out}"
    );
    let (ok, out) = run(&["erase", "--user", "u-lovelace", "--reason", reason])?;
    assert!(ok, "erase: {out}");
    assert!(
        out.contains("Erased the personal data of 10 events"),
        "{out}"
    );

    // Nothing of ada in the stored rows: not in a column, not in a content, not in the
    // activity history; bob is untouched.
    let left: u64 = ch
        .query(
            "SELECT count() FROM events WHERE event_type = 'log' AND (
                 positionCaseInsensitive(toString(tuple(* EXCEPT (chain_content))), 'lovelace') > 0
                 OR position(chain_content, 'lovelace') > 0 OR position(chain_content, 'u-lovelace') > 0)",
        )
        .fetch_one()
        .await?;
    assert_eq!(left, 0, "rows still naming ada");
    let activity: u64 = ch
        .query("SELECT count() FROM entity_activity WHERE user_login = 'lovelace' OR user_id = 'u-lovelace'")
        .fetch_one()
        .await?;
    assert_eq!(activity, 0);
    let bob: u64 = ch
        .query("SELECT count() FROM events WHERE user_login = 'bob' AND chain_salt != ''")
        .fetch_one()
        .await?;
    assert_eq!(bob, 10, "bob's rows are untouched");
    // The erasure is on record, naming the operator and the events, not the person.
    let (by, ids): (String, String) = ch
        .query(
            "SELECT assumeNotNull(user_id), params['event_ids'] FROM events
             WHERE event_type = 'audit.personal-data-erased'",
        )
        .fetch_one()
        .await?;
    assert_eq!(by, "dpo-team");
    assert_eq!(serde_json::from_str::<Vec<String>>(&ids)?.len(), 10);

    // verify: every link and proof still holds, the rows read ERASED.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000).to_rfc3339();
    let (ok, text) = p.verify(&from, &to, false)?;
    assert!(ok, "after the erasure: {text}");
    assert!(
        text.contains("10 rows ERASED under a signed erasure record"),
        "{text}"
    );
    // A proof of an erased event still checks.
    let erased_id: String = ch
        .query(
            "SELECT toString(event_id) FROM events WHERE event_type = 'log' AND chain_salt = '' LIMIT 1",
        )
        .fetch_one()
        .await?;
    let key = format!("e2e={}", chain_public_key());
    let dir = tempfile::tempdir()?;
    let proof = dir.path().join("proof.json");
    let proof_arg = proof.to_string_lossy().to_string();
    let (ok, out) = run(&[
        "prove",
        &erased_id,
        "--public-key",
        &key,
        "--out",
        &proof_arg,
    ])?;
    assert!(ok, "prove an erased event: {out}");
    let (ok, out) = run(&["check-proof", &proof_arg, "--public-key", &key])?;
    assert!(ok && out.contains("ok inclusion"), "{out}");

    // The same blanking of one of bob's rows by a ClickHouse writer, with no record.
    let bob_id: String = ch
        .query(
            "SELECT toString(event_id) FROM events WHERE user_login = 'bob' ORDER BY raw_offset LIMIT 1",
        )
        .fetch_one()
        .await?;
    let blank: Vec<String> = audit_sink_clickhouse::encoder::ERASABLE_COLUMNS
        .iter()
        .map(|c| format!("{c} = NULL"))
        .collect();
    ch.query(&format!(
        "ALTER TABLE events UPDATE {}, chain_salt = '' WHERE toString(event_id) = ?
         SETTINGS mutations_sync = 2",
        blank.join(", ")
    ))
    .bind(&bob_id)
    .execute()
    .await?;
    let (ok, text) = p.verify(&from, &to, false)?;
    assert!(!ok, "a blanking without a record: {text}");
    let named: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ALTERED") && l.contains("no signed erasure record"))
        .collect();
    assert_eq!(named.len(), 1, "{text}");
    assert!(named[0].contains(&bob_id), "{text}");
    Ok(())
}
