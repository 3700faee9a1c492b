//! `auditctl streams set|delete|list`: the CloudWatch sink's routes, changed live. A mapping on
//! the stream-map topic adds to or replaces the sink's configured `cloudwatch.streams` for its
//! pattern; deleting it brings the configured one back. Running sinks take a change up at their
//! next batch; every change is a control event.

use crate::operator::{self, Actor};
use crate::settings::Settings;
use crate::table;
use anyhow::{Context, Result};
use audit_schemas::control::{Change, ControlChange, Subject};
use audit_schemas::{AvroRecord, StreamMapping};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Send events of a type (or glob) to a log stream.
    ///
    /// Example: auditctl streams set --type 'query-*' --stream queries
    Set {
        /// Event type or glob such as 'query-*'.
        #[arg(long = "type")]
        pattern: String,
        /// The CloudWatch log stream (created by the sink when missing).
        #[arg(long)]
        stream: String,
    },
    /// Delete a live mapping; the configured route for the pattern, if any, applies again.
    Delete {
        #[arg(long = "type")]
        pattern: String,
    },
    /// The live mappings (the sink's configured ones are in its `config` output).
    List,
}

pub async fn run(cmd: StreamsCommand, settings: &Settings, actor: &Actor) -> Result<()> {
    let topic = &settings.topics.stream_map.name;
    match cmd {
        StreamsCommand::Set { pattern, stream } => {
            let mapping = StreamMapping { pattern, stream };
            mapping.check()?;
            if settings.cloudwatch.checkpoint_stream() == Some(mapping.stream.as_str()) {
                anyhow::bail!(
                    "--stream {:?} is cloudwatch.checkpoint_stream, the checkpoint witness: no events may go there",
                    mapping.stream
                );
            }
            let operator = actor.identify()?;
            let old = current(settings, &mapping.pattern).await?;
            table::put(settings, topic, &mapping.pattern, Some(&mapping.encode()?)).await?;
            let change = ControlChange {
                subject: Subject::StreamMap,
                change: Change::Set,
                key: mapping.pattern.clone(),
                old,
                new: Some(serde_json::to_value(&mapping)?),
                old_known: true,
            };
            operator::record(settings, &operator, &[change]).await?;
            println!("{} -> {}", mapping.pattern, mapping.stream);
        }
        StreamsCommand::Delete { pattern } => {
            let operator = actor.identify()?;
            let old = current(settings, &pattern).await?;
            table::put(settings, topic, &pattern, None).await?;
            let change = ControlChange {
                subject: Subject::StreamMap,
                change: Change::Delete,
                key: pattern.clone(),
                old,
                new: None,
                old_known: true,
            };
            operator::record(settings, &operator, &[change]).await?;
            println!("mapping for {pattern} deleted");
        }
        StreamsCommand::List => {
            println!("{:<40} STREAM", "TYPE");
            for (key, value) in table::read(settings, topic).await? {
                match StreamMapping::decode(&value) {
                    Ok(m) => println!("{:<40} {}", m.pattern, m.stream),
                    Err(e) => eprintln!("mapping {key}: undecodable: {e}"),
                }
            }
        }
    }
    Ok(())
}

/// The live mapping of `pattern` now, as JSON (`None` when there is none).
async fn current(settings: &Settings, pattern: &str) -> Result<Option<serde_json::Value>> {
    let table = table::read(settings, &settings.topics.stream_map.name).await?;
    table
        .get(pattern)
        .map(|bytes| {
            StreamMapping::decode(bytes)
                .map(|m| serde_json::to_value(&m))
                .with_context(|| format!("the stored mapping of {pattern}"))?
                .map_err(Into::into)
        })
        .transpose()
}
