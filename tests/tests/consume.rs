//! `audit_runtime::consume::run_pipelined` against the real broker: batches overlap, yet offsets
//! are committed only in batch order, never past a batch that failed.

use audit_runtime::consume::{run_pipelined, BatchOptions, PipelinedHandler};
use audit_runtime::Shutdown;
use audit_tests::*;
use futures::future::BoxFuture;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Delivers every batch after a delay; the batch holding `fail_at` is slow and then fails.
struct Handler {
    fail_at: Option<i64>,
    log: Arc<Mutex<Log>>,
}

#[derive(Default)]
struct Log {
    /// The first offset of each submitted batch, in submission order.
    submitted: Vec<i64>,
    /// The highest offset submitted so far.
    last_submitted: i64,
    /// The first offset of each batch whose delivery succeeded, in completion order.
    delivered: Vec<i64>,
    /// The first offset of the failed batch.
    failed: Option<i64>,
}

impl PipelinedHandler for Handler {
    type Delivery = BoxFuture<'static, anyhow::Result<()>>;

    async fn submit(&mut self, batch: &[OwnedMessage]) -> anyhow::Result<Self::Delivery> {
        let first = batch[0].offset();
        let last = batch[batch.len() - 1].offset();
        let fails = self.fail_at.is_some_and(|f| (first..=last).contains(&f));
        {
            let mut log = self.log.lock().unwrap();
            log.submitted.push(first);
            log.last_submitted = last;
        }
        let log = self.log.clone();
        Ok(Box::pin(async move {
            if fails {
                // Later batches finish while this one is still out.
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                log.lock().unwrap().failed = Some(first);
                anyhow::bail!("batch at {first} was not acknowledged");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            log.lock().unwrap().delivered.push(first);
            Ok(())
        }))
    }
}

async fn setup(records: usize) -> (String, String) {
    let topics = unique_topics(1);
    create_topics(&topics).await.unwrap();
    let p = producer().unwrap();
    for i in 0..records {
        produce(&p, &topics.raw.name, &i.to_string(), b"x")
            .await
            .unwrap();
    }
    (topics.raw.name.clone(), unique("pipelined"))
}

fn consumer(group: &str) -> StreamConsumer<DefaultConsumerContext> {
    audit_runtime::kafka::consumer(
        &kafka_config(),
        "audit-tests",
        group,
        DefaultConsumerContext,
    )
    .unwrap()
}

/// The offset the group committed on partition 0 (None when nothing was committed).
fn committed(group: &str, topic: &str) -> Option<i64> {
    let c = consumer(group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    match got.find_partition(topic, 0)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

const OPTIONS: BatchOptions = BatchOptions {
    max_records: 10,
    max_wait: Duration::from_millis(50),
    min_interval: Duration::ZERO,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_batch_stops_commits_at_its_start_though_later_ones_were_delivered() {
    let (topic, group) = setup(100).await;
    let log = Arc::new(Mutex::new(Log::default()));
    let mut handler = Handler {
        fail_at: Some(35),
        log: log.clone(),
    };
    let consumer = consumer(&group);
    let shutdown = Shutdown::new();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        run_pipelined(&consumer, &[&topic], &mut handler, OPTIONS, 4, &shutdown),
    )
    .await
    .expect("run_pipelined returns once the failed batch is the oldest");
    assert!(result.is_err(), "the failure reaches the caller");
    drop(consumer);

    let log = log.lock().unwrap();
    let failed = log.failed.expect("the batch holding offset 35 failed");
    let overtook: Vec<i64> = log
        .delivered
        .iter()
        .copied()
        .filter(|&o| o > failed)
        .collect();
    assert!(
        !overtook.is_empty(),
        "batches after the failed one were submitted and delivered meanwhile: {:?}",
        log.submitted
    );
    assert_eq!(
        committed(&group, &topic),
        Some(failed),
        "committed up to the failed batch's first offset, not past it (later delivered: {overtook:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_batch_is_committed_in_order_and_shutdown_waits_for_those_in_flight() {
    let (topic, group) = setup(100).await;
    let log = Arc::new(Mutex::new(Log::default()));
    let mut handler = Handler {
        fail_at: None,
        log: log.clone(),
    };
    let consumer = consumer(&group);
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let watch = log.clone();
    tokio::spawn(async move {
        // Stop as soon as the last record was submitted, with its delivery still out.
        loop {
            if watch.lock().unwrap().last_submitted == 99 {
                stop.trigger();
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        run_pipelined(&consumer, &[&topic], &mut handler, OPTIONS, 4, &shutdown),
    )
    .await
    .expect("run_pipelined stops on shutdown")
    .unwrap();
    drop(consumer);
    let log = log.lock().unwrap();
    assert_eq!(
        log.delivered.len(),
        log.submitted.len(),
        "every submitted batch was delivered before returning"
    );
    assert_eq!(stats.records, 100);
    assert_eq!(committed(&group, &topic), Some(100));
}
