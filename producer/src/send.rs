//! `audit-producer send [FILE|-]`: JSON or NDJSON from a file or stdin, validated exactly like
//! the HTTP API and published in one all-or-nothing batch.

use crate::body::{self, Caller};
use crate::publish::Publisher;
use anyhow::{bail, Context, Result};
use audit_schemas::redaction::Redactor;
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
        .and_then(|values| body::validate(values, caller, redactor))
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
    for (i, part) in events.chunks(chunk.max(1)).enumerate() {
        publisher.publish(part).await.with_context(|| {
            format!("publishing (the first {} events were published)", i * chunk)
        })?;
    }
    Ok(events.iter().map(|e| e.event_id.to_string()).collect())
}
