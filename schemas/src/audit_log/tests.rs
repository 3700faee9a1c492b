use super::*;

const SEED: &str = include_str!("../../testdata/seed-003-server-audit-log.txt");

fn convert(line: &str) -> RawAuditEvent {
    convert_line(
        line,
        "data360-analyze",
        Uuid::new_v4(),
        &Redactor::default(),
    )
    .unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn find(code: &str) -> RawAuditEvent {
    let line = sample_lines(SEED)
        .into_iter()
        .find(|l| {
            l.contains(&format!("\"auditCode\":\"{code}\""))
                || l.contains(&format!("\"auditCode\": \"{code}\""))
        })
        .unwrap_or_else(|| panic!("no sample with auditCode {code}"));
    convert(line)
}

#[test]
fn every_sample_line_of_the_seed_converts() {
    let lines = sample_lines(SEED);
    assert_eq!(lines.len(), 52, "the seed holds 52 sample lines");
    for line in lines {
        let e = convert(line);
        assert_eq!(e.source, Source::Server);
        assert_eq!(e.tenant.as_deref(), Some("defaultTenant"));
        // Every value we store as JSON text must be JSON.
        for (k, v) in &e.params {
            serde_json::from_str::<Value>(v).unwrap_or_else(|err| panic!("param {k}: {err}"));
        }
        if let Some(r) = &e.response {
            serde_json::from_str::<Value>(r).unwrap();
        }
        // And it must survive the wire format.
        use crate::AvroRecord;
        assert_eq!(RawAuditEvent::decode(&e.encode().unwrap()).unwrap(), e);
    }
}

#[test]
fn maps_the_documented_fields() {
    let e = find("userService.create");
    assert_eq!(e.event_type.as_str(), "userService.create");
    assert_eq!(
        e.timestamp,
        Timestamp::parse_rfc3339("2018-11-05T11:28:18.664Z").unwrap()
    );
    assert_eq!(e.user_id.as_deref(), Some("admin"));
    assert_eq!(e.username.as_deref(), Some("admin"));
    assert!(e.success);
    assert_eq!(
        e.params["containerLocator"],
        "\"object:!tenant:defaultTenant\""
    );
    let user: Value = serde_json::from_str(&e.params["user"]).unwrap();
    assert_eq!(user["name"], "NewUser");
    assert_eq!(
        e.response.as_deref(),
        Some("\"object:!tenant:defaultTenant~user:21fad3f0-f8a2-4d66-846e-240dca92b16f\"")
    );
    assert_eq!(
        e.entities,
        vec![EntityRef::target(
            "user",
            "21fad3f0-f8a2-4d66-846e-240dca92b16f",
            None
        )]
    );
}

#[test]
fn not_output_secrets_are_kept_redacted() {
    let e = find("userCredentialService.updateCurrentUserPassword");
    assert_eq!(e.params["oldPassword"], "\"[NOT OUTPUT]\"");
    assert_eq!(e.params["newPassword"], "\"[NOT OUTPUT]\"");
}

#[test]
fn a_plain_secret_in_a_line_is_redacted() {
    let line = r#"{"timestamp":"2018-11-05T21:47:14.359Z","auditCode":"userCredentialService.createOrUpdate","userId":"admin","username":"admin","tenantName":"defaultTenant","success":true,"arguments":{"password":"hunter2","nested":{"token":"abc"}}}"#;
    let e = convert(line);
    assert_eq!(e.params["password"], "\"[NOT OUTPUT]\"");
    assert!(!e.params["nested"].contains("abc"));
}

#[test]
fn errors_offsets_and_failures() {
    let e = find("resolutionFailed");
    assert!(!e.success);
    let err = e.error.unwrap();
    assert_eq!(
        err.code.as_deref(),
        Some("brain.io.unableToResolveWorkspaceFileStoreLocation")
    );
    assert!(err.message.unwrap().ends_with("could not be resolved."));
    assert!(
        e.params.contains_key(REPAIRED_PARAM),
        "the repair is recorded"
    );
    assert_eq!(
        e.timestamp,
        Timestamp::parse_rfc3339("2024-04-03T14:55:38.298148Z").unwrap()
    );
}

#[test]
fn node_locators_with_child_and_spaces_after_colons() {
    let e = find("nodeProcessed");
    let kinds: Vec<_> = e
        .entities
        .iter()
        .map(|x| (x.kind.as_str(), x.role))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("element", EntityRole::Container),
            ("element-child", EntityRole::Target)
        ]
    );
    assert_eq!(e.utc_offset_minutes, Some(-420), "written at -07:00");
    assert_eq!(e.params["elapsedTimeMS"], "266");
    assert_eq!(
        e.timestamp,
        Timestamp::parse_rfc3339("2020-06-05T13:25:01.739Z").unwrap()
    );
}

#[test]
fn locators_in_keys_and_arrays_are_entities() {
    let e = find("editSessionService.save");
    assert!(e
        .entities
        .iter()
        .any(|x| x.kind == "graph" && x.id == "067b1366-488e-4854-b938-0593bc365937"));
    assert!(e.entities.iter().any(|x| x.kind == "edit-session"));
    let d = find("dataFileDownloaded");
    let targets: Vec<_> = d
        .entities
        .iter()
        .filter(|x| x.role == EntityRole::Target)
        .map(|x| (x.kind.as_str(), x.name.as_deref()))
        .collect();
    // The locator's file and the resource path's file: the path names no id.
    assert_eq!(
        targets,
        vec![
            ("data-file", Some("file_1.txt")),
            ("data-file", Some("file_1.txt"))
        ]
    );
    assert!(d.entities.iter().any(|x| x.kind == "data-collection"
        && x.id == "5d772432-e218-4673-85d6-c7a7df24f589"
        && x.role == EntityRole::Container));
    assert!(d
        .entities
        .iter()
        .any(|x| x.kind == "workspace" && x.id == "//admin" && x.role == EntityRole::Container));
}

fn with_role(e: &RawAuditEvent, role: EntityRole) -> Vec<(&str, &str, Option<&str>)> {
    e.entities
        .iter()
        .filter(|x| x.role == role)
        .map(|x| (x.kind.as_str(), x.id.as_str(), x.name.as_deref()))
        .collect()
}

#[test]
fn a_login_is_about_the_person_named_in_its_arguments() {
    let e = find("authenticationSuccess");
    assert_eq!(
        e.user_id.as_deref(),
        Some("_system_"),
        "the actor stays the system user"
    );
    assert_eq!(
        with_role(&e, EntityRole::Subject),
        vec![("user", "User1234", Some("User1234"))]
    );
    let failed = convert(
        r#"{"timestamp":"2018-11-05T09:58:00Z","auditCode":"authenticationFailure","userId":"_system_","username":"system","tenantName":"defaultTenant","success":false,"arguments":{"remoteHost":null,"username":"mallory"}}"#,
    );
    assert_eq!(
        with_role(&failed, EntityRole::Subject),
        vec![("user", "mallory", Some("mallory"))]
    );
    // Configuring authentication is not a login.
    let conf = find("authenticationConfigurationService.create");
    assert!(with_role(&conf, EntityRole::Subject).is_empty());
}

#[test]
fn a_credential_entry_is_about_the_user_whose_password_it_is() {
    let own = find("userCredentialService.updateCurrentUserPassword");
    assert_eq!(
        with_role(&own, EntityRole::Subject),
        vec![(
            "user",
            "21fad3f0-f8a2-4d66-846e-240dca92b16f",
            Some("User1234")
        )]
    );
    let by_admin = find("userCredentialService.createOrUpdate");
    assert_eq!(
        with_role(&by_admin, EntityRole::Subject),
        vec![("user", "19e5d5c7-a7ab-4bc0-b571-c90c57b53a8e", None)]
    );
}

#[test]
fn a_scheduled_run_names_its_schedule_as_the_actor() {
    let e = find("executionPlanExecute");
    assert_eq!(
        with_role(&e, EntityRole::Actor),
        vec![(
            "scheduled-task",
            "4930fcfe-2e64-49db-a5c2-bb67bdf7bcf3",
            Some("new schedule")
        )]
    );
    assert_eq!(
        with_role(&e, EntityRole::Target),
        vec![(
            "execution-plan",
            "3730329e-f1b4-4948-a36d-eabf4bd2ea0b",
            None
        )]
    );
    assert!(with_role(&e, EntityRole::Container).contains(&(
        "scheduled-task",
        "4930fcfe-2e64-49db-a5c2-bb67bdf7bcf3",
        None
    )));
}

#[test]
fn a_schedule_links_to_its_data_flow_and_sits_in_its_folder() {
    let e = find("simpleScheduledTaskService.create");
    assert_eq!(
        with_role(&e, EntityRole::Linked),
        vec![("graph", "6ca06e21-73d0-4816-b44d-238903d3768f", None)],
        "the worked example's data flow"
    );
    assert_eq!(
        with_role(&e, EntityRole::Target),
        vec![(
            "scheduled-task",
            "6e140249-5b0d-4428-9913-c19672336633",
            None
        )]
    );
    // The folder is the containerLocator's leaf and the response's container: a container.
    assert!(with_role(&e, EntityRole::Container).contains(&(
        "directory",
        "c5eb280e-773f-d5bc-679a-455d6d702462",
        None
    )));
    assert!(!with_role(&e, EntityRole::Target)
        .iter()
        .any(|(k, _, _)| *k == "directory"));
}

#[test]
fn a_node_entry_links_to_its_node_audit_log() {
    let e = convert(
        r#"{"timestamp":"2024-04-03T16:57:56+02:00","auditCode":"nodeProcessed","userId":"admin","username":"admin","tenantName":"defaultTenant","success":true,"arguments":{"node":"Untitled Data Flow.Output","auditLog":"C:\\site-7731\\logs\\nodes\\2024-04-03\\admin\\Untitled Data Flow\\aaf03abb\\17.log"}}"#,
    );
    assert_eq!(
        with_role(&e, EntityRole::Linked),
        vec![(
            NODE_LOG_KIND,
            "2024-04-03/admin/Untitled Data Flow/aaf03abb/17.log",
            Some("17.log")
        )]
    );
    assert_eq!(e.utc_offset_minutes, Some(120));
    assert_eq!(
        node_log_id("/srv/site/logs/nodes/2024-04-03/admin/Flow/run/17.log").as_deref(),
        Some("2024-04-03/admin/Flow/run/17.log")
    );
    assert_eq!(
        node_log_id("2024-04-03/admin/Flow/run/17.log").as_deref(),
        Some("2024-04-03/admin/Flow/run/17.log")
    );
    assert_eq!(node_log_id("  "), None);
}

#[test]
fn duplicate_keys_keep_the_last() {
    let e = find("scheduledTaskConfigurationService.create");
    let conf: Value = serde_json::from_str(&e.params["configuration"]).unwrap();
    assert!(conf["properties"]["clearTemporaryFilesSuccessfulRuns"]["encrypted"].is_null());
}

#[test]
fn bad_lines_get_clear_errors() {
    let r = Redactor::default();
    let id = Uuid::new_v4();
    assert!(matches!(
        convert_line("  ", "s", id, &r),
        Err(AuditLogError::Empty)
    ));
    assert!(matches!(
        convert_line("not json", "s", id, &r),
        Err(AuditLogError::NotJson(_))
    ));
    assert!(matches!(
        convert_line("[1]", "s", id, &r),
        Err(AuditLogError::NotObject)
    ));
    assert!(matches!(
        convert_line(r#"{"auditCode":"x"}"#, "s", id, &r),
        Err(AuditLogError::Missing("timestamp"))
    ));
    let e = convert_line(r#"{"timestamp":"yesterday","auditCode":"x"}"#, "s", id, &r).unwrap_err();
    assert!(e.to_string().contains("timestamp"), "{e}");
    let e = convert_line(
        r#"{"timestamp":"2018-11-05T21:47:14Z","auditCode":"bad code!"}"#,
        "s",
        id,
        &r,
    )
    .unwrap_err();
    assert!(e.to_string().contains("auditCode"), "{e}");
    // A truncated line that no closing quote repairs stays an error.
    assert!(convert_line(
        r#"{"timestamp":"2018-11-05T21:47:14Z","auditCode":"x","arguments":{"a":[1,"#,
        "s",
        id,
        &r
    )
    .is_err());
}

#[test]
fn unknown_top_level_fields_are_kept_as_params() {
    let e =
        convert(r#"{"timestamp":"2018-11-05T21:47:14Z","auditCode":"x","scheduledTaskId":"42"}"#);
    assert_eq!(e.params["scheduledTaskId"], "\"42\"");
}
