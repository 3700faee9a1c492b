//! Bytes of a log file -> events and dead letters, with no I/O: what the audit log's tailer and
//! the node logs' follower share.

use audit_runtime::budget::SizeBudget;
use audit_runtime::dead_letter::Stage;
use audit_runtime::ingest::Publisher;
use audit_schemas::audit_log::convert_line;
use audit_schemas::dead_letter::Cause;
use audit_schemas::redaction::Redactor;
use audit_schemas::{DeadLetter, EntityRef, RawAuditEvent};
use std::collections::HashSet;
use std::path::Path;
use uuid::Uuid;

/// Longest line accepted; a longer one becomes a dead letter holding its first bytes.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// How much is read at once: a full chunk without a newline is a line too long.
pub const READ_CHUNK: usize = MAX_LINE_BYTES + 1;
/// How much of an unusable line its dead letter keeps.
pub const DEAD_LETTER_PREFIX_BYTES: usize = 64 * 1024;

/// How one file's lines become events.
pub struct Convert<'a> {
    pub service: &'a str,
    pub redactor: &'a Redactor,
    pub budget: &'a SizeBudget,
    /// The file, named in dead letters.
    pub path: &'a Path,
    /// An entity every line's event also names: the node audit log file it was read from.
    pub file_entity: Option<&'a EntityRef>,
}

/// What a batch of lines became.
#[derive(Default)]
pub struct Converted {
    pub events: Vec<RawAuditEvent>,
    pub letters: Vec<DeadLetter>,
    /// Lines whose events the broker already has (a batch in flight when the tailer stopped).
    pub skipped: u64,
}

impl Convert<'_> {
    /// Converts `(offset, line)` pairs; `id` gives a line's event id from its offset, and lines
    /// whose id is in `already` are skipped. A line that is not an event, or whose event is over
    /// the size budget, is a dead letter; the lines after it go on.
    pub fn batch<'l>(
        &self,
        lines: impl Iterator<Item = (u64, &'l [u8])>,
        id: impl Fn(u64) -> Uuid,
        already: &HashSet<Uuid>,
    ) -> Converted {
        let mut out = Converted::default();
        let limit = self.budget.raw_record_max();
        for (offset, raw) in lines {
            let raw = trim_line(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let converted = std::str::from_utf8(raw)
                .map_err(|e| format!("line is not valid UTF-8 (bad byte at {})", e.valid_up_to()))
                .and_then(|line| {
                    convert_line(line, self.service, id(offset), self.redactor)
                        .map_err(|e| e.to_string())
                });
            let mut event = match converted {
                Ok(event) if already.contains(&event.event_id) => {
                    out.skipped += 1;
                    continue;
                }
                Ok(event) => event,
                Err(reason) => {
                    out.letters
                        .push(self.dead_letter(offset, raw, Cause::Invalid, &reason));
                    continue;
                }
            };
            if let Some(e) = self.file_entity {
                event.entities.push(e.clone());
            }
            match Publisher::encoded_len(&event) {
                Ok(size) if size <= limit => out.events.push(event),
                Ok(size) => out.letters.push(self.dead_letter(
                    offset,
                    raw,
                    Cause::TooLarge,
                    &format!("the line converts to an event of {size} bytes; at most {limit} are accepted (kafka.message_max_bytes less room for enrichment)"),
                )),
                Err(e) => out.letters.push(self.dead_letter(
                    offset,
                    raw,
                    Cause::Invalid,
                    &format!("cannot encode the event: {e}"),
                )),
            }
        }
        out
    }

    /// A dead letter for the line at `offset`, naming the file and the reason.
    pub fn dead_letter(&self, offset: u64, raw: &[u8], cause: Cause, reason: &str) -> DeadLetter {
        tracing::warn!(path = %self.path.display(), offset, %cause, "log line dead-lettered");
        let mut letter = audit_runtime::dead_letter::build(
            self.budget,
            Stage::Tailer,
            cause,
            &format!("{} at byte {offset}: {reason}", self.path.display()),
            None,
            Some(raw),
            None,
        );
        letter.source_offset = Some(offset as i64);
        letter
    }

    /// The dead letter of a line longer than [`MAX_LINE_BYTES`], keeping its first bytes.
    pub fn too_long(&self, offset: u64, head: &[u8]) -> DeadLetter {
        let reason = format!(
            "line is longer than {MAX_LINE_BYTES} bytes; its first {} bytes are kept",
            head.len()
        );
        self.dead_letter(offset, head, Cause::TooLarge, &reason)
    }
}

/// Where the line starting at `from` ends (past its newline, or at the end of the file), found
/// without holding the line in memory.
pub fn end_of_line(file: &mut std::fs::File, from: u64) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut end = from;
    file.seek(SeekFrom::Start(end))?;
    let mut chunk = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(end);
        }
        if let Some(i) = chunk[..n].iter().position(|&b| b == b'\n') {
            return Ok(end + i as u64 + 1);
        }
        end += n as u64;
    }
}

/// Where each line after `from` starts, up to `to` (else to the end of the next read chunk),
/// at most `max` of them, a last unterminated line included: the lines a batch in flight covered,
/// for a record of it that names only its bytes (written by an older tailer).
pub fn line_starts(
    file: &mut std::fs::File,
    from: u64,
    to: Option<u64>,
    max: usize,
) -> std::io::Result<Vec<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    let want = to.map_or(READ_CHUNK as u64, |to| to.saturating_sub(from));
    file.take(want.min(READ_CHUNK as u64))
        .read_to_end(&mut buf)?;
    Ok(split_lines(&buf, true)
        .into_iter()
        .map(|(start, _)| from + start as u64)
        .take(max)
        .collect())
}

/// `(start, end)` of each complete line in `buf`, `end` just past its newline; with `final_read`
/// a trailing unterminated line counts too.
pub fn split_lines(buf: &[u8], final_read: bool) -> Vec<(usize, usize)> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            lines.push((start, i + 1));
            start = i + 1;
        }
    }
    if final_read && start < buf.len() {
        lines.push((start, buf.len()));
    }
    lines
}

pub fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_complete_lines_only() {
        let buf = b"a\nbb\r\nccc";
        assert_eq!(split_lines(buf, false), vec![(0, 2), (2, 6)]);
        assert_eq!(split_lines(buf, true), vec![(0, 2), (2, 6), (6, 9)]);
        assert_eq!(trim_line(&buf[2..6]), b"bb");
        assert!(split_lines(b"no newline", false).is_empty());
    }

    #[test]
    fn line_starts_of_a_byte_range() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, b"a\nbb\nccc\ndd").unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        assert_eq!(
            line_starts(&mut f, 2, Some(9), usize::MAX).unwrap(),
            vec![2, 5]
        );
        assert_eq!(line_starts(&mut f, 0, None, 3).unwrap(), vec![0, 2, 5]);
        assert_eq!(line_starts(&mut f, 5, None, 10).unwrap(), vec![5, 9]);
    }

    #[test]
    fn bad_lines_are_dead_letters_and_the_rest_go_on() {
        let budget = SizeBudget::from(&audit_runtime::KafkaConfig::default());
        let redactor = Redactor::default();
        let entity = EntityRef::target("node-audit-log", "d/u/f/r/1.log", None);
        let c = Convert {
            service: "s",
            redactor: &redactor,
            budget: &budget,
            path: Path::new("/logs/nodes/d/u/f/r/1.log"),
            file_entity: Some(&entity),
        };
        let good =
            br#"{"timestamp":"2024-04-03T16:57:55+02:00","auditCode":"fileOpened","success":true}"#;
        let lines: Vec<(u64, &[u8])> = vec![
            (0, &good[..]),
            (100, b"{not json"),
            (200, b"\xff\xfe"),
            (300, b"   "),
            (400, &good[..]),
        ];
        let ids = |o: u64| Uuid::from_u128(u128::from(o) + 1);
        let already = HashSet::from([ids(400)]);
        let out = c.batch(lines.into_iter(), ids, &already);
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].event_id, ids(0));
        assert!(out.events[0].entities.contains(&entity));
        assert_eq!(out.skipped, 1);
        assert_eq!(out.letters.len(), 2);
        assert!(out.letters[0]
            .reason
            .contains("/logs/nodes/d/u/f/r/1.log at byte 100"));
        assert!(out.letters[1].reason.contains("not valid UTF-8"));
    }
}
