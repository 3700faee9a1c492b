//! The tailer's saved position: which file (device and inode, which survive a rename) and how
//! far into it. Saved by write-to-temp, fsync, rename, so a crash leaves the old or the new
//! position, never a torn one.

use super::recovery::{Lines, Scan};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of_file(file: &File) -> std::io::Result<Self> {
        let m = file.metadata()?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    pub fn of_path(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// For people reading the file; the identity is what counts.
    pub path: PathBuf,
    pub file: FileId,
    /// Bytes of the file already published.
    pub offset: u64,
    /// How often the file was emptied in place (copytruncate); part of its lines' ids.
    #[serde(default)]
    pub generation: u64,
    /// A batch being published when this was saved: whether the broker got it is unknown until
    /// the raw topic is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// A batch in flight: the file bytes it covers and, for each partition of the raw topic, the
/// high watermark before it was sent. Whatever of it reached the broker is after those offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub end: u64,
    pub watermarks: Vec<(i32, i64)>,
    /// Its lines' event ids by the raw partition each goes to: what recovery looks for, and
    /// where. Absent in a record of an older tailer (the ids are then taken from the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Lines>,
    /// How far a recovery of this batch got (see [`super::recovery`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<Scan>,
}

/// The temporary file a new position is written to before it replaces the old one.
pub fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

pub fn load(path: &Path) -> Result<Option<Position>> {
    load_json(path)
}

/// Reads a JSON state file, refusing a symlink; `None` when there is none yet.
pub fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        anyhow::bail!(
            "position file {} is a symlink; refusing to follow it (replace it with a regular file or point tail.position_file elsewhere)",
            path.display()
        );
    }
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "position file {} is corrupt; delete it to re-read the log from the start",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading position file {}", path.display())),
    }
}

/// Writes through a temporary file created new (`O_CREAT | O_EXCL`, which never follows a
/// symlink), then renames it over the position file (a rename replaces a symlink, never its
/// target): nobody can redirect the write.
pub fn save(path: &Path, position: &Position) -> Result<()> {
    save_json(path, position)
}

/// [`save`] for any state.
pub fn save_json<T: Serialize>(path: &Path, state: &T) -> Result<()> {
    let tmp = temporary(path);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", tmp.display())),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    serde_json::to_writer(&mut file, state)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pos");
        assert_eq!(load(&p).unwrap(), None);
        let pos = Position {
            path: "x".into(),
            file: FileId { dev: 1, ino: 2 },
            offset: 3,
            generation: 0,
            pending: Some(Pending {
                end: 9,
                watermarks: vec![(0, 5)],
                lines: Some(Lines {
                    partitions: 1,
                    ids: vec![(0, vec![uuid::Uuid::from_u128(1)])],
                }),
                scan: Some(Scan {
                    next: vec![(0, 7)],
                    ..Scan::default()
                }),
            }),
        };
        save(&p, &pos).unwrap();
        assert_eq!(load(&p).unwrap(), Some(pos));
        // A record written by a tailer that knew neither the lines nor the scan still loads.
        std::fs::write(
            &p,
            br#"{"path":"x","file":{"dev":1,"ino":2},"offset":3,"pending":{"end":9,"watermarks":[[0,5]]}}"#,
        )
        .unwrap();
        let old = load(&p).unwrap().unwrap().pending.unwrap();
        assert_eq!((old.lines, old.scan), (None, None));
        std::fs::write(&p, b"{").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("corrupt"));
    }

    #[test]
    fn symlinks_are_neither_followed_nor_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let p = dir.path().join("pos");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("symlink"));
        // A planted temporary file pointing elsewhere is removed, not written through.
        std::os::unix::fs::symlink(&victim, temporary(&p)).unwrap();
        let pos = Position {
            path: "x".into(),
            file: FileId { dev: 1, ino: 2 },
            offset: 3,
            generation: 0,
            pending: None,
        };
        save(&p, &pos).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(load(&p).unwrap(), Some(pos));
    }
}
