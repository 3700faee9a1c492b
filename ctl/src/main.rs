//! `auditctl`: the operator's tool for the audit pipeline.
//!
//! A thin binary: each subcommand lives in its own module and the shared plumbing comes from
//! `audit-runtime`.

mod consume;
mod directory;
mod dlq;
mod erase;
mod operator;
mod prove;
mod rule_impact;
mod rules;
mod settings;
mod streams;
mod table;
mod topics;
mod verify;
mod verify_checkpoints;
mod verify_cloudwatch;
mod verify_columns;
mod verify_dead_letters;
mod verify_derived;
mod verify_state;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Operate the audit pipeline: its topics, the rules that disable event types, the directory of
/// sessions, users and groups, and a decoding reader for every topic.
///
/// Settings come from built-in defaults, then the TOML file given with --config, then
/// environment variables AUDIT__SECTION__KEY (e.g. AUDIT__KAFKA__BROKERS=host:9092,
/// AUDIT__TOPICS__RAW__PARTITIONS=12). `auditctl config` prints the result.
///
/// Every change (rules, directory, stream map) is itself published as an audit event naming the operator:
/// the admin whose credential is presented (AUDITCTL_ADMIN_CREDENTIAL or
/// --admin-credential-file), else operator.name, else the OS user. With
/// operator.require_admin_credential = true, changes need a valid credential.
#[derive(Debug, Parser)]
#[command(name = "auditctl", version, about, long_about)]
struct Cli {
    /// TOML settings file (sections: kafka, topics, log, operator, clickhouse).
    #[arg(long, global = true, env = "AUDIT_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers; overrides kafka.brokers.
    #[arg(long, global = true)]
    brokers: Option<String>,
    /// A file holding the admin credential (instead of AUDITCTL_ADMIN_CREDENTIAL).
    #[arg(long, global = true)]
    admin_credential_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or list the pipeline's topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Print records of any pipeline topic as one JSON object per line (the operator's kcat).
    ///
    /// The record type is recognised from each record's schema fingerprint, so any topic of the
    /// pipeline can be read. Undecodable records are printed as objects with an "error" field.
    Consume(consume::ConsumeArgs),
    /// Set, list or delete the rules that drop event types for groups or users.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Route event types to CloudWatch log streams, live (over the sink's configured routes).
    #[command(subcommand)]
    Streams(streams::StreamsCommand),
    /// Store or delete sessions, users and groups the enricher joins events with.
    #[command(subcommand)]
    Directory(directory::DirectoryCommand),
    /// Inspect and replay dead letters (audit.dlq).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Check the stored trail against what the enricher signed: every event deleted, altered
    /// or inserted (hash chains and v1 digests, by raw partition and offset), every chain's
    /// links against its signed Merkle checkpoints and every column against the signed content,
    /// checkpoints missing, cut short or unwitnessed (--state, the CloudWatch witness), and the
    /// derived tables (entity_activity, entity_links, rule_drops) against the events. Links
    /// the configured retention removed are counted EXPIRED, not found missing. Exits 1 when
    /// it finds any.
    ///
    /// Example: auditctl verify --from 2026-11-26T00:00:00Z --to 2026-11-26T12:00:00Z
    Verify(VerifyArgs),
    /// Write a proof that one event is in the signed trail, or (--consistency) that a later
    /// checkpoint extends an earlier one. Anyone can check it offline with `auditctl
    /// check-proof` or a checker of their own (docs/proof-format.md). A proof is made only
    /// when the stored links give the signed root.
    ///
    /// Example: auditctl prove 6f1c2d3e-0000-4000-8000-000000000001 --out proof.json
    Prove(prove::ProveArgs),
    /// Check a proof file offline against the signer's public key: exit 0 and say what it
    /// proves, or exit 1 naming what does not hold.
    ///
    /// Example: auditctl check-proof proof.json --public-key enricher-1=BASE64
    CheckProof(prove::CheckProofArgs),
    /// Erase a person's data from the stored trail (GDPR article 17) without breaking a proof:
    /// erasure records naming the events go on record first, then the personal columns and
    /// each row's salt are blanked in ClickHouse. `verify` then reports the rows ERASED.
    ///
    /// Example: auditctl erase --user u-1842 --reason "GDPR request 2026-117"
    Erase(erase::EraseArgs),
    /// Print the effective settings (defaults, file and environment layered) as TOML.
    Config,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Digests signed from this time (RFC 3339) are checked, with every link they cover.
    #[arg(long)]
    from: String,
    /// ... up to this time (RFC 3339; default now).
    #[arg(long)]
    to: Option<String>,
    /// A public key as KEY_ID=BASE64 (repeatable), beside verify.public_keys.
    #[arg(long = "public-key")]
    public_keys: Vec<String>,
    /// How long a row may stay under no signed digest before that is a finding (UNSIGNED):
    /// the enricher signs within `chain.digest_interval_ms` of acknowledging a batch, so
    /// anything older than this that no digest covers proves nothing.
    #[arg(long, default_value_t = 120)]
    grace_seconds: u64,
    /// Also check this CloudWatch log group (the sink's cloudwatch.log_group) against what
    /// ClickHouse proved intact; cloudwatch.endpoint_url and cloudwatch.region say where.
    #[arg(long)]
    cloudwatch_group: Option<String>,
    /// A file where verify keeps the newest checkpoint it proved per raw partition (created
    /// when missing). Each run must find those checkpoints still stored and the links under
    /// them intact, so a rollback of ClickHouse to an older copy, or a rewrite of what an
    /// earlier run saw, is a finding (ROLLED BACK). Keep it out of reach of ClickHouse writers.
    #[arg(long, value_name = "FILE")]
    state: Option<std::path::PathBuf>,
    /// The sink's retention (clickhouse.ttl_days), beside verify.retention_days: links
    /// enriched longer ago than this may be gone, and are counted EXPIRED, not DELETED.
    #[arg(long, value_name = "DAYS")]
    retention_days: Option<f64>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "{}",
                audit_runtime::telemetry::redacted_error("auditctl", &e)
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let settings = settings::Settings::load(cli.config.as_deref(), cli.brokers.as_deref())?;
    audit_runtime::telemetry::init(&settings.log)?;
    let actor = operator::Actor {
        settings: settings.operator.clone(),
        credential: operator::presented_credential(cli.admin_credential_file.as_deref())?,
    };
    match cli.command {
        Command::Topics(cmd) => topics::run(cmd, &settings).await,
        Command::Consume(args) => consume::run(args, &settings).await,
        Command::Rules(cmd) => rules::run(cmd, &settings, &actor).await,
        Command::Directory(cmd) => directory::run(cmd, &settings, &actor).await,
        Command::Streams(cmd) => streams::run(cmd, &settings, &actor).await,
        Command::Dlq(cmd) => dlq::run(cmd, &settings).await,
        Command::Verify(args) => run_verify(args, &settings).await,
        Command::Prove(args) => prove::run(args, &settings).await,
        Command::CheckProof(args) => prove::check(args, &settings),
        Command::Erase(args) => erase::run(args, &settings, &actor).await,
        Command::Config => {
            print!("{}", audit_runtime::config::to_redacted_toml(&settings)?);
            Ok(())
        }
    }
}

async fn run_verify(args: VerifyArgs, settings: &settings::Settings) -> Result<()> {
    use audit_schemas::Timestamp;
    let from = Timestamp::parse_rfc3339(&args.from)
        .map_err(|e| anyhow::anyhow!("--from {:?}: {e}", args.from))?;
    let to = match &args.to {
        Some(t) => Timestamp::parse_rfc3339(t).map_err(|e| anyhow::anyhow!("--to {t:?}: {e}"))?,
        None => Timestamp::now(),
    };
    let configured = verify::trusted_keys(&settings.verify.public_keys, &args.public_keys)?;
    let (ring, bad_rotations) =
        verify::follow_rotations(&verify::client(&settings.clickhouse), &configured).await?;
    let keys = ring.public_keys();
    let retired = ring.retirements();
    let mut findings = 0;
    for (r, why) in &bad_rotations {
        println!(
            "{}",
            verify_checkpoints::CheckpointFinding::Rotation {
                old_key_id: r.old_key_id.clone(),
                new_key_id: r.new_key_id.clone(),
                why: why.clone(),
            }
        );
        findings += 1;
    }
    println!(
        "Keys: {} configured, {} trusted through signed rotations, {} retired",
        configured.len(),
        keys.len() - configured.len(),
        retired.len()
    );
    let grace_us = i64::try_from(args.grace_seconds.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    let retention = verify::VerifySettings {
        retention_days: args.retention_days.or(settings.verify.retention_days),
        ..settings.verify.clone()
    }
    .retention_us()?
    .map(|us| verify_checkpoints::Retention {
        // From now, not the range's end: ClickHouse removes by the time it is.
        before_us: Timestamp::now().as_micros().saturating_sub(us),
    });
    let group = args
        .cloudwatch_group
        .as_ref()
        .or(settings.cloudwatch.log_group.as_ref());
    // A link a sink dead-lettered is not a deletion; without the topic, it would read as one.
    let letters = match verify_dead_letters::read(settings).await {
        Ok(l) => l,
        Err(e) => {
            println!(
                "Dead letters ({}) not read, so links a sink dead-lettered read as DELETED: {e:#}",
                settings.topics.dlq.name
            );
            verify_dead_letters::DeadLettered::default()
        }
    };
    let explanations = verify_checkpoints::Explanations {
        retention,
        letters: &letters,
        retired: &retired,
    };
    let started = std::time::Instant::now();
    let report = verify::verify_clickhouse(
        settings,
        &keys,
        from.as_micros(),
        to.as_micros(),
        grace_us,
        group.is_some(),
        explanations,
    )
    .await?;
    findings += report.findings.len();
    for f in &report.findings {
        println!("{f}");
    }
    println!(
        "ClickHouse: {} links verified in {} chains against {} signed digests ({} duplicates left out by the sink, {} exact copies stored twice, {} expired, {} only in the ClickHouse sink's dead letters), {} rows not yet under a digest ({} of them older than the {} s grace and unexplained); {} findings; {:.1} s",
        report.links_verified,
        report.chains,
        report.digests,
        report.skips,
        report.duplicates,
        report.expired,
        report.dead_lettered,
        report.unsigned,
        report.unsigned_stale,
        args.grace_seconds,
        report.findings.len(),
        started.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    let mut state = match &args.state {
        Some(path) => Some(verify_state::State::load(path, &keys)?),
        None => None,
    };
    let witnessed: Vec<_> = state.iter().flat_map(|s| s.witnessed().cloned()).collect();
    let cloudwatch = match group {
        Some(_) => Some(verify_cloudwatch::client(&settings.cloudwatch).await),
        None => None,
    };
    let witness_stream = settings.cloudwatch.checkpoint_stream();
    let witness = match (&cloudwatch, group, witness_stream) {
        (Some(client), Some(group), Some(stream)) => {
            let messages = verify_cloudwatch::read_witness(client, group, stream).await?;
            let w = verify_cloudwatch::judge_witness(&messages, &keys);
            for (at_ms, why) in &w.forged {
                println!(
                    "{}",
                    verify_cloudwatch::CloudWatchFinding::WitnessForged {
                        stream: stream.to_string(),
                        at_ms: *at_ms,
                        why: why.clone(),
                    }
                );
            }
            findings += w.forged.len();
            Some((stream, w))
        }
        _ => None,
    };
    let v2 = verify_checkpoints::verify(
        &verify::client(&settings.clickhouse),
        &keys,
        (from.as_micros(), to.as_micros()),
        grace_us,
        report.rows,
        &verify_checkpoints::Witnesses {
            state: &witnessed,
            cloudwatch: witness
                .as_ref()
                .map(|(stream, w)| (*stream, w.checkpoints.as_slice())),
        },
        explanations,
    )
    .await?;
    for f in &v2.findings {
        println!("{f}");
    }
    println!(
        "ClickHouse checkpoints (v2): {} signed checkpoints, {} links in {} chains recomputed to their signed Merkle roots, {} rows ERASED under a signed erasure record, {}; {} findings; {:.1} s",
        v2.checkpoints,
        v2.links,
        v2.chains,
        v2.erased,
        match retention {
            None => "no retention set (verify.retention_days): every absent link is DELETED".to_string(),
            Some(_) => format!(
                "{} links EXPIRED below the retention horizon, {} still stored there that nothing proves any more",
                v2.expired, v2.unproven
            ),
        },
        v2.findings.len(),
        started.elapsed().as_secs_f64()
    );
    findings += v2.findings.len();
    let started = std::time::Instant::now();
    let derived = verify_derived::verify(
        &verify::client(&settings.clickhouse),
        (from.as_micros(), to.as_micros()),
        retention.map(|r| r.before_us.saturating_add(grace_us)),
    )
    .await?;
    for f in &derived.findings {
        println!("{f}");
    }
    let tables: Vec<String> = derived
        .tables
        .iter()
        .map(|(name, t)| format!("{name} {} rows ({} exact copies)", t.rows, t.copies))
        .collect();
    println!(
        "Derived tables recomputed from the stored events: {}; {} findings; {:.1} s",
        tables.join(", "),
        derived.findings.len(),
        started.elapsed().as_secs_f64()
    );
    findings += derived.findings.len();
    if let Some((stream, w)) = &witness {
        println!(
            "CloudWatch witness {}/{stream}: {} checkpoints in the range, {} of them also in ClickHouse; {} entries that are no valid checkpoint",
            group.map_or("", String::as_str),
            v2.cloudwatch_witnessed,
            v2.cloudwatch_matched,
            w.forged.len()
        );
    }
    if let (Some(state), Some(path)) = (&mut state, &args.state) {
        let kept = state.len();
        let moved = state.advance(&v2.proven);
        state.save(path)?;
        println!(
            "State {}: {} of {kept} checkpoints kept from earlier runs still stored and re-proven; {moved} partitions moved on",
            path.display(),
            v2.witnessed
        );
    }
    if let (Some(client), Some(group)) = (&cloudwatch, group) {
        let started = std::time::Instant::now();
        let cw = verify_cloudwatch::verify(
            client,
            group,
            witness_stream,
            &report,
            from.as_micros(),
            to.as_micros(),
            &letters.cloudwatch,
        )
        .await?;
        for f in &cw.findings {
            println!("{f}");
        }
        println!(
            "CloudWatch {group}: {} of {} events verified against ClickHouse's intact links, {} not yet under a digest, {} the CloudWatch sink dead-lettered ({} letters of either sink not tied to a link); {} findings; {:.1} s",
            cw.verified,
            cw.events,
            cw.unsigned,
            cw.dead_lettered,
            letters.untied,
            cw.findings.len(),
            started.elapsed().as_secs_f64()
        );
        findings += cw.findings.len();
    }
    if findings == 0 {
        Ok(())
    } else {
        anyhow::bail!("the trail was tampered with: {findings} findings")
    }
}
