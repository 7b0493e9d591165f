//! What `kiln flash` writes, decided without touching the target: the byte
//! regions (the image's mapped ranges, plus whatever the patches cover) and
//! the patches laid over the image's bytes.
//!
//! On a target larger than the image, the GPT's backup copy moves from the
//! image's last sector to the target's (as `sgdisk -e` does): the primary
//! header then names the new backup and a last usable LBA near the end of the
//! target, the protective MBR covers the whole target, and the old backup
//! header and entry array are zeroed. No partition grows and none is added:
//! the node's first boot adds `var` in the free space after the last
//! partition (kiln-init's `plan_var` reads the primary header and the
//! target's size, and accepts the backup at either place). A firmware or
//! tool that checks the backup at the last LBA finds a valid one at once.

use std::ops::Range;

use kiln_contract::gpt::{self, Entry, Header, MBR_PROTECTIVE_TYPE};

/// The sector size of every kiln image.
pub const SECTOR: u64 = 512;

/// Bytes laid over the image's bytes at a target offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// What the bytes are (for errors and tests).
    pub what: &'static str,
    /// Byte offset on the target.
    pub offset: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Patch {
    /// The target bytes it covers.
    pub fn extent(&self) -> Range<u64> {
        self.offset..self.offset + self.bytes.len() as u64
    }
}

/// What happens to the GPT's backup copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupGpt {
    /// The target is the image's size: the image's backup stays where it is.
    Kept,
    /// Moved from the image's last LBA to the target's.
    Moved {
        /// The image's backup header LBA.
        from: u64,
        /// The target's last LBA.
        to: u64,
    },
}

/// The image's partition table, read from its first sectors.
#[derive(Debug, Clone)]
pub struct ImageGpt {
    /// Sector 0.
    pub mbr: Vec<u8>,
    /// The primary header.
    pub header: Header,
    /// Its whole sector.
    pub header_sector: Vec<u8>,
    /// The entry array (`header.array_bytes()` long).
    pub array: Vec<u8>,
    /// The used entries with their index.
    pub entries: Vec<(u32, Entry)>,
}

impl ImageGpt {
    /// Reads the primary GPT from `head`, the image's first bytes.
    pub fn read(head: &[u8]) -> Result<ImageGpt, String> {
        let s = SECTOR as usize;
        if head.len() < 2 * s {
            return Err("shorter than two sectors".into());
        }
        let header = Header::parse(&head[s..2 * s], 1)
            .map_err(|e| format!("no valid primary GPT header: {e}"))?;
        let at = header.entries_lba.saturating_mul(SECTOR) as usize;
        let len = header.array_bytes() as usize;
        let array = head
            .get(at..at.saturating_add(len))
            .ok_or_else(|| {
                format!(
                    "the GPT entry array at LBA {} is out of reach",
                    header.entries_lba
                )
            })?
            .to_vec();
        let entries =
            gpt::parse_entries(&header, &array).map_err(|e| format!("GPT entries: {e}"))?;
        Ok(ImageGpt {
            mbr: head[..s].to_vec(),
            header_sector: head[s..2 * s].to_vec(),
            header,
            array,
            entries,
        })
    }

    /// The byte range of the EFI system partition.
    pub fn esp(&self) -> Option<Range<u64>> {
        self.entries
            .iter()
            .find(|(_, e)| e.type_guid == gpt::types::ESP)
            .map(|(_, e)| e.first_lba * SECTOR..(e.last_lba + 1) * SECTOR)
    }

    fn array_sectors(&self) -> u64 {
        self.header.array_bytes().div_ceil(SECTOR)
    }
}

/// What to plan for.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Size of the raw image.
    pub image_size: u64,
    /// The image's byte ranges that must be written.
    pub ranges: &'a [Range<u64>],
    /// The image's partition table.
    pub gpt: &'a ImageGpt,
    /// Size of the target in bytes.
    pub target_size: u64,
    /// The target's logical sector size.
    pub target_sector: u64,
    /// More patches (the node config on the ESP).
    pub extra: Vec<Patch>,
}

/// Why the image cannot go on the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The target is smaller than the image.
    #[error("it is too small: {have} bytes, the image needs {need} bytes")]
    TooSmall {
        /// Bytes the image needs.
        need: u64,
        /// Bytes the target has.
        have: u64,
    },
    /// The target's sectors are not 512 bytes.
    #[error("its logical sectors are {0} bytes; kiln images are laid out for 512-byte sectors")]
    Sector(u64),
    /// The image's table does not allow the move.
    #[error("the image's GPT: {0}")]
    Gpt(String),
}

/// The decision: regions to write (sorted, disjoint) and the patches over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Target byte ranges written, each from the image's bytes (zeros past its
    /// end) with the patches laid over.
    pub regions: Vec<Range<u64>>,
    /// Patches, each inside one region.
    pub patches: Vec<Patch>,
    /// What happened to the backup GPT.
    pub backup: BackupGpt,
}

impl Plan {
    /// Bytes written in all.
    pub fn bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.end - r.start).sum()
    }
}

/// Sorted, merged union of ranges (touching ranges join).
fn merge(mut v: Vec<Range<u64>>) -> Vec<Range<u64>> {
    v.retain(|r| r.start < r.end);
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The GPT patches that move the backup to the target's last LBA.
fn move_backup(
    g: &ImageGpt,
    image_sectors: u64,
    target_sectors: u64,
) -> Result<Vec<Patch>, String> {
    let h = &g.header;
    let n = g.array_sectors();
    let old = h.alternate_lba;
    if old != image_sectors - 1 {
        return Err(format!(
            "the backup header is at LBA {old}, not at the image's last LBA {}",
            image_sectors - 1
        ));
    }
    let old_array = old - n;
    if let Some((_, e)) = g.entries.iter().find(|(_, e)| e.last_lba >= old_array) {
        return Err(format!(
            "partition {} ends at LBA {}, inside the backup table",
            e.name, e.last_lba
        ));
    }
    let last = target_sectors - 1;
    let entries_lba = last - n;
    let last_usable = entries_lba - 1;
    let mut primary = g.header_sector.clone();
    Header {
        alternate_lba: last,
        last_usable_lba: last_usable,
        ..h.clone()
    }
    .write_into(&mut primary);
    let mut backup = g.header_sector.clone();
    Header {
        my_lba: last,
        alternate_lba: 1,
        last_usable_lba: last_usable,
        entries_lba,
        ..h.clone()
    }
    .write_into(&mut backup);
    let mut array = g.array.clone();
    array.resize((n * SECTOR) as usize, 0);
    let mut patches = Vec::new();
    // A plain protective MBR (one 0xEE entry) covers the whole target; a
    // hybrid MBR is left as it is.
    let m = &g.mbr;
    if m.len() >= 512 && m[450] == MBR_PROTECTIVE_TYPE && m[462..510].iter().all(|&b| b == 0) {
        let mut mbr = m.clone();
        put_u32(&mut mbr, 446 + 12, gpt::mbr_sectors(target_sectors));
        patches.push(Patch {
            what: "protective MBR",
            offset: 0,
            bytes: mbr,
        });
    }
    patches.extend([
        Patch {
            what: "primary GPT header",
            offset: SECTOR,
            bytes: primary,
        },
        Patch {
            what: "zeros over the image's backup GPT",
            offset: old_array * SECTOR,
            bytes: vec![0; ((n + 1) * SECTOR) as usize],
        },
        Patch {
            what: "backup GPT entry array",
            offset: entries_lba * SECTOR,
            bytes: array,
        },
        Patch {
            what: "backup GPT header",
            offset: last * SECTOR,
            bytes: backup,
        },
    ]);
    Ok(patches)
}

/// Decides what to write. Pure: tests check it without a disk.
pub fn plan(input: PlanInput<'_>) -> Result<Plan, PlanError> {
    if input.target_sector != SECTOR {
        return Err(PlanError::Sector(input.target_sector));
    }
    if input.target_size < input.image_size {
        return Err(PlanError::TooSmall {
            need: input.image_size,
            have: input.target_size,
        });
    }
    let image_sectors = input.image_size / SECTOR;
    let target_sectors = input.target_size / SECTOR;
    let (mut patches, backup) = if target_sectors > image_sectors {
        let p = move_backup(input.gpt, image_sectors, target_sectors).map_err(PlanError::Gpt)?;
        let moved = BackupGpt::Moved {
            from: image_sectors - 1,
            to: target_sectors - 1,
        };
        (p, moved)
    } else {
        (Vec::new(), BackupGpt::Kept)
    };
    patches.extend(input.extra);
    let mut regions: Vec<Range<u64>> = input.ranges.to_vec();
    regions.extend(patches.iter().map(Patch::extent));
    if let Some(p) = patches.iter().find(|p| p.extent().end > input.target_size) {
        return Err(PlanError::Gpt(format!(
            "{} at byte {} is past the target's end",
            p.what, p.offset
        )));
    }
    patches.sort_by_key(|p| p.offset);
    Ok(Plan {
        regions: merge(regions),
        patches,
        backup,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kiln_contract::gpt::Guid;

    /// A 4 MiB image: 128 entries, one ESP at 1 MiB..2 MiB, backup at the end.
    fn image() -> (Vec<u8>, u64) {
        let size: u64 = 4 << 20;
        let sectors = size / SECTOR;
        let esp = Entry {
            type_guid: gpt::types::ESP,
            part_guid: Guid::from_u128(7),
            first_lba: 2048,
            last_lba: 4095,
            attributes: 0,
            name: "esp".into(),
        };
        let array = gpt::encode_array(&[(0, &esp)], 128, 128);
        let h = Header {
            revision: gpt::REVISION_1_0,
            header_size: gpt::HEADER_SIZE,
            my_lba: 1,
            alternate_lba: sectors - 1,
            first_usable_lba: 34,
            last_usable_lba: sectors - 34,
            disk_guid: Guid::from_u128(9),
            entries_lba: 2,
            num_entries: 128,
            entry_size: 128,
            entries_crc: kiln_contract::crc32::crc32(&array),
        };
        let mut head = vec![0u8; 34 * 512];
        head[..512].copy_from_slice(&gpt::protective_mbr(sectors));
        head[512..1024].copy_from_slice(&h.to_sector(512));
        head[1024..1024 + array.len()].copy_from_slice(&array);
        (head, size)
    }

    fn input<'a>(
        g: &'a ImageGpt,
        size: u64,
        ranges: &'a [Range<u64>],
        target: u64,
    ) -> PlanInput<'a> {
        PlanInput {
            image_size: size,
            ranges,
            gpt: g,
            target_size: target,
            target_sector: 512,
            extra: Vec::new(),
        }
    }

    #[test]
    fn same_size_writes_the_ranges_and_nothing_else() {
        let (head, size) = image();
        let g = ImageGpt::read(&head).unwrap();
        let ranges = [0..20480, size - 20480..size];
        let p = plan(input(&g, size, &ranges, size)).unwrap();
        assert_eq!(p.regions, ranges.to_vec());
        assert!(p.patches.is_empty());
        assert_eq!(p.backup, BackupGpt::Kept);
    }

    #[test]
    fn a_larger_target_gets_the_backup_at_its_end() {
        let (head, size) = image();
        let g = ImageGpt::read(&head).unwrap();
        let target = 64 << 20;
        let ranges = [0..20480, size - 20480..size];
        let p = plan(input(&g, size, &ranges, target)).unwrap();
        let last = target / 512 - 1;
        assert_eq!(
            p.backup,
            BackupGpt::Moved {
                from: size / 512 - 1,
                to: last
            }
        );
        let find = |what| p.patches.iter().find(|x| x.what == what).unwrap();
        let primary = Header::parse(&find("primary GPT header").bytes, 1).unwrap();
        assert_eq!(primary.alternate_lba, last);
        assert_eq!(primary.last_usable_lba, last - 33);
        let backup = find("backup GPT header");
        assert_eq!(backup.offset, last * 512);
        let b = Header::parse(&backup.bytes, last).unwrap();
        assert_eq!((b.alternate_lba, b.entries_lba), (1, last - 32));
        assert_eq!(
            find("backup GPT entry array").bytes[..g.array.len()],
            g.array[..]
        );
        let zeros = find("zeros over the image's backup GPT");
        assert_eq!(zeros.extent(), size - 33 * 512..size);
        // The MBR's 0xEE entry covers the target.
        let mbr = &find("protective MBR").bytes;
        assert_eq!(
            u32::from_le_bytes(mbr[458..462].try_into().unwrap()),
            (last) as u32
        );
        // The only region past the image is the new backup.
        assert_eq!(p.regions.last().unwrap(), &((last - 32) * 512..target));
        assert!(p.regions.iter().all(|r| r.end <= size || r.start >= size));
        // Every patch lies inside a region.
        for x in &p.patches {
            assert!(p
                .regions
                .iter()
                .any(|r| r.start <= x.offset && x.extent().end <= r.end));
        }
    }

    #[test]
    fn refuses_small_targets_and_4k_sectors() {
        let (head, size) = image();
        let g = ImageGpt::read(&head).unwrap();
        let e = plan(input(&g, size, &[], size - 512)).unwrap_err();
        assert_eq!(
            e,
            PlanError::TooSmall {
                need: size,
                have: size - 512
            }
        );
        let mut i = input(&g, size, &[], size);
        i.target_sector = 4096;
        assert_eq!(plan(i).unwrap_err(), PlanError::Sector(4096));
    }

    #[test]
    fn extra_patches_become_regions() {
        let (head, size) = image();
        let g = ImageGpt::read(&head).unwrap();
        let one: Vec<Range<u64>> = std::iter::once(0..4096).collect();
        let mut i = input(&g, size, &one, size);
        i.extra.push(Patch {
            what: "config",
            offset: (3 << 20) + 100,
            bytes: vec![1; 10],
        });
        let p = plan(i).unwrap();
        assert_eq!(p.regions, vec![0..4096, (3 << 20) + 100..(3 << 20) + 110]);
        assert!(ImageGpt::read(&head[..600]).is_err());
    }
}
