//! `audit-producer send [FILE|-]`: JSON or NDJSON from a file or stdin, validated exactly like
//! the HTTP API: nothing is published unless every event is valid. An event over the size budget
//! is not invalid, only unpublishable: it becomes a dead letter and the others are published.

use crate::body::{self, Caller};
use anyhow::{bail, Context, Result};
use audit_runtime::dead_letter::Stage;
use audit_runtime::ingest::Publisher;
use audit_schemas::dead_letter::Cause;
use audit_schemas::redaction::Redactor;
use audit_schemas::AvroRecord;
use std::io::Read;
use std::path::Path;

/// Reads, validates and publishes; returns the accepted event ids.
/// Every event is validated before the first is published; publishing then goes in chunks of
/// `chunk` events, each acknowledged before the next.
pub async fn send(
    input: &Path,
    caller: &Caller,
    redactor: &Redactor,
    publisher: &Publisher,
    chunk: usize,
) -> Result<Vec<String>> {
    let mut bytes = Vec::new();
    if input == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading stdin")?;
    } else {
        bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    }
    // A file of one JSON value (object or array) is JSON; anything else is read as NDJSON.
    let content_type = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(_) => "application/json",
        Err(_) => "application/x-ndjson",
    };
    let events = match body::parse(Some(content_type), &bytes, usize::MAX)
        .and_then(|values| body::validate(values, caller, redactor, None))
    {
        Ok(events) => events,
        Err(body::BodyError::Invalid(errors)) => {
            for e in &errors {
                eprintln!(
                    "event {}: {}: {}",
                    e.index,
                    if e.path.is_empty() { "/" } else { &e.path },
                    e.reason
                );
            }
            bail!(
                "{} invalid; nothing was published",
                if errors.len() == 1 {
                    "1 error".to_string()
                } else {
                    format!("{} errors", errors.len())
                }
            );
        }
        Err(e) => bail!("{e}; nothing was published"),
    };
    // Events over the size budget cannot be published: each becomes a dead letter (capped,
    // with the whole event's hash) and the others go on.
    let limit = publisher.budget().raw_record_max();
    let mut fitting = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        let encoded = event.encode().context("encoding an event")?;
        let size = encoded.len() + event.partition_key().len();
        if size <= limit {
            fitting.push(event);
            continue;
        }
        let reason = format!(
            "event {index} is {size} bytes encoded; at most {limit} are accepted (kafka.message_max_bytes less room for enrichment)"
        );
        eprintln!("{reason}; dead-lettered");
        let letter = audit_runtime::dead_letter::build(
            publisher.budget(),
            Stage::Send,
            Cause::TooLarge,
            &reason,
            Some(event.partition_key().as_bytes()),
            Some(&encoded),
            None,
        );
        publisher
            .dead_letter(letter.original_key.as_deref(), &letter)
            .await
            .context("publishing a dead letter")?;
    }
    let events = fitting;
    for (i, part) in events.chunks(chunk.max(1)).enumerate() {
        publisher.publish(part).await.with_context(|| {
            format!("publishing (the first {} events were published)", i * chunk)
        })?;
    }
    Ok(events.iter().map(|e| e.event_id.to_string()).collect())
}
