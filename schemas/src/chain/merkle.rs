//! Merkle trees as RFC 9162 (Certificate Transparency v2) defines them: SHA-256, leaves hashed
//! as `H(0x00 ‖ leaf)` and nodes as `H(0x01 ‖ left ‖ right)`, so no leaf can pass for a node.
//!
//! A checkpoint signs the root of the tree over one chain's links (their [`leaf_hash`]es in
//! seq order). [`Frontier`] keeps what the enricher needs to extend the root as links are made
//! (one hash per level). Inclusion and consistency proofs (RFC 9162 §2.1.3 and §2.1.4) are made
//! from any [`Subtrees`] source: the leaf hashes in memory, or a simulated tree in benchmarks.

use sha2::{Digest as _, Sha256};

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `H(0x00 ‖ data)`: a leaf's hash from its leaf data.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `H(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n > 1): where RFC 9162 splits a tree.
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash of `leaves` (leaf hashes).
pub fn root(leaves: &[Hash]) -> Hash {
    let mut f = Frontier::default();
    for l in leaves {
        f.push(*l);
    }
    f.root()
}

/// The compact state of a growing tree: the roots of its perfect subtrees, largest first.
/// Appending is O(log n) and memory is one hash per level, so an enricher keeps one per chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, root) of each perfect subtree, left to right; heights strictly decrease.
    peaks: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.peaks.last() {
            if h != node.0 {
                break;
            }
            self.peaks.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// The roots of the perfect subtrees, largest first: with [`Frontier::size`], all it
    /// takes to extend the tree, so a verifier can go on past links that retention removed.
    pub fn peaks(&self) -> Vec<Hash> {
        self.peaks.iter().map(|(_, h)| *h).collect()
    }

    /// The frontier of a tree of `size` leaves from its [`Frontier::peaks`]; `None` when
    /// their number does not fit `size` (one peak per set bit).
    ///
    /// Nothing here says the peaks are the tree's: a caller holding a trusted root checks
    /// `root()` against it, which collision resistance makes sufficient.
    pub fn from_peaks(size: u64, peaks: &[Hash]) -> Option<Self> {
        if peaks.len() != size.count_ones() as usize {
            return None;
        }
        let heights = (0..64u32).rev().filter(|h| size & (1u64 << h) != 0);
        Some(Self {
            size,
            peaks: heights.zip(peaks.iter().copied()).collect(),
        })
    }

    /// The tree's root: the peaks folded right to left, which is how RFC 9162 splits.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = peaks.next() else {
            return empty_root();
        };
        for (_, left) in peaks {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Subtree hashes of a tree of `size()` leaves: all a proof needs.
pub trait Subtrees {
    fn size(&self) -> u64;
    /// The Merkle tree hash of leaves `start..end` (0 <= start < end <= size).
    fn subtree(&self, start: u64, end: u64) -> Hash;
}

/// A tree held as its leaf hashes.
impl Subtrees for [Hash] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn subtree(&self, start: u64, end: u64) -> Hash {
        root(&self[start as usize..end as usize])
    }
}

impl Subtrees for Vec<Hash> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn subtree(&self, start: u64, end: u64) -> Hash {
        self.as_slice().subtree(start, end)
    }
}

/// The audit path of leaf `index` in the first `size` leaves (RFC 9162 §2.1.3.1), leaf side
/// first.
pub fn inclusion_path(tree: &(impl Subtrees + ?Sized), index: u64, size: u64) -> Vec<Hash> {
    fn path(t: &(impl Subtrees + ?Sized), m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            path(t, m, start, start + k, out);
            out.push(t.subtree(start + k, end));
        } else {
            path(t, m - k, start + k, end, out);
            out.push(t.subtree(start, start + k));
        }
    }
    let mut out = Vec::new();
    if index < size && size <= tree.size() {
        path(tree, index, 0, size, &mut out);
    }
    out
}

/// Whether `path` proves `leaf` is leaf `index` of the tree of `size` leaves with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// The proof that the tree of `new` leaves extends the tree of its first `old` leaves
/// (RFC 9162 §2.1.4.1).
pub fn consistency_proof(tree: &(impl Subtrees + ?Sized), old: u64, new: u64) -> Vec<Hash> {
    fn sub(
        t: &(impl Subtrees + ?Sized),
        m: u64,
        start: u64,
        end: u64,
        whole: bool,
        out: &mut Vec<Hash>,
    ) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(t.subtree(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            sub(t, m, start, start + k, whole, out);
            out.push(t.subtree(start + k, end));
        } else {
            sub(t, m - k, start + k, end, false, out);
            out.push(t.subtree(start, start + k));
        }
    }
    let mut out = Vec::new();
    if 0 < old && old < new && new <= tree.size() {
        sub(tree, old, 0, new, true, &mut out);
    }
    out
}

/// Whether `proof` shows the tree of `new` leaves with `new_root` extends the one of `old`
/// leaves with `old_root` (RFC 9162 §2.1.4.2). Equal sizes need equal roots and no proof.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        // The empty tree is extended by every tree.
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut proof: Vec<Hash> = proof.to_vec();
    if old.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *old_root && sr == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// MTH exactly as RFC 9162 §2.1.1 writes it, recursively.
    fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    #[test]
    fn the_frontier_gives_the_rfc_root_at_every_size() {
        let all = leaves(70);
        let mut f = Frontier::default();
        assert_eq!(f.root(), empty_root());
        for (i, l) in all.iter().enumerate() {
            f.push(*l);
            assert_eq!(f.root(), mth(&all[..=i]), "size {}", i + 1);
        }
        assert!(f.peaks.len() <= 7);
    }

    #[test]
    fn a_tree_resumed_from_its_peaks_grows_to_the_same_roots() {
        let all = leaves(70);
        for cut in 0..40usize {
            let mut f = Frontier::default();
            all[..cut].iter().for_each(|l| f.push(*l));
            let mut resumed = Frontier::from_peaks(cut as u64, &f.peaks()).unwrap();
            assert_eq!(resumed, f);
            for (i, l) in all.iter().enumerate().skip(cut) {
                resumed.push(*l);
                assert_eq!(resumed.root(), mth(&all[..=i]), "cut {cut}, size {}", i + 1);
            }
        }
        let f = Frontier::from_peaks(6, &leaves(2)).unwrap();
        assert_eq!(f.root(), node_hash(&leaves(2)[0], &leaves(2)[1]));
        assert_eq!(Frontier::from_peaks(6, &leaves(3)), None);
        assert_eq!(Frontier::from_peaks(7, &leaves(2)), None);
    }

    #[test]
    fn a_known_answer_from_the_rfc_hashing() {
        // One leaf "": H(0x00) hex, and the empty tree: H("").
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_changed_one_does_not() {
        for n in 1..=33u64 {
            let t = leaves(n);
            let r = root(&t);
            for i in 0..n {
                let p = inclusion_path(&t, i, n);
                assert!(verify_inclusion(i, n, &t[i as usize], &p, &r), "{i} of {n}");
                assert!(!verify_inclusion(i, n, &leaf_hash(b"x"), &p, &r));
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(i, n, &t[i as usize], &bad, &r));
                }
                if n > 1 {
                    assert!(!verify_inclusion((i + 1) % n, n, &t[i as usize], &p, &r));
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_changed_one_does_not() {
        for n in 1..=33u64 {
            let t = leaves(n);
            let new_root = root(&t);
            for m in 1..=n {
                let old_root = root(&t[..m as usize]);
                let p = consistency_proof(&t, m, n);
                assert!(
                    verify_consistency(m, n, &old_root, &new_root, &p),
                    "{m} -> {n}"
                );
                assert!(!verify_consistency(m, n, &leaf_hash(b"x"), &new_root, &p));
                if m < n {
                    let mut bad = p.clone();
                    bad[0] = leaf_hash(b"y");
                    assert!(!verify_consistency(m, n, &old_root, &new_root, &bad));
                    // A tree that rewrote leaf 0 is no extension.
                    let mut other = t.clone();
                    other[0] = leaf_hash(b"z");
                    let p2 = consistency_proof(&other, m, n);
                    assert!(!verify_consistency(m, n, &old_root, &root(&other), &p2));
                }
            }
        }
    }
}
