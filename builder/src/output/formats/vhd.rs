//! `<stem>.vhd`: a fixed VHD (what Azure takes), which is the raw disk
//! followed by a 512-byte footer (Microsoft's "Virtual Hard Disk Image
//! Format Specification", hard disk footer).
//!
//! Azure wants the virtual size to be a whole number of MiB, so the disk is
//! padded with zeros up to [`VHD_ALIGN`] when needed. The size readers use
//! is `current_size`; the CHS geometry is filled in by the spec's
//! algorithm. Some readers prefer the geometry, which rounds the size down:
//! QEMU since 10.0 does so only for images whose creator is Virtual PC or
//! QEMU's old `qemu` tag, so `qemu-img` sees the exact size of this one.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{for_zeros, io_at, FormatError, Segment, Source};
use crate::output::manifest::FileDigest;
use crate::plan::Guid;
use crate::profile::Format;

/// The virtual size is rounded up to a multiple of this (Azure's rule).
pub const VHD_ALIGN: u64 = 1 << 20;
/// Largest disk the format describes (2040 GiB, as QEMU and Hyper-V cap it).
const MAX_SIZE: u64 = 0xff00_0000 * 512;
/// VHD timestamps count from 2000-01-01 00:00:00 UTC.
const VHD_EPOCH: i64 = 946_684_800;
const FOOTER: usize = 512;
const COPY: usize = 1 << 20;

/// The spec's CHS geometry for a disk of `size` bytes: (cylinders, heads,
/// sectors per track).
pub fn chs_geometry(size: u64) -> (u16, u8, u8) {
    let total = (size / 512).min(65535 * 16 * 255);
    let (spt, heads, cth) = if total >= 65535 * 16 * 63 {
        (255, 16, total / 255)
    } else {
        let mut spt = 17;
        let mut cth = total / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
        (spt, heads, cth)
    };
    // The caps above keep every value inside its field.
    ((cth / heads) as u16, heads as u8, spt as u8)
}

fn creator_version() -> u32 {
    let major: u32 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0);
    let minor: u32 = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0);
    (major << 16) | (minor & 0xffff)
}

/// The footer of a fixed VHD of `size` bytes (already a whole number of
/// sectors), created at `epoch` (seconds since 1970), with `unique_id`.
pub fn vhd_footer(size: u64, epoch: i64, unique_id: [u8; 16]) -> [u8; FOOTER] {
    let mut f = [0u8; FOOTER];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: the reserved bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed disk)
    let stamp = u32::try_from((epoch - VHD_EPOCH).max(0)).unwrap_or(u32::MAX);
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"kiln");
    f[32..36].copy_from_slice(&creator_version().to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
    let (c, h, s) = chs_geometry(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(&unique_id);
    // saved state (byte 84) and the reserved rest stay zero
    let sum = f.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// Writes the VHD; returns its digest and the SHA-256 of the raw image
/// (hashed on the way, so the caller need not hash it again).
pub(crate) fn write(
    src: &Source<'_>,
    out_path: &Path,
    epoch: i64,
    seed: &[u8; 32],
    report: &dyn Fn(u64),
) -> Result<(FileDigest, String), FormatError> {
    let virt = src.size.next_multiple_of(VHD_ALIGN);
    if virt > MAX_SIZE {
        return Err(FormatError::TooLarge {
            raw: src.path.to_path_buf(),
            format: Format::Vhd,
            size: virt,
            max: MAX_SIZE,
        });
    }
    let out = File::create(out_path).map_err(io_at(out_path, "creating"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; COPY];
    let mut done = 0u64;
    // Only mapped bytes are copied; the rest of the output stays a hole.
    for seg in src.segments(0) {
        match seg {
            Segment::File(r) => {
                let mut pos = r.start;
                while pos < r.end {
                    let n = (r.end - pos).min(COPY as u64) as usize;
                    src.read_at(&mut buf[..n], pos)?;
                    h.update(&buf[..n]);
                    out.write_all_at(&buf[..n], pos)
                        .map_err(io_at(out_path, "writing"))?;
                    pos += n as u64;
                    done += n as u64;
                    report(done);
                }
            }
            Segment::Zeros(n) => {
                for_zeros(n, |z| h.update(z));
                done += n;
                report(done);
            }
            Segment::Mem(_) => {}
        }
    }
    let raw_sha = hex::encode(h.clone().finalize());
    for_zeros(virt - src.size, |z| h.update(z));
    let id = *Guid::derive(seed, "vhd-unique-id").as_bytes();
    let footer = vhd_footer(virt, epoch, id);
    h.update(footer);
    out.set_len(virt).map_err(io_at(out_path, "sizing"))?;
    out.write_all_at(&footer, virt)
        .map_err(io_at(out_path, "writing the footer"))?;
    out.sync_all().map_err(io_at(out_path, "syncing"))?;
    Ok((
        FileDigest {
            file: super::file_name(out_path),
            size: virt + FOOTER as u64,
            sha256: hex::encode(h.finalize()),
        },
        raw_sha,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_the_spec_table() {
        // 300 MiB = 614400 sectors: too many for 17 and for 31 sectors per track.
        assert_eq!(chs_geometry(300 << 20), (609, 16, 63));
        // Small disks keep 17 sectors and at least 4 heads.
        assert_eq!(chs_geometry(20 << 20), (602, 4, 17));
        // 127 GiB and beyond: 255 sectors, 16 heads, capped cylinders.
        assert_eq!(chs_geometry(1 << 40), (65535, 16, 255));
    }

    #[test]
    fn footer_checksum_and_fields() {
        let f = vhd_footer(1 << 30, VHD_EPOCH + 10, [7; 16]);
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let mut zeroed = f;
        zeroed[64..68].fill(0);
        let sum = zeroed.iter().fold(0u32, |a, &b| a + u32::from(b));
        assert_eq!(stored, !sum);
        assert_eq!(&f[24..28], &10u32.to_be_bytes());
        assert_eq!(&f[60..64], &2u32.to_be_bytes());
        // Before 2000 the timestamp clamps to 0.
        let old = vhd_footer(1 << 30, 0, [7; 16]);
        assert_eq!(&old[24..28], &[0; 4]);
    }
}
