//! The TypeScript logger (`client-ts/`) end to end: a real headless Chromium posting with a
//! browser token through the real ingest API, enricher and ClickHouse sink; and a real Node
//! process killed while offline. Needs `client-ts` built (`npm ci && npm run build`, which the
//! README's test command does) and Debian's `chromium`.

use anyhow::{bail, Context, Result};
use audit_tests::pipeline::{free_port, Pipeline, Service, Stage};
use audit_tests::*;
use axum::extract::Path as UrlPath;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn client_ts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../client-ts")
}

fn node_script(args: &[&str]) -> Command {
    let mut cmd = Command::new("node");
    cmd.current_dir(client_ts()).args(args);
    cmd
}

/// Serves the built package at `/dist/` and the test pages, as the platform serves its app.
async fn serve_pages() -> Result<u16> {
    let dist = client_ts().join("dist");
    if !dist.join("index.js").exists() {
        bail!(
            "{} is missing: build the package first (cd client-ts && npm ci && npm run build)",
            dist.display()
        );
    }
    async fn file(path: PathBuf) -> axum::response::Response {
        let kind = match path.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html; charset=utf-8",
            _ => "text/javascript; charset=utf-8",
        };
        match tokio::fs::read(&path).await {
            Ok(bytes) => ([(header::CONTENT_TYPE, kind)], bytes).into_response(),
            Err(_) => StatusCode::NOT_FOUND.into_response(),
        }
    }
    let root = client_ts();
    let (d, e) = (root.join("dist"), root.join("e2e"));
    let app = Router::new()
        .route(
            "/dist/{name}",
            get(move |UrlPath(name): UrlPath<String>| {
                let path = d.join(name.replace(['/', '\\'], "").replace("..", ""));
                file(path)
            }),
        )
        .route(
            "/{page}",
            get(move |UrlPath(page): UrlPath<String>| {
                let path = match page.as_str() {
                    "page.html" | "cors.html" => e.join(page),
                    _ => e.join("missing"),
                };
                file(path)
            }),
        );
    let port = free_port()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

async fn start(p: &Pipeline) -> Result<Vec<Service>> {
    Ok(vec![
        p.start(Stage::Producer).await?,
        p.start(Stage::Enricher).await?,
        p.start(Stage::ClickHouseSink).await?,
    ])
}

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct Row {
    event_type: String,
    message: Option<String>,
    source: String,
    service: String,
    user_id: Option<String>,
    claimed_user_id: Option<String>,
    session_id: Option<String>,
    tenant: Option<String>,
    credential: String,
    peer_ip: Option<String>,
    overridden_claims: Vec<(String, String)>,
    success: bool,
    error_message: Option<String>,
    error_fingerprint: Option<String>,
    error_stack_trace: Option<String>,
}

async fn rows_like(p: &Pipeline, prefix: &str, want: usize) -> Vec<Row> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let rows: Vec<Row> = p
            .clickhouse()
            .query(
                "SELECT ?fields FROM events WHERE startsWith(coalesce(message, ''), ?) ORDER BY timestamp",
            )
            .bind(prefix)
            .fetch_all()
            .await
            .unwrap_or_default();
        if rows.len() >= want || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A page logs with a browser token, throws an uncaught error and is closed: every event
/// arrives with the token's user and session, a claim of another user is overridden and
/// flagged, and a page of a foreign origin is refused by the browser's CORS check.
#[tokio::test(flavor = "multi_thread")]
async fn a_browser_page_logs_with_its_token_and_foreign_origins_are_refused() -> Result<()> {
    let pages = serve_pages().await?;
    let mut p = Pipeline::create(kafka_config(), 2).await?;
    p.browser_origins = vec![format!("http://127.0.0.1:{pages}")];
    let _services = start(&p).await?;
    let token = p.browser_token("u-browser", "s-browser")?;
    let endpoint = format!("http://{}/v1/events", p.http);
    let query = format!("endpoint={endpoint}&token={token}&run=e2e");
    let output = node_script(&[
        "e2e/browser.mjs",
        &format!("http://127.0.0.1:{pages}/page.html?{query}"),
        // Another origin: same server, another host name.
        &format!("http://localhost:{pages}/cors.html?{query}"),
    ])
    .stderr(Stdio::inherit())
    .output()
    .context("running node e2e/browser.mjs")?;
    if !output.status.success() {
        bail!("the browser driver failed: {}", output.status);
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| String::from_utf8_lossy(&output.stdout).to_string())?;
    assert!(
        result["cors"]
            .as_str()
            .is_some_and(|c| c.starts_with("refused")),
        "a foreign origin must be refused by CORS: {result}"
    );
    assert_eq!(
        result["pageErrors"],
        serde_json::json!(["browser: uncaught boom"])
    );

    let rows = rows_like(&p, "browser: ", 4).await;
    let by_message = |m: &str| {
        rows.iter()
            .find(|r| r.message.as_deref() == Some(m))
            .with_context(|| format!("no row {m:?} among {rows:#?}"))
    };
    for message in [
        "browser: page opened",
        "browser: query created",
        "browser: claims another user",
        "browser: uncaught boom",
    ] {
        let r = by_message(message)?;
        assert_eq!(
            (r.source.as_str(), r.service.as_str()),
            ("CLIENT", "web"),
            "{r:?}"
        );
        assert_eq!(r.user_id.as_deref(), Some("u-browser"), "{r:?}");
        assert_eq!(r.claimed_user_id.as_deref(), Some("u-browser"), "{r:?}");
        assert_eq!(r.session_id.as_deref(), Some("s-browser"), "{r:?}");
        assert_eq!(r.tenant.as_deref(), Some("e2e-tenant"), "{r:?}");
        assert_eq!(r.credential, "BROWSER_TOKEN");
        assert_eq!(r.peer_ip.as_deref(), Some("127.0.0.1"));
    }
    let liar = by_message("browser: claims another user")?;
    let mut flagged = liar.overridden_claims.clone();
    flagged.sort();
    assert_eq!(
        flagged,
        vec![
            ("session_id".to_string(), "s-mallory".to_string()),
            ("user_id".to_string(), "mallory".to_string())
        ]
    );
    assert!(by_message("browser: page opened")?
        .overridden_claims
        .is_empty());
    let error = by_message("browser: uncaught boom")?;
    assert_eq!(error.event_type, "error");
    assert!(!error.success);
    assert_eq!(
        error.error_message.as_deref(),
        Some("browser: uncaught boom")
    );
    assert!(error
        .error_stack_trace
        .as_deref()
        .is_some_and(|s| s.contains("TypeError")));
    assert_eq!(error.error_fingerprint.as_ref().map(String::len), Some(16));
    assert!(
        rows.iter()
            .all(|r| r.message.as_deref() != Some("browser: from a foreign origin")),
        "the foreign origin's event must not be stored"
    );
    Ok(())
}

/// A Node process logs while the API is unreachable, is killed with SIGKILL, and the next
/// process on the same queue file sends every record, with the ids they were given.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_process_killed_offline_sends_its_queue_on_the_next_start() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _services = start(&p).await?;
    let dir = tempfile::tempdir()?;
    let queue = dir.path().join("queue.jsonl");
    let queue = queue.to_string_lossy().to_string();
    let unreachable = format!("http://127.0.0.1:{}/v1/events", free_port()?);
    let mut offline = node_script(&[
        "e2e/offline.mjs",
        "offline",
        &unreachable,
        &p.token,
        &queue,
        "25",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()?;
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = offline.stdout.take().context("stdout")?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
    }
    let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&line)
        .with_context(|| line.clone())?["ids"]
        .as_array()
        .context("ids")?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    assert_eq!(ids.len(), 25);
    offline.kill()?; // SIGKILL
    offline.wait()?;

    let endpoint = format!("http://{}/v1/events", p.http);
    let resumed = node_script(&["e2e/offline.mjs", "resume", &endpoint, &p.token, &queue])
        .stderr(Stdio::inherit())
        .output()?;
    assert!(resumed.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&resumed.stdout)?;
    assert_eq!(stats["sent"], 25, "{stats}");
    assert_eq!(stats["queued"], 0, "{stats}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let stored: Vec<String> = p
            .clickhouse()
            .query("SELECT DISTINCT toString(event_id) FROM events WHERE startsWith(coalesce(message, ''), 'node offline ')")
            .fetch_all()
            .await
            .unwrap_or_default();
        if stored.len() == ids.len() {
            let mut stored = stored;
            let mut ids = ids.clone();
            stored.sort();
            ids.sort();
            assert_eq!(
                stored, ids,
                "the ids given while offline are the ids stored"
            );
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} of {} offline records stored", stored.len(), ids.len());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
