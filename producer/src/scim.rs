//! A SCIM 2.0 service provider (RFC 7643, RFC 7644) at `/scim/v2`, so an identity provider
//! (Okta, Entra ID, ...) provisions users, groups and memberships into the directory the
//! enricher joins on, with no custom code.
//!
//! - [`resource`]: request bodies, rendering, versions and PATCH, pure.
//! - [`filter`]: `filter=` expressions, pure.
//! - [`store`]: the users and groups served, kept from the directory topic, with its indexes,
//!   pure.
//! - this module: the routes and the I/O (following and publishing to the directory topic).
//!
//! Rights: `/Users` needs a token granted the `users` scope, `/Groups` the `groups` scope
//! (`directory` grants both); a token bound to a tenant may read but never write, since the
//! directory is shared by all tenants. Supported: Users and Groups with create (POST), read,
//! replace (PUT), PATCH (add/replace/remove, value filters in paths), delete, and list with
//! `filter`, `startIndex` and `count`; ETags (`meta.version`, `If-Match`, `If-None-Match`);
//! `/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`, POST `.search`. Not supported: bulk,
//! sorting, `/Me`.
//!
//! Membership has one source: a SCIM group's `members` (see [`store`]). A user write takes its
//! `group_ids` from the groups, never from the body or its own old record, and a group write
//! republishes every member record that disagrees with its list.
//!
//! Writes are conditional on fresh state. Writes on one instance are serialized; each first
//! catches its store up with the directory topic's end (what other instances acknowledged is
//! read before anything is decided), then reads, checks the caller's `If-Match` against the
//! resource's current version (412 when it moved) and derives the records in one hold of the
//! store's lock, then publishes and answers once the broker acknowledged every record. What is
//! left: two instances writing the same entries within the same publish round trip both
//! succeed, in the topic's order, and the next write of the group repairs any member record the
//! earlier one left behind.
//!
//! Reads stay proportional to the page: lists take their candidates from the indexes (`eq` on
//! `id`, `userName`, `displayName`, `externalId`, `members.value`, `groups.value`, combined with
//! `and`/`or`), apply the filter and `startIndex`/`count` before rendering anything else, and
//! run off the async workers, taking the store's lock per chunk of entries.

pub mod filter;
pub mod resource;
pub mod store;

use crate::body::Caller;
use crate::config::Scope;
use crate::http::{read_body, Limits};
use audit_runtime::ingest::{PublishError, Publisher};
use audit_schemas::ingest::directory::DirectoryWrite;
use audit_schemas::redaction::Redactor;
use audit_schemas::{DirectoryEntry, DirectoryKey, DirectoryRecord, Group, Timestamp, User};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Extension, Router};
use filter::Filter;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use resource::Kind;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use store::Store;
use tokio::sync::watch;

const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// Most resources one list page returns.
const MAX_PAGE: usize = 1_000;
/// Entries a list looks at per hold of the store's read lock, so the follower's and writes'
/// updates wait at most that long.
const LIST_CHUNK: usize = 512;
/// How long a write waits to catch up with the directory topic before it answers 503.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// A SCIM error response (RFC 7644 §3.12).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct ScimError {
    pub status: u16,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimError {
    pub fn bad_request(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: 400,
            scim_type: Some(scim_type),
            detail: detail.into(),
        }
    }

    fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            scim_type: None,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        metrics::counter!("audit_producer_scim_requests_total", "outcome" => self.status.to_string())
            .increment(1);
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            body["scimType"] = json!(t);
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        scim_json(status, body)
    }
}

fn scim_json(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/scim+json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// A single resource, with its version as the `ETag` header (RFC 7644 §3.14).
fn resource_response(status: StatusCode, resource: Value) -> Response {
    let etag = version_of(&resource).and_then(|v| HeaderValue::from_str(&v).ok());
    let mut response = scim_json(status, resource);
    if let Some(v) = etag {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

fn version_of(resource: &Value) -> Option<String> {
    resource["meta"]["version"].as_str().map(str::to_string)
}

/// What the SCIM routes share.
pub struct Scim {
    pub publisher: Publisher,
    pub store: Arc<RwLock<Store>>,
    /// True once the directory topic was read to its end at start.
    pub ready: watch::Receiver<bool>,
    pub redactor: Redactor,
    pub limits: Limits,
    /// One write at a time: a write catches up, reads the store, then publishes what changed.
    writes: tokio::sync::Mutex<()>,
    /// Reads the directory topic up to its end before a write decides anything (`Err`: the
    /// reader could not be made, so writes answer 503 rather than decide on a stale copy).
    catch_up: Option<Result<CatchUp, String>>,
}

impl Scim {
    /// SCIM over `store`, which something else keeps up to date (see [`spawn`]); writes
    /// decide on the store as it is unless [`Scim::with_catch_up`] is used.
    pub fn new(
        publisher: Publisher,
        store: Arc<RwLock<Store>>,
        ready: watch::Receiver<bool>,
        redactor: Redactor,
        limits: Limits,
    ) -> Self {
        Self {
            publisher,
            store,
            ready,
            redactor,
            limits,
            writes: tokio::sync::Mutex::new(()),
            catch_up: None,
        }
    }

    /// Before each write, reads what the directory topic holds beyond what the store applied,
    /// so a write never decides on a copy older than what the broker acknowledged to others.
    pub fn with_catch_up(
        mut self,
        kafka: &audit_runtime::KafkaConfig,
        directory_topic: &str,
    ) -> Self {
        let client_id = format!("audit-producer-scim-catch-up-{directory_topic}");
        self.catch_up = Some(
            audit_runtime::kafka::reader(kafka, &client_id)
                .map(|consumer| CatchUp {
                    consumer: Arc::new(consumer),
                    topic: directory_topic.to_string(),
                })
                .map_err(|e| {
                    tracing::error!(error = %e, "SCIM cannot read the directory topic; SCIM writes answer 503");
                    e.to_string()
                }),
        );
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the store up to the directory topic's current end (no-op without catch-up).
    async fn catch_up(&self) -> Result<(), ScimError> {
        match &self.catch_up {
            Some(Ok(c)) => c.run(&self.store).await,
            Some(Err(e)) => Err(ScimError::new(
                503,
                format!("the directory topic cannot be read ({e}), so no write can be checked against it"),
            )),
            None => Ok(()),
        }
    }
}

/// The write path's own reader of the directory topic.
struct CatchUp {
    consumer: Arc<audit_runtime::kafka::Reader>,
    topic: String,
}

impl CatchUp {
    /// Reads each partition from the store's position to the end it has now, applying every
    /// record (the store skips what the follower already applied). 503 when the broker cannot
    /// say where the end is, or the records do not come within [`CATCH_UP_TIMEOUT`].
    async fn run(&self, store: &RwLock<Store>) -> Result<(), ScimError> {
        let unavailable = |why: String| {
            tracing::warn!(topic = %self.topic, %why, "SCIM could not catch up with the directory");
            ScimError::new(
                503,
                format!(
                    "the directory could not be brought up to date ({why}); retry the same request"
                ),
            )
        };
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        // Metadata and watermarks are blocking librdkafka calls.
        let ends =
            tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64, i64)>, KafkaError> {
                let timeout = Duration::from_secs(5);
                let metadata = consumer.client().fetch_metadata(Some(&topic), timeout)?;
                let partitions: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                partitions
                    .into_iter()
                    .map(|p| {
                        let (low, high) = consumer.client().fetch_watermarks(&topic, p, timeout)?;
                        Ok((p, low, high))
                    })
                    .collect()
            })
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        let mut behind: HashMap<i32, i64> = HashMap::new();
        {
            let store = store.read().unwrap_or_else(|p| p.into_inner());
            for (p, low, high) in ends {
                let at = store.position(p);
                if high > low && at.is_none_or(|at| at + 1 < high) {
                    let from = at.map_or(Offset::Beginning, |at| Offset::Offset(at + 1));
                    tpl.add_partition_offset(&self.topic, p, from)
                        .map_err(|e| unavailable(e.to_string()))?;
                    behind.insert(p, high);
                }
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| unavailable(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        let result = loop {
            if behind.is_empty() {
                break Ok(());
            }
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(m) => m,
                Err(_) => break Err(unavailable("timed out reading the directory topic".into())),
            };
            match message {
                Ok(m) => {
                    let applied = store
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply_record(
                            m.key().unwrap_or_default(),
                            m.payload(),
                            m.partition(),
                            m.offset(),
                        );
                    if let Err(reason) = applied {
                        tracing::warn!(topic = %self.topic, partition = m.partition(), offset = m.offset(), %reason, "directory record skipped by SCIM");
                    }
                    if behind
                        .get(&m.partition())
                        .is_some_and(|end| m.offset() + 1 >= *end)
                    {
                        behind.remove(&m.partition());
                    }
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    behind.remove(&p);
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "error while catching up");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        // Nothing is fetched between writes.
        let _ = self.consumer.unassign();
        result
    }
}

/// The routes, to be nested at `/scim/v2` behind the bearer-token check.
pub fn router(scim: Arc<Scim>) -> Router {
    Router::new()
        .route("/ServiceProviderConfig", get(service_provider_config))
        .route("/ResourceTypes", get(resource_types))
        .route("/ResourceTypes/{name}", get(resource_type))
        .route("/Schemas", get(schemas))
        .route("/Schemas/{id}", get(schema))
        .route("/.search", search(None))
        .route("/Users", collection(Kind::User))
        .route("/Users/.search", search(Some(Kind::User)))
        .route("/Users/{id}", member(Kind::User))
        .route("/Groups", collection(Kind::Group))
        .route("/Groups/.search", search(Some(Kind::Group)))
        .route("/Groups/{id}", member(Kind::Group))
        .fallback(|| async { ScimError::new(404, "no such SCIM endpoint").into_response() })
        .with_state(scim)
}

/// The base URL resources are located under, from the request's Host.
fn base(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .unwrap_or("localhost");
    format!("http://{host}/scim/v2")
}

/// The scope a resource type needs, and its name in settings.
fn scope_of(kind: Kind) -> (Scope, &'static str) {
    match kind {
        Kind::User => (Scope::Users, "users"),
        Kind::Group => (Scope::Groups, "groups"),
    }
}

/// Whether `caller` may use the endpoints of `kinds` (writes: `write`).
fn allowed(caller: &Caller, scim: &Scim, kinds: &[Kind], write: bool) -> Result<(), ScimError> {
    for &kind in kinds {
        let (scope, name) = scope_of(kind);
        if !caller.may(scope) {
            return Err(ScimError::new(
                403,
                format!(
                    "this token may not use SCIM {}s: grant it the `{name}` scope (tokens[].scopes; `directory` grants users, groups and sessions)",
                    kind.name()
                ),
            ));
        }
    }
    if write && caller.tenant.is_some() {
        return Err(ScimError::new(
            403,
            "a tenant-bound token cannot write the shared directory (tokens[].tenant)",
        ));
    }
    if !*scim.ready.borrow() {
        return Err(ScimError::new(
            503,
            "the directory is still being loaded; retry shortly",
        ));
    }
    Ok(())
}

/// The checks of every write with a body, then the body as JSON.
async fn allowed_body(
    scim: &Scim,
    caller: &Caller,
    kinds: &[Kind],
    write: bool,
    request: Request,
) -> Result<Value, Response> {
    allowed(caller, scim, kinds, write).map_err(IntoResponse::into_response)?;
    json_body(scim, request).await
}

async fn json_body(scim: &Scim, request: Request) -> Result<Value, Response> {
    let bytes = read_body(request, &scim.limits).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ScimError::bad_request("invalidSyntax", format!("the body is not JSON: {e}"))
            .into_response()
    })
}

/// Runs `f` on a blocking thread: anything that may look at many entries stays off the async
/// workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ScimError> + Send + 'static,
) -> Result<T, ScimError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ScimError::new(500, format!("the request failed: {e}")))?
}

/// Publishes the records (tombstones for `deleted`) and, once acknowledged, applies them to the
/// store so the next read on this instance sees them.
/// Each change goes with its control event, whose old value is this instance's copy of the
/// entry (caught up before the write).
async fn publish(
    scim: &Scim,
    caller: &Caller,
    records: Vec<DirectoryRecord>,
    deleted: Vec<DirectoryKey>,
) -> Result<(), ScimError> {
    let writes: Vec<DirectoryWrite> = records
        .iter()
        .cloned()
        .map(DirectoryWrite::Put)
        .chain(deleted.iter().cloned().map(DirectoryWrite::Delete))
        .collect();
    let control: Vec<_> = {
        let store = scim.read();
        let operator = crate::http::operator(caller, None);
        audit_schemas::control::directory_changes(&writes, true, |key| match key {
            DirectoryKey::User(id) => store.user(id).map(|u| {
                DirectoryRecord {
                    entry: DirectoryEntry::User(u.clone()),
                }
                .to_json()
            }),
            DirectoryKey::Group(id) => store.group(id).map(|g| {
                DirectoryRecord {
                    entry: DirectoryEntry::Group(g.clone()),
                }
                .to_json()
            }),
            DirectoryKey::Session(_) => None,
        })
        .iter()
        .map(|c| c.to_event(&operator, &scim.redactor))
        .collect()
    };
    match scim.publisher.publish_directory(&writes, &control).await {
        Ok(()) => {
            let mut store = scim.write();
            for r in records {
                store.put(r);
            }
            for k in &deleted {
                store.delete(k);
            }
            metrics::counter!("audit_producer_scim_requests_total", "outcome" => "stored")
                .increment(1);
            Ok(())
        }
        Err(PublishError::Busy { .. }) => Err(ScimError::new(
            503,
            "the producer is at capacity; retry after 1 second",
        )),
        Err(e) => {
            tracing::error!(error = %e, "publishing SCIM changes failed");
            Err(ScimError::new(
                503,
                format!("the change could not be stored: {e}; retry the same request"),
            ))
        }
    }
}

fn created(resource: Value) -> Response {
    let location = resource["meta"]["location"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut response = resource_response(StatusCode::CREATED, resource);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

fn not_found(kind: Kind, id: &str) -> ScimError {
    ScimError::new(404, format!("{} {id} not found", kind.name()))
}

// ---- Users and Groups: what differs by kind ----

/// One resource as SCIM shows it: O(the entry and its memberships).
pub fn render(store: &Store, kind: Kind, id: &str, base: &str) -> Option<Value> {
    match kind {
        Kind::User => store
            .user(id)
            .map(|u| resource::render_user(u, &store.groups_of(u), base)),
        Kind::Group => store.group(id).map(|g| {
            let derived = if store.managed(&g.id) {
                vec![]
            } else {
                store.members_of(&g.id)
            };
            resource::render_group(g, &derived, base)
        }),
    }
}

/// The records a create or replace of entry `id` publishes, decided on `store` as it is now:
/// the entry, its memberships derived from the groups (a user's `group_ids`, a group's
/// `parent_ids`), and for a group the member records that disagree with its `members`.
pub fn records_for_write(
    store: &Store,
    redactor: &Redactor,
    kind: Kind,
    id: &str,
    mut input: resource::Input,
) -> Result<Vec<DirectoryRecord>, ScimError> {
    let mut attributes = Value::Object(std::mem::take(&mut input.attributes));
    redactor.redact_value(&mut attributes);
    if let Value::Object(a) = attributes {
        input.attributes = a;
    }
    let now = Timestamp::now().to_rfc3339();
    match kind {
        Kind::User => {
            let user_name = input.name(Kind::User).to_string();
            if store.user_named(&user_name, Some(id)).is_some() {
                return Err(ScimError {
                    status: 409,
                    scim_type: Some("uniqueness"),
                    detail: format!("userName {user_name:?} is taken"),
                });
            }
            let existing = store.user(id);
            let created = existing
                .and_then(|u| resource::created_of(u.scim.as_deref()))
                .unwrap_or_else(|| now.clone());
            let named = existing.map(|u| u.group_ids.as_slice()).unwrap_or_default();
            let user = User {
                id: id.to_string(),
                login: user_name,
                name: input.display_name(),
                group_ids: store.derived_group_ids(id, named),
                scim: Some(resource::stored(&input, &created, &now)),
            };
            Ok(vec![DirectoryRecord {
                entry: DirectoryEntry::User(user),
            }])
        }
        Kind::Group => {
            let existing = store.group(id);
            let created = existing
                .and_then(|g| resource::created_of(g.scim.as_deref()))
                .unwrap_or_else(|| now.clone());
            let named = existing
                .map(|g| g.parent_ids.as_slice())
                .unwrap_or_default();
            let group = Group {
                id: id.to_string(),
                name: input.name(Kind::Group).to_string(),
                parent_ids: store.derived_group_ids(id, named),
                scim: Some(resource::stored(&input, &created, &now)),
            };
            let mut records = store.membership_changes(id, &input.member_ids());
            records.push(DirectoryRecord {
                entry: DirectoryEntry::Group(group),
            });
            Ok(records)
        }
    }
}

/// The records a delete publishes besides the entry's tombstone: SCIM groups that listed a
/// user stop listing it; entries naming a group lose it. O(the entry's memberships).
fn records_for_delete(
    store: &Store,
    kind: Kind,
    id: &str,
) -> Result<Vec<DirectoryRecord>, ScimError> {
    match kind {
        Kind::User => {
            store.user(id).ok_or_else(|| not_found(kind, id))?;
            Ok(store
                .groups_without(id)
                .into_iter()
                .map(|g| DirectoryRecord {
                    entry: DirectoryEntry::Group(g),
                })
                .collect())
        }
        Kind::Group => {
            store.group(id).ok_or_else(|| not_found(kind, id))?;
            let mut records = store.named_without(id);
            records.extend(
                store
                    .groups_without(id)
                    .into_iter()
                    .map(|g| DirectoryRecord {
                        entry: DirectoryEntry::Group(g),
                    }),
            );
            Ok(records)
        }
    }
}

fn key_of(kind: Kind, id: &str) -> DirectoryKey {
    match kind {
        Kind::User => DirectoryKey::User(id.to_string()),
        Kind::Group => DirectoryKey::Group(id.to_string()),
    }
}

/// 412 unless the request's `If-Match` (when it has one) admits the resource's version.
fn precondition(if_match: Option<&str>, resource: &Value) -> Result<(), ScimError> {
    let Some(wanted) = if_match else {
        return Ok(());
    };
    let current = version_of(resource).unwrap_or_default();
    if resource::if_match(wanted, &current) {
        Ok(())
    } else {
        Err(ScimError::new(
            412,
            format!("the resource changed since it was read: If-Match {wanted} is not its version {current}; read it again"),
        ))
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

// ---- Users and Groups: the handlers, one of each for both kinds ----

type Params = HashMap<String, String>;

/// `GET` (list) and `POST` (create) on `/Users` or `/Groups`.
fn collection(kind: Kind) -> MethodRouter<Arc<Scim>> {
    get(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              Query(query): Query<Params>,
              headers: HeaderMap| async move {
            if let Err(e) = allowed(&caller, &scim, &[kind], false) {
                return e.into_response();
            }
            list(scim, vec![kind], query, base(&headers)).await
        },
    )
    .post(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              headers: HeaderMap,
              request: Request| async move {
            create(scim, &caller, &headers, request, kind).await
        },
    )
}

/// `GET`, `PUT`, `PATCH` and `DELETE` on `/Users/{id}` or `/Groups/{id}`.
fn member(kind: Kind) -> MethodRouter<Arc<Scim>> {
    get(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              Path(id): Path<String>,
              Query(query): Query<Params>,
              headers: HeaderMap| async move {
            if let Err(e) = allowed(&caller, &scim, &[kind], false) {
                return e.into_response();
            }
            let base = base(&headers);
            let found = blocking(move || {
                Ok(render(&scim.read(), kind, &id, &base).ok_or_else(|| not_found(kind, &id)))
            })
            .await;
            match found {
                Ok(Ok(r)) => {
                    let unchanged = header_text(&headers, header::IF_NONE_MATCH)
                        .zip(version_of(&r))
                        .is_some_and(|(wanted, current)| resource::if_match(&wanted, &current));
                    if unchanged {
                        let mut response = StatusCode::NOT_MODIFIED.into_response();
                        if let Some(v) = version_of(&r).and_then(|v| HeaderValue::from_str(&v).ok())
                        {
                            response.headers_mut().insert(header::ETAG, v);
                        }
                        return response;
                    }
                    resource_response(StatusCode::OK, Projection::of(&query).apply(r))
                }
                Ok(Err(e)) | Err(e) => e.into_response(),
            }
        },
    )
    .put(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              Path(id): Path<String>,
              headers: HeaderMap,
              request: Request| async move {
            change(scim, &caller, id, &headers, request, kind, Change::Replace).await
        },
    )
    .patch(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              Path(id): Path<String>,
              headers: HeaderMap,
              request: Request| async move {
            change(scim, &caller, id, &headers, request, kind, Change::Patch).await
        },
    )
    .delete(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              Path(id): Path<String>,
              headers: HeaderMap| async move { delete(scim, &caller, id, &headers, kind).await },
    )
}

async fn create(
    scim: Arc<Scim>,
    caller: &Caller,
    headers: &HeaderMap,
    request: Request,
    kind: Kind,
) -> Response {
    let body = match allowed_body(&scim, caller, &[kind], true, request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let _one = scim.writes.lock().await;
    let result = async {
        scim.catch_up().await?;
        let input = resource::input(kind, body)?;
        let id = uuid::Uuid::new_v4().to_string();
        let records = {
            let (scim, id) = (scim.clone(), id.clone());
            blocking(move || {
                let store = scim.read();
                records_for_write(&store, &scim.redactor, kind, &id, input)
            })
            .await?
        };
        publish(&scim, caller, records, vec![]).await?;
        render(&scim.read(), kind, &id, &base(headers)).ok_or_else(|| not_found(kind, &id))
    }
    .await;
    match result {
        Ok(r) => created(r),
        Err(e) => e.into_response(),
    }
}

#[derive(Clone, Copy)]
enum Change {
    Replace,
    Patch,
}

/// PUT (the body is the new resource) or PATCH (the body's operations apply to the current
/// rendering; the result is validated as a PUT body). Decided on the caught-up store in one
/// hold of its lock, after `If-Match`.
async fn change(
    scim: Arc<Scim>,
    caller: &Caller,
    id: String,
    headers: &HeaderMap,
    request: Request,
    kind: Kind,
    how: Change,
) -> Response {
    let body = match allowed_body(&scim, caller, &[kind], true, request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let if_match = header_text(headers, header::IF_MATCH);
    let base = base(headers);
    let _one = scim.writes.lock().await;
    let result = async {
        scim.catch_up().await?;
        let records = {
            let (scim, id, base) = (scim.clone(), id.clone(), base.clone());
            blocking(move || {
                let store = scim.read();
                let current =
                    render(&store, kind, &id, &base).ok_or_else(|| not_found(kind, &id))?;
                precondition(if_match.as_deref(), &current)?;
                let input = match how {
                    Change::Replace => resource::input(kind, body)?,
                    Change::Patch => {
                        let mut r = current;
                        if let Some(o) = r.as_object_mut() {
                            for owned in ["id", "meta", "schemas", "groups"] {
                                o.remove(owned);
                            }
                        }
                        resource::patch(&mut r, &body)?;
                        resource::input(kind, r)?
                    }
                };
                records_for_write(&store, &scim.redactor, kind, &id, input)
            })
            .await?
        };
        publish(&scim, caller, records, vec![]).await?;
        render(&scim.read(), kind, &id, &base).ok_or_else(|| not_found(kind, &id))
    }
    .await;
    match result {
        Ok(r) => resource_response(StatusCode::OK, r),
        Err(e) => e.into_response(),
    }
}

async fn delete(
    scim: Arc<Scim>,
    caller: &Caller,
    id: String,
    headers: &HeaderMap,
    kind: Kind,
) -> Response {
    if let Err(e) = allowed(caller, &scim, &[kind], true) {
        return e.into_response();
    }
    let if_match = header_text(headers, header::IF_MATCH);
    let base = base(headers);
    let _one = scim.writes.lock().await;
    let result = async {
        scim.catch_up().await?;
        let records = {
            let (scim, id) = (scim.clone(), id.clone());
            blocking(move || {
                let store = scim.read();
                let current =
                    render(&store, kind, &id, &base).ok_or_else(|| not_found(kind, &id))?;
                precondition(if_match.as_deref(), &current)?;
                records_for_delete(&store, kind, &id)
            })
            .await?
        };
        publish(&scim, caller, records, vec![key_of(kind, &id)]).await
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

// ---- Lists ----

/// A list request: `filter`, `startIndex` (from 1), `count` and the projection.
pub struct ListQuery {
    filter: Option<Filter>,
    start: usize,
    count: usize,
    projection: Projection,
}

impl ListQuery {
    pub fn parse(query: &Params) -> Result<Self, ScimError> {
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let filter = param("filter").map(filter::parse).transpose()?;
        let number = |name: &str, default: usize| -> Result<usize, ScimError> {
            match param(name) {
                None => Ok(default),
                Some(v) => v.parse::<i64>().map(|n| n.max(0) as usize).map_err(|_| {
                    ScimError::bad_request("invalidValue", format!("{name} must be a number"))
                }),
            }
        };
        Ok(Self {
            filter,
            start: number("startIndex", 1)?.max(1),
            count: number("count", 100)?.min(MAX_PAGE),
            projection: Projection::of(query),
        })
    }
}

/// The ListResponse of `query` over `kinds` (users before groups), each in id order.
///
/// Unfiltered: the page is taken by position and only it is rendered. Filtered: the indexes
/// give the candidates when they can answer the filter; otherwise every entry is looked at.
/// Either way the filter is applied to each candidate's rendering, the store's read lock is
/// held for at most [`LIST_CHUNK`] entries at a time, and only the page is projected.
pub fn list_page(store: &RwLock<Store>, kinds: &[Kind], query: &ListQuery, base: &str) -> Value {
    let read = || store.read().unwrap_or_else(|p| p.into_inner());
    let skip = query.start - 1;
    let mut total = 0usize;
    let mut page: Vec<Value> = Vec::new();
    for &kind in kinds {
        match &query.filter {
            None => {
                let store = read();
                let n = store.len(kind);
                let from = skip.saturating_sub(total);
                let want = query.count - page.len();
                if want > 0 && from < n {
                    for id in store.ids(kind, None, from, want) {
                        page.extend(render(&store, kind, &id, base));
                    }
                }
                total += n;
            }
            Some(f) => {
                let mut consider = |store: &Store, id: &str| {
                    if let Some(r) = render(store, kind, id, base) {
                        if f.matches(&r) {
                            if total >= skip && page.len() < query.count {
                                page.push(r);
                            }
                            total += 1;
                        }
                    }
                };
                let candidates = read().candidates(kind, f);
                match candidates {
                    Some(ids) => {
                        for chunk in ids.chunks(LIST_CHUNK) {
                            let store = read();
                            for id in chunk {
                                consider(&store, id);
                            }
                        }
                    }
                    None => {
                        let mut after: Option<String> = None;
                        loop {
                            let store = read();
                            let ids = store.ids(kind, after.as_deref(), 0, LIST_CHUNK);
                            for id in &ids {
                                consider(&store, id);
                            }
                            match ids.last() {
                                Some(last) => after = Some(last.clone()),
                                None => break,
                            }
                        }
                    }
                }
            }
        }
    }
    let page: Vec<Value> = page
        .into_iter()
        .map(|r| query.projection.apply(r))
        .collect();
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": query.start,
        "itemsPerPage": page.len(),
        "Resources": page,
    })
}

/// A ListResponse page of the resources matching `filter`, computed on a blocking thread.
async fn list(scim: Arc<Scim>, kinds: Vec<Kind>, query: Params, base: String) -> Response {
    let result = blocking(move || {
        let query = ListQuery::parse(&query)?;
        Ok(list_page(&scim.store, &kinds, &query, &base))
    })
    .await;
    match result {
        Ok(body) => scim_json(StatusCode::OK, body),
        Err(e) => e.into_response(),
    }
}

/// `POST /.search`, `/Users/.search`, `/Groups/.search`: the list query in a SearchRequest
/// body (`None`: users and groups at once, which needs both scopes).
fn search(kind: Option<Kind>) -> MethodRouter<Arc<Scim>> {
    axum::routing::post(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              headers: HeaderMap,
              request: Request| async move {
            let kinds = match kind {
                Some(k) => vec![k],
                None => vec![Kind::User, Kind::Group],
            };
            let body = match allowed_body(&scim, &caller, &kinds, false, request).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            list(scim, kinds, search_params(body), base(&headers)).await
        },
    )
}

/// A SearchRequest body's members as query parameters; lists become comma-separated.
fn search_params(body: Value) -> Params {
    let mut query = HashMap::new();
    if let Value::Object(obj) = body {
        for (k, v) in obj {
            let text = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                _ => continue,
            };
            query.insert(k, text);
        }
    }
    query
}

/// `attributes` / `excludedAttributes` (RFC 7644 §3.4.2.5): which attributes a response
/// carries. `id`, `schemas` and `meta` are always returned.
pub struct Projection {
    only: Option<Vec<Vec<String>>>,
    excluded: Vec<Vec<String>>,
}

impl Projection {
    fn of(query: &HashMap<String, String>) -> Self {
        let paths = |name: &str| -> Option<Vec<Vec<String>>> {
            let value = query
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)?;
            Some(
                value
                    .split(',')
                    .filter_map(|p| filter::attribute_path(p.trim()).ok())
                    .collect(),
            )
        };
        Self {
            only: paths("attributes"),
            excluded: paths("excludedAttributes").unwrap_or_default(),
        }
    }

    fn apply(&self, resource: Value) -> Value {
        let Value::Object(mut obj) = resource else {
            return resource;
        };
        const ALWAYS: [&str; 3] = ["id", "schemas", "meta"];
        let named = |paths: &[Vec<String>], key: &str| {
            paths
                .iter()
                .filter(|p| p[0].eq_ignore_ascii_case(key))
                .map(|p| p.get(1).cloned())
                .collect::<Vec<_>>()
        };
        if let Some(only) = &self.only {
            obj.retain(|k, v| {
                if ALWAYS.contains(&k.as_str()) {
                    return true;
                }
                let subs = named(only, k);
                if subs.is_empty() {
                    return false;
                }
                // `name.givenName` keeps only that sub-attribute.
                if subs.iter().all(Option::is_some) {
                    if let Value::Object(inner) = v {
                        inner.retain(|s, _| {
                            subs.iter().flatten().any(|w| w.eq_ignore_ascii_case(s))
                        });
                    }
                }
                true
            });
        }
        obj.retain(|k, v| {
            if ALWAYS.contains(&k.as_str()) {
                return true;
            }
            let subs = named(&self.excluded, k);
            if subs.iter().any(Option::is_none) {
                return false;
            }
            if let Value::Object(inner) = v {
                inner.retain(|s, _| !subs.iter().flatten().any(|w| w.eq_ignore_ascii_case(s)));
            }
            true
        });
        Value::Object(obj)
    }
}

// ---- Discovery ----

static SCHEMAS: &str = include_str!("scim/schemas.json");

fn schema_list() -> Vec<Value> {
    serde_json::from_str(SCHEMAS).unwrap_or_default()
}

async fn service_provider_config() -> Response {
    scim_json(
        StatusCode::OK,
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://github.com/audit-pipeline/audit-pipeline#directory",
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": MAX_PAGE},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": true},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "A token of the ingest service's [[tokens]] with the directory scope",
                "primary": true
            }],
            "meta": {"resourceType": "ServiceProviderConfig", "location": "/scim/v2/ServiceProviderConfig"}
        }),
    )
}

fn resource_type_of(kind: Kind) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": kind.name(),
        "name": kind.name(),
        "endpoint": format!("/{}s", kind.name()),
        "schema": kind.schema(),
        "meta": {"resourceType": "ResourceType", "location": format!("/scim/v2/ResourceTypes/{}", kind.name())}
    })
}

async fn resource_types() -> Response {
    let types = vec![resource_type_of(Kind::User), resource_type_of(Kind::Group)];
    scim_json(
        StatusCode::OK,
        json!({"schemas": [LIST_SCHEMA], "totalResults": 2, "startIndex": 1, "itemsPerPage": 2, "Resources": types}),
    )
}

async fn resource_type(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "User" => scim_json(StatusCode::OK, resource_type_of(Kind::User)),
        "Group" => scim_json(StatusCode::OK, resource_type_of(Kind::Group)),
        _ => ScimError::new(404, format!("resource type {name} not found")).into_response(),
    }
}

async fn schemas() -> Response {
    let list = schema_list();
    scim_json(
        StatusCode::OK,
        json!({"schemas": [LIST_SCHEMA], "totalResults": list.len(), "startIndex": 1, "itemsPerPage": list.len(), "Resources": list}),
    )
}

async fn schema(Path(id): Path<String>) -> Response {
    match schema_list().into_iter().find(|s| s["id"] == id.as_str()) {
        Some(s) => scim_json(StatusCode::OK, s),
        None => ScimError::new(404, format!("schema {id} not found")).into_response(),
    }
}

/// Follows the directory topic into a new store (on its own task) and returns the SCIM state
/// over it, with writes caught up with the topic before they decide; SCIM answers 503 until
/// the topic was read to its end.
pub fn spawn(
    kafka: &audit_runtime::KafkaConfig,
    directory_topic: &str,
    publisher: Publisher,
    redactor: Redactor,
    limits: Limits,
    shutdown: &audit_runtime::Shutdown,
) -> Arc<Scim> {
    let store = Arc::new(RwLock::new(Store::default()));
    let (tx, rx) = watch::channel(false);
    let scim = Scim::new(publisher, store.clone(), rx, redactor, limits)
        .with_catch_up(kafka, directory_topic);
    let kafka = kafka.clone();
    let topic = directory_topic.to_string();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let apply = |key: &[u8], value: Option<&[u8]>, partition: i32, offset: i64| {
            let result = store
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply_record(key, value, partition, offset);
            if let Err(reason) = result {
                tracing::warn!(topic = %topic, partition, offset, %reason, "directory record skipped by SCIM");
            }
        };
        let topic_name = topic.clone();
        if let Err(e) = audit_runtime::follow::follow(
            &kafka,
            "audit-producer-scim",
            &topic_name,
            tx,
            stop,
            apply,
        )
        .await
        {
            tracing::error!(error = %e, "the SCIM directory follower stopped; SCIM answers 503");
        }
    });
    Arc::new(scim)
}
