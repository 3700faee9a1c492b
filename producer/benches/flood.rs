//! The producer's memory under abuse, against the running local stack (`dev/stack up`):
//!
//! ```sh
//! cargo bench -p audit-producer --bench flood
//! ```
//!
//! Starts the release `audit-producer serve` with its shipped defaults and runs, one phase
//! after another (`BENCH_SECONDS` each, default 15):
//!
//! 1. one browser token posting near-limit bodies of many small values from 64 connections;
//! 2. 32 browser tokens (32 users) doing the same from 8 connections each: every share full,
//!    so the global budget is what holds;
//! 3. 1,100 idle connections plus 256 slow bodies that trickle a byte a second;
//!
//! while a service token posts one small event every 100 ms. Prints, per phase, the answers
//! the abusers got, the other sender's p50/p99/max latency and the producer's peak resident
//! memory (VmRSS sampled every 50 ms), then VmHWM over the whole run.

use audit_tests::bench::{heavy_body, quantile};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "flood-bench-token-0123456789";
const SECRET: &str = "flood-bench-browser-secret-0123456789";

fn browser_token(user: &str) -> anyhow::Result<String> {
    audit_tests::bench::browser_token("k1", SECRET, user, Duration::from_secs(3600))
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

type Tally = BTreeMap<String, usize>;

/// Posts `body` with `token` in a loop until `until`, tallying the answers.
async fn hammer(
    http: reqwest::Client,
    url: String,
    token: String,
    body: Arc<String>,
    until: Instant,
) -> Tally {
    let mut tally = Tally::new();
    while Instant::now() < until {
        let r = http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("origin", "https://app.example.com")
            .body(body.as_str().to_owned())
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let key = match r {
            Ok(r) => r.status().as_u16().to_string(),
            Err(_) => "error".into(),
        };
        let refused = key == "429" || key == "503";
        *tally.entry(key).or_default() += 1;
        if refused {
            // A client that backs off a little, as Retry-After asks, keeps its pressure up.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tally
}

/// The well-behaved sender's latencies until `until`, in ms (failures as infinity).
async fn other_sender(url: String, until: Instant) -> Vec<f64> {
    let http = reqwest::Client::new();
    let mut latencies = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        let t = Instant::now();
        let ok = http
            .post(&url)
            .bearer_auth(TOKEN)
            .json(&json!({"event_type": "query-created", "source": "SERVER", "session_id": format!("s-{n}"), "message": "fine"}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 202);
        latencies.push(if ok {
            t.elapsed().as_secs_f64() * 1e3
        } else {
            f64::INFINITY
        });
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies
}

fn merge(into: &mut Tally, from: Tally) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

fn report(name: &str, tally: &Tally, mut latencies: Vec<f64>, peak_kib: u64) {
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| quantile(&latencies, p);
    let failed = latencies.iter().filter(|l| l.is_infinite()).count();
    println!(
        "{name}: abusers got {tally:?}; other sender {} events ({failed} failed), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; producer peak RSS {:.1} MiB",
        latencies.len(),
        q(0.5),
        q(0.99),
        latencies.last().copied().unwrap_or_default(),
        peak_kib as f64 / 1024.0
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = audit_tests::env_count("BENCH_SECONDS", 15) as u64;
    let topics = audit_tests::unique_topics(3);
    audit_tests::create_topics(&topics).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], audit_tests::pipeline::free_port()?));
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("producer.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"{addr}\"\n\n[[tokens]]\ntoken = \"{TOKEN}\"\nservice = \"backend\"\n\n[browser]\nservice = \"web\"\norigins = [\"https://app.example.com\"]\n\n[[browser.keys]]\nid = \"k1\"\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
        ),
    )?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-producer"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("AUDIT__KAFKA__BROKERS", audit_tests::kafka_brokers())
        .env("AUDIT__LOG__LEVEL", "error")
        .envs(audit_tests::topics_env(&topics))
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let url = format!("http://{addr}/v1/events");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the producer never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = Arc::new(heavy_body());
    println!(
        "release audit-producer, shipped defaults; bodies of {} KiB; {seconds} s a phase; idle RSS {:.1} MiB",
        body.len() / 1024,
        rss_kib(pid, "VmRSS:") as f64 / 1024.0
    );
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    for (name, users, per_user) in [
        ("one browser token, 64 connections", 1usize, 64usize),
        ("32 browser tokens, 8 connections each", 32, 8),
    ] {
        peak.store(0, Ordering::Relaxed);
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for u in 0..users {
            let token = browser_token(&format!("mallory-{u}"))?;
            for _ in 0..per_user {
                tasks.push(tokio::spawn(hammer(
                    reqwest::Client::new(),
                    url.clone(),
                    token.clone(),
                    body.clone(),
                    until,
                )));
            }
        }
        let latencies = other_sender(url.clone(), until).await;
        let mut tally = Tally::new();
        for t in tasks {
            merge(&mut tally, t.await?);
        }
        report(name, &tally, latencies, peak.load(Ordering::Relaxed));
    }

    // Idle connections and slow bodies: each slow body holds a request slot and its declared
    // length of the budget until the body timeout.
    peak.store(0, Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(seconds);
    let token = browser_token("slowpoke")?;
    let mut tasks = Vec::new();
    for i in 0..1_356usize {
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < until {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                *tally.entry(if i < 1_100 { "idle opened" } else { "slow opened" }.into()).or_default() += 1;
                if i >= 1_100 {
                    let head = format!("POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nOrigin: https://app.example.com\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n[");
                    if s.write_all(head.as_bytes()).await.is_err() {
                        continue;
                    }
                    while Instant::now() < until && s.write_all(b" ").await.is_ok() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                } else {
                    let mut buf = [0u8; 64];
                    let left = until.saturating_duration_since(Instant::now());
                    let _ = tokio::time::timeout(left, tokio::io::AsyncReadExt::read(&mut s, &mut buf)).await;
                }
            }
            tally
        }));
    }
    let latencies = other_sender(url.clone(), until).await;
    let mut tally = Tally::new();
    for t in tasks {
        merge(&mut tally, t.await?);
    }
    report(
        "1,100 idle connections + 256 slow bodies",
        &tally,
        latencies,
        peak.load(Ordering::Relaxed),
    );

    sampler.abort();
    println!(
        "producer VmHWM over the whole run: {:.1} MiB",
        rss_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
