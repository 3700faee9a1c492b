//! `audit-sink-cloudwatch`: enriched audit events into AWS CloudWatch Logs.

use anyhow::Result;
use audit_runtime::consume::{self, BatchOptions};
use audit_runtime::kafka::GroupContext;
use audit_runtime::ops::Health;
use audit_runtime::replays::RecentIds;
use audit_runtime::Shutdown;
use audit_sink_cloudwatch::config::Settings;
use audit_sink_cloudwatch::routing::StreamMap;
use audit_sink_cloudwatch::service::CloudWatch;
use audit_sink_cloudwatch::sink::CloudWatchSink;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// jemalloc for Rust and librdkafka alike: under glibc malloc, arena lock contention across the
/// Kafka client threads cost a large share of the CPU.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Enriched audit events into AWS CloudWatch Logs, the event type choosing the log stream.
///
/// Reads audit.enriched in its own consumer group, maps each event type to a log stream
/// (cloudwatch.streams: exact types and globs such as "query-*" = "queries"; unmapped types go
/// to cloudwatch.default_stream, or are skipped when it is ""), and sends PutLogEvents calls that obey every
/// CloudWatch limit. Events CloudWatch would refuse (over 256 KiB, older than 14 days, more than
/// 2 hours ahead, or rejected by CloudWatch) go to audit.dlq with the reason. Offsets are
/// committed only after CloudWatch accepted the batch. Credentials come from the standard AWS
/// chain (environment, profile, container and instance roles); cloudwatch.endpoint_url points
/// it at moto or LocalStack. Serves /metrics and /healthz on ops.listen (default
/// 127.0.0.1:9103).
#[derive(Debug, Parser)]
#[command(name = "audit-sink-cloudwatch", version, about, long_about)]
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
                audit_runtime::telemetry::redacted_error("audit-sink-cloudwatch", &e)
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
    let cw = &settings.cloudwatch;
    let shutdown = Shutdown::on_signals();
    let health = Health::default();
    let ops =
        audit_runtime::ops::serve(settings.ops.listen, health.clone(), shutdown.clone()).await?;
    // The configured routes, with the stream-map topic's on top once it is read to its end.
    let stream_map = Arc::new(RwLock::new(
        StreamMap::new(cw.streams.clone(), cw.default_stream()).reserving(cw.checkpoint_stream()),
    ));
    let map_loaded = follow_stream_map(&settings, stream_map.clone(), shutdown.clone());
    wait_loaded(map_loaded, &settings.topics.stream_map.name).await?;
    let (routes, routes_version) = {
        let map = stream_map.read().unwrap_or_else(|p| p.into_inner());
        (map.routes()?, map.version())
    };
    let cloudwatch = CloudWatch::connect(
        cw.endpoint_url.as_deref(),
        cw.region.as_deref(),
        cw.log_group.clone(),
        cw.retention_days,
        cw.max_attempts,
    )
    .await;
    let streams: Vec<&str> = routes.streams().chain(cw.checkpoint_stream()).collect();
    cloudwatch.ensure(&streams).await?;
    health.set("cloudwatch", true, "log group and streams ready");
    tracing::info!(group = %cw.log_group, streams = streams.len(), "shipping to CloudWatch Logs");

    audit_runtime::kafka::check_message_size(
        &settings.kafka,
        "audit-sink-cloudwatch",
        &[&settings.topics.dlq.name],
    )
    .await?;
    let mut sink = CloudWatchSink {
        cloudwatch,
        routes,
        checkpoint_stream: cw.checkpoint_stream().map(String::from),
        stream_map,
        routes_version,
        letters: audit_runtime::dead_letter::DeadLetters::new(
            audit_runtime::publish::BatchProducer::new(&settings.kafka, "audit-sink-cloudwatch")?,
            &settings.topics.dlq.name,
            audit_runtime::dead_letter::Stage::SinkCloudWatch,
            audit_runtime::budget::SizeBudget::from(&settings.kafka),
        ),
        recent: RecentIds::new(settings.cloudwatch.replay_window)
            .with_budget(settings.cloudwatch.replay_window_bytes),
        circuit: audit_runtime::breaker::Circuit::new(
            settings.cloudwatch.breaker.clone(),
            audit_runtime::dead_letter::Stage::SinkCloudWatch.as_str(),
            health.clone(),
        ),
        shutdown: shutdown.clone(),
    };
    let consumer = audit_runtime::kafka::consumer(
        &settings.kafka,
        "audit-sink-cloudwatch",
        &cw.group_id,
        GroupContext::new(cw.group_id.clone()),
    )?;
    let options = BatchOptions {
        max_records: cw.batch_max_records,
        max_wait: Duration::from_millis(cw.batch_max_wait_ms),
        min_interval: Duration::ZERO,
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

/// Follows the stream-map topic into `map` on its own task; the receiver turns true once the
/// topic was read to the end it had at start.
fn follow_stream_map(
    settings: &Settings,
    map: Arc<RwLock<StreamMap>>,
    shutdown: Shutdown,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let kafka = settings.kafka.clone();
    let topic = settings.topics.stream_map.name.clone();
    tokio::spawn(async move {
        let apply = |key: &[u8], value: Option<&[u8]>, partition: i32, offset: i64| {
            let result = map
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply_bytes(key, value);
            match result {
                Ok(()) => {
                    tracing::info!(topic = %topic, pattern = %String::from_utf8_lossy(key), "stream mapping read")
                }
                Err(reason) => {
                    tracing::warn!(topic = %topic, partition, offset, %reason, "stream mapping skipped")
                }
            }
        };
        let name = topic.clone();
        if let Err(e) = audit_runtime::follow::follow(
            &kafka,
            "audit-sink-cloudwatch",
            &name,
            tx,
            shutdown,
            apply,
        )
        .await
        {
            tracing::error!(error = %e, topic = %name, "the stream-map follower stopped; routes stay as they are");
        }
    });
    rx
}

/// Waits until the stream map is loaded, or fails naming the topic when its follower stopped
/// (the topic missing, the broker away for longer than the follower waits).
async fn wait_loaded(mut loaded: tokio::sync::watch::Receiver<bool>, topic: &str) -> Result<()> {
    loaded
        .wait_for(|&ready| ready)
        .await
        .map(|_| ())
        .map_err(|_| anyhow::anyhow!("could not read the stream map from topic {topic} (does it exist? `auditctl topics create`)"))
}
