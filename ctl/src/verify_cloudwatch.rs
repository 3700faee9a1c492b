//! `auditctl verify --cloudwatch-group`: the CloudWatch copies checked against the links
//! ClickHouse proved intact (`crate::verify`).
//!
//! - each message's chain link must hash from its content and `prev` (else **altered**), and
//!   be a link ClickHouse holds with the same hash (else **inserted**), unless no digest
//!   covers it yet (*unsigned*, as in ClickHouse);
//! - each intact link enriched in the range whose event type CloudWatch holds in the range must
//!   be in CloudWatch (else **deleted from CloudWatch**). Types the sink does not ship have no
//!   event there and are not expected; a type none of whose events remain is not noticed.

use crate::verify::{IntactLink, Report};
use anyhow::{Context, Result};
use audit_schemas::chain;
use aws_sdk_cloudwatchlogs::Client;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// `[cloudwatch]`: where the CloudWatch copies are read from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatchSettings {
    /// The sink's `cloudwatch.log_group`; `--cloudwatch-group` overrides it.
    pub log_group: Option<String>,
    /// An emulator's URL (moto, LocalStack); unset: AWS.
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
}

/// What CloudWatch holds that is wrong or missing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CloudWatchFinding {
    Deleted {
        stream_hint: String,
        raw_partition: i32,
        raw_offset: i64,
        event_id: String,
    },
    Altered {
        stream: String,
        raw_partition: i32,
        raw_offset: i64,
        event_id: String,
    },
    Inserted {
        stream: String,
        raw_partition: i32,
        raw_offset: i64,
        event_id: String,
        why: String,
    },
}

impl std::fmt::Display for CloudWatchFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deleted { stream_hint, raw_partition, raw_offset, event_id } => write!(
                f,
                "DELETED  from CloudWatch ({stream_hint}): raw partition {raw_partition}, offset {raw_offset}: event {event_id}"
            ),
            Self::Altered { stream, raw_partition, raw_offset, event_id } => write!(
                f,
                "ALTERED  in CloudWatch stream {stream}: raw partition {raw_partition}, offset {raw_offset}: event {event_id}"
            ),
            Self::Inserted { stream, raw_partition, raw_offset, event_id, why } => write!(
                f,
                "INSERTED in CloudWatch stream {stream}: raw partition {raw_partition}, offset {raw_offset}: event {event_id} ({why})"
            ),
        }
    }
}

#[derive(Debug, Default)]
pub struct CloudWatchReport {
    pub findings: Vec<CloudWatchFinding>,
    pub events: u64,
    pub verified: u64,
    /// Events whose link no digest covers yet.
    pub unsigned: u64,
}

pub async fn client(settings: &CloudWatchSettings) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    Client::new(&loader.load().await)
}

/// Every message of every stream of `group`: (stream, message JSON).
async fn read_group(client: &Client, group: &str) -> Result<Vec<(String, Value)>> {
    let mut streams = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .describe_log_streams()
            .log_group_name(group)
            .set_next_token(token.clone())
            .send()
            .await
            .with_context(|| format!("listing the streams of log group {group}"))?;
        streams.extend(
            page.log_streams()
                .iter()
                .filter_map(|s| s.log_stream_name().map(String::from)),
        );
        token = page.next_token().map(String::from);
        if token.is_none() {
            break;
        }
    }
    let mut out = Vec::new();
    for stream in streams {
        let mut token: Option<String> = None;
        loop {
            let page = client
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(&stream)
                .start_from_head(true)
                .set_next_token(token.clone())
                .send()
                .await
                .with_context(|| format!("reading log stream {stream}"))?;
            for e in page.events() {
                if let Ok(v) = serde_json::from_str::<Value>(e.message().unwrap_or_default()) {
                    out.push((stream.clone(), v));
                }
            }
            let next = page.next_forward_token().map(String::from);
            if page.events().is_empty() || next == token {
                break;
            }
            token = next;
        }
    }
    Ok(out)
}

/// Checks `group` against the links `clickhouse` proved intact, for events enriched in
/// `[from_us, to_us]`.
pub async fn verify(
    client: &Client,
    group: &str,
    clickhouse: &Report,
    from_us: i64,
    to_us: i64,
) -> Result<CloudWatchReport> {
    let mut report = CloudWatchReport::default();
    let messages = read_group(client, group).await?;
    let mut present: HashSet<(i32, String, i64)> = HashSet::new();
    let mut shipped_types: HashMap<String, String> = HashMap::new();
    for (stream, m) in &messages {
        let enriched = m["pipeline"]["enriched_at"]
            .as_str()
            .and_then(|t| audit_schemas::Timestamp::parse_rfc3339(t).ok())
            .map_or(0, |t| t.as_micros());
        if !(from_us..=to_us).contains(&enriched) {
            continue;
        }
        report.events += 1;
        let partition = m["pipeline"]["raw_partition"].as_i64().unwrap_or(-1) as i32;
        let offset = m["pipeline"]["raw_offset"].as_i64().unwrap_or(-1);
        let event_id = m["event"]["event_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(t) = m["event"]["event_type"].as_str() {
            shipped_types
                .entry(t.to_string())
                .or_insert_with(|| stream.clone());
        }
        let link = &m["chain"];
        let (Some(epoch), Some(seq), Some(prev), Some(hash)) = (
            link["epoch"].as_str(),
            link["seq"].as_i64(),
            link["prev"].as_str(),
            link["hash"].as_str(),
        ) else {
            report.findings.push(CloudWatchFinding::Inserted {
                stream: stream.clone(),
                raw_partition: partition,
                raw_offset: offset,
                event_id,
                why: "carries no chain link".into(),
            });
            continue;
        };
        let content = chain::content_digest(&chain::canonical_value(
            m["event"].clone(),
            chain::Form::Message,
            partition,
            offset,
        ));
        if chain::link_hash(partition, epoch, seq, prev, &content) != hash {
            report.findings.push(CloudWatchFinding::Altered {
                stream: stream.clone(),
                raw_partition: partition,
                raw_offset: offset,
                event_id,
            });
            continue;
        }
        let key = (partition, epoch.to_string(), seq);
        let walked = clickhouse
            .walked
            .get(&(partition, epoch.to_string()))
            .is_some_and(|(first, last)| (*first..=*last).contains(&seq));
        match clickhouse.intact.get(&key) {
            Some(IntactLink { hash: h, .. }) if h == hash => {
                report.verified += 1;
                present.insert(key);
            }
            // After its chain's last digest (an enricher that crashed, or one that has not
            // signed yet): nothing to judge it against.
            None if !walked => report.unsigned += 1,
            _ => report.findings.push(CloudWatchFinding::Inserted {
                stream: stream.clone(),
                raw_partition: partition,
                raw_offset: offset,
                event_id,
                why: format!("link {seq} of chain {epoch} is no intact link in ClickHouse"),
            }),
        }
    }
    for (key, link) in &clickhouse.intact {
        let Some(event_type) = &link.event_type else {
            continue;
        };
        let Some(stream) = shipped_types.get(event_type) else {
            continue;
        };
        if (from_us..=to_us).contains(&link.enriched_at_us) && !present.contains(key) {
            report.findings.push(CloudWatchFinding::Deleted {
                stream_hint: format!("its type {event_type} is in stream {stream}"),
                raw_partition: key.0,
                raw_offset: link.raw_offset,
                event_id: link.event_id.clone(),
            });
        }
    }
    report.findings.sort();
    Ok(report)
}
