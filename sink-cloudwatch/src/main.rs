//! Enriched audit events into AWS CloudWatch Logs, the event type choosing the log stream.
//!
//! Reads audit.enriched in its own consumer group, maps each event type to a log stream through
//! configured globs, sends PutLogEvents batches that obey every CloudWatch limit and commits offsets
//! only after CloudWatch accepted them.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Enriched audit events into AWS CloudWatch Logs, the event type choosing the log stream.
///
/// Reads audit.enriched in its own consumer group, maps each event type to a log stream through
/// configured globs, sends PutLogEvents batches that obey every CloudWatch limit and commits offsets
/// only after CloudWatch accepted them.
///
/// Settings: built-in defaults, then the TOML file given with --config, then environment
/// variables AUDIT__SECTION__KEY (e.g. AUDIT__KAFKA__BROKERS=host:9092).
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
    /// Run the service until SIGINT or SIGTERM.
    Run,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => bail!("audit-sink-cloudwatch is not implemented yet (issue #6); only the shared foundation exists"),
    }
}
