//! Kafka client construction and topic administration.
//!
//! Every client gets `bootstrap.servers` plus all of [`KafkaConfig::properties`], so SSL, SASL
//! and tuning reach librdkafka without code changes. Role defaults (idempotence, manual commits)
//! are set first and may be overridden by properties only where that is safe: the properties that
//! delivery guarantees depend on are enforced after them.

use crate::config::{KafkaConfig, TopicConfig, TopicsConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, TopicPartitionList};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create the Kafka {role} client: {source}")]
    Client {
        role: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("Kafka request failed: {0}")]
    Request(#[from] KafkaError),
    #[error("topic {0} does not exist (create it with `auditctl topics create`)")]
    NoSuchTopic(String),
    #[error("topic {topic} takes records of at most {limit} bytes (max.message.bytes), less than kafka.message_max_bytes = {budget}: lower the setting or raise the topic's limit")]
    TooSmall {
        topic: String,
        limit: usize,
        budget: usize,
    },
}

/// The partition ids of `topic`. Blocks the calling worker thread (metadata is a synchronous
/// librdkafka call), so it runs under `block_in_place`.
pub fn partitions<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaSetupError> {
    let metadata = tokio::task::block_in_place(|| client.fetch_metadata(Some(topic), timeout))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaSetupError::NoSuchTopic(topic.to_string()));
    }
    Ok(partitions)
}

/// `(partition, low, high)` watermarks of each partition: a partition holds offsets
/// `low..high`, and `high` is where the next record will go.
pub fn watermarks<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<(i32, i64, i64)>, KafkaSetupError> {
    tokio::task::block_in_place(|| {
        partitions
            .iter()
            .map(|&p| {
                let (low, high) = client.fetch_watermarks(topic, p, timeout)?;
                Ok((p, low, high))
            })
            .collect()
    })
}

fn base(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client_id);
    for (key, value) in kafka.librdkafka_properties() {
        cfg.set(key, value);
    }
    cfg
}

/// A producer with `acks=all`, idempotent unless `kafka.idempotence = false`: a delivery report
/// means every in-sync replica has the record, and retries never duplicate or reorder within a
/// partition.
pub fn producer(kafka: &KafkaConfig, client_id: &str) -> Result<FutureProducer, KafkaSetupError> {
    producer_config(kafka, client_id)
        .create()
        .map_err(|source| KafkaSetupError::Client {
            role: "producer",
            source,
        })
}

/// The settings of every producer: role defaults, then the user's properties, then what the
/// delivery guarantees depend on.
pub(crate) fn producer_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "120000");
    for (k, v) in base(kafka, client_id).config_map() {
        cfg.set(k, v);
    }
    cfg.set("enable.idempotence", kafka.idempotence.to_string())
        .set("acks", "all")
        // Set explicitly, from the one size budget every stage checks its output against.
        .set("message.max.bytes", kafka.message_max_bytes.to_string());
    cfg
}

/// A group consumer that never commits on its own: [`crate::consume`] stores and commits offsets
/// only after the caller's output is durable.
pub fn consumer<C>(
    kafka: &KafkaConfig,
    client_id: &str,
    group_id: &str,
    context: C,
) -> Result<StreamConsumer<C>, KafkaSetupError>
where
    C: ConsumerContext + 'static,
{
    let mut cfg = ClientConfig::new();
    cfg.set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("statistics.interval.ms", "5000")
        // librdkafka stops fetching a partition whose prefetch queue is over its limits
        // (queued.max.messages.kbytes, 64 MiB) and looks again only after this backoff, 1 s by
        // default: a stage slower than its fetches stalled for a second at a time.
        .set("fetch.queue.backoff.ms", "10")
        // What a batch needs, not librdkafka's 64 MiB prefetch and 50 MiB fetches: records
        // waiting in memory are memory a stage holds for nothing (override in [kafka.properties]).
        .set("queued.max.messages.kbytes", "8192")
        .set("fetch.max.bytes", "4194304")
        // A broker that holds a fetch for its whole wait even when records arrive (Tansu does)
        // would add this to every stage's latency; Kafka answers as soon as records arrive.
        .set("fetch.wait.max.ms", "100");
    for (k, v) in base(kafka, client_id).config_map() {
        cfg.set(k, v);
    }
    cfg.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    cfg.create_with_context(context)
        .map_err(|source| KafkaSetupError::Client {
            role: "consumer",
            source,
        })
}

/// Client callbacks for [`reader`]s: reaching the end of a partition is what a reader waits
/// for, not an error worth a log line; everything else is logged as librdkafka reports it.
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Client callbacks for group consumers: librdkafka's periodic statistics become the
/// `audit_consumer_lag` gauge (records behind the end of each partition), and rebalances are
/// logged and counted (`audit_consumer_assigned_partitions`) so an operator sees partitions move
/// between instances.
pub struct GroupContext {
    pub group: String,
    on_rebalance: Option<RebalanceHook>,
}

/// Told of every rebalance, on the consumer's polling task: it must be quick and must not block.
pub type RebalanceHook = std::sync::Arc<dyn Fn(&RebalanceEvent) + Send + Sync>;

/// A rebalance as a stage sees it; partitions are (topic, partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions were taken away (the eager protocol takes all before assigning).
    Revoked(Vec<(String, i32)>),
    /// The consumer's whole assignment after the rebalance (not only what was added).
    Assigned(Vec<(String, i32)>),
}

impl GroupContext {
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            on_rebalance: None,
        }
    }

    /// Calls `hook` after each rebalance: what a stage uses to load or drop per-partition state.
    pub fn on_rebalance(mut self, hook: RebalanceHook) -> Self {
        self.on_rebalance = Some(hook);
        self
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// What a client's librdkafka queues hold, as gauges labelled with the client's `role`: records
/// fetched and not yet consumed (the prefetch, bounded by `queued.max.messages.kbytes`) and
/// records produced and not yet acknowledged. Memory an operator would otherwise only see as RSS.
pub fn report_queues(role: &str, statistics: &rdkafka::Statistics) {
    let (mut fetched, mut fetched_bytes) = (0u64, 0u64);
    for t in statistics.topics.values() {
        for (partition, p) in &t.partitions {
            if *partition >= 0 {
                fetched += p.fetchq_cnt.max(0) as u64;
                fetched_bytes += p.fetchq_size;
            }
        }
    }
    let role = role.to_string();
    metrics::gauge!("audit_kafka_fetch_queue_records", "client" => role.clone())
        .set(fetched as f64);
    metrics::gauge!("audit_kafka_fetch_queue_bytes", "client" => role.clone())
        .set(fetched_bytes as f64);
    metrics::gauge!("audit_kafka_produce_queue_records", "client" => role.clone())
        .set(statistics.msg_cnt as f64);
    metrics::gauge!("audit_kafka_produce_queue_bytes", "client" => role)
        .set(statistics.msg_size as f64);
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        report_queues("consumer", &statistics);
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if p.consumer_lag >= 0 && *partition >= 0 {
                    metrics::gauge!(
                        "audit_consumer_lag",
                        "group" => self.group.clone(),
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, group = %self.group, "librdkafka error");
    }
}

impl ConsumerContext for GroupContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            // Nothing new was stored since the last commit.
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                // Cumulative: the next commit covers these; if the partitions moved, their
                // new owner reads the records again (duplicates, never loss).
                tracing::warn!(group = %self.group, error = %e, partitions = offsets.count(), "offset commit failed");
                metrics::counter!("audit_consumer_commit_failures_total", "group" => self.group.clone())
                    .increment(1);
            }
        }
    }

    fn post_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        match rebalance {
            rdkafka::consumer::Rebalance::Assign(tpl) => {
                // Under the cooperative protocol `tpl` holds only what was added.
                let all = consumer
                    .assignment()
                    .map(|a| partitions_of(&a))
                    .unwrap_or_else(|_| partitions_of(tpl));
                tracing::info!(group = %self.group, partitions = ?all, "partitions assigned");
                metrics::gauge!("audit_consumer_assigned_partitions", "group" => self.group.clone())
                    .set(all.len() as f64);
                if let Some(hook) = &self.on_rebalance {
                    hook(&RebalanceEvent::Assigned(all));
                }
            }
            rdkafka::consumer::Rebalance::Revoke(tpl) => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked");
                // The eager protocol revokes everything before the next assignment.
                metrics::gauge!("audit_consumer_assigned_partitions", "group" => self.group.clone())
                    .set(0.0);
                if let Some(hook) = &self.on_rebalance {
                    hook(&RebalanceEvent::Revoked(partitions_of(tpl)));
                }
            }
            rdkafka::consumer::Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "rebalance failed")
            }
        }
    }
}

/// A consumer that reads whole topics by assignment rather than in a group.
pub type Reader = StreamConsumer<ReaderContext>;

/// A consumer outside any group, for reading whole topics (directory, rules, operator tools).
/// It reports the end of each partition as `KafkaError::PartitionEOF`.
pub fn reader(kafka: &KafkaConfig, client_id: &str) -> Result<Reader, KafkaSetupError> {
    let mut cfg = base(kafka, client_id);
    // librdkafka requires a group.id even for manual assignment; nothing is ever committed.
    cfg.set("group.id", format!("{client_id}-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // Tables are read once and applied as fast as they come: a small prefetch per partition
        // (librdkafka's default is 64 MiB each) keeps a restore of millions of sessions from
        // holding hundreds of MiB of undigested records; a short backoff keeps it from stalling.
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.queue.backoff.ms", "10");
    cfg.create_with_context(ReaderContext)
        .map_err(|source| KafkaSetupError::Client {
            role: "reader",
            source,
        })
}

pub fn admin(
    kafka: &KafkaConfig,
    client_id: &str,
) -> Result<AdminClient<DefaultClientContext>, KafkaSetupError> {
    base(kafka, client_id)
        .create()
        .map_err(|source| KafkaSetupError::Client {
            role: "admin",
            source,
        })
}

/// The broker-side settings a topic is created with.
pub fn topic_settings(topic: &TopicConfig) -> Vec<(&'static str, String)> {
    let mut settings = Vec::new();
    if topic.compacted {
        settings.push(("cleanup.policy", "compact".to_string()));
    } else {
        settings.push(("cleanup.policy", "delete".to_string()));
        if let Some(ms) = topic.retention_ms {
            settings.push(("retention.ms", ms.to_string()));
        }
    }
    settings
}

/// What happened to each topic in [`create_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExists,
}

/// Creates the pipeline's topics; topics that already exist are left as they are, so running
/// this twice is harmless.
pub async fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &TopicsConfig,
) -> Result<Vec<(String, TopicOutcome)>, KafkaSetupError> {
    let all = topics.all();
    let settings: Vec<_> = all.iter().map(|(_, t)| (*t, topic_settings(t))).collect();
    let new_topics: Vec<NewTopic> = settings
        .iter()
        .map(|(t, s)| {
            s.iter().fold(
                NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(t.replication),
                ),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(new_topics.iter(), &opts).await?;
    results
        .into_iter()
        .map(|r| match r {
            Ok(name) => Ok((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                Ok((name, TopicOutcome::AlreadyExists))
            }
            Err((topic, code)) => Err(KafkaSetupError::CreateTopic {
                topic,
                reason: code.to_string(),
            }),
        })
        .collect()
}

/// A topic as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: usize,
    pub replication: usize,
    /// `cleanup.policy`, when the broker answers DescribeConfigs.
    pub cleanup_policy: Option<String>,
}

/// Describes every topic on the cluster, sorted by name.
pub async fn describe_topics(
    kafka: &KafkaConfig,
    client_id: &str,
    timeout: Duration,
) -> Result<Vec<TopicDescription>, KafkaSetupError> {
    let consumer = reader(kafka, client_id)?;
    let metadata = tokio::task::block_in_place(|| consumer.fetch_metadata(None, timeout))?;
    let mut out: Vec<TopicDescription> = metadata
        .topics()
        .iter()
        .map(|t| TopicDescription {
            name: t.name().to_string(),
            partitions: t.partitions().len(),
            replication: t.partitions().first().map_or(0, |p| p.replicas().len()),
            cleanup_policy: None,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let admin = admin(kafka, client_id)?;
    let specifiers: Vec<_> = out
        .iter()
        .map(|t| ResourceSpecifier::Topic(&t.name))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    // Some Kafka-compatible brokers do not implement DescribeConfigs; the listing still works.
    if let Ok(configs) = admin.describe_configs(specifiers.iter(), &opts).await {
        for (topic, config) in out.iter_mut().zip(configs) {
            if let Ok(config) = config {
                topic.cleanup_policy = config.get("cleanup.policy").and_then(|e| e.value.clone());
            }
        }
    }
    Ok(out)
}

/// Checks that every topic a stage writes takes records as large as `kafka.message_max_bytes`
/// (its `max.message.bytes`), so the size budget every stage checks against is the broker's too.
/// A topic whose limit is lower stops the stage at start with both numbers; a broker that does
/// not describe topic settings (Tansu 0.6) is logged and trusted.
pub async fn check_message_size(
    kafka: &KafkaConfig,
    client_id: &str,
    topics: &[&str],
) -> Result<(), KafkaSetupError> {
    let admin = admin(kafka, client_id)?;
    let specifiers: Vec<_> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let configs = match admin.describe_configs(specifiers.iter(), &opts).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "the broker does not describe topic settings; max.message.bytes not checked");
            return Ok(());
        }
    };
    for (topic, config) in topics.iter().zip(configs) {
        let limit = config
            .ok()
            .and_then(|c| c.get("max.message.bytes").and_then(|e| e.value.clone()))
            .and_then(|v| v.parse::<usize>().ok());
        match limit {
            Some(limit) if limit < kafka.message_max_bytes => {
                return Err(KafkaSetupError::TooSmall {
                    topic: topic.to_string(),
                    limit,
                    budget: kafka.message_max_bytes,
                })
            }
            Some(_) => {}
            None => tracing::info!(
                topic,
                "max.message.bytes not reported by the broker; not checked"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacted_topics_ignore_retention() {
        let mut t = TopicsConfig::default();
        t.directory.retention_ms = Some(5);
        assert_eq!(
            topic_settings(&t.directory),
            vec![("cleanup.policy", "compact".to_string())]
        );
        t.raw.retention_ms = Some(86_400_000);
        assert_eq!(
            topic_settings(&t.raw),
            vec![
                ("cleanup.policy", "delete".to_string()),
                ("retention.ms", "86400000".to_string())
            ]
        );
    }
}
