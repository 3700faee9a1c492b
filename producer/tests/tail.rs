//! `audit-producer tail` as a process, against the real broker: every seed line arrives, daily
//! rotation is followed, bad lines become dead letters, and a kill -9 loses nothing.

use audit_schemas::audit_log::sample_lines;
use audit_schemas::*;
use audit_tests::*;
use rdkafka::message::Message;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SEED_003: &str = include_str!("../../schemas/testdata/seed-003-server-audit-log.txt");

fn tail(topics: &audit_runtime::TopicsConfig, log: &Path, once: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-producer"));
    cmd.arg("tail").arg(log);
    if once {
        cmd.arg("--once");
    }
    cmd.env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__TOPICS__RAW__NAME", &topics.raw.name)
        .env("AUDIT__TOPICS__DLQ__NAME", &topics.dlq.name)
        .env("AUDIT__TAIL__BATCH_LINES", "50")
        .env("AUDIT__TAIL__POLL_MS", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("audit-producer starts")
}

fn wait_ok(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn append(path: &Path, lines: &[&str]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

async fn raw_events(topics: &audit_runtime::TopicsConfig, count: usize) -> Vec<RawAuditEvent> {
    consume_n(
        &topics.raw.name,
        topics.raw.partitions,
        count,
        Duration::from_secs(60),
    )
    .await
    .unwrap()
    .iter()
    .map(|m| RawAuditEvent::decode(payload(m).unwrap()).unwrap())
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_seed_line_arrives_across_a_rotation_and_bad_lines_are_dead_lettered() {
    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lae-audit.log");
    let lines = sample_lines(SEED_003);
    let (day1, day2) = lines.split_at(30);

    append(&log, day1);
    append(
        &log,
        &[
            "this is not json",
            "{\"timestamp\":\"2018-11-05T10:20:29.411Z\"}",
        ],
    );
    wait_ok(tail(&topics, &log, true));

    // Daily rotation: the file is renamed with a date suffix and a new one starts.
    std::fs::rename(&log, dir.path().join("lae-audit.log.2018-11-05")).unwrap();
    append(&log, day2);
    wait_ok(tail(&topics, &log, true));

    let events = raw_events(&topics, lines.len()).await;
    let codes: Vec<String> = events.iter().map(|e| e.event_type.to_string()).collect();
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
            // The seed's one unterminated line: the converter repairs it.
            serde_json::json!({"auditCode": "resolutionFailed"})
        });
        assert!(codes.contains(&v["auditCode"].as_str().unwrap().trim().to_string()));
    }
    let ids: HashSet<_> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), lines.len(), "every line once");
    // Nothing more than the lines (no repeats after the restart).
    assert!(
        consume_n(&topics.raw.name, 2, lines.len() + 1, Duration::from_secs(2))
            .await
            .is_err()
    );

    let letters = consume_n(
        &topics.dlq.name,
        topics.dlq.partitions,
        2,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let mut letters: Vec<DeadLetter> = letters
        .iter()
        .map(|m| DeadLetter::decode(payload(m).unwrap()).unwrap())
        .collect();
    letters.sort_by_key(|l| l.source_offset);
    assert_eq!(letters[0].stage, "tailer");
    assert_eq!(
        letters[0].original_value.as_deref(),
        Some(b"this is not json".as_slice())
    );
    assert!(
        letters[0].reason.contains("not JSON"),
        "{}",
        letters[0].reason
    );
    assert!(
        letters[1].reason.contains("auditCode"),
        "{}",
        letters[1].reason
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let topics = unique_topics(3);
    create_topics(&topics).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lae-audit.log");
    let samples = sample_lines(SEED_003);
    let total = 20_000;
    let lines: Vec<&str> = (0..total).map(|i| samples[i % samples.len()]).collect();
    append(&log, &lines);

    let mut child = tail(&topics, &log, false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let position = std::fs::read_to_string(dir.path().join("lae-audit.log.position")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&position).unwrap();
    let file_len = std::fs::metadata(&log).unwrap().len();
    assert!(
        saved["offset"].as_u64().unwrap() < file_len,
        "killed before it finished; raise `total` if this fails"
    );

    wait_ok(tail(&topics, &log, true));

    let got = consume_n(&topics.raw.name, 3, total, Duration::from_secs(120))
        .await
        .unwrap();
    let ids: HashSet<uuid::Uuid> = got
        .iter()
        .map(|m| {
            RawAuditEvent::decode(m.payload().unwrap())
                .unwrap()
                .event_id
        })
        .collect();
    // No line lost: every line's id is there...
    assert_eq!(ids.len(), total);
    // ...and none repeated: nothing beyond the lines.
    let more = consume_n(&topics.raw.name, 3, total + 1, Duration::from_secs(3)).await;
    assert!(more.is_err(), "a line was published twice");
}
