//! The checks of a written slot that go beyond each part's SHA-256: the dm-verity tree
//! recomputed from the root as it reads back from the disk (its root hash must be the
//! signed one, and the written verity part must be exactly that tree), and the UKI's
//! command line naming that root hash (so the UKI boots the slot it is installed for).

use std::fmt;

use kiln_contract::verity::{block_digest, hex, Geometry, Superblock, BLOCK, DIGEST};

use crate::update::esp;

/// The dm-verity tree of data whose block digests are fed in order.
#[derive(Debug, Clone)]
pub struct TreeBuilder {
    salt: Vec<u8>,
    level0: Vec<[u8; DIGEST]>,
}

/// A computed tree: the hash blocks after the superblock's (top level first, as the
/// hash device stores them) and the root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Hash blocks 1.. of the hash device.
    pub levels: Vec<u8>,
    /// The root hash.
    pub root: [u8; DIGEST],
}

impl TreeBuilder {
    /// A builder for trees with `salt` (format version 1: the salt before each block).
    pub fn new(salt: &[u8]) -> TreeBuilder {
        TreeBuilder {
            salt: salt.to_vec(),
            level0: Vec::new(),
        }
    }

    /// Adds whole data blocks (`data` is a multiple of [`BLOCK`] long; a shorter tail is
    /// zero-padded as the kernel does for the last block).
    pub fn feed(&mut self, data: &[u8]) {
        for block in data.chunks(BLOCK as usize) {
            if block.len() == BLOCK as usize {
                self.level0.push(block_digest(&self.salt, block));
            } else {
                let mut padded = block.to_vec();
                padded.resize(BLOCK as usize, 0);
                self.level0.push(block_digest(&self.salt, &padded));
            }
        }
    }

    /// Data blocks fed so far.
    pub fn blocks(&self) -> u64 {
        self.level0.len() as u64
    }

    /// The tree over the blocks fed (at least one).
    pub fn finish(self) -> Tree {
        let g = Geometry::new(self.blocks().max(1));
        let mut below = self.level0;
        let mut levels: Vec<Vec<u8>> = Vec::new();
        for &n in &g.level_blocks {
            let mut level: Vec<u8> = below.concat();
            level.resize((n * BLOCK) as usize, 0);
            below = level
                .chunks(BLOCK as usize)
                .map(|b| block_digest(&self.salt, b))
                .collect();
            levels.push(level);
        }
        let root = below.first().copied().unwrap_or_default();
        Tree {
            levels: levels.into_iter().rev().flatten().collect(),
            root,
        }
    }
}

/// Why a written slot does not hold the signed root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeError {
    /// The verity part's superblock is not kiln's.
    Superblock(String),
    /// The superblock covers another number of blocks than the root has.
    Blocks {
        /// Data blocks the superblock names.
        superblock: u64,
        /// Bytes of the root part.
        root_bytes: u64,
    },
    /// The verity part is shorter than the tree.
    Short {
        /// Bytes of the verity part.
        have: u64,
        /// Bytes of the tree.
        need: u64,
    },
    /// The tree computed from the written root has another root hash.
    RootHash {
        /// Computed.
        computed: [u8; DIGEST],
        /// Signed.
        signed: [u8; DIGEST],
    },
    /// The written tree differs from the computed one.
    Differs {
        /// The first hash block that differs.
        hash_block: u64,
    },
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::Superblock(e) => write!(f, "the root-verity part: {e}"),
            TreeError::Blocks {
                superblock,
                root_bytes,
            } => write!(
                f,
                "the root-verity superblock covers {superblock} blocks of 4096 bytes but the \
                 root part is {root_bytes} bytes"
            ),
            TreeError::Short { have, need } => write!(
                f,
                "the root-verity part is {have} bytes but its hash tree needs {need}"
            ),
            TreeError::RootHash { computed, signed } => write!(
                f,
                "the dm-verity tree of the root as written to the slot has root hash {} but the \
                 signed manifest says {}",
                hex(computed),
                hex(signed)
            ),
            TreeError::Differs { hash_block } => write!(
                f,
                "the written root-verity part differs from the hash tree of the written root at \
                 hash block {hash_block}"
            ),
        }
    }
}

/// The superblock of a verity part, checked against the root part's size.
pub fn superblock(verity: &[u8], root_bytes: u64) -> Result<Superblock, TreeError> {
    let sb = Superblock::parse(verity).map_err(|e| TreeError::Superblock(e.to_string()))?;
    if root_bytes % BLOCK != 0 || sb.data_blocks != root_bytes / BLOCK {
        return Err(TreeError::Blocks {
            superblock: sb.data_blocks,
            root_bytes,
        });
    }
    let need = Geometry::new(sb.data_blocks).hash_bytes();
    if (verity.len() as u64) < need {
        return Err(TreeError::Short {
            have: verity.len() as u64,
            need,
        });
    }
    Ok(sb)
}

/// Checks a computed tree against the signed root hash and the written verity part.
pub fn check_tree(tree: &Tree, verity: &[u8], signed: &[u8; DIGEST]) -> Result<(), TreeError> {
    if tree.root != *signed {
        return Err(TreeError::RootHash {
            computed: tree.root,
            signed: *signed,
        });
    }
    let written = verity.get(BLOCK as usize..BLOCK as usize + tree.levels.len());
    if written != Some(&tree.levels[..]) {
        let first = written
            .unwrap_or_default()
            .chunks(BLOCK as usize)
            .zip(tree.levels.chunks(BLOCK as usize))
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(TreeError::Differs {
            hash_block: 1 + first as u64,
        });
    }
    Ok(())
}

/// The bytes of the PE section `name` (`.cmdline`, `.osrel`) of a UKI held in memory,
/// read with the ESP module's section table reader.
pub fn pe_section<'a>(pe: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let sections = esp::pe_sections(pe).ok()?;
    let (start, end) = sections.iter().find(|s| s.name == name)?.data_range();
    pe.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
}

/// Why a UKI does not belong to the bundle's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UkiError {
    /// Not a PE file with a `.cmdline` section.
    NoCmdline,
    /// The command line names no root hash.
    NoRootHash(String),
    /// It names another root hash.
    OtherRootHash {
        /// On the command line.
        cmdline: String,
        /// In the manifest.
        manifest: String,
    },
    /// Its os-release names another version.
    OtherVersion {
        /// In `.osrel`.
        osrel: String,
        /// In the manifest.
        manifest: String,
    },
}

impl fmt::Display for UkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UkiError::NoCmdline => f.write_str("the uki part is not a UKI with a .cmdline section"),
            UkiError::NoRootHash(line) => write!(
                f,
                "the UKI's command line has no kiln.roothash= ({:?})",
                line.chars().take(200).collect::<String>()
            ),
            UkiError::OtherRootHash { cmdline, manifest } => write!(
                f,
                "the UKI's command line has kiln.roothash={cmdline} but the manifest's root \
                 hash is {manifest}"
            ),
            UkiError::OtherVersion { osrel, manifest } => write!(
                f,
                "the UKI's os-release says IMAGE_VERSION={osrel} but the manifest's version is \
                 {manifest}"
            ),
        }
    }
}

/// Checks that the UKI's command line carries `kiln.roothash=<root_hash>` and that its
/// os-release (when it has IMAGE_VERSION) names `version`.
pub fn check_uki(uki: &[u8], root_hash: &str, version: &str) -> Result<(), UkiError> {
    let cmdline = pe_section(uki, ".cmdline").ok_or(UkiError::NoCmdline)?;
    let line = String::from_utf8_lossy(cmdline)
        .trim_end_matches('\0')
        .to_string();
    let found = line
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("kiln.roothash="))
        .ok_or_else(|| UkiError::NoRootHash(line.clone()))?;
    if !found.eq_ignore_ascii_case(root_hash) {
        return Err(UkiError::OtherRootHash {
            cmdline: found.to_string(),
            manifest: root_hash.to_string(),
        });
    }
    if let Some(osrel) = pe_section(uki, ".osrel") {
        let text = String::from_utf8_lossy(osrel);
        if let Some(v) = esp::os_release_field(&text, "IMAGE_VERSION") {
            if v != version {
                return Err(UkiError::OtherVersion {
                    osrel: v,
                    manifest: version.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A minimal PE file with the given sections (name, bytes), as the tests' UKIs.
#[cfg(test)]
pub fn fake_pe(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut pe = vec![0u8; 0x200];
    pe[..2].copy_from_slice(b"MZ");
    pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    let coff = 0x84;
    pe[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
    // No optional header: the section table follows the COFF header.
    let mut data_at = 0x200usize;
    let mut body = Vec::new();
    for (i, (name, bytes)) in sections.iter().enumerate() {
        let at = coff + 20 + 40 * i;
        pe[at..at + name.len()].copy_from_slice(name.as_bytes());
        pe[at + 8..at + 12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        let raw = bytes.len().next_multiple_of(512);
        pe[at + 16..at + 20].copy_from_slice(&(raw as u32).to_le_bytes());
        pe[at + 20..at + 24].copy_from_slice(&(data_at as u32).to_le_bytes());
        let mut padded = bytes.to_vec();
        padded.resize(raw, 0);
        body.extend_from_slice(&padded);
        data_at += raw;
    }
    pe.extend_from_slice(&body);
    pe
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verity_tree::{build_tree, test_data};

    #[test]
    fn the_tree_matches_the_test_builder_and_finds_changes() {
        let salt = [0x5a; 32];
        for blocks in [1usize, 2, 128, 129, 1000] {
            let data = test_data(blocks);
            let (dev, root) = build_tree(&data, &salt);
            let mut b = TreeBuilder::new(&salt);
            // Fed in uneven pieces of whole blocks.
            for chunk in data.chunks(4096 * 7) {
                b.feed(chunk);
            }
            let tree = b.finish();
            assert_eq!(tree.root, root, "{blocks} blocks");
            assert_eq!(&dev[4096..], &tree.levels[..], "{blocks} blocks");
            let sb = superblock(&dev, data.len() as u64).unwrap();
            assert_eq!(sb.data_blocks, blocks as u64);
            check_tree(&tree, &dev, &root).unwrap();
        }
        let data = test_data(300);
        let (dev, root) = build_tree(&data, &salt);
        let mut b = TreeBuilder::new(&salt);
        b.feed(&data);
        let tree = b.finish();
        let mut other = root;
        other[0] ^= 1;
        let e = check_tree(&tree, &dev, &other).unwrap_err();
        assert!(e.to_string().contains("signed manifest says"), "{e}");
        let mut bad = dev.clone();
        bad[3 * 4096 + 1] ^= 1;
        assert_eq!(
            check_tree(&tree, &bad, &root).unwrap_err(),
            TreeError::Differs { hash_block: 3 }
        );
        let e = superblock(&dev, 301 * 4096).unwrap_err();
        assert!(e.to_string().contains("covers 300 blocks"), "{e}");
        let e = superblock(&dev[..8192], 300 * 4096).unwrap_err();
        assert!(matches!(e, TreeError::Short { .. }), "{e}");
    }

    #[test]
    fn the_ukis_command_line_must_name_the_root_hash() {
        let hash = "ab".repeat(32);
        let cmdline = format!("console=ttyS0 kiln.roothash={hash} ro\0");
        let osrel = b"ID=debian\nIMAGE_VERSION=\"2.0\"\n";
        let uki = fake_pe(&[
            (".osrel", osrel),
            (".cmdline", cmdline.as_bytes()),
            (".linux", b"kernel"),
        ]);
        assert_eq!(pe_section(&uki, ".linux"), Some(&b"kernel"[..]));
        check_uki(&uki, &hash, "2.0").unwrap();
        let e = check_uki(&uki, &"cd".repeat(32), "2.0").unwrap_err();
        assert!(
            e.to_string().contains("but the manifest's root hash"),
            "{e}"
        );
        let e = check_uki(&uki, &hash, "2.1").unwrap_err();
        assert!(e.to_string().contains("IMAGE_VERSION=2.0"), "{e}");
        let bare = fake_pe(&[(".cmdline", b"console=ttyS0")]);
        let e = check_uki(&bare, &hash, "2.0").unwrap_err();
        assert!(e.to_string().contains("no kiln.roothash="), "{e}");
        assert_eq!(
            check_uki(b"not a pe", &hash, "2.0"),
            Err(UkiError::NoCmdline)
        );
    }

    /// veritysetup (the reference) agrees with the tree computed here.
    #[test]
    fn veritysetup_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        let hash_path = dir.path().join("hash");
        let data = test_data(777);
        std::fs::write(&data_path, &data).unwrap();
        let salt = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let out = std::process::Command::new("veritysetup")
            .args(["format", "--salt", salt])
            .arg(&data_path)
            .arg(&hash_path)
            .output()
            .expect("veritysetup is installed");
        assert!(out.status.success(), "{out:?}");
        let dev = std::fs::read(&hash_path).unwrap();
        let sb = superblock(&dev, data.len() as u64).unwrap();
        let mut b = TreeBuilder::new(&sb.salt);
        b.feed(&data);
        let tree = b.finish();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&hex(&tree.root)), "{stdout}");
        check_tree(&tree, &dev, &tree.root.clone()).unwrap();
    }
}
