//! The target side of `kiln flash`: what the path is (a whole disk, a
//! partition, a regular file), whether the host uses it (mounted, swap,
//! held by device-mapper or md, the disk the host runs from), and a pure
//! [`judge`] that refuses what must not be written.
//!
//! The facts come from `/sys/dev/block`, `/proc/self/mountinfo` and
//! `/proc/swaps` ([`look`]); [`judge`] only compares them, so its tests need
//! no devices.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What the target path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// A whole disk (also a loop device or an NVMe namespace).
    Disk,
    /// A partition of `disk`.
    Partition {
        /// The disk's kernel name.
        disk: String,
    },
    /// A regular file (an image file, or a test).
    File,
    /// Anything else (a folder, a character device, a socket).
    Other(&'static str),
}

/// A block device the kernel knows: kernel name and device number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dev {
    /// Kernel name, e.g. `sda1`.
    pub name: String,
    /// `major:minor`.
    pub number: String,
}

/// Facts about the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// The path given.
    pub path: PathBuf,
    /// What it is.
    pub kind: TargetKind,
    /// The device and, for a disk, its partitions.
    pub devices: Vec<Dev>,
    /// Devices stacked on any of them (`holders/`: dm, md, bcache).
    pub holders: Vec<String>,
    /// The disk the target is or is part of (kernel name).
    pub disk: Option<String>,
    /// The kernel's read-only flag (sysfs `ro`).
    pub read_only: bool,
}

/// One line of `/proc/self/mountinfo`, the parts that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted device.
    pub number: String,
    /// Where it is mounted.
    pub point: String,
    /// The mount source (e.g. `/dev/sda1`).
    pub source: String,
}

/// What the host uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// Every mount.
    pub mounts: Vec<Mount>,
    /// Swap devices (paths from `/proc/swaps`).
    pub swaps: Vec<String>,
    /// Kernel names of the disks under `/`, `/usr` and `/boot` (through
    /// device-mapper and md to the disks below).
    pub system_disks: Vec<String>,
}

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a block device or a regular file.
    #[error("it is not a disk or a regular file (it is {0})")]
    NotADisk(&'static str),
    /// The host runs from it.
    #[error("it is {0}, the disk this host runs from (`/`, /usr or /boot is on it)")]
    SystemDisk(String),
    /// Mounted.
    #[error("/dev/{device} is mounted on {point}: unmount it first")]
    Mounted {
        /// The mounted device.
        device: String,
        /// Where.
        point: String,
    },
    /// Used as swap.
    #[error("/dev/{0} is in use as swap: swapoff it first")]
    Swap(String),
    /// Held by another device.
    #[error("it is in use by {0} (device-mapper, LVM, RAID or dm-crypt): stop that first")]
    Held(String),
    /// A partition, not a whole disk.
    #[error(
        "it is a partition of /dev/{0}, not a whole disk: name the disk, or pass --force to \
         write the image into this partition"
    )]
    Partition(String),
    /// Read-only.
    #[error("it is read-only")]
    ReadOnly,
    /// No permission to write it.
    #[error("permission denied: writing a disk needs root (sudo) or the `disk` group")]
    Permission,
    /// The target is the image file.
    #[error("it is the image itself")]
    TheImage,
}

/// Refuses targets that must not be written. Pure.
pub fn judge(t: &TargetInfo, host: &HostView, force: bool) -> Result<(), Refusal> {
    if let TargetKind::Other(what) = t.kind {
        return Err(Refusal::NotADisk(what));
    }
    if let Some(d) = t.disk.as_ref().filter(|d| host.system_disks.contains(d)) {
        return Err(Refusal::SystemDisk(format!("/dev/{d}")));
    }
    for d in &t.devices {
        let dev_path = format!("/dev/{}", d.name);
        if let Some(m) = host
            .mounts
            .iter()
            .find(|m| m.number == d.number || m.source == dev_path)
        {
            return Err(Refusal::Mounted {
                device: d.name.clone(),
                point: m.point.clone(),
            });
        }
        if host.swaps.contains(&dev_path) {
            return Err(Refusal::Swap(d.name.clone()));
        }
    }
    if !t.holders.is_empty() {
        return Err(Refusal::Held(t.holders.join(", ")));
    }
    if let TargetKind::Partition { disk } = &t.kind {
        if !force {
            return Err(Refusal::Partition(disk.clone()));
        }
    }
    if t.read_only {
        return Err(Refusal::ReadOnly);
    }
    Ok(())
}

/// Parses `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            Some(Mount {
                number: f.get(2)?.to_string(),
                point: unescape(f.get(4)?),
                source: unescape(f.get(dash + 2)?),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn sys_dir(number: &str) -> Option<PathBuf> {
    fs::canonicalize(format!("/sys/dev/block/{number}")).ok()
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The whole disks under a block device: itself or its parent disk, and
/// through `slaves/` (dm, md) the disks below.
fn disks_under(dir: &Path, depth: u32, out: &mut Vec<String>) {
    if depth > 8 {
        return;
    }
    let disk = if dir.join("partition").exists() {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    };
    let Some(disk) = disk else { return };
    let slaves: Vec<PathBuf> = fs::read_dir(disk.join("slaves"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::canonicalize(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() {
        let n = name_of(&disk);
        if !out.contains(&n) {
            out.push(n);
        }
    }
    for s in slaves {
        disks_under(&s, depth + 1, out);
    }
}

/// Reads what the host uses from /proc and /sys.
pub fn host_view() -> HostView {
    let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let swaps = fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(unescape))
        .collect();
    let mut system_disks = Vec::new();
    for m in mounts
        .iter()
        .filter(|m| ["/", "/usr", "/boot", "/boot/efi"].contains(&m.point.as_str()))
    {
        let dir = sys_dir(&m.number).or_else(|| {
            let dev = fs::metadata(&m.source)
                .ok()
                .filter(|x| x.file_type().is_block_device())?;
            sys_dir(&number_of(dev.rdev()))
        });
        if let Some(dir) = dir {
            disks_under(&dir, 0, &mut system_disks);
        }
    }
    HostView {
        mounts,
        swaps,
        system_disks,
    }
}

fn number_of(rdev: u64) -> String {
    format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    )
}

/// Looks at the target path: what it is and which devices belong to it.
pub fn look(path: &Path) -> std::io::Result<TargetInfo> {
    let meta = fs::metadata(path)?;
    let ft = meta.file_type();
    let mut t = TargetInfo {
        path: path.to_path_buf(),
        kind: TargetKind::File,
        devices: Vec::new(),
        holders: Vec::new(),
        disk: None,
        read_only: false,
    };
    if ft.is_file() {
        return Ok(t);
    }
    if !ft.is_block_device() {
        t.kind = TargetKind::Other(if ft.is_dir() {
            "a folder"
        } else if ft.is_char_device() {
            "a character device"
        } else {
            "neither"
        });
        return Ok(t);
    }
    let number = number_of(meta.rdev());
    let Some(dir) = sys_dir(&number) else {
        // A block device node the kernel has no sysfs entry for: treat it as a
        // disk with nothing known about it.
        t.kind = TargetKind::Disk;
        return Ok(t);
    };
    let name = name_of(&dir);
    t.read_only = read_trim(&dir.join("ro")).is_some_and(|v| v == "1");
    t.devices.push(Dev {
        name: name.clone(),
        number,
    });
    let mut holder_dirs = vec![dir.join("holders")];
    if dir.join("partition").exists() {
        let disk = dir.parent().map(name_of).unwrap_or_default();
        t.kind = TargetKind::Partition { disk: disk.clone() };
        t.disk = Some(disk);
    } else {
        t.kind = TargetKind::Disk;
        t.disk = Some(name);
        for e in fs::read_dir(&dir)?.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(n) = read_trim(&p.join("dev")) {
                    t.devices.push(Dev {
                        name: name_of(&p),
                        number: n,
                    });
                }
                holder_dirs.push(p.join("holders"));
            }
        }
    }
    for h in holder_dirs {
        if let Ok(rd) = fs::read_dir(h) {
            t.holders.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn disk() -> TargetInfo {
        TargetInfo {
            path: "/dev/sdb".into(),
            kind: TargetKind::Disk,
            devices: vec![
                Dev {
                    name: "sdb".into(),
                    number: "8:16".into(),
                },
                Dev {
                    name: "sdb1".into(),
                    number: "8:17".into(),
                },
            ],
            holders: vec![],
            disk: Some("sdb".into()),
            read_only: false,
        }
    }

    fn host() -> HostView {
        HostView {
            mounts: parse_mountinfo(
                "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
                 30 22 0:25 / /mnt/my\\040stick rw - vfat /dev/sdc1 rw\n",
            ),
            swaps: vec!["/dev/sdd2".into()],
            system_disks: vec!["sda".into()],
        }
    }

    #[test]
    fn a_free_disk_passes() {
        assert_eq!(judge(&disk(), &host(), false), Ok(()));
    }

    #[test]
    fn refuses_mounted_swap_held_system_partition_and_read_only() {
        let h = host();
        assert_eq!(h.mounts[1].point, "/mnt/my stick");
        let mut t = disk();
        t.devices[1].number = "8:2".into();
        assert!(matches!(judge(&t, &h, true), Err(Refusal::Mounted { .. })));
        let mut t = disk();
        t.devices[1].name = "sdc1".into();
        let e = judge(&t, &h, true).unwrap_err().to_string();
        assert!(e.contains("/dev/sdc1 is mounted on /mnt/my stick"), "{e}");
        let mut t = disk();
        t.devices[1].name = "sdd2".into();
        assert_eq!(judge(&t, &h, true), Err(Refusal::Swap("sdd2".into())));
        let mut t = disk();
        t.holders.push("dm-0".into());
        assert_eq!(judge(&t, &h, true), Err(Refusal::Held("dm-0".into())));
        let mut t = disk();
        t.disk = Some("sda".into());
        assert!(matches!(judge(&t, &h, true), Err(Refusal::SystemDisk(_))));
        let mut t = disk();
        t.kind = TargetKind::Partition { disk: "sdb".into() };
        assert_eq!(judge(&t, &h, false), Err(Refusal::Partition("sdb".into())));
        assert_eq!(judge(&t, &h, true), Ok(()));
        let mut t = disk();
        t.read_only = true;
        assert_eq!(judge(&t, &h, true), Err(Refusal::ReadOnly));
        let mut t = disk();
        t.kind = TargetKind::Other("a folder");
        assert_eq!(judge(&t, &h, true), Err(Refusal::NotADisk("a folder")));
    }

    #[test]
    fn looks_at_files_and_folders() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(look(d.path()).unwrap().kind, TargetKind::Other("a folder"));
        let f = d.path().join("disk.img");
        std::fs::write(&f, b"").unwrap();
        assert_eq!(look(&f).unwrap().kind, TargetKind::File);
    }
}
