//! Raw audit events in, enriched audit events out.
//!
//! Reads audit.raw as a member of a consumer group (run more instances to scale out), joins each event
//! with its session, the session's user and the user's groups (transitively) from the compacted
//! audit.directory topic, drops the event types an administrator disabled for those groups through
//! audit.rules, redacts secrets again, and publishes to audit.enriched. Undecodable records go to
//! audit.dlq with the reason. A raw offset is committed only after its output is acknowledged.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Raw audit events in, enriched audit events out.
///
/// Reads audit.raw as a member of a consumer group (run more instances to scale out), joins each event
/// with its session, the session's user and the user's groups (transitively) from the compacted
/// audit.directory topic, drops the event types an administrator disabled for those groups through
/// audit.rules, redacts secrets again, and publishes to audit.enriched. Undecodable records go to
/// audit.dlq with the reason. A raw offset is committed only after its output is acknowledged.
///
/// Settings: built-in defaults, then the TOML file given with --config, then environment
/// variables AUDIT__SECTION__KEY (e.g. AUDIT__KAFKA__BROKERS=host:9092).
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
    /// Run the service until SIGINT or SIGTERM.
    Run,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => bail!(
            "audit-enricher is not implemented yet (issue #4); only the shared foundation exists"
        ),
    }
}
