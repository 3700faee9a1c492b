//! A SCIM 2.0 service provider (RFC 7643, RFC 7644) at `/scim/v2`, so an identity provider
//! (Okta, Entra ID, ...) provisions users, groups and memberships into the directory the
//! enricher joins on, with no custom code.
//!
//! - [`resource`]: request bodies, rendering and PATCH, pure.
//! - [`filter`]: `filter=` expressions, pure.
//! - [`store`]: the users and groups served, kept from the directory topic, pure.
//! - this module: the routes and the I/O (publishing to the directory topic).
//!
//! Callers authenticate with a bearer token granted the `directory` scope. Supported: Users
//! and Groups with create (POST), read, replace (PUT), PATCH (add/replace/remove, value filters
//! in paths), delete, and list with `filter`, `startIndex` and `count`; `/ServiceProviderConfig`,
//! `/ResourceTypes` and `/Schemas`. Not supported: bulk, sorting, ETags, `/Me`, POST `.search`.
//!
//! A write answers once the broker acknowledged every record it made (a group's membership
//! change republishes each member user with its new `group_ids`). Writes on one instance are
//! serialized; with several instances behind one IdP the last writer wins, as SCIM without
//! ETags allows.

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
use resource::Kind;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use store::Store;
use tokio::sync::watch;

const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// Most resources one list page returns.
const MAX_PAGE: usize = 1_000;

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

/// What the SCIM routes share.
pub struct Scim {
    pub publisher: Publisher,
    pub store: Arc<RwLock<Store>>,
    /// True once the directory topic was read to its end at start.
    pub ready: watch::Receiver<bool>,
    pub redactor: Redactor,
    pub limits: Limits,
    /// One write at a time: a write reads the store, then publishes what changed.
    writes: tokio::sync::Mutex<()>,
}

impl Scim {
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
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|p| p.into_inner())
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

fn allowed(caller: &Caller, scim: &Scim) -> Result<(), ScimError> {
    if !caller.may(Scope::Directory) {
        return Err(ScimError::new(
            403,
            "this token may not write the directory: grant it the `directory` scope",
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

/// The checks of every request with a body, then the body as JSON.
async fn allowed_body(scim: &Scim, caller: &Caller, request: Request) -> Result<Value, Response> {
    allowed(caller, scim).map_err(IntoResponse::into_response)?;
    json_body(scim, request).await
}

async fn json_body(scim: &Scim, request: Request) -> Result<Value, Response> {
    let bytes = read_body(request.into_body(), &scim.limits).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ScimError::bad_request("invalidSyntax", format!("the body is not JSON: {e}"))
            .into_response()
    })
}

/// Publishes the records (tombstones for `deleted`) and, once acknowledged, applies them to the
/// store so the next read on this instance sees them.
/// Each change goes with its control event, whose old value is this instance's copy of the
/// entry.
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
            let mut store = scim.store.write().unwrap_or_else(|p| p.into_inner());
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
    let mut response = scim_json(StatusCode::CREATED, resource);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

fn not_found(kind: Kind, id: &str) -> ScimError {
    ScimError::new(404, format!("{} {id} not found", kind.name()))
}

// ---- Users and Groups: what differs by kind ----

fn render(store: &Store, kind: Kind, id: &str, base: &str) -> Option<Value> {
    match kind {
        Kind::User => store
            .user(id)
            .map(|u| resource::render_user(u, &store.groups_of(u), base)),
        Kind::Group => store
            .group(id)
            .map(|g| resource::render_group(g, &store.members_of(&g.id), base)),
    }
}

fn all(store: &Store, kind: Kind, base: &str) -> Vec<Value> {
    match kind {
        Kind::User => store
            .users()
            .map(|u| resource::render_user(u, &store.groups_of(u), base))
            .collect(),
        Kind::Group => store
            .groups()
            .map(|g| resource::render_group(g, &store.members_of(&g.id), base))
            .collect(),
    }
}

/// The records a create (`existing` false) or replace of entry `id` publishes: the entry,
/// and for a group the member entries whose memberships change.
fn records_for_write(
    scim: &Scim,
    kind: Kind,
    id: &str,
    mut input: resource::Input,
) -> Result<Vec<DirectoryRecord>, ScimError> {
    let mut attributes = Value::Object(std::mem::take(&mut input.attributes));
    scim.redactor.redact_value(&mut attributes);
    if let Value::Object(a) = attributes {
        input.attributes = a;
    }
    let store = scim.read();
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
            let user = User {
                id: id.to_string(),
                login: user_name,
                name: input.display_name(),
                group_ids: existing.map(|u| u.group_ids.clone()).unwrap_or_default(),
                scim: Some(resource::stored(&input, &created, &now)),
            };
            Ok(vec![DirectoryRecord {
                entry: DirectoryEntry::User(user),
            }])
        }
        Kind::Group => {
            let existing = store.group(id);
            let old_members = existing
                .and_then(|g| g.scim.as_deref())
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .and_then(|v| resource::input(Kind::Group, v).ok())
                .map(|i| i.member_ids())
                .unwrap_or_else(|| store.members_of(id).into_iter().map(|(m, _)| m).collect());
            let created = existing
                .and_then(|g| resource::created_of(g.scim.as_deref()))
                .unwrap_or_else(|| now.clone());
            let group = Group {
                id: id.to_string(),
                name: input.name(Kind::Group).to_string(),
                parent_ids: existing.map(|g| g.parent_ids.clone()).unwrap_or_default(),
                scim: Some(resource::stored(&input, &created, &now)),
            };
            let mut records = store.membership_changes(id, &old_members, &input.member_ids());
            records.push(DirectoryRecord {
                entry: DirectoryEntry::Group(group),
            });
            Ok(records)
        }
    }
}

/// The records a delete publishes besides the entry's tombstone: groups that listed a user
/// stop listing it; members of a group lose it.
fn records_for_delete(
    store: &Store,
    kind: Kind,
    id: &str,
) -> Result<Vec<DirectoryRecord>, ScimError> {
    match kind {
        Kind::User => {
            store.user(id).ok_or_else(|| not_found(kind, id))?;
            Ok(store
                .groups()
                .filter_map(|g| without_member(g, id))
                .map(|g| DirectoryRecord {
                    entry: DirectoryEntry::Group(g),
                })
                .collect())
        }
        Kind::Group => {
            store.group(id).ok_or_else(|| not_found(kind, id))?;
            let members: Vec<String> = store.members_of(id).into_iter().map(|(m, _)| m).collect();
            Ok(store.membership_changes(id, &members, &[]))
        }
    }
}

fn key_of(kind: Kind, id: &str) -> DirectoryKey {
    match kind {
        Kind::User => DirectoryKey::User(id.to_string()),
        Kind::Group => DirectoryKey::Group(id.to_string()),
    }
}

/// The group without `member` in its SCIM members, when it listed it.
fn without_member(group: &Group, member: &str) -> Option<Group> {
    let mut attributes: serde_json::Map<String, Value> =
        serde_json::from_str(group.scim.as_deref()?).ok()?;
    let Some(Value::Array(members)) = attributes.get_mut("members") else {
        return None;
    };
    let before = members.len();
    members.retain(|m| m.get("value").and_then(Value::as_str) != Some(member));
    if members.len() == before {
        return None;
    }
    Some(Group {
        scim: Some(Value::Object(attributes).to_string()),
        ..group.clone()
    })
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
            if let Err(e) = allowed(&caller, &scim) {
                return e.into_response();
            }
            list(all(&scim.read(), kind, &base(&headers)), &query)
        },
    )
    .post(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              headers: HeaderMap,
              request: Request| async move {
            create(&scim, &caller, &headers, request, kind).await
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
            if let Err(e) = allowed(&caller, &scim) {
                return e.into_response();
            }
            match render(&scim.read(), kind, &id, &base(&headers)) {
                Some(r) => scim_json(StatusCode::OK, Projection::of(&query).apply(r)),
                None => not_found(kind, &id).into_response(),
            }
        },
    )
    .put(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              Path(id): Path<String>,
              headers: HeaderMap,
              request: Request| async move {
            change(
                &scim,
                &caller,
                &id,
                &headers,
                request,
                kind,
                Change::Replace,
            )
            .await
        },
    )
    .patch(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              Path(id): Path<String>,
              headers: HeaderMap,
              request: Request| async move {
            change(&scim, &caller, &id, &headers, request, kind, Change::Patch).await
        },
    )
    .delete(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              Path(id): Path<String>| async move { delete(&scim, &caller, &id, kind).await },
    )
}

async fn create(
    scim: &Scim,
    caller: &Caller,
    headers: &HeaderMap,
    request: Request,
    kind: Kind,
) -> Response {
    let body = match allowed_body(scim, caller, request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let _one = scim.writes.lock().await;
    let result = async {
        let input = resource::input(kind, body)?;
        let id = uuid::Uuid::new_v4().to_string();
        let records = records_for_write(scim, kind, &id, input)?;
        publish(scim, caller, records, vec![]).await?;
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
/// rendering; the result is validated as a PUT body).
async fn change(
    scim: &Scim,
    caller: &Caller,
    id: &str,
    headers: &HeaderMap,
    request: Request,
    kind: Kind,
    how: Change,
) -> Response {
    let body = match allowed_body(scim, caller, request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let _one = scim.writes.lock().await;
    let result = async {
        let current =
            render(&scim.read(), kind, id, &base(headers)).ok_or_else(|| not_found(kind, id))?;
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
        let records = records_for_write(scim, kind, id, input)?;
        publish(scim, caller, records, vec![]).await?;
        render(&scim.read(), kind, id, &base(headers)).ok_or_else(|| not_found(kind, id))
    }
    .await;
    match result {
        Ok(r) => scim_json(StatusCode::OK, r),
        Err(e) => e.into_response(),
    }
}

async fn delete(scim: &Scim, caller: &Caller, id: &str, kind: Kind) -> Response {
    if let Err(e) = allowed(caller, scim) {
        return e.into_response();
    }
    let _one = scim.writes.lock().await;
    let result = async {
        let records = records_for_delete(&scim.read(), kind, id)?;
        publish(scim, caller, records, vec![key_of(kind, id)]).await
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

// ---- Lists ----

/// A ListResponse page of the resources matching `filter` (`startIndex` counts from 1).
fn list(all: Vec<Value>, query: &Params) -> Response {
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let filter = match param("filter").map(filter::parse).transpose() {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let number = |name: &str, default: usize| -> Result<usize, ScimError> {
        match param(name) {
            None => Ok(default),
            Some(v) => v.parse::<i64>().map(|n| n.max(0) as usize).map_err(|_| {
                ScimError::bad_request("invalidValue", format!("{name} must be a number"))
            }),
        }
    };
    let (start, count) = match (number("startIndex", 1), number("count", 100)) {
        (Ok(s), Ok(c)) => (s.max(1), c.min(MAX_PAGE)),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let matching: Vec<Value> = all
        .into_iter()
        .filter(|r| filter.as_ref().is_none_or(|f| f.matches(r)))
        .collect();
    let total = matching.len();
    let projection = Projection::of(query);
    let page: Vec<Value> = matching
        .into_iter()
        .skip(start - 1)
        .take(count)
        .map(|r| projection.apply(r))
        .collect();
    scim_json(
        StatusCode::OK,
        json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": page.len(),
            "Resources": page,
        }),
    )
}

/// `POST /.search`, `/Users/.search`, `/Groups/.search`: the list query in a SearchRequest
/// body (`None`: users and groups at once).
fn search(kind: Option<Kind>) -> MethodRouter<Arc<Scim>> {
    axum::routing::post(
        move |State(scim): State<Arc<Scim>>,
              Extension(caller): Extension<Caller>,
              headers: HeaderMap,
              request: Request| async move {
            let body = match allowed_body(&scim, &caller, request).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let query = search_params(body);
            let store = scim.read();
            let base = base(&headers);
            let resources = match kind {
                Some(kind) => all(&store, kind, &base),
                None => {
                    let mut both = all(&store, Kind::User, &base);
                    both.extend(all(&store, Kind::Group, &base));
                    both
                }
            };
            list(resources, &query)
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
struct Projection {
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
            "etag": {"supported": false},
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
/// over it; SCIM answers 503 until the topic was read to its end.
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
    let kafka = kafka.clone();
    let topic = directory_topic.to_string();
    let follower_store = store.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let apply = |key: &[u8], value: Option<&[u8]>, partition: i32, offset: i64| {
            let result = follower_store
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply_bytes(key, value);
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
    Arc::new(Scim::new(publisher, store, rx, redactor, limits))
}
