//! Logging setup: human-readable lines for terminals, JSON lines for log shippers; both to
//! stderr so stdout stays free for command output (`auditctl consume`).
//!
//! Every line passes the built-in secret redaction before it is written, whatever logged it
//! (an error quoting a bad value, a dependency's debug output): log files are read by more
//! people than the audit trail, and must not hold what the trail itself may not.

use crate::config::{LogConfig, LogFormat};
use std::io::Write;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(log: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(&spec)
            .map_err(|e| anyhow::anyhow!("RUST_LOG {spec:?} is not a valid filter: {e}"))?,
        _ => EnvFilter::try_new(&log.level).map_err(|e| {
            anyhow::anyhow!(
                "setting `log.level` {:?} is not a valid filter: {e}",
                log.level
            )
        })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr);
    let result = match log.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// An error as the binaries print it when they stop, redacted like log lines.
pub fn redacted_error(binary: &str, error: &anyhow::Error) -> String {
    let mut text = format!("{binary}: {error:#}");
    audit_schemas::redaction::built_in().redact_text(&mut text);
    text
}

/// Hands the subscriber one buffer per log line; the line is redacted and written to stderr
/// whole when the buffer is dropped (the formatter drops it after each event).
#[derive(Debug, Clone, Copy)]
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer(Vec::with_capacity(256))
    }
}

struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let (line, _) = audit_schemas::redaction::built_in().redact_bytes(&self.0);
        let _ = std::io::stderr().lock().write_all(&line);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn log_lines_are_redacted_before_they_are_written() {
        let (line, n) = audit_schemas::redaction::built_in().redact_bytes(
            b"2026-11-25T10:00:00Z WARN audit: retry url=postgres://app:hunter2x@db/x password=s3cr3t!\n",
        );
        let line = String::from_utf8_lossy(&line);
        assert_eq!(n, 2, "{line}");
        assert!(
            !line.contains("hunter2x") && !line.contains("s3cr3t!"),
            "{line}"
        );
        assert!(line.ends_with('\n'));
        let (json, _) = audit_schemas::redaction::built_in().redact_bytes(
            br#"{"level":"WARN","message":"login","token":"abc123def","user":"bob"}
"#,
        );
        let json = String::from_utf8_lossy(&json);
        assert!(
            !json.contains("abc123def") && json.contains("bob") && json.ends_with("}\n"),
            "{json}"
        );
    }
}
