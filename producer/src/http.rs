//! The ingest API: `POST /v1/events`, plus `/metrics` and `/healthz`.
//!
//! The handler answers 202 only after the broker acknowledged every event of the request; see
//! [`crate::body`] for the statuses of bad requests.

use crate::auth::Tokens;
use crate::body::{self, BodyError};
use crate::publish::{PublishError, Publisher};
use audit_runtime::ops::Health;
use audit_schemas::redaction::Redactor;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;

pub struct IngestState {
    pub publisher: Publisher,
    pub tokens: Tokens,
    pub redactor: Redactor,
    pub max_events: usize,
}

/// The full router: ingest plus the ops routes.
pub fn router(
    state: Arc<IngestState>,
    max_body_bytes: usize,
    health: Health,
) -> anyhow::Result<Router> {
    let ingest = Router::new()
        .route("/v1/events", post(post_events))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state);
    Ok(ingest.merge(audit_runtime::ops::router(health)?))
}

async fn post_events(
    State(state): State<Arc<IngestState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(caller) = state.tokens.authorize(auth) else {
        metrics::counter!("audit_producer_requests_total", "outcome" => "unauthorized")
            .increment(1);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "a valid bearer token is required"})),
        )
            .into_response();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let events = match body::parse(content_type, &body, state.max_events)
        .and_then(|values| body::validate(values, &caller, &state.redactor))
    {
        Ok(events) => events,
        Err(e) => return reject(e),
    };
    match state.publisher.publish(&events).await {
        Ok(()) => {
            metrics::counter!("audit_producer_requests_total", "outcome" => "accepted")
                .increment(1);
            metrics::counter!("audit_producer_events_accepted_total", "service" => caller.service)
                .increment(events.len() as u64);
            let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
            (
                StatusCode::ACCEPTED,
                Json(json!({"accepted": ids.len(), "event_ids": ids})),
            )
                .into_response()
        }
        Err(PublishError::Busy { in_flight }) => {
            metrics::counter!("audit_producer_requests_total", "outcome" => "busy").increment(1);
            tracing::warn!(in_flight, "ingest refused: producer queue full");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                Json(json!({"error": "the producer is at capacity; retry after 1 second"})),
            )
                .into_response()
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

fn reject(e: BodyError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    metrics::counter!("audit_producer_requests_total", "outcome" => status.as_str().to_string())
        .increment(1);
    let body = match &e {
        BodyError::Invalid(errors) => json!({"error": e.to_string(), "errors": errors}),
        _ => json!({"error": e.to_string()}),
    };
    (status, Json(body)).into_response()
}
