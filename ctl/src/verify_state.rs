//! `auditctl verify --state FILE`: the verifier's own witness of the newest checkpoint it
//! proved for each raw partition.
//!
//! ClickHouse alone cannot show a rollback to an older backup, or every partition's tail cut
//! at one moment: what remains is a consistent, shorter history. A checkpoint is signed, so
//! one the verifier has seen can be neither forged nor quietly dropped: the next run must find
//! each witnessed checkpoint still stored, byte for byte, and the links under it still giving
//! its root. The file holds only signed checkpoints (no event data, no secret); keep it where
//! a ClickHouse writer cannot write.

use anyhow::{Context, Result};
use audit_schemas::chain::checkpoint::Checkpoint;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const VERSION: u32 = 1;

/// The newest proven checkpoint per raw partition.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    version: u32,
    partitions: BTreeMap<i32, Checkpoint>,
}

impl State {
    /// Reads the state at `path`; a file that does not exist yet is an empty state (a first
    /// run). Every checkpoint in it must verify with a configured key: the file is a trust
    /// anchor, and one that does not verify is refused rather than believed.
    pub fn load(path: &Path, keys: &HashMap<String, ed25519_dalek::VerifyingKey>) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    version: VERSION,
                    ..Self::default()
                })
            }
            Err(e) => return Err(e).with_context(|| format!("--state {}", path.display())),
        };
        let state: Self = serde_json::from_slice(&text)
            .with_context(|| format!("--state {}: not a verify state file", path.display()))?;
        if state.version != VERSION {
            anyhow::bail!(
                "--state {}: version {} (this auditctl reads {VERSION})",
                path.display(),
                state.version
            );
        }
        for (partition, c) in &state.partitions {
            let verified = keys.get(&c.key_id).is_some_and(|k| c.verify(k));
            if !verified || c.raw_partition != *partition {
                anyhow::bail!(
                    "--state {}: the checkpoint kept for raw partition {partition} does not verify with a configured key (key {:?}): the file was changed, or its key is not configured",
                    path.display(),
                    c.key_id
                );
            }
        }
        Ok(state)
    }

    /// Writes the state to `path` atomically (a sibling temporary file renamed over it), so an
    /// interrupted run leaves the previous state.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).context("encoding the verify state")?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
    }

    /// The checkpoints the last runs proved, one per partition.
    pub fn witnessed(&self) -> impl Iterator<Item = &Checkpoint> {
        self.partitions.values()
    }

    /// Keeps, per partition, the later of what is kept and the newest of `proven`. Returns how
    /// many partitions moved on.
    pub fn advance<'a>(&mut self, proven: impl IntoIterator<Item = &'a Checkpoint>) -> usize {
        let mut moved = std::collections::BTreeSet::new();
        for c in proven {
            let newer = self
                .partitions
                .get(&c.raw_partition)
                .is_none_or(|kept| (c.signed_at, c.tree_size) > (kept.signed_at, kept.tree_size));
            if newer {
                self.partitions.insert(c.raw_partition, c.clone());
                moved.insert(c.raw_partition);
            }
        }
        moved.len()
    }

    pub fn len(&self) -> usize {
        self.partitions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_schemas::chain::checkpoint::Statement;
    use audit_schemas::chain::SigningKey;
    use base64::Engine;

    fn key() -> SigningKey {
        let seed = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        SigningKey::from_seed_b64("k1", &seed).unwrap()
    }

    fn keys() -> HashMap<String, ed25519_dalek::VerifyingKey> {
        let k = key();
        let public = audit_schemas::chain::public_key(&k.public_b64()).unwrap();
        HashMap::from([(k.id.clone(), public)])
    }

    fn checkpoint(partition: i32, size: u64, signed_at: i64) -> Checkpoint {
        Checkpoint::sign(
            Statement {
                raw_partition: partition,
                epoch: "e".into(),
                tree_size: size,
                root: "00".repeat(32),
                raw_offset_start: 0,
                raw_offset_end: size as i64,
                prev: audit_schemas::chain::checkpoint::no_previous(),
                signed_at,
            },
            &key(),
        )
    }

    #[test]
    fn only_later_checkpoints_move_a_partition_on() {
        let mut s = State::default();
        assert_eq!(s.advance(&[checkpoint(0, 5, 10), checkpoint(1, 2, 10)]), 2);
        assert_eq!(s.advance(&[checkpoint(0, 3, 5), checkpoint(1, 4, 20)]), 1);
        let kept: Vec<(i32, u64)> = s
            .witnessed()
            .map(|c| (c.raw_partition, c.tree_size))
            .collect();
        assert_eq!(kept, [(0, 5), (1, 4)]);
    }

    #[test]
    fn a_state_round_trips_and_a_changed_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("verify-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let _ = std::fs::remove_file(&path);
        assert_eq!(State::load(&path, &keys()).unwrap().len(), 0);
        let mut s = State::load(&path, &keys()).unwrap();
        s.advance(&[checkpoint(3, 7, 100)]);
        s.save(&path).unwrap();
        assert_eq!(State::load(&path, &keys()).unwrap(), s);

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"tree_size\": 7", "\"tree_size\": 6")).unwrap();
        let err = State::load(&path, &keys()).unwrap_err().to_string();
        assert!(err.contains("raw partition 3 does not verify"), "{err}");
        std::fs::write(&path, "{").unwrap();
        let err = format!("{:#}", State::load(&path, &keys()).unwrap_err());
        assert!(err.contains("not a verify state file"), "{err}");
        assert!(State::load(&path, &HashMap::new()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
