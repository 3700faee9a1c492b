//! `auditctl directory put-session|put-user|put-group|delete`: maintain the records the
//! enricher joins against, on the compacted directory topic.

use crate::settings::Settings;
use crate::table;
use anyhow::{Context, Result};
use audit_schemas::{
    AvroRecord, DirectoryEntry, DirectoryKey, DirectoryRecord, Group, Session, Timestamp, User,
};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Record a session and the user it belongs to.
    PutSession {
        #[arg(long)]
        id: String,
        /// The user id of the session.
        #[arg(long)]
        user: String,
        /// When the session started (RFC 3339); default now.
        #[arg(long)]
        started_at: Option<String>,
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        user_agent: Option<String>,
    },
    /// Record a user and the groups it belongs to directly.
    PutUser {
        #[arg(long)]
        id: String,
        #[arg(long)]
        login: String,
        #[arg(long)]
        name: Option<String>,
        /// Group id (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Record a group and its parents (members of a group are members of its parents).
    PutGroup {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        /// Parent group id (repeatable).
        #[arg(long = "parent")]
        parents: Vec<String>,
    },
    /// Delete an entry by key: session:<id>, user:<id> or group:<id>.
    Delete { key: String },
}

pub async fn run(cmd: DirectoryCommand, settings: &Settings) -> Result<()> {
    let topic = &settings.topics.directory.name;
    let entry = match cmd {
        DirectoryCommand::Delete { key } => {
            let key = DirectoryKey::parse(&key)?;
            table::put(settings, topic, &key.to_string(), None).await?;
            println!("{key} deleted");
            return Ok(());
        }
        DirectoryCommand::PutSession {
            id,
            user,
            started_at,
            ip,
            user_agent,
        } => {
            let started_at = match started_at {
                Some(t) => Timestamp::parse_rfc3339(&t).context("--started-at")?,
                None => Timestamp::now(),
            };
            DirectoryEntry::Session(Session {
                id,
                user_id: user,
                started_at,
                ip,
                user_agent,
            })
        }
        DirectoryCommand::PutUser {
            id,
            login,
            name,
            groups,
        } => DirectoryEntry::User(User {
            id,
            login,
            name,
            group_ids: groups,
        }),
        DirectoryCommand::PutGroup { id, name, parents } => DirectoryEntry::Group(Group {
            id,
            name,
            parent_ids: parents,
        }),
    };
    let record = DirectoryRecord { entry };
    let key = record.key();
    table::put(settings, topic, &key.to_string(), Some(&record.encode()?)).await?;
    println!("{key} stored");
    Ok(())
}
