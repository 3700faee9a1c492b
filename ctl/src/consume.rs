//! `auditctl consume TOPIC`: decode any pipeline topic to JSON lines.

use crate::settings::Settings;
use anyhow::{Context, Result};
use audit_runtime::kafka;
use audit_schemas::codec::AnyRecord;
use clap::Args;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read, e.g. audit.raw, audit.enriched, audit.dlq.
    pub topic: String,
    /// Start at the oldest record instead of only printing new ones.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after printing this many records.
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
    /// Stop once every partition has been read to its current end.
    #[arg(long)]
    pub exit_at_end: bool,
}

pub async fn run(args: ConsumeArgs, settings: &Settings) -> Result<()> {
    let consumer = kafka::reader(&settings.kafka, "auditctl")?;
    let partitions = kafka::partitions(consumer.client(), &args.topic, Duration::from_secs(10))
        .with_context(|| {
            format!(
                "reading {} on {} (see `auditctl topics list`)",
                args.topic, settings.kafka.brokers
            )
        })?;
    let start = if args.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&args.topic, *p, start)?;
    }
    consumer.assign(&tpl)?;

    let mut at_end: HashSet<i32> = HashSet::new();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    loop {
        if args.max.is_some_and(|max| printed >= max) {
            break;
        }
        let message = tokio::select! {
            m = consumer.recv() => m,
            _ = tokio::signal::ctrl_c() => break,
        };
        match message {
            Ok(m) => {
                at_end.remove(&m.partition());
                let line = render(&m);
                let mut out = stdout.lock();
                // A closed pipe (`| head`) ends the command quietly.
                if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                    break;
                }
                printed += 1;
            }
            Err(KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
                if args.exit_at_end && at_end.len() == partitions.len() {
                    break;
                }
            }
            Err(e) => tracing::warn!(error = %e, "Kafka error while consuming"),
        }
    }
    Ok(())
}

fn render(m: &BorrowedMessage<'_>) -> Value {
    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
    let timestamp = m.timestamp().to_millis();
    let mut line = json!({
        "topic": m.topic(),
        "partition": m.partition(),
        "offset": m.offset(),
        "key": key,
        "timestamp_ms": timestamp,
    });
    match m.payload() {
        None | Some([]) => {
            line["tombstone"] = json!(true);
        }
        Some(bytes) => match AnyRecord::decode(bytes) {
            Ok(record) => {
                line["record"] = json!(record.record_name());
                line["value"] = serde_json::to_value(&record)
                    .unwrap_or_else(|e| json!({ "error": e.to_string() }));
                if let AnyRecord::DeadLetter(dl) = &record {
                    // Readable originals: text when UTF-8, base64 otherwise (serde would give
                    // an array of byte numbers).
                    line["value"]["original_key"] = readable(dl.original_key.as_deref());
                    line["value"]["original_value"] = readable(dl.original_value.as_deref());
                }
            }
            Err(e) => {
                line["error"] = json!(e.to_string());
                line["bytes"] = json!(bytes.len());
            }
        },
    }
    line
}

/// Bytes as `{"text": ...}` when they are UTF-8, else `{"base64": ...}`; null when absent.
pub fn readable(bytes: Option<&[u8]>) -> Value {
    use base64::Engine;
    match bytes {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => json!({ "text": text }),
            Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn originals_read_as_text_or_base64() {
        assert_eq!(readable(Some(b"{\"a\":1}")), json!({"text": "{\"a\":1}"}));
        assert_eq!(
            readable(Some(&[0xC3, 0x01, 0xff])),
            json!({"base64": "wwH/"})
        );
        assert_eq!(readable(None), Value::Null);
    }
}
