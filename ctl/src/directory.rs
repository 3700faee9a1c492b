//! `auditctl directory put-session|put-user|put-group|delete|get|list|import`: maintain and
//! inspect the records the enricher joins against: users and groups on the compacted directory
//! topic, sessions on the compacted sessions topic.

use crate::operator::{self, Actor};
use crate::settings::Settings;
use crate::table;
use anyhow::{Context, Result};
use audit_schemas::control::{Change, ControlChange, Subject};
use audit_schemas::{
    AvroRecord, DirectoryEntry, DirectoryKey, DirectoryRecord, DirectoryTopic, Group, Session,
    Timestamp, User,
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
        /// The session's latest activity (RFC 3339); idle lifetimes count from here.
        #[arg(long)]
        last_activity_at: Option<String>,
        /// Logout (RFC 3339): events still join for the enricher's grace period after it.
        #[arg(long)]
        ended_at: Option<String>,
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
    /// Print one entry (as JSON) by key: session:<id>, user:<id> or group:<id>.
    Get { key: String },
    /// List entries as the join sees them (the topic read to its end).
    List {
        /// Only this kind.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Only sessions of this user id, and this user.
        #[arg(long)]
        user: Option<String>,
        /// Only users directly in this group id, and this group.
        #[arg(long)]
        group: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Import many entries from a file, all or none: NDJSON lines as the bulk API takes them
    /// ({"op": "put", "kind": "user", "id": ..., ...}), or CSV with a header naming columns op
    /// (optional, default put), kind, id and the kind's fields (group_ids and parent_ids
    /// separated by `;`). The format follows the file's extension unless --format is given.
    Import {
        file: std::path::PathBuf,
        #[arg(long, value_enum)]
        format: Option<ImportFormat>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    Session,
    User,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    Ndjson,
    Csv,
}

pub async fn run(cmd: DirectoryCommand, settings: &Settings, actor: &Actor) -> Result<()> {
    let entry = match cmd {
        DirectoryCommand::Get { key } => {
            let key = DirectoryKey::parse(&key)?;
            let topic = settings.topics.for_directory(key.topic());
            let table = table::read(settings, topic).await?;
            let Some(value) = table.get(&key.record_key()) else {
                anyhow::bail!("{key} is not in the directory ({topic})");
            };
            let record = DirectoryRecord::decode(value).with_context(|| format!("{key}"))?;
            println!("{}", serde_json::to_string_pretty(&record.to_json())?);
            return Ok(());
        }
        DirectoryCommand::List {
            kind,
            user,
            group,
            json,
        } => return list(settings, kind, user.as_deref(), group.as_deref(), json).await,
        DirectoryCommand::Import { file, format } => {
            return import(settings, actor, &file, format).await
        }
        DirectoryCommand::Delete { key } => {
            let key = DirectoryKey::parse(&key)?;
            let operator = actor.identify()?;
            let topic = settings.topics.for_directory(key.topic());
            let old = current(settings, &key).await?;
            table::put(settings, topic, &key.record_key(), None).await?;
            let change = ControlChange {
                subject: Subject::Directory,
                change: Change::Delete,
                key: key.to_string(),
                old,
                new: None,
                old_known: true,
            };
            operator::record(settings, &operator, &[change]).await?;
            println!("{key} deleted");
            return Ok(());
        }
        DirectoryCommand::PutSession {
            id,
            user,
            started_at,
            ip,
            user_agent,
            last_activity_at,
            ended_at,
        } => {
            let started_at = match started_at {
                Some(t) => Timestamp::parse_rfc3339(&t).context("--started-at")?,
                None => Timestamp::now(),
            };
            let time = |t: Option<String>, arg: &str| {
                t.map(|t| Timestamp::parse_rfc3339(&t).with_context(|| arg.to_string()))
                    .transpose()
            };
            let last_activity_at = time(last_activity_at, "--last-activity-at")?;
            let ended_at = time(ended_at, "--ended-at")?;
            DirectoryEntry::Session(Session {
                id,
                user_id: user,
                started_at,
                ip,
                user_agent,
                last_activity_at,
                ended_at,
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
            scim: None,
        }),
        DirectoryCommand::PutGroup { id, name, parents } => DirectoryEntry::Group(Group {
            id,
            name,
            parent_ids: parents,
            scim: None,
        }),
    };
    let record = DirectoryRecord { entry };
    let key = record.key();
    let operator = actor.identify()?;
    let topic = settings.topics.for_directory(key.topic());
    let old = current(settings, &key).await?;
    table::put(settings, topic, &key.record_key(), Some(&record.encode()?)).await?;
    let change = ControlChange {
        subject: Subject::Directory,
        change: Change::Set,
        key: key.to_string(),
        old,
        new: Some(record.to_json()),
        old_known: true,
    };
    operator::record(settings, &operator, &[change]).await?;
    println!("{key} stored");
    Ok(())
}

/// The entry stored under `key` now, as operators read it (`None` when there is none).
async fn current(settings: &Settings, key: &DirectoryKey) -> Result<Option<serde_json::Value>> {
    let table = table::read(settings, settings.topics.for_directory(key.topic())).await?;
    Ok(table
        .get(&key.record_key())
        .map(|bytes| stored_json(key, bytes)))
}

fn stored_json(key: &DirectoryKey, bytes: &[u8]) -> serde_json::Value {
    match DirectoryRecord::decode(bytes) {
        Ok(record) => record.to_json(),
        Err(e) => serde_json::json!({"key": key.to_string(), "undecodable": e.to_string()}),
    }
}

async fn list(
    settings: &Settings,
    kind: Option<KindArg>,
    user: Option<&str>,
    group: Option<&str>,
    json: bool,
) -> Result<()> {
    let mut shown = 0;
    if !json {
        println!("{:<32} {:<8} DETAILS", "KEY", "KIND");
    }
    // Only the topics the filter can match are read: all sessions may be many.
    let mut topics = Vec::new();
    if kind.is_none_or(|k| k == KindArg::Session) && group.is_none() {
        topics.push(DirectoryTopic::Sessions);
    }
    if kind != Some(KindArg::Session) {
        topics.push(DirectoryTopic::Directory);
    }
    let mut entries = Vec::new();
    for topic in topics {
        entries.extend(table::read(settings, settings.topics.for_directory(topic)).await?);
    }
    for (key, value) in entries {
        let record = match DirectoryRecord::decode(&value) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{key}: undecodable: {e}");
                continue;
            }
        };
        let wanted = match (&record.entry, kind) {
            (DirectoryEntry::Session(_), Some(KindArg::User | KindArg::Group))
            | (DirectoryEntry::User(_), Some(KindArg::Session | KindArg::Group))
            | (DirectoryEntry::Group(_), Some(KindArg::Session | KindArg::User)) => false,
            (DirectoryEntry::Session(s), _) => {
                user.is_none_or(|u| s.user_id == u) && group.is_none()
            }
            (DirectoryEntry::User(u), _) => {
                user.is_none_or(|id| u.id == id)
                    && group.is_none_or(|g| u.group_ids.iter().any(|x| x == g))
            }
            (DirectoryEntry::Group(g), _) => user.is_none() && group.is_none_or(|id| g.id == id),
        };
        if !wanted {
            continue;
        }
        shown += 1;
        let key = record.key();
        if json {
            println!("{}", record.to_json());
            continue;
        }
        let details = match &record.entry {
            DirectoryEntry::Session(s) => format!(
                "user={} started={} ip={}",
                s.user_id,
                s.started_at.to_rfc3339(),
                s.ip.as_deref().unwrap_or("-")
            ),
            DirectoryEntry::User(u) => format!(
                "login={} name={} groups={}",
                u.login,
                u.name.as_deref().unwrap_or("-"),
                u.group_ids.join(",")
            ),
            DirectoryEntry::Group(g) => {
                format!("name={} parents={}", g.name, g.parent_ids.join(","))
            }
        };
        println!(
            "{:<32} {:<8} {details}",
            key.to_string(),
            kind_name(&record)
        );
    }
    if !json {
        eprintln!("{shown} entries");
    }
    Ok(())
}

fn kind_name(record: &DirectoryRecord) -> &'static str {
    match record.entry {
        DirectoryEntry::Session(_) => "session",
        DirectoryEntry::User(_) => "user",
        DirectoryEntry::Group(_) => "group",
    }
}

async fn import(
    settings: &Settings,
    actor: &Actor,
    file: &std::path::Path,
    format: Option<ImportFormat>,
) -> Result<()> {
    use audit_schemas::ingest::directory::{line_from_json, DirectoryWrite};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let format = format.unwrap_or(
        if file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            ImportFormat::Csv
        } else {
            ImportFormat::Ndjson
        },
    );
    let lines = match format {
        ImportFormat::Ndjson => ndjson_lines(&text)?,
        ImportFormat::Csv => csv_lines(&text)?,
    };
    let now = Timestamp::now();
    let mut writes = Vec::with_capacity(lines.len());
    let mut errors = Vec::new();
    for (line, value) in lines {
        match line_from_json(value, now) {
            Ok(w) => writes.push(w),
            Err(e) => errors.extend(
                e.into_iter()
                    .map(|e| format!("{}:{line}: {} {}", file.display(), e.path, e.reason)),
            ),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!(
            "{} invalid entries; nothing was imported:\n{}",
            errors.len(),
            errors.join("\n")
        );
    }
    let operator = actor.identify()?;
    // The old values, one read per table rather than one per entry.
    let mut before: std::collections::HashMap<DirectoryTopic, _> = Default::default();
    for w in &writes {
        let topic = w.key().topic();
        if let std::collections::hash_map::Entry::Vacant(slot) = before.entry(topic) {
            slot.insert(table::read(settings, settings.topics.for_directory(topic)).await?);
        }
    }
    let changes = audit_schemas::control::directory_changes(&writes, true, |key| {
        before
            .get(&key.topic())
            .and_then(|t| t.get(&key.record_key()))
            .map(|bytes| stored_json(key, bytes))
    });
    let encoded = writes
        .iter()
        .map(DirectoryWrite::encoded)
        .collect::<Result<Vec<_>, _>>()?;
    let records: Vec<(&str, String, Option<Vec<u8>>)> = encoded
        .into_iter()
        .map(|w| (settings.topics.for_directory(w.topic), w.key, w.value))
        .collect();
    table::put_many(settings, &records).await?;
    operator::record(settings, &operator, &changes).await?;
    println!(
        "{} entries imported into {} and {}",
        writes.len(),
        settings.topics.directory.name,
        settings.topics.sessions.name
    );
    Ok(())
}

/// NDJSON: (line number from 1, value) per non-empty line. Lines as `list --json` prints them
/// import as they are: their `key` is dropped and `op` defaults to `put`.
fn ndjson_lines(text: &str) -> Result<Vec<(usize, serde_json::Value)>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let mut value: serde_json::Value =
                serde_json::from_str(l).with_context(|| format!("line {}: not JSON", i + 1))?;
            if let Some(obj) = value.as_object_mut() {
                obj.remove("key");
                obj.entry("op").or_insert_with(|| "put".into());
            }
            Ok((i + 1, value))
        })
        .collect()
}

/// CSV with a header: each row becomes a bulk line; empty cells are absent fields, the id
/// list columns split at `;`.
fn csv_lines(text: &str) -> Result<Vec<(usize, serde_json::Value)>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = reader.headers().context("reading the CSV header")?.clone();
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i + 2;
        let row = row.with_context(|| format!("line {line}"))?;
        let mut obj = serde_json::Map::new();
        obj.insert("op".into(), "put".into());
        for (name, cell) in header.iter().zip(row.iter()) {
            if cell.is_empty() {
                continue;
            }
            let value = match name {
                "group_ids" | "parent_ids" => serde_json::Value::from(
                    cell.split(';')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>(),
                ),
                _ => serde_json::Value::from(cell),
            };
            obj.insert(name.to_string(), value);
        }
        out.push((line, serde_json::Value::Object(obj)));
    }
    Ok(out)
}
