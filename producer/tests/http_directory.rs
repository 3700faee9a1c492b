//! Directory writes over the ingest API (real HTTP, real broker): tokens with the `directory`
//! scope put and delete sessions, users and groups, one at a time or in bulk; the records land
//! on the compacted directory topic keyed as the enricher reads them.

use audit_producer::auth::Tokens;
use audit_producer::config::{Scope, TokenConfig};
use audit_producer::http::{router, IngestState, Limits};
use audit_runtime::ops::Health;
use audit_runtime::TopicsConfig;
use audit_schemas::redaction::Redactor;
use audit_schemas::*;
use audit_tests::*;
use rdkafka::message::Message;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const LOGIN_SERVICE: &str = "test-token-0123456789-login";
const EVENTS_ONLY: &str = "test-token-0123456789-web";

struct Api {
    url: String,
    topics: TopicsConfig,
    http: reqwest::Client,
}

async fn start() -> Api {
    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let publisher = publisher(&topics, 50_000).unwrap();
    let token = |token: &str, scopes: Vec<Scope>| TokenConfig {
        token: token.into(),
        service: "platform".into(),
        sources: vec![Source::Server],
        scopes,
        tenant: None,
    };
    let scim = audit_producer::scim::spawn(
        &kafka_config(),
        &topics.directory.name,
        publisher.clone(),
        Redactor::default(),
        Limits::default(),
        &audit_runtime::Shutdown::new(),
    );
    let state = Arc::new(IngestState {
        publisher,
        tokens: Tokens::new(
            &[
                token(LOGIN_SERVICE, vec![Scope::Events, Scope::Directory]),
                token(EVENTS_ONLY, vec![Scope::Events]),
            ],
            None,
        ),
        redactor: Redactor::default(),
        limits: Limits::default(),
        scim: Some(scim),
        network: Default::default(),
    });
    let app = router(state, Health::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let api = Api {
        url,
        topics,
        http: reqwest::Client::new(),
    };
    // SCIM answers once it has read the directory topic.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api
        .send(
            reqwest::Method::GET,
            "/scim/v2/Users",
            LOGIN_SERVICE,
            "application/scim+json",
            String::new(),
        )
        .await
        .0
        != 200
    {
        assert!(tokio::time::Instant::now() < deadline, "SCIM never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        content_type: &str,
        body: String,
    ) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::PUT,
            path,
            token,
            "application/json",
            body.to_string(),
        )
        .await
    }

    /// Every record of the directory topic, then of the sessions topic: the entry's name
    /// (`user:u`, `session:s`) and decoded value (`None` for a tombstone); waits for `count`.
    async fn directory(&self, count: usize) -> Vec<(String, Option<DirectoryRecord>)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut records = Vec::new();
            for (topic, partitions, prefix) in [
                (
                    &self.topics.directory.name,
                    self.topics.directory.partitions,
                    "",
                ),
                (
                    &self.topics.sessions.name,
                    self.topics.sessions.partitions,
                    "session:",
                ),
            ] {
                for m in consume_all(topic, partitions, Duration::from_secs(2))
                    .await
                    .unwrap()
                {
                    let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                    let value = m
                        .payload()
                        .filter(|p| !p.is_empty())
                        .map(|p| DirectoryRecord::decode(p).unwrap());
                    records.push((format!("{prefix}{key}"), value));
                }
            }
            if records.len() >= count || tokio::time::Instant::now() > deadline {
                return records;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_platform_puts_and_deletes_directory_entries() {
    let api = start().await;
    let (status, body) = api
        .put(
            "/v1/directory/users/u-ann",
            LOGIN_SERVICE,
            json!({"login": "ann@example.com", "name": "Ann", "group_ids": ["g-admins"]}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["keys"], json!(["user:u-ann"]));
    let (status, body) = api
        .put(
            "/v1/directory/groups/g-admins",
            LOGIN_SERVICE,
            json!({"name": "admins"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = api
        .put(
            "/v1/directory/sessions/s-1",
            LOGIN_SERVICE,
            json!({"user_id": "u-ann", "started_at": "2026-11-25T10:00:00Z", "ip": "10.1.2.3"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // Read before the delete: the broker may show a compacted topic's older records with a
    // key's latest value once compaction ran.
    let records = api.directory(3).await;
    assert_eq!(records[0].0, "user:u-ann");
    let Some(DirectoryRecord {
        entry: DirectoryEntry::User(user),
    }) = &records[0].1
    else {
        panic!("{:?}", records[0])
    };
    assert_eq!(user.group_ids, ["g-admins"]);
    assert_eq!(records[1].0, "group:g-admins");
    assert_eq!(records[2].0, "session:s-1");
    let Some(DirectoryRecord {
        entry: DirectoryEntry::Session(session),
    }) = &records[2].1
    else {
        panic!("{:?}", records[2])
    };
    assert_eq!(session.user_id, "u-ann");
    assert_eq!(session.started_at.to_rfc3339(), "2026-11-25T10:00:00Z");

    let (status, body) = api
        .send(
            reqwest::Method::DELETE,
            "/v1/directory/sessions/s-1",
            LOGIN_SERVICE,
            "application/json",
            String::new(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let records = api.directory(4).await;
    assert_eq!(
        records[3],
        ("session:s-1".to_string(), None),
        "a delete is a tombstone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_writes_are_all_or_nothing() {
    let api = start().await;
    let lines = [
        json!({"op": "put", "kind": "group", "id": "g1", "name": "analysts"}),
        json!({"op": "put", "kind": "user", "id": "u1", "login": "bob", "group_ids": ["g1"]}),
        json!({"op": "put", "kind": "session", "id": "s1", "user_id": "u1"}),
        json!({"op": "delete", "kind": "session", "id": "s0"}),
    ];
    let ndjson: String = lines.iter().map(|l| format!("{l}\n")).collect();
    // One bad line refuses the whole request and names the line and field.
    let bad = format!(
        "{ndjson}{}\n",
        json!({"op": "put", "kind": "user", "id": "u2", "login": 7})
    );
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/v1/directory",
            LOGIN_SERVICE,
            "application/x-ndjson",
            bad,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["index"], 4, "{body}");
    assert_eq!(body["errors"][0]["path"], "/login", "{body}");

    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/v1/directory",
            LOGIN_SERVICE,
            "application/x-ndjson",
            ndjson,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let keys: Vec<String> = api.directory(4).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["group:g1", "user:u1", "session:s1", "session:s0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_directory_tokens_write_and_bad_writes_are_named() {
    let api = start().await;
    let (status, body) = api
        .put(
            "/v1/directory/users/u-x",
            EVENTS_ONLY,
            json!({"login": "x"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // The refusal names the scope a user write needs.
    assert!(
        body["error"].as_str().unwrap().contains("\"users\" scope"),
        "{body}"
    );
    let (status, _) = api
        .put(
            "/v1/directory/users/u-x",
            "not-a-token-at-all-0000",
            json!({"login": "x"}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = api
        .put(
            "/v1/directory/teams/t1",
            LOGIN_SERVICE,
            json!({"name": "x"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api
        .put(
            "/v1/directory/sessions/s-2",
            LOGIN_SERVICE,
            json!({"user_id": "", "started_at": "yesterday", "admin": true}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let paths: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for path in ["/user_id", "/started_at", "/admin"] {
        assert!(paths.contains(&path), "{path} not in {body}");
    }
    let (status, _) = api
        .send(
            reqwest::Method::PUT,
            "/v1/directory/users/u-x",
            LOGIN_SERVICE,
            "application/json",
            "{not json".into(),
        )
        .await;
    assert_eq!(status, 400);
    // Nothing refused above reached the topic.
    let records = consume_all(&api.topics.directory.name, 1, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(records.is_empty(), "{} records written", records.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_library_writes_over_both_transports() {
    use audit_client::directory::{Directory, DirectoryError};
    use audit_client::Transport;
    let api = start().await;
    let over_http = Directory::new(Transport::Http {
        url: api.url.clone(),
        token: LOGIN_SERVICE.into(),
    });
    over_http
        .upsert_group("g 1", "analysts", &[])
        .await
        .unwrap();
    over_http
        .upsert_user("u/1", "ann", Some("Ann"), &["g 1"])
        .await
        .unwrap();
    over_http
        .session_started("s-1", "u/1", Some("10.0.0.1"), None)
        .await
        .unwrap();
    // Read before the delete (see above: compaction may rewrite older values of a key).
    let stored: Vec<(String, bool)> = api
        .directory(3)
        .await
        .into_iter()
        .map(|(k, v)| (k, v.is_some()))
        .collect();
    assert_eq!(
        stored,
        [
            ("group:g 1".to_string(), true),
            ("user:u/1".to_string(), true),
            ("session:s-1".to_string(), true),
        ]
    );
    let over_kafka = Directory::new(Transport::Kafka(publisher(&api.topics, 1_000).unwrap()));
    over_kafka.session_ended("s-1").await.unwrap();
    assert!(matches!(
        over_kafka.upsert_user("u-2", "", None, &[]).await,
        Err(DirectoryError::Invalid(_))
    ));
    let events_only = Directory::new(Transport::Http {
        url: api.url.clone(),
        token: EVENTS_ONLY.into(),
    });
    assert!(matches!(
        events_only.session_ended("s-9").await,
        Err(DirectoryError::Send(e)) if e.contains("403")
    ));
    let records = api.directory(4).await;
    assert_eq!(records[3], ("session:s-1".to_string(), None));
}

impl Api {
    async fn scim(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        self.send(
            method,
            &format!("/scim/v2{path}"),
            LOGIN_SERVICE,
            "application/scim+json",
            body,
        )
        .await
    }

    /// The latest value of a directory key, waiting until `ready` accepts it.
    async fn latest(
        &self,
        key: &str,
        ready: impl Fn(&Option<DirectoryRecord>) -> bool,
    ) -> Option<DirectoryRecord> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let last = consume_all(
                &self.topics.directory.name,
                self.topics.directory.partitions,
                Duration::from_secs(1),
            )
            .await
            .unwrap()
            .into_iter()
            .rfind(|m| m.key() == Some(key.as_bytes()))
            .map(|m| {
                m.payload()
                    .filter(|p| !p.is_empty())
                    .map(|p| DirectoryRecord::decode(p).unwrap())
            });
            if let Some(value) = last {
                if ready(&value) {
                    return value;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} never reached the expected value"
            );
        }
    }
}

fn group_ids(record: &Option<DirectoryRecord>) -> Vec<String> {
    match record {
        Some(DirectoryRecord {
            entry: DirectoryEntry::User(u),
        }) => u.group_ids.clone(),
        _ => vec!["<not a user>".into()],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scim_provisions_users_groups_and_memberships_into_the_directory() {
    use reqwest::Method;
    let api = start().await;
    let (status, ann) = api
        .scim(
            Method::POST,
            "/Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "ann@example.com",
                "name": {"givenName": "Ann", "familyName": "Lee"},
                "password": "correct-horse-battery-staple",
                "emails": [{"value": "ann@example.com", "primary": true}],
                "externalId": "okta-00u1"
            }),
        )
        .await;
    assert_eq!(status, 201, "{ann}");
    let ann_id = ann["id"].as_str().unwrap().to_string();
    assert!(ann.get("password").is_none());
    assert_eq!(ann["meta"]["resourceType"], "User");

    let (status, found) = api
        .scim(
            Method::GET,
            "/Users?filter=userName%20eq%20%22ANN@example.com%22",
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["totalResults"], 1, "{found}");
    assert_eq!(found["Resources"][0]["id"], ann_id.as_str());
    let (status, taken) = api
        .scim(
            Method::POST,
            "/Users",
            json!({"userName": "Ann@Example.com"}),
        )
        .await;
    assert_eq!((status, &taken["scimType"]), (409, &json!("uniqueness")));

    // A group with Ann in it: her directory record gains the group.
    let (status, group) = api
        .scim(
            Method::POST,
            "/Groups",
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "analysts", "members": [{"value": ann_id}]}),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let gid = group["id"].as_str().unwrap().to_string();
    let user_key = format!("user:{ann_id}");
    let record = api
        .latest(&user_key, |r| group_ids(r) == [gid.clone()])
        .await;
    let Some(DirectoryRecord {
        entry: DirectoryEntry::User(user),
    }) = &record
    else {
        panic!("{record:?}")
    };
    assert_eq!(user.login, "ann@example.com");
    assert_eq!(user.name.as_deref(), Some("Ann Lee"));
    assert!(
        !user.scim.as_deref().unwrap().contains("correct-horse"),
        "the password is never stored"
    );
    let (_, ann_now) = api
        .scim(Method::GET, &format!("/Users/{ann_id}"), Value::Null)
        .await;
    assert_eq!(ann_now["groups"][0]["display"], "analysts");

    // PATCH as Entra sends it: Ann leaves the group, the group is renamed.
    let (status, patched) = api
        .scim(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
                {"op": "Remove", "path": format!("members[value eq \"{ann_id}\"]")},
                {"op": "Replace", "value": {"displayName": "readers"}}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["displayName"], "readers");
    api.latest(&user_key, |r| group_ids(r).is_empty()).await;
    api.latest(&format!("group:{gid}"), |r| {
        matches!(r, Some(DirectoryRecord { entry: DirectoryEntry::Group(g) }) if g.name == "readers")
    })
    .await;

    // Deletes are tombstones.
    let (status, _) = api
        .scim(Method::DELETE, &format!("/Users/{ann_id}"), Value::Null)
        .await;
    assert_eq!(status, 204);
    api.latest(&user_key, Option::is_none).await;
    let (status, gone) = api
        .scim(Method::GET, &format!("/Users/{ann_id}"), Value::Null)
        .await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(
        gone["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:Error"
    );
    let (status, _) = api
        .scim(Method::DELETE, &format!("/Groups/{gid}"), Value::Null)
        .await;
    assert_eq!(status, 204);
    api.latest(&format!("group:{gid}"), Option::is_none).await;

    // Only directory tokens provision.
    let (status, _) = api
        .send(
            Method::GET,
            "/scim/v2/Users",
            EVENTS_ONLY,
            "application/scim+json",
            String::new(),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = api
        .send(
            Method::GET,
            "/scim/v2/Users",
            "not-a-token",
            "application/scim+json",
            String::new(),
        )
        .await;
    assert_eq!(status, 401);
    let (status, bad) = api
        .scim(
            Method::GET,
            "/Users?filter=userName%20zz%20%22x%22",
            Value::Null,
        )
        .await;
    assert_eq!((status, &bad["scimType"]), (400, &json!("invalidFilter")));
}

/// An independent SCIM conformance checker (scim2-cli's `test`, from PyPI; `dev/stack install`
/// puts it in a venv) finds no error in the endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn an_independent_scim_checker_finds_no_error() {
    let api = start().await;
    let tools = std::env::var("AUDIT_TOOLS_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.local/share/audit-pipeline",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let scim2 = format!("{tools}/venv-scim/bin/scim2");
    assert!(
        std::path::Path::new(&scim2).exists(),
        "{scim2} is missing: run dev/stack install"
    );
    let url = format!("{}/scim/v2", api.url);
    let out = tokio::process::Command::new(&scim2)
        .args([
            "--url",
            &url,
            "-h",
            &format!("Authorization: Bearer {LOGIN_SERVICE}"),
            "test",
        ])
        .output()
        .await
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let count = |level: &str| report.lines().filter(|l| l.starts_with(level)).count();
    eprintln!(
        "scim2 test: {} SUCCESS, {} ERROR, {} CRITICAL",
        count("SUCCESS"),
        count("ERROR"),
        count("CRITICAL")
    );
    assert_eq!(count("ERROR") + count("CRITICAL"), 0, "{report}");
    assert!(count("SUCCESS") >= 60, "{report}");
}
