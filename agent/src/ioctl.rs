//! The raw ioctls the init needs, and the only `unsafe` code in the agent.
//!
//! Each wrapper takes byte buffers or nothing at all, checks what the kernel will read
//! or write before the call, and returns an [`Errno`]. Everything that builds or parses
//! the structures lives in safe code elsewhere (`dm.rs`, `gpt.rs`).
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// `sizeof(struct dm_ioctl)` on every Linux arch (the struct has no arch-dependent
/// fields): the size encoded in the device-mapper ioctl numbers.
pub const DM_IOCTL_SIZE: usize = 312;

/// Re-reads a whole disk's partition table (`BLKRRPART`). The kernel refuses with
/// `EBUSY` while any partition of the disk is open or mounted.
pub fn blkrrpart(disk: &File) -> Result<(), Errno> {
    let request = nix::request_code_none!(0x12, 95);
    // SAFETY: BLKRRPART takes no argument (the third argument is ignored); the fd is
    // borrowed from `disk`, which outlives the call.
    let r = unsafe { nix::libc::ioctl(disk.as_raw_fd(), request as _, 0) };
    Errno::result(r).map(drop)
}

/// Issues device-mapper ioctl number `nr` (`DM_DEV_CREATE` is 3, ...) on the control
/// device with `buf` as the `struct dm_ioctl` plus its payload. The kernel reads and
/// writes at most `data_size` bytes (the u32 at offset 12), so `buf` must be at least
/// [`DM_IOCTL_SIZE`] long and `data_size` must not exceed its length; otherwise
/// `EINVAL` is returned without calling the kernel.
pub fn dm(control: &File, nr: u8, buf: &mut [u8]) -> Result<(), Errno> {
    if buf.len() < DM_IOCTL_SIZE {
        return Err(Errno::EINVAL);
    }
    let data_size = u32::from_ne_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
    if data_size < DM_IOCTL_SIZE || data_size > buf.len() {
        return Err(Errno::EINVAL);
    }
    let request = nix::request_code_readwrite!(0xfd, nr, DM_IOCTL_SIZE);
    // SAFETY: `buf` is a live, exclusively borrowed allocation of at least `data_size`
    // bytes (checked above), which is all the kernel reads or writes for any DM ioctl;
    // the fd is borrowed from `control` for the duration of the call.
    let r = unsafe { nix::libc::ioctl(control.as_raw_fd(), request as _, buf.as_mut_ptr()) };
    Errno::result(r).map(drop)
}
