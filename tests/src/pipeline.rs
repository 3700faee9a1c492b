//! The four services as real processes, wired to one run's own topics, ClickHouse database and
//! CloudWatch log group, so end-to-end tests and `dev/bench` run in parallel with everything else.
//!
//! The binaries are the workspace's own (`target/<profile>/audit-*`), built by `cargo test
//! --workspace` before any test runs; a missing one fails with the command that builds it.

use crate::{clickhouse_url, cloudwatch_url, unique, unique_topics};
use anyhow::{bail, Context, Result};
use audit_runtime::{KafkaConfig, TopicsConfig};
use audit_schemas::{AuditRule, AvroRecord, DirectoryEntry, DirectoryRecord};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One of the pipeline's four long-running services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Producer,
    Enricher,
    ClickHouseSink,
    CloudWatchSink,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Producer,
        Stage::Enricher,
        Stage::ClickHouseSink,
        Stage::CloudWatchSink,
    ];

    pub fn binary(self) -> &'static str {
        match self {
            Stage::Producer => "audit-producer",
            Stage::Enricher => "audit-enricher",
            Stage::ClickHouseSink => "audit-sink-clickhouse",
            Stage::CloudWatchSink => "audit-sink-cloudwatch",
        }
    }
}

/// The path of a workspace binary next to the running test or bench executable.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is not built: run `cargo build --workspace --bins` (or `cargo test --workspace`)",
            path.display()
        );
    }
    Ok(path)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux everywhere in practice).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A free TCP port on 127.0.0.1 (released before returning; good enough for tests).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running service; killed (SIGKILL) when dropped so a failing test leaves nothing behind.
pub struct Service {
    pub stage: Stage,
    /// Where it serves `/metrics` and `/healthz`.
    pub ops: SocketAddr,
    child: Child,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9: no shutdown hook runs, nothing is flushed.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the graceful shutdown (flushes in-flight work).
    pub fn stop(&mut self) -> Result<()> {
        signal(self.pid(), "TERM")?;
        self.child.wait()?;
        Ok(())
    }

    /// The peak resident memory (VmHWM) in KiB, while the process lives.
    pub fn peak_memory_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// CPU time (user + system) the process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the command name (which may hold spaces) start at state, field 3.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / clock_ticks_per_second())
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        metrics_text(self.ops).await
    }

    /// The sum of every series of `name` in `/metrics` (0 when absent).
    pub async fn metric_sum(&self, name: &str) -> Result<f64> {
        metric_sum(self.ops, name).await
    }

    /// Waits until this consumer holds at least one partition of its group.
    pub async fn wait_assigned(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self
            .metric_sum("audit_consumer_assigned_partitions")
            .await?
            < 1.0
        {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} got no partition within {timeout:?}",
                    self.stage.binary()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let url = format!("http://{}/healthz", self.ops);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited during start with {status}", self.stage.binary());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} not healthy on {url} after {timeout:?}",
                    self.stage.binary()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The Prometheus text a service serves on `ops`.
pub async fn metrics_text(ops: SocketAddr) -> Result<String> {
    Ok(reqwest::get(format!("http://{ops}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The sum of every series of `name` a service serves on `ops` (0 when absent).
pub async fn metric_sum(ops: SocketAddr, name: &str) -> Result<f64> {
    let text = metrics_text(ops).await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Waits until the metric `name` on `ops` sums to `want`: how a test knows that a service has
/// applied something it can only observe from outside (a rule, a directory entry).
pub async fn wait_metric(ops: SocketAddr, name: &str, want: f64, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = metric_sum(ops, name).await.ok();
        if got == Some(want) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{name} on {ops} is {got:?}, not {want}, after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `kill -<sig>` to a process.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()?
        .success();
    if !ok {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// One run's wiring: topics, database, log group, the producer's token and port.
pub struct Pipeline {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub database: String,
    pub log_group: String,
    pub token: String,
    /// The producer's HTTP address (ingest API, `/metrics`, `/healthz`).
    pub http: SocketAddr,
    /// `[cloudwatch.streams]` of this run.
    pub streams: Vec<(String, String)>,
    /// `browser.origins` of the producer: pages there may post with a browser token.
    pub browser_origins: Vec<String>,
    /// The HS256 secret of the producer's browser-token key `e2e` (as the platform holds it).
    pub browser_secret: String,
    /// Settings (`AUDIT__...` variables) every service of this run gets last, over the harness's.
    pub extra_env: Vec<(String, String)>,
    run: String,
    dir: PathBuf,
    http_client: reqwest::Client,
}

/// The enricher's digest key in every run (base64 of a 32-byte Ed25519 seed); its public key is
/// [`chain_public_key`].
pub const CHAIN_SEED: &str = "ZTJlLWNoYWluLXNlZWQtMzItYnl0ZXMtbG9uZy0wMDA=";

/// The public key of [`CHAIN_SEED`], as `auditctl verify` is configured with it.
pub fn chain_public_key() -> String {
    audit_schemas::chain::SigningKey::from_seed_b64("e2e", CHAIN_SEED)
        .map(|k| k.public_b64())
        .unwrap_or_default()
}

impl Pipeline {
    /// Fresh topics on `kafka` with `partitions` each, and names for everything else.
    pub async fn create(kafka: KafkaConfig, partitions: i32) -> Result<Self> {
        let topics = unique_topics(partitions);
        let admin = audit_runtime::kafka::admin(&kafka, "audit-tests")?;
        audit_runtime::kafka::create_topics(&admin, &topics)
            .await
            .with_context(|| format!("creating topics on {}", kafka.brokers))?;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("audit-e2e-{run}"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            kafka,
            topics,
            database: format!("audit_e2e_{run}"),
            log_group: format!("/audit/e2e-{run}"),
            token: format!("e2e-token-{run}"),
            http: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            streams: vec![
                ("query-*".into(), "queries".into()),
                ("log".into(), "logs".into()),
                // Replaces the built-in "error" mapping (settings maps merge with defaults).
                ("error".into(), "errors".into()),
            ],
            browser_origins: Vec::new(),
            extra_env: Vec::new(),
            browser_secret: format!("e2e-browser-secret-{run}"),
            run,
            dir,
            http_client: reqwest::Client::new(),
        })
    }

    /// Starts one instance of `stage` and waits until it answers `/healthz`.
    pub async fn start(&self, stage: Stage) -> Result<Service> {
        self.start_with_log(stage, None).await
    }

    /// [`Self::start`] with the service's log (stderr) written to `log` at `level`, for tests
    /// that read what a service logged.
    pub async fn start_logged(&self, stage: Stage, log: &Path, level: &str) -> Result<Service> {
        self.start_with_log(stage, Some((log, level))).await
    }

    /// `audit-producer <args>` wired to this run's broker and topics (for `send` and `tail`),
    /// its log written to `log` at `level`.
    pub fn producer_command(&self, args: &[&str], log: &Path, level: &str) -> Result<Command> {
        let mut cmd = Command::new(binary(Stage::Producer.binary())?);
        cmd.args(args)
            .env("AUDIT__KAFKA__BROKERS", &self.kafka.brokers)
            .env("AUDIT__LOG__LEVEL", level)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        cmd.envs(crate::topics_env(&self.topics));
        Ok(cmd)
    }

    async fn start_with_log(&self, stage: Stage, log: Option<(&Path, &str)>) -> Result<Service> {
        let ops = match stage {
            Stage::Producer => self.http,
            _ => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        let mut cmd = Command::new(binary(stage.binary())?);
        cmd.env("AUDIT__KAFKA__BROKERS", &self.kafka.brokers)
            .env(
                "AUDIT__KAFKA__IDEMPOTENCE",
                self.kafka.idempotence.to_string(),
            )
            .env(
                "AUDIT__LOG__LEVEL",
                std::env::var("E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some((path, level)) = log {
            cmd.env("AUDIT__LOG__LEVEL", level)
                .stderr(std::fs::File::create(path)?);
        }
        cmd.envs(crate::topics_env(&self.topics));
        match stage {
            Stage::Producer => {
                let config = self.dir.join("producer.toml");
                let origins = self
                    .browser_origins
                    .iter()
                    .map(|o| format!("{o:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                std::fs::write(
                    &config,
                    format!(
                        "[http]\nlisten = \"{}\"\n\n[[tokens]]\ntoken = \"{}\"\nservice = \"e2e\"\nsources = [\"CLIENT\", \"SERVER\"]\nscopes = [\"events\", \"directory\"]\n\n[browser]\nservice = \"web\"\norigins = [{origins}]\n\n[[browser.keys]]\nid = \"e2e\"\nalgorithm = \"HS256\"\nsecret = \"{}\"\n",
                        self.http, self.token, self.browser_secret
                    ),
                )?;
                cmd.arg("--config").arg(config).arg("serve");
            }
            Stage::Enricher => {
                cmd.arg("run")
                    .env("AUDIT__OPS__LISTEN", ops.to_string())
                    .env(
                        "AUDIT__ENRICHER__GROUP_ID",
                        format!("e2e-enricher-{}", self.run),
                    )
                    .env("AUDIT__ENRICHER__SESSION_WAIT_MS", "1000")
                    .env("AUDIT__CHAIN__SIGNING_KEY", CHAIN_SEED)
                    .env("AUDIT__CHAIN__KEY_ID", "e2e");
            }
            Stage::ClickHouseSink => {
                cmd.arg("run")
                    .env("AUDIT__OPS__LISTEN", ops.to_string())
                    .env("AUDIT__CLICKHOUSE__URL", clickhouse_url())
                    .env("AUDIT__CLICKHOUSE__DATABASE", &self.database)
                    .env(
                        "AUDIT__CLICKHOUSE__GROUP_ID",
                        format!("e2e-ch-{}", self.run),
                    )
                    .env("AUDIT__CLICKHOUSE__BATCH_MAX_WAIT_MS", "200");
            }
            Stage::CloudWatchSink => {
                let config = self.dir.join("cloudwatch.toml");
                let mut streams = String::from("[cloudwatch.streams]\n");
                for (pattern, stream) in &self.streams {
                    streams.push_str(&format!("\"{pattern}\" = \"{stream}\"\n"));
                }
                std::fs::write(
                    &config,
                    format!(
                        "[cloudwatch]\nlog_group = \"{}\"\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\ndefault_stream = \"other\"\nbatch_max_wait_ms = 200\nmax_attempts = 40\n{streams}",
                        self.log_group,
                        cloudwatch_url()
                    ),
                )?;
                cmd.arg("--config")
                    .arg(config)
                    .arg("run")
                    .env("AUDIT__OPS__LISTEN", ops.to_string())
                    .env(
                        "AUDIT__CLOUDWATCH__GROUP_ID",
                        format!("e2e-cw-{}", self.run),
                    )
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test");
            }
        }
        cmd.envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", stage.binary()))?;
        let mut service = Service { stage, ops, child };
        service.wait_healthy(Duration::from_secs(60)).await?;
        Ok(service)
    }

    /// The CloudWatch stream an event type goes to under this run's mapping.
    pub fn stream_of(&self, event_type: &str) -> &str {
        let exact = self.streams.iter().find(|(p, _)| p == event_type);
        let glob = self.streams.iter().find(|(p, _)| {
            p.strip_suffix('*')
                .is_some_and(|prefix| event_type.starts_with(prefix))
        });
        exact.or(glob).map_or("other", |(_, s)| s.as_str())
    }

    fn kafka_producer(&self) -> Result<FutureProducer> {
        Ok(audit_runtime::kafka::producer(&self.kafka, "audit-tests")?)
    }

    /// Publishes directory entries: sessions to this run's sessions topic, users and groups to
    /// its directory topic.
    pub async fn put_directory(&self, entries: Vec<DirectoryEntry>) -> Result<()> {
        let p = self.kafka_producer()?;
        for entry in entries {
            let r = DirectoryRecord { entry };
            let key = r.key();
            let topic = self.topics.for_directory(key.topic());
            send(&p, topic, &key.record_key(), &r.encode()?).await?;
        }
        Ok(())
    }

    /// A browser token for `user` and `session`, minted as the platform's server would.
    pub fn browser_token(&self, user: &str, session: &str) -> Result<String> {
        use audit_client::browser_token::{mint, BrowserUser, SigningKey, DEFAULT_AUDIENCE};
        let key = SigningKey::Hs256 {
            kid: "e2e".into(),
            secret: self.browser_secret.clone().into_bytes(),
        };
        let user = BrowserUser {
            user_id: user.into(),
            session_id: session.into(),
            tenant: Some("e2e-tenant".into()),
            login: None,
        };
        Ok(mint(
            &key,
            &user,
            DEFAULT_AUDIENCE,
            Duration::from_secs(600),
        )?)
    }

    /// Publishes a rule to this run's rules topic.
    pub async fn put_rule(&self, rule: &AuditRule) -> Result<()> {
        let p = self.kafka_producer()?;
        send(&p, &self.topics.rules.name, &rule.id, &rule.encode()?).await
    }

    /// POSTs a batch to the ingest API. Errors (connection refused, 5xx) are returned, not
    /// retried: the caller decides, and must resend the same event ids.
    pub async fn post(&self, events: &[serde_json::Value]) -> Result<()> {
        let response = self
            .http_client
            .post(format!("http://{}/v1/events", self.http))
            .bearer_auth(&self.token)
            .json(events)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = response.status();
        if status.as_u16() != 202 {
            bail!("ingest answered {status}: {}", response.text().await?);
        }
        Ok(())
    }

    /// Runs `auditctl` against this run's broker and topics; `env` adds settings
    /// (`AUDIT__OPERATOR__NAME`, `AUDIT__CLICKHOUSE__...`).
    pub fn auditctl(&self, args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
        Ok(Command::new(binary("auditctl")?)
            .args(args)
            .env("AUDIT__KAFKA__BROKERS", &self.kafka.brokers)
            .envs(crate::topics_env(&self.topics))
            .envs(env.iter().copied())
            .output()?)
    }

    /// `auditctl verify` of this run's ClickHouse database (and CloudWatch log group) for
    /// digests signed between `from` and `to` (RFC 3339): whether it passed, and what it said.
    pub fn verify(&self, from: &str, to: &str, cloudwatch: bool) -> Result<(bool, String)> {
        self.verify_with(from, to, cloudwatch, &[])
    }

    /// [`Pipeline::verify`] with further arguments (`--grace-seconds 1`).
    pub fn verify_with(
        &self,
        from: &str,
        to: &str,
        cloudwatch: bool,
        extra: &[&str],
    ) -> Result<(bool, String)> {
        let key = format!("e2e={}", chain_public_key());
        let mut args = vec!["verify", "--from", from, "--to", to, "--public-key", &key];
        args.extend(extra);
        if cloudwatch {
            args.extend(["--cloudwatch-group", &self.log_group]);
        }
        let out = self.auditctl(
            &args,
            &[
                ("AUDIT__CLICKHOUSE__URL", &clickhouse_url()),
                ("AUDIT__CLICKHOUSE__DATABASE", &self.database),
                ("AUDIT__CLOUDWATCH__ENDPOINT_URL", &cloudwatch_url()),
                ("AUDIT__CLOUDWATCH__REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
            ],
        )?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Waits until the enricher's signed digests cover at least `links` links of this run.
    pub async fn wait_signed(&self, links: u64, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let signed: u64 = self
                .clickhouse()
                .query("SELECT toUInt64(sum(m)) FROM (SELECT max(seq) + 1 AS m FROM chain_digests GROUP BY raw_partition, epoch)")
                .fetch_one()
                .await
                .unwrap_or(0);
            if signed >= links {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("signed digests cover {signed} links, not {links}, after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A request with this run's token to the ingest service (directory writes, SCIM): status
    /// and JSON body (`null` when empty).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let mut request = self
            .http_client
            .request(method, format!("http://{}{path}", self.http))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or_default()))
    }

    /// [`Self::post`] until accepted, as a client following the API's advice would.
    pub async fn post_until_accepted(
        &self,
        events: &[serde_json::Value],
        timeout: Duration,
    ) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.post(events).await {
                Ok(()) => return Ok(attempts),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(e.context(format!("not accepted within {timeout:?}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    pub fn clickhouse(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(clickhouse_url())
            .with_database(&self.database)
    }

    /// ClickHouse as a copy taken at `copy_us` would hold it: every row enriched or signed
    /// after that moment deleted, the derived tables' rows of those events with them.
    pub async fn roll_back_clickhouse_to(&self, copy_us: i64) -> Result<()> {
        let ch = self.clickhouse();
        for (table, column) in [
            ("events", "enriched_at"),
            ("chain_digests", "signed_at"),
            ("chain_checkpoints", "signed_at"),
        ] {
            ch.query(&format!("ALTER TABLE {table} DELETE WHERE {column} > fromUnixTimestamp64Micro(?) SETTINGS mutations_sync = 2"))
                .bind(copy_us)
                .execute()
                .await?;
        }
        for (table, column) in [
            ("entity_activity", "event_id"),
            ("entity_links", "event_id"),
            ("rule_drops", "summary_id"),
        ] {
            ch.query(&format!("ALTER TABLE {table} DELETE WHERE {column} NOT IN (SELECT event_id FROM events) SETTINGS mutations_sync = 2"))
                .execute()
                .await?;
        }
        Ok(())
    }

    /// Rows in `events` and distinct event ids among them (0, 0 before the sink created it),
    /// leaving out the enricher's rule-drop summaries (see [`Pipeline::rule_drops`]) and chain
    /// digests.
    pub async fn clickhouse_counts(&self) -> (u64, u64) {
        self.clickhouse()
            .query("SELECT count(), uniqExact(event_id) FROM events WHERE event_type NOT IN ('audit.rule-drops', 'audit.chain-digest', 'audit.chain-checkpoint')")
            .fetch_one::<(u64, u64)>()
            .await
            .unwrap_or((0, 0))
    }

    /// Events dropped by rules, per rule, as the drop summaries in `rule_drops` count them (each
    /// raw record once), polled until they reach `total` or `timeout` passes.
    pub async fn rule_drops(&self, total: u64, timeout: Duration) -> BTreeMap<String, u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got: BTreeMap<String, u64> = self
                .clickhouse()
                .query(
                    "SELECT rule, count() FROM (SELECT raw_partition, raw_offset, any(rule) AS rule
                     FROM rule_drops ARRAY JOIN raw_offsets AS raw_offset
                     GROUP BY raw_partition, raw_offset) GROUP BY rule",
                )
                .fetch_all::<(String, u64)>()
                .await
                .unwrap_or_default()
                .into_iter()
                .collect();
            if got.values().sum::<u64>() >= total || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Polls ClickHouse until `events` holds at least `rows` rows or `timeout` passes, then
    /// returns (rows, distinct event ids).
    pub async fn wait_for_rows(&self, rows: u64, timeout: Duration) -> (u64, u64) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.clickhouse_counts().await;
            if got.0 >= rows || tokio::time::Instant::now() > deadline {
                // A moment more, so duplicates arriving late are seen too.
                tokio::time::sleep(Duration::from_secs(1)).await;
                return self.clickhouse_counts().await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn send(p: &FutureProducer, topic: &str, key: &str, value: &[u8]) -> Result<()> {
    p.send(
        FutureRecord::to(topic).key(key).payload(value),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    Ok(())
}

/// A Tansu broker of this test's own on sqlite storage, to restart without disturbing the
/// shared stack. Killed when dropped.
pub struct PrivateBroker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateBroker {
    pub async fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(unique("tansu"));
        std::fs::create_dir_all(&dir)?;
        let mut broker = Self {
            port: free_port()?,
            dir,
            child: None,
        };
        broker.restart().await?;
        Ok(broker)
    }

    /// Settings for this broker. Tansu 0.6 forgets producer ids when it restarts, after which a
    /// long-lived idempotent producer fails every record; so producers here are not idempotent.
    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: format!("127.0.0.1:{}", self.port),
            idempotence: false,
            ..KafkaConfig::default()
        }
    }

    /// Stops the broker gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts (again) on the same port and sqlite file, and waits until it accepts connections.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let tansu = which_tansu().context("tansu is not installed: run `dev/stack install`")?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("private Tansu did not listen on {} within 30 s", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which_tansu() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.exists())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = PathBuf::from(home).join(".cargo/bin/tansu");
        p.exists().then_some(p)
    })
}
