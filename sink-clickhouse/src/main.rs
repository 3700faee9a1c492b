//! Enriched audit events into ClickHouse for analysts' SQL and per-entity activity history.
//!
//! Reads audit.enriched in its own consumer group, runs the table migrations at start, inserts in
//! batches with the official clickhouse crate and commits offsets only after the insert succeeded;
//! inserts are deduplicated so that a crash and restart never double-count.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Enriched audit events into ClickHouse for analysts' SQL and per-entity activity history.
///
/// Reads audit.enriched in its own consumer group, runs the table migrations at start, inserts in
/// batches with the official clickhouse crate and commits offsets only after the insert succeeded;
/// inserts are deduplicated so that a crash and restart never double-count.
///
/// Settings: built-in defaults, then the TOML file given with --config, then environment
/// variables AUDIT__SECTION__KEY (e.g. AUDIT__KAFKA__BROKERS=host:9092).
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
    /// Run the service until SIGINT or SIGTERM.
    Run,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => bail!("audit-sink-clickhouse is not implemented yet (issue #5); only the shared foundation exists"),
    }
}
