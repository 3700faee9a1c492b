//! `audit-producer`: puts audit events on the pipeline's raw topic.

use anyhow::{Context, Result};
use audit_producer::auth::Tokens;
use audit_producer::body::Caller;
use audit_producer::browser::BrowserTokens;
use audit_producer::config::Settings;
use audit_producer::tail::nodes::{NodeLogs, NodeOptions, NodeStats};
use audit_producer::tail::{TailOptions, Tailer};
use audit_producer::{gen, http, send, serve};
use audit_runtime::budget::SizeBudget;
use audit_runtime::ingest::Publisher;
use audit_runtime::ops::Health;
use audit_runtime::Shutdown;
use audit_schemas::Source;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// jemalloc for Rust and librdkafka alike: under glibc malloc, arena lock contention across the
/// Kafka client threads cost a large share of the CPU.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (`MALLOC_CONF` in the environment still overrides).
/// Freed pages go back to the kernel at once: a request parses its body into a tree several
/// times its size and frees it milliseconds later, and with jemalloc's default 10 s decay an
/// abuser's churn held 380-430 MiB of freed pages where the live set was under 90 MiB
/// (`cargo bench -p audit-producer --bench flood`).
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8; 34] = b"dirty_decay_ms:0,muzzy_decay_ms:0\0";

/// The audit log in a site's logs folder.
const SITE_AUDIT_LOG: &str = "lae-audit.log";

/// Publish audit events to the pipeline's raw topic (audit.raw), validated and with secrets
/// redacted, keyed by session so a session's events stay in order.
///
/// Settings: built-in defaults, then the TOML file given with --config, then environment
/// variables AUDIT__SECTION__KEY (e.g. AUDIT__KAFKA__BROKERS=host:9092). API tokens are set in the
/// file as [[tokens]] entries with token, service and sources.
#[derive(Debug, Parser)]
#[command(name = "audit-producer", version, about, long_about)]
struct Cli {
    /// TOML settings file.
    #[arg(long, global = true, env = "AUDIT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the ingest API: POST /v1/events with a JSON object, an array or NDJSON.
    ///
    /// Answers 202 with the event ids once the broker acknowledged every event; 400 for bodies
    /// that are not JSON, 422 listing each invalid event's index, field path and reason (nothing
    /// of such a request is published), 401 without a valid bearer token, 413 past
    /// http.max_body_bytes or http.max_events, 415 for other content types, 503 with Retry-After
    /// when the producer is at capacity. Also serves /metrics and /healthz.
    Serve,
    /// Follow a site's audit logs and publish each line: lae-audit.log through daily rotation
    /// and, given the site's logs folder, every node audit log under nodes/ as it appears.
    ///
    /// The position is saved beside the log (lae-audit.log.position; the node logs' in
    /// lae-audit.log.position.nodes) after every acknowledged batch, so a restart neither loses
    /// nor repeats a line. Lines that do not convert go to the dead-letter topic with the reason.
    Tail {
        /// The site's logs folder (<site>/logs: lae-audit.log and nodes/), or one log file.
        path: PathBuf,
        /// Stop at the end of the file instead of following it.
        #[arg(long)]
        once: bool,
    },
    /// Publish JSON or NDJSON events from FILE (or - for stdin), validated like the API.
    Send {
        /// File to read, or - for standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// Service name for events that name none.
        #[arg(long, default_value = "cli")]
        service: String,
    },
    /// Generate realistic load across every catalog type, publishing the matching sessions,
    /// users and groups to the directory topic first.
    Gen(gen::GenArgs),
    /// Print the effective settings as TOML.
    Config,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "{}",
                audit_runtime::telemetry::redacted_error("audit-producer", &e)
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    audit_runtime::telemetry::init(&settings.log)?;
    let redactor = settings.redaction.redactor();
    let publisher = || -> Result<Publisher> {
        let producer = audit_runtime::kafka::producer(&settings.kafka, "audit-producer")?;
        Ok(Publisher::new(
            producer,
            &settings.topics,
            settings.http.max_in_flight,
            SizeBudget::from(&settings.kafka),
        ))
    };
    match cli.command {
        Command::Config => {
            print!("{}", audit_runtime::config::to_redacted_toml(&settings)?);
        }
        Command::Serve => {
            if settings.tokens.is_empty() && !settings.http.allow_anonymous {
                anyhow::bail!("no API tokens configured: add [[tokens]] entries to the settings file (or set http.allow_anonymous = true for local development)");
            }
            audit_runtime::kafka::check_message_size(
                &settings.kafka,
                "audit-producer",
                &[&settings.topics.raw.name, &settings.topics.dlq.name],
            )
            .await?;
            let shutdown = Shutdown::on_signals();
            let health = Health::default();
            let publisher = publisher()?.with_health(health.clone());
            let limits = http::Limits {
                max_events: settings.http.max_events,
                max_body_bytes: settings.http.max_body_bytes,
                body_timeout: Duration::from_millis(settings.http.body_timeout_ms),
                max_errors_listed: settings.http.max_errors_listed,
                max_in_flight_requests: settings.http.max_in_flight_requests,
                json: audit_producer::body::JsonLimits {
                    max_depth: settings.http.max_json_depth,
                    max_values: settings.http.max_json_values,
                    max_object_keys: settings.http.max_object_keys,
                    max_array_elements: settings.http.max_array_elements,
                },
                request_timeout: Duration::from_millis(settings.http.request_timeout_ms),
                quota: audit_producer::quota::QuotaLimits {
                    requests_per_caller: settings.http.max_requests_per_caller,
                    bytes_per_caller: settings.http.max_bytes_per_caller,
                    requests_per_browser: settings.http.max_requests_per_browser,
                    bytes_per_browser: settings.http.max_bytes_per_browser,
                    bytes_in_flight: settings.http.max_bytes_in_flight,
                },
            };
            let serve_options = serve::ServeOptions {
                max_connections: settings.http.max_connections,
                max_connections_per_ip: settings.http.max_connections_per_ip,
                header_read_timeout: Duration::from_millis(settings.http.header_read_timeout_ms),
                idle_timeout: Duration::from_millis(settings.http.idle_timeout_ms),
                drain_timeout: Duration::from_secs(30),
            };
            let scim = audit_producer::scim::spawn(
                &settings.kafka,
                &settings.topics.directory.name,
                publisher.clone(),
                redactor.clone(),
                limits.clone(),
                &shutdown,
            );
            let state = Arc::new(http::IngestState {
                publisher: publisher.clone(),
                tokens: Tokens::new(
                    &settings.tokens,
                    settings
                        .http
                        .allow_anonymous
                        .then_some(settings.http.anonymous_service.as_str()),
                )
                .with_browser(
                    BrowserTokens::new(&settings.browser),
                    &settings.browser.service,
                ),
                redactor,
                limits,
                scim: Some(scim),
                network: http::Network {
                    trusted_proxies: settings.http.trusted_proxies.clone(),
                    cors_origins: settings.browser.origins.clone(),
                    preflight_max_age: Duration::from_secs(settings.browser.preflight_max_age_s),
                },
            });
            let app = http::router(state, health.clone())?;
            let listener = tokio::net::TcpListener::bind(settings.http.listen)
                .await
                .with_context(|| {
                    format!(
                        "setting `http.listen`: cannot listen on {}",
                        settings.http.listen
                    )
                })?;
            if let Some(ops) = settings.http.ops_listen {
                let ops_listener = tokio::net::TcpListener::bind(ops).await.with_context(|| {
                    format!("setting `http.ops_listen`: cannot listen on {ops}")
                })?;
                let ops_app = audit_runtime::ops::router(health.clone())?;
                let stop = shutdown.clone();
                tokio::spawn(serve::serve(
                    ops_listener,
                    ops_app,
                    serve::ServeOptions {
                        max_connections: 64,
                        max_connections_per_ip: 64,
                        ..serve_options.clone()
                    },
                    async move { stop.requested().await },
                ));
            }
            health.set("kafka", true, "producer created");
            tracing::info!(listen = %settings.http.listen, topic = publisher.raw_topic(), "ingest API ready");
            let stop = shutdown.clone();
            serve::serve(listener, app, serve_options, async move {
                stop.requested().await
            })
            .await;
            publisher.flush(Duration::from_secs(30));
            tracing::info!("ingest API stopped");
        }
        Command::Tail { path, once } => {
            let shutdown = Shutdown::on_signals();
            let publisher = publisher()?;
            // A folder is a site's logs: its audit log and the node audit logs below it.
            let (log, nodes) = if path.is_dir() {
                (path.join(SITE_AUDIT_LOG), Some(path.join("nodes")))
            } else {
                (path, None)
            };
            let position_file = settings.tail.position_file.clone().unwrap_or_else(|| {
                let mut p = log.clone().into_os_string();
                p.push(".position");
                PathBuf::from(p)
            });
            let tail = &settings.tail;
            let node_options = NodeOptions {
                service: tail.service.clone(),
                state_file: audit_producer::tail::node_state_file(&position_file),
                batch_lines: tail.batch_lines,
                scan: Duration::from_millis(tail.node_scan_ms),
                idle: Duration::from_millis(tail.node_idle_ms),
                once,
                recovery_budget: Duration::from_millis(tail.recovery_budget_ms),
            };
            let options = TailOptions {
                service: tail.service.clone(),
                position_file,
                batch_lines: tail.batch_lines,
                poll: Duration::from_millis(tail.poll_ms),
                rotation_grace: Duration::from_millis(tail.rotation_grace_ms),
                backfill: tail.backfill,
                once,
                recovery_budget: Duration::from_millis(tail.recovery_budget_ms),
            };
            let audit_log = async {
                let stats = Tailer::new(log, options, &publisher, &settings.kafka, &redactor)
                    .run(&shutdown)
                    .await;
                if stats.is_err() {
                    shutdown.trigger();
                }
                stats
            };
            let node_logs = async {
                let Some(root) = nodes else {
                    return Ok(NodeStats::default());
                };
                let stats =
                    NodeLogs::new(root, node_options, &publisher, &settings.kafka, &redactor)
                        .run(&shutdown)
                        .await;
                if stats.is_err() {
                    shutdown.trigger();
                }
                stats
            };
            let (stats, nodes) = tokio::join!(audit_log, node_logs);
            let (stats, nodes) = (stats?, nodes.context("following the node audit logs")?);
            tracing::info!(
                published = stats.published,
                dead_letters = stats.dead_letters,
                skipped = stats.skipped,
                node_logs = nodes.files,
                node_lines = nodes.published,
                node_dead_letters = nodes.dead_letters,
                "tail stopped"
            );
            eprintln!(
                "published {} events, {} dead letters; node logs: {} files, {} events, {} dead letters",
                stats.published, stats.dead_letters, nodes.files, nodes.published, nodes.dead_letters
            );
        }
        Command::Send { file, service } => {
            let caller = Caller {
                service,
                sources: vec![Source::Server, Source::Client],
                scopes: vec![audit_producer::config::Scope::Events],
                tenant: None,
                credential: None,
            };
            let ids = send::send(
                &file,
                &caller,
                &redactor,
                &publisher()?,
                settings.http.max_events,
            )
            .await?;
            for id in &ids {
                println!("{id}");
            }
            eprintln!("published {} events", ids.len());
        }
        Command::Gen(args) => {
            let shutdown = Shutdown::on_signals();
            let producer = audit_runtime::kafka::producer(&settings.kafka, "audit-producer-gen")?;
            let report = gen::run(&args, &producer, &settings.topics, &shutdown).await?;
            eprintln!("{report}");
        }
    }
    Ok(())
}
