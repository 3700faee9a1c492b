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
        .with_writer(Redacting(std::io::stderr));
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

/// Hands the subscriber one buffer per log line; the line is redacted and written to the inner
/// writer whole when the buffer is dropped (the formatter drops it after each event).
#[derive(Debug, Clone, Copy)]
struct Redacting<M>(M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = LineBuffer<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer {
            line: Vec::with_capacity(256),
            inner: self.0.make_writer(),
        }
    }
}

struct LineBuffer<W: Write> {
    line: Vec<u8>,
    inner: W,
}

impl<W: Write> Write for LineBuffer<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for LineBuffer<W> {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let (line, _) = audit_schemas::redaction::built_in().redact_bytes(&self.line);
        let _ = self.inner.write_all(&line);
        let _ = self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(json: bool, log: impl FnOnce()) -> String {
        let out = Shared::default();
        let writer = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(!json)
            .with_writer(Redacting(move || writer.clone()));
        if json {
            tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), log);
        } else {
            tracing::subscriber::with_default(builder.finish(), log);
        }
        let bytes = out.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn log_lines_are_redacted_before_they_are_written() {
        for json in [false, true] {
            let printed = logged(json, || {
                tracing::warn!(
                    password = "s3cr3t!x",
                    url = "postgres://app:hunter2x@db/x",
                    rows = 3,
                    "upstream answered 401 to Bearer abc123def456ghi789"
                );
                tracing::info!(error = "connect failed: api_key=k3yk3yk3y", "retrying");
            });
            for secret in ["s3cr3t!x", "hunter2x", "abc123def456ghi789", "k3yk3yk3y"] {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
            assert!(
                printed.contains("upstream answered 401") && printed.contains("retrying"),
                "{printed}"
            );
            assert_eq!(printed.lines().count(), 2, "{printed}");
        }
    }
}
