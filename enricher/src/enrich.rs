//! The enrich step for one event, with no I/O: join, rules, redaction.
//!
//! Trust: a CLIENT event's user is taken from its session only; its own `user_id` is a claim that
//! is checked and flagged when it differs. A SERVER event without a known session keeps its
//! claimed user, since servers authenticate their callers; so does a CLIENT event sent with a
//! browser token, whose user the ingest API took from the token the platform signed.

use crate::directory::Directory;
use crate::rules::{Decision, RuleSet, Types};
use crate::sessions::Sessions;
use audit_schemas::drops::Drop;
use audit_schemas::redaction::Redactor;
use audit_schemas::vocabulary::Vocabulary;
use audit_schemas::{
    Credential, EnrichedAuditEvent, Enrichment, PipelineMeta, RawAuditEvent, Source, Timestamp,
};

/// Where the raw record came from.
#[derive(Debug, Clone, Copy)]
pub struct RawPosition {
    pub partition: i32,
    pub offset: i64,
    pub received_at: Timestamp,
}

/// The result of the step for one event.
#[derive(Debug)]
pub enum Step {
    Publish {
        event: Box<EnrichedAuditEvent>,
        /// Secrets the enricher had to redact (a producer let them through).
        redacted: usize,
    },
    Dropped {
        drop: Drop,
        /// The names of every group of the event's user (for the metrics' labels).
        groups: Vec<String>,
    },
    /// The session is not in the directory yet; try again until the wait runs out.
    AwaitSession(Box<RawAuditEvent>),
}

/// The tables one event is joined and judged against.
#[derive(Clone, Copy)]
pub struct Lookup<'a> {
    pub sessions: &'a Sessions,
    pub directory: &'a Directory,
    pub rules: &'a RuleSet,
    /// What server codes mean in the catalog.
    pub vocabulary: &'a Vocabulary,
}

/// Enriches one event. With `give_up_waiting`, an unknown session yields SESSION_UNKNOWN
/// instead of [`Step::AwaitSession`]. A joined event counts as its session's activity.
pub fn enrich(
    mut raw: RawAuditEvent,
    position: RawPosition,
    tables: Lookup<'_>,
    redactor: &Redactor,
    give_up_waiting: bool,
    now: Timestamp,
) -> Step {
    let Lookup {
        sessions,
        directory,
        rules,
        vocabulary,
    } = tables;
    let trusted_claim = raw.source == Source::Server
        || raw
            .ingest
            .as_ref()
            .is_some_and(|i| i.credential == Credential::BrowserToken);
    let (enrichment, session, user_id) = match raw.session_id.as_deref() {
        Some(sid) => match sessions.get(sid) {
            Some(s) => {
                s.touch(raw.timestamp, now);
                (
                    Enrichment::Enriched,
                    Some(s.info(sid)),
                    Some(s.user_id().to_string()),
                )
            }
            None if !give_up_waiting => return Step::AwaitSession(Box::new(raw)),
            None => (
                Enrichment::SessionUnknown,
                None,
                raw.user_id.clone().filter(|_| trusted_claim),
            ),
        },
        None => (
            Enrichment::NoSession,
            None,
            raw.user_id.clone().filter(|_| trusted_claim),
        ),
    };
    let claimed_user_mismatch = enrichment == Enrichment::Enriched
        && raw.user_id.is_some()
        && raw.user_id.as_deref() != user_id.as_deref();
    let (user, groups) = match user_id.as_deref() {
        Some(id) => {
            let (user, groups) = directory.user_and_groups(id);
            (Some(user), groups)
        }
        None => (None, Vec::new()),
    };

    let catalog = vocabulary.lookup(raw.event_type.as_str());
    let types = Types {
        event_type: raw.event_type.as_str(),
        catalog: catalog.as_ref().map(|c| c.event_type.as_str()),
    };
    if let Decision::Drop { rule_id, group } = rules.decide(types, user.as_ref(), &groups) {
        return Step::Dropped {
            drop: Drop {
                rule_id,
                event_type: raw.event_type.to_string(),
                group,
                event_time: raw.timestamp,
                raw_partition: position.partition,
                raw_offset: position.offset,
            },
            groups: groups.into_iter().map(|g| g.name).collect(),
        };
    }
    let redacted = redactor.redact_event(&mut raw);
    Step::Publish {
        event: Box::new(EnrichedAuditEvent {
            event: raw,
            user,
            groups,
            session,
            enrichment,
            claimed_user_mismatch,
            pipeline: PipelineMeta {
                received_at: position.received_at,
                enriched_at: now,
                raw_partition: position.partition,
                raw_offset: position.offset,
            },
            // Checked by the service, which holds the configured limits.
            event_time: Default::default(),
            chain: None,
            catalog,
        }),
        redacted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_schemas::*;

    fn sessions() -> Sessions {
        let mut s = Sessions::default();
        s.put(
            2,
            &Session {
                id: "s1".into(),
                user_id: "alice".into(),
                started_at: Timestamp::from_micros(5),
                ip: Some("10.0.0.9".into()),
                user_agent: None,
                last_activity_at: None,
                ended_at: None,
            },
            Timestamp::from_micros(300),
        );
        s
    }

    fn directory() -> Directory {
        let mut d = Directory::new();
        let recs = [
            DirectoryEntry::Group(Group {
                id: "g-data".into(),
                name: "data".into(),
                parent_ids: vec!["g-all".into()],
                scim: None,
            }),
            DirectoryEntry::Group(Group {
                id: "g-all".into(),
                name: "everyone".into(),
                parent_ids: vec![],
                scim: None,
            }),
            DirectoryEntry::User(User {
                id: "alice".into(),
                login: "alice@x".into(),
                name: Some("Alice".into()),
                group_ids: vec!["g-data".into()],
                scim: None,
            }),
        ];
        for entry in recs {
            let r = DirectoryRecord { entry };
            d.apply(r.key(), Some(r)).unwrap();
        }
        d
    }

    fn raw(
        source: Source,
        session: Option<&str>,
        user: Option<&str>,
        event_type: &str,
    ) -> RawAuditEvent {
        RawAuditEvent {
            event_id: uuid::Uuid::new_v4(),
            timestamp: Timestamp::from_micros(100),
            event_type: EventType::new(event_type).unwrap(),
            source,
            service: "web".into(),
            session_id: session.map(Into::into),
            user_id: user.map(Into::into),
            username: None,
            tenant: None,
            success: true,
            message: None,
            entities: vec![],
            params: [("nested".to_string(), r#"{"token":"abc"}"#.to_string())].into(),
            response: None,
            error: None,
            client: None,
            ingest: None,
            utc_offset_minutes: None,
        }
    }

    const POS: RawPosition = RawPosition {
        partition: 2,
        offset: 77,
        received_at: Timestamp::from_micros(200),
    };

    fn run(raw: RawAuditEvent, rules: &RuleSet, give_up: bool) -> Step {
        enrich(
            raw,
            POS,
            Lookup {
                sessions: &sessions(),
                directory: &directory(),
                rules,
                vocabulary: &Vocabulary::default(),
            },
            &Redactor::default(),
            give_up,
            Timestamp::from_micros(300),
        )
    }

    fn published(step: Step) -> (EnrichedAuditEvent, usize) {
        match step {
            Step::Publish { event, redacted } => (*event, redacted),
            other => panic!("expected Publish, got {other:?}"),
        }
    }

    #[test]
    fn joins_session_user_and_transitive_groups() {
        let (e, redacted) = published(run(
            raw(Source::Server, Some("s1"), None, "query-created"),
            &RuleSet::default(),
            false,
        ));
        assert_eq!(e.enrichment, Enrichment::Enriched);
        assert_eq!(e.user.as_ref().unwrap().login, "alice@x");
        assert_eq!(
            e.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            vec!["data", "everyone"]
        );
        assert_eq!(e.session.as_ref().unwrap().ip.as_deref(), Some("10.0.0.9"));
        assert_eq!((e.pipeline.raw_partition, e.pipeline.raw_offset), (2, 77));
        assert_eq!(redacted, 1, "the enricher redacts again");
        assert_eq!(e.event.params["nested"], r#"{"token":"[NOT OUTPUT]"}"#);
        assert!(!e.claimed_user_mismatch);
    }

    #[test]
    fn client_claims_are_not_trusted() {
        let (e, _) = published(run(
            raw(Source::Client, Some("s1"), Some("mallory"), "log"),
            &RuleSet::default(),
            false,
        ));
        assert_eq!(e.user.as_ref().unwrap().id, "alice");
        assert!(e.claimed_user_mismatch);
        assert_eq!(
            e.event.user_id.as_deref(),
            Some("mallory"),
            "the claim is kept as evidence"
        );
        // Without a known session a CLIENT event has no user at all...
        let (e, _) = published(run(
            raw(Source::Client, None, Some("mallory"), "log"),
            &RuleSet::default(),
            false,
        ));
        assert_eq!((e.enrichment, e.user), (Enrichment::NoSession, None));
        // ...while a SERVER event keeps its claimed user.
        let (e, _) = published(run(
            raw(Source::Server, None, Some("alice"), "log"),
            &RuleSet::default(),
            false,
        ));
        assert_eq!(e.user.unwrap().login, "alice@x");
        assert_eq!(e.groups.len(), 2);
        // ...and so does a CLIENT event whose user the ingest API took from a browser token.
        let mut browser = raw(Source::Client, Some("s-gone"), Some("alice"), "log");
        browser.ingest = Some(IngestContext {
            credential: Credential::BrowserToken,
            key_id: Some("k1".into()),
            peer_ip: None,
            overridden: Default::default(),
        });
        let (e, _) = published(run(browser, &RuleSet::default(), true));
        assert_eq!(e.enrichment, Enrichment::SessionUnknown);
        assert_eq!(e.user.unwrap().login, "alice@x");
    }

    #[test]
    fn unknown_sessions_wait_then_go_on_marked() {
        assert!(matches!(
            run(
                raw(Source::Client, Some("s-late"), None, "log"),
                &RuleSet::default(),
                false
            ),
            Step::AwaitSession(_)
        ));
        let (e, _) = published(run(
            raw(Source::Client, Some("s-late"), None, "log"),
            &RuleSet::default(),
            true,
        ));
        assert_eq!(e.enrichment, Enrichment::SessionUnknown);
        assert_eq!(e.user, None);
    }

    #[test]
    fn a_rule_on_a_catalog_type_decides_the_server_codes_that_mean_it() {
        let mut rules = RuleSet::default();
        rules
            .upsert(AuditRule {
                id: "no-connection-events".into(),
                order: 1,
                description: None,
                groups: vec![],
                users: vec![],
                event_types: vec!["connection-created".into()],
                action: RuleAction::Drop,
            })
            .unwrap();
        for code in ["connection-created", "dataConnectionCreated"] {
            match run(raw(Source::Server, None, None, code), &rules, false) {
                Step::Dropped { drop, .. } => {
                    assert_eq!(drop.rule_id, "no-connection-events");
                    assert_eq!(drop.event_type, code, "the drop names the original code");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        // Kept events carry what their type means, and the type stays the server's code.
        match run(
            raw(Source::Server, None, None, "dataConnectionDeleted"),
            &rules,
            false,
        ) {
            Step::Publish { event, .. } => {
                assert_eq!(event.event.event_type.as_str(), "dataConnectionDeleted");
                let c = event.catalog.unwrap();
                assert_eq!(
                    (c.event_type.as_str(), c.kind.as_deref(), c.action.as_str()),
                    ("connection-deleted", Some("connection"), "deleted")
                );
            }
            other => panic!("{other:?}"),
        }
        match run(
            raw(Source::Server, None, None, "userService.create"),
            &rules,
            false,
        ) {
            Step::Publish { event, .. } => assert_eq!(event.catalog, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rules_drop_by_group_through_the_hierarchy() {
        let mut rules = RuleSet::default();
        rules
            .upsert(AuditRule {
                id: "no-queries-for-everyone".into(),
                order: 1,
                description: None,
                groups: vec!["everyone".into()],
                users: vec![],
                event_types: vec!["query-*".into()],
                action: RuleAction::Drop,
            })
            .unwrap();
        match run(
            raw(Source::Server, Some("s1"), None, "query-start"),
            &rules,
            false,
        ) {
            Step::Dropped { drop, groups } => {
                assert_eq!(drop.rule_id, "no-queries-for-everyone");
                assert_eq!(drop.group.as_deref(), Some("everyone"));
                assert_eq!(groups, vec!["data", "everyone"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(
                raw(Source::Server, Some("s1"), None, "job-start"),
                &rules,
                false
            ),
            Step::Publish { .. }
        ));
        assert!(matches!(
            run(
                raw(Source::Server, None, None, "query-start"),
                &rules,
                false
            ),
            Step::Publish { .. }
        ));
    }
}
