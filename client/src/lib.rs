//! The client library services link to record audit events, modelled on the platform's logger:
//!
//! ```no_run
//! # async fn demo(publisher: audit_runtime::ingest::Publisher) {
//! use audit_client::{Logger, Transport};
//! use serde_json::json;
//! let logger = Logger::builder(Transport::Kafka(publisher), "my-service")
//!     .defaults(|r| { r.params.insert("persistent".into(), json!("value")); })
//!     .build();
//! logger.log("HELLO WORLD", json!({"test": "value", "foo": "bar"})).unwrap();   // type "log"
//! logger.log_with_type("HELLO WORLD", json!({"test": "value"}), "my_log").unwrap();
//! logger.error("Error!", json!({})).unwrap();   // type "error", with a stack trace
//! logger.close().await.unwrap();
//! # }
//! ```
//!
//! Logging never blocks the caller: records go to a bounded queue and a background task sends
//! them in batches, straight to Kafka or through the HTTP API. A full queue is reported to the
//! caller (`LogError::QueueFull`) rather than dropped silently or grown without bound.

pub mod browser_token;
pub mod directory;

use audit_runtime::ingest::Publisher;
use audit_schemas::ingest::{event_from_json, IngestDefaults};
use audit_schemas::redaction::Redactor;
use audit_schemas::{RawAuditEvent, Source, Timestamp};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Where records go.
pub enum Transport {
    /// Straight to the raw topic.
    Kafka(Publisher),
    /// Through the ingest API (`POST {url}/v1/events` with the bearer token).
    Http { url: String, token: String },
}

/// One record before it becomes an event; the defaults hook may change any of it.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub message: String,
    pub event_type: String,
    pub params: Map<String, Value>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub success: bool,
    pub stack_trace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the logger's queue is full; the record was not taken")]
    QueueFull,
    #[error("the logger is closed")]
    Closed,
    #[error("params must be a JSON object")]
    ParamsNotObject,
    #[error("sending failed: {0}")]
    Send(String),
}

type Hook = Arc<dyn Fn(&mut LogRecord) + Send + Sync>;

enum Command {
    Record(LogRecord),
    Flush(oneshot::Sender<Result<(), String>>),
}

pub struct LoggerBuilder {
    transport: Transport,
    service: String,
    source: Source,
    hook: Option<Hook>,
    queue: usize,
    batch: usize,
}

impl LoggerBuilder {
    /// Runs on every record before it is queued: the seed's `new Logger((m) => ...)`.
    pub fn defaults(mut self, hook: impl Fn(&mut LogRecord) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    pub fn source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }

    pub fn queue_capacity(mut self, records: usize) -> Self {
        self.queue = records.max(1);
        self
    }

    /// Most records per send. A batch goes as soon as no more records are queued, so a burst
    /// is sent in large batches and a lone record waits for nothing.
    pub fn batch(mut self, records: usize) -> Self {
        self.batch = records.max(1);
        self
    }

    /// Starts the background sender; needs a Tokio runtime.
    pub fn build(self) -> Logger {
        let (tx, rx) = mpsc::channel(self.queue);
        let sender = Sender {
            transport: self.transport,
            service: self.service,
            source: self.source,
            batch: self.batch,
            http: reqwest::Client::new(),
            redactor: Redactor::default(),
        };
        let task = tokio::spawn(sender.run(rx));
        Logger {
            tx,
            hook: self.hook,
            task: Some(task),
        }
    }
}

pub struct Logger {
    tx: mpsc::Sender<Command>,
    hook: Option<Hook>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Logger {
    pub fn builder(transport: Transport, service: impl Into<String>) -> LoggerBuilder {
        LoggerBuilder {
            transport,
            service: service.into(),
            source: Source::Server,
            hook: None,
            queue: 10_000,
            batch: 100,
        }
    }

    /// Records a `log` event.
    pub fn log(&self, message: &str, params: Value) -> Result<(), LogError> {
        self.log_with_type(message, params, "log")
    }

    pub fn log_with_type(
        &self,
        message: &str,
        params: Value,
        event_type: &str,
    ) -> Result<(), LogError> {
        let params = match params {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            _ => return Err(LogError::ParamsNotObject),
        };
        self.enqueue(LogRecord {
            message: message.to_string(),
            event_type: event_type.to_string(),
            params,
            session_id: None,
            user_id: None,
            success: true,
            stack_trace: None,
        })
    }

    /// Records an `error` event with the caller's stack trace, so errors can be grouped.
    pub fn error(&self, message: &str, params: Value) -> Result<(), LogError> {
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        let mut params = match params {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            _ => return Err(LogError::ParamsNotObject),
        };
        params.insert("stackTrace".into(), Value::String(trace.clone()));
        self.enqueue(LogRecord {
            message: message.to_string(),
            event_type: "error".to_string(),
            params,
            session_id: None,
            user_id: None,
            success: false,
            stack_trace: Some(trace),
        })
    }

    /// Queues a fully built record (for callers that set session and user).
    pub fn record(&self, record: LogRecord) -> Result<(), LogError> {
        self.enqueue(record)
    }

    fn enqueue(&self, mut record: LogRecord) -> Result<(), LogError> {
        if let Some(hook) = &self.hook {
            hook(&mut record);
        }
        self.tx
            .try_send(Command::Record(record))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LogError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => LogError::Closed,
            })
    }

    /// Waits until everything queued so far was sent (and acknowledged).
    pub async fn flush(&self) -> Result<(), LogError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Flush(done))
            .await
            .map_err(|_| LogError::Closed)?;
        wait.await
            .map_err(|_| LogError::Closed)?
            .map_err(LogError::Send)
    }

    /// Flushes and stops the background sender.
    pub async fn close(mut self) -> Result<(), LogError> {
        let result = self.flush().await;
        drop(self.tx);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        result
    }
}

struct Sender {
    transport: Transport,
    service: String,
    source: Source,
    batch: usize,
    http: reqwest::Client,
    redactor: Redactor,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Command>) {
        let mut pending: Vec<LogRecord> = Vec::new();
        loop {
            match rx.recv().await {
                None => {
                    self.send_logged(&mut pending).await;
                    return;
                }
                Some(Command::Record(r)) => {
                    pending.push(r);
                    // Take what is queued already, then send as soon as nothing more is ready:
                    // bursts go in large batches and a lone record waits for nothing.
                    while pending.len() < self.batch {
                        match rx.try_recv() {
                            Ok(Command::Record(r)) => pending.push(r),
                            Ok(Command::Flush(done)) => {
                                let result = self.send(&mut pending).await;
                                let _ = done.send(result);
                            }
                            Err(_) => break,
                        }
                    }
                    self.send_logged(&mut pending).await;
                }
                Some(Command::Flush(done)) => {
                    let result = self.send(&mut pending).await;
                    let _ = done.send(result);
                }
            }
        }
    }

    async fn send_logged(&self, pending: &mut Vec<LogRecord>) {
        if let Err(e) = self.send(pending).await {
            tracing::error!(error = %e, "audit records could not be sent");
        }
    }

    /// Sends with retries; on final failure the records are dropped and counted, so one broken
    /// dependency cannot make the service's memory grow without bound.
    async fn send(&self, pending: &mut Vec<LogRecord>) -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(pending);
        let mut delay = Duration::from_millis(100);
        let mut last = String::new();
        for _ in 0..5 {
            match self.try_send(&records).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        metrics::counter!("audit_client_records_dropped_total").increment(records.len() as u64);
        Err(format!(
            "{} records dropped after 5 attempts: {last}",
            records.len()
        ))
    }

    fn to_json(&self, r: &LogRecord) -> Value {
        json!({
            "event_type": r.event_type,
            "timestamp": Timestamp::now().to_rfc3339(),
            "source": self.source.as_str(),
            "service": self.service,
            "session_id": r.session_id,
            "user_id": r.user_id,
            "success": r.success,
            "message": r.message,
            "params": r.params,
            "error": r.stack_trace.as_ref().map(|t| json!({"message": r.message, "stack_trace": t})),
        })
    }

    async fn try_send(&self, records: &[LogRecord]) -> Result<(), String> {
        match &self.transport {
            Transport::Kafka(publisher) => {
                let defaults = IngestDefaults::now();
                let events = records
                    .iter()
                    .map(|r| {
                        event_from_json(self.to_json(r), &defaults, &self.redactor).map_err(
                            |errors| {
                                errors
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            },
                        )
                    })
                    .collect::<Result<Vec<RawAuditEvent>, String>>()?;
                publisher.publish(&events).await.map_err(|e| e.to_string())
            }
            Transport::Http { url, token } => {
                let body: Vec<Value> = records.iter().map(|r| self.to_json(r)).collect();
                let response = self
                    .http
                    .post(format!("{}/v1/events", url.trim_end_matches('/')))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{}: {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    ))
                }
            }
        }
    }
}
