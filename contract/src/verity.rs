//! The dm-verity hash device as `veritysetup format` writes it (and kiln's builder
//! does): a 512-byte superblock in hash block 0, then the levels of the hash tree, top
//! level first.
//!
//! kiln writes format version 1, hash type 1 (the salt hashed before each block),
//! sha256 and 4096-byte data and hash blocks; [`Superblock::check_kiln`] accepts only
//! that. The builder makes the tree, the agent's init checks it before handing it to the
//! kernel, `kiln inspect` shows the superblock.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::le::{put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
/// Bytes of one sha256 digest.
pub const DIGEST: usize = 32;
/// Digests per hash block.
pub const PER_BLOCK: u64 = BLOCK / DIGEST as u64;
/// The longest salt the superblock can hold.
pub const MAX_SALT: usize = 256;
/// Bytes of the on-disk superblock (`struct verity_sb`).
pub const SUPERBLOCK_SIZE: usize = 512;
/// The superblock's first bytes.
pub const MAGIC: &[u8; 8] = b"verity\0\0";
/// The hash algorithm kiln uses, as the superblock names it.
pub const ALGORITHM: &str = "sha256";

/// A verity superblock's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Format version (1).
    pub version: u32,
    /// Hash type (1: the salt is hashed before each block).
    pub hash_type: u32,
    /// The superblock's UUID, bytes as stored.
    pub uuid: [u8; 16],
    /// Hash algorithm name (`sha256`).
    pub algorithm: String,
    /// Data block size in bytes.
    pub data_block_size: u32,
    /// Hash block size in bytes.
    pub hash_block_size: u32,
    /// Data blocks the tree covers.
    pub data_blocks: u64,
    /// Salt hashed with every block.
    pub salt: Vec<u8>,
}

/// Why a superblock is not one to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuperblockError {
    /// Fewer bytes than a superblock.
    Short(usize),
    /// No `verity\0\0` magic: not a verity hash device.
    NoMagic([u8; 8]),
    /// A field with a value kiln does not write.
    Unsupported {
        /// The field.
        field: &'static str,
        /// What it holds.
        found: String,
        /// What kiln writes.
        expected: &'static str,
    },
}

impl fmt::Display for SuperblockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuperblockError::Short(n) => write!(
                f,
                "{n} bytes are too short for a verity superblock ({SUPERBLOCK_SIZE})"
            ),
            SuperblockError::NoMagic(m) => write!(
                f,
                "no verity superblock (the first bytes are {:?}, not \"verity\\0\\0\")",
                String::from_utf8_lossy(m)
            ),
            SuperblockError::Unsupported {
                field,
                found,
                expected,
            } => write!(
                f,
                "verity superblock field {field} is {found}, but kiln only uses {expected}"
            ),
        }
    }
}

impl std::error::Error for SuperblockError {}

impl Superblock {
    /// The superblock kiln writes for `data_blocks` blocks with `salt` (at most
    /// [`MAX_SALT`] bytes) and `uuid`.
    pub fn kiln(data_blocks: u64, salt: &[u8], uuid: [u8; 16]) -> Superblock {
        Superblock {
            version: 1,
            hash_type: 1,
            uuid,
            algorithm: ALGORITHM.into(),
            data_block_size: BLOCK as u32,
            hash_block_size: BLOCK as u32,
            data_blocks,
            salt: salt.to_vec(),
        }
    }

    /// Reads the superblock at the start of `bytes` without judging its values (what
    /// `kiln inspect` shows). Fails when there is no magic or the salt does not fit.
    pub fn decode(bytes: &[u8]) -> Result<Superblock, SuperblockError> {
        if bytes.len() < SUPERBLOCK_SIZE {
            return Err(SuperblockError::Short(bytes.len()));
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[0..8]);
        if &magic != MAGIC {
            return Err(SuperblockError::NoMagic(magic));
        }
        let salt_size = usize::from(u16_at(bytes, 80));
        if salt_size > MAX_SALT {
            return Err(SuperblockError::Unsupported {
                field: "salt_size",
                found: salt_size.to_string(),
                expected: "at most 256",
            });
        }
        let algo = &bytes[32..64];
        let end = algo.iter().position(|&b| b == 0).unwrap_or(algo.len());
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&bytes[16..32]);
        Ok(Superblock {
            version: u32_at(bytes, 8),
            hash_type: u32_at(bytes, 12),
            uuid,
            algorithm: String::from_utf8_lossy(&algo[..end]).into_owned(),
            data_block_size: u32_at(bytes, 64),
            hash_block_size: u32_at(bytes, 68),
            data_blocks: u64_at(bytes, 72),
            salt: bytes[88..88 + salt_size].to_vec(),
        })
    }

    /// Reads the superblock and checks it is one kiln writes ([`Superblock::check_kiln`]).
    pub fn parse(bytes: &[u8]) -> Result<Superblock, SuperblockError> {
        let sb = Superblock::decode(bytes)?;
        sb.check_kiln()?;
        Ok(sb)
    }

    /// Whether this is the format kiln writes: version 1, hash type 1, sha256,
    /// 4096-byte blocks, at least one data block.
    pub fn check_kiln(&self) -> Result<(), SuperblockError> {
        let unsupported = |field, found: String, expected| {
            Err(SuperblockError::Unsupported {
                field,
                found,
                expected,
            })
        };
        if self.version != 1 {
            return unsupported("version", self.version.to_string(), "1");
        }
        if self.hash_type != 1 {
            return unsupported("hash_type", self.hash_type.to_string(), "1 (normal)");
        }
        if self.algorithm != ALGORITHM {
            return unsupported("algorithm", format!("{:?}", self.algorithm), "sha256");
        }
        for (field, size) in [
            ("data_block_size", self.data_block_size),
            ("hash_block_size", self.hash_block_size),
        ] {
            if u64::from(size) != BLOCK {
                return unsupported(field, size.to_string(), "4096");
            }
        }
        if self.data_blocks == 0 {
            return unsupported("data_blocks", "0".into(), "a positive count");
        }
        Ok(())
    }

    /// The superblock as [`SUPERBLOCK_SIZE`] bytes (the salt cut at [`MAX_SALT`], the
    /// algorithm name at 32 bytes).
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut sb = [0u8; SUPERBLOCK_SIZE];
        sb[0..8].copy_from_slice(MAGIC);
        put_u32(&mut sb, 8, self.version);
        put_u32(&mut sb, 12, self.hash_type);
        sb[16..32].copy_from_slice(&self.uuid);
        let algo = self.algorithm.as_bytes();
        let n = algo.len().min(32);
        sb[32..32 + n].copy_from_slice(&algo[..n]);
        put_u32(&mut sb, 64, self.data_block_size);
        put_u32(&mut sb, 68, self.hash_block_size);
        put_u64(&mut sb, 72, self.data_blocks);
        let salt = &self.salt[..self.salt.len().min(MAX_SALT)];
        put_u16(&mut sb, 80, salt.len() as u16);
        sb[88..88 + salt.len()].copy_from_slice(salt);
        sb
    }
}

/// Where the levels of a tree lie in the hash device, in hash blocks. Level 0 is the
/// one whose digests cover the data blocks (the kernel's numbering); the last level is
/// a single block whose digest is the root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Data blocks covered.
    pub data_blocks: u64,
    /// Blocks in each level, level 0 first; empty for a single data block.
    pub level_blocks: Vec<u64>,
}

impl Geometry {
    /// The kernel's geometry for `data_blocks` (at least 1): levels are added until one
    /// block covers everything; a single data block needs none.
    pub fn new(data_blocks: u64) -> Geometry {
        let mut level_blocks = Vec::new();
        let mut n = data_blocks;
        while n > 1 {
            n = n.div_ceil(PER_BLOCK);
            level_blocks.push(n);
        }
        Geometry {
            data_blocks,
            level_blocks,
        }
    }

    /// Hash block where `level` starts: the superblock's block, then the levels above
    /// it (veritysetup stores the top level first).
    pub fn level_start(&self, level: usize) -> u64 {
        1 + self.level_blocks[level + 1..].iter().sum::<u64>()
    }

    /// Blocks of the hash device in use: the superblock's and every level's.
    pub fn hash_blocks(&self) -> u64 {
        1 + self.level_blocks.iter().sum::<u64>()
    }

    /// Bytes of the hash device in use.
    pub fn hash_bytes(&self) -> u64 {
        self.hash_blocks() * BLOCK
    }
}

/// sha256(salt || block): the digest of one block in format version 1.
pub fn block_digest(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a tree does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeMismatch {
    /// Levels in the tree.
    pub levels: usize,
    /// The level of the block that does not match (0 = over the data).
    pub level: usize,
    /// Its index within the level.
    pub block: u64,
    /// Its index in the hash device (byte offset = 4096 times this).
    pub hash_block: u64,
    /// What the block hashes to.
    pub actual: [u8; DIGEST],
    /// What the level above (or the root hash) records for it.
    pub expected: [u8; DIGEST],
}

impl fmt::Display for TreeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let top = self.level + 1 == self.levels;
        write!(
            f,
            "level {} of {} (0 is over the data), block {} (hash block {}, byte offset {}) \
             hashes to {} but {} {}",
            self.level,
            self.levels,
            self.block,
            self.hash_block,
            self.hash_block * BLOCK,
            hex(&self.actual),
            if top {
                "kiln.roothash= is".to_string()
            } else {
                format!(
                    "level {} block {} records",
                    self.level + 1,
                    self.block / PER_BLOCK
                )
            },
            hex(&self.expected)
        )
    }
}

/// Checks every hash block of the tree in `hash_dev` (the hash device from byte 0, at
/// least [`Geometry::hash_blocks`] blocks long; the caller reads that much) from the
/// top down: the top block against `root_hash`, each other block against its entry in
/// the level above. The data blocks themselves are the kernel's to check.
pub fn check_tree(
    sb: &Superblock,
    hash_dev: &[u8],
    root_hash: &[u8; DIGEST],
) -> Result<(), TreeMismatch> {
    let g = Geometry::new(sb.data_blocks);
    let levels = g.level_blocks.len();
    let block_at = |hash_block: u64| {
        let at = (hash_block * BLOCK) as usize;
        hash_dev.get(at..at + BLOCK as usize)
    };
    for level in (0..levels).rev() {
        let start = g.level_start(level);
        for block in 0..g.level_blocks[level] {
            let hash_block = start + block;
            // The caller reads the whole tree; a short buffer is a mismatch of nothing.
            let actual = block_at(hash_block)
                .map(|b| block_digest(&sb.salt, b))
                .unwrap_or_default();
            let expected: [u8; DIGEST] = if level + 1 == levels {
                *root_hash
            } else {
                let above = g.level_start(level + 1) + block / PER_BLOCK;
                let entry = (block % PER_BLOCK) as usize * DIGEST;
                let mut e = [0u8; DIGEST];
                if let Some(b) = block_at(above) {
                    e.copy_from_slice(&b[entry..entry + DIGEST]);
                }
                e
            };
            if actual != expected {
                return Err(TreeMismatch {
                    levels,
                    level,
                    block,
                    hash_block,
                    actual,
                    expected,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_superblock_round_trips_and_kilns_own_passes_the_check() {
        let sb = Superblock::kiln(1000, &[9u8; 32], [3u8; 16]);
        let bytes = sb.to_bytes();
        assert_eq!(&bytes[0..8], MAGIC);
        assert_eq!(Superblock::parse(&bytes).unwrap(), sb);
    }

    #[test]
    fn other_formats_are_read_but_refused_by_name() {
        let mut sb = Superblock::kiln(8, b"salt", [0; 16]);
        sb.algorithm = "sha1".into();
        let bytes = sb.to_bytes();
        assert_eq!(Superblock::decode(&bytes).unwrap().algorithm, "sha1");
        let e = Superblock::parse(&bytes).unwrap_err().to_string();
        assert!(e.contains("algorithm") && e.contains("sha1"), "{e}");
        let mut sb = Superblock::kiln(8, b"salt", [0; 16]);
        sb.data_block_size = 512;
        let e = Superblock::parse(&sb.to_bytes()).unwrap_err().to_string();
        assert!(e.contains("data_block_size is 512"), "{e}");
        let e = Superblock::parse(&[0u8; 100]).unwrap_err().to_string();
        assert!(e.contains("100 bytes"), "{e}");
        let e = Superblock::parse(&[0u8; 512]).unwrap_err().to_string();
        assert!(e.contains("no verity superblock"), "{e}");
        let mut long_salt = Superblock::kiln(8, b"", [0; 16]).to_bytes();
        put_u16(&mut long_salt, 80, 300);
        let e = Superblock::decode(&long_salt).unwrap_err().to_string();
        assert!(e.contains("salt_size is 300"), "{e}");
    }

    #[test]
    fn geometry_matches_the_kernels_levels() {
        assert!(Geometry::new(1).level_blocks.is_empty());
        assert_eq!(Geometry::new(1).hash_blocks(), 1);
        let g = Geometry::new(128 * 128 + 1);
        assert_eq!(g.level_blocks, vec![129, 2, 1]);
        assert_eq!(g.level_start(2), 1);
        assert_eq!(g.level_start(1), 2);
        assert_eq!(g.level_start(0), 4);
        assert_eq!(g.hash_bytes(), (1 + 129 + 2 + 1) * BLOCK);
    }
}
