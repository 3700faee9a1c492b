//! `audit-enricher` as a process, against the real broker.

use audit_runtime::TopicsConfig;
use audit_schemas::*;
use audit_tests::*;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

struct Enricher {
    child: Child,
    /// Where it serves `/metrics`.
    ops: SocketAddr,
}

impl Drop for Enricher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(topics: &TopicsConfig, group: &str) -> Enricher {
    start_with(topics, group, &[])
}

fn start_with(topics: &TopicsConfig, group: &str, env: &[(&str, &str)]) -> Enricher {
    let ops = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-enricher"));
    cmd.arg("run")
        .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__ENRICHER__GROUP_ID", group)
        .env("AUDIT__ENRICHER__SESSION_WAIT_MS", "1500")
        .env("AUDIT__OPS__LISTEN", ops.to_string())
        .env("AUDIT__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd.envs(topics_env(topics));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Enricher {
        child: cmd.spawn().expect("audit-enricher starts"),
        ops,
    }
}

async fn setup(partitions: i32) -> (TopicsConfig, FutureProducer) {
    let topics = unique_topics(partitions);
    create_topics(&topics).await.unwrap();
    (topics, producer().unwrap())
}

async fn put(p: &FutureProducer, topics: &TopicsConfig, entry: DirectoryEntry) {
    let r = DirectoryRecord { entry };
    produce(
        p,
        topics.for_directory(r.key().topic()),
        &r.key().record_key(),
        &r.encode().unwrap(),
    )
    .await
    .unwrap();
}

async fn directory(p: &FutureProducer, topics: &TopicsConfig) {
    put(
        p,
        topics,
        DirectoryEntry::Group(Group {
            id: "g-all".into(),
            name: "everyone".into(),
            parent_ids: vec![],
            scim: None,
        }),
    )
    .await;
    put(
        p,
        topics,
        DirectoryEntry::Group(Group {
            id: "g-ctr".into(),
            name: "contractors".into(),
            parent_ids: vec!["g-all".into()],
            scim: None,
        }),
    )
    .await;
    put(
        p,
        topics,
        DirectoryEntry::Group(Group {
            id: "g-eng".into(),
            name: "engineering".into(),
            parent_ids: vec!["g-all".into()],
            scim: None,
        }),
    )
    .await;
    put(
        p,
        topics,
        DirectoryEntry::User(User {
            id: "u-carl".into(),
            login: "carl".into(),
            name: Some("Carl".into()),
            group_ids: vec!["g-ctr".into()],
            scim: None,
        }),
    )
    .await;
    put(
        p,
        topics,
        DirectoryEntry::User(User {
            id: "u-erin".into(),
            login: "erin".into(),
            name: None,
            group_ids: vec!["g-eng".into()],
            scim: None,
        }),
    )
    .await;
    for (s, u) in [("s-carl", "u-carl"), ("s-erin", "u-erin")] {
        put(
            p,
            topics,
            DirectoryEntry::Session(Session {
                id: s.into(),
                user_id: u.into(),
                started_at: fixture_start(),
                ip: Some("10.9.9.9".into()),
                user_agent: None,
                last_activity_at: None,
                ended_at: None,
            }),
        )
        .await;
    }
}

/// When the fixture's sessions started: now (whole seconds), once per run, so that no session
/// lifetime ends them during a test.
fn fixture_start() -> Timestamp {
    static START: std::sync::OnceLock<Timestamp> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        Timestamp::from_micros(Timestamp::now().as_micros() / 1_000_000 * 1_000_000)
    })
}

fn raw(
    event_type: &str,
    source: Source,
    session: Option<&str>,
    user: Option<&str>,
    message: &str,
) -> RawAuditEvent {
    RawAuditEvent {
        event_id: Uuid::new_v4(),
        timestamp: Timestamp::now(),
        event_type: EventType::new(event_type).unwrap(),
        source,
        service: "test".into(),
        session_id: session.map(Into::into),
        user_id: user.map(Into::into),
        username: None,
        tenant: None,
        success: true,
        message: Some(message.into()),
        entities: vec![],
        params: Default::default(),
        response: None,
        error: None,
        client: None,
        ingest: None,
        utc_offset_minutes: None,
    }
}

async fn send(p: &FutureProducer, topics: &TopicsConfig, e: &RawAuditEvent) {
    produce(
        p,
        &topics.raw.name,
        &e.partition_key(),
        &e.encode().unwrap(),
    )
    .await
    .unwrap();
}

async fn enriched(topics: &TopicsConfig, count: usize) -> Vec<EnrichedAuditEvent> {
    consume_n(
        &topics.enriched.name,
        topics.enriched.partitions,
        count,
        Duration::from_secs(60),
    )
    .await
    .unwrap()
    .iter()
    .map(|m| EnrichedAuditEvent::decode(payload(m).unwrap()).unwrap())
    .collect()
}

fn by_message(events: Vec<EnrichedAuditEvent>) -> HashMap<String, EnrichedAuditEvent> {
    events
        .into_iter()
        .map(|e| (e.event.message.clone().unwrap(), e))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn joins_user_transitive_groups_and_session_and_distrusts_client_claims() {
    let (topics, p) = setup(2).await;
    directory(&p, &topics).await;
    let _e = start(&topics, &unique("g"));
    send(
        &p,
        &topics,
        &raw(
            "query-created",
            Source::Server,
            Some("s-carl"),
            None,
            "server",
        ),
    )
    .await;
    send(
        &p,
        &topics,
        &raw(
            "query-created",
            Source::Client,
            Some("s-erin"),
            Some("u-carl"),
            "claims carl",
        ),
    )
    .await;
    send(
        &p,
        &topics,
        &raw(
            "log",
            Source::Client,
            None,
            Some("u-carl"),
            "client without session",
        ),
    )
    .await;
    send(
        &p,
        &topics,
        &raw(
            "log",
            Source::Server,
            None,
            Some("u-erin"),
            "server without session",
        ),
    )
    .await;
    let got = by_message(enriched(&topics, 4).await);

    let e = &got["server"];
    assert_eq!(e.enrichment, Enrichment::Enriched);
    assert_eq!(e.user.as_ref().unwrap().login, "carl");
    assert_eq!(
        e.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        vec!["contractors", "everyone"]
    );
    let s = e.session.as_ref().unwrap();
    assert_eq!(
        (s.id.as_str(), s.ip.as_deref(), s.started_at),
        ("s-carl", Some("10.9.9.9"), fixture_start())
    );

    let e = &got["claims carl"];
    assert_eq!(
        e.user.as_ref().unwrap().id,
        "u-erin",
        "the session's user, not the claim"
    );
    assert!(e.claimed_user_mismatch);

    let e = &got["client without session"];
    assert_eq!(
        (e.enrichment, e.user.is_none()),
        (Enrichment::NoSession, true)
    );
    let e = &got["server without session"];
    assert_eq!(e.user.as_ref().unwrap().login, "erin");
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_apply_live_and_deleting_restores() {
    let (topics, p) = setup(1).await;
    directory(&p, &topics).await;
    let e = start(&topics, &unique("g"));
    // The enricher is up once a first event comes through.
    send(
        &p,
        &topics,
        &raw("log", Source::Server, Some("s-carl"), None, "warm-up"),
    )
    .await;
    enriched(&topics, 1).await;

    let rule = AuditRule {
        id: "no-queries-for-contractors".into(),
        order: 1,
        description: None,
        groups: vec!["contractors".into()],
        users: vec![],
        event_types: vec!["query-*".into()],
        action: RuleAction::Drop,
    };
    produce(&p, &topics.rules.name, &rule.id, &rule.encode().unwrap())
        .await
        .unwrap();
    // Rules apply as soon as the enricher has read them; the gauge says when that was.
    wait_metric(e.ops, "audit_enricher_rules", 1.0, Duration::from_secs(30))
        .await
        .unwrap();
    send(
        &p,
        &topics,
        &raw(
            "query-created",
            Source::Server,
            Some("s-carl"),
            None,
            "carl query (dropped)",
        ),
    )
    .await;
    send(
        &p,
        &topics,
        &raw(
            "query-created",
            Source::Server,
            Some("s-erin"),
            None,
            "erin query",
        ),
    )
    .await;
    send(
        &p,
        &topics,
        &raw(
            "job-created",
            Source::Server,
            Some("s-carl"),
            None,
            "carl job",
        ),
    )
    .await;
    // The rule must stay until carl's query went through the enricher: its table follower can
    // read the tombstone below before the main consumer has even fetched the events. A drop is
    // counted once per group of the user's: contractors and, through it, everyone.
    wait_metric(
        e.ops,
        "audit_enricher_events_dropped_total",
        2.0,
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    produce(&p, &topics.rules.name, &rule.id, b"")
        .await
        .unwrap();
    wait_metric(e.ops, "audit_enricher_rules", 0.0, Duration::from_secs(30))
        .await
        .unwrap();
    send(
        &p,
        &topics,
        &raw(
            "query-edited",
            Source::Server,
            Some("s-carl"),
            None,
            "carl query after delete",
        ),
    )
    .await;

    // The four kept events, and the summary of what the rule dropped.
    let got = enriched(&topics, 5).await;
    let (summaries, kept): (Vec<_>, Vec<_>) = got
        .iter()
        .partition(|e| e.event.event_type.as_str() == audit_schemas::drops::SUMMARY_TYPE);
    let messages: Vec<&str> = kept
        .iter()
        .map(|e| e.event.message.as_deref().unwrap())
        .collect();
    assert_eq!(
        messages,
        vec![
            "warm-up",
            "erin query",
            "carl job",
            "carl query after delete"
        ]
    );
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let params = &summaries[0].event.params;
    assert_eq!(params["rule"], format!("\"{}\"", rule.id));
    assert_eq!(params["dropped_type"], "\"query-created\"");
    assert_eq!(params["group"], "\"contractors\"");
    assert_eq!(params["count"], "1");
    assert!(
        consume_n(&topics.enriched.name, 1, 6, Duration::from_secs(2))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn late_sessions_are_waited_for_and_missing_ones_marked() {
    let (topics, p) = setup(1).await;
    directory(&p, &topics).await;
    let e = start(&topics, &unique("g"));
    send(
        &p,
        &topics,
        &raw("log", Source::Client, Some("s-late"), None, "late"),
    )
    .await;
    // The session arrives only once the enricher holds the event back waiting for it.
    wait_metric(
        e.ops,
        "audit_enricher_waiting_for_session",
        1.0,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    put(
        &p,
        &topics,
        DirectoryEntry::Session(Session {
            id: "s-late".into(),
            user_id: "u-erin".into(),
            started_at: Timestamp::now(),
            ip: None,
            user_agent: None,
            last_activity_at: None,
            ended_at: None,
        }),
    )
    .await;
    send(
        &p,
        &topics,
        &raw("log", Source::Client, Some("s-never"), None, "never"),
    )
    .await;
    let got = by_message(enriched(&topics, 2).await);
    assert_eq!(got["late"].enrichment, Enrichment::Enriched);
    assert_eq!(got["late"].user.as_ref().unwrap().login, "erin");
    assert_eq!(got["never"].enrichment, Enrichment::SessionUnknown);
    assert!(got["never"].user.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_records_are_dead_lettered_and_the_stream_goes_on() {
    let (topics, p) = setup(1).await;
    directory(&p, &topics).await;
    let _e = start(&topics, &unique("g"));
    produce(&p, &topics.raw.name, "k1", b"{\"event_type\":\"log\"}")
        .await
        .unwrap();
    let mut truncated = raw("log", Source::Server, None, None, "x")
        .encode()
        .unwrap();
    truncated.truncate(truncated.len() - 2);
    produce(&p, &topics.raw.name, "k2", &truncated)
        .await
        .unwrap();
    let wrong = DirectoryRecord {
        entry: DirectoryEntry::Group(Group {
            id: "g".into(),
            name: "g".into(),
            parent_ids: vec![],
            scim: None,
        }),
    };
    produce(&p, &topics.raw.name, "k3", &wrong.encode().unwrap())
        .await
        .unwrap();
    send(
        &p,
        &topics,
        &raw(
            "log",
            Source::Server,
            Some("s-erin"),
            None,
            "after the bad ones",
        ),
    )
    .await;

    let got = enriched(&topics, 1).await;
    assert_eq!(got[0].event.message.as_deref(), Some("after the bad ones"));
    let letters: Vec<DeadLetter> = consume_n(&topics.dlq.name, 1, 3, Duration::from_secs(30))
        .await
        .unwrap()
        .iter()
        .map(|m| DeadLetter::decode(payload(m).unwrap()).unwrap())
        .collect();
    assert!(letters[0].reason.contains("C3 01"), "{}", letters[0].reason);
    assert!(
        letters[1].reason.contains("RawAuditEvent"),
        "{}",
        letters[1].reason
    );
    assert!(
        letters[2].reason.contains("not a known RawAuditEvent"),
        "{}",
        letters[2].reason
    );
    assert_eq!(
        letters[0].original_value.as_deref(),
        Some(b"{\"event_type\":\"log\"}".as_slice())
    );
    assert_eq!(letters[0].original_key.as_deref(), Some(b"k1".as_slice()));
    assert_eq!(
        (letters[2].source_partition, letters[2].source_offset),
        (Some(0), Some(2))
    );
    assert!(letters.iter().all(|l| l.stage == "enricher"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_one_killed_still_deliver_every_event() {
    let (topics, p) = setup(4).await;
    directory(&p, &topics).await;
    let group = unique("g");
    let total = 20_000;
    let mut events = Vec::with_capacity(total);
    let sessions = ["s-carl", "s-erin"];
    for i in 0..total {
        events.push(raw(
            "log",
            Source::Server,
            Some(sessions[i % 2]),
            None,
            &i.to_string(),
        ));
    }
    let mut a = start(&topics, &group);
    let b = start(&topics, &group);
    // Publish while both run, and kill one mid-stream.
    let (first, rest) = events.split_at(total / 2);
    futures::future::join_all(first.iter().map(|e| send(&p, &topics, e))).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    futures::future::join_all(rest.iter().map(|e| send(&p, &topics, e))).await;
    // A replacement joins once the group has expired the dead member (10 s session timeout):
    // Tansu 0.6 sometimes leaves the survivor without partitions after a member dies, and
    // gives nothing to a member that joins while the dead one is still registered.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let c = start(&topics, &group);

    // Wait for every event, then keep reading until quiet to count re-processed duplicates.
    consume_n(&topics.enriched.name, 4, total, Duration::from_secs(120))
        .await
        .unwrap();
    let messages = consume_all(&topics.enriched.name, 4, Duration::from_secs(3))
        .await
        .unwrap();
    let mut ids = HashSet::new();
    for m in &messages {
        ids.insert(
            EnrichedAuditEvent::decode(m.payload().unwrap())
                .unwrap()
                .event
                .event_id,
        );
    }
    let missing: Vec<_> = events
        .iter()
        .filter(|e| !ids.contains(&e.event_id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "lost events, e.g. {:?}",
        missing.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    assert_eq!(ids.len(), total);
    eprintln!(
        "after kill -9: {} events, {} duplicates re-processed",
        total,
        messages.len() - total
    );
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_too_large_once_enriched_is_dead_lettered_and_the_rest_flow() {
    let (topics, p) = setup(1).await;
    directory(&p, &topics).await;
    let budget = audit_runtime::budget::MIN_MESSAGE_BYTES;
    let mut e = start_with(
        &topics,
        &unique("g"),
        &[("AUDIT__KAFKA__MESSAGE_MAX_BYTES", &budget.to_string())],
    );
    // Fits the broker and the raw topic, but not the enricher's output budget once enriched.
    let big = raw(
        "log",
        Source::Server,
        Some("s-erin"),
        Some(&"u".repeat(250)),
        &"x".repeat(budget - 1_000),
    );
    send(&p, &topics, &big).await;
    for i in 0..20 {
        send(
            &p,
            &topics,
            &raw(
                "log",
                Source::Server,
                Some("s-erin"),
                None,
                &format!("after {i}"),
            ),
        )
        .await;
    }
    let got = by_message(enriched(&topics, 20).await);
    assert!((0..20).all(|i| got.contains_key(&format!("after {i}"))));
    let letters: Vec<DeadLetter> = consume_n(&topics.dlq.name, 1, 1, Duration::from_secs(30))
        .await
        .unwrap()
        .iter()
        .map(|m| DeadLetter::decode(payload(m).unwrap()).unwrap())
        .collect();
    assert_eq!(letters[0].cause, "too_large", "{}", letters[0].reason);
    assert_eq!(letters[0].stage, "enricher");
    // This raw record is over what ingest would take under this budget (it was produced
    // directly), so the letter keeps its head, with the size and hash of the whole.
    let whole = big.encode().unwrap();
    assert!(letters[0].original_truncated);
    assert_eq!(letters[0].original_size, Some(whole.len() as i64));
    assert_eq!(
        letters[0].original_sha256.as_deref(),
        Some(audit_runtime::dead_letter::sha256_hex(&whole).as_str())
    );
    assert!(whole.starts_with(letters[0].original_value.as_deref().unwrap()));
    assert!(
        e.child.try_wait().unwrap().is_none(),
        "the enricher runs on"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_sessions_hold_back_only_their_own_records() {
    let (topics, p) = setup(2).await;
    directory(&p, &topics).await;
    // A long wait: the known sessions' events must not wait for it.
    let e = start_with(
        &topics,
        &unique("g"),
        &[("AUDIT__ENRICHER__SESSION_WAIT_MS", "15000")],
    );
    let mut unknown = Vec::new();
    for i in 0..40 {
        if i % 4 == 0 {
            let session = format!("random-{}", Uuid::new_v4());
            send(
                &p,
                &topics,
                &raw(
                    "log",
                    Source::Client,
                    Some(&session),
                    None,
                    &format!("unknown {i}"),
                ),
            )
            .await;
            unknown.push(i);
        } else {
            send(
                &p,
                &topics,
                &raw(
                    "log",
                    Source::Server,
                    Some("s-erin"),
                    None,
                    &format!("known {i}"),
                ),
            )
            .await;
        }
    }
    // A second event of one waiting session waits behind the first (its order is kept).
    let behind = format!("random-{}", Uuid::new_v4());
    send(
        &p,
        &topics,
        &raw("log", Source::Client, Some(&behind), None, "first"),
    )
    .await;
    send(
        &p,
        &topics,
        &raw("log", Source::Client, Some(&behind), None, "second"),
    )
    .await;

    let known = enriched(&topics, 30).await;
    assert!(
        known
            .iter()
            .all(|e| e.event.message.as_deref().unwrap().starts_with("known")),
        "only known sessions' events went on"
    );
    // Every unknown-session record still waits while the known ones are all out (the other
    // partition's records may be fetched a little later; the wait is 15 s).
    wait_metric(
        e.ops,
        "audit_enricher_waiting_for_session",
        12.0,
        Duration::from_secs(8),
    )
    .await
    .unwrap();
    // Then they go on, marked, in their session's order.
    let all = enriched(&topics, 42).await;
    let messages: Vec<&str> = all
        .iter()
        .filter_map(|e| e.event.message.as_deref())
        .collect();
    let first = messages.iter().position(|m| *m == "first").unwrap();
    let second = messages.iter().position(|m| *m == "second").unwrap();
    assert!(first < second, "{messages:?}");
    for e in all
        .iter()
        .filter(|e| e.event.message.as_deref().unwrap().starts_with("unknown"))
    {
        assert_eq!(e.enrichment, Enrichment::SessionUnknown);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn implausible_event_times_are_flagged_and_kept() {
    let (topics, p) = setup(1).await;
    directory(&p, &topics).await;
    let _e = start(&topics, &unique("g"));
    let day = 24 * 3600 * 1_000_000;
    let mut old = raw("log", Source::Server, None, Some("u-erin"), "backdated");
    old.timestamp = Timestamp::from_micros(Timestamp::now().as_micros() - 400 * day);
    let mut ahead = raw("log", Source::Server, None, Some("u-erin"), "ahead");
    ahead.timestamp = Timestamp::from_micros(Timestamp::now().as_micros() + day);
    let fine = raw("log", Source::Server, None, Some("u-erin"), "now");
    for e in [&old, &ahead, &fine] {
        send(&p, &topics, e).await;
    }
    let got = by_message(enriched(&topics, 3).await);
    assert_eq!(got["backdated"].event_time, EventTimeCheck::TooOld);
    assert_eq!(
        got["backdated"].event.timestamp, old.timestamp,
        "the claim is kept"
    );
    assert_eq!(got["ahead"].event_time, EventTimeCheck::Ahead);
    assert_eq!(got["now"].event_time, EventTimeCheck::Plausible);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logged_out_session_joins_for_its_grace_period_then_leaves_memory() {
    let (topics, p) = setup(1).await;
    directory(&p, &topics).await;
    let e = start_with(
        &topics,
        &unique("g"),
        &[("AUDIT__ENRICHER__SESSION_END_GRACE_MS", "4000")],
    );
    wait_metric(
        e.ops,
        "audit_consumer_assigned_partitions",
        1.0,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    // Carl logs out: a tombstone for his session.
    produce(&p, &topics.sessions.name, "s-carl", &[])
        .await
        .unwrap();
    wait_metric(
        e.ops,
        "audit_enricher_sessions_ending",
        1.0,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    send(
        &p,
        &topics,
        &raw(
            "log",
            Source::Client,
            Some("s-carl"),
            None,
            "racing the logout",
        ),
    )
    .await;
    let got = by_message(enriched(&topics, 1).await);
    assert_eq!(got["racing the logout"].enrichment, Enrichment::Enriched);
    assert_eq!(
        got["racing the logout"].user.as_ref().unwrap().login,
        "carl"
    );

    // After the grace period the session is swept out of memory...
    wait_metric(
        e.ops,
        "audit_enricher_sessions_ended_total",
        1.0,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        metric_sum(e.ops, "audit_enricher_directory_entries{kind=\"session\"}")
            .await
            .unwrap_or(-1.0),
        1.0
    );
    // ...and a later event of it no longer joins, while Erin's session still does.
    send(
        &p,
        &topics,
        &raw(
            "log",
            Source::Client,
            Some("s-carl"),
            None,
            "after the grace",
        ),
    )
    .await;
    send(
        &p,
        &topics,
        &raw("log", Source::Client, Some("s-erin"), None, "erin still in"),
    )
    .await;
    let got = by_message(enriched(&topics, 3).await);
    assert_eq!(
        got["after the grace"].enrichment,
        Enrichment::SessionUnknown
    );
    assert_eq!(got["erin still in"].enrichment, Enrichment::Enriched);
}

/// `count` sessions `s-0`.. of Carl and Erin, started now.
async fn many_sessions(p: &FutureProducer, topics: &TopicsConfig, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("s-{i}");
        put(
            p,
            topics,
            DirectoryEntry::Session(Session {
                id: id.clone(),
                user_id: if i % 2 == 0 { "u-carl" } else { "u-erin" }.into(),
                started_at: Timestamp::now(),
                ip: None,
                user_agent: None,
                last_activity_at: None,
                ended_at: None,
            }),
        )
        .await;
        ids.push(id);
    }
    ids
}

/// Sessions an instance holds, from its gauge (refreshed every 5 s).
async fn sessions_held(e: &Enricher) -> f64 {
    metric_sum(e.ops, "audit_enricher_directory_entries{kind=\"session\"}")
        .await
        .unwrap_or(-1.0)
}

/// Waits until the instances together hold `total` sessions, each fewer.
async fn wait_shared(instances: &[&Enricher], total: f64) -> Vec<f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut held = Vec::new();
        for e in instances {
            held.push(sessions_held(e).await);
        }
        if held.iter().sum::<f64>() == total && held.iter().all(|h| *h > 0.0 && *h < total) {
            return held;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions held per instance: {held:?}, not {total} shared"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One CLIENT event per session; every one must join its session's user.
async fn every_event_joins(
    p: &FutureProducer,
    topics: &TopicsConfig,
    sessions: &[String],
    round: &str,
    seen: &mut HashSet<Uuid>,
) {
    let events: Vec<RawAuditEvent> = sessions
        .iter()
        .map(|s| {
            raw(
                "log",
                Source::Client,
                Some(s),
                None,
                &format!("{round} {s}"),
            )
        })
        .collect();
    futures::future::join_all(events.iter().map(|e| send(p, topics, e))).await;
    let want: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut got: HashMap<Uuid, EnrichedAuditEvent> = HashMap::new();
    while got.len() < want.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{round}: {} of {} events enriched",
            got.len(),
            want.len()
        );
        let all = consume_all(
            &topics.enriched.name,
            topics.enriched.partitions,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        for m in all {
            let e = EnrichedAuditEvent::decode(payload(&m).unwrap()).unwrap();
            if want.contains(&e.event.event_id) {
                got.insert(e.event.event_id, e);
            }
        }
    }
    for e in got.values() {
        let session = e.event.session_id.as_deref().unwrap();
        let n: usize = session.trim_start_matches("s-").parse().unwrap();
        assert_eq!(
            e.enrichment,
            Enrichment::Enriched,
            "{round}: {session} lost its join"
        );
        let want_user = if n % 2 == 0 { "carl" } else { "erin" };
        assert_eq!(e.user.as_ref().unwrap().login, want_user, "{round}");
    }
    seen.extend(got.keys());
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_hold_only_their_partitions_sessions_and_a_rebalance_moves_them() {
    let (topics, p) = setup(4).await;
    directory(&p, &topics).await;
    let sessions = many_sessions(&p, &topics, 200).await;
    let group = unique("g");
    // No waiting for late sessions: a join lost to a rebalance would show as SESSION_UNKNOWN.
    let quick = [("AUDIT__ENRICHER__SESSION_WAIT_MS", "0")];
    let mut a = start_with(&topics, &group, &quick);
    let b = start_with(&topics, &group, &quick);
    let held = wait_shared(&[&a, &b], 202.0).await;
    eprintln!("sessions held by two instances: {held:?}");
    let mut seen = HashSet::new();
    every_event_joins(&p, &topics, &sessions, "both", &mut seen).await;

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // As in two_instances_one_killed_still_deliver_every_event: Tansu hands partitions out
    // reliably only once the dead member expired.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let c = start_with(&topics, &group, &quick);
    let held = wait_shared(&[&b, &c], 202.0).await;
    eprintln!("sessions held after the rebalance: {held:?}");
    every_event_joins(&p, &topics, &sessions, "after", &mut seen).await;
    assert!(
        metric_sum(c.ops, "audit_enricher_session_records_restored_total")
            .await
            .unwrap()
            > 0.0,
        "the new instance restored its partitions' sessions"
    );
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_end_leave_memory_and_are_tombstoned() {
    let (topics, p) = setup(2).await;
    directory(&p, &topics).await;
    let e = start_with(
        &topics,
        &unique("g"),
        &[
            ("AUDIT__ENRICHER__SESSION_IDLE_TIMEOUT_MS", "6000"),
            ("AUDIT__ENRICHER__SESSION_END_GRACE_MS", "1000"),
        ],
    );
    wait_metric(
        e.ops,
        "audit_consumer_assigned_partitions",
        2.0,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    // Active sessions join; then nothing: every session idles out (s-carl and s-erin of
    // `directory` too), leaves memory and is tombstoned in the topic.
    let sessions = many_sessions(&p, &topics, 10).await;
    let mut seen = HashSet::new();
    every_event_joins(&p, &topics, &sessions, "active", &mut seen).await;
    wait_metric(
        e.ops,
        "audit_enricher_sessions_ended_total",
        12.0,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    wait_metric(
        e.ops,
        "audit_enricher_directory_entries{kind=\"session\"}",
        0.0,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let records = consume_all(&topics.sessions.name, 2, Duration::from_secs(3))
        .await
        .unwrap();
    let tombstoned: HashSet<String> = records
        .iter()
        .filter(|m| m.payload().is_none_or(<[u8]>::is_empty))
        .map(|m| String::from_utf8_lossy(m.key().unwrap()).into_owned())
        .collect();
    for s in sessions
        .iter()
        .chain(&["s-carl".to_string(), "s-erin".to_string()])
    {
        assert!(tombstoned.contains(s), "{s} not tombstoned: {tombstoned:?}");
    }
    // A later event of an ended session no longer joins.
    send(
        &p,
        &topics,
        &raw("log", Source::Client, Some("s-3"), None, "after the end"),
    )
    .await;
    let got = by_message(enriched(&topics, 11).await);
    assert_eq!(got["after the end"].enrichment, Enrichment::SessionUnknown);
}
