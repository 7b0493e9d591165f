//! dm-verity hash trees in the on-disk format `veritysetup` reads (format
//! version 1, sha256, 4 KiB blocks, a 512-byte superblock in the first hash
//! block). The format (superblock, geometry, block digests) is the contract
//! crate's, which the agent checks trees with; this module reads the data
//! once and writes the tree.

use std::io::Read;
use std::ops::Deref;

use kiln_contract::verity::{block_digest, Geometry, Superblock, DIGEST};

/// Block size of data and hash blocks.
pub use kiln_contract::verity::BLOCK;

/// Errors while building a hash tree.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// The data size is not a positive multiple of the block size.
    #[error("verity: data size {0} is not a positive multiple of {BLOCK} bytes")]
    BadSize(u64),
    /// Reading the data failed.
    #[error("verity: reading the data: {0}")]
    Read(#[from] std::io::Error),
}

/// Identity of a hash tree (derive both from the build inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerityParams {
    /// Salt hashed before every block.
    pub salt: [u8; 32],
    /// UUID recorded in the superblock.
    pub uuid: [u8; 16],
}

/// The [`Geometry`] of a tree over a byte count that is a whole, positive
/// number of blocks (the contract's geometry counts blocks and trusts its
/// caller on that). Derefs to the geometry: `data_blocks`, `level_blocks`,
/// `level_start`, `hash_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityGeometry(Geometry);

impl VerityGeometry {
    /// The geometry for `data_bytes` of data.
    pub fn new(data_bytes: u64) -> Result<VerityGeometry, VerityError> {
        if data_bytes == 0 || data_bytes % BLOCK != 0 {
            return Err(VerityError::BadSize(data_bytes));
        }
        Ok(VerityGeometry(Geometry::new(data_bytes / BLOCK)))
    }
}

impl Deref for VerityGeometry {
    type Target = Geometry;

    fn deref(&self) -> &Geometry {
        &self.0
    }
}

/// The superblock, padded with zeros to a whole hash block.
fn superblock(g: &Geometry, p: &VerityParams) -> Vec<u8> {
    let mut sb = Superblock::kiln(g.data_blocks, &p.salt, p.uuid)
        .to_bytes()
        .to_vec();
    sb.resize(BLOCK as usize, 0);
    sb
}

/// A built hash tree.
#[derive(Debug, Clone)]
pub struct VerityTree {
    /// Its geometry.
    pub geometry: VerityGeometry,
    /// The whole hash device: superblock, then the levels top first.
    pub hash_device: Vec<u8>,
    /// The root hash (what the kernel command line carries).
    pub root_hash: [u8; DIGEST],
}

/// Reads `data_bytes` of data from `data` and builds its hash tree.
pub fn build(
    data: &mut impl Read,
    data_bytes: u64,
    p: &VerityParams,
) -> Result<VerityTree, VerityError> {
    let g = VerityGeometry::new(data_bytes)?;
    // `below`: the packed digests of the blocks of the level underneath.
    let mut below = Vec::with_capacity(g.data_blocks as usize * DIGEST);
    let mut block = vec![0u8; BLOCK as usize];
    for _ in 0..g.data_blocks {
        data.read_exact(&mut block)?;
        below.extend_from_slice(&block_digest(&p.salt, &block));
    }
    let mut levels: Vec<Vec<u8>> = Vec::with_capacity(g.level_blocks.len());
    for &n in &g.level_blocks {
        let mut level = below;
        level.resize((n * BLOCK) as usize, 0);
        below = level
            .chunks(BLOCK as usize)
            .flat_map(|b| block_digest(&p.salt, b))
            .collect();
        levels.push(level);
    }
    // One digest is left: the top block's, or the single data block's.
    let mut root_hash = [0u8; DIGEST];
    root_hash.copy_from_slice(&below[..DIGEST]);
    let mut hash_device = superblock(&g, p);
    for l in levels.iter().rev() {
        hash_device.extend_from_slice(l);
    }
    Ok(VerityTree {
        geometry: g,
        hash_device,
        root_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn data(blocks: usize) -> Vec<u8> {
        // Deterministic, non-repeating content.
        (0..blocks * BLOCK as usize)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect()
    }

    const PARAMS: VerityParams = VerityParams {
        salt: [0x5a; 32],
        uuid: [0x11; 16],
    };

    #[test]
    fn geometry_levels_and_offsets() {
        let g = VerityGeometry::new(300 * BLOCK).unwrap();
        assert_eq!(g.level_blocks, vec![3, 1]);
        assert_eq!(g.level_start(1), 1);
        assert_eq!(g.level_start(0), 2);
        assert_eq!(g.hash_bytes(), 5 * BLOCK);
        assert_eq!(
            VerityGeometry::new(128 * BLOCK).unwrap().level_blocks,
            vec![1]
        );
        assert_eq!(
            VerityGeometry::new(129 * 128 * BLOCK).unwrap().level_blocks,
            vec![129, 2, 1]
        );
        let one = VerityGeometry::new(BLOCK).unwrap();
        assert!(one.level_blocks.is_empty());
        assert_eq!(one.hash_bytes(), BLOCK);
        assert!(VerityGeometry::new(0).is_err());
        assert!(VerityGeometry::new(BLOCK + 1).is_err());
    }

    /// veritysetup (the reference) formats the same data with the same salt
    /// and UUID: its hash device and root hash must equal ours, and it must
    /// accept our tree and reject a tampered data block.
    #[test]
    fn matches_veritysetup_byte_for_byte_and_detects_tampering() {
        for blocks in [1usize, 128, 300, 20_000] {
            let d = tempfile::tempdir().unwrap();
            let bytes = data(blocks);
            let data_path = d.path().join("data");
            std::fs::write(&data_path, &bytes).unwrap();
            let tree = build(&mut &bytes[..], bytes.len() as u64, &PARAMS).unwrap();
            assert_eq!(tree.hash_device.len() as u64, tree.geometry.hash_bytes());

            let theirs = d.path().join("theirs");
            std::fs::write(&theirs, b"").unwrap();
            let out = Command::new("veritysetup")
                .arg("format")
                .arg(&data_path)
                .arg(&theirs)
                .arg(format!("--salt={}", hex::encode(PARAMS.salt)))
                .arg("--uuid=11111111-1111-1111-1111-111111111111")
                .output()
                .expect("veritysetup (cryptsetup-bin) is installed by make deps");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&hex::encode(tree.root_hash)),
                "{blocks} blocks: {text}"
            );
            assert_eq!(
                std::fs::read(&theirs).unwrap(),
                tree.hash_device,
                "{blocks} blocks"
            );

            let ours = d.path().join("ours");
            std::fs::write(&ours, &tree.hash_device).unwrap();
            let verify = |data: &std::path::Path| {
                Command::new("veritysetup")
                    .arg("verify")
                    .arg(data)
                    .arg(&ours)
                    .arg(hex::encode(tree.root_hash))
                    .output()
                    .unwrap()
                    .status
                    .success()
            };
            assert!(
                verify(&data_path),
                "{blocks} blocks: veritysetup rejects our tree"
            );
            let mut bad = bytes.clone();
            let at = bad.len() / 2;
            bad[at] ^= 1;
            let bad_path = d.path().join("bad");
            std::fs::write(&bad_path, &bad).unwrap();
            assert!(
                !verify(&bad_path),
                "{blocks} blocks: a changed byte went unnoticed"
            );
        }
    }

    #[test]
    fn short_data_is_an_error() {
        let bytes = data(2);
        let e = build(&mut &bytes[..BLOCK as usize], 2 * BLOCK, &PARAMS).unwrap_err();
        assert!(matches!(e, VerityError::Read(_)), "{e}");
    }
}
