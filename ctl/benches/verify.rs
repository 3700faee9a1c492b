//! `auditctl verify`'s speed: BENCH_ROWS (default 1,000,000) chained events over 6 raw
//! partitions, with a signed v1 digest and a signed v2 checkpoint (Merkle root, `prev` list)
//! every 10,000 links of a partition, written to a fresh ClickHouse database of the local
//! stack; then `auditctl verify` over all of them, timed, with its peak memory.
//!
//! ```sh
//! dev/stack up
//! cargo bench -p auditctl --bench verify
//! ```
//!
//! `BENCH_KEEP=1` keeps the database and prints the arguments, to profile the verifier on it.

use audit_schemas::chain::checkpoint::{no_previous, Checkpoint, Statement};
use audit_schemas::chain::{leaf, merkle, Chains, Digest, SigningKey};
use audit_schemas::event::*;
use audit_schemas::{EventType, Timestamp};
use audit_sink_clickhouse::encoder::{row, EventRow, Origin};
use audit_tests::*;
use std::process::Command;
use std::time::Instant;

const PARTITIONS: i32 = 6;
const DIGEST_EVERY: i64 = 10_000;
const CHUNK: usize = 100_000;

#[derive(Debug, clickhouse::Row, serde::Serialize)]
struct DigestRow {
    raw_partition: i32,
    epoch: String,
    seq: i64,
    head: String,
    #[serde(with = "clickhouse::serde::time::datetime64::micros")]
    signed_at: time::OffsetDateTime,
    key_id: String,
    signature: String,
    #[serde(with = "clickhouse::serde::uuid")]
    digest_id: uuid::Uuid,
}

#[derive(Debug, clickhouse::Row, serde::Serialize)]
struct CheckpointRow {
    raw_partition: i32,
    epoch: String,
    tree_size: u64,
    root: String,
    raw_offset_start: i64,
    raw_offset_end: i64,
    prev: String,
    #[serde(with = "clickhouse::serde::time::datetime64::micros")]
    signed_at: time::OffsetDateTime,
    key_id: String,
    signature: String,
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: uuid::Uuid,
}

impl From<Checkpoint> for CheckpointRow {
    fn from(c: Checkpoint) -> Self {
        Self {
            raw_partition: c.raw_partition,
            epoch: c.epoch,
            tree_size: c.tree_size,
            root: c.root,
            raw_offset_start: c.raw_offset_start,
            raw_offset_end: c.raw_offset_end,
            prev: c.prev,
            signed_at: Timestamp::from_micros(c.signed_at).to_datetime(),
            key_id: c.key_id,
            signature: c.signature,
            event_id: uuid::Uuid::new_v4(),
        }
    }
}

fn event(n: u64, partition: i32, offset: i64) -> EnrichedAuditEvent {
    let now = Timestamp::now();
    EnrichedAuditEvent {
        event: RawAuditEvent {
            event_id: uuid::Uuid::new_v4(),
            timestamp: now,
            event_type: EventType::new(
                ["query-created", "log", "job-start", "error"][n as usize % 4],
            )
            .expect("a catalog type"),
            source: Source::Server,
            service: "bench".into(),
            session_id: Some(format!("s{}", n % 500)),
            user_id: Some(format!("u{}", n % 200)),
            username: None,
            tenant: Some("acme".into()),
            success: n % 7 != 0,
            message: Some(format!("event {n}")),
            entities: vec![EntityRef {
                kind: "query".into(),
                id: format!("q{}", n % 1000),
                name: Some("Sales by region".into()),
                role: Default::default(),
            }],
            params: [
                ("rows".to_string(), (n % 1000).to_string()),
                (
                    "sql".to_string(),
                    "\"select region, sum(x) from sales group by 1\"".to_string(),
                ),
            ]
            .into(),
            response: None,
            error: None,
            client: Some(ClientInfo {
                ip: Some("10.0.0.1".into()),
                user_agent: None,
            }),
            ingest: None,
            utc_offset_minutes: None,
        },
        user: None,
        groups: vec![],
        session: None,
        enrichment: Enrichment::NoSession,
        claimed_user_mismatch: false,
        pipeline: PipelineMeta {
            received_at: now,
            enriched_at: now,
            raw_partition: partition,
            raw_offset: offset,
        },
        event_time: Default::default(),
        chain: None,
        catalog: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = env_count("BENCH_ROWS", 1_000_000) as u64;
    let db = format!("audit_verify_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = clickhouse::Client::default().with_url(clickhouse_url());
    audit_sink_clickhouse::migrations::migrate(&admin, &db, None).await?;
    let client = admin.clone().with_database(&db);
    let seed = audit_tests::pipeline::CHAIN_SEED;
    let key = SigningKey::from_seed_b64("bench", seed)?;
    let from = Timestamp::from_micros(Timestamp::now().as_micros() - 60_000_000);

    let mut chains = Chains::default();
    let mut offsets = [0i64; PARTITIONS as usize];
    let mut digests = Vec::new();
    let mut frontiers = vec![merkle::Frontier::default(); PARTITIONS as usize];
    let mut prevs = vec![no_previous(); PARTITIONS as usize];
    let mut checkpoints: Vec<CheckpointRow> = Vec::new();
    let started = Instant::now();
    let mut n = 0u64;
    while n < total {
        let mut insert = client.insert::<EventRow>("events").await?;
        let end = (n + CHUNK as u64).min(total);
        for i in n..end {
            let p = (i % PARTITIONS as u64) as i32;
            let offset = offsets[p as usize];
            offsets[p as usize] += 1;
            let mut e = event(i, p, offset);
            let content = audit_schemas::chain::content_digest(&audit_schemas::chain::canonical(
                &e.event, p, offset,
            ));
            let salt = audit_schemas::chain::content::new_salt();
            let v2 = audit_schemas::chain::content::content_digest(
                &audit_schemas::chain::content::content(&e, &salt),
            );
            let link = chains.link(p, offset, &content, &v2, &salt);
            let frontier = &mut frontiers[p as usize];
            frontier.push(leaf::link_leaf(p, &link.epoch, link.seq, &v2));
            let epoch = link.epoch.clone();
            let sign = (link.seq + 1) % DIGEST_EVERY == 0 || i + (PARTITIONS as u64) >= total;
            e.chain = Some(link);
            insert
                .write(&row(
                    e,
                    "bench",
                    Origin {
                        partition: p,
                        offset,
                    },
                ))
                .await?;
            if sign {
                if let Some(head) = chains.head(p) {
                    let now = Timestamp::now();
                    let d = Digest::sign(&head, now.as_micros(), &key);
                    digests.push(DigestRow {
                        raw_partition: d.raw_partition,
                        epoch: d.epoch,
                        seq: d.seq,
                        head: d.head,
                        signed_at: now.to_datetime(),
                        key_id: d.key_id,
                        signature: d.signature,
                        digest_id: uuid::Uuid::new_v4(),
                    });
                }
                let c = Checkpoint::sign(
                    Statement {
                        raw_partition: p,
                        epoch,
                        tree_size: frontier.size(),
                        root: hex::encode(frontier.root()),
                        raw_offset_start: 0,
                        raw_offset_end: offset + 1,
                        prev: prevs[p as usize].clone(),
                        signed_at: Timestamp::now().as_micros(),
                    },
                    &key,
                );
                prevs[p as usize] = c.id();
                checkpoints.push(c.into());
            }
        }
        insert.end().await?;
        n = end;
    }
    let mut insert = client.insert::<DigestRow>("chain_digests").await?;
    for d in &digests {
        insert.write(d).await?;
    }
    insert.end().await?;
    let mut insert = client.insert::<CheckpointRow>("chain_checkpoints").await?;
    for c in &checkpoints {
        insert.write(c).await?;
    }
    insert.end().await?;
    let written = started.elapsed();
    let to = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000);

    let started = Instant::now();
    let public = key.public_b64();
    // GNU time's "%M", where installed: the verifier's peak resident memory.
    let gnu_time = std::path::Path::new("/usr/bin/time").exists();
    let mut command = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "peak_rss_kib=%M", env!("CARGO_BIN_EXE_auditctl")]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_auditctl"))
    };
    let out = command
        .args([
            "verify",
            "--from",
            &from.to_rfc3339(),
            "--to",
            &to.to_rfc3339(),
            "--public-key",
            &format!("bench={public}"),
        ])
        .env("AUDIT__CLICKHOUSE__URL", clickhouse_url())
        .env("AUDIT__CLICKHOUSE__DATABASE", &db)
        .output()?;
    let elapsed = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "verify failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("rows: {total} chained events over {PARTITIONS} raw partitions, {} signed digests and {} checkpoints (written in {:.1} s)", digests.len(), checkpoints.len(), written.as_secs_f64());
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(peak) = stderr.lines().find_map(|l| l.strip_prefix("peak_rss_kib=")) {
        println!("auditctl verify peak memory: {peak} KiB");
    }
    println!(
        "auditctl verify: {:.1} s, {:.0} rows/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    print!("{said}");
    if std::env::var_os("BENCH_KEEP").is_some() {
        // For profiling the verifier on the same data.
        println!("kept database {db} (BENCH_KEEP); the range: --from {} --to {} --public-key bench={public}", from.to_rfc3339(), to.to_rfc3339());
        return Ok(());
    }
    admin
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await?;
    Ok(())
}
