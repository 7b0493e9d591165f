//! SHA-256 digests of what a build wrote: byte strings, files, and a disk
//! image with each of its partitions (the manifest records all of them).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::plan::DiskPlan;

/// Digests of a finished disk image, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDigests {
    /// The whole image.
    pub image: String,
    /// Each partition's bytes, in the plan's partition order.
    pub partitions: Vec<String>,
}

/// Hashes the image at `path` and each partition of its `plan`.
pub fn digest_disk(path: &Path, plan: &DiskPlan) -> io::Result<DiskDigests> {
    let ranges: Vec<(u64, u64)> = plan
        .partitions
        .iter()
        .map(|p| (p.offset(), p.size()))
        .collect();
    let (image, partitions) = sha256_image_and_ranges(path, &ranges)?;
    Ok(DiskDigests { image, partitions })
}

/// SHA-256 of a byte slice, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// SHA-256 of a file (streamed), lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
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
) -> io::Result<(String, Vec<String>)> {
    std::thread::scope(|s| {
        let whole = s.spawn(|| sha256_file(path));
        let parts: io::Result<Vec<String>> = ranges
            .iter()
            .map(|&(o, l)| sha256_range(path, o, l))
            .collect();
        let whole = whole
            .join()
            .map_err(|_| io::Error::other("hashing thread panicked"))??;
        Ok((whole, parts?))
    })
}

/// SHA-256 of a byte range of a file (a partition), lowercase hex.
pub fn sha256_range(path: &Path, offset: u64, len: u64) -> io::Result<String> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut r = f.take(len);
    let mut h = Sha256::new();
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
