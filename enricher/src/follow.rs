//! Following the compacted topics as tables.
//!
//! - the directory and rules are followed whole by `audit_runtime::follow` (every instance needs
//!   the whole table);
//! - [`follow_sessions`]: only the sessions partitions of the raw partitions this instance owns,
//!   following the consumer group's assignments (see [`crate::ownership`]).

use crate::ownership::Ownership;
use crate::service::Tables;
use anyhow::{Context, Result};
use audit_runtime::{KafkaConfig, Shutdown};
use audit_schemas::{AvroRecord, DirectoryEntry, DirectoryRecord, Timestamp};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A sessions partition being read.
struct Followed {
    generation: u64,
    /// While restoring: the end the partition had when it was assigned, and records read.
    restore: Option<(i64, u64)>,
    started: Instant,
}

/// Reads the sessions partitions of the raw partitions this instance owns into
/// `tables.sessions`: each newly owned partition from the beginning, which is its restore (the
/// partition's batches wait until it ends), then on for as long as it is owned.
pub async fn follow_sessions(
    kafka: &KafkaConfig,
    topic: &str,
    tables: Arc<Tables>,
    shutdown: Shutdown,
) -> Result<()> {
    let consumer = audit_runtime::kafka::reader(kafka, &format!("audit-enricher-{topic}"))?;
    let mut ownership = tables.ownership.subscribe();
    let mut following: HashMap<i32, Followed> = HashMap::new();
    reconcile(&consumer, topic, &tables, &mut ownership, &mut following)?;
    loop {
        tokio::select! {
            _ = shutdown.requested() => return Ok(()),
            changed = ownership.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                reconcile(&consumer, topic, &tables, &mut ownership, &mut following)?;
            }
            m = consumer.recv() => match m {
                Ok(m) => {
                    let partition = m.partition();
                    let Some(f) = following.get_mut(&partition) else {
                        continue; // left over from a partition no longer owned
                    };
                    apply_session(&tables, topic, &m, partition, f.generation);
                    if let Some((until, records)) = &mut f.restore {
                        *records += 1;
                        if m.offset() + 1 >= *until {
                            restored(&tables, partition, f);
                        }
                    }
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    if let Some(f) = following.get_mut(&partition) {
                        restored(&tables, partition, f);
                    }
                }
                Err(e) => {
                    tracing::warn!(topic, error = %e, "error while following sessions");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
}

/// Follows exactly the partitions the ownership names: new ones (or ones owned again since)
/// from the beginning, kept ones from where they were.
fn reconcile(
    consumer: &audit_runtime::kafka::Reader,
    topic: &str,
    tables: &Tables,
    ownership: &mut watch::Receiver<Ownership>,
    following: &mut HashMap<i32, Followed>,
) -> Result<()> {
    let wanted = ownership.borrow_and_update().followed();
    // Partitions that left (or left and came back: a new generation) stop being read.
    let mut removed = TopicPartitionList::new();
    following.retain(|p, f| {
        let keep = wanted.contains(&(*p, f.generation));
        if !keep {
            removed.add_partition(topic, *p);
        }
        keep
    });
    if removed.count() > 0 {
        consumer.incremental_unassign(&removed)?;
    }
    let mut added = Vec::new();
    for (partition, generation) in wanted {
        if following.contains_key(&partition) {
            continue;
        }
        let marks = audit_runtime::kafka::watermarks(
            consumer.client(),
            topic,
            &[partition],
            Duration::from_secs(30),
        )
        .with_context(|| format!("reading the end of {topic} partition {partition}"))?;
        let restore = marks
            .first()
            .filter(|(_, low, high)| high > low)
            .map(|(_, low, high)| (*high, *high - *low));
        added.push((partition, generation, restore));
    }
    // Room for every session the new partitions may bring, at once: growing step by step
    // holds the old and the new table together at each doubling.
    let incoming: i64 = added.iter().filter_map(|(_, _, r)| r.map(|(_, n)| n)).sum();
    tables
        .sessions
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .reserve(usize::try_from(incoming).unwrap_or(0));
    // Only the new partitions are assigned (from the beginning); the others keep their fetch
    // position untouched, so nothing is read twice or resumed mid-batch.
    let mut new = TopicPartitionList::new();
    for (partition, generation, restore) in added {
        let mut f = Followed {
            generation,
            restore: Some((restore.map_or(0, |(high, _)| high), 0)),
            started: Instant::now(),
        };
        if restore.is_none() {
            restored(tables, partition, &mut f);
        }
        following.insert(partition, f);
        new.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    if new.count() > 0 {
        consumer.incremental_assign(&new)?;
    }
    if new.count() > 0 || removed.count() > 0 {
        tracing::info!(topic, partitions = ?following.keys().collect::<Vec<_>>(), "following sessions partitions");
    }
    Ok(())
}

/// Applies one record of a followed partition. The ownership is checked under the sessions
/// lock, the lock the rebalance hook drops a departed partition's sessions under, so a record
/// fetched before its partition left cannot bring its session back.
fn apply_session(
    tables: &Tables,
    topic: &str,
    m: &BorrowedMessage<'_>,
    partition: i32,
    generation: u64,
) {
    let key = String::from_utf8_lossy(m.key().unwrap_or_default());
    let now = Timestamp::now();
    let owned = || tables.ownership.borrow().follows(partition, generation);
    let result = match m.payload() {
        _ if key.is_empty() => Err("a session record needs its session id as key".to_string()),
        None | Some([]) => {
            let mut sessions = tables.sessions.write().unwrap_or_else(|p| p.into_inner());
            if owned() {
                sessions.delete(&key, now);
            }
            metrics::gauge!("audit_enricher_sessions_ending").set(sessions.ending() as f64);
            Ok(())
        }
        Some(bytes) => match DirectoryRecord::decode(bytes) {
            Ok(DirectoryRecord {
                entry: DirectoryEntry::Session(s),
            }) if s.id == key => {
                let mut sessions = tables.sessions.write().unwrap_or_else(|p| p.into_inner());
                if owned() {
                    sessions.put(partition, &s, now);
                }
                drop(sessions);
                tables.session_arrived(&key);
                Ok(())
            }
            Ok(other) => Err(format!(
                "under key {key:?} the record is {}, not that session",
                other.key()
            )),
            Err(e) => Err(e.to_string()),
        },
    };
    if let Err(reason) = result {
        // Skipped like a bad record of any table topic: the previous value stays.
        tracing::warn!(topic, partition, offset = m.offset(), %reason, "session record skipped");
        metrics::counter!("audit_enricher_table_records_skipped_total", "topic" => topic.to_string())
            .increment(1);
    }
}

/// Marks a partition's sessions loaded, once, with its figures.
fn restored(tables: &Tables, partition: i32, f: &mut Followed) {
    let Some((_, records)) = f.restore.take() else {
        return;
    };
    let mut since = None;
    tables.ownership.send_modify(|o| {
        since = o.restored(partition, f.generation);
        metrics::gauge!("audit_enricher_partitions_restoring").set(o.restoring() as f64);
    });
    if since.is_none() {
        return;
    }
    let seconds = f.started.elapsed().as_secs_f64();
    let label = partition.to_string();
    metrics::gauge!("audit_enricher_session_restore_seconds", "partition" => label.clone())
        .set(seconds);
    metrics::gauge!("audit_enricher_session_restore_records", "partition" => label)
        .set(records as f64);
    metrics::counter!("audit_enricher_session_records_restored_total").increment(records);
    tracing::info!(
        partition,
        records,
        seconds = format!("{seconds:.2}"),
        "sessions of the partition restored; its events are joined now"
    );
}
