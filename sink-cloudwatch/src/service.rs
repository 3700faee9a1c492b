//! The CloudWatch Logs I/O: PutLogEvents with creation of a missing group or stream, the ids a
//! stream already holds (GetLogEvents), and retries with backoff and jitter for throttling,
//! server errors and an unreachable endpoint.

use crate::batcher::Call;
use aws_sdk_cloudwatchlogs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_cloudwatchlogs::Client;
use rand::Rng;
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("CloudWatch refused the call: {0}")]
    Refused(String),
    #[error("CloudWatch still failing after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
}

/// Pages of up to 10,000 events each that [`CloudWatch::event_ids_between`] reads.
pub const MAX_ID_PAGES: usize = 20;

pub struct CloudWatch {
    client: Client,
    group: String,
    retention_days: Option<i32>,
    max_attempts: u32,
}

/// Events of a call CloudWatch reported in rejectedLogEventsInfo: index and reason.
pub type Rejected = Vec<(usize, String)>;

impl CloudWatch {
    pub async fn connect(
        endpoint_url: Option<&str>,
        region: Option<&str>,
        group: String,
        retention_days: Option<i32>,
        max_attempts: u32,
    ) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region.to_string()));
        }
        let config = loader.load().await;
        Self {
            client: Client::new(&config),
            group,
            retention_days,
            max_attempts,
        }
    }

    /// Creates the group (with its retention) and the streams when missing.
    pub async fn ensure(&self, streams: &[&str]) -> Result<(), ShipError> {
        self.with_retries("create the log group", || self.create_group())
            .await?;
        for stream in streams {
            self.with_retries("create a log stream", || self.create_stream(stream))
                .await?;
        }
        Ok(())
    }

    async fn create_group(&self) -> Result<(), Attempt> {
        match self
            .client
            .create_log_group()
            .log_group_name(&self.group)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(group = %self.group, "log group created");
                if let Some(days) = self.retention_days {
                    self.client
                        .put_retention_policy()
                        .log_group_name(&self.group)
                        .retention_in_days(days)
                        .send()
                        .await
                        .map_err(classify)?;
                }
                Ok(())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(classify(e)),
        }
    }

    async fn create_stream(&self, stream: &str) -> Result<(), Attempt> {
        match self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(stream)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                self.create_group().await?;
                Err(Attempt::Retry("log group was missing; created it".into()))
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Sends one call; returns the events CloudWatch rejected.
    pub async fn put(&self, call: &Call) -> Result<Rejected, ShipError> {
        let events = call
            .events
            .iter()
            .map(|e| {
                InputLogEvent::builder()
                    .timestamp(e.timestamp_ms)
                    .message(&e.message)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ShipError::Refused(e.to_string()))?;
        let output = self
            .with_retries("PutLogEvents", || async {
                match self
                    .client
                    .put_log_events()
                    .log_group_name(&self.group)
                    .log_stream_name(&call.stream)
                    .set_log_events(Some(events.clone()))
                    .send()
                    .await
                {
                    Ok(out) => Ok(out),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_resource_not_found_exception()) =>
                    {
                        // Group or stream deleted (or never created): create and replay.
                        self.create_stream(&call.stream).await?;
                        Err(Attempt::Retry(format!(
                            "created missing stream {}",
                            call.stream
                        )))
                    }
                    Err(e) => Err(classify(e)),
                }
            })
            .await?;
        let mut rejected = Vec::new();
        if let Some(info) = output.rejected_log_events_info() {
            let n = call.events.len();
            let reason = |why: &str| format!("CloudWatch rejected the event: {why}");
            if let Some(start) = info.too_new_log_event_start_index() {
                rejected.extend((start.max(0) as usize..n).map(|i| (i, reason("too new"))));
            }
            if let Some(end) = info.too_old_log_event_end_index() {
                rejected.extend(
                    (0..=end.max(0) as usize)
                        .filter(|i| *i < n)
                        .map(|i| (i, reason("too old"))),
                );
            }
            if let Some(end) = info.expired_log_event_end_index() {
                rejected.extend(
                    (0..=end.max(0) as usize)
                        .filter(|i| *i < n)
                        .map(|i| (i, reason("older than the group's retention"))),
                );
            }
            rejected.sort_by_key(|(i, _)| *i);
            rejected.dedup_by_key(|(i, _)| *i);
        }
        Ok(rejected)
    }

    /// The event ids of the events `stream` holds with timestamps in `start_ms..=end_ms`; empty
    /// when the stream does not exist. Messages that are not this sink's JSON are ignored. At
    /// most [`MAX_ID_PAGES`] pages are read: a busy stream over a wide span gives a partial set
    /// (some duplicates then go through) rather than a long stall.
    pub async fn event_ids_between(
        &self,
        stream: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<HashSet<Uuid>, ShipError> {
        /// The one field of a shipped message this needs.
        #[derive(serde::Deserialize)]
        struct Shipped {
            event: ShippedEvent,
        }
        #[derive(serde::Deserialize)]
        struct ShippedEvent {
            event_id: Uuid,
        }
        let mut ids = HashSet::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_ID_PAGES {
            let page = self
                .with_retries("GetLogEvents", || async {
                    match self
                        .client
                        .get_log_events()
                        .log_group_name(&self.group)
                        .log_stream_name(stream)
                        .start_from_head(true)
                        .start_time(start_ms)
                        // The end is exclusive.
                        .end_time(end_ms + 1)
                        .set_next_token(token.clone())
                        .send()
                        .await
                    {
                        Ok(out) => Ok(Some(out)),
                        Err(e)
                            if e.as_service_error()
                                .is_some_and(|s| s.is_resource_not_found_exception()) =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(classify(e)),
                    }
                })
                .await?;
            let Some(page) = page else { return Ok(ids) };
            ids.extend(
                page.events()
                    .iter()
                    .filter_map(|e| serde_json::from_str::<Shipped>(e.message()?).ok())
                    .map(|s| s.event.event_id),
            );
            // The last page hands back the token it was asked with.
            let next = page.next_forward_token().map(str::to_string);
            if page.events().is_empty() || next.is_none() || next == token {
                return Ok(ids);
            }
            token = next;
        }
        tracing::warn!(
            stream,
            pages = MAX_ID_PAGES,
            "stopped reading the ids a stream holds; duplicates beyond them can go through"
        );
        Ok(ids)
    }

    async fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, ShipError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for n in 1..=self.max_attempts {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(msg)) => {
                    return Err(ShipError::Refused(format!("{what}: {msg}")))
                }
                Err(Attempt::Retry(msg)) => {
                    metrics::counter!("audit_cloudwatch_retries_total").increment(1);
                    if n % 5 == 1 {
                        tracing::warn!(attempt = n, error = %msg, "{what} failed; retrying");
                    }
                    last = msg;
                }
            }
            // Full jitter: spreads retries of many instances apart.
            let sleep = rand::rng().random_range(delay / 2..=delay);
            tokio::time::sleep(sleep).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        Err(ShipError::GaveUp {
            attempts: self.max_attempts,
            last,
        })
    }
}

/// Whether a failed attempt is worth repeating.
pub enum Attempt {
    Retry(String),
    Fatal(String),
}

fn classify<E, R>(e: SdkError<E, R>) -> Attempt
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            Attempt::Retry(format!("{e:?}").chars().take(300).collect())
        }
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("unknown");
            let message = s.err().message().unwrap_or("").to_string();
            let retry = matches!(
                code,
                "ThrottlingException"
                    | "ServiceUnavailableException"
                    | "InternalFailure"
                    | "RequestExpired"
            ) || format!("{:?}", s.raw()).contains("status: StatusCode(5");
            if retry {
                Attempt::Retry(format!("{code}: {message}"))
            } else {
                Attempt::Fatal(format!("{code}: {message}"))
            }
        }
        _ => Attempt::Fatal(e.to_string()),
    }
}
