//! The ClickHouse I/O: inserts with retries while the server is away or refuses service as a
//! whole, bisection to find the rows it rejects, and the query that tells which rows are
//! already stored.

use crate::encoder::EventRow;
use audit_runtime::breaker::Circuit;
use audit_runtime::ops::Health;
use audit_runtime::retry::{ErrorClass, GaveUp, RetryPolicy};
use clickhouse::Client;
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
    retry: RetryPolicy,
    health: Health,
    /// Told when inserts fail for the table's schema (see [`SCHEMA_ERRORS`]).
    circuit: Option<Circuit>,
}

/// A failed request, with what it means.
#[derive(Debug)]
struct Failure {
    class: ErrorClass,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How long one request may take before it counts as a failure of the server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Server error codes that are about the rows of an insert (their values, types or
/// constraints): bisection finds the rows and they are dead-lettered. Every other server error
/// concerns the server as a whole (read-only, disk full, too many parts, memory, a missing
/// table, overload) and is waited out: rows are never dead-lettered for those.
const ROW_ERRORS: &[u32] = &[
    6,    // CANNOT_PARSE_TEXT
    26,   // CANNOT_PARSE_QUOTED_STRING
    27,   // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,   // ATTEMPT_TO_READ_AFTER_EOF
    33,   // CANNOT_READ_ALL_DATA
    38,   // CANNOT_PARSE_DATE
    41,   // CANNOT_PARSE_DATETIME
    53,   // TYPE_MISMATCH
    69,   // ARGUMENT_OUT_OF_BOUND
    70,   // CANNOT_CONVERT_TYPE
    72,   // CANNOT_PARSE_NUMBER
    117,  // INCORRECT_DATA
    128,  // TOO_LARGE_ARRAY_SIZE
    131,  // TOO_LARGE_STRING_SIZE
    190,  // SIZES_OF_ARRAYS_DONT_MATCH
    321,  // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    395,  // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    469,  // VIOLATED_CONSTRAINT
    1001, // STD_EXCEPTION (bad UTF-8 and the like, raised while reading a row)
];

/// Server-wide errors that mean the table no longer fits the rows (a column the sink writes
/// was dropped or renamed, a view reads one that is gone): every insert fails alike. They are
/// waited out like the others — never dead-lettered — and reported as the circuit breaker
/// being open, so one alert covers every "ClickHouse refuses all rows" case.
const SCHEMA_ERRORS: &[u32] = &[
    8,  // THERE_IS_NO_COLUMN
    10, // NOT_FOUND_COLUMN_IN_BLOCK
    16, // NO_SUCH_COLUMN_IN_TABLE
    20, // NUMBER_OF_COLUMNS_DOESNT_MATCH
    47, // UNKNOWN_IDENTIFIER
];

/// Errors a retry cannot cure: credentials and permissions.
const FATAL_ERRORS: &[u32] = &[
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
];

/// What a ClickHouse error means for the sink.
pub fn classify_code(code: Option<u32>) -> ErrorClass {
    match code {
        Some(c) if ROW_ERRORS.contains(&c) => ErrorClass::PerRecord,
        Some(c) if FATAL_ERRORS.contains(&c) => ErrorClass::Fatal,
        _ => ErrorClass::Retryable,
    }
}

/// The name of a server error (`NO_SUCH_COLUMN_IN_TABLE` in "Code: 16. DB::Exception: ...
/// (NO_SUCH_COLUMN_IN_TABLE) (version ...)"): the circuit breaker's reason class, a metric
/// label from the server's closed set of error names. "other" when the message names none.
pub fn error_name(message: &str) -> &str {
    message
        .match_indices('(')
        .filter_map(|(at, _)| {
            let rest = &message[at + 1..];
            let name = &rest[..rest.find(')')?];
            let is_name = name.len() >= 3
                && name.len() <= 48
                && name.bytes().any(|b| b.is_ascii_uppercase())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            is_name.then_some(name)
        })
        .next_back()
        .unwrap_or(audit_runtime::labels::OTHER)
}

/// The server's error code in a message ("Code: 16. DB::Exception: ...").
fn error_code(message: &str) -> Option<u32> {
    message
        .split("Code: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|c| c.parse::<u32>().ok())
}

fn classify(e: clickhouse::error::Error) -> Failure {
    use clickhouse::error::Error as E;
    let message = e.to_string();
    let class = match e {
        E::Network(_) | E::TimedOut => ErrorClass::Retryable,
        // Not from the server: the client could not use what it got (e.g. a schema this build
        // does not understand). Retrying would not help, dropping rows would lose them.
        _ if !message.contains("Code: ") => ErrorClass::Fatal,
        _ => classify_code(error_code(&message)),
    };
    Failure { class, message }
}

impl Store {
    pub fn new(client: Client, max_backoff: Duration, health: Health) -> Self {
        Self {
            client,
            retry: RetryPolicy {
                initial: Duration::from_millis(100),
                max_backoff,
                max_attempts: None,
            },
            health,
            circuit: None,
        }
    }

    /// Reports inserts refused for the table's schema as the circuit breaker being open.
    pub fn with_circuit(mut self, circuit: Circuit) -> Self {
        self.circuit = Some(circuit);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `op` until it succeeds or fails for a reason other than the server being away
    /// (the runtime's retry policy: backoff with jitter, no attempt limit). While it waits the
    /// consumer does not fetch more, so memory stays bounded however long the outage.
    /// `Ok(Err(reason))` is a row error.
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        mut op: F,
    ) -> Result<Result<T, String>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, clickhouse::error::Error>>,
    {
        let result = self
            .retry
            .run(
                what,
                |f: &Failure| f.class,
                |f| {
                    self.health
                        .set("clickhouse", false, format!("retrying: {}", f.message));
                    metrics::counter!("audit_clickhouse_retries_total").increment(1);
                    if let Some(circuit) = &self.circuit {
                        if error_code(&f.message).is_some_and(|c| SCHEMA_ERRORS.contains(&c)) {
                            circuit.trip(
                                error_name(&f.message),
                                &f.message,
                                "every insert (the table no longer fits the rows; retried until it does)",
                            );
                        }
                    }
                },
                || {
                    let attempt = op();
                    async move {
                        match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
                            Ok(result) => result.map_err(classify),
                            Err(_) => Err(Failure {
                                class: ErrorClass::Retryable,
                                message: format!("no answer within {REQUEST_TIMEOUT:?}"),
                            }),
                        }
                    }
                },
            )
            .await;
        match result {
            Ok(v) => {
                self.health.set("clickhouse", true, "ok");
                Ok(Ok(v))
            }
            Err(GaveUp::PerRecord(f)) => Ok(Err(f.message)),
            Err(GaveUp::Fatal(f) | GaveUp::Exhausted { last: f, .. }) => {
                self.health.set("clickhouse", false, f.message.clone());
                Err(StoreError::Fatal(f.message))
            }
        }
    }

    /// Stores chain skips (see [`crate::encoder::ChainSkip`]); a skip stored twice is harmless.
    pub async fn insert_skips(
        &self,
        skips: &[crate::encoder::ChainSkip],
    ) -> Result<(), StoreError> {
        if skips.is_empty() {
            return Ok(());
        }
        let result = self
            .retrying("storing chain skips", || async {
                let mut insert = self
                    .client
                    .insert::<crate::encoder::ChainSkip>("chain_skips")
                    .await?;
                for skip in skips {
                    insert.write(skip).await?;
                }
                insert.end().await
            })
            .await?;
        result.map_err(StoreError::Fatal)
    }

    /// The event id stored at each (Kafka partition, offset) of `topic` in the offset range.
    pub async fn stored_at(
        &self,
        topic: &str,
        partitions: &[i32],
        min_offset: i64,
        max_offset: i64,
    ) -> Result<HashMap<(i32, i64), uuid::Uuid>, StoreError> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct At {
            source_partition: i32,
            source_offset: i64,
            #[serde(with = "clickhouse::serde::uuid")]
            event_id: uuid::Uuid,
        }
        let rows: Result<Vec<At>, String> = self
            .retrying("reading stored offsets", || {
                self.client
                    .query(
                        "SELECT source_partition, source_offset, event_id FROM events \
                         WHERE source_topic = ? AND source_partition IN ? \
                         AND source_offset BETWEEN ? AND ?",
                    )
                    .bind(topic)
                    .bind(partitions)
                    .bind(min_offset)
                    .bind(max_offset)
                    .fetch_all()
            })
            .await?;
        let rows = rows.map_err(StoreError::Fatal)?;
        Ok(rows
            .into_iter()
            .map(|r| ((r.source_partition, r.source_offset), r.event_id))
            .collect())
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
        let token = crate::encoder::dedup_token(rows);
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

    /// Inserts `rows` (one insert group, in offset order) up to the first row the server
    /// rejects, found by bisection: returns its index and the server's error, with every row
    /// before it inserted and none after it, so the caller can judge the refusal (a dead
    /// letter, or the circuit breaker's cause) before anything after it goes in.
    pub async fn insert_until_rejected(
        &self,
        rows: &[EventRow],
    ) -> Result<Option<(usize, String)>, StoreError> {
        let mut start = 0;
        // When set, rows[start..hi] hold a row the server rejected.
        let mut bad_until: Option<usize> = None;
        while start < rows.len() {
            let end = match bad_until {
                None => rows.len(),
                Some(hi) => start + ((hi - start) / 2).max(1),
            };
            let part = &rows[start..end];
            let started = Instant::now();
            match self.retrying("insert", || self.insert_once(part)).await? {
                Ok(()) => {
                    metrics::counter!("audit_clickhouse_rows_inserted_total")
                        .increment(part.len() as u64);
                    metrics::histogram!("audit_clickhouse_insert_seconds")
                        .record(started.elapsed().as_secs_f64());
                    start = end;
                    if bad_until == Some(start) {
                        // The part that failed went in piece by piece after all.
                        bad_until = None;
                    }
                }
                Err(error) if part.len() == 1 => return Ok(Some((start, error))),
                Err(_) => bad_until = Some(end),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_taken_from_the_server_message() {
        assert_eq!(
            error_name("Code: 16. DB::Exception: No such column message in table db.events (4f1c-uuid). (NO_SUCH_COLUMN_IN_TABLE) (version 26.9.1.1)"),
            "NO_SUCH_COLUMN_IN_TABLE"
        );
        assert_eq!(
            error_name("Code: 469. DB::Exception: Constraint `c` for table db.events (x) is violated at row 1. Expression: (event_type != 'poison'). (VIOLATED_CONSTRAINT)"),
            "VIOLATED_CONSTRAINT"
        );
        assert_eq!(error_name("connection reset (os error 104)"), "other");
    }

    #[test]
    fn only_row_errors_dead_letter_and_server_wide_ones_are_waited_out() {
        // READONLY, TABLE_IS_READ_ONLY, NOT_ENOUGH_SPACE, MEMORY_LIMIT_EXCEEDED, TOO_MANY_PARTS,
        // UNKNOWN_TABLE, UNKNOWN_DATABASE, TIMEOUT_EXCEEDED, NO_SUCH_COLUMN_IN_TABLE (a column
        // dropped under the sink), UNKNOWN_IDENTIFIER, no code at all.
        for code in [164, 242, 243, 241, 252, 60, 81, 159, 16, 47] {
            assert_eq!(classify_code(Some(code)), ErrorClass::Retryable, "{code}");
        }
        assert_eq!(classify_code(None), ErrorClass::Retryable);
        // VIOLATED_CONSTRAINT, TYPE_MISMATCH, CANNOT_PARSE_TEXT.
        for code in [469, 53, 6] {
            assert_eq!(classify_code(Some(code)), ErrorClass::PerRecord, "{code}");
        }
        // AUTHENTICATION_FAILED, ACCESS_DENIED.
        for code in [516, 497] {
            assert_eq!(classify_code(Some(code)), ErrorClass::Fatal, "{code}");
        }
    }
}
