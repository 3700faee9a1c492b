//! `audit-sink-clickhouse`: enriched audit events into ClickHouse.

use anyhow::{Context, Result};
use audit_runtime::breaker::Circuit;
use audit_runtime::budget::SizeBudget;
use audit_runtime::consume::{self, BatchOptions};
use audit_runtime::dead_letter::{DeadLetters, Stage};
use audit_runtime::kafka::GroupContext;
use audit_runtime::ops::Health;
use audit_runtime::publish::BatchProducer;
use audit_runtime::replays::RecentIds;
use audit_runtime::Shutdown;
use audit_sink_clickhouse::config::Settings;
use audit_sink_clickhouse::service::Store;
use audit_sink_clickhouse::sink::ClickHouseSink;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// jemalloc for Rust and librdkafka alike: under glibc malloc, arena lock contention across the
/// Kafka client threads cost a large share of the CPU.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Enriched audit events into ClickHouse for analysts' SQL and per-entity activity history.
///
/// Runs the schema migrations at start (database clickhouse.database, default "audit": tables
/// events and entity_activity, user and session projections), reads audit.enriched in its own
/// consumer group, inserts in batches (clickhouse.batch_max_rows rows or batch_max_wait_ms) with
/// RowBinary, and commits offsets only after the insert succeeded. Effectively once: after any
/// crash, rows already stored are recognised by their topic offsets and not inserted again, so
/// count() = uniqExact(event_id) holds without FINAL. While ClickHouse is unreachable it retries
/// with backoff and stops consuming; rows ClickHouse rejects go to audit.dlq with the server's
/// error, unless most rows are rejected for one reason (clickhouse.breaker): then they are held
/// uncommitted and retried with backoff until ClickHouse takes them. Serves /metrics and /healthz on ops.listen (default 127.0.0.1:9102).
#[derive(Debug, Parser)]
#[command(name = "audit-sink-clickhouse", version, about, long_about)]
struct Cli {
    /// TOML settings file.
    #[arg(long, global = true, env = "AUDIT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sink until SIGINT or SIGTERM.
    Run,
    /// Run the migrations and exit.
    Migrate,
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
                audit_runtime::telemetry::redacted_error("audit-sink-clickhouse", &e)
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
    let ch = &settings.clickhouse;
    // Migrations talk to the server before the database exists.
    let admin = audit_sink_clickhouse::client(&audit_sink_clickhouse::config::ClickHouseConfig {
        database: "default".into(),
        ..ch.clone()
    });
    let applied = audit_sink_clickhouse::migrations::migrate(&admin, &ch.database, ch.ttl_days)
        .await
        .with_context(|| format!("running migrations on {} (clickhouse.url)", ch.url))?;
    tracing::info!(?applied, database = %ch.database, "schema up to date");
    if let Command::Migrate = cli.command {
        return Ok(());
    }

    let shutdown = Shutdown::on_signals();
    let health = Health::default();
    health.set("clickhouse", true, "migrated");
    let ops =
        audit_runtime::ops::serve(settings.ops.listen, health.clone(), shutdown.clone()).await?;
    audit_runtime::kafka::check_message_size(
        &settings.kafka,
        "audit-sink-clickhouse",
        &[&settings.topics.dlq.name],
    )
    .await?;
    let circuit = Circuit::new(
        ch.breaker.clone(),
        Stage::SinkClickHouse.as_str(),
        health.clone(),
    );
    let mut sink = ClickHouseSink {
        store: Store::new(
            audit_sink_clickhouse::client(ch),
            Duration::from_millis(ch.max_backoff_ms),
            health,
        )
        .with_circuit(circuit.clone()),
        letters: DeadLetters::new(
            BatchProducer::new(&settings.kafka, "audit-sink-clickhouse")?,
            &settings.topics.dlq.name,
            Stage::SinkClickHouse,
            SizeBudget::from(&settings.kafka),
        ),
        recent: RecentIds::new(ch.replay_window).with_budget(ch.replay_window_bytes),
        circuit,
        shutdown: shutdown.clone(),
    };
    let consumer = audit_runtime::kafka::consumer(
        &settings.kafka,
        "audit-sink-clickhouse",
        &ch.group_id,
        GroupContext::new(ch.group_id.clone()),
    )?;
    let options = BatchOptions {
        max_records: ch.batch_max_rows,
        max_wait: Duration::from_millis(ch.batch_max_wait_ms),
        min_interval: Duration::from_millis(ch.min_insert_interval_ms),
    };
    let result = consume::run(
        &consumer,
        &[&settings.topics.enriched.name],
        &mut sink,
        options,
        &shutdown,
    )
    .await;
    shutdown.trigger();
    let _ = ops.await;
    let stats = result?;
    tracing::info!(
        records = stats.records,
        batches = stats.batches,
        "sink stopped"
    );
    Ok(())
}
