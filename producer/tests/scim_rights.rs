//! SCIM against the real HTTP API and the real broker (`dev/stack up`): who may write what, and
//! the race of two identity-provider connections on two instances.
//!
//! - Rights: `/Users` needs the `users` scope and `/Groups` the `groups` scope (`directory`
//!   grants both); a tenant-bound token writes nothing, since the directory is shared.
//! - The race: instance A removes a member from a group while instance B still holds the old
//!   membership and a client PUTs the user from B's old view. The stale write is refused (412)
//!   when it says what version it read, and never restores the membership when it does not.

use audit_producer::auth::Tokens;
use audit_producer::config::{Scope, TokenConfig};
use audit_producer::http::{router, IngestState, Limits};
use audit_producer::scim::store::Store;
use audit_producer::scim::Scim;
use audit_runtime::ops::Health;
use audit_runtime::TopicsConfig;
use audit_schemas::redaction::Redactor;
use audit_schemas::*;
use audit_tests::*;
use rdkafka::message::Message;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use std::time::Duration;

const DIRECTORY: &str = "test-token-0123456789-idp";
const USERS_ONLY: &str = "test-token-0123456789-users";
const GROUPS_ONLY: &str = "test-token-0123456789-groups";
const TENANT_BOUND: &str = "test-token-0123456789-tenant";
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

fn tokens() -> Tokens {
    let token = |token: &str, scopes: Vec<Scope>, tenant: Option<&str>| TokenConfig {
        token: token.into(),
        service: "idp".into(),
        sources: vec![Source::Server],
        scopes,
        tenant: tenant.map(str::to_string),
    };
    Tokens::new(
        &[
            token(DIRECTORY, vec![Scope::Events, Scope::Directory], None),
            token(USERS_ONLY, vec![Scope::Users], None),
            token(GROUPS_ONLY, vec![Scope::Groups], None),
            token(
                TENANT_BOUND,
                vec![Scope::Events, Scope::Directory],
                Some("acme"),
            ),
        ],
        None,
    )
}

/// One ingest API instance serving `scim`.
struct Instance {
    url: String,
    http: reqwest::Client,
}

async fn serve(topics: &TopicsConfig, scim: Arc<Scim>) -> Instance {
    let state = Arc::new(IngestState {
        publisher: publisher(topics, 50_000).unwrap(),
        tokens: tokens(),
        redactor: Redactor::default(),
        limits: Limits::default(),
        scim: Some(scim),
        network: Default::default(),
    });
    let app = router(state, Health::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Instance {
        url,
        http: reqwest::Client::new(),
    }
}

/// An instance as `audit-producer` runs it: its store follows the directory topic.
async fn following(topics: &TopicsConfig) -> Instance {
    let scim = audit_producer::scim::spawn(
        &kafka_config(),
        &topics.directory.name,
        publisher(topics, 50_000).unwrap(),
        Redactor::default(),
        Limits::default(),
        &audit_runtime::Shutdown::new(),
    );
    let instance = serve(topics, scim).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while instance.get("/Users", DIRECTORY).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "SCIM never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    instance
}

/// An instance whose copy of the directory is what the topic held when it was made and that
/// has not followed since (a follower lagging behind, frozen): only its writes' catch-up can
/// tell it what changed.
async fn stale(topics: &TopicsConfig) -> Instance {
    let mut store = Store::default();
    for m in directory_records(topics).await {
        store
            .apply_record(
                m.key().unwrap_or_default(),
                m.payload(),
                m.partition(),
                m.offset(),
            )
            .unwrap();
    }
    let (_ready, ready) = tokio::sync::watch::channel(true);
    let scim = Scim::new(
        publisher(topics, 50_000).unwrap(),
        Arc::new(RwLock::new(store)),
        ready,
        Redactor::default(),
        Limits::default(),
    )
    .with_catch_up(&kafka_config(), &topics.directory.name);
    serve(topics, Arc::new(scim)).await
}

async fn directory_records(topics: &TopicsConfig) -> Vec<rdkafka::message::OwnedMessage> {
    consume_all(
        &topics.directory.name,
        topics.directory.partitions,
        Duration::from_secs(1),
    )
    .await
    .unwrap()
}

/// The latest value of a directory key on the topic, waiting until `ready` accepts it.
async fn latest(
    topics: &TopicsConfig,
    key: &str,
    ready: impl Fn(&Option<DirectoryRecord>) -> bool,
) -> Option<DirectoryRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let last = directory_records(topics)
            .await
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

impl Instance {
    /// A SCIM request: status, `ETag` header and body.
    async fn scim(
        &self,
        method: Method,
        path: &str,
        token: &str,
        if_match: Option<&str>,
        body: Value,
    ) -> (u16, Option<String>, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/scim/v2{path}", self.url))
            .bearer_auth(token)
            .header("content-type", "application/scim+json");
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        if !body.is_null() {
            request = request.body(body.to_string());
        }
        let resp = request.send().await.unwrap();
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, etag, body)
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (status, _, body) = self.scim(Method::GET, path, token, None, Value::Null).await;
        (status, body)
    }

    async fn create(&self, path: &str, token: &str, body: Value) -> Value {
        let (status, _, created) = self.scim(Method::POST, path, token, None, body).await;
        assert_eq!(status, 201, "{created}");
        created
    }
}

fn group_ids(record: &Option<DirectoryRecord>) -> Vec<String> {
    match record {
        Some(DirectoryRecord {
            entry: DirectoryEntry::User(u),
        }) => u.group_ids.clone(),
        other => vec![format!("<not a user: {other:?}>")],
    }
}

fn group_of(record: &Option<DirectoryRecord>) -> Option<&Group> {
    match record {
        Some(DirectoryRecord {
            entry: DirectoryEntry::Group(g),
        }) => Some(g),
        _ => None,
    }
}

/// The ids a rendered user's `groups` or group's `members` list.
fn values(resource: &Value, attribute: &str) -> Vec<String> {
    resource[attribute]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v["value"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_instance_never_restores_a_removed_membership() {
    let topics = unique_topics(2);
    create_topics(&topics).await.unwrap();
    let a = following(&topics).await;
    let ann = a
        .create(
            "/Users",
            DIRECTORY,
            json!({"schemas": [USER_SCHEMA], "userName": "ann@example.com", "displayName": "Ann"}),
        )
        .await;
    let ann_id = ann["id"].as_str().unwrap().to_string();
    let bob = a
        .create(
            "/Users",
            DIRECTORY,
            json!({"schemas": [USER_SCHEMA], "userName": "bob@example.com"}),
        )
        .await;
    let bob_id = bob["id"].as_str().unwrap().to_string();
    let group = a
        .create(
            "/Groups",
            DIRECTORY,
            json!({"schemas": [GROUP_SCHEMA], "displayName": "admins", "members": [{"value": ann_id}]}),
        )
        .await;
    let gid = group["id"].as_str().unwrap().to_string();
    let ann_key = format!("user:{ann_id}");
    latest(&topics, &ann_key, |r| group_ids(r) == [gid.clone()]).await;

    // Instance B holds the directory as it is now, and stops following.
    let b = stale(&topics).await;
    let (status, etag, seen) = b
        .scim(
            Method::GET,
            &format!("/Users/{ann_id}"),
            DIRECTORY,
            None,
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(values(&seen, "groups"), [gid.as_str()], "{seen}");
    let read_version = seen["meta"]["version"].as_str().unwrap().to_string();
    assert_eq!(etag.as_deref(), Some(read_version.as_str()));

    // On A, the identity provider takes Ann out of the group.
    let (status, _, patched) = a
        .scim(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            DIRECTORY,
            None,
            json!({"schemas": [PATCH_SCHEMA], "Operations": [
                {"op": "remove", "path": format!("members[value eq \"{ann_id}\"]")}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert!(values(&patched, "members").is_empty(), "{patched}");
    latest(&topics, &ann_key, |r| group_ids(r).is_empty()).await;
    let (_, still) = b.get(&format!("/Users/{ann_id}"), DIRECTORY).await;
    assert_eq!(
        values(&still, "groups"),
        [gid.as_str()],
        "B's copy is stale: {still}"
    );

    // Another connection PUTs Ann through B from what it read before the removal.
    let mut stale_body = seen.clone();
    stale_body["displayName"] = json!("Ann Lee");
    let (status, _, refused) = b
        .scim(
            Method::PUT,
            &format!("/Users/{ann_id}"),
            DIRECTORY,
            Some(&read_version),
            stale_body.clone(),
        )
        .await;
    assert_eq!(
        status, 412,
        "a write on a stale version is refused: {refused}"
    );
    // Without If-Match the write goes through, and its memberships are the groups' own.
    let (status, _, put) = b
        .scim(
            Method::PUT,
            &format!("/Users/{ann_id}"),
            DIRECTORY,
            None,
            stale_body,
        )
        .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["displayName"], "Ann Lee");
    assert!(values(&put, "groups").is_empty(), "{put}");
    let record = latest(&topics, &ann_key, |r| {
        matches!(r, Some(DirectoryRecord { entry: DirectoryEntry::User(u) }) if u.name.as_deref() == Some("Ann Lee"))
    })
    .await;
    assert!(
        group_ids(&record).is_empty(),
        "the removed membership came back: {record:?}"
    );

    // A stale PATCH of the group through B applies to the group as it is now.
    let (status, _, group_now) = b
        .scim(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            DIRECTORY,
            None,
            json!({"schemas": [PATCH_SCHEMA], "Operations": [
                {"op": "add", "path": "members", "value": [{"value": bob_id}]}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{group_now}");
    assert_eq!(
        values(&group_now, "members"),
        [bob_id.as_str()],
        "{group_now}"
    );
    let group_record = latest(&topics, &format!("group:{gid}"), |r| {
        group_of(r).is_some_and(|g| g.scim.as_deref().is_some_and(|s| s.contains(&bob_id)))
    })
    .await;
    let scim = group_of(&group_record).and_then(|g| g.scim.clone());
    assert!(
        !scim.unwrap_or_default().contains(&ann_id),
        "Ann is back in the group: {group_record:?}"
    );
    latest(&topics, &format!("user:{bob_id}"), |r| {
        group_ids(r) == [gid.clone()]
    })
    .await;
    // And so does a PATCH or DELETE naming the version B read the group at.
    let (status, _, refused) = b
        .scim(
            Method::DELETE,
            &format!("/Groups/{gid}"),
            DIRECTORY,
            Some(group["meta"]["version"].as_str().unwrap()),
            Value::Null,
        )
        .await;
    assert_eq!(status, 412, "{refused}");
    let (_, ann_on_a) = a.get(&format!("/Users/{ann_id}"), DIRECTORY).await;
    assert!(values(&ann_on_a, "groups").is_empty(), "{ann_on_a}");
}

#[tokio::test(flavor = "multi_thread")]
async fn scim_writes_need_the_resource_scope_and_no_tenant() {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let api = following(&topics).await;
    let group = api
        .create(
            "/Groups",
            DIRECTORY,
            json!({"schemas": [GROUP_SCHEMA], "displayName": "admins"}),
        )
        .await;
    let gid = group["id"].as_str().unwrap().to_string();

    // `users` provisions users and nothing of groups.
    let user = api
        .create(
            "/Users",
            USERS_ONLY,
            json!({"schemas": [USER_SCHEMA], "userName": "ann@example.com"}),
        )
        .await;
    let uid = user["id"].as_str().unwrap().to_string();
    let add_ann = json!({"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": uid}]}
    ]});
    for (method, path, body) in [
        (
            Method::POST,
            "/Groups".to_string(),
            json!({"schemas": [GROUP_SCHEMA], "displayName": "sneaky", "members": [{"value": uid}]}),
        ),
        (Method::PATCH, format!("/Groups/{gid}"), add_ann.clone()),
        (
            Method::PUT,
            format!("/Groups/{gid}"),
            json!({"schemas": [GROUP_SCHEMA], "displayName": "admins", "members": [{"value": uid}]}),
        ),
        (Method::DELETE, format!("/Groups/{gid}"), Value::Null),
        (Method::GET, "/Groups".to_string(), Value::Null),
    ] {
        let (status, _, body) = api
            .scim(method.clone(), &path, USERS_ONLY, None, body)
            .await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("`groups` scope"),
            "{body}"
        );
    }
    // `groups` manages groups and nothing of users.
    let (status, _, body) = api
        .scim(
            Method::POST,
            "/Users",
            GROUPS_ONLY,
            None,
            json!({"schemas": [USER_SCHEMA], "userName": "eve@example.com"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("`users` scope"),
        "{body}"
    );
    let (status, _, body) = api
        .scim(
            Method::PATCH,
            &format!("/Groups/{gid}"),
            GROUPS_ONLY,
            None,
            add_ann,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(values(&body, "members"), [uid.as_str()]);

    // A tenant-bound token reads, and writes nothing.
    let (status, body) = api.get("/Users", TENANT_BOUND).await;
    assert_eq!(status, 200, "{body}");
    let tenant_writes = [
        (
            Method::POST,
            "/Users".to_string(),
            json!({"schemas": [USER_SCHEMA], "userName": "mallory@example.com"}),
        ),
        (
            Method::PUT,
            format!("/Users/{uid}"),
            json!({"schemas": [USER_SCHEMA], "userName": "mallory@example.com"}),
        ),
        (
            Method::PATCH,
            format!("/Users/{uid}"),
            json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"active": false}}]}),
        ),
        (Method::DELETE, format!("/Users/{uid}"), Value::Null),
        (
            Method::POST,
            "/Groups".to_string(),
            json!({"schemas": [GROUP_SCHEMA], "displayName": "acme-admins"}),
        ),
        (
            Method::PATCH,
            format!("/Groups/{gid}"),
            json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "remove", "path": "members"}]}),
        ),
        (Method::DELETE, format!("/Groups/{gid}"), Value::Null),
    ];
    for (method, path, body) in tenant_writes {
        let (status, _, body) = api
            .scim(method.clone(), &path, TENANT_BOUND, None, body)
            .await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(
            body["detail"],
            "a tenant-bound token cannot write the shared directory (tokens[].tenant)",
            "{method} {path}"
        );
    }

    // What was refused never reached the topic: the group still lists Ann, Ann is active.
    let keys: Vec<String> = directory_records(&topics)
        .await
        .iter()
        .filter_map(|m| m.key().map(|k| String::from_utf8_lossy(k).to_string()))
        .collect();
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct,
        {
            let mut want = vec![format!("group:{gid}"), format!("user:{uid}")];
            want.sort();
            want
        },
        "{keys:?}"
    );
    let (_, group_now) = api.get(&format!("/Groups/{gid}"), DIRECTORY).await;
    assert_eq!(values(&group_now, "members"), [uid.as_str()], "{group_now}");
    let (_, ann) = api.get(&format!("/Users/{uid}"), DIRECTORY).await;
    assert_eq!(ann["userName"], "ann@example.com", "{ann}");
    assert!(ann.get("active").is_none(), "{ann}");
}
