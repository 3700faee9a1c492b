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
use audit_schemas::chain::checkpoint::Checkpoint;
use aws_sdk_cloudwatchlogs::Client;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// `[cloudwatch]`: where the CloudWatch copies are read from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatchSettings {
    /// The sink's `cloudwatch.log_group`; `--cloudwatch-group` overrides it.
    pub log_group: Option<String>,
    /// An emulator's URL (moto, LocalStack); unset: AWS.
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    /// The sink's `cloudwatch.checkpoint_stream`, the checkpoints' witness in the group
    /// ("audit_checkpoints"); "" checks no witness.
    pub checkpoint_stream: String,
}

impl Default for CloudWatchSettings {
    fn default() -> Self {
        Self {
            log_group: None,
            endpoint_url: None,
            region: None,
            checkpoint_stream: "audit_checkpoints".to_string(),
        }
    }
}

impl CloudWatchSettings {
    pub fn checkpoint_stream(&self) -> Option<&str> {
        Some(self.checkpoint_stream.as_str()).filter(|s| !s.is_empty())
    }
}

/// What the witness stream holds: its valid checkpoints, and the entries that are not one.
#[derive(Debug, Default)]
pub struct Witness {
    pub checkpoints: Vec<Checkpoint>,
    /// (CloudWatch timestamp ms, why): entries that are no checkpoint a configured key signed.
    pub forged: Vec<(i64, String)>,
}

/// Judges the witness stream's messages (timestamp ms, text). Pure.
pub fn judge_witness(
    messages: &[(i64, String)],
    keys: &HashMap<String, ed25519_dalek::VerifyingKey>,
) -> Witness {
    let mut w = Witness::default();
    let mut seen = HashSet::new();
    for (at, text) in messages {
        match serde_json::from_str::<Checkpoint>(text) {
            Err(e) => w.forged.push((*at, format!("not a checkpoint ({e})"))),
            Ok(c) => match keys.get(&c.key_id) {
                None => w
                    .forged
                    .push((*at, format!("signed by unknown key {:?}", c.key_id))),
                Some(k) if !c.verify(k) => w.forged.push((
                    *at,
                    format!(
                        "the signature does not verify (raw partition {}, chain {} at size {})",
                        c.raw_partition, c.epoch, c.tree_size
                    ),
                )),
                // A sink that restarted may ship a checkpoint twice.
                Some(_) => {
                    if seen.insert((c.id(), c.signature.clone())) {
                        w.checkpoints.push(c);
                    }
                }
            },
        }
    }
    w
}

/// Every message of the witness stream: (timestamp ms, text). A stream that does not exist
/// holds none (every checkpoint is then unwitnessed, which verify names).
pub async fn read_witness(
    client: &Client,
    group: &str,
    stream: &str,
) -> Result<Vec<(i64, String)>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = match client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
        {
            Ok(page) => page,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                return Ok(out)
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the witness stream {group}/{stream}"))
            }
        };
        for e in page.events() {
            out.push((
                e.timestamp().unwrap_or_default(),
                e.message().unwrap_or_default().to_string(),
            ));
        }
        let next = page.next_forward_token().map(String::from);
        if page.events().is_empty() || next == token {
            break;
        }
        token = next;
    }
    Ok(out)
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
    /// A witness stream entry that is no checkpoint a configured key signed.
    WitnessForged {
        stream: String,
        at_ms: i64,
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
            Self::WitnessForged { stream, at_ms, why } => write!(
                f,
                "FORGED   in CloudWatch witness stream {stream}, entry at {at_ms} ms: {why}"
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
    /// Intact links CloudWatch lacks because its sink dead-lettered them (too large, refused).
    pub dead_lettered: u64,
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

/// Every message of every stream of `group` but `skip` (the witness): (stream, message JSON).
async fn read_group(
    client: &Client,
    group: &str,
    skip: Option<&str>,
) -> Result<Vec<(String, Value)>> {
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
    for stream in streams.into_iter().filter(|s| Some(s.as_str()) != skip) {
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
    witness_stream: Option<&str>,
    clickhouse: &Report,
    from_us: i64,
    to_us: i64,
    dead_lettered: &HashSet<(i32, String, i64)>,
) -> Result<CloudWatchReport> {
    let mut report = CloudWatchReport::default();
    let messages = read_group(client, group, witness_stream).await?;
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
            if dead_lettered.contains(key) {
                report.dead_lettered += 1;
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use audit_schemas::chain::checkpoint::{no_previous, Statement};
    use audit_schemas::chain::SigningKey;
    use base64::Engine;

    #[test]
    fn witness_entries_that_are_no_signed_checkpoint_are_forged_and_copies_count_once() {
        let seed = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        let key = SigningKey::from_seed_b64("k", &seed).unwrap();
        let keys: HashMap<_, _> = [(
            "k".to_string(),
            chain::public_key(&key.public_b64()).unwrap(),
        )]
        .into();
        let c = Checkpoint::sign(
            Statement {
                raw_partition: 1,
                epoch: "e".into(),
                tree_size: 0,
                root: hex::encode(audit_schemas::chain::merkle::empty_root()),
                raw_offset_start: -1,
                raw_offset_end: -1,
                prev: no_previous(),
                signed_at: 5,
            },
            &key,
        );
        let good = serde_json::to_string(&c).unwrap();
        let mut changed = c.clone();
        changed.tree_size = 1;
        let mut other_key = c.clone();
        other_key.key_id = "x".into();
        let messages = vec![
            (1, good.clone()),
            (2, good),
            (3, serde_json::to_string(&changed).unwrap()),
            (4, serde_json::to_string(&other_key).unwrap()),
            (5, "{\"event\":{}}".to_string()),
        ];
        let w = judge_witness(&messages, &keys);
        assert_eq!(w.checkpoints, vec![c]);
        let at: Vec<i64> = w.forged.iter().map(|(t, _)| *t).collect();
        assert_eq!(at, vec![3, 4, 5]);
        assert!(w.forged[0].1.contains("does not verify"), "{:?}", w.forged);
        assert!(w.forged[1].1.contains("unknown key"), "{:?}", w.forged);
    }
}
