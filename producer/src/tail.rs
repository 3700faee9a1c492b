//! `audit-producer tail PATH`: follows a JSON-lines audit log (seed 003's `lae-audit.log`)
//! through daily rotation and publishes each line as a [`RawAuditEvent`](audit_schemas::RawAuditEvent).
//!
//! Rotation is rename-and-recreate: `lae-audit.log` becomes `lae-audit.log.2018-10-31` and a new
//! `lae-audit.log` starts. The tailer follows the file it has open (by device and inode) to its
//! end, then moves to the new one. Its position — file identity and byte offset — is saved
//! atomically after every batch the broker acknowledged, so a restart (even after `kill -9`)
//! resumes where it stopped, in the rotated file if rotation happened meanwhile.
//!
//! Each line's event id is derived from the file identity and the line's byte offset. Before a
//! batch is sent, the position file records it as pending together with the raw topic's high
//! watermarks and, for each line, its id and the raw partition its key goes to; after the
//! acknowledgement it records the new offset. A restart that finds a pending batch reads those
//! partitions from the watermarks, only until every id is found or up to the end offsets noted
//! when the recovery began, saving how far it got as it goes (see [`recovery`]), and re-publishes
//! only the lines whose ids are not there: a `kill -9` at any moment neither loses nor repeats a
//! line, and on a topic as busy as any the recovery ends. Lines that do not convert become dead
//! letters with the file, offset and reason; the tail goes on.
//!
//! What else the tailer survives:
//!
//! - **copytruncate** (the log copied to its dated name, then emptied in place): the tailer notices
//!   the file shrank or its first bytes changed, reads what it had not yet read from the copy, and
//!   starts the emptied file over under a new generation (part of each line's id, so the new
//!   lines at old offsets are new events);
//! - **several rotations while it was down**: after the file of its saved position it reads every
//!   rotated file written after it, oldest first, then the live one;
//! - **lines written after the rename**: it keeps reading a renamed file until it has not grown
//!   for `tail.rotation_grace_ms`, then takes its unterminated last line too and moves on; a
//!   partial last line of the live file is published only once its newline arrives;
//! - **a first start with dated files beside the log** (`tail.backfill = true`): it reads them,
//!   oldest first, before the live file;
//! - **a broker outage of any length**: publishing retries with backoff (checking what of the
//!   batch already arrived, as after a restart) instead of giving up.
//!
//! The position file is written through a new temporary file (never through an existing one or
//! a symlink) and refused when it is a symlink.

mod lines;
pub mod nodes;
mod position;
pub mod recovery;

use anyhow::{Context, Result};
use audit_runtime::ingest::Publisher;
use audit_runtime::KafkaConfig;
use audit_runtime::Shutdown;
use audit_schemas::redaction::Redactor;
pub use lines::MAX_LINE_BYTES;
use lines::{split_lines, Convert, DEAD_LETTER_PREFIX_BYTES, READ_CHUNK};
pub use position::{FileId, Pending, Position};
use rdkafka::producer::Producer;
use recovery::{Lines, Partitioner, Recovery, Scan};
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// Namespace of line event ids (UUID v5 of `dev:inode:offset`).
const LINE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a44_8d0e_4c7b_9b1e_51a2_7f3d_90c1);

pub struct TailOptions {
    pub service: String,
    pub position_file: PathBuf,
    pub batch_lines: usize,
    pub poll: Duration,
    /// How long a renamed file must stay unchanged before the tailer moves on.
    pub rotation_grace: Duration,
    /// On a first start (no position), read the rotated files beside the log first.
    pub backfill: bool,
    /// Stop once the file is read to its end instead of following it.
    pub once: bool,
    /// How long one attempt at recovering a batch in flight reads before it saves its progress
    /// and goes on in a new attempt (`tail.recovery_budget_ms`).
    pub recovery_budget: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TailStats {
    pub published: u64,
    pub dead_letters: u64,
    /// Lines of a pending batch found already on the broker after a restart.
    pub skipped: u64,
}

/// The file being read.
struct Current {
    file: File,
    path: PathBuf,
    id: FileId,
    offset: u64,
    /// How often the file was emptied in place (copytruncate) since the tailer met it: part of
    /// each line's id.
    generation: u64,
    /// The file's first bytes as last seen, to notice it was emptied and refilled.
    head: Vec<u8>,
}

/// How many of a file's first bytes identify its content.
const HEAD_BYTES: usize = 256;

pub struct Tailer<'a> {
    path: PathBuf,
    options: TailOptions,
    publisher: &'a Publisher,
    kafka: &'a KafkaConfig,
    redactor: &'a Redactor,
    stats: TailStats,
    /// Ids of a pending batch's lines that the broker already has (see the module docs).
    already_published: HashSet<Uuid>,
    /// The file and end offset of the batch `already_published` belongs to: forgotten once read
    /// past.
    already_until: Option<(FileId, u64)>,
    raw_partitions: Vec<i32>,
    /// How the producer places a line's key on a partition.
    partitioner: Partitioner,
}

impl<'a> Tailer<'a> {
    pub fn new(
        path: PathBuf,
        options: TailOptions,
        publisher: &'a Publisher,
        kafka: &'a KafkaConfig,
        redactor: &'a Redactor,
    ) -> Self {
        Self {
            path,
            options,
            publisher,
            kafka,
            redactor,
            stats: TailStats::default(),
            already_published: HashSet::new(),
            already_until: None,
            raw_partitions: Vec::new(),
            partitioner: Partitioner::from_properties(kafka.librdkafka_properties()),
        }
    }

    pub async fn run(mut self, shutdown: &Shutdown) -> Result<TailStats> {
        self.raw_partitions = self
            .until_broker_answers("reading the raw topic's partitions", || async {
                self.partitions()
            })
            .await?;
        let mut current = self.resume().await?;
        let progress = self.progress_bar(&current);
        let mut renamed_since: Option<(std::time::Instant, u64)> = None;
        loop {
            // Before every read: reading on from the old offset of a file emptied and refilled
            // would start mid-line and skip its new first lines.
            if self.emptied_in_place(&mut current).await? {
                renamed_since = None;
                continue;
            }
            let advanced = self.read_available(&mut current, false).await?;
            progress.set_position(current.offset);
            if advanced {
                continue;
            }
            // At the end of the file: has it been rotated away?
            if let Some(next) = self.next_file(&current)? {
                // The writer may append to the renamed file for a moment: move on once it has
                // not grown for the grace period.
                let len = current.file.metadata().map(|m| m.len()).unwrap_or(0);
                let (since, seen_len) =
                    *renamed_since.get_or_insert((std::time::Instant::now(), len));
                if len != seen_len {
                    renamed_since = Some((std::time::Instant::now(), len));
                } else if self.options.once || since.elapsed() >= self.options.rotation_grace {
                    // Including a last line the writer never terminated.
                    self.read_available(&mut current, true).await?;
                    tracing::info!(from = %current.path.display(), to = %next.path.display(), "log rotated; following the next file");
                    current = next;
                    renamed_since = None;
                    self.save(&current)?;
                    progress.set_length(current.file.metadata().map(|m| m.len()).unwrap_or(0));
                    progress.set_position(0);
                    continue;
                }
            }
            if (self.options.once && renamed_since.is_none()) || shutdown.is_triggered() {
                break;
            }
            tokio::select! {
                _ = shutdown.requested() => {}
                _ = tokio::time::sleep(self.options.poll) => {}
            }
        }
        progress.finish_and_clear();
        Ok(self.stats)
    }

    async fn until_broker_answers<T, Fut>(&self, what: &str, op: impl FnMut() -> Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        until_broker_answers(what, op).await
    }

    /// copytruncate: the file was copied to its dated name and emptied in place (it is shorter
    /// than what was read, or its first bytes changed). Reads what was not yet read from the
    /// copy, then starts the file over under a new generation.
    async fn emptied_in_place(&mut self, current: &mut Current) -> Result<bool> {
        let len = current.file.metadata().map(|m| m.len()).unwrap_or(0);
        let head = read_head(&mut current.file)?;
        let changed = !current.head.is_empty()
            && !head.starts_with(&current.head[..current.head.len().min(head.len())]);
        if len >= current.offset && !changed {
            if head.len() > current.head.len() {
                current.head = head;
            }
            return Ok(false);
        }
        tracing::warn!(path = %current.path.display(), offset = current.offset, len, "the log was emptied in place (copytruncate)");
        if let Some(mut copy) = self.copy_of(current)? {
            tracing::info!(copy = %copy.path.display(), from = current.offset, "reading the lines not yet read from the copy");
            copy.offset = current.offset;
            self.read_available(&mut copy, true).await?;
        } else {
            tracing::warn!(path = %current.path.display(), "no copy of the emptied log found; lines written just before it was emptied may be missing");
        }
        current.offset = 0;
        current.generation += 1;
        current.head = head;
        self.save(current)?;
        Ok(true)
    }

    /// The rotated sibling whose first bytes are the emptied file's and that is at least as long
    /// as what was read of it.
    fn copy_of(&self, current: &Current) -> Result<Option<Current>> {
        for candidate in self.rotated_files()? {
            if candidate.id == current.id {
                continue;
            }
            let mut c = candidate;
            let len = c.file.metadata().map(|m| m.len()).unwrap_or(0);
            if len >= current.offset
                && !current.head.is_empty()
                && read_head(&mut c.file)?.starts_with(&current.head)
            {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Rotated files beside the log (`<name>.<suffix>`, not compressed, not the position file),
    /// oldest first (by modification time, then name).
    fn rotated_files(&self) -> Result<Vec<Current>> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> =
            rotated_paths(&self.path, &self.options.position_file)?
                .into_iter()
                .filter_map(|p| {
                    std::fs::metadata(&p)
                        .and_then(|m| m.modified())
                        .ok()
                        .map(|t| (t, p))
                })
                .collect();
        files.sort();
        files.into_iter().map(|(_, p)| open(&p)).collect()
    }

    /// What to read after `current` once it is finished: the oldest rotated file modified after
    /// it, else the live file when `current` is not it; `None` while `current` is the live file.
    fn next_file(&self, current: &Current) -> Result<Option<Current>> {
        let live = match FileId::of_path(&self.path) {
            Ok(id) => Some(id),
            // Between the rename and the creation of the new file: wait for it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("checking {}", self.path.display())),
        };
        if live == Some(current.id) {
            return Ok(None);
        }
        let key = |c: &Current| {
            (
                c.file.metadata().and_then(|m| m.modified()).ok(),
                c.path.clone(),
            )
        };
        let here = key(current);
        for f in self.rotated_files()? {
            if f.id != current.id && Some(f.id) != live && key(&f) > here {
                return Ok(Some(f));
            }
        }
        match live {
            Some(_) => Ok(Some(open(&self.path)?)),
            None => Ok(None),
        }
    }

    fn partitions(&self) -> Result<Vec<i32>> {
        raw_partitions(self.publisher)
    }

    fn watermarks(&self) -> Result<Vec<(i32, i64)>> {
        watermarks(self.publisher, &self.raw_partitions)
    }

    /// Opens the file to read and the offset to start at, from the saved position.
    async fn resume(&mut self) -> Result<Current> {
        let saved = position::load(&self.options.position_file)?;
        let mut current = self.open_saved(saved.as_ref())?;
        if let Some((saved, pending)) = saved
            .as_ref()
            .and_then(|s| s.pending.as_ref().map(|p| (s, p)))
        {
            let lines = match &pending.lines {
                Some(lines) => lines.clone(),
                // Recorded by an older tailer: the batch's ids are those of its bytes' lines.
                None if current.id == saved.file => {
                    let starts = lines::line_starts(
                        &mut current.file,
                        saved.offset,
                        Some(pending.end),
                        usize::MAX,
                    )?;
                    let ids = starts.into_iter().map(|o| line_id(&current, o));
                    Lines::anywhere(ids, self.raw_partitions.len())
                }
                None => Lines::default(),
            };
            let mut scan = pending.scan.clone().unwrap_or_default();
            tracing::info!(
                lines = lines.ids.iter().map(|(_, ids)| ids.len()).sum::<usize>(),
                resumed = scan.read > 0,
                "a batch was in flight when the tailer stopped; looking for what of it reached the broker"
            );
            let position_file = &self.options.position_file;
            self.already_published = self
                .recovery()
                .run(&pending.watermarks, &lines, &mut scan, |scan| {
                    let mut progress = saved.clone();
                    if let Some(p) = progress.pending.as_mut() {
                        p.scan = Some(scan.clone());
                    }
                    position::save(position_file, &progress)
                })
                .await?;
            self.already_until = Some((saved.file, pending.end));
        }
        Ok(current)
    }

    /// The file of the saved position, at its offset (else the file to start with).
    fn open_saved(&self, saved: Option<&Position>) -> Result<Current> {
        let live = open(&self.path)?;
        let Some(saved) = saved else {
            if self.options.backfill {
                if let Some(oldest) = self.rotated_files()?.into_iter().find(|f| f.id != live.id) {
                    tracing::info!(path = %oldest.path.display(), "no saved position; backfilling the rotated files, oldest first");
                    return Ok(oldest);
                }
            }
            tracing::info!(path = %self.path.display(), "no saved position; reading the log from its beginning");
            return Ok(live);
        };
        if saved.file == live.id {
            let mut live = live;
            live.generation = saved.generation;
            return Ok(self.at_offset(live, saved.offset));
        }
        // Rotated while we were down: finish the old file first.
        if let Some(mut old) = find_rotated(&self.path, saved.file)? {
            tracing::info!(path = %old.path.display(), offset = saved.offset, "resuming in the rotated file");
            old.generation = saved.generation;
            return Ok(self.at_offset(old, saved.offset));
        }
        tracing::warn!(
            path = %self.path.display(),
            "the file of the saved position is gone; reading the current file from its beginning"
        );
        Ok(live)
    }

    fn recovery(&self) -> Recovery<'_> {
        Recovery {
            publisher: self.publisher,
            kafka: self.kafka,
            partitions: &self.raw_partitions,
            budget: self.options.recovery_budget,
        }
    }

    fn at_offset(&self, mut current: Current, offset: u64) -> Current {
        let len = current.file.metadata().map(|m| m.len()).unwrap_or(0);
        if offset > len {
            tracing::warn!(path = %current.path.display(), offset, len, "file is shorter than the saved position (truncated?); reading from its beginning");
            current.offset = 0;
        } else {
            current.offset = offset;
        }
        current
    }

    /// Publishes the complete lines after the current offset; `final_read` also takes a last
    /// unterminated line. Returns whether anything was consumed.
    async fn read_available(&mut self, current: &mut Current, final_read: bool) -> Result<bool> {
        let mut advanced = false;
        loop {
            let base = current.offset;
            current.file.seek(SeekFrom::Start(base))?;
            let mut buf = Vec::with_capacity(64 * 1024);
            (&mut current.file)
                .take(READ_CHUNK as u64)
                .read_to_end(&mut buf)?;
            if buf.is_empty() {
                return Ok(advanced);
            }
            let lines = split_lines(&buf, final_read);
            if lines.is_empty() {
                if buf.len() < READ_CHUNK {
                    return Ok(advanced);
                }
                // One line longer than we accept: dead-letter its head and skip past its end.
                let end = self
                    .skip_long_line(current, &buf[..DEAD_LETTER_PREFIX_BYTES])
                    .await?;
                current.offset = end;
                self.save(current)?;
                advanced = true;
                continue;
            }
            for batch in lines.chunks(self.options.batch_lines) {
                let end = base + batch[batch.len() - 1].1 as u64;
                self.publish_batch(current, base, &buf, batch, end).await?;
                if self
                    .already_until
                    .is_some_and(|(file, until)| file != current.id || end >= until)
                {
                    self.already_published.clear();
                    self.already_until = None;
                }
                current.offset = end;
                self.save(current)?;
            }
            advanced = true;
        }
    }

    /// Records the batch as pending (its lines' ids by partition, the raw topic's end offsets)
    /// and publishes it, waiting out a broker outage of any length: after each failure it learns
    /// what of the batch arrived (as after a restart) and sends the rest.
    async fn publish_batch(
        &mut self,
        current: &Current,
        base: u64,
        buf: &[u8],
        batch: &[(usize, usize)],
        end: u64,
    ) -> Result<()> {
        let mut converted = self.converter(current).batch(
            batch
                .iter()
                .map(|&(start, end)| (base + start as u64, &buf[start..end])),
            |offset| line_id(current, offset),
            &HashSet::new(),
        );
        let known = known_delivered(&mut converted, &self.already_published);
        self.stats.skipped += known.len() as u64;
        let watermarks = self
            .until_broker_answers("reading the raw topic's end offsets", || async {
                self.watermarks()
            })
            .await?;
        let lines = lines_of(
            &converted,
            &known,
            self.partitioner,
            self.raw_partitions.len(),
        );
        let mut pending = Pending {
            end,
            watermarks,
            lines: Some(lines.clone()),
            scan: Scan::knowing(known),
        };
        self.save_pending(current, Some(pending.clone()))?;
        let mut attempt = 1;
        while let Err(e) = publish_converted(self.publisher, &converted).await {
            let delay = audit_runtime::retry::RetryPolicy::default().delay(attempt);
            tracing::warn!(error = %format!("{e:#}"), attempt, retry_in_ms = delay.as_millis() as u64, "publishing log lines failed; retrying");
            tokio::time::sleep(delay).await;
            let mut scan = pending.scan.take().unwrap_or_default();
            let found = self
                .recovery()
                .run(&pending.watermarks, &lines, &mut scan, |scan| {
                    let progress = Pending {
                        scan: Some(scan.clone()),
                        ..pending.clone()
                    };
                    self.save_pending(current, Some(progress))
                })
                .await?;
            converted.events.retain(|e| !found.contains(&e.event_id));
            // The next attempt may add records past this recovery's end: a later recovery
            // notes its own.
            scan.until = None;
            pending.scan = Some(scan);
            self.save_pending(current, Some(pending.clone()))?;
            attempt += 1;
        }
        self.stats.published += converted.events.len() as u64;
        self.stats.dead_letters += converted.letters.len() as u64;
        Ok(())
    }

    fn converter<'c>(&'c self, current: &'c Current) -> Convert<'c> {
        Convert {
            service: &self.options.service,
            redactor: self.redactor,
            budget: self.publisher.budget(),
            path: &current.path,
            file_entity: None,
        }
    }

    async fn skip_long_line(&mut self, current: &mut Current, head: &[u8]) -> Result<u64> {
        let end = lines::end_of_line(&mut current.file, current.offset)?;
        let letter = self.converter(current).too_long(current.offset, head);
        self.publisher
            .dead_letter(None, &letter)
            .await
            .context("publishing a dead letter")?;
        self.stats.dead_letters += 1;
        Ok(end)
    }

    fn save(&self, current: &Current) -> Result<()> {
        self.save_pending(current, None)
    }

    fn save_pending(&self, current: &Current, pending: Option<Pending>) -> Result<()> {
        position::save(
            &self.options.position_file,
            &Position {
                path: current.path.clone(),
                file: current.id,
                offset: current.offset,
                generation: current.generation,
                pending,
            },
        )
    }

    fn progress_bar(&self, current: &Current) -> indicatif::ProgressBar {
        let len = current.file.metadata().map(|m| m.len()).unwrap_or(0);
        // Only a real backlog is worth a bar; indicatif draws nothing when stderr is no terminal.
        if len.saturating_sub(current.offset) < 8 * 1024 * 1024 {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(len);
        bar.set_position(current.offset);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "catching up {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(current.path.display().to_string());
        bar
    }
}

/// A line's event id: the same line always gets the same id (so a resend is recognised), and a
/// file emptied in place gives its new lines new ids.
fn line_id(current: &Current, offset: u64) -> Uuid {
    line_event_id(current.id, current.generation, offset)
}

/// The event id of the audit log's line at byte `offset` of the file `file` after it was emptied
/// in place `generation` times: how a line's event is found on the topics.
pub fn line_event_id(file: FileId, generation: u64, offset: u64) -> Uuid {
    let name = if generation == 0 {
        format!("{}:{}:{offset}", file.dev, file.ino)
    } else {
        format!("{}:{}:{generation}:{offset}", file.dev, file.ino)
    };
    Uuid::new_v5(&LINE_ID_NAMESPACE, name.as_bytes())
}

/// Takes out of `converted` the events whose ids are in `already` (delivered before a restart,
/// as a recovery found), returning those ids.
fn known_delivered(converted: &mut lines::Converted, already: &HashSet<Uuid>) -> Vec<Uuid> {
    let mut known = Vec::new();
    converted.events.retain(|e| {
        let delivered = already.contains(&e.event_id);
        if delivered {
            known.push(e.event_id);
        }
        !delivered
    });
    known
}

/// A batch's record for recovery: the ids of the events to send and of those known delivered,
/// by the partition each key goes to (the known ones with no partition: they are found already).
fn lines_of(
    converted: &lines::Converted,
    known: &[Uuid],
    partitioner: Partitioner,
    partitions: usize,
) -> Lines {
    let keys: Vec<(Uuid, String)> = converted
        .events
        .iter()
        .map(|e| (e.event_id, e.partition_key()))
        .chain(known.iter().map(|id| (*id, String::new())))
        .collect();
    Lines::group(
        keys.iter().map(|(id, key)| (*id, key.as_bytes())),
        partitioner,
        partitions,
    )
}

fn read_head(file: &mut File) -> Result<Vec<u8>> {
    file.seek(SeekFrom::Start(0))?;
    let mut head = Vec::with_capacity(HEAD_BYTES);
    file.take(HEAD_BYTES as u64).read_to_end(&mut head)?;
    Ok(head)
}

fn open(path: &Path) -> Result<Current> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let id = FileId::of_file(&file)
        .with_context(|| format!("reading metadata of {}", path.display()))?;
    let head = read_head(&mut file)?;
    Ok(Current {
        file,
        path: path.to_path_buf(),
        id,
        offset: 0,
        generation: 0,
        head,
    })
}

/// Paths beside `path` named `<name>.<suffix>`: its rotated files, less compressed ones and the
/// position file (and its temporary file).
fn rotated_paths(path: &Path, position_file: &Path) -> Result<Vec<PathBuf>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let nodes = node_state_file(position_file);
    let skip = [
        position_file.to_path_buf(),
        position::temporary(position_file),
        position::temporary(&nodes),
        nodes,
    ];
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let Some(n) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let rotated =
            n.len() > name.len() + 1 && n.starts_with(name) && n.as_bytes()[name.len()] == b'.';
        let compressed = [".gz", ".bz2", ".xz", ".zst", ".zip"]
            .iter()
            .any(|ext| n.ends_with(ext));
        let candidate = entry.path();
        let is_skipped = skip.iter().any(|s| {
            s == &candidate
                || s.file_name() == Some(std::ffi::OsStr::new(&n))
                    && s.parent() == candidate.parent()
        });
        if rotated && !compressed && !is_skipped && entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push(candidate);
        }
    }
    Ok(out)
}

/// Looks beside `path` for a rotated file (`<name>.<suffix>`) with the given identity.
fn find_rotated(path: &Path, id: FileId) -> Result<Option<Current>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let candidate = entry.path();
        let is_rotation = entry.file_name().to_str().is_some_and(|n| {
            n.len() > name.len() + 1 && n.starts_with(name) && n.as_bytes()[name.len()] == b'.'
        });
        if is_rotation && FileId::of_path(&candidate).is_ok_and(|c| c == id) {
            return Ok(Some(open(&candidate)?));
        }
    }
    Ok(None)
}

/// Where the node logs' progress is kept, beside the audit log's position.
pub fn node_state_file(position_file: &Path) -> PathBuf {
    let mut name = position_file.as_os_str().to_owned();
    name.push(".nodes");
    PathBuf::from(name)
}

/// Publishes a converted batch's events, then its dead letters.
async fn publish_converted(publisher: &Publisher, converted: &lines::Converted) -> Result<()> {
    publisher
        .publish(&converted.events)
        .await
        .context("publishing log lines")?;
    for letter in &converted.letters {
        publisher
            .dead_letter(None, letter)
            .await
            .context("publishing a dead letter")?;
    }
    Ok(())
}

/// Runs a broker request until it succeeds (the runtime's retry policy, no attempt limit): an
/// outage of any length is waited out.
async fn until_broker_answers<T, Fut>(what: &str, op: impl FnMut() -> Fut) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    audit_runtime::retry::RetryPolicy::default()
        .run(
            what,
            |_| audit_runtime::retry::ErrorClass::Retryable,
            |_| {},
            op,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn raw_partitions(publisher: &Publisher) -> Result<Vec<i32>> {
    let topic = publisher.raw_topic();
    let client = Producer::client(publisher.producer());
    Ok(audit_runtime::kafka::partitions(
        client,
        topic,
        Duration::from_secs(30),
    )?)
}

/// The raw topic's high watermark per partition.
fn watermarks(publisher: &Publisher, partitions: &[i32]) -> Result<Vec<(i32, i64)>> {
    let topic = publisher.raw_topic();
    let client = Producer::client(publisher.producer());
    let marks =
        audit_runtime::kafka::watermarks(client, topic, partitions, Duration::from_secs(30))
            .with_context(|| format!("reading the end offsets of {topic}"))?;
    Ok(marks.into_iter().map(|(p, _, high)| (p, high)).collect())
}
