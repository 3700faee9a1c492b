//! What a rule does before and after it is set: `rules explain` (which rule decides an event of
//! a user and why), the warnings of `rules set` (types nothing sends, groups the directory does
//! not know) and `rules set --dry-run` (how many recently stored events the change would have
//! dropped, asked of ClickHouse). The matching is the enricher's own (`audit_enricher::rules`),
//! so the answer is what the pipeline will do.

use crate::settings::Settings;
use crate::table;
use anyhow::{Context, Result};
use audit_enricher::directory::Directory;
use audit_enricher::rules::{Decision, Explained, RuleSet, Types, Verdict};
use audit_schemas::{
    AuditRule, AvroRecord, DirectoryEntry, DirectoryRecord, GroupRef, ResolvedUser,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// `[clickhouse]`: where `rules set --dry-run` reads the stored events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSettings {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "audit".into(),
            user: None,
            password: None,
        }
    }
}

/// The rules and the directory as the enricher holds them, read from their topics.
pub struct Tables {
    pub rules: RuleSet,
    pub directory: Directory,
    /// Every group id and name the directory knows.
    groups: HashSet<String>,
    /// Login -> user id, so `--user` takes either.
    logins: BTreeMap<String, String>,
}

impl Tables {
    pub async fn read(settings: &Settings) -> Result<Self> {
        let mut rules = RuleSet::default();
        for (key, value) in table::read(settings, &settings.topics.rules.name).await? {
            if let Err(e) = rules.apply_bytes(key.as_bytes(), Some(&value)) {
                eprintln!("warning: rule {key} is unusable and ignored: {e}");
            }
        }
        let mut directory = Directory::new();
        let mut groups = HashSet::new();
        let mut logins = BTreeMap::new();
        for (key, value) in table::read(settings, &settings.topics.directory.name).await? {
            if let Ok(record) = DirectoryRecord::decode(&value) {
                match &record.entry {
                    DirectoryEntry::Group(g) => {
                        groups.insert(g.id.clone());
                        groups.insert(g.name.clone());
                    }
                    DirectoryEntry::User(u) => {
                        logins.insert(u.login.clone(), u.id.clone());
                    }
                    DirectoryEntry::Session(_) => {}
                }
            }
            // Unusable entries are the enricher's to report; here they only go missing.
            let _ = directory.apply_bytes(key.as_bytes(), Some(&value));
        }
        Ok(Self {
            rules,
            directory,
            groups,
            logins,
        })
    }

    /// The user named by id or login, with the groups the enricher would give their events.
    pub fn user(&self, id_or_login: &str) -> (ResolvedUser, Vec<GroupRef>) {
        let id = self
            .logins
            .get(id_or_login)
            .map_or(id_or_login, String::as_str);
        self.directory.user_and_groups(id)
    }

    /// Warnings for a rule about to be set: nothing it names exists.
    pub fn warnings(&self, rule: &AuditRule) -> Vec<String> {
        let mut out = Vec::new();
        for pattern in &rule.event_types {
            let Ok(glob) = globset::Glob::new(pattern) else {
                continue; // refused before this
            };
            let matcher = glob.compile_matcher();
            if !audit_schemas::catalog::known_types().any(|t| matcher.is_match(t)) {
                out.push(format!(
                    "type {pattern:?} matches no catalog type and no known server code; custom types are fine, but check the spelling"
                ));
            }
        }
        for group in &rule.groups {
            if !self.groups.contains(group) {
                out.push(format!(
                    "group {group:?} is not in the directory (neither a group id nor a name)"
                ));
            }
        }
        out
    }
}

/// `explain`'s report, one line per rule, then the decision.
pub fn report(
    event_type: &str,
    user: &ResolvedUser,
    groups: &[GroupRef],
    explained: &[Explained],
) -> String {
    let mut out = format!(
        "event type {event_type:?}, user {} ({}), groups [{}]\n",
        user.id,
        user.login,
        groups
            .iter()
            .map(|g| format!("{} ({})", g.name, g.id))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut decision = "KEEP: no rule matches (the default)".to_string();
    for e in explained {
        let action = match e.rule.action {
            audit_schemas::RuleAction::Drop => "drop",
            audit_schemas::RuleAction::Keep => "keep",
        };
        let what = match &e.verdict {
            Verdict::Decides { group } => {
                decision = format!(
                    "{} by rule {}{}",
                    action.to_uppercase(),
                    e.rule.id,
                    group
                        .as_ref()
                        .map(|g| format!(" (matched on group {g})"))
                        .unwrap_or_default()
                );
                "DECIDES".to_string()
            }
            Verdict::Shadowed => "matches, but an earlier rule decides".to_string(),
            Verdict::NoMatch(why) => format!("does not apply: {why}"),
        };
        out.push_str(&format!(
            "  {:>6} {:<28} {:<5} {what}\n",
            e.rule.order, e.rule.id, action
        ));
    }
    if audit_schemas::control::is_control(event_type) {
        decision = "KEEP: control events are kept whatever the rules say".into();
    }
    out.push_str(&format!("decision: {decision}\n"));
    out
}

/// What `--dry-run` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DryRun {
    /// Stored events looked at (the newest first, up to the limit).
    pub examined: u64,
    /// Of those, how many the rule set with the change would drop.
    pub would_drop: u64,
    /// ... by the changed rule itself, per event type.
    pub by_type: BTreeMap<String, u64>,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct StoredEvent {
    event_type: String,
    /// What the enricher found the type to mean in the catalog; '' for nothing.
    catalog_type: String,
    user_id: Option<String>,
    user_login: Option<String>,
    group_ids: Vec<String>,
    group_names: Vec<String>,
}

/// Runs the rule set with `rule` set over the newest `last` stored events.
pub async fn dry_run(
    settings: &Settings,
    tables: &Tables,
    rule: &AuditRule,
    last: u64,
) -> Result<DryRun> {
    let ch = &settings.clickhouse;
    let client = crate::verify::client(ch);
    let events: Vec<StoredEvent> = client
        .query(
            "SELECT event_type, catalog_type, user_id, user_login, group_ids, group_names FROM events
             WHERE NOT startsWith(event_type, 'audit.')
             ORDER BY inserted_at DESC LIMIT ?",
        )
        .bind(last)
        .fetch_all()
        .await
        .with_context(|| {
            format!(
                "reading the last {last} events from {} (database {}; settings clickhouse.*)",
                ch.url, ch.database
            )
        })?;
    let mut proposed = RuleSet::default();
    for r in tables.rules.rules().filter(|r| r.id != rule.id) {
        proposed.upsert(r.clone())?;
    }
    proposed.upsert(rule.clone())?;
    let mut result = DryRun {
        examined: events.len() as u64,
        would_drop: 0,
        by_type: BTreeMap::new(),
    };
    for e in events {
        let user = e.user_id.map(|id| ResolvedUser {
            login: e.user_login.unwrap_or_else(|| id.clone()),
            id,
            name: None,
        });
        let groups: Vec<GroupRef> = e
            .group_ids
            .into_iter()
            .zip(e.group_names)
            .map(|(id, name)| GroupRef { id, name })
            .collect();
        if let Decision::Drop { rule_id, .. } = proposed.decide(
            Types {
                event_type: &e.event_type,
                catalog: Some(e.catalog_type.as_str()).filter(|c| !c.is_empty()),
            },
            user.as_ref(),
            &groups,
        ) {
            result.would_drop += 1;
            if rule_id == rule.id {
                *result.by_type.entry(e.event_type).or_insert(0) += 1;
            }
        }
    }
    Ok(result)
}
