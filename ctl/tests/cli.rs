//! `auditctl` as an operator runs it, against the real broker.

use audit_schemas::*;
use audit_tests::*;
use std::process::{Command, Output};
use uuid::Uuid;

fn auditctl(topics: &audit_runtime::TopicsConfig, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditctl"));
    cmd.args(args).env("AUDIT__KAFKA__BROKERS", kafka_brokers());
    for (role, t) in topics.all() {
        let role = role.to_uppercase();
        cmd.env(format!("AUDIT__TOPICS__{role}__NAME"), &t.name)
            .env(
                format!("AUDIT__TOPICS__{role}__PARTITIONS"),
                t.partitions.to_string(),
            );
    }
    cmd.output().expect("auditctl runs")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "auditctl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn topics_create_is_idempotent_and_list_shows_settings() {
    let topics = unique_topics(4);
    let roles = topics.all().len();
    let first = stdout(&auditctl(&topics, &["topics", "create"]));
    assert_eq!(first.matches(" created ").count(), roles, "{first}");
    let second = stdout(&auditctl(&topics, &["topics", "create"]));
    assert_eq!(
        second.matches("exists (left unchanged)").count(),
        roles,
        "{second}"
    );

    let list = stdout(&auditctl(&topics, &["topics", "list"]));
    for (role, t) in topics.all() {
        let line = list
            .lines()
            .find(|l| l.starts_with(&t.name))
            .unwrap_or_else(|| panic!("{} missing from:\n{list}", t.name));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], t.partitions.to_string(), "{line}");
        assert_eq!(cols[2], "1", "{line}");
        assert_eq!(
            cols[3],
            if t.compacted { "compact" } else { "delete" },
            "{line}"
        );
        assert_eq!(cols[4], role, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consume_prints_decoded_records_and_reports_bad_ones() {
    let topics = unique_topics(1);
    stdout(&auditctl(&topics, &["topics", "create"]));
    let producer = producer().unwrap();
    let rule = AuditRule {
        id: "r1".into(),
        order: 1,
        description: Some("no query events for contractors".into()),
        groups: vec!["contractors".into()],
        users: vec![],
        event_types: vec!["query-*".into()],
        action: RuleAction::Drop,
    };
    produce(&producer, &topics.rules.name, "r1", &rule.encode().unwrap())
        .await
        .unwrap();
    produce(&producer, &topics.rules.name, "junk", b"{\"not\":\"avro\"}")
        .await
        .unwrap();
    produce(&producer, &topics.rules.name, "r0", b"")
        .await
        .unwrap();
    let event_id = Uuid::new_v4();
    let dl = DeadLetter {
        original_key: None,
        original_value: Some(b"garbage".to_vec()),
        stage: "enricher".into(),
        reason: "undecodable".into(),
        source_topic: Some(topics.raw.name.clone()),
        source_partition: Some(0),
        source_offset: Some(7),
        failed_at: Timestamp::now(),
        cause: "undecodable".into(),
        original_size: Some(7),
        original_sha256: None,
        original_truncated: false,
    };
    produce(
        &producer,
        &topics.dlq.name,
        &event_id.to_string(),
        &dl.encode().unwrap(),
    )
    .await
    .unwrap();

    let out = stdout(&auditctl(
        &topics,
        &[
            "consume",
            &topics.rules.name,
            "--from-beginning",
            "--exit-at-end",
        ],
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["record"], "AuditRule");
    assert_eq!(lines[0]["value"]["event_types"][0], "query-*");
    assert_eq!(lines[0]["value"]["action"], "DROP");
    assert!(
        lines[1]["error"].as_str().unwrap().contains("C3 01"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["tombstone"], true);

    let out = stdout(&auditctl(
        &topics,
        &[
            "consume",
            &topics.dlq.name,
            "--from-beginning",
            "--max",
            "1",
        ],
    ));
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["record"], "DeadLetter");
    assert_eq!(line["value"]["reason"], "undecodable");
    assert_eq!(line["value"]["original_value"]["text"], "garbage");
    assert_eq!(line["key"], event_id.to_string());
}

#[test]
fn a_missing_topic_and_bad_settings_are_clear_errors() {
    let topics = unique_topics(1);
    let o = auditctl(&topics, &["consume", "no.such.topic", "--from-beginning"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no.such.topic does not exist"));

    let o = Command::new(env!("CARGO_BIN_EXE_auditctl"))
        .args(["topics", "list"])
        .env("AUDIT__TOPICS__RAW__PARTITIONS", "0")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("topics.raw.partitions"));
}

#[test]
fn rules_set_list_delete_and_directory_records() {
    let topics = unique_topics(1);
    stdout(&auditctl(&topics, &["topics", "create"]));
    stdout(&auditctl(
        &topics,
        &[
            "rules",
            "set",
            "--id",
            "no-queries",
            "--order",
            "5",
            "--group",
            "contractors",
            "--type",
            "query-*",
            "--action",
            "drop",
        ],
    ));
    let dir = std::env::temp_dir().join(unique("rule"));
    std::fs::write(
        &dir,
        "id = \"keep-admins\"\norder = 1\ngroups = [\"admins\"]\naction = \"keep\"\n",
    )
    .unwrap();
    stdout(&auditctl(
        &topics,
        &["rules", "set", "--file", dir.to_str().unwrap()],
    ));
    let list = stdout(&auditctl(&topics, &["rules", "list"]));
    let rows: Vec<Vec<&str>> = list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert_eq!(rows[0][..3], ["1", "keep-admins", "keep"]);
    assert_eq!(
        rows[1],
        ["5", "no-queries", "drop", "contractors", "*", "query-*"]
    );

    stdout(&auditctl(&topics, &["rules", "delete", "no-queries"]));
    let list = stdout(&auditctl(&topics, &["rules", "list"]));
    assert!(!list.contains("no-queries"), "{list}");

    let bad = auditctl(
        &topics,
        &[
            "rules", "set", "--id", "x", "--type", "query-[", "--action", "drop",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid glob"));

    stdout(&auditctl(
        &topics,
        &[
            "directory",
            "put-group",
            "--id",
            "g1",
            "--name",
            "analysts",
            "--parent",
            "g0",
        ],
    ));
    stdout(&auditctl(
        &topics,
        &[
            "directory",
            "put-user",
            "--id",
            "u1",
            "--login",
            "alice",
            "--group",
            "g1",
        ],
    ));
    stdout(&auditctl(
        &topics,
        &[
            "directory",
            "put-session",
            "--id",
            "s1",
            "--user",
            "u1",
            "--ip",
            "10.0.0.1",
        ],
    ));
    stdout(&auditctl(&topics, &["directory", "delete", "session:s1"]));
    let out = stdout(&auditctl(
        &topics,
        &[
            "consume",
            &topics.directory.name,
            "--from-beginning",
            "--exit-at-end",
        ],
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["group:g1", "user:u1"]);
    assert_eq!(lines[1]["value"]["entry"]["User"]["login"], "alice");
    // Sessions live on their own topic, keyed by their id as the raw events are.
    let out = stdout(&auditctl(
        &topics,
        &[
            "consume",
            &topics.sessions.name,
            "--from-beginning",
            "--exit-at-end",
        ],
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["s1", "s1"]);
    assert_eq!(lines[0]["value"]["entry"]["Session"]["ip"], "10.0.0.1");
    assert_eq!(lines[1]["tombstone"], true);
}

#[test]
fn directory_import_then_get_and_list() {
    let topics = unique_topics(1);
    stdout(&auditctl(&topics, &["topics", "create"]));
    let dir = std::env::temp_dir().join(format!("auditctl-dir-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("people.csv");
    std::fs::write(
        &csv,
        "kind,id,login,name,group_ids,parent_ids\n\
         group,g-root,,Everyone,,\n\
         group,g-1,,Analysts,,g-root\n\
         user,u-1,ann,\"Ann, A.\",g-1;g-root,\n\
         user,u-2,bob,,g-root,\n",
    )
    .unwrap();
    let out = stdout(&auditctl(
        &topics,
        &["directory", "import", csv.to_str().unwrap()],
    ));
    assert!(out.contains("4 entries imported"), "{out}");
    let ndjson = dir.join("sessions.ndjson");
    std::fs::write(
        &ndjson,
        "{\"op\":\"put\",\"kind\":\"session\",\"id\":\"s-1\",\"user_id\":\"u-1\",\"ip\":\"10.0.0.1\"}\n\
         {\"op\":\"put\",\"kind\":\"session\",\"id\":\"s-2\",\"user_id\":\"u-2\"}\n\
         {\"op\":\"delete\",\"kind\":\"user\",\"id\":\"u-2\"}\n",
    )
    .unwrap();
    stdout(&auditctl(
        &topics,
        &["directory", "import", ndjson.to_str().unwrap()],
    ));

    // A file with one bad row imports nothing and names the row and field.
    let bad = dir.join("bad.ndjson");
    std::fs::write(
        &bad,
        "{\"op\":\"put\",\"kind\":\"group\",\"id\":\"g-9\",\"name\":\"x\"}\n{\"op\":\"put\",\"kind\":\"user\",\"id\":\"u-9\"}\n",
    )
    .unwrap();
    let failed = auditctl(&topics, &["directory", "import", bad.to_str().unwrap()]);
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("bad.ndjson:2: /login required"), "{err}");

    let ann = stdout(&auditctl(&topics, &["directory", "get", "user:u-1"]));
    let ann: serde_json::Value = serde_json::from_str(&ann).unwrap();
    assert_eq!(ann["name"], "Ann, A.");
    assert_eq!(ann["group_ids"], serde_json::json!(["g-1", "g-root"]));
    let missing = auditctl(&topics, &["directory", "get", "user:u-2"]);
    assert!(!missing.status.success(), "u-2 was deleted");
    let missing = auditctl(&topics, &["directory", "get", "group:g-9"]);
    assert!(!missing.status.success(), "the bad file imported nothing");

    let sessions = stdout(&auditctl(
        &topics,
        &["directory", "list", "--kind", "session", "--json"],
    ));
    let keys: Vec<String> = sessions
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys, ["session:s-1", "session:s-2"]);
    // What `list --json` prints imports as it is (how sessions are re-published).
    let export = dir.join("sessions.ndjson");
    std::fs::write(&export, &sessions).unwrap();
    let out = stdout(&auditctl(
        &topics,
        &["directory", "import", export.to_str().unwrap()],
    ));
    assert!(out.contains("2 entries imported"), "{out}");
    let in_group = stdout(&auditctl(&topics, &["directory", "list", "--group", "g-1"]));
    assert!(
        in_group.contains("user:u-1") && in_group.contains("group:g-1"),
        "{in_group}"
    );
    assert!(!in_group.contains("g-root "), "{in_group}");
    let of_user = stdout(&auditctl(&topics, &["directory", "list", "--user", "u-1"]));
    assert!(
        of_user.contains("session:s-1") && !of_user.contains("session:s-2"),
        "{of_user}"
    );
}
