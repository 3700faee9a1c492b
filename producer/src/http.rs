//! The ingest API: `POST /v1/events`, directory writes (`PUT`/`DELETE /v1/directory/{kind}/{id}`,
//! bulk `POST /v1/directory`) for tokens with the `directory` scope, plus `/metrics` and
//! `/healthz`.
//!
//! The handler answers 202 only after the broker acknowledged every event of the request; see
//! [`crate::body`] for the statuses of bad requests. No sender can stall it for others:
//!
//! - the bearer token is checked before a byte of the body is read (401 at once);
//! - at most `http.max_in_flight_requests` requests are handled at once (503 with
//!   `Retry-After` past that: real capacity, the only 503 besides a broker outage);
//! - a body must arrive within `http.body_timeout_ms` (408) and within `http.max_body_bytes`
//!   (413);
//! - at most `http.max_connections` connections are open at once; further ones wait in the
//!   kernel's accept queue;
//! - a 422 lists at most `http.max_errors_listed` errors (and says how many there were).
//!
//! A client's fault (4xx) never touches `/healthz`.
//!
//! Browsers: with `browser.origins` set, CORS answers those origins only (preflights included,
//! before any token check), and a browser token ([`crate::browser`]) may post CLIENT events.
//! Every event records the sender's address as the API saw it ([`crate::peer`]).

use crate::auth::{Refused, Tokens};
use crate::body::{self, BodyError, Caller, CallerCredential, EventError};
use crate::body::{JsonLimits, Shape};
use crate::config::Scope;
use crate::quota::{CallerKey, Limited, QuotaLimits, Quotas, Ticket, BYTES_PER_JSON_VALUE};
use crate::serve::Peer;
use audit_runtime::ingest::{PublishError, Publisher};
use audit_runtime::ops::Health;
use audit_schemas::control::{self, Operator};
use audit_schemas::ingest::directory::{self as directory_write, DirectoryWrite, Kind};
use audit_schemas::redaction::Redactor;
use audit_schemas::Timestamp;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Extension, Json, Router};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

pub struct IngestState {
    pub publisher: Publisher,
    pub tokens: Tokens,
    pub redactor: Redactor,
    pub limits: Limits,
    /// The SCIM endpoint at `/scim/v2`, when the directory is followed.
    pub scim: Option<Arc<crate::scim::Scim>>,
    pub network: Network,
}

/// Who may reach the API from where.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Proxies whose `X-Forwarded-For` hops are believed (`http.trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins CORS answers (`browser.origins`); empty: no CORS at all.
    pub cors_origins: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub preflight_max_age: Duration,
}

impl Network {
    /// The CORS layer for the configured origins, or `None` when browsers may not post.
    fn cors(&self) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        if self.cors_origins.is_empty() {
            return Ok(None);
        }
        let origins = self
            .cors_origins
            .iter()
            .map(|o| axum::http::HeaderValue::from_str(o))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([axum::http::Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .expose_headers([header::RETRY_AFTER])
                .max_age(self.preflight_max_age),
        ))
    }

    /// The sender's address: the connection's peer, through trusted proxies.
    fn sender(&self, request: &Request) -> Option<IpAddr> {
        let peer = request.extensions().get::<ConnectInfo<Peer>>()?.0 .0.ip();
        let forwarded: Vec<&str> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Some(crate::peer::sender(peer, &forwarded, &self.trusted_proxies))
    }
}

/// What one request may take.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_events: usize,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub max_errors_listed: usize,
    pub max_in_flight_requests: usize,
    /// Caps on a body's JSON, checked before it is parsed.
    pub json: JsonLimits,
    /// What one credential, and all together, may hold at once.
    pub quota: QuotaLimits,
    /// The longest a request may take, body and broker acknowledgement included.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_events: 1_000,
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            max_errors_listed: 100,
            max_in_flight_requests: 256,
            json: JsonLimits::default(),
            quota: QuotaLimits {
                requests_per_caller: 16,
                bytes_per_caller: 16 * 1024 * 1024,
                requests_per_browser: 4,
                bytes_per_browser: 8 * 1024 * 1024,
                bytes_in_flight: 48 * 1024 * 1024,
            },
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// The full router: ingest plus the ops routes.
pub fn router(state: Arc<IngestState>, health: Health) -> anyhow::Result<Router> {
    let capacity = Arc::new(Semaphore::new(state.limits.max_in_flight_requests.max(1)));
    let quotas = Quotas::new(state.limits.quota);
    let mut routes = Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/directory", post(post_directory))
        .route(
            "/v1/directory/{kind}/{id}",
            put(put_directory).delete(delete_directory),
        );
    if let Some(scim) = &state.scim {
        routes = routes.nest_service("/scim/v2", crate::scim::router(scim.clone()));
    }
    let cors = state.network.cors()?;
    let mut ingest = routes
        // Innermost: only requests with a valid token take a slot, and each is charged to
        // its caller before its body is read.
        .layer(middleware::from_fn_with_state(
            (capacity, quotas, state.clone()),
            within_capacity,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), authorized))
        .with_state(state);
    if let Some(cors) = cors {
        // Outermost: a preflight carries no token and is answered here.
        ingest = ingest.layer(cors);
    }
    Ok(ingest.merge(audit_runtime::ops::router(health)?))
}

/// Checks the bearer token before anything reads the body.
async fn authorized(
    State(state): State<Arc<IngestState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let auth = values.next().map(|v| v.as_bytes());
    // Two Authorization headers are ambiguous: refuse rather than pick one.
    let auth = if values.next().is_some() {
        Some(&b"(two Authorization headers)"[..])
    } else {
        auth
    };
    match state.tokens.authorize(auth) {
        Ok(caller) => {
            if let Some(origin) = foreign_origin(&state.network, &caller, &request) {
                // The browser's CORS check already refuses such pages; a request that still
                // arrives with a browser token and a foreign Origin is not from a real page.
                return client_error(
                    StatusCode::FORBIDDEN,
                    json!({"error": format!("origin {origin:?} is not allowed (browser.origins)")}),
                );
            }
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) => {
            metrics::counter!("audit_producer_requests_total", "outcome" => "401").increment(1);
            if let Refused::Browser(reason) = &refused {
                metrics::counter!("audit_producer_browser_tokens_refused_total").increment(1);
                tracing::debug!(%reason, "browser token refused");
            }
            // The body is left unread, so the connection cannot carry another request.
            (
                StatusCode::UNAUTHORIZED,
                [
                    (header::WWW_AUTHENTICATE, "Bearer"),
                    (header::CONNECTION, "close"),
                ],
                Json(json!({"error": refused.to_string()})),
            )
                .into_response()
        }
    }
}

/// The `Origin` of a browser-token request when it is not one of `browser.origins`.
fn foreign_origin(network: &Network, caller: &Caller, request: &Request) -> Option<String> {
    if !matches!(caller.credential, Some(body::CallerCredential::Browser(_))) {
        return None;
    }
    let origin = request.headers().get(header::ORIGIN)?;
    let origin = String::from_utf8_lossy(origin.as_bytes());
    (!network.cors_origins.iter().any(|o| *o == origin)).then(|| origin.chars().take(256).collect())
}

/// Refuses requests past the in-flight limit or past their caller's share instead of
/// queueing them, and charges each admitted request to its caller until it is answered.
async fn within_capacity(
    State((capacity, quotas, state)): State<(Arc<Semaphore>, Arc<Quotas>, Arc<IngestState>)>,
    mut request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = capacity.try_acquire() else {
        metrics::counter!("audit_producer_requests_total", "outcome" => "busy").increment(1);
        return busy("the ingest API is handling as many requests as it may; retry after 1 second");
    };
    let Some(caller) = request.extensions().get::<Caller>() else {
        return busy("the request was not authorized");
    };
    let key = CallerKey::of(caller, state.network.sender(&request));
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = state.limits.max_body_bytes;
    let charge = match declared {
        Some(n) if n > max as u64 => {
            let mut response = client_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("the body is larger than {max} bytes (http.max_body_bytes)")}),
            );
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return response;
        }
        Some(n) => n as usize,
        // Without a length the body may be as large as allowed.
        None if request.method() == axum::http::Method::GET
            || request.method() == axum::http::Method::DELETE =>
        {
            0
        }
        None => max,
    };
    let class = key.class();
    match quotas.admit(key, charge) {
        Ok(ticket) => {
            request.extensions_mut().insert(Arc::new(ticket));
            let limit = state.limits.request_timeout;
            match tokio::time::timeout(limit, next.run(request)).await {
                Ok(response) => response,
                Err(_) => {
                    metrics::counter!("audit_producer_requests_total", "outcome" => "timeout")
                        .increment(1);
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "5"), (header::CONNECTION, "close")],
                        Json(json!({"error": format!("the request was not answered within {} ms (http.request_timeout_ms); some of it may be stored: retry with the same event ids", limit.as_millis())})),
                    )
                        .into_response()
                }
            }
        }
        Err(limited) => refuse_limited(class, limited),
    }
}

fn refuse_limited(class: &'static str, limited: Limited) -> Response {
    metrics::counter!("audit_producer_requests_limited_total", "class" => class, "limit" => limited.label())
        .increment(1);
    let status = StatusCode::from_u16(limited.status()).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    metrics::counter!("audit_producer_requests_total", "outcome" => status.as_str().to_string())
        .increment(1);
    (
        status,
        [(header::RETRY_AFTER, "1"), (header::CONNECTION, "close")],
        Json(json!({ "error": limited.to_string() })),
    )
        .into_response()
}

/// 503: over capacity. The body may be unread, so the connection is not reused.
fn busy(message: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1"), (header::CONNECTION, "close")],
        Json(json!({ "error": message })),
    )
        .into_response()
}

/// Reads the body within the size and time limits, and checks its JSON's shape before anything
/// parses it.
async fn read_and_measure(
    body: Body,
    limits: &Limits,
) -> Result<(axum::body::Bytes, Shape), Response> {
    let bytes = match tokio::time::timeout(
        limits.body_timeout,
        axum::body::to_bytes(body, limits.max_body_bytes),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(client_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("the body is larger than {} bytes (http.max_body_bytes) or was cut off", limits.max_body_bytes)}),
            ))
        }
        Err(_) => {
            return Err(client_error(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": format!("the body did not arrive within {} ms (http.body_timeout_ms)", limits.body_timeout.as_millis())}),
            ))
        }
    };
    match body::check_shape(&bytes, &limits.json) {
        Ok(shape) => Ok((bytes, shape)),
        Err(e) => Err(reject(BodyError::Shape(e), limits.max_errors_listed)),
    }
}

/// Reads a request's body within the limits and charges its parsed size to the request's
/// ticket, so a caller's share bounds the JSON trees it makes the API build, not just bytes.
/// Every route that takes a body (SCIM's too) reads it here.
pub(crate) async fn read_body(
    request: Request,
    limits: &Limits,
) -> Result<axum::body::Bytes, Response> {
    let ticket = request.extensions().get::<Arc<Ticket>>().cloned();
    let (bytes, shape) = read_and_measure(request.into_body(), limits).await?;
    if let Some(ticket) = ticket {
        let parsed = shape.values.saturating_mul(BYTES_PER_JSON_VALUE);
        if let Err(limited) = ticket.grow(parsed) {
            return Err(refuse_limited(ticket.key().class(), limited));
        }
    }
    Ok(bytes)
}

fn client_error(status: StatusCode, body: serde_json::Value) -> Response {
    metrics::counter!("audit_producer_requests_total", "outcome" => status.as_str().to_string())
        .increment(1);
    (status, Json(body)).into_response()
}

async fn post_events(
    State(state): State<Arc<IngestState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !caller.may(Scope::Events) {
        return forbidden("events");
    }
    let limits = &state.limits;
    let sender = state.network.sender(&request);
    let body = match read_body(request, limits).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let events = match body::parse(content_type, &body, limits.max_events)
        .and_then(|values| body::validate(values, &caller, &state.redactor, sender))
    {
        Ok(events) => events,
        Err(e) => return reject(e, limits.max_errors_listed),
    };
    match state.publisher.publish(&events).await {
        Ok(()) => {
            metrics::counter!("audit_producer_requests_total", "outcome" => "accepted")
                .increment(1);
            let overridden = events
                .iter()
                .filter(|e| e.ingest.as_ref().is_some_and(|i| !i.overridden.is_empty()))
                .count();
            if overridden > 0 {
                // A browser claiming another user or session: worth an operator's look.
                metrics::counter!("audit_producer_claims_overridden_total")
                    .increment(overridden as u64);
                tracing::info!(
                    service = %caller.service,
                    events = overridden,
                    "events claimed a user, session or tenant their token does not hold; stored with the token's and flagged"
                );
            }
            metrics::counter!("audit_producer_events_accepted_total", "service" => caller.service)
                .increment(events.len() as u64);
            let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
            (
                StatusCode::ACCEPTED,
                Json(json!({"accepted": ids.len(), "event_ids": ids})),
            )
                .into_response()
        }
        Err(e @ PublishError::TooLarge { index, limit, .. }) => client_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("{e}; none of the request was accepted"), "index": index, "limit": limit}),
        ),
        Err(PublishError::Busy { in_flight }) => {
            metrics::counter!("audit_producer_requests_total", "outcome" => "busy").increment(1);
            tracing::warn!(in_flight, "ingest refused: producer queue full");
            busy("the producer is at capacity; retry after 1 second")
        }
        Err(e) => {
            metrics::counter!("audit_producer_requests_total", "outcome" => "failed").increment(1);
            tracing::error!(error = %e, "publishing failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                Json(json!({"error": format!("events could not be stored: {e}; retry with the same event_ids to avoid duplicates")})),
            )
                .into_response()
        }
    }
}

/// The scope writing entries of `kind` needs.
fn kind_scope(kind: Kind) -> Scope {
    match kind {
        Kind::Session => Scope::Sessions,
        Kind::User => Scope::Users,
        Kind::Group => Scope::Groups,
    }
}

fn key_scope(key: &audit_schemas::DirectoryKey) -> Scope {
    match key {
        audit_schemas::DirectoryKey::Session(_) => Scope::Sessions,
        audit_schemas::DirectoryKey::User(_) => Scope::Users,
        audit_schemas::DirectoryKey::Group(_) => Scope::Groups,
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Events => "events",
        Scope::Sessions => "sessions",
        Scope::Users => "users",
        Scope::Groups => "groups",
        Scope::Directory => "directory",
    }
}

/// Whether `caller` may write directory entries needing `scope`. The directory is shared by
/// every tenant (entries carry none), so a token bound to one tenant may write none of it: a
/// session or membership it wrote would decide other tenants' events too.
pub(crate) fn write_refused(caller: &Caller, scope: Scope) -> Option<Response> {
    if !caller.may(scope) {
        return Some(forbidden(scope_name(scope)));
    }
    if let Some(tenant) = &caller.tenant {
        return Some(client_error(
            StatusCode::FORBIDDEN,
            json!({"error": format!("this token is bound to tenant {tenant:?} (tokens[].tenant) and the directory is shared by all tenants, so it cannot write it; use a token without a tenant")}),
        ));
    }
    None
}

fn forbidden(scope: &str) -> Response {
    client_error(
        StatusCode::FORBIDDEN,
        json!({"error": format!("this token does not have the {scope:?} scope (tokens[].scopes)")}),
    )
}

fn unknown_kind(kind: &str) -> Response {
    client_error(
        StatusCode::NOT_FOUND,
        json!({"error": format!("{kind:?} is not a directory kind; use sessions, users or groups")}),
    )
}

/// `PUT /v1/directory/{kind}/{id}`: one session, user or group.
async fn put_directory(
    State(state): State<Arc<IngestState>>,
    Extension(caller): Extension<Caller>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let Some(kind) = Kind::from_path(&kind) else {
        return unknown_kind(&kind);
    };
    if let Some(refused) = write_refused(&caller, kind_scope(kind)) {
        return refused;
    }
    let sender = state.network.sender(&request);
    let body = match read_body(request, &state.limits).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let value = match body::parse(content_type, &body, 1) {
        Ok(mut values) if values.len() == 1 => values.remove(0),
        Ok(_) => {
            return reject(
                BodyError::TooManyEvents { count: 2, max: 1 },
                state.limits.max_errors_listed,
            )
        }
        Err(e) => return reject(e, state.limits.max_errors_listed),
    };
    match directory_write::put_from_json(kind, &id, value, Timestamp::now()) {
        Ok(record) => {
            publish_directory(&state, &caller, sender, &[DirectoryWrite::Put(record)]).await
        }
        Err(errors) => reject(invalid(0, errors), state.limits.max_errors_listed),
    }
}

/// `DELETE /v1/directory/{kind}/{id}`: a tombstone for the entry.
async fn delete_directory(
    State(state): State<Arc<IngestState>>,
    Extension(caller): Extension<Caller>,
    Path((kind, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let Some(kind) = Kind::from_path(&kind) else {
        return unknown_kind(&kind);
    };
    if let Some(refused) = write_refused(&caller, kind_scope(kind)) {
        return refused;
    }
    let sender = state.network.sender(&request);
    match directory_write::delete(kind, &id) {
        Ok(key) => publish_directory(&state, &caller, sender, &[DirectoryWrite::Delete(key)]).await,
        Err(errors) => reject(invalid(0, errors), state.limits.max_errors_listed),
    }
}

/// `POST /v1/directory`: many puts and deletes (NDJSON or a JSON array), all or none.
async fn post_directory(
    State(state): State<Arc<IngestState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    // Refused at once when no directory scope could serve any line; each line's kind is
    // checked below.
    let refusals =
        [Scope::Sessions, Scope::Users, Scope::Groups].map(|s| write_refused(&caller, s));
    if refusals.iter().all(Option::is_some) {
        if let Some(refused) = refusals.into_iter().flatten().next() {
            return refused;
        }
    }
    let limits = &state.limits;
    let sender = state.network.sender(&request);
    let body = match read_body(request, limits).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let values = match body::parse(content_type, &body, limits.max_events) {
        Ok(values) => values,
        Err(e) => return reject(e, limits.max_errors_listed),
    };
    let now = Timestamp::now();
    let mut writes = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        match directory_write::line_from_json(value, now) {
            Ok(w) => writes.push(w),
            Err(e) => errors.extend(invalid(index, e).into_errors()),
        }
    }
    if !errors.is_empty() {
        return reject(BodyError::Invalid(errors), limits.max_errors_listed);
    }
    // All or none: one line of a kind the token may not write refuses the request.
    for (index, write) in writes.iter().enumerate() {
        let scope = key_scope(&write.key());
        if !caller.may(scope) {
            return client_error(
                StatusCode::FORBIDDEN,
                json!({"error": format!("line {index} writes {}, which needs the {:?} scope this token does not have (tokens[].scopes); nothing was accepted", write.key(), scope_name(scope)), "index": index}),
            );
        }
    }
    publish_directory(&state, &caller, sender, &writes).await
}

fn invalid(index: usize, errors: Vec<audit_schemas::ingest::FieldError>) -> BodyError {
    BodyError::Invalid(
        errors
            .into_iter()
            .map(|e| EventError {
                index,
                path: e.path,
                reason: e.reason,
            })
            .collect(),
    )
}

/// Who made a directory change through the API, for its control events: the token's service,
/// from the sender's address.
pub fn operator(caller: &Caller, sender: Option<IpAddr>) -> Operator {
    let authenticated_by = match caller.credential {
        Some(CallerCredential::Anonymous) => "anonymous",
        _ => "service-token",
    };
    Operator {
        id: caller.service.clone(),
        service: "audit-producer".into(),
        authenticated_by: authenticated_by.into(),
        host: None,
        ip: sender.map(|ip| ip.to_string()),
    }
}

/// Publishes directory writes with their control events (the API does not hold the directory,
/// so the old values are not known here; the entry's history in ClickHouse has them).
async fn publish_directory(
    state: &IngestState,
    caller: &Caller,
    sender: Option<IpAddr>,
    writes: &[DirectoryWrite],
) -> Response {
    let operator = operator(caller, sender);
    let control: Vec<_> = control::directory_changes(writes, false, |_| None)
        .iter()
        .map(|c| c.to_event(&operator, &state.redactor))
        .collect();
    match state.publisher.publish_directory(writes, &control).await {
        Ok(()) => {
            metrics::counter!("audit_producer_requests_total", "outcome" => "accepted")
                .increment(1);
            let keys: Vec<String> = writes.iter().map(|w| w.key().to_string()).collect();
            (
                StatusCode::ACCEPTED,
                Json(json!({"accepted": keys.len(), "keys": keys})),
            )
                .into_response()
        }
        Err(PublishError::Busy { .. }) => busy("the producer is at capacity; retry after 1 second"),
        Err(e) => {
            metrics::counter!("audit_producer_requests_total", "outcome" => "failed").increment(1);
            tracing::error!(error = %e, "publishing directory writes failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                Json(json!({"error": format!("the directory writes could not be stored: {e}; retry the same request")})),
            )
                .into_response()
        }
    }
}

fn reject(e: BodyError, max_listed: usize) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = match &e {
        BodyError::Invalid(errors) => json!({
            "error": e.to_string(),
            "errors": &errors[..errors.len().min(max_listed)],
            "errors_total": errors.len(),
            "errors_truncated": errors.len() > max_listed,
        }),
        _ => json!({"error": e.to_string()}),
    };
    client_error(status, body)
}
