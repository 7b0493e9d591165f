//! Finding the root partition by its GPT type GUID, waiting for disks to appear.
//!
//! There is no udev in the initramfs: sysfs says which block devices exist and which of
//! them are partitions, and the partition table is read from the whole disk's device
//! node. Disks show up asynchronously after their driver module loads, so the scan is
//! repeated until the root appears or the wait runs out.

use std::time::Duration;

use kiln_contract::gpt::{self as contract, attr, types, Guid};

use crate::gpt::{read_gpt, Gpt, GptError};

use super::InitSys;

/// How often the block devices are scanned while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The partition init will mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPartition {
    /// Whole disk, e.g. `vda`.
    pub disk: String,
    /// Partition device name, e.g. `vda2` (the node is `/dev/vda2`).
    pub device: String,
    /// Partition number (entry index + 1).
    pub number: u32,
    /// The entry's unique GUID.
    pub part_uuid: Guid,
    /// The table came from the backup header.
    pub from_backup: bool,
}

/// What one scan saw on one disk, for the log and the FATAL message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSeen {
    /// Device name.
    pub name: String,
    /// One-phrase summary ("GPT, 3 partitions: esp, root-x86-64, linux").
    pub summary: String,
}

/// Outcome of one pass over the block devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// A root partition is there (its device too). `others` lists further matches that
    /// were not chosen.
    Found {
        /// The chosen partition.
        root: RootPartition,
        /// Other matching partitions, as `device (PARTUUID)`.
        others: Vec<String>,
    },
    /// No root yet: what each disk looked like.
    NotYet(Vec<DiskSeen>),
}

/// The short name of a known partition type (`root-x86-64`), else the GUID, to make
/// messages readable.
fn type_name(t: &Guid) -> String {
    types::short_name(t).map_or_else(|| t.to_string(), str::to_string)
}

/// The readable name of a partition type GUID (`root-x86-64 (4f68bce3-...)`).
pub fn describe_type(t: &Guid) -> String {
    let name = type_name(t);
    if name == t.to_string() {
        name
    } else {
        format!("{name} ({t})")
    }
}

fn trimmed(sys: &mut dyn InitSys, rel: &str) -> Option<String> {
    sys.read_sysfs_block(rel).ok().map(|s| s.trim().to_string())
}

/// Reads one disk's table through the Sys.
pub(super) fn disk_gpt(sys: &mut dyn InitSys, disk: &str) -> Result<Gpt, String> {
    let sectors: Option<u64> = trimmed(sys, &format!("{disk}/size")).and_then(|s| s.parse().ok());
    if sectors == Some(0) {
        return Err("empty (size 0)".to_string());
    }
    let sector_size = trimmed(sys, &format!("{disk}/queue/logical_block_size"))
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| (512..=65536).contains(s) && s.is_power_of_two())
        .unwrap_or(512);
    let mut read = |off: u64, len: usize| sys.read_dev(disk, off, len);
    match read_gpt(&mut read, sector_size, sectors.map(|s| s * 512)) {
        Ok(gpt) => Ok(gpt),
        Err(GptError::Format(contract::GptError::NoSignature)) => Err("no GPT".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the kernel has a device for partition `n` of `disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PartNode {
    /// Its name (`vda2`, `nvme0n1p2`); /dev has the node.
    Ready(String),
    /// The kernel added it but /dev has no node yet.
    NoNode(String),
    /// The kernel has not added it (yet).
    NotAdded,
}

/// Looks up partition `n` of `disk` in sysfs and /dev.
pub(super) fn partition_node(sys: &mut dyn InitSys, disk: &str, n: u32) -> PartNode {
    let candidates = [format!("{disk}{n}"), format!("{disk}p{n}")];
    let present = candidates.into_iter().find(|c| {
        trimmed(sys, &format!("{disk}/{c}/partition")).as_deref() == Some(n.to_string().as_str())
    });
    match present {
        Some(device) if sys.dev_exists(&device) => PartNode::Ready(device),
        Some(device) => PartNode::NoNode(device),
        None => PartNode::NotAdded,
    }
}

/// Scans the block devices once for a partition of type `wanted`.
#[cfg(test)]
pub fn scan_once(sys: &mut dyn InitSys, wanted: &Guid) -> Scan {
    scan(sys, wanted, None)
}

/// Scans the block devices once for a partition of type `wanted` and, when given,
/// unique GUID `part_uuid` (the first half of `kiln.roothash=`, which names the one root
/// the hash belongs to).
pub fn scan(sys: &mut dyn InitSys, wanted: &Guid, part_uuid: Option<&Guid>) -> Scan {
    let mut names = match sys.list_block() {
        Ok(n) => n,
        Err(e) => {
            return Scan::NotYet(vec![DiskSeen {
                name: "/sys/class/block".to_string(),
                summary: format!("cannot be listed: {e}"),
            }])
        }
    };
    names.sort();
    let mut seen = Vec::new();
    let mut found: Vec<RootPartition> = Vec::new();
    for disk in names {
        // Partitions have a `partition` attribute; whole disks do not.
        if sys.read_sysfs_block(&format!("{disk}/partition")).is_ok() {
            continue;
        }
        let gpt = match disk_gpt(sys, &disk) {
            Ok(g) => g,
            Err(summary) => {
                seen.push(DiskSeen {
                    name: disk,
                    summary,
                });
                continue;
            }
        };
        let types: Vec<String> = gpt
            .entries
            .iter()
            .map(|e| type_name(&e.type_guid))
            .collect();
        let mut summary = format!(
            "GPT{}, {} partitions: {}",
            if gpt.from_backup {
                " (backup header)"
            } else {
                ""
            },
            gpt.entries.len(),
            types.join(", ")
        );
        for entry in gpt.entries.iter().filter(|e| e.type_guid == *wanted) {
            let n = entry.number();
            match part_uuid {
                // The hash names this partition exactly, so "do not mount automatically"
                // (e.g. on the other slot of an A/B pair) does not apply.
                Some(u) if entry.part_guid != *u => {
                    summary.push_str(&format!(
                        "; partition {n} has PARTUUID {}, not {u} (the first half of kiln.roothash=)",
                        entry.part_guid
                    ));
                    continue;
                }
                Some(_) => {}
                None if attr::has(entry.attributes, attr::NO_AUTO) => continue,
                None => {}
            }
            match partition_node(sys, &disk, n) {
                PartNode::Ready(device) => found.push(RootPartition {
                    disk: disk.clone(),
                    device,
                    number: n,
                    part_uuid: entry.part_guid,
                    from_backup: gpt.from_backup,
                }),
                PartNode::NoNode(device) => {
                    summary.push_str(&format!("; /dev/{device} not created yet"));
                }
                PartNode::NotAdded => summary.push_str(&format!(
                    "; partition {n} matches but the kernel has not added it yet"
                )),
            }
        }
        seen.push(DiskSeen {
            name: disk,
            summary,
        });
    }
    let mut found = found.into_iter();
    match found.next() {
        Some(root) => Scan::Found {
            root,
            others: found
                .map(|r| format!("/dev/{} (PARTUUID {})", r.device, r.part_uuid))
                .collect(),
        },
        None => Scan::NotYet(seen),
    }
}

/// Why the root was not found in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound {
    /// What the last scan saw.
    pub disks: Vec<DiskSeen>,
    /// The wanted type.
    pub wanted: Guid,
    /// The wanted unique GUID, if `kiln.roothash=` pins one.
    pub part_uuid: Option<Guid>,
    /// The configured wait (`kiln.rootwait`).
    pub wait: Duration,
}

impl NotFound {
    /// The reason, without the module part (the caller adds it).
    pub fn message(&self) -> String {
        let disks = if self.disks.is_empty() {
            "none (is the disk driver, e.g. virtio_blk or nvme, in modules.load?)".to_string()
        } else {
            let d: Vec<String> = self
                .disks
                .iter()
                .map(|d| format!("{} ({})", d.name, d.summary))
                .collect();
            d.join("; ")
        };
        let uuid = match &self.part_uuid {
            Some(u) => format!(" with PARTUUID {u} (the first half of kiln.roothash=)"),
            None => String::new(),
        };
        format!(
            "no root partition: no GPT partition of type {}{uuid} appeared within {} s; disks \
             seen: {}",
            describe_type(&self.wanted),
            self.wait.as_secs(),
            disks
        )
    }
}

/// Scans until a root partition is found or `wait` has passed (one scan at least).
pub fn wait_for_root(
    sys: &mut dyn InitSys,
    wanted: &Guid,
    part_uuid: Option<&Guid>,
    wait: Duration,
    debug: bool,
) -> Result<(RootPartition, Vec<String>), NotFound> {
    let start = sys.elapsed();
    let mut announced = false;
    let mut last_seen: Option<Vec<DiskSeen>> = None;
    loop {
        match scan(sys, wanted, part_uuid) {
            Scan::Found { root, others } => return Ok((root, others)),
            Scan::NotYet(seen) => {
                if debug && last_seen.as_ref() != Some(&seen) {
                    for d in &seen {
                        sys.say(&format!("kiln-init: disk {}: {}", d.name, d.summary));
                    }
                }
                let waited = sys.elapsed().saturating_sub(start);
                if waited >= wait {
                    return Err(NotFound {
                        disks: seen,
                        wanted: *wanted,
                        part_uuid: part_uuid.copied(),
                        wait,
                    });
                }
                if !announced {
                    sys.say(&format!(
                        "kiln-init: waiting up to {} s for a partition of type {}",
                        wait.as_secs(),
                        describe_type(wanted)
                    ));
                    announced = true;
                }
                last_seen = Some(seen);
                sys.sleep(POLL_INTERVAL);
            }
        }
    }
}
