//! Block devices as sysfs shows them (`/sys/class/block`): which disk the root lives on,
//! its partitions, and waiting for late devices to appear.
//!
//! Shared by the config channels and the updater (the ESP and the root slots are on
//! the boot disk): both reach the machine through [`BlockSys`].

use std::io;
use std::time::Duration;

use crate::sys::{Clock, Files};

/// What reading block devices takes: sysfs (files), a clock to wait for late devices,
/// reading a device's bytes and the root filesystem's device number.
pub trait BlockSys: Files + Clock {
    /// Reads `len` bytes at `offset` of the device node `dev` (`/dev/vdb`).
    fn read_dev(&mut self, dev: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// (major, minor) of the device the root filesystem is on.
    fn root_dev(&mut self) -> io::Result<(u64, u64)>;
}

/// Where the kernel lists block devices.
pub const SYS_BLOCK: &str = "/sys/class/block";

/// The disk the system booted from: the one holding the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDisk {
    /// Kernel name of the whole disk (`vda`, `nvme0n1`).
    pub disk: String,
    /// Kernel names of its partitions, sorted.
    pub partitions: Vec<String>,
}

impl BootDisk {
    /// True for the disk itself and each of its partitions.
    pub fn contains(&self, name: &str) -> bool {
        self.disk == name || self.partitions.iter().any(|p| p == name)
    }
}

/// Reads a small sysfs attribute of block device `name`, trimmed.
pub fn attr<S: BlockSys + ?Sized>(sys: &mut S, name: &str, attr: &str) -> Option<String> {
    sys.read_file(&format!("{SYS_BLOCK}/{name}/{attr}"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
}

/// True when `name` is a partition (sysfs gives partitions a `partition` attribute).
pub fn is_partition<S: BlockSys + ?Sized>(sys: &mut S, name: &str) -> bool {
    sys.exists(&format!("{SYS_BLOCK}/{name}/partition"))
}

/// Block device names, sorted.
pub fn list<S: BlockSys + ?Sized>(sys: &mut S) -> Result<Vec<String>, String> {
    let mut names = sys
        .list_dir(SYS_BLOCK)
        .map_err(|e| format!("listing {SYS_BLOCK}: {e}"))?;
    names.sort();
    Ok(names)
}

/// Size in bytes (sysfs counts 512-byte sectors whatever the device's block size).
pub fn size_bytes<S: BlockSys + ?Sized>(sys: &mut S, name: &str) -> Option<u64> {
    attr(sys, name, "size")?
        .parse::<u64>()
        .ok()
        .map(|s| s.saturating_mul(512))
}

/// The whole disk a partition belongs to: sysfs puts a partition's directory inside its
/// disk's.
pub fn disk_of<S: BlockSys + ?Sized>(sys: &mut S, names: &[String], part: &str) -> Option<String> {
    names
        .iter()
        .filter(|d| d.as_str() != part)
        .find(|d| sys.exists(&format!("{SYS_BLOCK}/{d}/{part}/partition")))
        .cloned()
}

/// The partitions of `disk`, sorted.
pub fn partitions_of<S: BlockSys + ?Sized>(
    sys: &mut S,
    names: &[String],
    disk: &str,
) -> Vec<String> {
    names
        .iter()
        .filter(|p| p.as_str() != disk)
        .filter(|p| sys.exists(&format!("{SYS_BLOCK}/{disk}/{p}/partition")))
        .cloned()
        .collect()
}

/// Finds the disk holding `/`: the block device whose number is the root's, followed
/// through device-mapper (`slaves/`, e.g. dm-0 → vda2) to a partition, then to its disk.
pub fn boot_disk<S: BlockSys + ?Sized>(sys: &mut S) -> Result<BootDisk, String> {
    let (major, minor) = sys.root_dev().map_err(|e| format!("stat /: {e}"))?;
    let number = format!("{major}:{minor}");
    let names = list(sys)?;
    let mut dev = names
        .iter()
        .find(|n| attr(sys, n, "dev").as_deref() == Some(number.as_str()))
        .cloned()
        .ok_or_else(|| {
            format!("no device in {SYS_BLOCK} has the root filesystem's number {number}")
        })?;
    // Stacked device-mapper targets are followed a few levels at most: a loop in sysfs
    // would be a kernel bug, not a reason to hang.
    for _ in 0..8 {
        let mut slaves = match sys.list_dir(&format!("{SYS_BLOCK}/{dev}/slaves")) {
            Ok(s) if !s.is_empty() => s,
            _ => break,
        };
        slaves.sort();
        dev = slaves.swap_remove(0);
    }
    let disk = if is_partition(sys, &dev) {
        disk_of(sys, &names, &dev)
            .ok_or_else(|| format!("{dev} is a partition, but no disk in {SYS_BLOCK} holds it"))?
    } else {
        dev
    };
    let partitions = partitions_of(sys, &names, &disk);
    Ok(BootDisk { disk, partitions })
}

/// How often the device list is polled while waiting for it to settle.
pub const SETTLE_POLL: Duration = Duration::from_millis(250);
/// How long the list must stay the same to count as settled.
pub const SETTLE_QUIET: Duration = Duration::from_secs(1);
/// The longest wait: a device that takes longer is missed rather than holding up boot.
pub const SETTLE_MAX: Duration = Duration::from_secs(5);

/// Waits until the block device list has not changed for [`SETTLE_QUIET`], at most
/// [`SETTLE_MAX`], and returns the last list.
pub fn settle<S: BlockSys + ?Sized>(sys: &mut S) -> Result<Vec<String>, String> {
    let mut last = list(sys)?;
    let mut quiet = Duration::ZERO;
    let mut waited = Duration::ZERO;
    while quiet < SETTLE_QUIET && waited < SETTLE_MAX {
        sys.sleep(SETTLE_POLL);
        waited += SETTLE_POLL;
        let now = list(sys)?;
        if now == last {
            quiet += SETTLE_POLL;
        } else {
            quiet = Duration::ZERO;
            last = now;
        }
    }
    Ok(last)
}
