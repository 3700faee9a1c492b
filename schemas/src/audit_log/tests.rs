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
        vec![EntityRef {
            kind: "user".into(),
            id: "21fad3f0-f8a2-4d66-846e-240dca92b16f".into(),
            name: None
        }]
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
    assert_eq!(e.entities.len(), 1);
    assert_eq!(e.entities[0].kind, "element-child");
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
    assert_eq!(d.entities.len(), 1);
    assert_eq!(d.entities[0].name.as_deref(), Some("file_1.txt"));
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
