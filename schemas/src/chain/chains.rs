//! The chains of the raw partitions one enricher owns: v1 hash links and, beside them, each
//! chain's v2 Merkle tree (a [`Frontier`]) and the raw offsets it answers for, which is what a
//! checkpoint signs.

use super::content::Salt;
use super::merkle::{self, Frontier};
use super::{genesis, leaf, link_hash, ChainLink, Hex};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Chains {
    heads: HashMap<i32, Head>,
}

#[derive(Debug, Clone)]
struct Head {
    epoch: String,
    next_seq: i64,
    hash: Hex,
    tree: Tree,
    /// The tree before the last link, so that [`Chains::unlink`] can take that link back.
    before_last: Option<Tree>,
}

/// A chain's Merkle tree and the raw offsets its links came from.
#[derive(Debug, Clone, Default)]
struct Tree {
    frontier: Frontier,
    /// (lowest, highest) raw offset linked.
    offsets: Option<(i64, i64)>,
}

/// A chain's state for a digest or checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub raw_partition: i32,
    pub epoch: String,
    /// The last link's seq; -1 for a chain without links yet.
    pub seq: i64,
    /// The last link's v1 hash ([`genesis`] without links).
    pub head: Hex,
    /// Links so far (`seq + 1`) and the hex Merkle root of their leaves.
    pub tree_size: u64,
    pub root: Hex,
    /// The tree's [`merkle::Frontier::peaks`]: stored beside the checkpoint so that a verifier
    /// can go on from it once retention removed the links below.
    pub peaks: Vec<merkle::Hash>,
    /// `raw_offset_start..raw_offset_end` spans the raw offsets linked; (-1, -1) before any.
    pub raw_offset_start: i64,
    pub raw_offset_end: i64,
}

impl Head {
    fn new() -> Self {
        Self {
            epoch: uuid::Uuid::new_v4().to_string(),
            next_seq: 0,
            hash: genesis(),
            tree: Tree::default(),
            before_last: None,
        }
    }
}

impl Chains {
    /// Starts `partition`'s chain (a new epoch) unless it has one; true when it started one.
    pub fn start(&mut self, partition: i32) -> bool {
        let mut started = false;
        self.heads.entry(partition).or_insert_with(|| {
            started = true;
            Head::new()
        });
        started
    }

    /// Whether `partition` has a chain (started or linked).
    pub fn has(&self, partition: i32) -> bool {
        self.heads.contains_key(&partition)
    }

    /// The next link of `partition`'s chain for the event at `raw_offset`: `content` is its v1
    /// content digest, `v2` its v2 content digest ([`super::content`]) made with `salt`. A
    /// partition without a chain starts one.
    pub fn link(
        &mut self,
        partition: i32,
        raw_offset: i64,
        content: &[u8; 32],
        v2: &[u8; 32],
        salt: &Salt,
    ) -> ChainLink {
        let head = self.heads.entry(partition).or_insert_with(Head::new);
        let seq = head.next_seq;
        let hash = link_hash(partition, &head.epoch, seq, &head.hash, content);
        head.before_last = Some(head.tree.clone());
        head.tree
            .frontier
            .push(leaf::link_leaf(partition, &head.epoch, seq, v2));
        if raw_offset >= 0 {
            head.tree.offsets = Some(match head.tree.offsets {
                Some((lo, hi)) => (lo.min(raw_offset), hi.max(raw_offset)),
                None => (raw_offset, raw_offset),
            });
        }
        let link = ChainLink {
            epoch: head.epoch.clone(),
            seq,
            prev: std::mem::replace(&mut head.hash, hash.clone()),
            hash,
            salt: Some(hex::encode(salt)),
        };
        head.next_seq += 1;
        link
    }

    /// Takes back `link`, the partition's last (its event was not published after all).
    pub fn unlink(&mut self, partition: i32, link: &ChainLink) {
        if let Some(head) = self.heads.get_mut(&partition) {
            if head.hash == link.hash && head.next_seq == link.seq + 1 {
                if let Some(tree) = head.before_last.take() {
                    head.tree = tree;
                    head.hash = link.prev.clone();
                    head.next_seq = link.seq;
                }
            }
        }
    }

    /// The partition's current head, if it has a chain (with or without links).
    pub fn head(&self, partition: i32) -> Option<ChainHead> {
        let h = self.heads.get(&partition)?;
        let (start, end) = h.tree.offsets.map_or((-1, -1), |(lo, hi)| (lo, hi + 1));
        Some(ChainHead {
            raw_partition: partition,
            epoch: h.epoch.clone(),
            seq: h.next_seq - 1,
            head: h.hash.clone(),
            tree_size: h.tree.frontier.size(),
            root: hex::encode(h.tree.frontier.root()),
            peaks: h.tree.frontier.peaks(),
            raw_offset_start: start,
            raw_offset_end: end,
        })
    }

    /// The head of every chain.
    pub fn heads(&self) -> impl Iterator<Item = ChainHead> + '_ {
        self.heads.keys().filter_map(|&p| self.head(p))
    }

    /// Partitions no longer owned: their next owner starts new epochs.
    pub fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.heads.remove(p);
        }
    }
}

/// The hex Merkle root of an empty chain.
pub fn empty_root() -> Hex {
    hex::encode(merkle::empty_root())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_chain_and_a_new_partition_starts_an_epoch() {
        let mut chains = Chains::default();
        let a = chains.link(0, 5, &[1; 32], &[1; 32], &[0; 32]);
        let b = chains.link(0, 6, &[2; 32], &[2; 32], &[0; 32]);
        assert_eq!((a.seq, b.seq), (0, 1));
        assert_eq!(a.prev, genesis());
        assert_eq!(b.prev, a.hash);
        assert_eq!(b.hash, link_hash(0, &b.epoch, 1, &a.hash, &[2; 32]));
        assert_eq!(a.salt.as_deref(), Some("00".repeat(32).as_str()));
        let other = chains.link(1, 0, &[1; 32], &[1; 32], &[0; 32]);
        assert_ne!(other.epoch, a.epoch);
        chains.forget(&[0]);
        let again = chains.link(0, 7, &[3; 32], &[3; 32], &[0; 32]);
        assert_ne!(again.epoch, a.epoch);
        assert_eq!(again.seq, 0);
    }

    #[test]
    fn the_head_carries_the_merkle_root_of_its_leaves_and_unlink_restores_it() {
        let mut chains = Chains::default();
        assert!(chains.start(3));
        assert!(!chains.start(3));
        let empty = chains.head(3).unwrap();
        assert_eq!((empty.seq, empty.tree_size), (-1, 0));
        assert_eq!(empty.root, empty_root());
        assert_eq!((empty.raw_offset_start, empty.raw_offset_end), (-1, -1));
        let a = chains.link(3, 10, &[1; 32], &[7; 32], &[0; 32]);
        let one = chains.head(3).unwrap();
        let b = chains.link(3, 9, &[2; 32], &[8; 32], &[0; 32]);
        let two = chains.head(3).unwrap();
        let leaves = [
            leaf::link_leaf(3, &a.epoch, 0, &[7; 32]),
            leaf::link_leaf(3, &a.epoch, 1, &[8; 32]),
        ];
        assert_eq!(two.root, hex::encode(merkle::root(&leaves)));
        assert_eq!((two.tree_size, two.seq), (2, 1));
        assert_eq!((two.raw_offset_start, two.raw_offset_end), (9, 11));
        chains.unlink(3, &b);
        assert_eq!(chains.head(3).unwrap(), one);
        // A link that is not the last is not taken back.
        chains.unlink(3, &b);
        assert_eq!(chains.head(3).unwrap(), one);
    }
}
