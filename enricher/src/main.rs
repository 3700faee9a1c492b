//! `audit-enricher`: raw audit events in, enriched audit events out.

use anyhow::{Context, Result};
use audit_enricher::config::Settings;
use audit_enricher::follow::follow;
use audit_enricher::service::{Enricher, Options, Tables};
use audit_runtime::budget::SizeBudget;
use audit_runtime::consume::{self, BatchOptions};
use audit_runtime::kafka::GroupContext;
use audit_runtime::ops::Health;
use audit_runtime::Shutdown;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// jemalloc for Rust and librdkafka alike: under glibc malloc, arena lock contention across the
/// Kafka client threads cost a large share of the CPU.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Raw audit events in, enriched audit events out.
///
/// Reads audit.raw as a member of a consumer group (run more instances to scale out), joins each
/// event with its session, the session's user and the user's groups (transitively) from the
/// compacted audit.directory topic, drops the event types an administrator disabled through
/// audit.rules (changes apply live), redacts secrets again, and publishes to audit.enriched.
/// Undecodable records go to audit.dlq with the reason. A raw offset is committed only after its
/// output is acknowledged. Serves /metrics and /healthz on ops.listen (default 127.0.0.1:9101).
///
/// Settings: built-in defaults, then the TOML file given with --config, then environment
/// variables AUDIT__SECTION__KEY (e.g. AUDIT__ENRICHER__SESSION_WAIT_MS=5000).
#[derive(Debug, Parser)]
#[command(name = "audit-enricher", version, about, long_about)]
struct Cli {
    /// TOML settings file.
    #[arg(long, global = true, env = "AUDIT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the enricher until SIGINT or SIGTERM (the batch in hand is finished and committed).
    Run,
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
                audit_runtime::telemetry::redacted_error("audit-enricher", &e)
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    if let Command::Config = cli.command {
        print!("{}", audit_runtime::config::to_redacted_toml(&settings)?);
        return Ok(());
    }
    audit_runtime::telemetry::init(&settings.log)?;
    let shutdown = Shutdown::on_signals();
    let health = Health::default();
    health.set("directory", false, "loading");
    health.set("rules", false, "loading");
    let ops =
        audit_runtime::ops::serve(settings.ops.listen, health.clone(), shutdown.clone()).await?;

    let tables = Arc::new(Tables::default());
    tables
        .directory
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .set_session_grace(Duration::from_millis(
            settings.enricher.session_end_grace_ms,
        ));
    let directory_ready = spawn_follower(
        &settings,
        &settings.topics.directory.name,
        &tables,
        &shutdown,
        Table::Directory,
    );
    let rules_ready = spawn_follower(
        &settings,
        &settings.topics.rules.name,
        &tables,
        &shutdown,
        Table::Rules,
    );
    spawn_directory_sizer(&tables, &shutdown);
    for (name, mut ready) in [("directory", directory_ready), ("rules", rules_ready)] {
        tokio::select! {
            r = ready.wait_for(|r| *r) => { r.with_context(|| format!("the {name} follower stopped"))?; }
            _ = shutdown.requested() => return Ok(()),
        }
        health.set(name, true, "loaded");
    }
    let size = tables
        .directory
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .size();
    tracing::info!(
        sessions = size.sessions,
        users = size.users,
        groups = size.groups,
        "directory loaded; enriching"
    );

    audit_runtime::kafka::check_message_size(
        &settings.kafka,
        "audit-enricher",
        &[&settings.topics.enriched.name, &settings.topics.dlq.name],
    )
    .await?;
    let producer = audit_runtime::publish::BatchProducer::new(&settings.kafka, "audit-enricher")?;
    let consumer = audit_runtime::kafka::consumer(
        &settings.kafka,
        "audit-enricher",
        &settings.enricher.group_id,
        GroupContext {
            group: settings.enricher.group_id.clone(),
        },
    )?;
    let mut enricher = Enricher::new(
        tables,
        producer,
        settings.redaction.redactor(),
        Options {
            raw_topic: settings.topics.raw.name.clone(),
            enriched_topic: settings.topics.enriched.name.clone(),
            dlq_topic: settings.topics.dlq.name.clone(),
            budget: SizeBudget::from(&settings.kafka),
            session_wait: Duration::from_millis(settings.enricher.session_wait_ms),
            unknown_session_ttl: Duration::from_millis(settings.enricher.unknown_session_ttl_ms),
            max_waiting: settings.enricher.max_waiting_records,
            max_unknown_sessions: settings.enricher.max_unknown_sessions,
            max_event_age: Duration::from_millis(settings.enricher.max_event_age_ms),
            max_event_lead: Duration::from_millis(settings.enricher.max_event_lead_ms),
        },
    );
    let options = BatchOptions {
        max_records: settings.enricher.batch_max_records,
        max_wait: Duration::from_millis(settings.enricher.batch_max_wait_ms),
    };
    health.set("kafka", true, "consuming");
    let result = consume::run_pipelined(
        &consumer,
        &[&settings.topics.raw.name],
        &mut enricher,
        options,
        settings.enricher.max_in_flight_batches,
        &shutdown,
    )
    .await;
    shutdown.trigger();
    let _ = ops.await;
    let stats = result?;
    tracing::info!(
        records = stats.records,
        batches = stats.batches,
        "enricher stopped"
    );
    Ok(())
}

/// How often ended sessions past their grace are swept out and the directory's byte gauges are
/// refreshed: sizing walks the whole directory, so it runs on a timer under a read lock, never
/// per record under the write lock the join waits on.
const DIRECTORY_SIZE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn spawn_directory_sizer(tables: &Arc<Tables>, shutdown: &Shutdown) {
    let tables = tables.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(DIRECTORY_SIZE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.requested() => return,
            }
            let swept = tables
                .directory
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .sweep_ended(std::time::Instant::now());
            metrics::counter!("audit_enricher_sessions_ended_total").increment(swept as u64);
            let ending = tables
                .directory
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .ending();
            metrics::gauge!("audit_enricher_sessions_ending").set(ending as f64);
            let size = tables
                .directory
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .size();
            for (kind, entries, bytes) in [
                ("session", size.sessions, size.session_bytes),
                ("user", size.users, size.user_bytes),
                ("group", size.groups, size.group_bytes),
            ] {
                metrics::gauge!("audit_enricher_directory_entries", "kind" => kind)
                    .set(entries as f64);
                metrics::gauge!("audit_enricher_directory_kind_bytes", "kind" => kind)
                    .set(bytes as f64);
            }
            metrics::gauge!("audit_enricher_directory_bytes").set(size.approx_bytes as f64);
        }
    });
}

#[derive(Clone, Copy)]
enum Table {
    Directory,
    Rules,
}

fn spawn_follower(
    settings: &Settings,
    topic: &str,
    tables: &Arc<Tables>,
    shutdown: &Shutdown,
    table: Table,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let kafka = settings.kafka.clone();
    let topic = topic.to_string();
    let tables = tables.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let apply = |key: &[u8], value: Option<&[u8]>, partition: i32, offset: i64| {
            let result = match table {
                Table::Directory => {
                    let (r, counts) = {
                        let mut d = tables.directory.write().unwrap_or_else(|p| p.into_inner());
                        let r = d.apply_bytes(key, value).map_err(|e| e.to_string());
                        metrics::gauge!("audit_enricher_sessions_ending").set(d.ending() as f64);
                        (r, d.counts())
                    };
                    let arrived = value.is_some_and(|v| !v.is_empty()) && r.is_ok();
                    if let Some(session) = key.strip_prefix(b"session:").filter(|_| arrived) {
                        tables.session_arrived(&String::from_utf8_lossy(session));
                    }
                    for (kind, entries) in [
                        ("session", counts.0),
                        ("user", counts.1),
                        ("group", counts.2),
                    ] {
                        metrics::gauge!("audit_enricher_directory_entries", "kind" => kind)
                            .set(entries as f64);
                    }
                    r
                }
                Table::Rules => {
                    let mut rules = tables.rules.write().unwrap_or_else(|p| p.into_inner());
                    let r = rules.apply_bytes(key, value).map_err(|e| e.to_string());
                    metrics::gauge!("audit_enricher_rules").set(rules.len() as f64);
                    if r.is_ok() {
                        tracing::info!(rule = %String::from_utf8_lossy(key), deleted = value.is_none_or(<[u8]>::is_empty), "rule applied");
                    }
                    r
                }
            };
            if let Err(reason) = result {
                // A bad record in a table topic is skipped (the previous value stays) and
                // counted; it cannot be dead-lettered from here without blocking the table.
                tracing::warn!(topic = %topic, partition, offset, %reason, "table record skipped");
                metrics::counter!("audit_enricher_table_records_skipped_total", "topic" => topic.clone()).increment(1);
            }
        };
        if let Err(e) = follow(&kafka, &topic, tx, stop.clone(), apply).await {
            tracing::error!(error = %e, "table follower failed; stopping");
            stop.trigger();
        }
    });
    rx
}
