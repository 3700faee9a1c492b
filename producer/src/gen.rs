//! `audit-producer gen`: realistic load for the demo and the benchmarks.
//!
//! Publishes a directory first (groups with a parent chain, users in groups, sessions of users)
//! and then events of every catalog type at a steady rate, spread over the sessions, with a mix
//! of CLIENT and SERVER sources, entities of the type's kind, and the odd failure.

use anyhow::{Context, Result};
use audit_runtime::{Shutdown, TopicsConfig};
use audit_schemas::catalog::CATALOG;
use audit_schemas::*;
use clap::Args;
use futures::future::try_join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone, Args)]
pub struct GenArgs {
    /// Events per second (0: as fast as the broker takes them).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Events in all.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Distinct sessions (each with its user; users share 8 groups).
    #[arg(long, default_value_t = 100)]
    pub sessions: u64,
    /// Seed, for a repeatable run.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Do not publish directory records (they exist from an earlier run).
    #[arg(long)]
    pub no_directory: bool,
}

/// The generated world: who the events are about.
pub struct Population {
    pub records: Vec<DirectoryRecord>,
    pub sessions: Vec<(String, String)>,
}

pub const GROUPS: [(&str, &str, Option<&str>); 8] = [
    ("g-everyone", "everyone", None),
    ("g-engineering", "engineering", Some("g-everyone")),
    ("g-data", "data", Some("g-engineering")),
    ("g-analysts", "analysts", Some("g-data")),
    ("g-sales", "sales", Some("g-everyone")),
    ("g-contractors", "contractors", Some("g-everyone")),
    ("g-admins", "admins", Some("g-engineering")),
    ("g-support", "support", Some("g-sales")),
];

/// Groups, one user per two sessions, and the sessions, deterministically from `seed`.
pub fn population(sessions: u64, seed: u64) -> Population {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut records: Vec<DirectoryRecord> = GROUPS
        .iter()
        .map(|(id, name, parent)| DirectoryRecord {
            entry: DirectoryEntry::Group(Group {
                id: id.to_string(),
                name: name.to_string(),
                parent_ids: parent.iter().map(|p| p.to_string()).collect(),
                scim: None,
            }),
        })
        .collect();
    let users = sessions.div_ceil(2).max(1);
    for u in 0..users {
        let group = GROUPS[1 + (u as usize % (GROUPS.len() - 1))].0;
        records.push(DirectoryRecord {
            entry: DirectoryEntry::User(User {
                id: format!("u-{u}"),
                login: format!("user{u}"),
                name: Some(format!("User {u}")),
                group_ids: vec![group.to_string()],
                scim: None,
            }),
        });
    }
    let mut session_list = Vec::new();
    for s in 0..sessions {
        let user = format!("u-{}", s % users);
        let id = format!("s-{seed}-{s}");
        records.push(DirectoryRecord {
            entry: DirectoryEntry::Session(Session {
                id: id.clone(),
                user_id: user.clone(),
                started_at: Timestamp::now(),
                ip: Some(format!(
                    "10.0.{}.{}",
                    rng.random_range(0..255),
                    rng.random_range(1..255)
                )),
                user_agent: Some("Mozilla/5.0".into()),
                last_activity_at: None,
                ended_at: None,
            }),
        });
        session_list.push((id, user));
    }
    Population {
        records,
        sessions: session_list,
    }
}

/// One event of the catalog, in one of the sessions.
pub fn event(rng: &mut StdRng, sessions: &[(String, String)], n: u64) -> RawAuditEvent {
    let entry = &CATALOG[(n % CATALOG.len() as u64) as usize];
    let (session, user) = &sessions[rng.random_range(0..sessions.len())];
    let client = rng.random_bool(0.5);
    let entities = entry
        .entity_kind
        .map(|kind| EntityRef {
            kind: kind.to_string(),
            id: format!("{kind}-{}", rng.random_range(0..1000)),
            name: None,
            role: Default::default(),
        })
        .into_iter()
        .collect();
    let success = entry.name != "error" && rng.random_ratio(49, 50);
    let mut params = BTreeMap::new();
    params.insert("seq".to_string(), n.to_string());
    params.insert("persistent".to_string(), "\"value\"".to_string());
    RawAuditEvent {
        event_id: Uuid::from_u128(rng.random()),
        timestamp: Timestamp::now(),
        event_type: EventType::new(entry.name).unwrap_or_else(|_| unreachable_type()),
        source: if client {
            Source::Client
        } else {
            Source::Server
        },
        service: if client {
            "web-client".into()
        } else {
            "web-server".into()
        },
        session_id: Some(session.clone()),
        user_id: Some(user.clone()),
        username: None,
        tenant: Some("default".into()),
        success,
        message: Some(format!("{} #{n}", entry.name)),
        entities,
        params,
        response: None,
        error: (!success).then(|| ErrorInfo {
            code: Some("E_GENERATED".into()),
            message: Some("generated failure".into()),
            stack_trace: None,
            fingerprint: None,
        }),
        client: client.then(|| ClientInfo {
            ip: Some("10.1.2.3".into()),
            user_agent: Some("Mozilla/5.0".into()),
        }),
        ingest: None,
        utc_offset_minutes: None,
    }
}

/// Catalog names are valid event types by construction (a unit test checks every one).
fn unreachable_type() -> EventType {
    EventType::new("log").unwrap_or_else(|_| unreachable!("'log' is a valid event type"))
}

pub async fn run(
    args: &GenArgs,
    producer: &FutureProducer,
    topics: &TopicsConfig,
    shutdown: &Shutdown,
) -> Result<String> {
    let population = population(args.sessions.max(1), args.seed);
    if !args.no_directory {
        let mut sends = Vec::new();
        for record in &population.records {
            let value = record.encode()?;
            let key = record.key();
            let topic = topics.for_directory(key.topic());
            let key = key.record_key();
            sends.push(async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&value),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(|(e, _)| e)
            });
        }
        try_join_all(sends)
            .await
            .context("publishing directory records")?;
    }
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let start = Instant::now();
    let per_tick = if args.rate == 0 {
        10_000
    } else {
        (args.rate / 10).max(1)
    };
    let mut sent = 0u64;
    while sent < args.count && !shutdown.is_triggered() {
        let n = per_tick.min(args.count - sent);
        let events: Vec<RawAuditEvent> = (0..n)
            .map(|i| event(&mut rng, &population.sessions, sent + i))
            .collect();
        let encoded: Vec<(String, Vec<u8>)> = events
            .iter()
            .map(|e| Ok((e.partition_key(), e.encode()?)))
            .collect::<Result<_, EncodeError>>()?;
        let sends = encoded.iter().map(|(key, value)| async move {
            producer
                .send(
                    FutureRecord::to(&topics.raw.name).key(key).payload(value),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| e)
        });
        try_join_all(sends).await.context("publishing events")?;
        sent += n;
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(format!(
        "published {sent} events in {secs:.1} s ({:.0} events/s) over {} sessions, plus {} directory records",
        sent as f64 / secs.max(1e-9),
        population.sessions.len(),
        if args.no_directory { 0 } else { population.records.len() }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_is_consistent() {
        let p = population(5, 1);
        assert_eq!(p.sessions.len(), 5);
        let users: Vec<_> = p
            .records
            .iter()
            .filter_map(|r| match &r.entry {
                DirectoryEntry::User(u) => Some(u.id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(users.len(), 3);
        for (_, user) in &p.sessions {
            assert!(users.contains(user));
        }
    }

    #[test]
    fn events_cover_the_catalog() {
        let p = population(3, 1);
        let mut rng = StdRng::seed_from_u64(1);
        let types: std::collections::HashSet<_> = (0..47)
            .map(|n| event(&mut rng, &p.sessions, n).event_type.to_string())
            .collect();
        assert_eq!(types.len(), 47);
    }
}
