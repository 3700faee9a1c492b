//! `auditctl topics create|list`.

use crate::settings::Settings;
use anyhow::{Context, Result};
use audit_runtime::kafka::{self, TopicOutcome};
use clap::Subcommand;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create the pipeline topics with the partitions, replication and cleanup policy from
    /// the settings. Topics that exist are left unchanged, so running it twice is harmless.
    Create,
    /// List the topics on the cluster with partitions, replication and cleanup policy; the
    /// pipeline's own topics are marked with their role.
    List,
}

pub async fn run(cmd: TopicsCommand, settings: &Settings) -> Result<()> {
    match cmd {
        TopicsCommand::Create => create(settings).await,
        TopicsCommand::List => list(settings).await,
    }
}

async fn create(settings: &Settings) -> Result<()> {
    let admin = kafka::admin(&settings.kafka, "auditctl")?;
    let outcomes = kafka::create_topics(&admin, &settings.topics)
        .await
        .with_context(|| format!("creating topics on {}", settings.kafka.brokers))?;
    for (name, outcome) in outcomes {
        let Some((role, topic)) = settings
            .topics
            .all()
            .into_iter()
            .find(|(_, t)| t.name == name)
        else {
            continue;
        };
        let what = match outcome {
            TopicOutcome::Created => "created",
            TopicOutcome::AlreadyExists => "exists (left unchanged)",
        };
        let policy = if topic.compacted { "compact" } else { "delete" };
        println!(
            "{name:<24} {what:<24} role={role} partitions={} replication={} cleanup.policy={policy}",
            topic.partitions, topic.replication
        );
    }
    Ok(())
}

async fn list(settings: &Settings) -> Result<()> {
    let topics = kafka::describe_topics(&settings.kafka, "auditctl", Duration::from_secs(10))
        .await
        .with_context(|| format!("listing topics on {}", settings.kafka.brokers))?;
    println!(
        "{:<24} {:>10} {:>11}  {:<14} ROLE",
        "TOPIC", "PARTITIONS", "REPLICATION", "CLEANUP"
    );
    for t in topics {
        let role = settings
            .topics
            .all()
            .into_iter()
            .find(|(_, c)| c.name == t.name)
            .map_or("-", |(role, _)| role);
        println!(
            "{:<24} {:>10} {:>11}  {:<14} {role}",
            t.name,
            t.partitions,
            t.replication,
            t.cleanup_policy.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}
