//! A link's Merkle leaf (v2): the link's position and its content's digest, so a row moved to
//! another partition, chain or seq no longer fits anywhere.

use super::merkle;

/// RFC 9162's leaf input for a link: `"audit-leaf-v2\n" ‖ be32 partition ‖ epoch ‖ "\n" ‖
/// be64 seq ‖ SHA-256(content)`.
pub fn leaf_data(partition: i32, epoch: &str, seq: i64, content_digest: &[u8; 32]) -> Vec<u8> {
    let mut d = Vec::with_capacity(14 + 4 + epoch.len() + 1 + 8 + 32);
    d.extend_from_slice(b"audit-leaf-v2\n");
    d.extend_from_slice(&partition.to_be_bytes());
    d.extend_from_slice(epoch.as_bytes());
    d.push(b'\n');
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(content_digest);
    d
}

/// The link's leaf hash: `H(0x00 ‖ leaf_data)`.
pub fn link_leaf(partition: i32, epoch: &str, seq: i64, content_digest: &[u8; 32]) -> merkle::Hash {
    merkle::leaf_hash(&leaf_data(partition, epoch, seq, content_digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_binds_partition_epoch_and_seq() {
        let d = super::super::content::content_digest(b"x");
        let base = link_leaf(0, "e", 1, &d);
        assert_ne!(base, link_leaf(1, "e", 1, &d));
        assert_ne!(base, link_leaf(0, "f", 1, &d));
        assert_ne!(base, link_leaf(0, "e", 2, &d));
        assert_ne!(
            base,
            link_leaf(0, "e", 1, &super::super::content::content_digest(b"y"))
        );
        let data = leaf_data(1, "e", 2, &d);
        assert_eq!(&data[..14], b"audit-leaf-v2\n");
        assert_eq!(&data[14..18], &[0, 0, 0, 1]);
        assert_eq!(data.len(), 14 + 4 + 1 + 1 + 8 + 32);
    }
}
