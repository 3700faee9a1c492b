//! Signed checkpoints on the real stack (issue #26): the enricher checkpoints every raw
//! partition it owns, idle or not, each checkpoint names the partition's previous one across
//! an enricher restart (a new epoch), and each root is the Merkle root of the stored links'
//! v2 contents, recomputed here from ClickHouse with the schemas crate's RFC 9162 code.

use anyhow::Result;
use audit_schemas::chain::{self, checkpoint};
use audit_tests::pipeline::{chain_public_key, Pipeline, Stage};
use audit_tests::*;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

#[derive(Debug, Clone, clickhouse::Row, serde::Deserialize)]
struct CheckpointRow {
    raw_partition: i32,
    epoch: String,
    tree_size: u64,
    root: String,
    raw_offset_start: i64,
    raw_offset_end: i64,
    prev: String,
    signed_us: i64,
    key_id: String,
    signature: String,
}

impl CheckpointRow {
    fn checkpoint(&self) -> checkpoint::Checkpoint {
        checkpoint::Checkpoint {
            raw_partition: self.raw_partition,
            epoch: self.epoch.clone(),
            tree_size: self.tree_size,
            root: self.root.clone(),
            raw_offset_start: self.raw_offset_start,
            raw_offset_end: self.raw_offset_end,
            prev: self.prev.clone(),
            signed_at: self.signed_us,
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
        }
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct LinkRow {
    chain_seq: i64,
    chain_content: String,
}

async fn checkpoints(p: &Pipeline) -> Result<Vec<checkpoint::Checkpoint>> {
    let rows: Vec<CheckpointRow> = p
        .clickhouse()
        .query(
            "SELECT DISTINCT raw_partition, epoch, tree_size, root, raw_offset_start, raw_offset_end,
                    prev, toUnixTimestamp64Micro(signed_at) AS signed_us, key_id, signature
             FROM chain_checkpoints ORDER BY raw_partition, signed_us",
        )
        .fetch_all()
        .await?;
    Ok(rows.iter().map(CheckpointRow::checkpoint).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_owned_partition_is_checkpointed_and_the_list_spans_a_restart() -> Result<()> {
    let p = Pipeline::create(kafka_config(), 2).await?;
    let _producer = p.start(Stage::Producer).await?;
    let mut enricher = p.start(Stage::Enricher).await?;
    let _sink = p.start(Stage::ClickHouseSink).await?;
    // Every event of one user (the raw key): all in one raw partition, the other stays idle.
    let events: Vec<_> = (0..20)
        .map(|i| {
            json!({"event_type": "log", "source": "SERVER", "user_id": "u1",
                   "message": format!("m{i}")})
        })
        .collect();
    p.post(&events).await?;
    p.wait_for_rows(20, Duration::from_secs(60)).await;
    p.wait_signed(20, Duration::from_secs(60)).await?;
    // A few intervals (1 s each) with nothing to do.
    tokio::time::sleep(Duration::from_secs(4)).await;
    enricher.stop()?;
    let _enricher = p.start(Stage::Enricher).await?;
    p.post(
        &events[..5]
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e["message"] = json!("after the restart");
                e
            })
            .collect::<Vec<_>>(),
    )
    .await?;
    p.wait_for_rows(25, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let public = chain::public_key(&chain_public_key())?;
    let all = checkpoints(&p).await?;
    let ids: HashSet<String> = all.iter().map(|c| c.id()).collect();
    let mut by_partition: BTreeMap<i32, Vec<&checkpoint::Checkpoint>> = BTreeMap::new();
    for c in &all {
        assert!(c.verify(&public), "signed with the enricher's key: {c:?}");
        by_partition.entry(c.raw_partition).or_default().push(c);
    }
    assert_eq!(
        by_partition.keys().copied().collect::<Vec<_>>(),
        vec![0, 1],
        "both partitions checkpointed, the idle one too"
    );
    for (partition, list) in &by_partition {
        let epochs: HashSet<&str> = list.iter().map(|c| c.epoch.as_str()).collect();
        assert_eq!(
            epochs.len(),
            2,
            "partition {partition}: one epoch before the restart, one after"
        );
        assert!(
            list.len() >= 6,
            "partition {partition}: a checkpoint per interval: {}",
            list.len()
        );
        let firsts = list
            .iter()
            .filter(|c| c.prev == checkpoint::no_previous())
            .count();
        assert_eq!(
            firsts, 1,
            "partition {partition}: only the very first names none"
        );
        for c in list {
            assert!(
                c.prev == checkpoint::no_previous() || ids.contains(&c.prev),
                "partition {partition}: {c:?} names a checkpoint that is not stored"
            );
        }
        // The second epoch's first checkpoint names one of the first epoch's.
        let second = &list.last().unwrap().epoch;
        let first_of_second = list.iter().find(|c| &c.epoch == second).unwrap();
        let named = all.iter().find(|c| c.id() == first_of_second.prev).unwrap();
        assert_ne!(
            &named.epoch, second,
            "partition {partition}: the new epoch links back"
        );
        assert_eq!(named.raw_partition, *partition);
    }

    // Each epoch's newest checkpoint: its root is the stored links' Merkle root.
    let mut newest: BTreeMap<(i32, String), &checkpoint::Checkpoint> = BTreeMap::new();
    for c in &all {
        newest.insert((c.raw_partition, c.epoch.clone()), c);
    }
    let mut linked = 0;
    for ((partition, epoch), c) in newest {
        let rows: Vec<LinkRow> = p
            .clickhouse()
            .query(
                "SELECT chain_seq, any(chain_content) AS chain_content FROM events
                 WHERE raw_partition = ? AND chain_epoch = ? AND chain_seq >= 0 AND chain_seq < ?
                 GROUP BY chain_seq ORDER BY chain_seq",
            )
            .bind(partition)
            .bind(&epoch)
            .bind(c.tree_size)
            .fetch_all()
            .await?;
        assert_eq!(
            rows.len() as u64,
            c.tree_size,
            "every link under the checkpoint is stored"
        );
        let leaves: Vec<_> = rows
            .iter()
            .map(|r| {
                assert!(
                    !r.chain_content.is_empty(),
                    "the sink stores the v2 content"
                );
                let digest = chain::content::content_digest(r.chain_content.as_bytes());
                chain::leaf::link_leaf(partition, &epoch, r.chain_seq, &digest)
            })
            .collect();
        assert_eq!(c.root, hex::encode(chain::merkle::root(&leaves)), "{c:?}");
        linked += c.tree_size;
    }
    assert!(linked >= 25, "the events are under checkpoints: {linked}");

    Ok(())
}
