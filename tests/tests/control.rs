//! Changes to what the pipeline audits are themselves on record, and the CloudWatch stream map
//! changes live: auditctl, the ingest API and a rule that would drop everything, on the real
//! broker, enricher, sinks, ClickHouse and moto.

use anyhow::{bail, Result};
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
                 WHERE startsWith(event_type, 'audit.') AND event_type != 'audit.rule-drops'
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

#[tokio::test(flavor = "multi_thread")]
async fn control_changes_are_events_no_rule_drops() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let _enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    let alice = [("AUDIT__OPERATOR__NAME", "alice")];

    // A rule that drops every event: its own record, and its deletion's, still arrive.
    ok(p.auditctl(
        &[
            "rules", "set", "--id", "drop-all", "--type", "*", "--action", "drop",
        ],
        &alice,
    )?);
    ok(p.auditctl(&["rules", "delete", "drop-all"], &alice)?);
    // A directory write through the ingest API names the token's service and the peer.
    let (status, body) = p
        .request(
            reqwest::Method::PUT,
            "/v1/directory/users/u-9",
            Some(json!({"login": "nina", "name": "Nina"})),
        )
        .await?;
    assert_eq!(status, 202, "{body}");

    let got = control_events(&p, 3, Duration::from_secs(60)).await;
    let summary: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|(t, who, key, ..)| (t.as_str(), who.as_str(), key.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("audit.rule-set", "alice", "drop-all"),
            ("audit.rule-deleted", "alice", "drop-all"),
            ("audit.directory-set", "e2e", "user:u-9"),
        ],
        "{got:?}"
    );
    let (_, _, _, old, new, _) = &got[0];
    assert_eq!(*old, Value::Null, "a new rule has no old value");
    assert_eq!(new["action"], "DROP");
    let (_, _, _, old, new, _) = &got[1];
    assert_eq!(old["event_types"], json!(["*"]));
    assert_eq!(*new, Value::Null);
    let (_, _, _, _, new, ip) = &got[2];
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
        let got = wait_for_events(&client, &p.log_group, n + 1, Duration::from_secs(30)).await?;
        match stream_of(&got, n).as_deref() {
            Some("jobs-live") => break,
            Some("other") if started.elapsed() < Duration::from_secs(60) => n += 1,
            other => bail!("probe {n} went to {other:?} a minute after the change"),
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
