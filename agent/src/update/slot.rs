//! Which slot runs, which one an update writes, and rewriting the written slot's GPT
//! entries.
//!
//! The running slot is the one whose root partition's unique GUID is the first half of
//! `kiln.roothash=` on the kernel command line (init mounted exactly that partition);
//! its GPT name (`root-<arch>-a` or `-b`) says its letter. The other slot is the other
//! root partition of the architecture's type and the other verity partition on the same
//! disk, whatever their names (`_empty` before the first update).
//!
//! The entries of the slot an update writes change twice: to [`EMPTY_LABEL`] with the
//! no-auto attribute and GUIDs that belong to no root hash before a byte of the slot is
//! written, and to the slot's names with the new root hash's halves as GUIDs once the
//! slot holds a verified root. Both GPT copies change, the backup first: a power loss
//! between the writes leaves one whole valid copy (the old primary, or the new backup
//! when the primary's array is written but its header is not), and init reads either.

use std::fmt;

use kiln_contract::boot::{Slot, EMPTY_LABEL};
use kiln_contract::crc32::crc32;
use kiln_contract::gpt::{attr, parse_entries, types, Entry, Guid, Header};
use sha2::{Digest, Sha256};

use crate::gpt::{DiskWrite, GptEntry, RawTable};

/// The root partition type of kiln's arch name (`x86_64`, `arm64`).
pub fn root_type(arch: &str) -> Guid {
    if arch == "arm64" {
        types::ROOT_ARM64
    } else {
        types::ROOT_X86_64
    }
}

/// The verity partition type of kiln's arch name.
pub fn verity_type(arch: &str) -> Guid {
    if arch == "arm64" {
        types::ROOT_VERITY_ARM64
    } else {
        types::ROOT_VERITY_X86_64
    }
}

/// The arch this binary runs on, as kiln names it.
pub fn running_arch() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "x86_64"
    }
}

/// The unique GUIDs a root hash gives its slot's partitions: the first 16 bytes for the
/// root, the last 16 for the verity partition, in the GUID's textual byte order (as the
/// builder's `DiskPlan::apply_root_hash` and init's lookup do).
pub fn hash_guids(root_hash: &[u8; 32]) -> (Guid, Guid) {
    let mut first = [0u8; 16];
    let mut last = [0u8; 16];
    first.copy_from_slice(&root_hash[..16]);
    last.copy_from_slice(&root_hash[16..]);
    (Guid::from_bytes(first), Guid::from_bytes(last))
}

/// The unique GUIDs of a slot's partitions while it holds no root: derived from the
/// disk GUID and the slot, so they never equal a root hash's halves.
pub fn empty_guids(disk_guid: &Guid, slot: Slot) -> (Guid, Guid) {
    let seed: [u8; 32] = Sha256::digest(disk_guid.as_bytes()).into();
    (
        Guid::derive(&seed, &format!("kiln-empty-root-{slot}")),
        Guid::derive(&seed, &format!("kiln-empty-root-verity-{slot}")),
    )
}

/// The two slots of the boot disk, as its GPT has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    /// The slot the running root is in.
    pub running: Slot,
    /// Its root partition.
    pub running_root: GptEntry,
    /// Its verity partition.
    pub running_verity: GptEntry,
    /// The other slot's root partition (what an update writes).
    pub other_root: GptEntry,
    /// The other slot's verity partition.
    pub other_verity: GptEntry,
}

impl Slots {
    /// The slot an update writes.
    pub fn other(&self) -> Slot {
        self.running.other()
    }
}

/// Bytes of a partition.
pub fn partition_bytes(e: &Entry, sector_size: u64) -> u64 {
    (e.last_lba + 1).saturating_sub(e.first_lba) * sector_size
}

/// Why the slots cannot be told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotError {
    /// No root partition has the running root hash's GUID.
    NotOnDisk {
        /// The GUID looked for.
        root_guid: Guid,
    },
    /// The disk has one root (and verity) partition: a single-slot image.
    SingleSlot {
        /// Root partitions of the arch's type.
        roots: usize,
        /// Verity partitions of the arch's type.
        verities: usize,
    },
    /// The running root's GPT name is not a slot name.
    UnknownName {
        /// The name.
        name: String,
    },
    /// No verity partition has the running root hash's second half.
    NoRunningVerity {
        /// The GUID looked for.
        verity_guid: Guid,
    },
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotError::NotOnDisk { root_guid } => write!(
                f,
                "no disk has a root partition with PARTUUID {root_guid} (the first half of \
                 kiln.roothash=): cannot tell which slot is running"
            ),
            SlotError::SingleSlot { roots, verities } => write!(
                f,
                "the boot disk has {roots} root and {verities} root-verity partitions, not two \
                 of each: it was flashed with a single-slot image; reflash it once with an \
                 image built by a kiln with A/B slots"
            ),
            SlotError::UnknownName { name } => write!(
                f,
                "the running root partition is named {name:?}, not root-<arch>-a or -b: \
                 reflash the node with an A/B image"
            ),
            SlotError::NoRunningVerity { verity_guid } => write!(
                f,
                "no root-verity partition has PARTUUID {verity_guid} (the second half of \
                 kiln.roothash=): the disk's table does not match the running root"
            ),
        }
    }
}

/// Finds the running slot (by the root hash's GUIDs) and the other slot in the entries
/// of the boot disk.
pub fn find_slots(
    entries: &[GptEntry],
    arch: &str,
    running_hash: &[u8; 32],
) -> Result<Slots, SlotError> {
    let (root_guid, verity_guid) = hash_guids(running_hash);
    let roots: Vec<&GptEntry> = entries
        .iter()
        .filter(|e| e.type_guid == root_type(arch))
        .collect();
    let verities: Vec<&GptEntry> = entries
        .iter()
        .filter(|e| e.type_guid == verity_type(arch))
        .collect();
    let running_root = roots
        .iter()
        .find(|e| e.part_guid == root_guid)
        .ok_or(SlotError::NotOnDisk { root_guid })?;
    if roots.len() != 2 || verities.len() != 2 {
        return Err(SlotError::SingleSlot {
            roots: roots.len(),
            verities: verities.len(),
        });
    }
    let running = Slot::from_label(&running_root.name, arch).ok_or(SlotError::UnknownName {
        name: running_root.name.clone(),
    })?;
    let running_verity = verities
        .iter()
        .find(|e| e.part_guid == verity_guid)
        .ok_or(SlotError::NoRunningVerity { verity_guid })?;
    let other_root =
        roots
            .iter()
            .find(|e| e.index != running_root.index)
            .ok_or(SlotError::SingleSlot {
                roots: 1,
                verities: verities.len(),
            })?;
    let other_verity = verities
        .iter()
        .find(|e| e.index != running_verity.index)
        .ok_or(SlotError::SingleSlot {
            roots: roots.len(),
            verities: 1,
        })?;
    Ok(Slots {
        running,
        running_root: (*running_root).clone(),
        running_verity: (*running_verity).clone(),
        other_root: (*other_root).clone(),
        other_verity: (*other_verity).clone(),
    })
}

/// The other slot's two entries while an update writes it: [`EMPTY_LABEL`], read-only
/// and no-auto (as the builder leaves slot B), GUIDs of no root hash.
pub fn emptied(slots: &Slots, disk_guid: &Guid) -> [GptEntry; 2] {
    let (root_guid, verity_guid) = empty_guids(disk_guid, slots.other());
    let with = |e: &GptEntry, guid: Guid| GptEntry {
        index: e.index,
        entry: Entry {
            part_guid: guid,
            attributes: (e.attributes | attr::READ_ONLY | attr::NO_AUTO),
            name: EMPTY_LABEL.to_string(),
            ..e.entry.clone()
        },
    };
    [
        with(&slots.other_root, root_guid),
        with(&slots.other_verity, verity_guid),
    ]
}

/// The other slot's two entries once it holds the root of `root_hash`: the slot's names,
/// the hash's halves as GUIDs, read-only without no-auto (as the builder makes slot A).
pub fn filled(slots: &Slots, arch: &str, root_hash: &[u8; 32]) -> [GptEntry; 2] {
    let (root_guid, verity_guid) = hash_guids(root_hash);
    let slot = slots.other();
    let with = |e: &GptEntry, guid: Guid, name: String| GptEntry {
        index: e.index,
        entry: Entry {
            part_guid: guid,
            attributes: (e.attributes | attr::READ_ONLY) & !attr::NO_AUTO,
            name,
            ..e.entry.clone()
        },
    };
    [
        with(&slots.other_root, root_guid, slot.root_label(arch)),
        with(&slots.other_verity, verity_guid, slot.verity_label(arch)),
    ]
}

/// The table cannot be rewritten safely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteError(pub String);

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where both copies of a table are: the primary's header at LBA 1 with its array, the
/// backup's header and array near the end of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyPlaces {
    /// The primary array's LBA.
    pub primary_entries: u64,
    /// The backup header's LBA.
    pub backup_header: u64,
    /// The backup array's LBA.
    pub backup_entries: u64,
}

/// Where the copies of `table` are on a disk of `disk_sectors`: the primary where it was
/// read (LBA 2 when it was damaged), the backup where the header that was read says,
/// its array right before it, as every GPT writer puts it.
pub fn copy_places(table: &RawTable, disk_sectors: u64) -> Result<CopyPlaces, RewriteError> {
    let h = &table.header;
    let array_sectors = h.array_bytes().div_ceil(table.sector_size);
    let (primary_entries, backup_header) = if table.from_backup {
        (2, h.my_lba)
    } else {
        (h.entries_lba, h.alternate_lba)
    };
    let backup_entries = backup_header.saturating_sub(array_sectors);
    let sane = backup_header < disk_sectors
        && backup_entries > h.last_usable_lba
        && primary_entries >= 2
        && primary_entries + array_sectors <= h.first_usable_lba;
    if !sane {
        return Err(RewriteError(format!(
            "the GPT's copies are not where they can be rewritten safely (primary array at LBA \
             {primary_entries}, backup header at LBA {backup_header}, usable LBAs {} to {}, \
             {disk_sectors} sectors on the disk)",
            h.first_usable_lba, h.last_usable_lba
        )));
    }
    Ok(CopyPlaces {
        primary_entries,
        backup_header,
        backup_entries,
    })
}

/// The writes that replace the entries at the indices of `changed` in both copies of
/// `table`, in a power-safe order: the backup array and header, then the primary array
/// and header. Every other entry (and the bytes of each entry past 128) stays as read.
pub fn plan_rewrite(
    table: &RawTable,
    disk_sectors: u64,
    changed: &[GptEntry],
) -> Result<Vec<DiskWrite>, RewriteError> {
    let places = copy_places(table, disk_sectors)?;
    let h = &table.header;
    let size = h.entry_size as usize;
    let mut array = table.array.clone();
    for e in changed {
        let at = e.index as usize * size;
        let Some(slot) = array.get_mut(at..at + size) else {
            return Err(RewriteError(format!(
                "partition entry {} is outside the {}-entry array",
                e.index, h.num_entries
            )));
        };
        e.write_into(&mut slot[..128]);
    }
    let crc = crc32(&array);
    let mut padded = array;
    padded.resize(
        (padded.len() as u64).div_ceil(table.sector_size) as usize * table.sector_size as usize,
        0,
    );
    let header = |my_lba: u64, alternate_lba: u64, entries_lba: u64| {
        let mut sector = table.header_sector.clone();
        Header {
            my_lba,
            alternate_lba,
            entries_lba,
            entries_crc: crc,
            ..h.clone()
        }
        .write_into(&mut sector);
        sector
    };
    let ss = table.sector_size;
    Ok(vec![
        DiskWrite {
            what: "backup GPT entry array",
            offset: places.backup_entries * ss,
            bytes: padded.clone(),
        },
        DiskWrite {
            what: "backup GPT header",
            offset: places.backup_header * ss,
            bytes: header(places.backup_header, 1, places.backup_entries),
        },
        DiskWrite {
            what: "primary GPT entry array",
            offset: places.primary_entries * ss,
            bytes: padded,
        },
        DiskWrite {
            what: "primary GPT header",
            offset: ss,
            bytes: header(1, places.backup_header, places.primary_entries),
        },
    ])
}

/// Reads one copy of a table (header at `lba`) and returns its used entries, checking
/// the header's and the array's CRCs.
pub fn read_copy(
    read_at: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
    sector_size: u64,
    lba: u64,
) -> Result<Vec<(u32, Entry)>, String> {
    let sector = read_at(lba * sector_size, sector_size as usize)
        .map_err(|e| format!("reading the GPT header at LBA {lba}: {e}"))?;
    let header = Header::parse(&sector, lba).map_err(|e| format!("LBA {lba}: {e}"))?;
    let array = read_at(
        header.entries_lba * sector_size,
        header.array_bytes() as usize,
    )
    .map_err(|e| format!("reading the GPT entry array of LBA {lba}: {e}"))?;
    parse_entries(&header, &array).map_err(|e| format!("LBA {lba}: {e}"))
}

/// Checks that both copies of the table hold `wanted` (each at its index), after a
/// rewrite: the primary at LBA 1 and the backup at `places.backup_header`.
pub fn check_both_copies(
    read_at: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
    sector_size: u64,
    places: &CopyPlaces,
    wanted: &[GptEntry],
) -> Result<(), String> {
    for (what, lba) in [("primary", 1), ("backup", places.backup_header)] {
        let entries = read_copy(read_at, sector_size, lba)
            .map_err(|e| format!("the {what} GPT after the rewrite: {e}"))?;
        for w in wanted {
            let found = entries.iter().find(|(i, _)| *i == w.index).map(|(_, e)| e);
            if found != Some(&w.entry) {
                return Err(format!(
                    "the {what} GPT's entry {} reads back as {:?}, not {:?}",
                    w.number(),
                    found,
                    w.entry
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_contract::gpt::encode_array;

    const SS: u64 = 512;

    fn entry(index: u32, type_guid: Guid, guid: u8, name: &str, first: u64) -> GptEntry {
        GptEntry {
            index,
            entry: Entry {
                type_guid,
                part_guid: Guid::from_bytes([guid; 16]),
                first_lba: first,
                last_lba: first + 99,
                attributes: attr::READ_ONLY,
                name: name.to_string(),
            },
        }
    }

    fn layout(running_b: bool) -> Vec<GptEntry> {
        let hash = [0x11u8; 32];
        let (r, v) = hash_guids(&hash);
        let mut e = vec![
            entry(0, types::ESP, 1, "esp", 2048),
            entry(1, types::ROOT_X86_64, 2, "root-x86_64-a", 4096),
            entry(
                2,
                types::ROOT_VERITY_X86_64,
                3,
                "root-x86_64-a-verity",
                8192,
            ),
            entry(3, types::ROOT_X86_64, 4, "_empty", 12288),
            entry(4, types::ROOT_VERITY_X86_64, 5, "_empty", 16384),
        ];
        let (root, verity) = if running_b { (3, 4) } else { (1, 2) };
        e[root].entry.part_guid = r;
        e[verity].entry.part_guid = v;
        if running_b {
            e[3].entry.name = "root-x86_64-b".into();
        }
        e
    }

    #[test]
    fn the_running_slot_is_the_one_the_root_hash_names() {
        let s = find_slots(&layout(false), "x86_64", &[0x11; 32]).unwrap();
        assert_eq!((s.running, s.other()), (Slot::A, Slot::B));
        assert_eq!((s.other_root.index, s.other_verity.index), (3, 4));
        let s = find_slots(&layout(true), "x86_64", &[0x11; 32]).unwrap();
        assert_eq!((s.running, s.other()), (Slot::B, Slot::A));
        assert_eq!((s.other_root.index, s.other_verity.index), (1, 2));

        let e = find_slots(&layout(false), "x86_64", &[0x22; 32]).unwrap_err();
        assert!(e.to_string().contains("first half of kiln.roothash"), "{e}");
        let single: Vec<GptEntry> = layout(false).into_iter().take(3).collect();
        let e = find_slots(&single, "x86_64", &[0x11; 32]).unwrap_err();
        assert!(e.to_string().contains("single-slot image"), "{e}");
        let mut renamed = layout(false);
        renamed[1].entry.name = "root-x86_64".into();
        let e = find_slots(&renamed, "x86_64", &[0x11; 32]).unwrap_err();
        assert!(e.to_string().contains("\"root-x86_64\""), "{e}");
        let e = find_slots(&layout(false), "arm64", &[0x11; 32]).unwrap_err();
        assert!(matches!(e, SlotError::NotOnDisk { .. }), "{e}");
    }

    #[test]
    fn guids_follow_the_builders_byte_order() {
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = i as u8;
        }
        let (r, v) = hash_guids(&hash);
        assert_eq!(r.to_string(), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(v.to_string(), "10111213-1415-1617-1819-1a1b1c1d1e1f");
        assert_eq!(r, crate::init::verity::root_part_uuid(&hash));
        assert_eq!(v, crate::init::verity::verity_part_uuid(&hash));
        let (er, ev) = empty_guids(&Guid::from_bytes([9; 16]), Slot::B);
        assert_ne!(er, ev);
        assert_ne!(empty_guids(&Guid::from_bytes([9; 16]), Slot::A).0, er);
    }

    /// A disk image in memory with a valid GPT of `entries` (128 entries of 128 bytes).
    pub(crate) fn disk_with(entries: &[GptEntry], sectors: u64) -> Vec<u8> {
        let mut disk = vec![0u8; (sectors * SS) as usize];
        let used: Vec<(u32, &Entry)> = entries.iter().map(|e| (e.index, &e.entry)).collect();
        let array = encode_array(&used, 128, 128);
        let crc = crc32(&array);
        let last = sectors - 1;
        let h = |my: u64, alt: u64, ents: u64| Header {
            revision: kiln_contract::gpt::REVISION_1_0,
            header_size: 92,
            my_lba: my,
            alternate_lba: alt,
            first_usable_lba: 34,
            last_usable_lba: last - 33,
            disk_guid: Guid::from_bytes([7; 16]),
            entries_lba: ents,
            num_entries: 128,
            entry_size: 128,
            entries_crc: crc,
        };
        disk[..512].copy_from_slice(&kiln_contract::gpt::protective_mbr(sectors));
        disk[512..1024].copy_from_slice(&h(1, last, 2).to_sector(512));
        disk[1024..1024 + array.len()].copy_from_slice(&array);
        let b = ((last - 32) * SS) as usize;
        disk[b..b + array.len()].copy_from_slice(&array);
        let l = (last * SS) as usize;
        disk[l..l + 512].copy_from_slice(&h(last, 1, last - 32).to_sector(512));
        disk
    }

    fn reader(disk: &[u8]) -> impl FnMut(u64, usize) -> std::io::Result<Vec<u8>> + '_ {
        |off, len| Ok(disk[off as usize..off as usize + len].to_vec())
    }

    #[test]
    fn a_rewrite_changes_both_copies_backup_first_and_reads_back() {
        let sectors = 40_000;
        let mut disk = disk_with(&layout(false), sectors);
        let table = crate::gpt::read_table(&mut reader(&disk), SS, Some(sectors * SS)).unwrap();
        let slots = find_slots(&table.entries, "x86_64", &[0x11; 32]).unwrap();
        let empty = emptied(&slots, &table.header.disk_guid);
        let writes = plan_rewrite(&table, sectors, &empty).unwrap();
        let order: Vec<&str> = writes.iter().map(|w| w.what).collect();
        assert_eq!(
            order,
            [
                "backup GPT entry array",
                "backup GPT header",
                "primary GPT entry array",
                "primary GPT header"
            ]
        );
        // After the backup writes alone, the old primary is still the table read.
        for w in &writes[..2] {
            disk[w.offset as usize..w.offset as usize + w.bytes.len()].copy_from_slice(&w.bytes);
        }
        let mid = crate::gpt::read_table(&mut reader(&disk), SS, Some(sectors * SS)).unwrap();
        assert_eq!(mid.entries, table.entries);
        // With the primary array but not its header: the primary is damaged, the
        // backup (new) is used.
        let w = &writes[2];
        disk[w.offset as usize..w.offset as usize + w.bytes.len()].copy_from_slice(&w.bytes);
        let mid = crate::gpt::read_table(&mut reader(&disk), SS, Some(sectors * SS)).unwrap();
        assert!(mid.from_backup);
        assert_eq!(mid.entries[3], empty[0]);
        let w = &writes[3];
        disk[w.offset as usize..w.offset as usize + w.bytes.len()].copy_from_slice(&w.bytes);
        let places = copy_places(&table, sectors).unwrap();
        check_both_copies(&mut reader(&disk), SS, &places, &empty).unwrap();
        let after = crate::gpt::read_table(&mut reader(&disk), SS, Some(sectors * SS)).unwrap();
        assert!(!after.from_backup);
        assert_eq!(after.entries[3].name, EMPTY_LABEL);
        assert!(attr::has(after.entries[4].attributes, attr::NO_AUTO));
        // Everything else is as it was.
        assert_eq!(after.entries[..3], table.entries[..3]);

        // Filling: the slot's names and the hash's GUIDs, no-auto cleared.
        let full = filled(&slots, "x86_64", &[0x33; 32]);
        assert_eq!(full[0].name, "root-x86_64-b");
        assert_eq!(full[1].name, "root-x86_64-b-verity");
        assert_eq!(full[0].part_guid, Guid::from_bytes([0x33; 16]));
        assert_eq!(full[0].attributes, attr::READ_ONLY);
        let e = check_both_copies(&mut reader(&disk), SS, &places, &full).unwrap_err();
        assert!(e.contains("primary GPT's entry 4"), "{e}");
    }
}
