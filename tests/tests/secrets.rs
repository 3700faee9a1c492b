//! The redaction corpus (`schemas/testdata/redaction/secrets.jsonl`) through the whole pipeline,
//! by every way in: the HTTP API, `audit-producer send` (good and invalid lines), the tailer
//! (converted and unconvertible lines) and an undecodable record written straight to the raw
//! topic. Then every byte of every topic, every ClickHouse table, every CloudWatch stream and
//! every service's log (at debug level) is searched for every secret of the corpus.
//!
//! Ids are never redacted, so ids shaped like credentials (a JWT session id, a `Bearer` user id,
//! an AWS key id as entity id, a GitHub token as username) are refused by every way in, and
//! searched for in the same places.

use anyhow::{Context, Result};
use audit_tests::pipeline::{Pipeline, Stage};
use audit_tests::*;
use rdkafka::message::Message;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Deserialize, Clone)]
struct Case {
    text: String,
    secret: String,
    shape: String,
}

fn corpus() -> Vec<Case> {
    let text = include_str!("../../schemas/testdata/redaction/secrets.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("corpus line is JSON"))
        .collect()
}

/// Shapes of issue #25 item 5 the corpus must hold, so this test proves each of them end to end.
const NEW_SHAPES: &[&str] = &[
    "hash rocket",
    "nested form key",
    "nested form key, encoded brackets",
    "percent-encoded pair",
    "percent-encoded pair, double-encoded",
    "percent-encoded JSON",
    "array under a secret key",
    "object under a secret key",
    "oauth code",
    "oauth token in fragment",
    "session cookie",
    "signed session cookie",
];

/// Events whose ids are credentials, each refused at ingest (422), with the path the API must
/// name and the secret that must not be stored anywhere.
fn secret_id_events() -> Vec<(Value, &'static str, Case)> {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzaWQiOiJlMmUtc2Vzc2lvbi03NzEifQ.aWQtaXMtYS1jcmVkZW50aWFsLXNpZ25hdHVyZQ";
    let bearer = "Bearer 7f3kQ9wLp2Zx4mN8vB1c";
    let aws = "AKIAE2EIDSECRET77QZX";
    let github = "ghp_E2eIdSecret0123456789abcdefghijKLMNOP";
    let case = |secret: &str, shape: &str| Case {
        text: secret.to_string(),
        secret: secret.trim_start_matches("Bearer ").to_string(),
        shape: shape.to_string(),
    };
    vec![
        (
            json!({"event_type": "log", "source": "SERVER", "session_id": jwt}),
            "/session_id",
            case(jwt, "jwt session id"),
        ),
        (
            json!({"event_type": "log", "source": "SERVER", "user_id": bearer}),
            "/user_id",
            case(bearer, "bearer user id"),
        ),
        (
            json!({"event_type": "log", "source": "SERVER", "entities": [{"type": "key", "id": aws}]}),
            "/entities/0/id",
            case(aws, "aws key as entity id"),
        ),
        (
            json!({"event_type": "log", "source": "SERVER", "username": github}),
            "/username",
            case(github, "github token as username"),
        ),
    ]
}

/// One event carrying `text` in every free-text field a sender writes.
fn event(text: &str) -> Value {
    json!({
        "event_type": "log",
        "source": "SERVER",
        "message": text,
        "params": {"note": text, "nested": {"detail": [text]}},
        "response": {"body": text},
        "error": {"message": text, "stack_trace": text},
    })
}

/// A line of the server product's audit log carrying `text` in arguments, response and error.
fn audit_log_line(text: &str) -> String {
    json!({
        "timestamp": "2026-11-25T10:00:00.000+01:00",
        "auditCode": "log",
        "userId": "u1",
        "arguments": {"note": text},
        "response": text,
        "error": {"errorMessage": text, "stackTrace": text},
        "success": false,
    })
    .to_string()
}

/// Secrets shorter than this (a 3-digit CVV, a 5-digit PIN) occur by chance in offsets, times
/// and ids, so they cannot be searched for in raw bytes; the corpus test checks them instead.
const SHORTEST_NEEDLE: usize = 8;

/// Where each secret was found: `(shape, place)`.
fn leaks(cases: &[Case], place: &str, bytes: &[u8], found: &mut Vec<String>) {
    for case in cases.iter().filter(|c| c.secret.len() >= SHORTEST_NEEDLE) {
        let escaped = Value::String(case.secret.clone()).to_string();
        let escaped = escaped.trim_matches('"');
        for needle in [case.secret.as_str(), escaped] {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(format!("[{}] {:?} in {place}", case.shape, case.secret));
                break;
            }
        }
    }
}

async fn topic_bytes(topic: &audit_runtime::config::TopicConfig) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for m in consume_all(&topic.name, topic.partitions, Duration::from_secs(3)).await? {
        out.extend_from_slice(m.key().unwrap_or_default());
        out.push(b'\n');
        out.extend_from_slice(m.payload().unwrap_or_default());
        out.push(b'\n');
    }
    Ok(out)
}

async fn count_records(topic: &audit_runtime::config::TopicConfig) -> Result<usize> {
    Ok(
        consume_all(&topic.name, topic.partitions, Duration::from_secs(2))
            .await?
            .len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_of_the_corpus_reaches_a_topic_table_stream_or_log() -> Result<()> {
    let cases = corpus();
    for shape in NEW_SHAPES {
        assert!(
            cases.iter().any(|c| c.shape == *shape),
            "the corpus has no {shape:?} case"
        );
    }
    let id_events = secret_id_events();
    let id_cases: Vec<Case> = id_events.iter().map(|(_, _, c)| c.clone()).collect();
    let pipeline = Pipeline::create(kafka_config(), 2).await?;
    let dir = tempfile::tempdir()?;
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let mut services = Vec::new();
    for stage in Stage::ALL {
        services.push(
            pipeline
                .start_logged(stage, &log(stage.binary()), "debug")
                .await?,
        );
    }

    // 1. The HTTP API.
    let events: Vec<Value> = cases.iter().map(|c| event(&c.text)).collect();
    for chunk in events.chunks(25) {
        pipeline
            .post_until_accepted(chunk, Duration::from_secs(60))
            .await?;
    }

    // 1b. Credential-shaped ids: refused, each naming the id's path and never quoting it.
    for (event, path, case) in &id_events {
        let (status, body) = pipeline
            .request(reqwest::Method::POST, "/v1/events", Some(json!([event])))
            .await?;
        assert_eq!(status, 422, "[{}] {body}", case.shape);
        let printed = body.to_string();
        assert!(
            printed.contains(path) && printed.contains("ids must not be secrets"),
            "[{}] {printed}",
            case.shape
        );
        assert!(
            !printed.contains(&case.secret),
            "[{}] {printed}",
            case.shape
        );
    }

    // 2. `send`: the good events, then a file of invalid ones holding the same texts (refused
    //    whole, with errors that must not quote them).
    let good = dir.path().join("good.ndjson");
    let bad = dir.path().join("bad.ndjson");
    {
        let mut good = std::fs::File::create(&good)?;
        let mut bad = std::fs::File::create(&bad)?;
        for c in &cases {
            writeln!(good, "{}", event(&c.text))?;
            writeln!(
                bad,
                "{}",
                json!({"event_type": 5, "message": c.text, "token": c.text})
            )?;
        }
        for (event, _, _) in &id_events {
            writeln!(bad, "{event}")?;
        }
    }
    let status = pipeline
        .producer_command(
            &["send", good.to_str().context("path")?],
            &log("send"),
            "debug",
        )?
        .status()?;
    assert!(
        status.success(),
        "send failed: {}",
        std::fs::read_to_string(log("send"))?
    );
    let status = pipeline
        .producer_command(
            &["send", bad.to_str().context("path")?],
            &log("send-invalid"),
            "debug",
        )?
        .status()?;
    assert!(!status.success(), "invalid events are refused");

    // 3. The tailer: converted lines, and lines that are no JSON at all (dead letters).
    let audit_log = dir.path().join("lae-audit.log");
    {
        let mut f = std::fs::File::create(&audit_log)?;
        for c in &cases {
            writeln!(f, "{}", audit_log_line(&c.text))?;
            writeln!(f, "not json: {}", c.text.replace(['\n', '\r'], " "))?;
        }
        // A line whose user id is a credential: refused by the converter, a dead letter.
        let mut line: Value = serde_json::from_str(&audit_log_line("id check"))?;
        line["userId"] = json!(id_cases[0].secret);
        writeln!(f, "{line}")?;
    }
    let status = pipeline
        .producer_command(
            &["tail", audit_log.to_str().context("path")?, "--once"],
            &log("tail"),
            "debug",
        )?
        .status()?;
    assert!(
        status.success(),
        "tail failed: {}",
        std::fs::read_to_string(log("tail"))?
    );

    // 4. A record no producer of ours made, straight into the raw topic: the enricher cannot
    //    decode it and dead-letters it.
    let hostile: Vec<u8> = [&[0xc3u8, 0x01, 0xff][..], cases[0].text.as_bytes()].concat();
    produce(&producer()?, &pipeline.topics.raw.name, "hostile", &hostile).await?;

    let stored = 3 * cases.len() as u64;
    let (rows, _) = pipeline
        .wait_for_rows(stored, Duration::from_secs(180))
        .await;
    assert_eq!(rows, stored, "every good event reaches ClickHouse");
    let logs = cloudwatch::logs_client(&cloudwatch_url()).await;
    let streams = cloudwatch::wait_for_events(
        &logs,
        &pipeline.log_group,
        stored as usize,
        Duration::from_secs(180),
    )
    .await?;
    let shipped: usize = streams.values().map(Vec::len).sum();
    assert_eq!(
        shipped, stored as usize,
        "every good event reaches CloudWatch"
    );
    // One per unconvertible line, the hostile record and the line with a credential as user id.
    let letters = cases.len() + 2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count_records(&pipeline.topics.dlq).await? < letters {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {letters} dead letters"
        );
    }
    for mut s in services {
        s.stop()?;
    }

    let mut found = Vec::new();
    for (role, topic) in pipeline.topics.all() {
        let bytes = topic_bytes(topic).await?;
        // The raw topic holds the hostile record as it was written around the producer.
        let checked = if role == "raw" {
            &cases[1..]
        } else {
            &cases[..]
        };
        leaks(checked, &format!("topic {role}"), &bytes, &mut found);
        leaks(&id_cases, &format!("topic {role}"), &bytes, &mut found);
    }
    let ch = pipeline.clickhouse();
    let tables: Vec<String> = ch
        .query("SELECT name FROM system.tables WHERE database = currentDatabase()")
        .fetch_all()
        .await?;
    assert!(tables.iter().any(|t| t == "events"), "{tables:?}");
    for table in &tables {
        let bytes = ch
            .query(&format!("SELECT * FROM `{table}`"))
            .fetch_bytes("TSVRaw")?
            .collect()
            .await?;
        leaks(&cases, &format!("table {table}"), &bytes, &mut found);
        leaks(&id_cases, &format!("table {table}"), &bytes, &mut found);
    }
    for (stream, events) in &streams {
        let bytes = serde_json::to_vec(events)?;
        leaks(&cases, &format!("stream {stream}"), &bytes, &mut found);
        leaks(&id_cases, &format!("stream {stream}"), &bytes, &mut found);
    }
    let logs: Vec<PathBuf> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log") && !is_input(p))
        .collect();
    assert!(logs.len() >= 7, "{logs:?}");
    for path in &logs {
        let bytes = std::fs::read(path)?;
        for cases in [&cases, &id_cases] {
            leaks(
                cases,
                &format!("log {}", path.display()),
                &bytes,
                &mut found,
            );
        }
    }
    assert!(
        found.is_empty(),
        "{} secrets leaked:\n{}",
        found.len(),
        found.join("\n")
    );
    Ok(())
}

fn is_input(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == "lae-audit.log")
}
