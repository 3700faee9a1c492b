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
    tail_with(topics, log, once, &[])
}

fn tail_with(
    topics: &audit_runtime::TopicsConfig,
    log: &Path,
    once: bool,
    env: &[(&str, &str)],
) -> Child {
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
        .envs(env.iter().copied())
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
    append_lines(path, lines)
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

/// Every distinct line id on the raw topic, after waiting for `count` records; fails if more
/// than `count` records arrive.
async fn exactly(topics: &audit_runtime::TopicsConfig, count: usize) -> Vec<RawAuditEvent> {
    let events = raw_events(topics, count).await;
    let ids: HashSet<_> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), count, "every line once");
    assert!(
        consume_n(
            &topics.raw.name,
            topics.raw.partitions,
            count + 1,
            Duration::from_secs(2)
        )
        .await
        .is_err(),
        "a line was published twice"
    );
    events
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copytruncate_while_running_loses_nothing() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lae-audit.log");
    let lines = sample_lines(SEED_003);
    append(&log, &lines[..20]);
    let _tail = Killed(tail(&topics, &log, false));
    raw_events(&topics, 20).await;
    // Lines written just before the copy, then the copy and the truncation in place.
    append(&log, &lines[20..25]);
    std::fs::copy(&log, dir.path().join("lae-audit.log.2018-11-06")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, &lines[25..40]);
    exactly(&topics, 40).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rotations_missed_while_down_are_read_in_order_then_the_live_file() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lae-audit.log");
    let lines = sample_lines(SEED_003);
    append(&log, &lines[..10]);
    wait_ok(tail(&topics, &log, true));
    append(&log, &lines[10..15]); // written after the tailer stopped
    std::fs::rename(&log, dir.path().join("lae-audit.log.2018-11-01")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    append(&log, &lines[15..25]);
    std::fs::rename(&log, dir.path().join("lae-audit.log.2018-11-02")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    append(&log, &lines[25..35]);
    wait_ok(tail(&topics, &log, true));
    let events = exactly(&topics, 35).await;
    // One partition (keys differ, but one partition keeps the order): files in order.
    let messages: Vec<String> = events.iter().map(|e| e.event_type.to_string()).collect();
    let expected: Vec<String> = lines[..35]
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["auditCode"].as_str().map(|c| c.trim().to_string()))
                .unwrap_or_else(|| "resolutionFailed".to_string())
        })
        .collect();
    assert_eq!(messages, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_after_the_rename_and_partial_lines_are_published_once_complete() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lae-audit.log");
    let lines = sample_lines(SEED_003);
    append(&log, &lines[..5]);
    // Half a line, no newline yet.
    let (head, rest) = lines[5].split_at(lines[5].len() / 2);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(head.as_bytes())
        .unwrap();
    let _tail = Killed(tail_with(
        &topics,
        &log,
        false,
        &[("AUDIT__TAIL__ROTATION_GRACE_MS", "1500")],
    ));
    raw_events(&topics, 5).await;
    assert!(
        consume_n(&topics.raw.name, 1, 6, Duration::from_secs(2))
            .await
            .is_err(),
        "the partial line waits for its newline"
    );
    // Rotation, and the writer still finishing the renamed file.
    let old = dir.path().join("lae-audit.log.2018-11-07");
    std::fs::rename(&log, &old).unwrap();
    append(&log, &lines[8..11]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&old).unwrap();
    writeln!(f, "{rest}").unwrap();
    append(&old, &lines[6..8]);
    exactly(&topics, 11).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_reads_the_dated_files_first() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lae-audit.log");
    let lines = sample_lines(SEED_003);
    append(&dir.path().join("lae-audit.log.2018-11-01"), &lines[..4]);
    std::thread::sleep(Duration::from_millis(20));
    append(&dir.path().join("lae-audit.log.2018-11-02"), &lines[4..8]);
    std::fs::write(dir.path().join("lae-audit.log.2018-10-31.gz"), b"\x1f\x8b").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    append(&log, &lines[8..12]);
    wait_ok(tail_with(
        &topics,
        &log,
        true,
        &[("AUDIT__TAIL__BACKFILL", "true")],
    ));
    exactly(&topics, 12).await;
}

/// A site's logs folder built from the seed: `lae-audit.log` holds the seed's audit log lines and
/// a `nodeProcessed` entry naming its node log; the node audit log lines of the seed sit in node
/// log files laid out as the product writes them.
struct Site {
    _dir: tempfile::TempDir,
    logs: std::path::PathBuf,
    audit_lines: usize,
}

const NODE_RUN: &str = "2024-04-03/admin/Untitled Data Flow/aaf03abb-3461-4c5f-8223-081dd89ebed2";

fn site() -> (Site, Vec<&'static str>) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("site-7731/logs");
    let run = logs.join("nodes").join(NODE_RUN);
    std::fs::create_dir_all(&run).unwrap();
    let (node_lines, audit): (Vec<&str>, Vec<&str>) = sample_lines(SEED_003)
        .into_iter()
        .partition(|l| l.contains("\"dataFlowLocator\""));
    assert_eq!(node_lines.len(), 3, "the seed's node audit log lines");
    let processed = format!(
        r#"{{"timestamp":"2024-04-03T16:57:56.0000001+02:00","auditCode":"nodeProcessed","userId":"admin","username":"admin","tenantName":"defaultTenant","success":false,"arguments":{{"node":"Untitled Data Flow.Output","runState":"FAILED","auditLog":"{}"}}}}"#,
        run.join("17.log").display()
    );
    let mut lines = audit.clone();
    lines.push(&processed);
    append(&logs.join("lae-audit.log"), &lines);
    append(&run.join("17.log"), &node_lines);
    let audit_lines = lines.len();
    (
        Site {
            _dir: dir,
            logs,
            audit_lines,
        },
        node_lines,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_folder_publishes_its_audit_log_and_every_node_log_once() {
    let topics = unique_topics(3);
    create_topics(&topics).await.unwrap();
    let (site, node_lines) = site();
    let node_log_id = format!("{NODE_RUN}/17.log");

    wait_ok(tail(&topics, &site.logs, true));
    let first = exactly(&topics, site.audit_lines + node_lines.len()).await;
    let from_node_log: Vec<&RawAuditEvent> = first
        .iter()
        .filter(|e| {
            e.entities.iter().any(|x| {
                x.kind == "node-audit-log" && x.id == node_log_id && x.role == EntityRole::Container
            })
        })
        .collect();
    assert_eq!(from_node_log.len(), 3, "each node log line names its file");
    let processed = first
        .iter()
        .find(|e| e.event_type.as_str() == "nodeProcessed" && !e.success)
        .unwrap();
    assert!(
        processed.entities.iter().any(|x| x.kind == "node-audit-log"
            && x.id == node_log_id
            && x.role == EntityRole::Linked),
        "the nodeProcessed entry links to the same file: {:?}",
        processed.entities
    );

    // More runs: a line appended to the finished log, a new run's log whose last line has no
    // newline, a symlink planted in the tree (never read) and a file that is not a log.
    let run = site.logs.join("nodes").join(NODE_RUN);
    append(&run.join("17.log"), &node_lines[..1]);
    let second = site.logs.join("nodes/2024-04-04/bob/Flow/d8b0595d");
    std::fs::create_dir_all(&second).unwrap();
    append(&second.join("5.log"), &node_lines[1..2]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(second.join("5.log"))
        .unwrap();
    write!(f, "{}", node_lines[2]).unwrap();
    drop(f);
    std::fs::write(site.logs.join("secret"), node_lines[0]).unwrap();
    std::os::unix::fs::symlink(site.logs.join("secret"), second.join("6.log")).unwrap();
    std::fs::write(second.join("notes.txt"), b"not a log\n").unwrap();

    wait_ok(tail(&topics, &site.logs, true));
    let all = exactly(&topics, site.audit_lines + node_lines.len() + 3).await;
    let new: Vec<&RawAuditEvent> = all
        .iter()
        .filter(|e| first.iter().all(|f| f.event_id != e.event_id))
        .collect();
    assert_eq!(new.len(), 3, "only the new lines: {new:?}");
    assert!(new.iter().all(|e| e
        .entities
        .iter()
        .any(|x| x.kind == "node-audit-log" && x.role == EntityRole::Container)));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_following_node_logs_then_restart_loses_nothing() {
    let topics = unique_topics(3);
    create_topics(&topics).await.unwrap();
    let (site, node_lines) = site();
    // Many node logs, many lines: the kill lands mid-way.
    let per_file = 2_000;
    for n in 0..6 {
        let run = site
            .logs
            .join(format!("nodes/2024-05-0{n}/admin/Flow {n}/run-{n}"));
        std::fs::create_dir_all(&run).unwrap();
        let lines: Vec<&str> = (0..per_file).map(|i| node_lines[i % 3]).collect();
        append(&run.join(format!("{n}.log")), &lines);
    }
    let total = site.audit_lines + node_lines.len() + 6 * per_file;

    let mut child = tail(&topics, &site.logs, false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let state = std::fs::read_to_string(site.logs.join("lae-audit.log.position.nodes")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let read: u64 = state["files"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f["offset"].as_u64().unwrap())
        .sum();
    let written: u64 = std::fs::read_dir(site.logs.join("nodes")).unwrap().count() as u64; // date folders: 1 seed run + 6
    assert_eq!(written, 7);
    let bytes: u64 = (0..6)
        .map(|n| {
            std::fs::metadata(
                site.logs
                    .join(format!("nodes/2024-05-0{n}/admin/Flow {n}/run-{n}/{n}.log")),
            )
            .unwrap()
            .len()
        })
        .sum();
    assert!(
        read > 0 && read < bytes,
        "killed mid-way through the node logs ({read} of {bytes} bytes read); change the timing if this fails"
    );

    wait_ok(tail(&topics, &site.logs, true));
    exactly(&topics, total).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_log_left_idle_is_finished_with_its_unterminated_last_line() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let (site, node_lines) = site();
    let run = site.logs.join("nodes/2024-04-05/carol/Flow/run-9");
    std::fs::create_dir_all(&run).unwrap();
    let log = run.join("9.log");
    append(&log, &node_lines[..1]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    write!(f, "{}", node_lines[1]).unwrap();
    drop(f);

    let _tail = Killed(tail_with(
        &topics,
        &site.logs,
        false,
        &[
            ("AUDIT__TAIL__NODE_IDLE_MS", "500"),
            ("AUDIT__TAIL__NODE_SCAN_MS", "100"),
        ],
    ));
    // The seed run's 3 lines, the audit log, and both lines of the idle log: the last one only
    // once the file has stayed unchanged for the idle time.
    let events = exactly(&topics, site.audit_lines + node_lines.len() + 2).await;
    let from_idle_log = events
        .iter()
        .filter(|e| {
            e.entities
                .iter()
                .any(|x| x.id == "2024-04-05/carol/Flow/run-9/9.log")
        })
        .count();
    assert_eq!(from_idle_log, 2);
}
