//! Administrators' rules, compiled for matching.
//!
//! Rules apply in ascending `order` (ties by id); the first rule whose every non-empty criterion
//! matches decides. A rule's groups match an event's (transitive) group ids or names, its users
//! match the resolved user's id or login, and its event types are globs (`query-*`). No match
//! keeps the event.

use audit_schemas::{AuditRule, AvroRecord, GroupRef, ResolvedUser, RuleAction};
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::HashSet;

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule {id}: event type pattern {pattern:?} is not a valid glob: {source}")]
    Glob {
        id: String,
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("undecodable rule: {0}")]
    Decode(#[from] audit_schemas::DecodeError),
    #[error("rule under key {key:?} has id {id:?}; they must be the same")]
    KeyMismatch { key: String, id: String },
}

#[derive(Debug)]
pub struct CompiledRule {
    pub rule: AuditRule,
    groups: HashSet<String>,
    users: HashSet<String>,
    types: Option<GlobSet>,
}

impl CompiledRule {
    pub fn compile(rule: AuditRule) -> Result<Self, RuleError> {
        let types = if rule.event_types.is_empty() {
            None
        } else {
            let mut builder = GlobSetBuilder::new();
            for pattern in &rule.event_types {
                let glob = Glob::new(pattern).map_err(|source| RuleError::Glob {
                    id: rule.id.clone(),
                    pattern: pattern.clone(),
                    source,
                })?;
                builder.add(glob);
            }
            Some(builder.build().map_err(|source| RuleError::Glob {
                id: rule.id.clone(),
                pattern: rule.event_types.join(","),
                source,
            })?)
        };
        Ok(Self {
            groups: rule.groups.iter().cloned().collect(),
            users: rule.users.iter().cloned().collect(),
            types,
            rule,
        })
    }

    /// `None`: no match; `Some(group)`: a match, on `group` when the rule names groups.
    fn matches<'g>(
        &self,
        types: Types<'_>,
        user: Option<&ResolvedUser>,
        groups: &[&'g str],
    ) -> Option<Option<&'g str>> {
        // Cheapest first: a few hash lookups before the glob, which most events never reach.
        let user_ok = self.users.is_empty()
            || user.is_some_and(|u| self.users.contains(&u.id) || self.users.contains(&u.login));
        if !user_ok {
            return None;
        }
        let group = if self.groups.is_empty() {
            None
        } else {
            Some(*groups.iter().find(|g| self.groups.contains(**g))?)
        };
        self.types
            .as_ref()
            .is_none_or(|t| {
                t.is_match(types.event_type) || types.catalog.is_some_and(|c| t.is_match(c))
            })
            .then_some(group)
    }
}

/// An event's type and the catalog type it means (`audit_schemas::vocabulary`): a rule on
/// `connection-created` also decides the server's `dataConnectionCreated`.
#[derive(Debug, Clone, Copy)]
pub struct Types<'a> {
    pub event_type: &'a str,
    pub catalog: Option<&'a str>,
}

impl<'a> Types<'a> {
    /// A type with no catalog meaning beyond itself.
    pub fn of(event_type: &'a str) -> Self {
        Self {
            event_type,
            catalog: None,
        }
    }
}

/// Why one rule did or did not decide an event, for `auditctl rules explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The first rule that matches: it decides.
    Decides { group: Option<String> },
    /// Matches, but an earlier rule decided.
    Shadowed,
    /// Does not apply, and why.
    NoMatch(String),
}

/// A rule as `explain` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub rule: AuditRule,
    pub verdict: Verdict,
}

impl CompiledRule {
    /// The first criterion that fails, said so an administrator can act on it.
    fn why_not(&self, types: Types<'_>, user: Option<&ResolvedUser>, groups: &[&str]) -> String {
        if !self.users.is_empty()
            && !user.is_some_and(|u| self.users.contains(&u.id) || self.users.contains(&u.login))
        {
            let who = user.map_or("no user".to_string(), |u| {
                format!("user {} ({})", u.id, u.login)
            });
            return format!("names users {:?}; the event has {who}", self.rule.users);
        }
        if !self.groups.is_empty() && !groups.iter().any(|g| self.groups.contains(*g)) {
            return format!(
                "names groups {:?}; the user is in {:?}",
                self.rule.groups, groups
            );
        }
        match types.catalog.filter(|c| *c != types.event_type) {
            Some(c) => format!(
                "types {:?} match neither {:?} nor its catalog type {c:?}",
                self.rule.event_types, types.event_type
            ),
            None => format!(
                "types {:?} do not match {:?}",
                self.rule.event_types, types.event_type
            ),
        }
    }
}

/// The live rule set.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
}

/// What the rules decided for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// `group`: the event's group (id or name) the rule matched on, if the rule names groups.
    Drop {
        rule_id: String,
        group: Option<String>,
    },
}

impl RuleSet {
    pub fn upsert(&mut self, rule: AuditRule) -> Result<(), RuleError> {
        let compiled = CompiledRule::compile(rule)?;
        self.rules.retain(|r| r.rule.id != compiled.rule.id);
        self.rules.push(compiled);
        self.rules
            .sort_by(|a, b| (a.rule.order, &a.rule.id).cmp(&(b.rule.order, &b.rule.id)));
        Ok(())
    }

    pub fn delete(&mut self, id: &str) {
        self.rules.retain(|r| r.rule.id != id);
    }

    /// Applies one record of the rules topic; an empty value deletes the rule.
    pub fn apply_bytes(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), RuleError> {
        let key = String::from_utf8_lossy(key).into_owned();
        match value {
            None | Some([]) => {
                self.delete(&key);
                Ok(())
            }
            Some(bytes) => {
                let rule = AuditRule::decode(bytes)?;
                if rule.id != key {
                    return Err(RuleError::KeyMismatch { key, id: rule.id });
                }
                self.upsert(rule)
            }
        }
    }

    pub fn decide(
        &self,
        types: Types<'_>,
        user: Option<&ResolvedUser>,
        groups: &[GroupRef],
    ) -> Decision {
        // Control events record changes to auditing itself: no rule may silence them.
        if self.rules.is_empty() || audit_schemas::control::is_control(types.event_type) {
            return Decision::Keep;
        }
        // The event's group ids and names, once, rather than per rule. A user is in a handful of
        // groups: a linear scan of this list beats hashing it on every event.
        let names: Vec<&str> = groups
            .iter()
            .flat_map(|g| [g.id.as_str(), g.name.as_str()])
            .collect();
        match self
            .rules
            .iter()
            .find_map(|r| Some((r, r.matches(types, user, &names)?)))
        {
            Some((r, group)) if r.rule.action == RuleAction::Drop => Decision::Drop {
                rule_id: r.rule.id.clone(),
                group: group.map(str::to_string),
            },
            _ => Decision::Keep,
        }
    }

    /// Every rule in order with what it decided for this event and why; `decide`'s answer
    /// spelled out.
    pub fn explain(
        &self,
        types: Types<'_>,
        user: Option<&ResolvedUser>,
        groups: &[GroupRef],
    ) -> Vec<Explained> {
        let names: Vec<&str> = groups
            .iter()
            .flat_map(|g| [g.id.as_str(), g.name.as_str()])
            .collect();
        let control = audit_schemas::control::is_control(types.event_type);
        let mut decided = false;
        self.rules
            .iter()
            .map(|r| {
                let verdict = match r.matches(types, user, &names) {
                    _ if control => Verdict::NoMatch(
                        "control events (audit.*) are kept whatever the rules say".into(),
                    ),
                    Some(_) if decided => Verdict::Shadowed,
                    Some(group) => {
                        decided = true;
                        Verdict::Decides {
                            group: group.map(str::to_string),
                        }
                    }
                    None => Verdict::NoMatch(r.why_not(types, user, &names)),
                };
                Explained {
                    rule: r.rule.clone(),
                    verdict,
                }
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> impl Iterator<Item = &AuditRule> {
        self.rules.iter().map(|r| &r.rule)
    }

    /// Whether some rule names this group: such names may label metrics (an operator chose
    /// them), other group names may not.
    pub fn names_group(&self, group: &str) -> bool {
        self.rules.iter().any(|r| r.groups.contains(group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        id: &str,
        order: i32,
        groups: &[&str],
        users: &[&str],
        types: &[&str],
        action: RuleAction,
    ) -> AuditRule {
        AuditRule {
            id: id.into(),
            order,
            description: None,
            groups: groups.iter().map(|s| s.to_string()).collect(),
            users: users.iter().map(|s| s.to_string()).collect(),
            event_types: types.iter().map(|s| s.to_string()).collect(),
            action,
        }
    }

    fn user(id: &str) -> ResolvedUser {
        ResolvedUser {
            id: id.into(),
            login: format!("{id}-login"),
            name: None,
        }
    }

    fn groups(names: &[&str]) -> Vec<GroupRef> {
        names
            .iter()
            .map(|n| GroupRef {
                id: format!("g-{n}"),
                name: n.to_string(),
            })
            .collect()
    }

    #[test]
    fn first_match_wins_in_order() {
        let mut rules = RuleSet::default();
        rules
            .upsert(rule(
                "drop-queries",
                10,
                &["contractors"],
                &[],
                &["query-*"],
                RuleAction::Drop,
            ))
            .unwrap();
        rules
            .upsert(rule(
                "keep-alice",
                5,
                &[],
                &["alice-login"],
                &[],
                RuleAction::Keep,
            ))
            .unwrap();
        let contractors = groups(&["contractors"]);
        assert_eq!(
            rules.decide(Types::of("query-created"), Some(&user("bob")), &contractors),
            Decision::Drop {
                rule_id: "drop-queries".into(),
                group: Some("contractors".into())
            }
        );
        // Alice's keep rule comes first.
        assert_eq!(
            rules.decide(
                Types::of("query-created"),
                Some(&user("alice")),
                &contractors
            ),
            Decision::Keep
        );
        // Other types and other groups are kept.
        assert_eq!(
            rules.decide(Types::of("job-created"), Some(&user("bob")), &contractors),
            Decision::Keep
        );
        assert_eq!(
            rules.decide(
                Types::of("query-created"),
                Some(&user("bob")),
                &groups(&["sales"])
            ),
            Decision::Keep
        );
        // Group ids match as well as names.
        let by_id = vec![GroupRef {
            id: "contractors".into(),
            name: "x".into(),
        }];
        assert!(matches!(
            rules.decide(Types::of("query-edited"), None, &by_id),
            Decision::Drop { .. }
        ));
        // A group rule never matches an event without groups.
        assert_eq!(
            rules.decide(Types::of("query-created"), None, &[]),
            Decision::Keep
        );
    }

    #[test]
    fn update_and_delete() {
        let mut rules = RuleSet::default();
        rules
            .upsert(rule("r", 1, &[], &[], &["log"], RuleAction::Drop))
            .unwrap();
        assert!(matches!(
            rules.decide(Types::of("log"), None, &[]),
            Decision::Drop { .. }
        ));
        rules
            .upsert(rule("r", 1, &[], &[], &["error"], RuleAction::Drop))
            .unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules.decide(Types::of("log"), None, &[]), Decision::Keep);
        rules.apply_bytes(b"r", None).unwrap();
        assert!(rules.is_empty());
    }

    #[test]
    fn explain_names_the_deciding_rule_and_why_the_others_do_not_apply() {
        let mut rules = RuleSet::default();
        rules
            .upsert(rule("for-sales", 1, &["sales"], &[], &[], RuleAction::Keep))
            .unwrap();
        rules
            .upsert(rule(
                "no-queries",
                5,
                &["contractors"],
                &[],
                &["query-*"],
                RuleAction::Drop,
            ))
            .unwrap();
        rules
            .upsert(rule(
                "no-logs",
                9,
                &[],
                &[],
                &["query-*", "log"],
                RuleAction::Drop,
            ))
            .unwrap();
        let got = rules.explain(
            Types::of("query-created"),
            Some(&user("bob")),
            &groups(&["contractors"]),
        );
        let verdicts: Vec<(&str, &Verdict)> = got
            .iter()
            .map(|e| (e.rule.id.as_str(), &e.verdict))
            .collect();
        assert_eq!(
            verdicts[1].1,
            &Verdict::Decides {
                group: Some("contractors".into())
            }
        );
        assert_eq!(verdicts[2].1, &Verdict::Shadowed);
        match verdicts[0].1 {
            Verdict::NoMatch(why) => assert!(why.contains("sales"), "{why}"),
            other => panic!("{other:?}"),
        }
        let decided = rules.decide(
            Types::of("query-created"),
            Some(&user("bob")),
            &groups(&["contractors"]),
        );
        assert_eq!(
            decided,
            Decision::Drop {
                rule_id: "no-queries".into(),
                group: Some("contractors".into())
            }
        );
        let control = rules.explain(Types::of("audit.rule-set"), None, &[]);
        assert!(control
            .iter()
            .all(|e| matches!(e.verdict, Verdict::NoMatch(_))));
    }

    #[test]
    fn no_rule_drops_a_control_event() {
        let mut rules = RuleSet::default();
        for (id, types) in [("everything", vec![]), ("audit", vec!["audit.*"])] {
            rules
                .upsert(rule(id, 1, &[], &[], &types, RuleAction::Drop))
                .unwrap();
        }
        assert_eq!(
            rules.decide(Types::of("audit.rule-deleted"), Some(&user("root")), &[]),
            Decision::Keep
        );
        assert!(matches!(
            rules.decide(Types::of("log"), None, &[]),
            Decision::Drop { .. }
        ));
    }

    #[test]
    fn bad_rules_are_refused_with_the_rule_named() {
        let mut rules = RuleSet::default();
        let e = rules
            .upsert(rule("bad", 1, &[], &[], &["query-["], RuleAction::Drop))
            .unwrap_err();
        assert!(e.to_string().contains("rule bad"), "{e}");
        let encoded = rule("a", 1, &[], &[], &[], RuleAction::Drop)
            .encode()
            .unwrap();
        assert!(matches!(
            rules.apply_bytes(b"b", Some(&encoded)),
            Err(RuleError::KeyMismatch { .. })
        ));
    }
}
