//! The node audit logs of a site: `<logs>/nodes/<Date>/<User>/<DataFlow>/<runId>/<id>.log`, one
//! file per node run that touched files (seed `003_5c27bf3fc2b6b713.txt`), each named by the
//! `auditLog` argument of its `nodeProcessed` entry in `lae-audit.log`.
//!
//! Every `tail.node_scan_ms` the tree is listed; each `.log` file (regular files only: a symlink
//! planted in the tree is never followed) is read from its own saved offset. No file is held
//! open between reads, so open files stay at one however many runs write. A file that has not
//! grown for `tail.node_idle_ms` is finished: its unterminated last line is taken too, and it is
//! remembered by identity and size and only looked at again if it grows. A file that disappears
//! (archived by the administrator) is forgotten.
//!
//! Each line's event names its file as a `node-audit-log` entity (its path below `nodes`), the
//! id the `nodeProcessed` entry links to, so the entry and the file's lines are found together.
//! Line ids come from the file's identity and the line's offset; the batch in flight is recorded
//! with the raw topic's watermarks and its lines' ids by partition before it is sent, and
//! recovered as the audit log's tailer does (see [`super::recovery`]), so a `kill -9` at any
//! moment neither loses nor repeats a line.

use super::lines::{split_lines, Convert, Converted, DEAD_LETTER_PREFIX_BYTES, READ_CHUNK};
use super::position::{load_json, save_json, FileId};
use super::recovery::{Lines, Partitioner, Recovery, Scan};
use super::{
    known_delivered, lines_of, publish_converted, raw_partitions, until_broker_answers, watermarks,
};
use anyhow::{Context, Result};
use audit_runtime::ingest::Publisher;
use audit_runtime::{KafkaConfig, Shutdown};
use audit_schemas::audit_log::node_log_entity;
use audit_schemas::redaction::Redactor;
use audit_schemas::EntityRole;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Namespace of node log line ids (UUID v5 of `node:dev:inode:offset`).
const NODE_LINE_NAMESPACE: Uuid = Uuid::from_u128(0x2b7e_51c0_93d4_4e8a_a1f6_0c3d_58e9_7b14);
/// Deepest a node log sits below `nodes` (`Date/User/DataFlow/runId/id.log`), with room for a
/// data flow name holding a slash.
const MAX_DEPTH: usize = 8;

pub struct NodeOptions {
    pub service: String,
    /// Where the files' offsets are kept.
    pub state_file: PathBuf,
    pub batch_lines: usize,
    /// How often the tree is listed.
    pub scan: Duration,
    /// A file unchanged this long is finished.
    pub idle: Duration,
    /// Read what is there, then stop.
    pub once: bool,
    /// How long one attempt at recovering a batch in flight reads before it saves its progress
    /// and goes on in a new attempt (`tail.recovery_budget_ms`).
    pub recovery_budget: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeStats {
    pub files: u64,
    pub published: u64,
    pub dead_letters: u64,
    pub skipped: u64,
}

/// What is known of one node log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Known {
    file: FileId,
    /// Bytes read and published.
    offset: u64,
    /// Unchanged for the idle time and read to its very end.
    finished: bool,
    /// The size last seen: a change restarts the idle time (the offset stops short of an
    /// unterminated last line, so it cannot tell).
    #[serde(default)]
    seen: u64,
    /// When it last grew (not saved: a restart gives every file a new idle time).
    #[serde(skip)]
    grew_at: Option<Instant>,
}

/// The saved state: each file's progress by its path below `nodes`, and the batch in flight.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    files: BTreeMap<String, Known>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Pending>,
}

/// A batch being published: the file and the raw topic's end offsets before it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    path: String,
    watermarks: Vec<(i32, i64)>,
    /// Its lines' ids by partition (absent in a record of an older tailer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lines: Option<Lines>,
    /// How far a recovery of it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scan: Option<Scan>,
}

pub struct NodeLogs<'a> {
    root: PathBuf,
    options: NodeOptions,
    publisher: &'a Publisher,
    kafka: &'a KafkaConfig,
    redactor: &'a Redactor,
    state: State,
    stats: NodeStats,
    raw_partitions: Vec<i32>,
    /// Ids of the pending batch's lines the broker already has.
    already_published: HashSet<Uuid>,
    /// Logs that could not be opened, warned about once.
    unreadable: HashSet<String>,
    partitioner: Partitioner,
}

impl<'a> NodeLogs<'a> {
    /// Follows the node logs under `root` (the site's `logs/nodes`).
    pub fn new(
        root: PathBuf,
        options: NodeOptions,
        publisher: &'a Publisher,
        kafka: &'a KafkaConfig,
        redactor: &'a Redactor,
    ) -> Self {
        Self {
            root,
            options,
            publisher,
            kafka,
            redactor,
            state: State::default(),
            stats: NodeStats::default(),
            raw_partitions: Vec::new(),
            already_published: HashSet::new(),
            unreadable: HashSet::new(),
            partitioner: Partitioner::from_properties(kafka.librdkafka_properties()),
        }
    }

    pub async fn run(mut self, shutdown: &Shutdown) -> Result<NodeStats> {
        self.raw_partitions =
            until_broker_answers("reading the raw topic's partitions", || async {
                raw_partitions(self.publisher)
            })
            .await?;
        self.state = load_json(&self.options.state_file)?.unwrap_or_default();
        if let Some(p) = self.state.pending.clone() {
            let lines = match &p.lines {
                Some(lines) => lines.clone(),
                None => self.legacy_lines(&p.path),
            };
            let mut scan = p.scan.clone().unwrap_or_default();
            let mut progress = self.state.clone();
            let state_file = self.options.state_file.clone();
            self.already_published = self
                .recovery()
                .run(&p.watermarks, &lines, &mut scan, |scan| {
                    if let Some(p) = progress.pending.as_mut() {
                        p.scan = Some(scan.clone());
                    }
                    save_json(&state_file, &progress)
                })
                .await?;
            if let Some(pending) = self.state.pending.as_mut() {
                pending.scan = Some(scan);
            }
            tracing::info!(path = %p.path, found = self.already_published.len(), "a node log batch was in flight when the tailer stopped; its lines already on the broker will not be sent again");
        }
        loop {
            let idle_pass = self.scan_once().await?;
            if (self.options.once && idle_pass) || shutdown.is_triggered() {
                break;
            }
            tokio::select! {
                _ = shutdown.requested() => {}
                _ = tokio::time::sleep(self.options.scan) => {}
            }
        }
        self.stats.files = self.state.files.len() as u64;
        Ok(self.stats)
    }

    fn recovery(&self) -> Recovery<'_> {
        Recovery {
            publisher: self.publisher,
            kafka: self.kafka,
            partitions: &self.raw_partitions,
            budget: self.options.recovery_budget,
        }
    }

    /// The ids a batch recorded by an older tailer (which named only its file) can have: those
    /// of the lines a batch read from the file's offset holds.
    fn legacy_lines(&self, rel: &str) -> Lines {
        let count = self.raw_partitions.len();
        let Some(known) = self.state.files.get(rel) else {
            return Lines::default();
        };
        let path = self.root.join(rel);
        let starts = File::open(&path)
            .ok()
            .filter(|f| FileId::of_file(f).is_ok_and(|id| id == known.file))
            .and_then(|mut f| {
                super::lines::line_starts(&mut f, known.offset, None, self.options.batch_lines).ok()
            })
            .unwrap_or_default();
        Lines::anywhere(starts.into_iter().map(|o| line_id(known.file, o)), count)
    }

    /// One pass over the tree; returns whether nothing was left to read.
    async fn scan_once(&mut self) -> Result<bool> {
        let found = list_logs(&self.root)?;
        let present: HashSet<&String> = found.iter().map(|(rel, _)| rel).collect();
        let before = self.state.files.len();
        self.state.files.retain(|rel, _| present.contains(rel));
        if self.state.files.len() != before {
            tracing::info!(
                forgotten = before - self.state.files.len(),
                "node logs gone from the tree are forgotten"
            );
            self.save()?;
        }
        let mut all_read = true;
        for (rel, path) in found {
            if !self.follow(&rel, &path).await? {
                all_read = false;
            }
        }
        metrics::gauge!("audit_tail_node_logs_known").set(self.state.files.len() as f64);
        Ok(all_read)
    }

    /// Reads what is new in one file; returns whether it is read to its end (and, when
    /// following, whether it is finished).
    async fn follow(&mut self, rel: &str, path: &Path) -> Result<bool> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_file() => m,
            // Gone since the listing, or not a regular file: nothing to read.
            _ => return Ok(true),
        };
        let Ok(id) = FileId::of_path(path) else {
            // Gone since the listing.
            return Ok(true);
        };
        let len = meta.len();
        let now = Instant::now();
        let known = self.state.files.entry(rel.to_string()).or_insert(Known {
            file: id,
            offset: 0,
            finished: false,
            seen: 0,
            grew_at: Some(now),
        });
        if known.file != id || len < known.offset {
            tracing::warn!(path = %path.display(), "node log replaced or truncated; reading it from its beginning");
            *known = Known {
                file: id,
                offset: 0,
                finished: false,
                seen: 0,
                grew_at: Some(now),
            };
        }
        if known.finished && len == known.offset {
            return Ok(true);
        }
        if len != known.seen {
            known.seen = len;
            known.finished = false;
            known.grew_at = Some(now);
        }
        let grew_at = *known.grew_at.get_or_insert(now);
        let idle = now.duration_since(grew_at) >= self.options.idle;
        let final_read = idle || self.options.once;
        self.read(rel, path, id, final_read).await?;
        let known = self
            .state
            .files
            .get_mut(rel)
            .context("node log state lost")?;
        let newly_finished = final_read && known.offset >= len && !known.finished;
        if newly_finished {
            known.finished = true;
            tracing::debug!(path = %path.display(), bytes = known.offset, "node log finished");
        }
        let finished = known.finished;
        if newly_finished {
            self.save()?;
        }
        Ok(self.options.once || finished)
    }

    /// Publishes the lines after the file's offset (with `final_read`, an unterminated last line
    /// too), batch by batch, saving the offset after each acknowledged batch.
    async fn read(&mut self, rel: &str, path: &Path, id: FileId, final_read: bool) -> Result<()> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                // Gone since the look, or not readable by the tailer: the other logs go on, and
                // this one is tried again at the next pass (said once).
                if self.unreadable.insert(rel.to_string()) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open a node log; skipping it until it can be read");
                }
                return Ok(());
            }
        };
        self.unreadable.remove(rel);
        if FileId::of_file(&file)? != id {
            // Replaced between the look and the open: the next pass sees the new file.
            return Ok(());
        }
        let entity = node_log_entity(rel, EntityRole::Container);
        let service = self.options.service.clone();
        let (publisher, redactor) = (self.publisher, self.redactor);
        loop {
            let base = self.offset(rel);
            file.seek(SeekFrom::Start(base))?;
            let mut buf = Vec::with_capacity(64 * 1024);
            (&mut file).take(READ_CHUNK as u64).read_to_end(&mut buf)?;
            if buf.is_empty() {
                return Ok(());
            }
            let convert = Convert {
                service: &service,
                redactor,
                budget: publisher.budget(),
                path,
                file_entity: entity.as_ref(),
            };
            let lines = split_lines(&buf, final_read);
            if lines.is_empty() {
                if buf.len() < READ_CHUNK {
                    return Ok(());
                }
                let letter = convert.too_long(base, &buf[..DEAD_LETTER_PREFIX_BYTES]);
                let end = super::lines::end_of_line(&mut file, base)?;
                self.publisher
                    .dead_letter(None, &letter)
                    .await
                    .context("publishing a dead letter")?;
                self.stats.dead_letters += 1;
                self.set_offset(rel, end)?;
                continue;
            }
            for batch in lines.chunks(self.options.batch_lines.max(1)) {
                let end = base + batch[batch.len() - 1].1 as u64;
                let converted = convert.batch(
                    batch.iter().map(|&(s, e)| (base + s as u64, &buf[s..e])),
                    |offset| line_id(id, offset),
                    &HashSet::new(),
                );
                self.publish(rel, converted).await?;
                // `already_published` is kept (one batch of ids at most): the pending batch's
                // file may come later in the listing than the files read first.
                self.set_offset(rel, end)?;
            }
        }
    }

    /// Records the batch as pending with the raw topic's end offsets and its lines' ids by
    /// partition, then publishes it, waiting out a broker outage (learning what of the batch
    /// arrived, as after a restart).
    async fn publish(&mut self, rel: &str, mut converted: Converted) -> Result<()> {
        let known = known_delivered(&mut converted, &self.already_published);
        self.stats.skipped += known.len() as u64;
        let marks = until_broker_answers("reading the raw topic's end offsets", || async {
            watermarks(self.publisher, &self.raw_partitions)
        })
        .await?;
        let lines = lines_of(
            &converted,
            &known,
            self.partitioner,
            self.raw_partitions.len(),
        );
        self.state.pending = Some(Pending {
            path: rel.to_string(),
            watermarks: marks.clone(),
            lines: Some(lines.clone()),
            scan: Scan::knowing(known),
        });
        self.save()?;
        let mut attempt = 1;
        while let Err(e) = publish_converted(self.publisher, &converted).await {
            let delay = audit_runtime::retry::RetryPolicy::default().delay(attempt);
            tracing::warn!(error = %format!("{e:#}"), attempt, retry_in_ms = delay.as_millis() as u64, "publishing node log lines failed; retrying");
            tokio::time::sleep(delay).await;
            let mut scan = self
                .state
                .pending
                .as_mut()
                .and_then(|p| p.scan.take())
                .unwrap_or_default();
            let mut progress = self.state.clone();
            let state_file = self.options.state_file.clone();
            let found = self
                .recovery()
                .run(&marks, &lines, &mut scan, |scan| {
                    if let Some(p) = progress.pending.as_mut() {
                        p.scan = Some(scan.clone());
                    }
                    save_json(&state_file, &progress)
                })
                .await?;
            converted.events.retain(|e| !found.contains(&e.event_id));
            // The next attempt may add records past this recovery's end.
            scan.until = None;
            if let Some(p) = self.state.pending.as_mut() {
                p.scan = Some(scan);
            }
            self.save()?;
            attempt += 1;
        }
        self.stats.published += converted.events.len() as u64;
        self.stats.dead_letters += converted.letters.len() as u64;
        self.state.pending = None;
        Ok(())
    }

    fn offset(&self, rel: &str) -> u64 {
        self.state.files.get(rel).map_or(0, |k| k.offset)
    }

    fn set_offset(&mut self, rel: &str, offset: u64) -> Result<()> {
        if let Some(k) = self.state.files.get_mut(rel) {
            k.offset = offset;
        }
        self.save()
    }

    fn save(&self) -> Result<()> {
        save_json(&self.options.state_file, &self.state)
    }
}

/// A line's event id: the same line of the same file always gets the same id.
fn line_id(file: FileId, offset: u64) -> Uuid {
    Uuid::new_v5(
        &NODE_LINE_NAMESPACE,
        format!("node:{}:{}:{offset}", file.dev, file.ino).as_bytes(),
    )
}

/// Every `.log` regular file below `root` (symlinks neither followed nor read), by its path
/// relative to `root` with `/` separators, sorted (dates first: oldest runs first).
fn list_logs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // No node logs yet, or a run folder removed while listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() && depth < MAX_DEPTH {
                dirs.push((path, depth + 1));
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "log") {
                let Ok(rel) = path.strip_prefix(root) else {
                    continue;
                };
                let Some(rel) = rel.to_str() else {
                    tracing::warn!(path = %path.display(), "node log path is not UTF-8; skipped");
                    continue;
                };
                out.push((rel.replace('\\', "/"), path));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_log_files_below_the_root_and_never_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir
            .path()
            .join("2024-04-03/admin/Untitled Data Flow/aaf03abb");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("1.log"), b"x\n").unwrap();
        std::fs::write(run.join("notes.txt"), b"x\n").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root:x\n").unwrap();
        std::os::unix::fs::symlink(&secret, run.join("2.log")).unwrap();
        let got: Vec<String> = list_logs(dir.path())
            .unwrap()
            .into_iter()
            .map(|(rel, _)| rel)
            .collect();
        assert_eq!(
            got,
            vec!["2024-04-03/admin/Untitled Data Flow/aaf03abb/1.log"]
        );
        assert!(list_logs(&dir.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn line_ids_are_stable_per_file_and_offset() {
        let a = FileId { dev: 1, ino: 2 };
        assert_eq!(line_id(a, 10), line_id(a, 10));
        assert_ne!(line_id(a, 10), line_id(a, 11));
        assert_ne!(line_id(a, 10), line_id(FileId { dev: 1, ino: 3 }, 10));
    }
}
