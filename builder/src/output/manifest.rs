//! `<image>.manifest.json`: what went into an image and what came out, so a
//! user can check what they run. Deterministic: no build host paths, no
//! wall-clock times (only the build epoch).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The manifest schema version.
pub const SCHEMA: u32 = 2;

/// The whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Schema version.
    pub schema: u32,
    /// The kiln version that built the image.
    pub kiln_version: String,
    /// Image name (profile `name`).
    pub name: String,
    /// Target arch.
    pub arch: String,
    /// Timestamps in the image are clamped to this (seconds since the epoch).
    pub epoch: i64,
    /// The profile file.
    pub profile: Input,
    /// The lock file.
    pub lock: Input,
    /// Kernel identity and command line.
    pub kernel: Kernel,
    /// Every package in the image (and the kernel and stub packages).
    pub packages: Vec<Package>,
    /// Kernel modules shipped.
    pub modules: Modules,
    /// The partition table.
    pub disk: Disk,
    /// The root filesystem.
    pub root: Root,
    /// The dm-verity hash tree over the root filesystem.
    pub verity: Verity,
    /// Files produced, by kind (`image`, ...), and their digests.
    pub outputs: BTreeMap<String, FileDigest>,
    /// Digests of components inside the image.
    pub components: BTreeMap<String, FileDigest>,
    /// Built with `kiln build --debug-shell` (root logs in on the consoles
    /// without a password): such an image is for debugging, never for production.
    #[serde(default)]
    pub debug_shell: bool,
}

/// An input file, named without host paths.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Input {
    /// File name.
    pub file: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
}

/// Kernel facts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kernel {
    /// Package name.
    pub package: String,
    /// Package version.
    pub version: String,
    /// `uname -r`.
    pub release: String,
    /// The command line baked into the UKI.
    pub cmdline: String,
}

/// One package.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Debian arch (`all` possible).
    pub arch: String,
    /// `root`, `kernel` or `boot`.
    pub role: String,
    /// SHA-256 of the .deb.
    pub sha256: String,
}

/// Modules shipped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Modules {
    /// Sets selected by the profile.
    pub sets: Vec<String>,
    /// Modules in the root.
    pub root: Vec<String>,
    /// Modules in the initramfs, in load order.
    pub initramfs: Vec<String>,
}

/// The partition table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Disk {
    /// Disk size in bytes.
    pub size: u64,
    /// SHA-256 of the whole raw disk (whatever format it is published in).
    pub sha256: String,
    /// GPT disk GUID.
    pub guid: String,
    /// Partitions in table order.
    pub partitions: Vec<Partition>,
}

/// One partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Partition {
    /// Role (`esp`, `root`, ...).
    pub role: String,
    /// GPT partition name.
    pub label: String,
    /// Type GUID.
    pub type_guid: String,
    /// Unique partition GUID (PARTUUID).
    pub uuid: String,
    /// Byte offset in the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the partition's bytes.
    pub sha256: String,
}

impl Partition {
    /// The manifest entry of a planned partition whose bytes hash to `sha256`.
    pub fn of(p: &crate::plan::PlannedPartition, sha256: String) -> Partition {
        Partition {
            role: p.role.to_string(),
            label: p.name.clone(),
            type_guid: p.type_guid.to_string(),
            uuid: p.unique_guid.to_string(),
            offset: p.offset(),
            size: p.size(),
            sha256,
        }
    }
}

/// The root filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Root {
    /// Filesystem type.
    pub fs: String,
    /// Filesystem size in bytes.
    pub size: u64,
    /// Bytes of file data.
    pub data_bytes: u64,
    /// Inodes used.
    pub inodes: u64,
}

/// The dm-verity hash tree (`veritysetup format` v1 geometry).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verity {
    /// Hash algorithm (`sha256`).
    pub algorithm: String,
    /// Data block size in bytes.
    pub data_block_size: u64,
    /// Hash block size in bytes.
    pub hash_block_size: u64,
    /// Data blocks covered (the root filesystem, from the start of its partition).
    pub data_blocks: u64,
    /// Bytes of the hash device (superblock and every level).
    pub hash_size: u64,
    /// Salt, hex.
    pub salt: String,
    /// Superblock UUID.
    pub uuid: String,
    /// Root hash, hex (also `roothash=` on the kernel command line).
    pub root_hash: String,
    /// `full` or `on-read`: what the node checks at boot.
    pub check: String,
}

/// A file's size and digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    /// File name (no folder).
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256.
    pub sha256: String,
}

impl Manifest {
    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Reads a manifest file.
    pub fn read(path: &Path) -> Result<Manifest, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a kiln manifest: {e}", path.display()))
    }
}

/// SHA-256 of a byte slice, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// SHA-256 of a file (streamed), lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// SHA-256 of a whole image and of byte ranges of it (its partitions), on
/// two threads at once: SHA-256 is sequential per stream, so the image and
/// the partitions are hashed side by side instead of one after the other.
pub fn sha256_image_and_ranges(
    path: &Path,
    ranges: &[(u64, u64)],
) -> std::io::Result<(String, Vec<String>)> {
    std::thread::scope(|s| {
        let whole = s.spawn(|| sha256_file(path));
        let parts: std::io::Result<Vec<String>> = ranges
            .iter()
            .map(|&(o, l)| sha256_range(path, o, l))
            .collect();
        let whole = whole
            .join()
            .map_err(|_| std::io::Error::other("hashing thread panicked"))??;
        Ok((whole, parts?))
    })
}

/// SHA-256 of a byte range of a file (a partition), lowercase hex.
pub fn sha256_range(path: &Path, offset: u64, len: u64) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut r = f.take(len);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
