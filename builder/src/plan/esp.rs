//! What the ESP must hold, checked before a byte of it is written: systemd-boot,
//! its `loader.conf`, and room for two UKIs. An update writes the new version's
//! UKI beside the running one and removes the old one only once the new one has
//! proven itself, so an ESP with room for one UKI would make the first update
//! fail on the node, far from the build that could have said so.
//!
//! Pure: sizes in, a verdict out. The FAT geometry is the writer's own
//! ([`fat_geometry`]), so "fits" here means fits there.

use super::PlanError;
use crate::fs::fat::{fat_geometry, FatGeometry};

/// How much bigger than this image's UKI the next version's may be, in percent.
pub const UKI_GROWTH_PERCENT: u64 = 10;

/// Folders on the ESP kiln writes: `EFI`, `EFI/BOOT`, `EFI/Linux`, `loader`, and
/// FAT32's root folder, which takes a cluster too. One cluster each is enough for
/// the few entries each holds.
const FOLDERS: u64 = 5;
/// Clusters kept for what a user adds (`kiln.toml`, a `loader/random-seed`).
const SPARE_CLUSTERS: u64 = 2;
/// Largest ESP the search for a size that fits tries (FAT32 reaches further, but
/// an ESP this big means a UKI no firmware would load anyway).
const MAX_ESP: u64 = 4 << 30;
const MIB: u64 = 1 << 20;

/// The sizes of what goes on the ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspNeeds {
    /// Bytes of systemd-boot (`EFI/BOOT/BOOTX64.EFI`).
    pub systemd_boot: u64,
    /// Bytes of `loader/loader.conf`.
    pub loader_conf: u64,
    /// Bytes of this image's UKI.
    pub uki: u64,
}

/// How the ESP's space is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspBudget {
    /// Bytes the volume's clusters hold.
    pub capacity: u64,
    /// Bytes of clusters the files, folders, spare room and a second UKI take.
    pub needed: u64,
}

/// Bytes of clusters `needs` takes on a volume with `cluster`-byte clusters,
/// a second UKI [`UKI_GROWTH_PERCENT`] bigger than this one included.
fn needed_bytes(cluster: u64, needs: &EspNeeds) -> u64 {
    let clusters = |bytes: u64| bytes.div_ceil(cluster).max(1);
    let uki = needs.uki + (needs.uki * UKI_GROWTH_PERCENT).div_ceil(100);
    let total = FOLDERS
        + SPARE_CLUSTERS
        + clusters(needs.systemd_boot)
        + clusters(needs.loader_conf)
        + 2 * clusters(uki);
    total * cluster
}

fn fits(g: &FatGeometry, needs: &EspNeeds) -> bool {
    needed_bytes(g.cluster_size(), needs) <= g.data_capacity()
}

/// Checks that an ESP of `esp_size` bytes holds systemd-boot, `loader.conf`
/// and two UKIs of `needs.uki` bytes plus [`UKI_GROWTH_PERCENT`]. Otherwise the
/// error names `disk.esp_size` and the smallest whole-MiB size that does.
pub fn check_esp(esp_size: u64, needs: &EspNeeds) -> Result<EspBudget, PlanError> {
    if let Ok(g) = fat_geometry(esp_size, None) {
        if fits(&g, needs) {
            return Ok(EspBudget {
                capacity: g.data_capacity(),
                needed: needed_bytes(g.cluster_size(), needs),
            });
        }
    }
    Err(PlanError::EspTooSmall {
        esp_size,
        needed: smallest_fit(needs),
        systemd_boot: needs.systemd_boot,
        uki: needs.uki,
    })
}

/// The smallest whole-MiB ESP that holds `needs`: searched upwards from the
/// content's size, since the cluster size (and so the rounding) changes with
/// the volume's size.
fn smallest_fit(needs: &EspNeeds) -> u64 {
    let start = needed_bytes(512, needs).next_multiple_of(MIB);
    (start / MIB..=MAX_ESP / MIB)
        .map(|m| m * MIB)
        .find(|&size| fat_geometry(size, None).is_ok_and(|g| fits(&g, needs)))
        .unwrap_or(MAX_ESP)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

    use super::*;

    const NEEDS: EspNeeds = EspNeeds {
        systemd_boot: 130_000,
        loader_conf: 60,
        uki: 40 * MIB,
    };

    #[test]
    fn the_default_esp_holds_two_ukis() {
        let b = check_esp(128 * MIB, &NEEDS).unwrap();
        // Two UKIs of 44 MiB (40 + 10%) and systemd-boot.
        assert!(b.needed > 88 * MIB && b.needed < 89 * MIB, "{b:?}");
        assert!(b.capacity >= b.needed);
    }

    #[test]
    fn a_small_esp_names_the_field_and_the_size_that_fits() {
        let e = check_esp(64 * MIB, &NEEDS).unwrap_err();
        let msg = e.to_string();
        let PlanError::EspTooSmall { needed, .. } = e else {
            panic!("{msg}")
        };
        assert!(msg.contains("`disk.esp_size`"), "{msg}");
        assert!(msg.contains("two UKIs of 40 MiB plus 10%"), "{msg}");
        assert!(
            msg.contains(&format!("at least {} MiB", needed / MIB)),
            "{msg}"
        );
        // The size named is the smallest that works.
        assert_eq!(needed % MIB, 0);
        check_esp(needed, &NEEDS).unwrap();
        assert!(check_esp(needed - MIB, &NEEDS).is_err());
        // A volume too small for FAT at all gets the same advice.
        let e = check_esp(MIB, &NEEDS).unwrap_err().to_string();
        assert!(e.contains(&format!("at least {} MiB", needed / MIB)), "{e}");
    }

    #[test]
    fn the_second_uki_counts_with_its_growth() {
        // Room for one UKI and a half is not enough.
        let one = EspNeeds {
            uki: 20 * MIB,
            ..NEEDS
        };
        let e = check_esp(34 * MIB, &one).unwrap_err().to_string();
        assert!(e.contains("at least 4"), "{e}");
        check_esp(48 * MIB, &one).unwrap();
    }
}
