//! Sessions at scale on the real broker: what one of two enricher instances holds when the
//! directory has millions of sessions.
//!
//! ```sh
//! dev/stack down; AUDIT_KAFKA_STORAGE=memory dev/stack up
//! cargo bench -p audit-enricher --bench sessions_scale    # BENCH_SESSIONS=5000000 by default
//! ```
//!
//! 1. publishes BENCH_SESSIONS sessions (UUID ids, 5,000 users) over 6 partitions;
//! 2. starts two `audit-enricher` instances in one group and waits until they hold every
//!    session between them; prints per instance the sessions held, resident memory (VmRSS,
//!    and the peak VmHWM) and the time its partitions took to restore;
//! 3. kills one, starts a replacement once the group expired the dead member (Tansu hands
//!    partitions out reliably only then), and prints the same for the pair after the rebalance:
//!    the replacement's restore is the time a moved partition is late.
//!
//! The enrich rate against a large sessions table next to a small one is the `sessions` group
//! of the `enrich` bench (in process, where the join's cache misses show without the broker's
//! noise).

use audit_schemas::{AvroRecord, DirectoryEntry, DirectoryRecord, Session, Timestamp, User};
use audit_tests::*;
use rdkafka::producer::FutureRecord;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;

struct Instance {
    name: &'static str,
    child: Child,
    ops: SocketAddr,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    name: &'static str,
    topics: &audit_runtime::TopicsConfig,
    group: &str,
) -> anyhow::Result<Instance> {
    let ops = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-enricher"));
    cmd.arg("run")
        .env("AUDIT__KAFKA__BROKERS", kafka_brokers())
        .env("AUDIT__ENRICHER__GROUP_ID", group)
        // The sessions were all started "now": none may end during the run.
        .env("AUDIT__ENRICHER__SESSION_IDLE_TIMEOUT_MS", "0")
        .env("AUDIT__ENRICHER__SESSION_MAX_LIFETIME_MS", "0")
        .env("AUDIT__OPS__LISTEN", ops.to_string())
        .env(
            "AUDIT__LOG__LEVEL",
            std::env::var("BENCH_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::null());
    cmd.envs(topics_env(topics));
    Ok(Instance {
        name,
        child: cmd.spawn()?,
        ops,
    })
}

/// A field of /proc/<pid>/status in MiB (VmRSS: now; VmHWM: the peak).
fn memory_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// The largest value of a labelled gauge.
async fn metric_max(ops: SocketAddr, name: &str) -> f64 {
    metrics_text(ops)
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
}

async fn held(i: &Instance) -> f64 {
    metric_sum(i.ops, "audit_enricher_directory_entries{kind=\"session\"}")
        .await
        .unwrap_or(0.0)
}

/// Waits until the instances hold `total` sessions between them, each some, none restoring.
async fn wait_shared(pair: [&Instance; 2], total: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1_800);
    loop {
        let (a, b) = (held(pair[0]).await, held(pair[1]).await);
        let mut restoring = 0.0;
        for i in pair {
            restoring += metric_sum(i.ops, "audit_enricher_partitions_restoring")
                .await
                .unwrap_or(1.0);
        }
        if a + b == total && a > 0.0 && b > 0.0 && restoring == 0.0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sessions held: {a} + {b} of {total}, partitions restoring: {restoring}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn report(when: &str, pair: [&Instance; 2]) {
    for i in pair {
        let pid = i.child.id();
        let partitions = metric_sum(i.ops, "audit_consumer_assigned_partitions")
            .await
            .unwrap_or(f64::NAN);
        println!(
            "{when:<16} {:<12} partitions {partitions:>2}  sessions {:>9}  RSS {:>6.0} MiB  peak RSS {:>6.0} MiB  slowest partition restore {:>6.1} s  table bytes {:>6.0} MiB",
            i.name,
            held(i).await,
            memory_mib(pid, "VmRSS"),
            memory_mib(pid, "VmHWM"),
            metric_max(i.ops, "audit_enricher_session_restore_seconds").await,
            metric_sum(i.ops, "audit_enricher_directory_kind_bytes{kind=\"session\"}")
                .await
                .unwrap_or(f64::NAN)
                / 1_048_576.0,
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = env_count("BENCH_SESSIONS", 5_000_000);
    let topics = unique_topics(PARTITIONS);
    create_topics(&topics).await?;
    let producer = producer()?;

    for u in 0..5_000 {
        let r = DirectoryRecord {
            entry: DirectoryEntry::User(User {
                id: format!("u{u}"),
                login: format!("user{u}@example.com"),
                name: None,
                group_ids: vec![format!("g{}", u % 50)],
                scim: None,
            }),
        };
        produce(
            &producer,
            &topics.directory.name,
            &r.key().record_key(),
            &r.encode()?,
        )
        .await?;
    }
    let started = Instant::now();
    let now = Timestamp::now();
    for chunk in (0..total as u64).collect::<Vec<_>>().chunks(20_000) {
        let records: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|&n| {
                let id = uuid::Uuid::from_u128(
                    u128::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
                )
                .to_string();
                let r = DirectoryRecord {
                    entry: DirectoryEntry::Session(Session {
                        id: id.clone(),
                        user_id: format!("u{}", n % 5_000),
                        started_at: now,
                        ip: Some(format!("10.{}.{}.{}", n % 7, n % 200, n % 250)),
                        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
                        last_activity_at: None,
                        ended_at: None,
                    }),
                };
                (id, r.encode().expect("encodes"))
            })
            .collect();
        let sends = records.iter().map(|(k, v)| {
            producer.send(
                FutureRecord::to(&topics.sessions.name).key(k).payload(v),
                Duration::from_secs(120),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }
    println!(
        "published {total} sessions over {PARTITIONS} partitions in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let group = unique("bench");
    let a = start("instance A", &topics, &group)?;
    let b = start("instance B", &topics, &group)?;
    let loading = Instant::now();
    wait_shared([&a, &b], total as f64).await?;
    println!(
        "two instances hold every session after {:.0} s",
        loading.elapsed().as_secs_f64()
    );
    report("two instances", [&a, &b]).await;

    drop(a); // SIGKILL
    tokio::time::sleep(Duration::from_secs(12)).await;
    let c = start("instance C", &topics, &group)?;
    let moving = Instant::now();
    wait_shared([&b, &c], total as f64).await?;
    println!(
        "after killing A, B and its replacement C hold every session again {:.0} s after C started",
        moving.elapsed().as_secs_f64()
    );
    report("after rebalance", [&b, &c]).await;
    Ok(())
}
