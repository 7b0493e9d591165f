//! The system calls `kiln flash` needs that std does not offer: block device
//! ioctls (size, sector size, read-only flag, re-reading the partition table,
//! flushing the buffer cache) and `posix_fadvise`.
//!
//! This is the only module of the builder with `unsafe` code: the ioctl calls
//! that nix's macros generate. Everything else goes through [`BlockOps`], so
//! the code that decides what to do is tested without a device.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

// <linux/fs.h>: BLKROGET _IO(0x12,94) (int *), BLKRRPART _IO(0x12,95),
// BLKFLSBUF _IO(0x12,97), BLKSSZGET _IO(0x12,104) (int *), BLKGETSIZE64
// _IOR(0x12,114,size_t).
nix::ioctl_read_bad!(
    /// BLKROGET: the kernel's read-only flag.
    blk_ro_get,
    nix::request_code_none!(0x12, 94),
    nix::libc::c_int
);
nix::ioctl_none!(
    /// BLKRRPART: re-read the partition table.
    blk_rr_part,
    0x12,
    95
);
nix::ioctl_none!(
    /// BLKFLSBUF: write back and drop the buffer cache.
    blk_fls_buf,
    0x12,
    97
);
nix::ioctl_read_bad!(
    /// BLKSSZGET: the logical sector size.
    blk_ssz_get,
    nix::request_code_none!(0x12, 104),
    nix::libc::c_int
);
nix::ioctl_read!(
    /// BLKGETSIZE64: the size in bytes.
    blk_get_size64,
    0x12,
    114,
    u64
);

/// What `kiln flash` asks of a block device (and of a regular file standing in
/// for one).
pub trait BlockOps {
    /// Size in bytes.
    fn size(&self, file: &File) -> io::Result<u64>;
    /// Logical sector size in bytes.
    fn logical_sector(&self, file: &File) -> io::Result<u64>;
    /// Whether the kernel marks the device read-only.
    fn read_only(&self, file: &File) -> io::Result<bool>;
    /// Asks the kernel to read the partition table again.
    fn reread_partitions(&self, file: &File) -> io::Result<()>;
    /// Drops cached pages, so the next reads come from the device.
    fn drop_cache(&self, file: &File) -> io::Result<()>;
}

/// The host's block devices, through ioctls.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostBlock;

impl BlockOps for HostBlock {
    fn size(&self, file: &File) -> io::Result<u64> {
        let mut v: u64 = 0;
        // SAFETY: the fd is open for the call's duration and `v` is a valid,
        // writable u64, the size_t BLKGETSIZE64 stores into on 64-bit Linux.
        unsafe { blk_get_size64(file.as_raw_fd(), &mut v) }.map_err(io::Error::from)?;
        Ok(v)
    }

    fn logical_sector(&self, file: &File) -> io::Result<u64> {
        let mut v: nix::libc::c_int = 0;
        // SAFETY: the fd is open and `v` is the writable int BLKSSZGET fills.
        unsafe { blk_ssz_get(file.as_raw_fd(), &mut v) }.map_err(io::Error::from)?;
        u64::try_from(v).map_err(|_| io::Error::other(format!("sector size {v}")))
    }

    fn read_only(&self, file: &File) -> io::Result<bool> {
        let mut v: nix::libc::c_int = 0;
        // SAFETY: the fd is open and `v` is the writable int BLKROGET fills.
        unsafe { blk_ro_get(file.as_raw_fd(), &mut v) }.map_err(io::Error::from)?;
        Ok(v != 0)
    }

    fn reread_partitions(&self, file: &File) -> io::Result<()> {
        // SAFETY: BLKRRPART takes no argument; the fd is open.
        unsafe { blk_rr_part(file.as_raw_fd()) }.map_err(io::Error::from)?;
        Ok(())
    }

    fn drop_cache(&self, file: &File) -> io::Result<()> {
        // SAFETY: BLKFLSBUF takes no argument; the fd is open. It writes back
        // and drops the device's buffer cache.
        unsafe { blk_fls_buf(file.as_raw_fd()) }.map_err(io::Error::from)?;
        fadvise_dontneed(file)
    }
}

/// A regular file as a target: its length, 512-byte sectors, never read-only
/// by flag, no partition table to re-read.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileBlock;

impl BlockOps for FileBlock {
    fn size(&self, file: &File) -> io::Result<u64> {
        Ok(file.metadata()?.len())
    }

    fn logical_sector(&self, _file: &File) -> io::Result<u64> {
        Ok(512)
    }

    fn read_only(&self, _file: &File) -> io::Result<bool> {
        Ok(false)
    }

    fn reread_partitions(&self, _file: &File) -> io::Result<()> {
        Ok(())
    }

    fn drop_cache(&self, file: &File) -> io::Result<()> {
        fadvise_dontneed(file)
    }
}

/// Tells the kernel the file's cached pages are not needed (they are clean
/// after an fsync, so it drops them).
fn fadvise_dontneed(file: &File) -> io::Result<()> {
    posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .map_err(io::Error::from)
}
