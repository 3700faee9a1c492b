//! Changes to what the pipeline audits are themselves on record, and the CloudWatch stream map
//! changes live: auditctl, the ingest API and a rule that would drop everything, on the real
//! broker, enricher, sinks, ClickHouse and moto.

use anyhow::{bail, Result};
use audit_schemas::{DirectoryEntry, Group, User};
use audit_tests::pipeline::{Pipeline, Stage};
use audit_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "auditctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The control events in ClickHouse: (type, operator, key, old, new, client ip), in time order.
async fn control_events(
    p: &Pipeline,
    want: usize,
    timeout: Duration,
) -> Vec<(String, String, String, Value, Value, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows: Vec<(String, String, String, String, String, String)> = p
            .clickhouse()
            .query(
                "SELECT event_type, assumeNotNull(claimed_user_id), params['key'], params['old'],
                        params['new'], ifNull(client_ip, '')
                 FROM events
                 WHERE startsWith(event_type, 'audit.')
                   AND event_type NOT IN ('audit.rule-drops', 'audit.chain-digest', 'audit.chain-checkpoint')
                 ORDER BY timestamp",
            )
            .fetch_all()
            .await
            .unwrap_or_default();
        if rows.len() >= want || Instant::now() > deadline {
            return rows
                .into_iter()
                .map(|(t, who, key, old, new, ip)| {
                    let parse = |s: &str| serde_json::from_str(s).unwrap_or(Value::Null);
                    (
                        t,
                        who,
                        parse(&key).as_str().unwrap_or_default().to_string(),
                        parse(&old),
                        parse(&new),
                        ip,
                    )
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn run(out: std::process::Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "auditctl failed: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_set_explained_dry_run_and_deleted_leaves_four_control_events() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    p.put_directory(vec![
        DirectoryEntry::Group(Group {
            id: "g-ctr".into(),
            name: "contractors".into(),
            parent_ids: vec![],
            scim: None,
        }),
        DirectoryEntry::User(User {
            id: "u-carl".into(),
            login: "carl".into(),
            name: None,
            group_ids: vec!["g-ctr".into()],
            scim: None,
        }),
    ])
    .await?;
    // Stored events for the dry run: 5 logs and 3 queries.
    let events: Vec<Value> = (0..8)
        .map(|i| {
            let t = if i < 5 { "log" } else { "query-created" };
            json!({"event_type": t, "source": "SERVER", "message": format!("m{i}")})
        })
        .collect();
    p.post(&events).await?;
    p.wait_for_rows(8, Duration::from_secs(60)).await;
    let db = p.database.clone();
    let alice = [
        ("AUDIT__OPERATOR__NAME", "alice"),
        ("AUDIT__CLICKHOUSE__URL", &clickhouse_url()),
        ("AUDIT__CLICKHOUSE__DATABASE", &db),
    ];

    let (_, warned) = run(p.auditctl(
        &[
            "rules",
            "set",
            "--id",
            "no-jobs",
            "--group",
            "contractors",
            "--group",
            "ghosts",
            "--type",
            "job-*",
            "--action",
            "drop",
        ],
        &alice,
    )?);
    assert!(
        warned.contains("group \"ghosts\" is not in the directory"),
        "{warned}"
    );
    assert!(!warned.contains("contractors"), "{warned}");
    // The enricher follows the rules topic; explain reads it the same way.
    let (explained, _) = run(p.auditctl(
        &["rules", "explain", "--user", "carl", "--type", "job-start"],
        &alice,
    )?);
    assert!(
        explained.contains("decision: DROP by rule no-jobs (matched on group"),
        "{explained}"
    );
    let (dry, warned) = run(p.auditctl(
        &[
            "rules",
            "set",
            "--id",
            "no-logs",
            "--type",
            "log",
            "--type",
            "qurey-*",
            "--action",
            "drop",
            "--dry-run",
        ],
        &alice,
    )?);
    assert!(
        warned.contains("\"qurey-*\" matches no catalog type"),
        "{warned}"
    );
    assert!(
        dry.contains("would have dropped 5 of the last 8 stored events"),
        "{dry}"
    );
    let listed = ok(p.auditctl(&["rules", "list"], &alice)?);
    assert!(
        !listed.contains("no-logs"),
        "a dry run publishes nothing: {listed}"
    );
    run(p.auditctl(&["rules", "delete", "no-jobs"], &alice)?);

    let got = control_events(&p, 4, Duration::from_secs(60)).await;
    let summary: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|(t, who, key, ..)| (t.as_str(), who.as_str(), key.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("audit.rule-set", "alice", "no-jobs"),
            ("audit.rule-explained", "alice", "job-start for u-carl"),
            ("audit.rule-dry-run", "alice", "no-logs"),
            ("audit.rule-deleted", "alice", "no-jobs"),
        ],
        "{got:?}"
    );
    let (_, _, _, old, new, _) = &got[0];
    assert_eq!(*old, Value::Null, "a new rule has no old value");
    assert_eq!(new["action"], "DROP");
    assert_eq!(got[2].4["result"]["would_drop"], 5);
    let (_, _, _, old, new, _) = &got[3];
    assert_eq!(old["event_types"], json!(["job-*"]));
    assert_eq!(*new, Value::Null);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn control_events_survive_a_rule_that_drops_everything() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let alice = [("AUDIT__OPERATOR__NAME", "alice")];

    ok(p.auditctl(
        &[
            "rules", "set", "--id", "drop-all", "--type", "*", "--action", "drop",
        ],
        &alice,
    )?);
    // A directory write through the ingest API names the token's service and the peer.
    let (status, body) = p
        .request(
            reqwest::Method::PUT,
            "/v1/directory/users/u-9",
            Some(json!({"login": "nina", "name": "Nina"})),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    ok(p.auditctl(&["rules", "delete", "drop-all"], &alice)?);

    let got = control_events(&p, 3, Duration::from_secs(60)).await;
    let summary: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|(t, who, key, ..)| (t.as_str(), who.as_str(), key.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("audit.rule-set", "alice", "drop-all"),
            ("audit.directory-set", "e2e", "user:u-9"),
            ("audit.rule-deleted", "alice", "drop-all"),
        ],
        "{got:?}"
    );
    let (_, _, _, _, new, ip) = &got[1];
    assert_eq!(new["login"], "nina");
    assert_eq!(ip, "127.0.0.1");

    // Senders cannot forge one.
    let (status, body) = p
        .request(
            reqwest::Method::POST,
            "/v1/events",
            Some(json!({"event_type": "audit.rule-deleted", "source": "SERVER"})),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_map_change_takes_effect_without_restart() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 1).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let _cloudwatch = p.start(Stage::CloudWatchSink).await?;
    let client = logs_client(&cloudwatch_url()).await;
    let probe = |n: usize| json!({"event_type": "job-start", "source": "SERVER", "message": format!("probe {n}")});
    let stream_of = |streams: &std::collections::BTreeMap<String, Vec<(i64, Value)>>, n: usize| {
        streams.iter().find_map(|(stream, events)| {
            events
                .iter()
                .any(|(_, e)| e["event"]["message"] == format!("probe {n}"))
                .then(|| stream.clone())
        })
    };

    p.post(&[probe(0)]).await?;
    let got = wait_for_events(&client, &p.log_group, 1, Duration::from_secs(60)).await?;
    assert_eq!(stream_of(&got, 0).as_deref(), Some("other"), "{got:?}");

    ok(p.auditctl(
        &["streams", "set", "--type", "job-*", "--stream", "jobs-live"],
        &[("AUDIT__OPERATOR__NAME", "bob")],
    )?);
    // Probes until one lands in the new stream: the running sink takes the change up at a
    // batch after it read it, without a restart.
    let started = Instant::now();
    let mut n = 1;
    loop {
        p.post(&[probe(n)]).await?;
        // Polled for this probe itself: a count of events would be reached by the change's
        // own control event, which CloudWatch gets too.
        let shipped = Instant::now() + Duration::from_secs(30);
        let landed = loop {
            let got = read_group(&client, &p.log_group).await?;
            if let Some(stream) = stream_of(&got, n) {
                break Some(stream);
            }
            if Instant::now() > shipped {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        match landed.as_deref() {
            Some("jobs-live") => break,
            Some("other") if started.elapsed() < Duration::from_secs(60) => n += 1,
            other => bail!(
                "probe {n} went to {other:?} ({:?} after the change)",
                started.elapsed()
            ),
        }
    }
    eprintln!(
        "the new mapping took effect after {:?} ({n} probes)",
        started.elapsed()
    );
    let listed = ok(p.auditctl(&["streams", "list"], &[])?);
    assert!(listed.contains("jobs-live"), "{listed}");

    let got = control_events(&p, 1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let (t, who, key, old, new, _) = &got[0];
    assert_eq!(
        (t.as_str(), who.as_str(), key.as_str()),
        ("audit.stream-map-set", "bob", "job-*")
    );
    assert_eq!(*old, Value::Null);
    assert_eq!(new["stream"], "jobs-live");
    Ok(())
}
