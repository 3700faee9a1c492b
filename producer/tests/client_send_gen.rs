//! The client library (both transports), `send` and `gen`, against the real broker.

use audit_client::{Logger, Transport};
use audit_producer::auth::Tokens;
use audit_producer::config::TokenConfig;
use audit_producer::http::{router, IngestState, Limits};
use audit_runtime::ops::Health;
use audit_schemas::redaction::Redactor;
use audit_schemas::*;
use audit_tests::*;
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn decode_all(messages: &[rdkafka::message::OwnedMessage]) -> Vec<RawAuditEvent> {
    messages
        .iter()
        .map(|m| RawAuditEvent::decode(payload(m).unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn logger_over_kafka_with_defaults_hook_types_and_stack_traces() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let publisher = publisher(&topics, 10_000).unwrap();
    let logger = Logger::builder(Transport::Kafka(publisher), "my-service")
        .defaults(|r| {
            r.params.insert("persistent".into(), json!("value"));
        })
        .build();
    logger
        .log("HELLO WORLD", json!({"test": "value", "foo": "bar"}))
        .unwrap();
    logger
        .log_with_type("HELLO WORLD", json!({"test": "value"}), "my_log")
        .unwrap();
    logger
        .error("Error!", json!({"password": "hunter2"}))
        .unwrap();
    logger.close().await.unwrap();

    let events = decode_all(
        &consume_n(&topics.raw.name, 1, 3, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, vec!["log", "my_log", "error"]);
    for e in &events {
        assert_eq!(
            e.params["persistent"], "\"value\"",
            "the defaults hook ran on every record"
        );
        assert_eq!(e.service, "my-service");
        assert_eq!(
            e.message
                .as_deref()
                .map(|m| m.starts_with("HELLO") || m == "Error!"),
            Some(true)
        );
    }
    assert_eq!(events[0].params["foo"], "\"bar\"");
    let error = &events[2];
    assert!(!error.success);
    assert!(
        error.params["stackTrace"].contains("client_send_gen"),
        "the caller's frames are captured"
    );
    assert!(error.error.as_ref().unwrap().stack_trace.is_some());
    assert_eq!(error.params["password"], "\"[NOT OUTPUT]\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn logger_over_http() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let token = "client-lib-token-0123456789";
    let state = Arc::new(IngestState {
        publisher: publisher(&topics, 10_000).unwrap(),
        tokens: Tokens::new(
            &[TokenConfig {
                token: token.into(),
                service: "web".into(),
                sources: vec![Source::Server],
                scopes: vec![audit_producer::config::Scope::Events],
                tenant: None,
            }],
            None,
        ),
        redactor: Redactor::default(),
        limits: Limits::default(),
        scim: None,
        network: Default::default(),
    });
    let app = router(state, Health::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let logger = Logger::builder(
        Transport::Http {
            url,
            token: token.into(),
        },
        "web",
    )
    .batch(10)
    .build();
    for i in 0..25 {
        logger.log(&format!("m{i}"), json!({"i": i})).unwrap();
    }
    logger.flush().await.unwrap();
    let events = decode_all(
        &consume_n(&topics.raw.name, 1, 25, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let mut seen: Vec<i64> = events
        .iter()
        .map(|e| e.params["i"].parse().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, (0..25).collect::<Vec<_>>());
    logger.close().await.unwrap();
}

fn producer_cmd(topics: &audit_runtime::TopicsConfig) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-producer"));
    cmd.env("AUDIT__KAFKA__BROKERS", kafka_brokers());
    cmd.envs(topics_env(topics));
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn send_reads_ndjson_from_stdin_and_refuses_bad_input_whole() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let run = |input: String| {
        let mut child = producer_cmd(&topics)
            .args(["send", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let bad = run("{\"event_type\":\"log\",\"source\":\"SERVER\"}\n{\"event_type\":\"bad type\",\"source\":\"SERVER\"}\n".into());
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("event 1: /event_type"), "{stderr}");
    assert!(stderr.contains("nothing was published"), "{stderr}");

    let good = run((0..3)
        .map(|i| format!("{{\"event_type\":\"log\",\"source\":\"SERVER\",\"message\":\"{i}\"}}\n"))
        .collect());
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let ids: Vec<String> = String::from_utf8(good.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(ids.len(), 3);
    let events = decode_all(
        &consume_n(&topics.raw.name, 1, 3, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_id.to_string())
            .collect::<Vec<_>>(),
        ids
    );
    assert!(
        consume_n(&topics.raw.name, 1, 4, Duration::from_secs(2))
            .await
            .is_err(),
        "the bad batch left nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gen_publishes_the_directory_and_every_catalog_type() {
    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let out = producer_cmd(&topics)
        .args(["gen", "--rate", "0", "--count", "94", "--sessions", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = decode_all(
        &consume_n(&topics.raw.name, 2, 94, Duration::from_secs(30))
            .await
            .unwrap(),
    );
    let types: std::collections::HashSet<_> =
        events.iter().map(|e| e.event_type.to_string()).collect();
    assert_eq!(types.len(), 47);
    // 8 groups and 2 users on the directory topic, 4 sessions on the sessions topic, each
    // under the key its topic uses.
    for (topic, partitions, count) in [
        (&topics.directory.name, topics.directory.partitions, 10),
        (&topics.sessions.name, topics.sessions.partitions, 4),
    ] {
        let messages = consume_n(topic, partitions, count, Duration::from_secs(30))
            .await
            .unwrap();
        for m in &messages {
            let r = DirectoryRecord::decode(payload(m).unwrap()).unwrap();
            assert_eq!(
                rdkafka::message::Message::key(m),
                Some(r.key().record_key().as_bytes())
            );
            assert_eq!(
                topics.for_directory(r.key().topic()),
                topic.as_str(),
                "{:?}",
                r.key()
            );
        }
    }
}
