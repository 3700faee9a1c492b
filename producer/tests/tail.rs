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

/// The partitions librdkafka put keyed records on, as the tailer computes them for recovery.
#[tokio::test(flavor = "multi_thread")]
async fn the_recovery_partitioner_places_keys_where_the_producer_does() {
    use audit_producer::tail::recovery::Partitioner;
    let topics = unique_topics(3);
    create_topics(&topics).await.unwrap();
    let producer = producer().unwrap();
    let partitioner = Partitioner::from_properties(kafka_config().librdkafka_properties());
    for i in 0..30 {
        let key = format!("session-{i}-{}", uuid::Uuid::new_v4());
        let (partition, _) = produce(&producer, &topics.raw.name, &key, b"x")
            .await
            .unwrap();
        assert_eq!(
            partitioner.partition(key.as_bytes(), 3),
            Some(partition),
            "{key}"
        );
    }
}

/// Writes `count` records of other producers (valid raw events, random sessions, so on every
/// partition) to `topic`.
async fn busy(producer: &rdkafka::producer::FutureProducer, topic: &str, count: usize) {
    use rdkafka::producer::FutureRecord;
    let template = audit_schemas::audit_log::convert_line(
        sample_lines(SEED_003)[0],
        "another-service",
        uuid::Uuid::new_v4(),
        &audit_schemas::redaction::Redactor::default(),
    )
    .unwrap();
    let mut sent = 0;
    while sent < count {
        let chunk = (count - sent).min(10_000);
        let records: Vec<(String, Vec<u8>)> = (0..chunk)
            .map(|_| {
                let mut e = template.clone();
                e.event_id = uuid::Uuid::new_v4();
                e.session_id = Some(uuid::Uuid::new_v4().to_string());
                (e.partition_key(), e.encode().unwrap())
            })
            .collect();
        let deliveries: Vec<_> = records
            .iter()
            .map(|(k, v)| {
                producer
                    .send_result(
                        FutureRecord::to(topic)
                            .key(k.as_str())
                            .payload(v.as_slice()),
                    )
                    .map_err(|(e, _)| e)
                    .unwrap()
            })
            .collect();
        for d in futures::future::join_all(deliveries).await {
            d.unwrap().map_err(|(e, _)| e).unwrap();
        }
        sent += chunk;
    }
}

/// How often each of `ids` is on `topic`, reading every partition to its end.
async fn occurrences(
    topic: &str,
    partitions: i32,
    ids: &HashSet<uuid::Uuid>,
) -> std::collections::HashMap<uuid::Uuid, usize> {
    let consumer = reader_from_beginning(&kafka_config(), topic, partitions).unwrap();
    let mut at_end = HashSet::new();
    let mut seen = std::collections::HashMap::new();
    while at_end.len() < partitions as usize {
        match tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("the raw topic is read to its end")
        {
            Ok(m) => {
                let e = RawAuditEvent::decode(m.payload().unwrap()).unwrap();
                if ids.contains(&e.event_id) {
                    *seen.entry(e.event_id).or_insert(0) += 1;
                }
            }
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
            }
            Err(e) => panic!("reading {topic}: {e}"),
        }
    }
    seen
}

fn saved_pending(position: &Path) -> Option<audit_producer::tail::Pending> {
    let text = std::fs::read_to_string(position).ok()?;
    serde_json::from_str::<audit_producer::tail::Position>(&text)
        .ok()?
        .pending
}

/// A long outage on a busy topic: the tailer died with a batch in flight, half of which had
/// reached the broker, and other producers have written 200,000 records since, on every raw
/// partition (the batch's too). One recovery attempt may take 250 ms, far less than reading them
/// all takes: a recovery that starts over from the batch's marks when cut off (the old one, with
/// its 60 s) never ends on a topic busy enough. This one keeps its progress: killed in the middle
/// of its scan, the next run goes on from where the last one saved, and every line is on the
/// topic exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_on_a_busy_topic_resumes_from_its_saved_progress() {
    use audit_producer::tail::recovery::{Lines, Partitioner};
    use audit_producer::tail::{line_event_id, FileId, Pending, Position};
    let unrelated = env_count("AUDIT_TEST_RECOVERY_RECORDS", 200_000);
    let started = std::time::Instant::now();
    let topics = unique_topics(3);
    create_topics(&topics).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lae-audit.log");
    let position = dir.path().join("lae-audit.log.position");
    let samples = sample_lines(SEED_003);
    let lines: Vec<&str> = (0..40).map(|i| samples[i % samples.len()]).collect();
    append(&log, &lines);

    // The batch as the tailer makes it: the same ids, the same keys.
    let file = FileId::of_path(&log).unwrap();
    let service = audit_producer::config::TailConfig::default().service;
    let redactor = audit_schemas::redaction::Redactor::default();
    let mut offset = 0u64;
    let mut events = Vec::new();
    for line in &lines {
        let id = line_event_id(file, 0, offset);
        if let Ok(e) = audit_schemas::audit_log::convert_line(line, &service, id, &redactor) {
            events.push(e);
        }
        offset += line.len() as u64 + 1;
    }
    assert!(events.len() >= 30, "the seed's lines convert");
    let partitioner = Partitioner::from_properties(kafka_config().librdkafka_properties());
    let keys: Vec<(uuid::Uuid, String)> = events
        .iter()
        .map(|e| (e.event_id, e.partition_key()))
        .collect();
    let batch = Lines::group(
        keys.iter().map(|(id, k)| (*id, k.as_bytes())),
        partitioner,
        3,
    );
    assert!(batch.ids.len() >= 2, "the batch spans partitions");

    // Records before the batch, its marks, then traffic, half the batch, more traffic.
    let producer = producer().unwrap();
    busy(&producer, &topics.raw.name, 5_000).await;
    let marks: Vec<(i32, i64)> = audit_runtime::kafka::watermarks(
        rdkafka::producer::Producer::client(&producer),
        &topics.raw.name,
        &[0, 1, 2],
        Duration::from_secs(10),
    )
    .unwrap()
    .into_iter()
    .map(|(p, _, high)| (p, high))
    .collect();
    busy(&producer, &topics.raw.name, unrelated / 2).await;
    let delivered = events.len() / 2;
    publisher(&topics, 100_000)
        .unwrap()
        .publish(&events[..delivered])
        .await
        .unwrap();
    busy(&producer, &topics.raw.name, unrelated - unrelated / 2).await;

    eprintln!(
        "{unrelated} other records written after {:?}",
        started.elapsed()
    );
    // The position as the crash left it: the batch in flight, never scanned.
    let crashed = Position {
        path: log.clone(),
        file,
        offset: 0,
        generation: 0,
        pending: Some(Pending {
            end: std::fs::metadata(&log).unwrap().len(),
            watermarks: marks.clone(),
            lines: Some(batch),
            scan: None,
        }),
    };
    std::fs::write(&position, serde_json::to_vec(&crashed).unwrap()).unwrap();

    // First run: killed once it has saved some progress.
    let budget = [("AUDIT__TAIL__RECOVERY_BUDGET_MS", "250")];
    let mut first = Killed(tail_with(&topics, &log, true, &budget));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let interrupted = loop {
        let scan = saved_pending(&position).and_then(|p| p.scan);
        if scan.is_some_and(|s| s.read > 0) {
            first.0.kill().unwrap(); // SIGKILL
            first.0.wait().unwrap();
            break saved_pending(&position).expect("killed before the recovery finished; raise AUDIT_TEST_RECOVERY_RECORDS if this fails");
        }
        if let Ok(Some(status)) = first.0.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = first.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            panic!("the first run ended ({status}) before saving any recovery progress: {stderr}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery progress was saved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("first run killed after {:?}", started.elapsed());
    let scan = interrupted.scan.unwrap();
    let until = scan.until.clone().expect("the end of the scan is saved");
    let from = |p: i32| {
        scan.next
            .iter()
            .chain(marks.iter())
            .find(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .unwrap()
    };
    assert!(
        scan.next.iter().any(|&(p, o)| o > from_marks(&marks, p)),
        "the saved progress is past the batch's marks: {scan:?}"
    );
    let left: i64 = until.iter().map(|&(p, to)| (to - from(p)).max(0)).sum();
    assert!(
        left > 0,
        "the first run was cut off with records left to read"
    );

    // Second run: goes on from the saved progress, however small its budget.
    let out = tail_with(
        &topics,
        &log,
        true,
        &[budget[0], ("AUDIT__LOG__FORMAT", "json")],
    )
    .wait_with_output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tail failed: {stderr}");
    let summary = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("recovered a batch in flight"))
        })
        .unwrap_or_else(|| panic!("the recovery's summary is logged: {stderr}"));
    let read = summary["records_read"]
        .as_i64()
        .unwrap_or_else(|| panic!("records_read in {summary}"));
    eprintln!(
        "second run ended after {:?}: {summary}; the first left {left} records",
        started.elapsed()
    );
    assert!(
        read <= left,
        "the second run read {read} records, more than the {left} the first left: it started over"
    );
    assert!(
        stderr.contains(&format!("published {} events", events.len() - delivered)),
        "only the lines that had not arrived are sent: {stderr}"
    );

    // Every line of the batch exactly once on the topic.
    let ids: HashSet<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    let seen = occurrences(&topics.raw.name, 3, &ids).await;
    eprintln!("raw topic read back after {:?}", started.elapsed());
    for id in &ids {
        assert_eq!(seen.get(id), Some(&1), "line {id} once");
    }
}

fn from_marks(marks: &[(i32, i64)], p: i32) -> i64 {
    marks.iter().find(|(q, _)| *q == p).map_or(0, |(_, o)| *o)
}
