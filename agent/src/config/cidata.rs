//! The NoCloud channel: a volume labelled `cidata` (or `CIDATA`), vfat or iso9660, on
//! any device but the boot disk, holding `kiln.toml` or a `user-data` whose first line is
//! `#kiln-config`.
//!
//! Make one with e.g. `mkfs.fat -C cidata.img 1024 -n CIDATA && mcopy -i cidata.img
//! kiln.toml ::` or `xorriso -as mkisofs -r -J -V cidata -o cidata.iso kiln.toml`
//! (Rock Ridge or Joliet keeps the long name; plain ISO 9660 would shorten it).

use super::blockdev::{self, BootDisk};
use super::fslabel::{probe, Volume};
use super::media::read_files;
use super::schema::{strip_magic, MAGIC_LINE};
use super::{ConfigSys, Finding};

/// Where the volume is mounted while it is read.
pub const CIDATA_MOUNT: &str = "/run/kiln/cidata";
/// kiln's own file.
pub const KILN_FILE: &str = "kiln.toml";
/// NoCloud's user-data, used when it starts with `#kiln-config`.
pub const USER_DATA: &str = "user-data";

/// Device name prefixes never scanned: virtual devices that cannot be a cidata volume
/// someone attached (and device-mapper, which is the root itself).
const SKIP_PREFIXES: &[&str] = &["dm-", "loop", "ram", "zram", "nbd", "md"];

/// Devices worth probing: everything but the boot disk, its partitions, virtual devices
/// and empty drives.
pub fn candidates(
    sys: &mut dyn ConfigSys,
    names: &[String],
    boot: Option<&BootDisk>,
) -> Vec<String> {
    names
        .iter()
        .filter(|n| !SKIP_PREFIXES.iter().any(|p| n.starts_with(p)))
        .filter(|n| !boot.is_some_and(|b| b.contains(n)))
        .filter(|n| blockdev::size_bytes(sys, n).is_some_and(|s| s > 0))
        .cloned()
        .collect()
}

/// The first device (in name order) carrying a cidata volume.
pub fn find_volume(
    sys: &mut dyn ConfigSys,
    names: &[String],
    boot: Option<&BootDisk>,
) -> Option<(String, Volume)> {
    for name in candidates(sys, names, boot) {
        let dev = format!("/dev/{name}");
        let volume = probe(&mut |offset, len| sys.read_dev(&dev, offset, len));
        if let Some(v) = volume.filter(Volume::is_cidata) {
            return Some((dev, v));
        }
    }
    None
}

/// Reads the channel: waits briefly for devices to settle, then looks for the volume.
pub fn gather(sys: &mut dyn ConfigSys, boot: Option<&BootDisk>) -> Option<Finding> {
    let names = match blockdev::settle(sys) {
        Ok(n) => n,
        Err(e) => return Some(Finding::error("cidata", blockdev::SYS_BLOCK, e)),
    };
    let (dev, volume) = find_volume(sys, &names, boot)?;
    let files = match read_files(
        sys,
        &dev,
        volume.kind.fstype(),
        CIDATA_MOUNT,
        &[KILN_FILE, USER_DATA],
    ) {
        Ok(f) => f,
        Err(e) => return Some(Finding::error("cidata", dev, e)),
    };
    if let Some(f) = files
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(KILN_FILE))
    {
        return Some(Finding::parse(
            "cidata",
            format!("{dev}:{}", f.name),
            &f.bytes,
        ));
    }
    if let Some(f) = files
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(USER_DATA))
    {
        let place = format!("{dev}:{}", f.name);
        // Only the first line decides; the rest is checked by the schema (UTF-8 included).
        let head = &f.bytes[..f.bytes.len().min(MAGIC_LINE.len() + 2)];
        let head = String::from_utf8_lossy(head);
        if strip_magic(&head).is_some() {
            return Some(Finding::parse("cidata", place, &f.bytes));
        }
        return Some(Finding::error(
            "cidata",
            place,
            format!(
                "user-data does not start with a {MAGIC_LINE:?} line, so it is not kiln's \
                 (it may be cloud-init's); put kiln's config in {KILN_FILE}, or start \
                 user-data with {MAGIC_LINE}"
            ),
        ));
    }
    Some(Finding::error(
        "cidata",
        dev,
        format!(
            "the cidata volume has no {KILN_FILE} and no {USER_DATA} (looked for \
             {KILN_FILE}, and {USER_DATA} starting with {MAGIC_LINE:?}, in its root folder)"
        ),
    ))
}
