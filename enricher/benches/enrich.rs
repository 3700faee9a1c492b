//! The in-process enrich step on one core: decode a raw record, join, apply rules, redact,
//! encode the enriched record.
//!
//! ```sh
//! cargo bench -p audit-enricher --bench enrich
//! ```
//! Criterion reports the throughput as elements (events) per second. The `sessions` group joins
//! against 20,000 sessions and against one instance's half of 5,000,000 (2,500,000), to show
//! whether a large directory slows the join (cache misses); `BENCH_SESSIONS` overrides the
//! large count.

use audit_enricher::directory::Directory;
use audit_enricher::enrich::{enrich, Lookup, RawPosition, Step};
use audit_enricher::rules::RuleSet;
use audit_enricher::sessions::Sessions;
use audit_schemas::redaction::Redactor;
use audit_schemas::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

/// The id of session `n`: UUIDs, as platforms issue them.
fn session_id(n: u64) -> String {
    uuid::Uuid::from_u128(u128::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
        .to_string()
}

/// `count` sessions of 5,000 users.
fn sessions(count: u64) -> Sessions {
    let mut sessions = Sessions::default();
    let now = Timestamp::now();
    for s in 0..count {
        sessions.put(
            (s % 6) as i32,
            &Session {
                id: session_id(s),
                user_id: format!("u{}", s % 5_000),
                started_at: now,
                ip: Some(format!("10.0.{}.{}", s % 200, s % 250)),
                user_agent: None,
                last_activity_at: None,
                ended_at: None,
            },
            now,
        );
    }
    sessions
}

fn setup(session_count: u64) -> (Sessions, Directory, RuleSet, Vec<Vec<u8>>) {
    let mut directory = Directory::new();
    for g in 0..50 {
        let r = DirectoryRecord {
            entry: DirectoryEntry::Group(Group {
                id: format!("g{g}"),
                name: format!("group {g}"),
                parent_ids: if g > 0 {
                    vec![format!("g{}", g / 2)]
                } else {
                    vec![]
                },
                scim: None,
            }),
        };
        directory.apply(r.key(), Some(r)).unwrap();
    }
    for u in 0..5_000 {
        let r = DirectoryRecord {
            entry: DirectoryEntry::User(User {
                id: format!("u{u}"),
                login: format!("user{u}@example.com"),
                name: Some(format!("User {u}")),
                group_ids: vec![format!("g{}", u % 50)],
                scim: None,
            }),
        };
        directory.apply(r.key(), Some(r)).unwrap();
    }
    let mut rules = RuleSet::default();
    for i in 0..10 {
        rules
            .upsert(AuditRule {
                id: format!("r{i}"),
                order: i,
                description: None,
                groups: vec![format!("group {}", 40 + i)],
                users: vec![],
                event_types: vec!["query-*".into(), "job-start".into()],
                action: RuleAction::Drop,
            })
            .unwrap();
    }
    let records = (0..1_000)
        .map(|n| {
            let entry = &catalog::CATALOG[n % 47];
            RawAuditEvent {
                event_id: uuid::Uuid::new_v4(),
                timestamp: Timestamp::now(),
                event_type: EventType::new(entry.name).unwrap(),
                source: if n % 2 == 0 {
                    Source::Client
                } else {
                    Source::Server
                },
                service: "web".into(),
                // Spread over the whole table, as a real mix of users is.
                session_id: Some(session_id((n as u64).wrapping_mul(2_654_435_761) % session_count)),
                user_id: Some(format!("u{}", n % 5_000)),
                username: None,
                tenant: Some("default".into()),
                success: true,
                message: Some(if n % 10 == 0 {
                    // One event in ten carries a secret the scanner must find.
                    format!(
                        "{} failed: upstream answered 401 to Bearer tok{n}x9f8e7d6c5b4a3 at https://api.example.com/v1/q/{n}",
                        entry.name
                    )
                } else {
                    format!(
                        "{} happened for user{} at https://app.example.com/q/{n} in 12 ms",
                        entry.name,
                        n % 5_000
                    )
                }),
                entities: vec![EntityRef {
                    kind: "query".into(),
                    id: format!("q{n}"),
                    name: None,
                    role: Default::default(),
                }],
                params: [
                    ("rows".to_string(), n.to_string()),
                    ("filter".to_string(), r#"{"column":"region"}"#.to_string()),
                    (
                        "query".to_string(),
                        r#""SELECT region, count() FROM events WHERE tenant = 'default' GROUP BY region""#
                            .to_string(),
                    ),
                    (
                        "request".to_string(),
                        if n % 10 == 5 {
                            r#"{"user":"bob","password":"hunter2","remember":true}"#.to_string()
                        } else {
                            r#"{"user":"bob","remember":true,"page":2}"#.to_string()
                        },
                    ),
                ]
                .into(),
                response: None,
                error: None,
                client: None,
                ingest: None,
                utc_offset_minutes: None,
            }
            .encode()
            .unwrap()
        })
        .collect();
    (sessions(session_count), directory, rules, records)
}

fn bench(c: &mut Criterion) {
    let vocabulary = audit_schemas::vocabulary::Vocabulary::default();
    let (sessions, directory, rules, records) = setup(20_000);
    let lookup = Lookup {
        sessions: &sessions,
        directory: &directory,
        rules: &rules,
        vocabulary: &vocabulary,
    };
    let redactor = Redactor::default();
    let mut group = c.benchmark_group("enrich");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode_join_rules_encode", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(512);
            for (i, bytes) in records.iter().enumerate() {
                let raw = RawAuditEvent::decode(black_box(bytes)).unwrap();
                let pos = RawPosition {
                    partition: 0,
                    offset: i as i64,
                    received_at: Timestamp::from_micros(0),
                };
                if let Step::Publish { event, .. } =
                    enrich(raw, pos, lookup, &redactor, true, Timestamp::from_micros(1))
                {
                    out.clear();
                    event.encode_into(&mut out).unwrap();
                    black_box(&out);
                }
            }
        })
    });
    // The same with every event linked into its hash chain (canonical content, SHA-256), as
    // the enricher does with `chain.enabled` (the default): the chain's cost per core.
    group.bench_function("decode_join_rules_chain_encode", |b| {
        let mut chaining = audit_enricher::chaining::Chaining::new(None, Duration::from_secs(1));
        b.iter(|| {
            let mut out = Vec::with_capacity(512);
            for (i, bytes) in records.iter().enumerate() {
                let raw = RawAuditEvent::decode(black_box(bytes)).unwrap();
                let pos = RawPosition {
                    partition: 0,
                    offset: i as i64,
                    received_at: Timestamp::from_micros(0),
                };
                if let Step::Publish { mut event, .. } =
                    enrich(raw, pos, lookup, &redactor, true, Timestamp::from_micros(1))
                {
                    chaining.link(&mut event);
                    out.clear();
                    event.encode_into(&mut out).unwrap();
                    black_box(&out);
                }
            }
        })
    });
    // The same with redaction off, to show what the secret scanner costs.
    let off = Redactor::disabled();
    group.bench_function("decode_join_rules_encode_redaction_off", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(512);
            for (i, bytes) in records.iter().enumerate() {
                let raw = RawAuditEvent::decode(black_box(bytes)).unwrap();
                let pos = RawPosition {
                    partition: 0,
                    offset: i as i64,
                    received_at: Timestamp::from_micros(0),
                };
                if let Step::Publish { event, .. } =
                    enrich(raw, pos, lookup, &off, true, Timestamp::from_micros(1))
                {
                    out.clear();
                    event.encode_into(&mut out).unwrap();
                    black_box(&out);
                }
            }
        })
    });
    // The parts, to see where the time goes.
    let raws: Vec<RawAuditEvent> = records
        .iter()
        .map(|b| RawAuditEvent::decode(b).unwrap())
        .collect();
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            for bytes in &records {
                black_box(RawAuditEvent::decode(black_box(bytes)).unwrap());
            }
        })
    });
    group.bench_function("redact_only", |b| {
        let mut copies = raws.clone();
        b.iter(|| {
            for raw in copies.iter_mut() {
                black_box(redactor.redact_event(black_box(raw)));
            }
        })
    });
    group.bench_function("redact_fresh_only", |b| {
        b.iter_batched_ref(
            || raws.clone(),
            |copies| {
                for raw in copies.iter_mut() {
                    black_box(redactor.redact_event(black_box(raw)));
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("join_rules_redact_only", |b| {
        b.iter(|| {
            for (i, raw) in raws.iter().enumerate() {
                let pos = RawPosition {
                    partition: 0,
                    offset: i as i64,
                    received_at: Timestamp::from_micros(0),
                };
                black_box(enrich(
                    raw.clone(),
                    pos,
                    lookup,
                    &redactor,
                    true,
                    Timestamp::from_micros(1),
                ));
            }
        })
    });
    let enriched: Vec<EnrichedAuditEvent> = raws
        .iter()
        .filter_map(|raw| {
            let pos = RawPosition {
                partition: 0,
                offset: 0,
                received_at: Timestamp::from_micros(0),
            };
            match enrich(
                raw.clone(),
                pos,
                lookup,
                &redactor,
                true,
                Timestamp::from_micros(1),
            ) {
                Step::Publish { event, .. } => Some(*event),
                _ => None,
            }
        })
        .collect();
    group.throughput(Throughput::Elements(enriched.len() as u64));
    group.bench_function("encode_only", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(512);
            for e in &enriched {
                out.clear();
                e.encode_into(&mut out).unwrap();
                black_box(&out);
            }
        })
    });
    group.finish();
}

/// The enrich rate against a small and a large sessions table (same events, same users).
fn by_sessions(c: &mut Criterion) {
    let large: u64 = std::env::var("BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_500_000);
    let redactor = Redactor::default();
    let mut group = c.benchmark_group("sessions");
    for count in [20_000, large] {
        let vocabulary = audit_schemas::vocabulary::Vocabulary::default();
        let (sessions, directory, rules, records) = setup(count);
        let lookup = Lookup {
            sessions: &sessions,
            directory: &directory,
            rules: &rules,
            vocabulary: &vocabulary,
        };
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function(format!("decode_join_rules_encode_{count}"), |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(512);
                for (i, bytes) in records.iter().enumerate() {
                    let raw = RawAuditEvent::decode(black_box(bytes)).unwrap();
                    let pos = RawPosition {
                        partition: 0,
                        offset: i as i64,
                        received_at: Timestamp::from_micros(0),
                    };
                    if let Step::Publish { event, .. } =
                        enrich(raw, pos, lookup, &redactor, false, Timestamp::now())
                    {
                        out.clear();
                        event.encode_into(&mut out).unwrap();
                        black_box(&out);
                    }
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, by_sessions);
criterion_main!(benches);
