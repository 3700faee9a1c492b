//! `auditctl dlq replay`: publish chosen dead letters' originals again, to the topic they belong
//! on, once the cause is fixed.
//!
//! The target is read off the original itself (its schema fingerprint): a raw event goes back to
//! the raw topic, an enriched event to the enriched topic. Originals kept only in part
//! (`original_truncated`) and log lines that never became events cannot be replayed and are
//! reported. Replaying twice stores nothing twice: a replayed record carries the event id it
//! always had, so the same event is published once per run and the sinks recognise it by id
//! when it comes again (their stored-offset and recent-id checks).

use crate::settings::Settings;
use anyhow::{Context, Result};
use audit_runtime::kafka;
use audit_schemas::codec::AnyRecord;
use audit_schemas::{AvroRecord, DeadLetter, Timestamp};
use clap::{Args, Subcommand};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Re-publish the originals of the dead letters selected by the filters (all of them when
    /// none is given) to the topic they belong on.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Only letters of this stage (producer, tailer, send, enricher, sink-clickhouse,
    /// sink-cloudwatch).
    #[arg(long)]
    pub stage: Option<String>,
    /// Only letters of this cause (undecodable, no_value, too_large, invalid, rejected,
    /// unroutable).
    #[arg(long)]
    pub cause: Option<String>,
    /// Only letters written at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<Timestamp>,
    /// Only letters written before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<Timestamp>,
    /// Only letters at these offsets of the dead-letter topic, e.g. 10..20 (end excluded).
    #[arg(long, value_parser = parse_range)]
    pub offsets: Option<(i64, i64)>,
    /// Say what would be replayed without publishing anything.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
    Ok(Timestamp::from_micros(
        (t.unix_timestamp_nanos() / 1_000) as i64,
    ))
}

fn parse_range(s: &str) -> Result<(i64, i64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not FROM..TO"))?;
    let a = a.parse().map_err(|_| format!("{a:?} is not an offset"))?;
    let b = b.parse().map_err(|_| format!("{b:?} is not an offset"))?;
    Ok((a, b))
}

impl ReplayArgs {
    fn selects(&self, offset: i64, l: &DeadLetter) -> bool {
        self.stage.as_deref().is_none_or(|s| s == l.stage)
            && self.cause.as_deref().is_none_or(|c| c == l.cause)
            && self.since.is_none_or(|t| l.failed_at >= t)
            && self.until.is_none_or(|t| l.failed_at < t)
            && self
                .offsets
                .is_none_or(|(from, to)| (from..to).contains(&offset))
    }
}

/// Where a letter's original goes, or why it cannot be replayed.
fn target<'a>(l: &DeadLetter, settings: &'a Settings) -> Result<(&'a str, String), String> {
    if l.original_truncated {
        return Err("only the first bytes of the original were kept".into());
    }
    let Some(value) = l.original_value.as_deref() else {
        return Err("the letter holds no original".into());
    };
    match AnyRecord::decode(value) {
        Ok(AnyRecord::Raw(e)) => Ok((&settings.topics.raw.name, e.event_id.to_string())),
        Ok(AnyRecord::Enriched(e)) => {
            Ok((&settings.topics.enriched.name, e.event.event_id.to_string()))
        }
        Ok(other) => Err(format!(
            "a {} is not replayed (write it again with auditctl)",
            other.record_name()
        )),
        Err(_) => Err(
            "the original is not a pipeline event (a log line or a bad record): fix it at its source"
                .into(),
        ),
    }
}

/// Every letter on the dead-letter topic, from its beginning to its end when opened.
pub struct Letters {
    consumer: rdkafka::consumer::StreamConsumer<kafka::ReaderContext>,
    topic: String,
    ends: HashMap<i32, i64>,
    done: HashSet<i32>,
}

impl Letters {
    pub async fn open(settings: &Settings, client_id: &str) -> Result<Self> {
        let topic = settings.topics.dlq.name.clone();
        let consumer = kafka::reader(&settings.kafka, client_id)?;
        let timeout = Duration::from_secs(10);
        let partitions = kafka::partitions(consumer.client(), &topic, timeout)
            .with_context(|| format!("reading {topic} on {}", settings.kafka.brokers))?;
        let ends: HashMap<i32, i64> =
            kafka::watermarks(consumer.client(), &topic, &partitions, timeout)?
                .into_iter()
                .filter(|(_, low, high)| high > low)
                .map(|(p, _, high)| (p, high))
                .collect();
        let mut tpl = TopicPartitionList::new();
        for p in ends.keys() {
            tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            topic,
            ends,
            done: HashSet::new(),
        })
    }

    /// The next letter and its offset; `None` at the end. Records that are no dead letter
    /// are passed over.
    pub async fn next(&mut self) -> Result<Option<(i64, DeadLetter)>> {
        while self.done.len() < self.ends.len() {
            let m = match tokio::time::timeout(Duration::from_secs(30), self.consumer.recv()).await
            {
                Err(_) => anyhow::bail!("no record from {} within 30 s", self.topic),
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    self.done.insert(p);
                    continue;
                }
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(m)) => m,
            };
            if self
                .ends
                .get(&m.partition())
                .is_some_and(|end| m.offset() + 1 >= *end)
            {
                self.done.insert(m.partition());
            }
            if let Some(Ok(letter)) = m.payload().map(DeadLetter::decode) {
                return Ok(Some((m.offset(), letter)));
            }
        }
        Ok(None)
    }
}

pub async fn run(cmd: DlqCommand, settings: &Settings) -> Result<()> {
    let DlqCommand::Replay(args) = cmd;
    let topic = &settings.topics.dlq.name;
    let mut letters = Letters::open(settings, "auditctl-dlq").await?;
    let producer = kafka::producer(&settings.kafka, "auditctl-dlq")?;
    let mut seen = HashSet::new();
    let (mut replayed, mut skipped, mut repeated) = (0u64, 0u64, 0u64);
    while let Some((offset, letter)) = letters.next().await? {
        if !args.selects(offset, &letter) {
            continue;
        }
        match target(&letter, settings) {
            Err(why) => {
                skipped += 1;
                eprintln!("{topic} offset {offset}: not replayed: {why}");
            }
            Ok((to, event_id)) => {
                if !seen.insert(event_id.clone()) {
                    repeated += 1;
                    continue;
                }
                println!(
                    "{topic} offset {offset} ({}, {}): event {event_id} -> {to}",
                    letter.stage, letter.cause
                );
                if !args.dry_run {
                    let value = letter.original_value.as_deref().unwrap_or_default();
                    let mut record = FutureRecord::to(to).payload(value);
                    if let Some(k) = letter.original_key.as_deref() {
                        record = record.key(k);
                    }
                    producer
                        .send(record, Duration::from_secs(30))
                        .await
                        .map_err(|(e, _)| e)
                        .with_context(|| format!("replaying to {to}"))?;
                }
                replayed += 1;
            }
        }
    }
    eprintln!(
        "{} {replayed} events, {repeated} letters of events already replayed in this run, {skipped} letters not replayable",
        if args.dry_run { "would replay" } else { "replayed" }
    );
    Ok(())
}
