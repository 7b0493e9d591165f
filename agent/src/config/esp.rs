//! The ESP channel: `kiln.toml` in the root folder of the boot disk's EFI system
//! partition, which a user can edit from any OS after flashing the image.
//!
//! The ESP is found by its GPT type on the disk that holds the root filesystem (not by
//! label: a second kiln disk plugged in must not configure this node), mounted read-only
//! under `/run/kiln/esp` and unmounted again. No file there is not an error.

use kiln_contract::gpt::types;

use crate::gpt::{read_gpt, Gpt};

use super::blockdev::{self, BlockSys, BootDisk};
use super::media::read_files;
use super::{ConfigSys, Finding};

/// Where the ESP is mounted while it is read.
pub const ESP_MOUNT: &str = "/run/kiln/esp";

/// The file looked for (any case).
pub const ESP_FILE: &str = "kiln.toml";

/// The partition table of `disk` (a kernel name: `vda`), read through sysfs's sector
/// size and the device node. Shared with the updater, which needs the root slots too.
pub fn read_disk_gpt<S: BlockSys + ?Sized>(sys: &mut S, disk: &str) -> Result<Gpt, String> {
    let dev = format!("/dev/{disk}");
    let sector: u64 = blockdev::attr(sys, disk, "queue/logical_block_size")
        .and_then(|s| s.parse().ok())
        .filter(|s: &u64| s.is_power_of_two() && *s >= 512)
        .unwrap_or(512);
    let size = blockdev::size_bytes(sys, disk);
    read_gpt(
        &mut |offset, len| sys.read_dev(&dev, offset, len),
        sector,
        size,
    )
    .map_err(|e| format!("reading the partition table of {dev}: {e}"))
}

/// The kernel name of the ESP (`vda1`) in `gpt`, the table of `boot`'s disk.
pub fn esp_partition<S: BlockSys + ?Sized>(
    sys: &mut S,
    boot: &BootDisk,
    gpt: &Gpt,
) -> Result<String, String> {
    let entry = gpt
        .entries
        .iter()
        .find(|e| e.type_guid == types::ESP)
        .ok_or_else(|| "no EFI system partition in the partition table".to_string())?;
    let number = entry.number().to_string();
    boot.partitions
        .iter()
        .find(|p| blockdev::attr(sys, p, "partition").as_deref() == Some(number.as_str()))
        .cloned()
        .ok_or_else(|| {
            format!(
                "the EFI system partition is number {number}, but the kernel shows no \
                 such partition"
            )
        })
}

/// The kernel name of the ESP on `boot`.
pub fn find_esp<S: BlockSys + ?Sized>(sys: &mut S, boot: &BootDisk) -> Result<String, String> {
    let gpt = read_disk_gpt(sys, &boot.disk)?;
    esp_partition(sys, boot, &gpt)
}

/// Reads the channel. `boot` is the boot disk, or why it could not be found.
pub fn gather(sys: &mut dyn ConfigSys, boot: Result<&BootDisk, &String>) -> Option<Finding> {
    let boot = match boot {
        Ok(b) => b,
        Err(e) => {
            return Some(Finding::error(
                "esp",
                "/",
                format!("cannot find the boot disk: {e}"),
            ))
        }
    };
    let part = match find_esp(sys, boot) {
        Ok(p) => p,
        Err(e) => return Some(Finding::error("esp", format!("/dev/{}", boot.disk), e)),
    };
    let dev = format!("/dev/{part}");
    match read_files(sys, &dev, "vfat", ESP_MOUNT, &[ESP_FILE]) {
        Ok(files) => files
            .into_iter()
            .next()
            .map(|f| Finding::parse("esp", format!("{dev}:/{}", f.name), &f.bytes)),
        Err(e) => Some(Finding::error("esp", dev, e)),
    }
}
