//! `auditctl rules set|list|delete`: the administrator's switch for disabling event types per
//! group or user. Changes reach every running enricher within a second.

use crate::operator::{self, Actor};
use crate::rule_impact::{self, Tables};
use crate::settings::Settings;
use crate::table;
use anyhow::{bail, Context, Result};
use audit_enricher::rules::Types;
use audit_schemas::control::{Change, ControlChange, Subject};
use audit_schemas::vocabulary::Vocabulary;
use audit_schemas::{AuditRule, AvroRecord, RuleAction};
use clap::{Args, Subcommand, ValueEnum};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Create or replace a rule, from flags or from a TOML/JSON file.
    ///
    /// Example: disable every query event for contractors:
    ///   auditctl rules set --id no-queries-contractors --group contractors --type 'query-*' --action drop
    Set(SetArgs),
    /// List the rules in the order they apply.
    List,
    /// Which rule decides an event of this type from this user (or session), and why each
    /// other rule does not apply. Reads the rules and the directory as the enricher does.
    ///
    /// Example: auditctl rules explain --user bob --type query-created
    Explain {
        /// Event type.
        #[arg(long = "type")]
        event_type: String,
        /// User id or login.
        #[arg(long, required_unless_present = "session", conflicts_with = "session")]
        user: Option<String>,
        /// Session id: its user is looked up in the sessions topic.
        #[arg(long)]
        session: Option<String>,
    },
    /// Delete a rule; its events are kept again.
    Delete {
        /// The rule's id.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Drop,
    Keep,
}

#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    /// Read the rule from a TOML or JSON file (fields: id, order, description, groups, users,
    /// event_types, action) instead of flags.
    #[arg(long, conflicts_with_all = ["id", "group", "user", "event_type", "action", "order", "description"])]
    file: Option<PathBuf>,
    /// Rule id (the key on the rules topic).
    #[arg(long, required_unless_present = "file")]
    id: Option<String>,
    /// Rules apply in ascending order; the first match decides.
    #[arg(long, default_value_t = 100)]
    order: i32,
    /// Group id or name the rule applies to (repeatable; none: any group).
    #[arg(long = "group")]
    group: Vec<String>,
    /// User id or login the rule applies to (repeatable; none: any user).
    #[arg(long = "user")]
    user: Vec<String>,
    /// Event type or glob such as 'query-*' (repeatable; none: any type).
    #[arg(long = "type")]
    event_type: Vec<String>,
    /// What to do with matching events.
    #[arg(long, value_enum, required_unless_present = "file")]
    action: Option<Action>,
    /// Why the rule exists, for the next administrator.
    #[arg(long)]
    description: Option<String>,
    /// Publish nothing: count how many of the last `--last` stored events (ClickHouse,
    /// settings clickhouse.*) the rules with this change would have dropped.
    #[arg(long)]
    dry_run: bool,
    /// How many of the newest stored events a dry run examines.
    #[arg(long, default_value_t = 10_000)]
    last: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: String,
    #[serde(default = "default_order")]
    order: i32,
    description: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    event_types: Vec<String>,
    action: Action,
}

fn default_order() -> i32 {
    100
}

fn action(a: Action) -> RuleAction {
    match a {
        Action::Drop => RuleAction::Drop,
        Action::Keep => RuleAction::Keep,
    }
}

fn rule_from(args: SetArgs) -> Result<AuditRule> {
    if let Some(path) = args.file {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let f: RuleFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid rule", path.display()))?
        } else {
            toml::from_str(&text)
                .with_context(|| format!("{} is not a valid rule", path.display()))?
        };
        return Ok(AuditRule {
            id: f.id,
            order: f.order,
            description: f.description,
            groups: f.groups,
            users: f.users,
            event_types: f.event_types,
            action: action(f.action),
        });
    }
    let (Some(id), Some(a)) = (args.id, args.action) else {
        bail!("--id and --action are required without --file");
    };
    Ok(AuditRule {
        id,
        order: args.order,
        description: args.description,
        groups: args.group,
        users: args.user,
        event_types: args.event_type,
        action: action(a),
    })
}

/// The rule stored under `id` now, as JSON (`None` when there is none): the old value of a
/// change's control event.
async fn current(settings: &Settings, id: &str) -> Result<Option<serde_json::Value>> {
    let table = table::read(settings, &settings.topics.rules.name).await?;
    match table.get(id) {
        None => Ok(None),
        Some(bytes) => Ok(Some(match AuditRule::decode(bytes) {
            Ok(rule) => serde_json::to_value(&rule)?,
            Err(e) => serde_json::json!({"undecodable": e.to_string()}),
        })),
    }
}

/// The user of a session, from the sessions topic.
async fn session_user(settings: &Settings, session: &str) -> Result<String> {
    let key = audit_schemas::DirectoryKey::Session(session.to_string());
    let table = table::read(settings, &settings.topics.sessions.name).await?;
    let bytes = table.get(&key.record_key()).with_context(|| {
        format!(
            "session {session} is not in {}",
            settings.topics.sessions.name
        )
    })?;
    match audit_schemas::DirectoryRecord::decode(bytes)?.entry {
        audit_schemas::DirectoryEntry::Session(s) => Ok(s.user_id),
        _ => bail!("{key} does not hold a session"),
    }
}

/// Refuses what the enricher would refuse, before it is published.
fn check(rule: &AuditRule) -> Result<()> {
    if rule.id.trim().is_empty() {
        bail!("the rule id must not be empty");
    }
    for pattern in &rule.event_types {
        globset::Glob::new(pattern)
            .with_context(|| format!("event type pattern {pattern:?} is not a valid glob"))?;
    }
    Ok(())
}

pub async fn run(cmd: RulesCommand, settings: &Settings, actor: &Actor) -> Result<()> {
    let topic = &settings.topics.rules.name;
    match cmd {
        RulesCommand::Set(args) => {
            let rule = rule_from(args.clone())?;
            check(&rule)?;
            let operator = actor.identify()?;
            let tables = Tables::read(settings).await?;
            for warning in tables.warnings(&rule) {
                eprintln!("warning: {warning}");
            }
            if args.dry_run {
                let result = rule_impact::dry_run(settings, &tables, &rule, args.last).await?;
                println!(
                    "dry run, nothing published: with rule {} the rules would have dropped {} of the last {} stored events",
                    rule.id, result.would_drop, result.examined
                );
                for (event_type, n) in &result.by_type {
                    println!("  {n:>8} {event_type} (by {})", rule.id);
                }
                let change = ControlChange {
                    subject: Subject::Rule,
                    change: Change::DryRun,
                    key: rule.id.clone(),
                    old: current(settings, &rule.id).await?,
                    new: Some(serde_json::json!({"rule": rule, "result": result})),
                    old_known: true,
                };
                return operator::record(settings, &operator, &[change]).await;
            }
            let old = current(settings, &rule.id).await?;
            table::put(settings, topic, &rule.id, Some(&rule.encode()?)).await?;
            let change = ControlChange {
                subject: Subject::Rule,
                change: Change::Set,
                key: rule.id.clone(),
                old,
                new: Some(serde_json::to_value(&rule)?),
                old_known: true,
            };
            operator::record(settings, &operator, &[change]).await?;
            println!("rule {} set", rule.id);
        }
        RulesCommand::Delete { id } => {
            let operator = actor.identify()?;
            let old = current(settings, &id).await?;
            table::put(settings, topic, &id, None).await?;
            let change = ControlChange {
                subject: Subject::Rule,
                change: Change::Delete,
                key: id.clone(),
                old,
                new: None,
                old_known: true,
            };
            operator::record(settings, &operator, &[change]).await?;
            println!("rule {id} deleted");
        }
        RulesCommand::Explain {
            event_type,
            user,
            session,
        } => {
            let operator = actor.identify()?;
            let tables = Tables::read(settings).await?;
            let user_id = match (user, session) {
                (Some(u), _) => u,
                (None, Some(s)) => session_user(settings, &s).await?,
                (None, None) => bail!("--user or --session is required"),
            };
            let (resolved, groups) = tables.user(&user_id);
            // The shipped vocabulary: an enricher's own `[vocabulary]` pairs are not known here.
            let catalog = Vocabulary::default().lookup(&event_type);
            let types = Types {
                event_type: &event_type,
                catalog: catalog.as_ref().map(|c| c.event_type.as_str()),
            };
            let explained = tables.rules.explain(types, Some(&resolved), &groups);
            let text = rule_impact::report(&event_type, &resolved, &groups, &explained);
            print!("{text}");
            let decision = text.lines().last().unwrap_or_default().to_string();
            let change = ControlChange {
                subject: Subject::Rule,
                change: Change::Explain,
                key: format!("{event_type} for {}", resolved.id),
                old: None,
                new: Some(
                    serde_json::json!({"event_type": event_type, "user": resolved.id, "decision": decision}),
                ),
                old_known: false,
            };
            operator::record(settings, &operator, &[change]).await?;
        }
        RulesCommand::List => {
            let mut rules: Vec<AuditRule> = Vec::new();
            for (key, value) in table::read(settings, topic).await? {
                match AuditRule::decode(&value) {
                    Ok(r) => rules.push(r),
                    Err(e) => eprintln!("rule {key}: undecodable: {e}"),
                }
            }
            rules.sort_by(|a, b| (a.order, &a.id).cmp(&(b.order, &b.id)));
            println!(
                "{:>6}  {:<28} {:<6} {:<24} {:<16} TYPES",
                "ORDER", "ID", "ACTION", "GROUPS", "USERS"
            );
            let any = |v: &Vec<String>| {
                if v.is_empty() {
                    "*".to_string()
                } else {
                    v.join(",")
                }
            };
            for r in rules {
                let act = match r.action {
                    RuleAction::Drop => "drop",
                    RuleAction::Keep => "keep",
                };
                println!(
                    "{:>6}  {:<28} {:<6} {:<24} {:<16} {}",
                    r.order,
                    r.id,
                    act,
                    any(&r.groups),
                    any(&r.users),
                    any(&r.event_types)
                );
            }
        }
    }
    Ok(())
}
