//! The ClickHouse I/O: inserts with retries while the server is unreachable, bisection to find
//! the rows it rejects, and the query that tells which rows are already stored.

use crate::encoder::EventRow;
use audit_runtime::ops::Health;
use clickhouse::Client;
use rand::Rng;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not fixable by retrying or by leaving rows out: wrong settings or permissions.
    #[error("ClickHouse refused the sink ({0}); check clickhouse.url, database and credentials")]
    Fatal(String),
}

pub struct Store {
    client: Client,
    max_backoff: Duration,
    health: Health,
}

enum Failure {
    /// The server is unreachable or overloaded: wait and try again.
    Transient(String),
    /// The data: some row of the insert is unacceptable.
    Data(String),
    Fatal(String),
}

/// How long one request may take before it counts as a failure of the server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn classify(e: clickhouse::error::Error) -> Failure {
    use clickhouse::error::Error as E;
    let text = e.to_string();
    match e {
        E::Network(_) | E::TimedOut => Failure::Transient(text),
        // Not from the server: the client could not use what it got (e.g. a schema this build
        // does not understand). Retrying would not help, dropping rows would lose them.
        _ if !text.contains("Code: ") => Failure::Fatal(text),
        _ => {
            let code = text
                .split("Code: ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|c| c.parse::<u32>().ok());
            match code {
                // UNKNOWN_TABLE, UNKNOWN_DATABASE, ACCESS_DENIED, AUTHENTICATION_FAILED
                Some(60 | 81 | 497 | 516) => Failure::Fatal(text),
                // Overload, timeouts, too many parts, memory: the server will recover.
                Some(159 | 164 | 202 | 209 | 210 | 241 | 242 | 252 | 394 | 425) | None => {
                    Failure::Transient(text)
                }
                Some(_) => Failure::Data(text),
            }
        }
    }
}

impl Store {
    pub fn new(client: Client, max_backoff: Duration, health: Health) -> Self {
        Self {
            client,
            max_backoff,
            health,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `op` until it succeeds or fails for a reason other than the server being away,
    /// with exponential backoff and full jitter. While it waits the consumer does not fetch
    /// more, so memory stays bounded however long the outage.
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        mut op: F,
    ) -> Result<Result<T, String>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, clickhouse::error::Error>>,
    {
        let mut delay = Duration::from_millis(100);
        let started = Instant::now();
        loop {
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, op()).await {
                Ok(result) => result.map_err(classify),
                Err(_) => Err(Failure::Transient(format!(
                    "no answer within {REQUEST_TIMEOUT:?}"
                ))),
            };
            match outcome {
                Ok(v) => {
                    self.health.set("clickhouse", true, "ok");
                    return Ok(Ok(v));
                }
                Err(Failure::Data(msg)) => return Ok(Err(msg)),
                Err(Failure::Fatal(msg)) => {
                    self.health.set("clickhouse", false, msg.clone());
                    return Err(StoreError::Fatal(msg));
                }
                Err(Failure::Transient(msg)) => {
                    self.health
                        .set("clickhouse", false, format!("retrying: {msg}"));
                    metrics::counter!("audit_clickhouse_retries_total").increment(1);
                    tracing::warn!(error = %msg, waited_s = started.elapsed().as_secs(), "{what} failed; retrying");
                    let sleep = rand::rng().random_range(delay / 2..=delay);
                    tokio::time::sleep(sleep).await;
                    delay = (delay * 2).min(self.max_backoff);
                }
            }
        }
    }

    /// The highest stored offset per (Kafka partition, month) at or after `min_offset`.
    pub async fn stored_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        min_offset: i64,
    ) -> Result<HashMap<(i32, u32), i64>, StoreError> {
        let rows: Result<Vec<(i32, u32, i64)>, String> = self
            .retrying("reading stored offsets", || {
                self.client
                    .query(
                        "SELECT source_partition, toYYYYMM(timestamp) AS month, max(source_offset) FROM events \
                         WHERE source_topic = ? AND source_partition IN ? AND source_offset >= ? \
                         GROUP BY source_partition, month",
                    )
                    .bind(topic)
                    .bind(partitions)
                    .bind(min_offset)
                    .fetch_all()
            })
            .await?;
        let rows = rows.map_err(StoreError::Fatal)?;
        Ok(rows.into_iter().map(|(p, m, o)| ((p, m), o)).collect())
    }

    /// The event ids stored for a topic partition between two offsets, in offset order: what
    /// [`audit_runtime::replays::RecentIds`] is reloaded with.
    pub async fn stored_ids(
        &self,
        topic: &str,
        partition: i32,
        from_offset: i64,
        before_offset: i64,
    ) -> Result<Vec<uuid::Uuid>, StoreError> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Id {
            #[serde(with = "clickhouse::serde::uuid")]
            event_id: uuid::Uuid,
        }
        let rows: Result<Vec<Id>, String> = self
            .retrying("reading recently stored event ids", || {
                self.client
                    .query(
                        "SELECT event_id FROM events \
                         WHERE source_topic = ? AND source_partition = ? \
                         AND source_offset >= ? AND source_offset < ? ORDER BY source_offset",
                    )
                    .bind(topic)
                    .bind(partition)
                    .bind(from_offset)
                    .bind(before_offset)
                    .fetch_all()
            })
            .await?;
        Ok(rows
            .map_err(StoreError::Fatal)?
            .into_iter()
            .map(|r| r.event_id)
            .collect())
    }

    /// One INSERT. Its deduplication token names exactly the rows it holds (topic partition and
    /// offset range), so when a retry repeats an insert the server did apply — it was only the
    /// answer that got lost — the server drops the repeat.
    async fn insert_once(&self, rows: &[EventRow]) -> Result<(), clickhouse::error::Error> {
        let (first, last) = (&rows[0], &rows[rows.len() - 1]);
        let token = format!(
            "{}:{}:{}:{}:{}",
            first.source_topic,
            first.source_partition,
            crate::encoder::month(first),
            first.source_offset,
            last.source_offset
        );
        let mut insert = self
            .client
            .insert::<EventRow>("events")
            .await?
            .with_setting("insert_deduplication_token", token)
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        for r in rows {
            insert.write(r).await?;
        }
        insert.end().await
    }

    /// Inserts `rows` (one insert group, in offset order). Rows the server rejects are found by
    /// bisection and returned with the server's error; all others are inserted, in order.
    pub async fn insert(&self, rows: &[EventRow]) -> Result<Vec<(EventRow, String)>, StoreError> {
        let mut rejected = Vec::new();
        let mut stack: Vec<&[EventRow]> = vec![rows];
        // Depth-first, left half first, so rows go in offset order.
        while let Some(part) = stack.pop() {
            if part.is_empty() {
                continue;
            }
            let started = Instant::now();
            match self.retrying("insert", || self.insert_once(part)).await? {
                Ok(()) => {
                    metrics::counter!("audit_clickhouse_rows_inserted_total")
                        .increment(part.len() as u64);
                    metrics::histogram!("audit_clickhouse_insert_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                Err(error) if part.len() == 1 => rejected.push((part[0].clone(), error)),
                Err(_) => {
                    let (left, right) = part.split_at(part.len() / 2);
                    stack.push(right);
                    stack.push(left);
                }
            }
        }
        Ok(rejected)
    }
}
