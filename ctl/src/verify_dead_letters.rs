//! Links a sink could not store, read back from the dead-letter topic, so that `verify` tells
//! them from deleted ones.
//!
//! A sender controls what makes a sink give up on its event (an event over CloudWatch's
//! 256 KiB, a value ClickHouse refuses): without this, such an event read as a deletion and
//! any sender could raise false alarms. A dead letter of the ClickHouse sink holds the
//! enriched event whole, so its link is rebuilt as the row the sink would have stored and
//! proven like a stored one (a forged letter does not give the signed root, which is a
//! finding); a letter of the CloudWatch sink only says that CloudWatch cannot hold the event.
//! Letters whose original was kept only in part cannot be tied to a link and are counted.

use crate::dlq::Letters;
use crate::settings::Settings;
use anyhow::Result;
use audit_runtime::dead_letter::Stage;
use audit_schemas::codec::AnyRecord;
use audit_sink_clickhouse::encoder::{self, EventRow};
use std::collections::{HashMap, HashSet};

/// (raw partition, chain epoch, seq).
pub type LinkKey = (i32, String, i64);

/// What the dead-letter topic holds of the sinks' chained events.
#[derive(Debug, Default)]
pub struct DeadLettered {
    /// Rows the ClickHouse sink would have stored, by link.
    pub clickhouse: HashMap<LinkKey, Vec<EventRow>>,
    /// Links the CloudWatch sink could not ship.
    pub cloudwatch: HashSet<LinkKey>,
    /// Letters of either sink that cannot be tied to a link (original cut short, or no
    /// chained event).
    pub untied: u64,
}

impl DeadLettered {
    /// The rows the ClickHouse sink dead-lettered for one link.
    pub fn rows(&self, partition: i32, epoch: &str, seq: i64) -> &[EventRow] {
        self.clickhouse
            .get(&(partition, epoch.to_string(), seq))
            .map_or(&[], Vec::as_slice)
    }

    /// One chain's dead-lettered contents, in seq order, for the Merkle walk.
    pub fn contents(&self, partition: i32, epoch: &str) -> Vec<(u64, String)> {
        let mut out: Vec<(u64, String)> = self
            .clickhouse
            .iter()
            .filter(|((p, e, _), _)| *p == partition && e == epoch)
            .flat_map(|((_, _, seq), rows)| {
                rows.iter()
                    .filter(|r| !r.chain_content.is_empty())
                    .filter_map(|r| Some((u64::try_from(*seq).ok()?, r.chain_content.clone())))
            })
            .collect();
        out.sort();
        out
    }

    /// Files one letter: the sinks' letters of chained events by link, the rest passed over.
    pub fn file(&mut self, letter: &audit_schemas::DeadLetter, enriched_topic: &str) {
        let clickhouse = letter.stage == Stage::SinkClickHouse.as_str();
        if !clickhouse && letter.stage != Stage::SinkCloudWatch.as_str() {
            return;
        }
        let decoded = match (&letter.original_value, letter.original_truncated) {
            (Some(v), false) => AnyRecord::decode(v).ok(),
            _ => None,
        };
        let Some(AnyRecord::Enriched(event)) = decoded else {
            self.untied += 1;
            return;
        };
        if event.chain.is_none() {
            self.untied += 1;
            return;
        }
        let origin = encoder::Origin {
            partition: letter.source_partition.unwrap_or(-1),
            offset: letter.source_offset.unwrap_or(-1),
        };
        let row = encoder::row(*event, enriched_topic, origin);
        let key = (row.raw_partition, row.chain_epoch.clone(), row.chain_seq);
        if clickhouse {
            self.clickhouse.entry(key).or_default().push(row);
        } else {
            self.cloudwatch.insert(key);
        }
    }
}

/// Reads the dead-letter topic from its beginning to its end now.
pub async fn read(settings: &Settings) -> Result<DeadLettered> {
    let mut letters = Letters::open(settings, "auditctl-verify").await?;
    let mut out = DeadLettered::default();
    while let Some((_, letter)) = letters.next().await? {
        out.file(&letter, &settings.topics.enriched.name);
    }
    Ok(out)
}
