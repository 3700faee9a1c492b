//! `audit-enricher`: raw audit events in, enriched audit events out.

use anyhow::{Context, Result};
use audit_enricher::checkpoint_log::CheckpointLog;
use audit_enricher::config::Settings;
use audit_enricher::follow::follow_sessions;
use audit_enricher::ownership::Gate;
use audit_enricher::service::{Enricher, Options, Tables};
use audit_enricher::sessions::Lifetimes;
use audit_runtime::budget::SizeBudget;
use audit_runtime::consume::{self, BatchOptions};
use audit_runtime::follow::follow;
use audit_runtime::kafka::{GroupContext, RebalanceEvent};
use audit_runtime::ops::Health;
use audit_runtime::Shutdown;
use audit_schemas::vocabulary::Vocabulary;
use clap::{Parser, Subcommand};
use rdkafka::consumer::Consumer;
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
/// event with its session (from the compacted audit.sessions topic: each instance holds only the
/// sessions of its raw partitions, restored when a partition is assigned), the session's user and
/// the user's groups (transitively, from the compacted audit.directory topic), drops the event types an administrator disabled through
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
    /// Print the public key of chain.signing_key (base64), for `auditctl verify`'s
    /// verify.public_keys.
    PublicKey,
    /// Hand the chain's signing over from a retiring key to chain.signing_key (or
    /// chain.signing_key_file): a rotation record signed by both keys is published to the
    /// enriched topic, where the sinks store it, and printed. `auditctl verify` follows it from
    /// the old key on (verifiers need not be told the new key) and names every checkpoint the
    /// old key signs after --at. Restart every enricher on the new key before --at, then
    /// destroy the old key.
    ///
    /// Example: audit-enricher rotate-key --previous-key-id enricher-2025 --previous-key-file /run/secrets/chain-key-2025 --at 2026-12-08T00:00:00Z
    RotateKey(RotateKeyArgs),
}

#[derive(Debug, clap::Args)]
struct RotateKeyArgs {
    /// The retiring key's id, as its checkpoints carry it.
    #[arg(long)]
    previous_key_id: String,
    /// A file holding the retiring key's base64 seed.
    #[arg(long, value_name = "FILE")]
    previous_key_file: PathBuf,
    /// When the old key retires (RFC 3339; default now): it must sign nothing after this.
    #[arg(long)]
    at: Option<String>,
}

/// Signs and publishes one rotation record; see [`Command::RotateKey`].
async fn rotate_key(
    settings: &Settings,
    new: audit_schemas::chain::SigningKey,
    args: RotateKeyArgs,
) -> Result<()> {
    use audit_schemas::chain::rotation::KeyRotation;
    use audit_schemas::{AvroRecord, Timestamp};
    let seed = std::fs::read_to_string(&args.previous_key_file)
        .with_context(|| format!("--previous-key-file {}", args.previous_key_file.display()))?;
    let old =
        audit_schemas::chain::SigningKey::from_seed_b64(&args.previous_key_id, seed.trim())
            .with_context(|| format!("--previous-key-file {}", args.previous_key_file.display()))?;
    anyhow::ensure!(
        old.id != new.id,
        "the new key (chain.key_id) and --previous-key-id are both {:?}: give the new key its own id",
        new.id
    );
    let at = match &args.at {
        Some(t) => Timestamp::parse_rfc3339(t).map_err(|e| anyhow::anyhow!("--at {t:?}: {e}"))?,
        None => Timestamp::now(),
    };
    // A moment already past would make what the old key signed since read as RETIRED.
    let now = Timestamp::now();
    anyhow::ensure!(
        at.as_micros() >= now.as_micros() - 60_000_000,
        "--at {} is in the past: checkpoints the old key signed since then would read as RETIRED; give a moment after the old key's last signature (now, or when every enricher is on the new key)",
        at.to_rfc3339()
    );
    let rotation = KeyRotation::sign(&old, &new, at.as_micros());
    let event = audit_enricher::chaining::rotation_event(&rotation, Timestamp::now());
    let producer = audit_runtime::kafka::producer(&settings.kafka, "audit-enricher-rotate-key")?;
    let topic = &settings.topics.enriched.name;
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .key(audit_schemas::chain::rotation::ROTATION_TYPE)
                .payload(&event.encode()?),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("publishing the rotation record to {topic}"))?;
    println!("{}", serde_json::to_string(&rotation)?);
    eprintln!(
        "published to {topic}: key {:?} retires at {} in favour of {:?}",
        old.id,
        at.to_rfc3339(),
        new.id
    );
    Ok(())
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
    let signer = settings.chain.signer()?;
    if let Command::PublicKey = cli.command {
        let Some(key) = signer else {
            anyhow::bail!("neither chain.signing_key nor chain.signing_key_file is set: there is no public key to print");
        };
        println!("{} {}", key.id, key.public_b64());
        return Ok(());
    }
    if let Command::RotateKey(args) = cli.command {
        let Some(key) = signer else {
            anyhow::bail!("neither chain.signing_key nor chain.signing_key_file is set: set the new key there");
        };
        return rotate_key(&settings, key, args).await;
    }
    audit_runtime::telemetry::init(&settings.log)?;
    let shutdown = Shutdown::on_signals();
    let health = Health::default();
    health.set("directory", false, "loading");
    health.set("rules", false, "loading");
    let ops =
        audit_runtime::ops::serve(settings.ops.listen, health.clone(), shutdown.clone()).await?;

    let tables = Arc::new(Tables::default());
    let ms = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    tables
        .sessions
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .set_lifetimes(Lifetimes {
            idle: ms(settings.enricher.session_idle_timeout_ms),
            max: ms(settings.enricher.session_max_lifetime_ms),
            grace: Duration::from_millis(settings.enricher.session_end_grace_ms),
        });
    check_sessions_partitioning(&settings)?;
    spawn_sessions_follower(&settings, &tables, &shutdown);
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
    spawn_housekeeping(&settings, &tables, &shutdown)?;
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
        users = size.users,
        groups = size.groups,
        "directory loaded; enriching (each partition once its sessions are restored)"
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
        GroupContext::new(settings.enricher.group_id.clone())
            .on_rebalance(rebalance_hook(&settings, &tables)),
    )?;
    let mut enricher = Enricher::new(
        tables,
        producer,
        settings.redaction.redactor(),
        Options {
            raw_topic: settings.topics.raw.name.clone(),
            enriched_topic: settings.topics.enriched.name.clone(),
            dlq_topic: settings.topics.dlq.name.clone(),
            checkpoints_topic: settings.topics.checkpoints.name.clone(),
            checkpoint_log: Some(Arc::new(CheckpointLog::new(
                &settings.kafka,
                &settings.topics.checkpoints.name,
            )?)),
            budget: SizeBudget::from(&settings.kafka),
            session_wait: Duration::from_millis(settings.enricher.session_wait_ms),
            unknown_session_ttl: Duration::from_millis(settings.enricher.unknown_session_ttl_ms),
            max_waiting: settings.enricher.max_waiting_records,
            max_unknown_sessions: settings.enricher.max_unknown_sessions,
            max_event_age: Duration::from_millis(settings.enricher.max_event_age_ms),
            max_event_lead: Duration::from_millis(settings.enricher.max_event_lead_ms),
            chaining: chaining(&settings, signer),
            // Checked when the settings were loaded.
            vocabulary: Vocabulary::with(&settings.vocabulary)
                .context("the [vocabulary] settings")?,
        },
    )
    .with_circuit(
        audit_runtime::breaker::Circuit::new(
            settings.enricher.breaker.clone(),
            "enricher",
            health.clone(),
        ),
        shutdown.clone(),
    );
    let options = BatchOptions {
        max_records: settings.enricher.batch_max_records,
        max_wait: Duration::from_millis(settings.enricher.batch_max_wait_ms),
        min_interval: Duration::ZERO,
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

/// Hash chains as configured, saying at start what a verifier can and cannot prove.
fn chaining(
    settings: &Settings,
    signer: Option<audit_schemas::chain::SigningKey>,
) -> Option<audit_enricher::chaining::Chaining> {
    if !settings.chain.enabled {
        tracing::warn!("chain.enabled = false: enriched events carry no hash chain; auditctl verify cannot check them");
        return None;
    }
    match &signer {
        Some(key) => tracing::info!(key_id = %key.id, public_key = %key.public_b64(), "enriched events are hash-chained; digests are signed"),
        None => tracing::warn!("chain.signing_key is not set: events are hash-chained, but no digest is signed, so auditctl verify can prove nothing"),
    }
    Some(audit_enricher::chaining::Chaining::new(
        signer,
        Duration::from_millis(settings.chain.digest_interval_ms),
    ))
}

/// How often ended sessions past their grace are swept out (and tombstoned) and the byte gauges
/// refreshed: sizing walks the tables, so it runs on a timer, never per record under the
/// write lock the join waits on.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// Sessions and raw events share key and partitioner, so partition p of both holds the same
/// sessions only when the counts match; a mismatch would join events against the wrong
/// sessions, so it stops the enricher before it starts.
fn check_sessions_partitioning(settings: &Settings) -> Result<()> {
    let reader = audit_runtime::kafka::reader(&settings.kafka, "audit-enricher-check")?;
    let timeout = Duration::from_secs(30);
    let raw = &settings.topics.raw.name;
    let sessions = &settings.topics.sessions.name;
    let count = |topic: &str| {
        audit_runtime::kafka::partitions(reader.client(), topic, timeout)
            .map(|p| p.len())
            .with_context(|| {
                format!(
                    "reading the partitions of {topic} (create it with `auditctl topics create`)"
                )
            })
    };
    let checkpoints = &settings.topics.checkpoints.name;
    let c = count(checkpoints)?;
    let (r, s) = (count(raw)?, count(sessions)?);
    if r != c {
        anyhow::bail!(
            "{checkpoints} has {c} partitions and {raw} has {r}: raw partition p's checkpoints go \
             to partition p, so both need the same count (topics.checkpoints.partitions)"
        );
    }
    if r != s {
        anyhow::bail!(
            "{sessions} has {s} partitions and {raw} has {r}: sessions are partitioned like the raw \
             events and both need the same count (README: changing the raw topic's partition count)"
        );
    }
    Ok(())
}

/// Keeps `tables.ownership` in step with the consumer group and drops the sessions of
/// partitions that left; runs on the consumer's polling task, so it only flips state.
fn rebalance_hook(
    settings: &Settings,
    tables: &Arc<Tables>,
) -> audit_runtime::kafka::RebalanceHook {
    let raw = settings.topics.raw.name.clone();
    let tables = tables.clone();
    Arc::new(move |event: &RebalanceEvent| {
        let of_raw = |ps: &[(String, i32)]| -> Vec<i32> {
            ps.iter()
                .filter(|(t, _)| *t == raw)
                .map(|(_, p)| *p)
                .collect()
        };
        match event {
            RebalanceEvent::Revoked(ps) => {
                let ps = of_raw(ps);
                tables.ownership.send_modify(|o| o.revoked(&ps));
            }
            RebalanceEvent::Assigned(ps) => {
                let ps = of_raw(ps);
                let mut gone = Vec::new();
                tables.ownership.send_modify(|o| {
                    gone = o.assigned(&ps, std::time::Instant::now());
                    metrics::gauge!("audit_enricher_partitions_restoring")
                        .set(o.restoring() as f64);
                });
                if !gone.is_empty() {
                    let mut sessions = tables.sessions.write().unwrap_or_else(|p| p.into_inner());
                    let dropped: usize = gone.iter().map(|p| sessions.drop_partition(*p)).sum();
                    tracing::info!(partitions = ?gone, sessions = dropped, "partitions left; their sessions left memory");
                }
            }
        }
    })
}

fn spawn_sessions_follower(settings: &Settings, tables: &Arc<Tables>, shutdown: &Shutdown) {
    let kafka = settings.kafka.clone();
    let topic = settings.topics.sessions.name.clone();
    let tables = tables.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = follow_sessions(&kafka, &topic, tables, stop.clone()).await {
            tracing::error!(error = %e, "sessions follower failed; stopping");
            stop.trigger();
        }
    });
}

/// Ends sessions past their lifetimes, removes those past their grace and tombstones them in
/// the sessions topic (the topic stays bounded too), and refreshes the size gauges.
fn spawn_housekeeping(
    settings: &Settings,
    tables: &Arc<Tables>,
    shutdown: &Shutdown,
) -> Result<()> {
    let producer = audit_runtime::kafka::producer(&settings.kafka, "audit-enricher-sessions")?;
    let topic = settings.topics.sessions.name.clone();
    let tables = tables.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.requested() => return,
            }
            let now = audit_schemas::Timestamp::now();
            let gone = {
                let mut sessions = tables.sessions.write().unwrap_or_else(|p| p.into_inner());
                // A walk of every session: about 10 ms for 2.5 million, every tick.
                let expired = sessions.expire(now);
                metrics::counter!("audit_enricher_sessions_expired_total")
                    .increment(expired as u64);
                sessions.sweep(now)
            };
            metrics::counter!("audit_enricher_sessions_ended_total").increment(gone.removed as u64);
            tombstone(&producer, &topic, &tables, gone.to_tombstone).await;
            let sessions = tables
                .sessions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .size();
            metrics::gauge!("audit_enricher_sessions_ending").set(sessions.ending as f64);
            let size = tables
                .directory
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .size();
            for (kind, entries, bytes) in [
                ("session", sessions.sessions, sessions.approx_bytes),
                ("user", size.users, size.user_bytes),
                ("group", size.groups, size.group_bytes),
            ] {
                metrics::gauge!("audit_enricher_directory_entries", "kind" => kind)
                    .set(entries as f64);
                metrics::gauge!("audit_enricher_directory_kind_bytes", "kind" => kind)
                    .set(bytes as f64);
            }
            metrics::gauge!("audit_enricher_directory_bytes")
                .set((size.approx_bytes + sessions.approx_bytes) as f64);
        }
    });
    Ok(())
}

/// Tombstones ended sessions of partitions still owned (a moved partition's new owner does its
/// own); a failure is logged and the session is tombstoned again by whoever ends it next.
async fn tombstone(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    tables: &Tables,
    gone: Vec<(i32, String)>,
) {
    let owned: Vec<(i32, String)> = {
        let o = tables.ownership.borrow();
        gone.into_iter()
            .filter(|(p, _)| o.gate(*p) == Gate::Go)
            .collect()
    };
    let sends = owned.iter().map(|(p, id)| {
        producer.send(
            rdkafka::producer::FutureRecord::<str, [u8]>::to(topic)
                .key(id.as_str())
                .partition(*p),
            Duration::from_secs(30),
        )
    });
    let results = futures::future::join_all(sends).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    metrics::counter!("audit_enricher_sessions_tombstoned_total")
        .increment((results.len() - failed) as u64);
    if failed > 0 {
        tracing::warn!(
            failed,
            topic,
            "tombstones of ended sessions not acknowledged"
        );
    }
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
                        (r, d.counts())
                    };
                    for (kind, entries) in [("user", counts.0), ("group", counts.1)] {
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
        if let Err(e) = follow(&kafka, "audit-enricher", &topic, tx, stop.clone(), apply).await {
            tracing::error!(error = %e, "table follower failed; stopping");
            stop.trigger();
        }
    });
    rx
}
