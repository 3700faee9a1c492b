//! The operations endpoint every service serves: `/metrics` in Prometheus text format and
//! `/healthz`, which answers 200 only while every registered check is healthy (503 with the
//! failing checks otherwise), so an orchestrator restarts or stops routing to a stuck instance.
//!
//! Every scrape also samples the process itself (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, open files, threads), beside the gauges of what each structure
//! holds (replay windows, directory, librdkafka's queues): memory is read where it is spent.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};

use crate::Shutdown;

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map(|()| handle)
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// Named health checks that components flip as they connect, stall or recover.
#[derive(Debug, Clone, Default)]
pub struct Health {
    checks: Arc<RwLock<BTreeMap<String, Check>>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub healthy: bool,
    pub detail: String,
}

#[derive(Serialize)]
struct Report {
    status: &'static str,
    checks: BTreeMap<String, Check>,
}

impl Health {
    pub fn set(&self, name: &str, healthy: bool, detail: impl Into<String>) {
        let mut checks = self.checks.write().unwrap_or_else(|p| p.into_inner());
        checks.insert(
            name.to_string(),
            Check {
                healthy,
                detail: detail.into(),
            },
        );
    }

    pub fn is_healthy(&self) -> bool {
        let checks = self.checks.read().unwrap_or_else(|p| p.into_inner());
        checks.values().all(|c| c.healthy)
    }

    fn report(&self) -> (bool, Report) {
        let checks = self
            .checks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let healthy = checks.values().all(|c| c.healthy);
        let status = if healthy { "ok" } else { "unhealthy" };
        (healthy, Report { status, checks })
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    process: Arc<metrics_process::Collector>,
    health: Health,
}

/// The ops routes, for services that merge them into their own router (the ingest API).
pub fn router(health: Health) -> anyhow::Result<Router> {
    let process = metrics_process::Collector::default();
    process.describe();
    let state = OpsState {
        metrics: metrics_handle()?,
        process: Arc::new(process),
        health,
    };
    Ok(Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state))
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    state.process.collect();
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<OpsState>) -> impl IntoResponse {
    let (healthy, report) = state.health.report();
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report))
}

/// Binds `listen` and serves the ops routes until shutdown. Binding happens before this returns,
/// so a taken port is a start-up error naming the setting, not a log line later.
pub async fn serve(
    listen: SocketAddr,
    health: Health,
    shutdown: Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = router(health)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("setting `ops.listen`: cannot listen on {listen}: {e}"))?;
    tracing::info!(%listen, "serving /metrics and /healthz");
    Ok(tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.requested().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "ops endpoint stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_the_conjunction_of_checks() {
        let h = Health::default();
        assert!(h.is_healthy());
        h.set("kafka", true, "connected");
        h.set("clickhouse", false, "connection refused");
        assert!(!h.is_healthy());
        let (ok, report) = h.report();
        assert!(!ok);
        assert_eq!(report.checks["clickhouse"].detail, "connection refused");
        h.set("clickhouse", true, "ok");
        assert!(h.is_healthy());
    }
}
