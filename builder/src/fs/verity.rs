//! dm-verity hash trees in the on-disk format `veritysetup` reads (format
//! version 1, sha256, 4 KiB blocks, a 512-byte superblock in the first hash
//! block). The geometry is a pure function; [`build`] reads the data once.

use std::io::Read;

use sha2::{Digest, Sha256};

/// Block size of data and hash blocks.
pub const BLOCK: u64 = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: u64 = BLOCK / DIGEST as u64;

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

/// Where each level of the tree goes, counted in hash blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityGeometry {
    /// Data blocks covered.
    pub data_blocks: u64,
    /// Hash blocks per level, from the level over the data (0) upwards; the
    /// last level is a single block whose hash is the root hash. Empty for
    /// a single data block.
    pub level_blocks: Vec<u64>,
}

impl VerityGeometry {
    /// The geometry for `data_bytes` of data.
    pub fn new(data_bytes: u64) -> Result<VerityGeometry, VerityError> {
        if data_bytes == 0 || data_bytes % BLOCK != 0 {
            return Err(VerityError::BadSize(data_bytes));
        }
        let data_blocks = data_bytes / BLOCK;
        // Levels are added until one block remains; a single data block
        // needs none (its own hash is the root hash).
        let mut level_blocks = Vec::new();
        let mut n = data_blocks;
        while n > 1 {
            n = n.div_ceil(PER_BLOCK);
            level_blocks.push(n);
        }
        Ok(VerityGeometry {
            data_blocks,
            level_blocks,
        })
    }

    /// Size of the hash device: the superblock's block plus every level.
    pub fn hash_bytes(&self) -> u64 {
        (1 + self.level_blocks.iter().sum::<u64>()) * BLOCK
    }

    /// Block offset of `level` in the hash device. veritysetup stores the
    /// top level first, right after the superblock.
    pub fn level_offset(&self, level: usize) -> u64 {
        1 + self.level_blocks[level + 1..].iter().sum::<u64>()
    }
}

fn hash_block(salt: &[u8; 32], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// The 512-byte superblock (`struct verity_sb`), padded to a hash block.
fn superblock(g: &VerityGeometry, p: &VerityParams) -> Vec<u8> {
    let mut sb = vec![0u8; BLOCK as usize];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // format version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal
    sb[16..32].copy_from_slice(&p.uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&g.data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(p.salt.len() as u16).to_le_bytes());
    sb[88..88 + p.salt.len()].copy_from_slice(&p.salt);
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
        below.extend_from_slice(&hash_block(&p.salt, &block));
    }
    let mut levels: Vec<Vec<u8>> = Vec::with_capacity(g.level_blocks.len());
    for &n in &g.level_blocks {
        let mut level = below;
        level.resize((n * BLOCK) as usize, 0);
        below = level
            .chunks(BLOCK as usize)
            .flat_map(|b| hash_block(&p.salt, b))
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
        assert_eq!(g.level_offset(1), 1);
        assert_eq!(g.level_offset(0), 2);
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
