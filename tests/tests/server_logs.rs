//! The server product's audit logs through the whole pipeline, as a new user would try them: a
//! site's logs folder built from seed 003 (its audit log lines, a scheduled run of the worked
//! example's schedule, failed logins, and its node audit log lines in a node log file laid out
//! as the product writes it) is tailed into the pipeline, and ClickHouse answers:
//!
//! - the seed's worked example: a data flow's history holds its creation, the schedule made
//!   for it and the schedule's runs (linked through the schedule's `dataflowId`);
//! - a folder's history holds what happened inside it;
//! - failed logins per person count the people named in the arguments, never the system user;
//! - a rule on `connection-created` drops the server's `dataConnectionCreated` too, and the
//!   catalog type is stored beside the code;
//! - each line's UTC offset is kept, and the node log's lines sit with their `nodeProcessed`
//!   entry;
//! - the hash chains over all of it verify.

use audit_schemas::audit_log::sample_lines;
use audit_schemas::{AuditRule, RuleAction, Timestamp};
use audit_tests::pipeline::{Pipeline, Stage};
use audit_tests::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const SEED_003: &str = include_str!("../../schemas/testdata/seed-003-server-audit-log.txt");
/// The worked example's data flow and the schedule created for it.
const DATA_FLOW: &str = "6ca06e21-73d0-4816-b44d-238903d3768f";
const SCHEDULE: &str = "6e140249-5b0d-4428-9913-c19672336633";
const FOLDER: &str = "c5eb280e-773f-d5bc-679a-455d6d702462";
const NODE_RUN: &str = "2024-04-03/admin/Untitled Data Flow/aaf03abb-3461-4c5f-8223-081dd89ebed2";

/// Lines in the seed's format that its samples lack: a run of the worked example's schedule,
/// failed logins, and the `nodeProcessed` entry naming the node log.
fn extra_lines(node_log: &Path) -> Vec<String> {
    let failed = |at: &str, who: &str| {
        format!(
            r#"{{"timestamp":"2018-11-05T{at}Z","auditCode":"authenticationFailure","userId":"_system_","username":"system","tenantName":"defaultTenant","success":false,"arguments":{{"remoteHost":null,"username":"{who}"}},"response":null}}"#
        )
    };
    vec![
        format!(
            r#"{{"timestamp":"2018-11-06T14:09:00.536+01:00","auditCode":"executionPlanExecute","userId":"admin","username":"admin","tenantName":"defaultTenant","success":true,"arguments":{{"taskProperties":{{"executionPlanLocator":"object:!tenant:defaultTenant~directory:__Root__~directory:__Users__~directory:{FOLDER}~scheduled-task:{SCHEDULE}~execution-plan:0d0d0d0d-1111-2222-3333-444444444444"}},"scheduledTaskId":"{SCHEDULE}","scheduledTaskName":"schedule test"}},"response":""}}"#
        ),
        failed("09:58:00.000", "mallory"),
        failed("09:58:05.000", "mallory"),
        failed("09:59:00.000", "User1234"),
        format!(
            r#"{{"timestamp":"2024-04-03T16:57:56.1+02:00","auditCode":"nodeProcessed","userId":"admin","username":"admin","tenantName":"defaultTenant","success":false,"arguments":{{"node":"Untitled Data Flow.Output","runState":"FAILED","auditLog":"{}"}}}}"#,
            node_log.display()
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_folder_answers_the_seeds_questions_from_clickhouse() {
    let pipeline = Pipeline::create(kafka_config(), 2).await.unwrap();
    pipeline
        .put_rule(&AuditRule {
            id: "no-new-connections".into(),
            order: 1,
            description: Some("drop connection-created, whoever sends it".into()),
            groups: vec![],
            users: vec![],
            event_types: vec!["connection-created".into()],
            action: RuleAction::Drop,
        })
        .await
        .unwrap();
    let _enricher = pipeline.start(Stage::Enricher).await.unwrap();
    let _sink = pipeline.start(Stage::ClickHouseSink).await.unwrap();
    let started = Timestamp::now();

    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("site-7731/logs");
    let node_log = logs.join("nodes").join(NODE_RUN).join("17.log");
    let (node_lines, audit): (Vec<&str>, Vec<&str>) = sample_lines(SEED_003)
        .into_iter()
        .partition(|l| l.contains("\"dataFlowLocator\""));
    let mut audit: Vec<String> = audit.into_iter().map(str::to_string).collect();
    audit.extend(extra_lines(&node_log));
    append_lines(&logs.join("lae-audit.log"), &audit);
    append_lines(&node_log, &node_lines);

    let tail_log = dir.path().join("tail.log");
    let status = pipeline
        .producer_command(
            &["tail", logs.to_str().unwrap(), "--once"],
            &tail_log,
            "info",
        )
        .unwrap()
        .status()
        .unwrap();
    assert!(
        status.success(),
        "tail: {}",
        std::fs::read_to_string(&tail_log).unwrap()
    );

    // Every line arrives once, less the one the rule drops.
    let lines = (audit.len() + node_lines.len()) as u64;
    let (rows, ids) = pipeline
        .wait_for_rows(lines - 1, Duration::from_secs(120))
        .await;
    assert_eq!((rows, ids), (lines - 1, lines - 1), "every kept line once");
    let drops = pipeline.rule_drops(1, Duration::from_secs(30)).await;
    assert_eq!(drops.get("no-new-connections"), Some(&1));

    let ch = pipeline.clickhouse();
    let stored: Vec<String> = ch
        .query(
            "SELECT event_type FROM events WHERE catalog_kind = 'connection' ORDER BY event_type",
        )
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        stored,
        ["dataConnectionDeleted", "dataConnectionUpdated"],
        "dataConnectionCreated dropped by the rule on connection-created; the others kept"
    );
    let (catalog_type, action): (String, String) = ch
        .query("SELECT catalog_type, catalog_action FROM events WHERE event_type = 'dataConnectionUpdated'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (catalog_type.as_str(), action.as_str()),
        ("connection-edited", "edited")
    );

    // The seed's worked example, by the analyst query shipped for it.
    let history = |entity_type: &'static str, entity_id: &'static str| {
        let sql = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sink-clickhouse/queries/entity_history.sql"
        ))
        .unwrap()
        .replace("audit.", &format!("{}.", pipeline.database));
        let ch = pipeline.clickhouse();
        async move {
            ch.query(&sql)
                .param("entity_type", entity_type)
                .param("entity_id", entity_id)
                .fetch_all::<HistoryRow>()
                .await
                .unwrap()
        }
    };
    let flow = history("graph", DATA_FLOW).await;
    let got: Vec<&str> = flow.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(
        got,
        [
            // 10:20 the data flow is created (its execution session names the graph)...
            "executionSessionService.create",
            // ...14:09 a schedule is made for it (the seed's other sample reuses the schedule id
            // for another data flow: it names the same schedule, so it is in the history too)...
            "simpleScheduledTaskService.create",
            "simpleScheduledTaskService.create",
            // ...and the schedule runs it.
            "executionPlanExecute",
        ],
        "{flow:#?}"
    );
    let run = flow.last().unwrap();
    assert!(
        run.via
            .iter()
            .any(|(t, id, role)| t == "scheduled-task" && id == SCHEDULE && role == "ACTOR"),
        "the run is there through its schedule, its actor: {run:?}"
    );

    // A folder's history holds what was made inside it.
    let folder = history("directory", FOLDER).await;
    let inside: Vec<&str> = folder.iter().map(|r| r.event_type.as_str()).collect();
    for t in [
        "simpleScheduledTaskService.create",
        "simpleScheduledTaskService.update",
        "simpleScheduledTaskService.runNow",
        "executionPlanExecute",
    ] {
        assert!(
            inside.contains(&t),
            "{t} missing from the folder's history: {inside:?}"
        );
    }

    // Failed logins per person: the people, never the system user.
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sink-clickhouse/queries/failed_logins_per_user.sql"
    ))
    .unwrap()
    .replace("audit.", &format!("{}.", pipeline.database));
    let per_person: BTreeMap<String, u64> = ch
        .query(&sql)
        .fetch_all::<FailedLogins>()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.person.unwrap_or_default(), r.failed_logins))
        .collect();
    assert_eq!(
        per_person,
        BTreeMap::from([("User1234".to_string(), 1), ("mallory".to_string(), 2)])
    );

    // Time as written: the node entries were logged at -07:00 and +02:00.
    let offsets: Vec<(String, Option<i32>)> = ch
        .query("SELECT event_type, utc_offset_minutes FROM events WHERE event_type IN ('nodeProcessing', 'fileOpened', 'resolutionFailed') ORDER BY event_type, timestamp")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        offsets,
        [
            ("fileOpened".to_string(), Some(60)),
            ("fileOpened".to_string(), Some(120)),
            ("nodeProcessing".to_string(), Some(-420)),
            ("resolutionFailed".to_string(), Some(120)),
        ]
    );

    // The node log's lines and the entry naming the file, together.
    let node_log_id = format!("{NODE_RUN}/17.log");
    let with_file: Vec<(String, String)> = ch
        .query("SELECT event_type, role FROM entity_activity WHERE entity_type = 'node-audit-log' AND entity_id = ? ORDER BY event_type, role")
        .bind(&node_log_id)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        with_file,
        [
            ("fileOpened".to_string(), "CONTAINER".to_string()),
            ("fileOpened".to_string(), "CONTAINER".to_string()),
            ("nodeProcessed".to_string(), "LINKED".to_string()),
            ("resolutionFailed".to_string(), "CONTAINER".to_string()),
        ]
    );

    // The chains over all of it, entity roles and offsets included, verify.
    pipeline
        .wait_signed(lines - 1, Duration::from_secs(60))
        .await
        .unwrap();
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000).to_rfc3339();
    let (ok, text) = pipeline.verify(&started.to_rfc3339(), &to, false).unwrap();
    assert!(ok, "verify: {text}");
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct HistoryRow {
    #[allow(dead_code)]
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: uuid::Uuid,
    /// DateTime64(6): microseconds.
    #[allow(dead_code)]
    timestamp: i64,
    event_type: String,
    #[allow(dead_code)]
    catalog_type: String,
    #[allow(dead_code)]
    user_login: Option<String>,
    #[allow(dead_code)]
    success: bool,
    via: Vec<(String, String, String)>,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct FailedLogins {
    person: Option<String>,
    failed_logins: u64,
    #[allow(dead_code)]
    first: i64,
    #[allow(dead_code)]
    last: i64,
}
