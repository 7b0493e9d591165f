//! The dm-verity hash device as `veritysetup format` writes it (and kiln's builder does):
//! a 512-byte superblock in hash block 0, then the levels of the hash tree, top level
//! first. Init reads the superblock to build the kernel's table and checks the whole
//! tree against the root hash before handing it to the kernel, so a changed hash
//! partition is reported clearly instead of as scattered read errors later.
//!
//! Only what kiln writes is accepted: format version 1, hash type 1 (salt hashed before
//! each block), sha256, 4096-byte data and hash blocks.

use std::fmt;

use sha2::{Digest, Sha256};

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
/// Bytes of one sha256 digest.
pub const DIGEST: usize = 32;
/// Digests per hash block.
const PER_BLOCK: u64 = BLOCK / DIGEST as u64;
/// The longest salt the superblock can hold.
pub const MAX_SALT: usize = 256;
/// Bytes of the on-disk superblock (`struct verity_sb`).
pub const SUPERBLOCK_SIZE: usize = 512;

/// The superblock fields init uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Data blocks covered by the tree.
    pub data_blocks: u64,
    /// Salt hashed before every block.
    pub salt: Vec<u8>,
}

/// Why a superblock is not one init can use.
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

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses and checks the superblock at the start of `bytes`.
pub fn parse_superblock(bytes: &[u8]) -> Result<Superblock, SuperblockError> {
    if bytes.len() < SUPERBLOCK_SIZE {
        return Err(SuperblockError::Short(bytes.len()));
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&bytes[0..8]);
    if &magic != b"verity\0\0" {
        return Err(SuperblockError::NoMagic(magic));
    }
    let unsupported = |field, found: String, expected| {
        Err(SuperblockError::Unsupported {
            field,
            found,
            expected,
        })
    };
    let version = le_u32(bytes, 8);
    if version != 1 {
        return unsupported("version", version.to_string(), "1");
    }
    let hash_type = le_u32(bytes, 12);
    if hash_type != 1 {
        return unsupported("hash_type", hash_type.to_string(), "1 (normal)");
    }
    let algo = &bytes[32..64];
    let end = algo.iter().position(|&b| b == 0).unwrap_or(algo.len());
    if &algo[..end] != b"sha256" {
        let found = format!("{:?}", String::from_utf8_lossy(&algo[..end]));
        return unsupported("algorithm", found, "sha256");
    }
    for (field, at) in [("data_block_size", 64), ("hash_block_size", 68)] {
        let size = le_u32(bytes, at);
        if u64::from(size) != BLOCK {
            return unsupported(field, size.to_string(), "4096");
        }
    }
    let data_blocks = le_u64(bytes, 72);
    if data_blocks == 0 {
        return unsupported("data_blocks", "0".into(), "a positive count");
    }
    let salt_size = usize::from(le_u16(bytes, 80));
    if salt_size > MAX_SALT {
        return unsupported("salt_size", salt_size.to_string(), "at most 256");
    }
    Ok(Superblock {
        data_blocks,
        salt: bytes[88..88 + salt_size].to_vec(),
    })
}

/// Where the levels of a tree lie in the hash device, in hash blocks. Level 0 is the
/// one whose digests cover the data blocks (the kernel's numbering); the last level is a
/// single block whose digest is the root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Data blocks covered.
    pub data_blocks: u64,
    /// Blocks in each level, level 0 first.
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

    /// Hash block where `level` starts: the superblock's block, then the levels above it.
    pub fn level_start(&self, level: usize) -> u64 {
        1 + self.level_blocks[level + 1..].iter().sum::<u64>()
    }

    /// Blocks of the hash device in use: the superblock's and every level's.
    pub fn hash_blocks(&self) -> u64 {
        1 + self.level_blocks.iter().sum::<u64>()
    }
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

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256(salt || block): the digest of one block in format version 1.
pub fn block_digest(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Checks every hash block of the tree in `hash_dev` (the hash device from byte 0, at
/// least `Geometry::hash_blocks` blocks long; the caller reads that much) from the top
/// down: the top block against `root_hash`, each other block against its entry in the
/// level above. The data blocks themselves are the kernel's to check.
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
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// Builds a hash device (superblock + levels, top first) and root hash for `data`,
    /// written from the kernel's description of the format, to test the checker.
    pub(crate) fn build_tree(data: &[u8], salt: &[u8]) -> (Vec<u8>, [u8; DIGEST]) {
        let data_blocks = (data.len() as u64).div_ceil(BLOCK);
        let g = Geometry::new(data_blocks);
        let mut below: Vec<[u8; DIGEST]> = data
            .chunks(BLOCK as usize)
            .map(|b| {
                let mut block = b.to_vec();
                block.resize(BLOCK as usize, 0);
                block_digest(salt, &block)
            })
            .collect();
        let mut levels = Vec::new();
        for &n in &g.level_blocks {
            let mut level: Vec<u8> = below.concat();
            level.resize((n * BLOCK) as usize, 0);
            below = level
                .chunks(BLOCK as usize)
                .map(|b| block_digest(salt, b))
                .collect();
            levels.push(level);
        }
        let mut dev = vec![0u8; BLOCK as usize];
        dev[0..8].copy_from_slice(b"verity\0\0");
        dev[8..12].copy_from_slice(&1u32.to_le_bytes());
        dev[12..16].copy_from_slice(&1u32.to_le_bytes());
        dev[32..38].copy_from_slice(b"sha256");
        dev[64..68].copy_from_slice(&4096u32.to_le_bytes());
        dev[68..72].copy_from_slice(&4096u32.to_le_bytes());
        dev[72..80].copy_from_slice(&data_blocks.to_le_bytes());
        dev[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        dev[88..88 + salt.len()].copy_from_slice(salt);
        for l in levels.iter().rev() {
            dev.extend_from_slice(l);
        }
        (dev, below[0])
    }

    pub(crate) fn test_data(blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK as usize)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    }

    #[test]
    fn parses_the_superblock_and_rejects_what_kiln_does_not_write() {
        let (dev, _) = build_tree(&test_data(3), &[7; 32]);
        let sb = parse_superblock(&dev).unwrap();
        assert_eq!(sb.data_blocks, 3);
        assert_eq!(sb.salt, vec![7; 32]);
        let with = |at: usize, bytes: &[u8]| {
            let mut d = dev.clone();
            d[at..at + bytes.len()].copy_from_slice(bytes);
            parse_superblock(&d).unwrap_err().to_string()
        };
        assert!(with(0, b"VERITY").contains("no verity superblock"));
        assert!(with(8, &2u32.to_le_bytes()).contains("field version is 2"));
        assert!(with(12, &0u32.to_le_bytes()).contains("hash_type is 0"));
        assert!(with(32, b"sha1\0\0").contains("algorithm is \"sha1\""));
        assert!(with(64, &512u32.to_le_bytes()).contains("data_block_size is 512"));
        assert!(with(68, &1024u32.to_le_bytes()).contains("hash_block_size is 1024"));
        assert!(with(72, &0u64.to_le_bytes()).contains("data_blocks is 0"));
        assert!(with(80, &257u16.to_le_bytes()).contains("salt_size is 257"));
        assert!(parse_superblock(&dev[..100])
            .unwrap_err()
            .to_string()
            .contains("100 bytes"));
        // An empty salt is legal.
        let (dev, _) = build_tree(&test_data(1), &[]);
        assert!(parse_superblock(&dev).unwrap().salt.is_empty());
    }

    #[test]
    fn geometry_matches_the_kernel() {
        let g = Geometry::new(300);
        assert_eq!(g.level_blocks, [3, 1]);
        assert_eq!((g.level_start(1), g.level_start(0)), (1, 2));
        assert_eq!(g.hash_blocks(), 5);
        assert_eq!(Geometry::new(128).level_blocks, [1]);
        assert_eq!(Geometry::new(129 * 128).level_blocks, [129, 2, 1]);
        assert!(Geometry::new(1).level_blocks.is_empty());
        assert_eq!(Geometry::new(1).hash_blocks(), 1);
    }

    #[test]
    fn accepts_a_good_tree_and_finds_each_changed_block() {
        let salt = [0x5a; 32];
        // 129 * 128 + 1 data blocks: three levels (130, 2, 1 blocks).
        let data = test_data(129 * 128 + 1);
        let (dev, root) = build_tree(&data, &salt);
        let sb = parse_superblock(&dev).unwrap();
        assert_eq!(Geometry::new(sb.data_blocks).level_blocks, [130, 2, 1]);
        check_tree(&sb, &dev, &root).unwrap();

        // The top block (hash block 1) no longer matches the root hash.
        let mut bad = dev.clone();
        bad[4096 + 5] ^= 1;
        let e = check_tree(&sb, &bad, &root).unwrap_err();
        assert_eq!((e.level, e.block, e.hash_block), (2, 0, 1));
        assert_eq!(e.expected, root);
        assert!(e.to_string().contains("level 2 of 3"), "{e}");
        assert!(e.to_string().contains("but kiln.roothash= is"), "{e}");

        // Level 1's second block (hash block 3).
        let mut bad = dev.clone();
        bad[3 * 4096 + 4000] ^= 0x80;
        let e = check_tree(&sb, &bad, &root).unwrap_err();
        assert_eq!((e.level, e.block, e.hash_block), (1, 1, 3));
        assert!(e.to_string().contains("but level 2 block 0 records"), "{e}");

        // The last block of level 0 (hash block 4 + 129).
        let mut bad = dev.clone();
        bad[(4 + 129) * 4096] ^= 1;
        let e = check_tree(&sb, &bad, &root).unwrap_err();
        assert_eq!((e.level, e.block, e.hash_block), (0, 129, 133));
        assert!(e.to_string().contains("level 1 block 1 records"), "{e}");

        // A different root hash, and a tree cut short.
        let mut other = root;
        other[31] ^= 1;
        assert_eq!(check_tree(&sb, &dev, &other).unwrap_err().level, 2);
        let e = check_tree(&sb, &dev[..3 * 4096], &root).unwrap_err();
        assert_eq!(e.hash_block, 3);

        // A single data block has no tree to check (its own digest is the root hash).
        let (one, _) = build_tree(&test_data(1), &salt);
        let sb1 = parse_superblock(&one).unwrap();
        check_tree(&sb1, &one, &[0; 32]).unwrap();
    }

    /// veritysetup (the reference implementation) formats a data file: the checker must
    /// accept its hash device and root hash, and reject a changed byte or a wrong hash.
    #[test]
    fn accepts_veritysetups_tree_and_rejects_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        let hash_path = dir.path().join("hash");
        // 1000 blocks: levels of 8 and 1 blocks.
        std::fs::write(&data_path, test_data(1000)).unwrap();
        let salt = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let out = Command::new("veritysetup")
            .args(["format", "--salt", salt])
            .args(["--uuid", "01234567-89ab-4def-8123-456789abcdef"])
            .arg(&data_path)
            .arg(&hash_path)
            .output()
            .expect("veritysetup is installed");
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let root_hex = stdout
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .map(str::trim)
            .unwrap();
        let mut root = [0u8; 32];
        for (i, b) in root.iter_mut().enumerate() {
            *b = u8::from_str_radix(&root_hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let dev = std::fs::read(&hash_path).unwrap();
        let sb = parse_superblock(&dev).unwrap();
        assert_eq!(sb.data_blocks, 1000);
        assert_eq!(hex(&sb.salt), salt);
        let g = Geometry::new(sb.data_blocks);
        assert_eq!(g.level_blocks, [8, 1]);
        assert!(dev.len() as u64 >= g.hash_blocks() * BLOCK);
        check_tree(&sb, &dev, &root).unwrap();
        // Our own builder agrees with veritysetup byte for byte over the tree.
        let (ours, our_root) = build_tree(&test_data(1000), &sb.salt);
        assert_eq!(our_root, root);
        assert_eq!(
            &ours[4096..],
            &dev[4096..(g.hash_blocks() * BLOCK) as usize]
        );

        for (at, level) in [(4096 + 17, 1), (2 * 4096 + 5 * 4096 + 99, 0)] {
            let mut bad = dev.clone();
            bad[at] ^= 0x01;
            let e = check_tree(&sb, &bad, &root).unwrap_err();
            assert_eq!(e.level, level, "{e}");
            // veritysetup agrees that the changed hash device no longer verifies.
            std::fs::write(&hash_path, &bad).unwrap();
            let v = Command::new("veritysetup")
                .arg("verify")
                .arg(&data_path)
                .arg(&hash_path)
                .arg(root_hex)
                .output()
                .unwrap();
            assert!(!v.status.success(), "veritysetup accepted a changed tree");
        }
    }
}
