//! The v2 proofs' size and cost (`docs/proof-format.md`): inclusion and consistency proofs at
//! 10^6 leaves (a real tree: every link's leaf hash in memory) and at 10^8 leaves (a simulated
//! tree, below), and the enricher's per-link cost of extending a tree ([`Frontier::push`]).
//!
//! ```sh
//! cargo bench -p audit-schemas --bench merkle
//! cargo bench -p audit-schemas --bench merkle -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! It first prints each proof's size (hashes, raw bytes, and bytes as the JSON array of hex
//! strings the proof files hold) and a mean verify time, then criterion times the verifiers.
//!
//! **The simulated tree.** 10^8 leaf hashes are 3.2 GB and 2·10^8 SHA-256 to build, so the large
//! tree's leaves repeat: leaf `i` is the link leaf of seq `i mod 1024`. It is still an exact RFC
//! 9162 tree over those leaves, but its aligned perfect subtrees of 1024 leaves or more are all
//! equal, so every perfect subtree hash is a table look-up (1024 real leaves and their 1023
//! nodes, then one hash per height above), and any subtree `start..end` costs O(log n) hashes
//! instead of `end - start`. Proof sizes and verify costs depend only on the leaf index and the
//! tree size, so they are those of any tree of 10^8 links; only the hash values are not.

use audit_schemas::chain::content::content_digest;
use audit_schemas::chain::leaf::link_leaf;
use audit_schemas::chain::merkle::{
    consistency_proof, inclusion_path, node_hash, root, verify_consistency, verify_inclusion,
    Frontier, Hash, Subtrees,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Instant;

const EPOCH: &str = "0b7c5a52-3d43-4f3b-a9a4-96c2b1c0e3f7";

/// The link leaf of seq `i`, over a content that names `i`.
fn real_leaf(i: u64) -> Hash {
    link_leaf(3, EPOCH, i as i64, &content_digest(&i.to_be_bytes()))
}

/// A tree of `size` leaves whose leaf `i` is `real_leaf(i % 2^BLOCK)` (see the module docs).
struct Simulated {
    size: u64,
    /// `within[h][j]`: the perfect subtree of height `h` (`h <= BLOCK`) at index `j` of a block.
    within: Vec<Vec<Hash>>,
    /// `above[t]`: every aligned perfect subtree of height `BLOCK + t`.
    above: Vec<Hash>,
}

const BLOCK: u32 = 10;

impl Simulated {
    fn new(size: u64) -> Self {
        let mut within = vec![(0..1u64 << BLOCK).map(real_leaf).collect::<Vec<_>>()];
        for h in 1..=BLOCK as usize {
            let below = &within[h - 1];
            let level = below.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
            within.push(level);
        }
        let mut above = vec![within[BLOCK as usize][0]];
        for t in 1..64 - BLOCK as usize {
            let h = above[t - 1];
            above.push(node_hash(&h, &h));
        }
        Self {
            size,
            within,
            above,
        }
    }

    /// The perfect subtree of 2^h leaves starting at `start` (a multiple of 2^h).
    fn perfect(&self, h: u32, start: u64) -> Hash {
        if h <= BLOCK {
            let j = (start >> h) & ((1 << (BLOCK - h)) - 1);
            self.within[h as usize][j as usize]
        } else {
            self.above[(h - BLOCK) as usize]
        }
    }
}

impl Subtrees for Simulated {
    fn size(&self) -> u64 {
        self.size
    }

    /// RFC 9162's MTH by its recursion, stopping at perfect aligned subtrees.
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start % n == 0 {
            return self.perfect(n.trailing_zeros(), start);
        }
        let k = 1u64 << (63 - (n - 1).leading_zeros());
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }
}

/// Bytes of `proof` as a proof file's JSON array of hex strings: `["<64 hex>",...]`.
fn json_bytes(proof: &[Hash]) -> usize {
    2 + proof.len() * 66 + proof.len().saturating_sub(1)
}

/// Mean nanoseconds of `f` over enough runs to fill about 0.2 s.
fn mean_ns(mut f: impl FnMut() -> bool) -> f64 {
    assert!(f());
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed().as_millis() < 200 {
        for _ in 0..100 {
            black_box(f());
        }
        runs += 100;
    }
    start.elapsed().as_nanos() as f64 / runs as f64
}

struct Case {
    name: &'static str,
    size: u64,
    index: u64,
    leaf: Hash,
    path: Vec<Hash>,
    root: Hash,
    old: u64,
    old_root: Hash,
    consistency: Vec<Hash>,
}

fn report(c: &Case) {
    let inclusion = mean_ns(|| verify_inclusion(c.index, c.size, &c.leaf, &c.path, &c.root));
    let consistency =
        mean_ns(|| verify_consistency(c.old, c.size, &c.old_root, &c.root, &c.consistency));
    println!(
        "{}: inclusion of leaf {} in {} leaves: {} hashes, {} bytes raw, {} bytes as JSON hex; \
         verify {:.2} us",
        c.name,
        c.index,
        c.size,
        c.path.len(),
        32 * c.path.len(),
        json_bytes(&c.path),
        inclusion / 1e3
    );
    println!(
        "{}: consistency {} -> {}: {} hashes, {} bytes raw, {} bytes as JSON hex; verify {:.2} us",
        c.name,
        c.old,
        c.size,
        c.consistency.len(),
        32 * c.consistency.len(),
        json_bytes(&c.consistency),
        consistency / 1e3
    );
}

fn real_case() -> Case {
    let size = 1_000_000u64;
    let t = Instant::now();
    let leaves: Vec<Hash> = (0..size).map(real_leaf).collect();
    let r = root(&leaves);
    println!(
        "real: {size} leaf hashes and their root in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let (index, old) = (700_001, 333_333);
    let case = Case {
        name: "real",
        size,
        index,
        leaf: leaves[index as usize],
        path: inclusion_path(&leaves, index, size),
        root: r,
        old,
        old_root: root(&leaves[..old as usize]),
        consistency: consistency_proof(&leaves, old, size),
    };
    // The large tree's shortcut gives the RFC root: checked against a real tree.
    let small = 5_000;
    let sim = Simulated::new(small);
    let real: Vec<Hash> = (0..small).map(|i| real_leaf(i % (1 << BLOCK))).collect();
    assert_eq!(sim.subtree(0, small), root(&real));
    case
}

fn simulated_case() -> Case {
    let size = 100_000_000u64;
    let sim = Simulated::new(size);
    let (index, old) = (70_000_001, 33_333_333);
    Case {
        name: "simulated",
        size,
        index,
        leaf: real_leaf(index % (1 << BLOCK)),
        path: inclusion_path(&sim, index, size),
        root: sim.subtree(0, size),
        old,
        old_root: sim.subtree(0, old),
        consistency: consistency_proof(&sim, old, size),
    }
}

fn bench(c: &mut Criterion) {
    let cases = [real_case(), simulated_case()];
    for case in &cases {
        report(case);
    }
    let mut g = c.benchmark_group("verify_inclusion");
    for case in &cases {
        g.bench_function(format!("{}_{}", case.name, case.size), |b| {
            b.iter(|| {
                verify_inclusion(
                    black_box(case.index),
                    case.size,
                    black_box(&case.leaf),
                    &case.path,
                    &case.root,
                )
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("verify_consistency");
    for case in &cases {
        g.bench_function(format!("{}_{}_{}", case.name, case.old, case.size), |b| {
            b.iter(|| {
                verify_consistency(
                    black_box(case.old),
                    case.size,
                    black_box(&case.old_root),
                    &case.root,
                    &case.consistency,
                )
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("frontier");
    g.throughput(Throughput::Elements(1));
    let leaf = real_leaf(1);
    let mut f = Frontier::default();
    g.bench_function("push", |b| b.iter(|| f.push(black_box(leaf))));
    let mut f = Frontier::default();
    let digest = content_digest(b"an event's canonical content");
    let mut seq = 0i64;
    g.bench_function("link_leaf_and_push", |b| {
        b.iter(|| {
            f.push(link_leaf(3, EPOCH, seq, black_box(&digest)));
            seq += 1;
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
