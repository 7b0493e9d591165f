//! A node on a bigger disk than its image, checked in the update scenario's boots
//! (update.rs), which run from the build's qcow2 output grown with `qemu-img resize` the
//! way a cloud or a homelab user grows it (so the qcow2 format boots on both arches;
//! the other scenarios boot raw images): on the first boot the init grows the partition
//! table and creates and formats `var` up to the end of the disk; /var and the
//! machine-id survive power cuts, updates and rollbacks; the root stays read-only. sgdisk
//! reads the table the node (its init, then the updater's slot rewrites) left.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln::arch::Arch;
use kiln_qemu_tests::{check_tool, copy_image};

/// How much bigger than the image the node's disk is.
const GROW: u64 = 2 << 30;
const VAR_TYPE: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";
/// The partition the init makes var in (after the ESP and the two slots' root and
/// verity partitions): the report's `var` field.
pub const VAR_DEV: &str = "/dev/vda6";

/// A node's disk: a copy of an image's qcow2 output, grown by [`GROW`].
pub struct GrownDisk {
    /// The qcow2 file QEMU boots.
    pub qcow2: PathBuf,
    /// Its virtual size in bytes.
    pub size: u64,
}

/// Copies `qcow2` (the qcow2 output of the raw image `raw`) into `dir` and grows it.
pub fn grown_disk(raw: &Path, qcow2: &Path, dir: &Path) -> GrownDisk {
    let copy = copy_image(qcow2, dir).unwrap();
    let size = std::fs::metadata(raw).unwrap().len() + GROW;
    check_tool(
        "qemu-img",
        &[
            "resize",
            "-f",
            "qcow2",
            &copy.display().to_string(),
            &size.to_string(),
        ],
    )
    .unwrap();
    GrownDisk { qcow2: copy, size }
}

/// The report fields a first boot on a grown disk must show: var made on the grown
/// disk, boot 1, a machine-id, a read-only root. Returns the machine-id.
pub fn check_first_report(arch: Arch, fields: &BTreeMap<String, String>) -> String {
    assert_eq!(
        fields.get("var").map(String::as_str),
        Some(VAR_DEV),
        "{arch}: {fields:?}"
    );
    assert_eq!(
        fields.get("boots").map(String::as_str),
        Some("1"),
        "{arch}: {fields:?}"
    );
    assert_eq!(
        fields.get("usr_write").map(String::as_str),
        Some("EROFS"),
        "{arch}: {fields:?}"
    );
    assert_eq!(
        fields.get("root_mode").map(String::as_str),
        Some("ro"),
        "{arch}: {fields:?}"
    );
    let id = fields.get("machine_id").cloned().unwrap_or_default();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{arch}: {fields:?}"
    );
    id
}

/// The report fields of a later boot (`boots` is its number): the same var, the
/// count kept on it, the same machine-id, nothing failed.
pub fn check_later_report(arch: Arch, fields: &BTreeMap<String, String>, boots: u32, id: &str) {
    assert_eq!(
        fields.get("var").map(String::as_str),
        Some(VAR_DEV),
        "{arch}: {fields:?}"
    );
    assert_eq!(
        fields.get("boots").map(String::as_str),
        Some(boots.to_string().as_str()),
        "{arch}: /var lost its data: {fields:?}"
    );
    assert_eq!(
        fields.get("machine_id").map(String::as_str),
        Some(id),
        "{arch}: machine-id changed"
    );
    assert_eq!(
        fields.get("failed").map(String::as_str),
        Some("0"),
        "{arch}: {fields:?}"
    );
}

/// With the machine off: sgdisk finds both headers of the grown disk's table valid, the
/// backup moved to the end, and `var` reaching the last usable sector. sgdisk reads raw
/// disks only, so it checks a raw copy in `dir`.
pub fn check_grown_table(arch: Arch, disk: &GrownDisk, dir: &Path) {
    let raw = dir.join("grown-disk.raw");
    let img = raw.display().to_string();
    check_tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            &disk.qcow2.display().to_string(),
            &img,
        ],
    )
    .unwrap();
    let verify = check_tool("sgdisk", &["-v", &img]).unwrap();
    assert!(
        verify.contains("No problems found"),
        "{arch}: sgdisk -v:\n{verify}"
    );
    let info = check_tool("sgdisk", &["-i", "6", &img]).unwrap();
    assert!(
        info.contains(VAR_TYPE),
        "{arch}: partition 6 is not var:\n{info}"
    );
    let last_usable = disk.size / 512 - 34;
    assert!(
        info.contains(&format!("Last sector: {last_usable} ")),
        "{arch}: var does not end at sector {last_usable}:\n{info}"
    );
    std::fs::remove_file(&raw).unwrap();
}
