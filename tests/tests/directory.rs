//! The directory fed as the platform and its identity provider feed it, end to end: the real
//! ingest service (directory API and SCIM) and the real enricher on the real broker. Each SCIM
//! change shows in the enrichment of the next events.

use audit_schemas::{AvroRecord, EnrichedAuditEvent};
use audit_tests::pipeline::Pipeline;
use audit_tests::*;
use rdkafka::message::Message;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// The enriched topic read as it grows, by message.
struct Enriched {
    reader: audit_runtime::kafka::Reader,
    seen: HashMap<String, EnrichedAuditEvent>,
}

impl Enriched {
    fn new(p: &Pipeline) -> Self {
        Self {
            reader: reader_from_beginning(
                &p.kafka,
                &p.topics.enriched.name,
                p.topics.enriched.partitions,
            )
            .unwrap(),
            seen: HashMap::new(),
        }
    }

    async fn wait_for(
        &mut self,
        message: &str,
        deadline: tokio::time::Instant,
    ) -> Option<EnrichedAuditEvent> {
        loop {
            if let Some(e) = self.seen.remove(message) {
                return Some(e);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.reader.recv()).await {
                Err(_) => return None,
                Ok(Ok(m)) => {
                    if let Some(e) = m.payload().and_then(|b| EnrichedAuditEvent::decode(b).ok()) {
                        if let Some(text) = e.event.message.clone() {
                            self.seen.insert(text, e);
                        }
                    }
                }
                Ok(Err(_)) => {} // end of a partition
            }
        }
    }
}

/// Posts CLIENT events of `session` until one comes out enriched as `expected` says (the
/// enricher applies a directory change a moment after the API acknowledged it).
async fn eventually(
    p: &Pipeline,
    enriched: &mut Enriched,
    session: &str,
    step: &str,
    expected: impl Fn(&EnrichedAuditEvent) -> bool,
) -> EnrichedAuditEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let message = format!("{step} #{attempt}");
        p.post(&[json!({"event_type": "log", "source": "CLIENT", "service": "e2e", "session_id": session, "message": message})])
            .await
            .unwrap();
        let Some(found) = enriched.wait_for(&message, deadline).await else {
            panic!("{step}: {message} not enriched within 60 s");
        };
        if expected(&found) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{step}: still enriched as {:?} / {:?}",
            found.user,
            found.groups
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn group_names(e: &EnrichedAuditEvent) -> Vec<&str> {
    e.groups.iter().map(|g| g.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn scim_changes_show_in_the_next_events_enrichment() {
    let p = Pipeline::create(kafka_config(), 2).await.unwrap();
    let _producer = p.start(Stage::Producer).await.unwrap();
    let _enricher = p.start(Stage::Enricher).await.unwrap();
    let mut enriched = Enriched::new(&p);

    // The IdP provisions Ann; the platform records her login.
    let (status, ann) = p
        .request(
            Method::POST,
            "/scim/v2/Users",
            Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "ann@example.com", "displayName": "Ann Lee"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{ann}");
    let ann_id = ann["id"].as_str().unwrap().to_string();
    let (status, body) = p
        .request(
            Method::PUT,
            "/v1/directory/sessions/s-ann",
            Some(json!({"user_id": ann_id, "ip": "10.1.2.3"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let e = eventually(&p, &mut enriched, "s-ann", "created", |e| {
        e.user
            .as_ref()
            .is_some_and(|u| u.login == "ann@example.com")
    })
    .await;
    assert!(e.groups.is_empty());

    // A group with Ann in it.
    let (status, group) = p
        .request(
            Method::POST,
            "/scim/v2/Groups",
            Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "analysts", "members": [{"value": ann_id}]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{group}");
    let gid = group["id"].as_str().unwrap().to_string();
    eventually(&p, &mut enriched, "s-ann", "grouped", |e| {
        group_names(e) == ["analysts"]
    })
    .await;

    // PATCH: the group is renamed, then Ann leaves it.
    let patch = |ops: Value| {
        Some(
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops}),
        )
    };
    let (status, body) = p
        .request(
            Method::PATCH,
            &format!("/scim/v2/Groups/{gid}"),
            patch(json!([{"op": "replace", "path": "displayName", "value": "readers"}])),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    eventually(&p, &mut enriched, "s-ann", "renamed", |e| {
        group_names(e) == ["readers"]
    })
    .await;
    let (status, body) = p
        .request(
            Method::PATCH,
            &format!("/scim/v2/Users/{ann_id}"),
            patch(json!([{"op": "replace", "value": {"displayName": "Ann Lee-Smith"}}])),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    eventually(&p, &mut enriched, "s-ann", "user patched", |e| {
        e.user.as_ref().and_then(|u| u.name.as_deref()) == Some("Ann Lee-Smith")
    })
    .await;

    // Deleting the group takes it off her events; deleting her leaves only her id.
    let (status, _) = p
        .request(Method::DELETE, &format!("/scim/v2/Groups/{gid}"), None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    eventually(&p, &mut enriched, "s-ann", "group deleted", |e| {
        e.groups.is_empty()
    })
    .await;
    let (status, _) = p
        .request(Method::DELETE, &format!("/scim/v2/Users/{ann_id}"), None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    eventually(&p, &mut enriched, "s-ann", "user deleted", |e| {
        e.user.as_ref().is_some_and(|u| u.login == ann_id)
    })
    .await;
}
