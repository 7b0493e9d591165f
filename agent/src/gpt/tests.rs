//! The agent's table reading and rewriting against tables built here, by sgdisk, and
//! by its own plans; `build_image` is shared with the init tests.

use super::*;
use kiln_contract::gpt::attr;
use kiln_contract::gpt::types::{ROOT_ARM64, ROOT_X86_64, VAR};

/// Builds a minimal valid GPT image in memory (primary and backup).
pub(crate) fn build_image(
    sector: usize,
    total_sectors: u64,
    parts: &[(u32, Guid, Guid, &str)],
) -> Vec<u8> {
    let mut img = vec![0u8; sector * total_sectors as usize];
    let num_entries = 128u32;
    let entry_size = 128u32;
    let array_len = (num_entries * entry_size) as usize;
    let mut array = vec![0u8; array_len];
    for (index, ty, uuid, name) in parts {
        let e = &mut array[*index as usize * 128..][..128];
        e[0..16].copy_from_slice(&ty.to_gpt_bytes());
        e[16..32].copy_from_slice(&uuid.to_gpt_bytes());
        e[32..40].copy_from_slice(&(100u64 + u64::from(*index) * 10).to_le_bytes());
        e[40..48].copy_from_slice(&(109u64 + u64::from(*index) * 10).to_le_bytes());
        for (i, u) in name.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
    let array_sectors = array_len.div_ceil(sector) as u64;
    let write_header = |img: &mut Vec<u8>, my: u64, alt: u64, entries_lba: u64| {
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + array_sectors).to_le_bytes());
        h[48..56].copy_from_slice(&(total_sectors - 2 - array_sectors).to_le_bytes());
        h[56..72].copy_from_slice(
            &"11111111-2222-3333-4444-555555555555"
                .parse::<Guid>()
                .unwrap()
                .to_gpt_bytes(),
        );
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&num_entries.to_le_bytes());
        h[84..88].copy_from_slice(&entry_size.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
        let c = crc32(&h);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        let at = my as usize * sector;
        img[at..at + 92].copy_from_slice(&h);
        let at = entries_lba as usize * sector;
        img[at..at + array_len].copy_from_slice(&array);
    };
    let last = total_sectors - 1;
    write_header(&mut img, 1, last, 2);
    write_header(&mut img, last, 1, last - array_sectors);
    img
}

fn reader(img: &[u8]) -> impl FnMut(u64, usize) -> io::Result<Vec<u8>> + '_ {
    move |off, len| {
        let off = off as usize;
        img.get(off..off + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
}

#[test]
fn parses_a_built_table() {
    let uuid = "01234567-89ab-cdef-0123-456789abcdef"
        .parse::<Guid>()
        .unwrap();
    let esp = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        .parse::<Guid>()
        .unwrap();
    let img = build_image(
        512,
        256,
        &[(0, esp, esp, "esp"), (2, ROOT_X86_64, uuid, "root")],
    );
    let gpt = read_gpt(&mut reader(&img), 512, Some(img.len() as u64)).unwrap();
    assert!(!gpt.from_backup);
    assert_eq!(gpt.entries.len(), 2);
    let root = &gpt.entries[1];
    assert_eq!(root.index, 2);
    assert_eq!(root.number(), 3);
    assert_eq!(root.type_guid, ROOT_X86_64);
    assert_eq!(root.part_guid, uuid);
    assert_eq!(root.name, "root");
    assert_eq!((root.first_lba, root.last_lba), (120, 129));
}

#[test]
fn falls_back_to_the_backup_header_and_reports_bad_crcs() {
    let uuid = "01234567-89ab-cdef-0123-456789abcdef"
        .parse::<Guid>()
        .unwrap();
    let mut img = build_image(512, 256, &[(0, ROOT_ARM64, uuid, "root")]);
    // Flip a byte of the primary header's disk GUID: its CRC no longer matches.
    img[512 + 60] ^= 0xff;
    let header = Header::parse(&img[512..1024], 1).unwrap_err().to_string();
    assert!(header.contains("header CRC32"), "{header}");
    let gpt = read_gpt(&mut reader(&img), 512, Some(img.len() as u64)).unwrap();
    assert!(gpt.from_backup);
    assert_eq!(gpt.entries[0].part_guid, uuid);
    // Without the disk size there is no backup to go to.
    let err = read_gpt(&mut reader(&img), 512, None).unwrap_err();
    assert!(
        matches!(err, GptError::Format(contract::GptError::Damaged(_))),
        "{err}"
    );

    // A damaged entry array is caught by its own CRC.
    let mut img = build_image(512, 256, &[(0, ROOT_ARM64, uuid, "root")]);
    img[2 * 512 + 20] ^= 1;
    let h = Header::parse(&img[512..1024], 1).unwrap();
    let e = parse_entries(&h, &img[1024..1024 + 16384])
        .unwrap_err()
        .to_string();
    assert!(e.contains("entry array CRC32"), "{e}");
}

#[test]
fn a_blank_disk_has_no_gpt() {
    let img = vec![0u8; 512 * 64];
    let err = read_gpt(&mut reader(&img), 512, Some(img.len() as u64)).unwrap_err();
    assert!(matches!(
        err,
        GptError::Format(contract::GptError::NoSignature)
    ));
    let short = vec![0u8; 100];
    let err = read_gpt(&mut reader(&short), 512, None).unwrap_err();
    assert!(err.to_string().contains("reading the GPT header"), "{err}");
}

/// An independent writer: sgdisk makes the table, our reader must agree with it.
#[test]
fn reads_a_table_written_by_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let part_uuid = "6a3b1c2d-1111-4222-8333-944455556666";
    let status = std::process::Command::new("sgdisk")
        .arg("-n")
        .arg("1:0:+2M")
        .arg("-t")
        .arg("1:ef00")
        .arg("-n")
        .arg("2:0:+4M")
        .arg("-t")
        .arg("2:b921b045-1df0-41c3-af44-4c6f280d3fae")
        .arg("-n")
        .arg("3:0:0")
        .arg("-t")
        .arg(format!("3:{ROOT_X86_64}"))
        .arg("-u")
        .arg(format!("3:{part_uuid}"))
        .arg("-c")
        .arg("3:root-x86-64")
        .arg(&path)
        .output()
        .expect("sgdisk is installed");
    assert!(status.status.success(), "{status:?}");
    let img = std::fs::read(&path).unwrap();
    let gpt = read_gpt(&mut reader(&img), 512, Some(img.len() as u64)).unwrap();
    assert_eq!(gpt.entries.len(), 3);
    let root = gpt
        .entries
        .iter()
        .find(|e| e.type_guid == ROOT_X86_64)
        .unwrap();
    assert_eq!(root.index, 2);
    assert_eq!(root.number(), 3);
    assert_eq!(root.part_guid.to_string(), part_uuid);
    assert_eq!(root.name, "root-x86-64");
    assert_eq!(gpt.entries[1].type_guid, ROOT_ARM64);
    // And the backup copy sgdisk wrote is read the same way.
    let mut damaged = img.clone();
    damaged[512..1024].fill(0xaa);
    let backup = read_gpt(&mut reader(&damaged), 512, Some(img.len() as u64)).unwrap();
    assert!(backup.from_backup);
    assert_eq!(backup.entries, gpt.entries);
}

fn esp() -> Guid {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        .parse::<Guid>()
        .unwrap()
}

fn var_guid() -> Guid {
    "9a8b7c6d-1234-4321-8abc-0123456789ab"
        .parse::<Guid>()
        .unwrap()
}

/// An image laid out like the builder's (ESP, root, root-verity) written to a disk of
/// `disk_sectors`: the image's backup GPT is at its old end, zeros after it.
fn written_to_bigger_disk(image_sectors: u64, disk_sectors: u64) -> Vec<u8> {
    let uuid = "01234567-89ab-cdef-0123-456789abcdef"
        .parse::<Guid>()
        .unwrap();
    let mut img = build_image(
        512,
        image_sectors,
        &[
            (0, esp(), esp(), "esp"),
            (1, ROOT_X86_64, uuid, "root-x86-64"),
            (2, ROOT_ARM64, uuid, "root-x86-64-verity"),
        ],
    );
    // A protective MBR covering the image, as the builder writes it.
    img[446 + 4] = 0xEE;
    img[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    img[446 + 12..446 + 16].copy_from_slice(&((image_sectors - 1) as u32).to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xAA;
    img.resize(disk_sectors as usize * 512, 0);
    img
}

fn table_of(img: &[u8]) -> RawTable {
    read_table(&mut reader(img), 512, Some(img.len() as u64)).unwrap()
}

fn apply(img: &mut [u8], writes: &[DiskWrite]) {
    for w in writes {
        img[w.offset as usize..][..w.bytes.len()].copy_from_slice(&w.bytes);
    }
}

fn grow(img: &[u8], min: u64) -> VarGrowth {
    match plan_var(&table_of(img), img.len() as u64 / 512, min, var_guid()).unwrap() {
        VarLayout::Grow(g) => g,
        other => panic!("{other:?}"),
    }
}

#[test]
fn plans_var_in_the_space_after_the_last_partition() {
    // A 4 MiB image on a 16 MiB disk.
    let mut img = written_to_bigger_disk(8192, 32768);
    let g = grow(&img, 1 << 20);
    assert_eq!(g.entry.index, 3);
    assert_eq!(g.entry.number(), 4);
    assert_eq!(g.entry.type_guid, VAR);
    assert_eq!(g.entry.part_guid, var_guid());
    assert_eq!(g.entry.name, "var");
    // The parts end at LBA 129: the next MiB boundary; up to the disk end - 34.
    assert_eq!((g.entry.first_lba, g.entry.last_lba), (2048, 32768 - 34));
    assert_eq!(g.last_lba, 32767);
    let offsets = |w: &[DiskWrite]| w.iter().map(|w| (w.what, w.offset)).collect::<Vec<_>>();
    assert_eq!(
        offsets(&g.backup),
        [
            ("backup GPT entry array", (32767 - 32) * 512),
            ("backup GPT header", 32767 * 512)
        ]
    );
    assert_eq!(
        offsets(&g.primary),
        [
            ("protective MBR", 0),
            ("primary GPT entry array", 1024),
            ("primary GPT header", 512)
        ]
    );
    assert_eq!(
        offsets(&g.wipe),
        [("zeros over the old backup GPT header", 8191 * 512)]
    );

    for step in [&g.backup, &g.primary, &g.wipe] {
        apply(&mut img, step);
    }
    let t = table_of(&img);
    assert!(!t.from_backup);
    assert_eq!(t.entries.len(), 4);
    assert_eq!(t.entries[3], g.entry);
    assert_eq!(t.header.alternate_lba, 32767);
    assert_eq!(t.header.last_usable_lba, 32768 - 34);
    assert_eq!(t.header.first_usable_lba, 34);
    assert_eq!(u32_at(&img, 446 + 12), 32767);
    assert!(img[8191 * 512..8192 * 512].iter().all(|&b| b == 0));
    // The new backup is complete on its own.
    let mut no_primary = img.clone();
    no_primary[512..1024].fill(0);
    let b = table_of(&no_primary);
    assert!(b.from_backup);
    assert_eq!(b.entries, t.entries);
    assert_eq!((b.header.my_lba, b.header.alternate_lba), (32767, 1));
    assert_eq!(b.header.entries_lba, 32767 - 32);
    // Done once: the next boot finds it and writes nothing.
    let again = plan_var(&t, 32768, 1 << 20, var_guid()).unwrap();
    assert_eq!(again, VarLayout::Existing(g.entry));
}

#[test]
fn power_loss_after_any_step_leaves_a_valid_table_and_the_rerun_finishes() {
    let fresh = written_to_bigger_disk(8192, 32768);
    let g = grow(&fresh, 1 << 20);

    // After step 1: the old primary and its old backup are untouched.
    let mut img = fresh.clone();
    apply(&mut img, &g.backup);
    let t = table_of(&img);
    assert!(!t.from_backup);
    assert_eq!(t.entries.len(), 3);
    assert_eq!(t.header.alternate_lba, 8191);
    let mut only_old_backup = img.clone();
    only_old_backup[512..1024].fill(0);
    let old = read_table(&mut reader(&only_old_backup), 512, Some(8192 * 512)).unwrap();
    assert_eq!(old.entries.len(), 3);
    // The rerun plans the same partition and ends like an uninterrupted run.
    let g2 = grow(&img, 1 << 20);
    assert_eq!(g2.entry, g.entry);
    for step in [&g2.backup, &g2.primary, &g2.wipe] {
        apply(&mut img, step);
    }
    let mut clean = fresh.clone();
    for step in [&g.backup, &g.primary, &g.wipe] {
        apply(&mut clean, step);
    }
    assert!(img == clean, "rerun after step 1 differs from a clean run");

    // Torn step 2: the new primary array is there, its header is not. The primary no
    // longer matches its CRC; the backup at the disk's end has the var partition.
    let mut img = fresh.clone();
    apply(&mut img, &g.backup);
    apply(&mut img, &g.primary[..2]);
    let t = table_of(&img);
    assert!(t.from_backup);
    assert_eq!(t.entries.len(), 4);
    let repair = plan_primary_repair(&t).unwrap();
    apply(&mut img, &repair);
    let t = table_of(&img);
    assert!(!t.from_backup);
    assert_eq!(t.entries[3], g.entry);
    assert_eq!(t.header.alternate_lba, 32767);
    assert_eq!(plan_primary_repair(&t).unwrap(), vec![]);
    assert!(matches!(
        plan_var(&t, 32768, 1 << 20, var_guid()).unwrap(),
        VarLayout::Existing(_)
    ));

    // After step 2, before step 3: complete; the stale header is unreachable.
    let mut img = fresh.clone();
    apply(&mut img, &g.backup);
    apply(&mut img, &g.primary);
    let t = table_of(&img);
    assert!(!t.from_backup && t.entries.len() == 4);
}

#[test]
fn an_image_with_free_space_grows_without_a_bigger_disk() {
    // A 4 MiB image on a disk of exactly that size: 2 MiB free inside the image.
    let mut img = written_to_bigger_disk(8192, 8192);
    let g = grow(&img, 1 << 20);
    assert_eq!((g.entry.first_lba, g.entry.last_lba), (2048, 8192 - 34));
    // The backup is rewritten in place; there is no old one elsewhere to wipe, and
    // the protective MBR already covers the disk.
    assert!(g.wipe.is_empty());
    assert_eq!(g.primary.len(), 2);
    for step in [&g.backup, &g.primary] {
        apply(&mut img, step);
    }
    assert_eq!(table_of(&img).entries.len(), 4);
}

#[test]
fn no_room_says_how_big_the_disk_must_be() {
    let img = written_to_bigger_disk(8192, 8192);
    let t = table_of(&img);
    match plan_var(&t, 8192, 256 << 20, var_guid()).unwrap() {
        VarLayout::NoRoom(n) => {
            assert_eq!(n.free_bytes, (8192 - 34 - 2048 + 1) * 512);
            assert_eq!(n.needed_bytes, 256 << 20);
            // 1 MiB before var, 256 MiB of var, the backup GPT: 258 MiB.
            assert_eq!(n.min_disk_bytes, 258 << 20);
            assert!(!n.entries_full);
        }
        other => panic!("{other:?}"),
    }
    // No space at all after the last partition (and var_min 0 still needs 1 MiB).
    let img = written_to_bigger_disk(2048, 2048);
    match plan_var(&table_of(&img), 2048, 0, var_guid()).unwrap() {
        VarLayout::NoRoom(n) => {
            assert_eq!(n.free_bytes, 0);
            assert_eq!(n.needed_bytes, 1 << 20);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_full_entry_array_and_a_too_small_disk_are_refused() {
    let names: Vec<String> = (0..128).map(|i| format!("p{i}")).collect();
    let parts: Vec<(u32, Guid, Guid, &str)> = (0..128u32)
        .map(|i| (i, esp(), esp(), names[i as usize].as_str()))
        .collect();
    let mut img = build_image(512, 4096, &parts);
    img.resize(65536 * 512, 0);
    match plan_var(&table_of(&img), 65536, 1 << 20, var_guid()).unwrap() {
        VarLayout::NoRoom(n) => assert!(n.entries_full),
        other => panic!("{other:?}"),
    }

    // A table whose partitions reach past the disk's end.
    let img = written_to_bigger_disk(8192, 8192);
    let e = plan_var(&table_of(&img), 150, 0, var_guid()).unwrap_err();
    assert!(e.0.contains("smaller than the image"), "{e}");
    let e = plan_var(&table_of(&img), 40, 0, var_guid()).unwrap_err();
    assert!(e.0.contains("too few for a GPT"), "{e}");
}

#[test]
fn an_existing_var_partition_is_used_as_is() {
    let mut img = written_to_bigger_disk(8192, 32768);
    let g = grow(&img, 1 << 20);
    for step in [&g.backup, &g.primary, &g.wipe] {
        apply(&mut img, step);
    }
    // Even on a disk that grew again, and with a huge minimum.
    img.resize(65536 * 512, 0);
    let t = read_table(&mut reader(&img), 512, Some(img.len() as u64)).unwrap();
    assert_eq!(
        plan_var(&t, 65536, 1 << 40, var_guid()).unwrap(),
        VarLayout::Existing(g.entry)
    );
}

#[test]
fn four_k_sectors_align_to_a_mebibyte_too() {
    let uuid = "01234567-89ab-cdef-0123-456789abcdef"
        .parse::<Guid>()
        .unwrap();
    let mut img = build_image(4096, 1024, &[(0, ROOT_X86_64, uuid, "root")]);
    img.resize(4096 * 4096, 0);
    let t = read_table(&mut reader(&img), 4096, Some(img.len() as u64)).unwrap();
    let VarLayout::Grow(g) = plan_var(&t, 4096, 1 << 20, var_guid()).unwrap() else {
        panic!()
    };
    // 128 entries of 128 bytes are 4 sectors of 4 KiB; 256 sectors per MiB.
    assert_eq!((g.entry.first_lba, g.entry.last_lba), (256, 4096 - 6));
    for step in [&g.backup, &g.primary, &g.wipe] {
        for w in step {
            img[w.offset as usize..][..w.bytes.len()].copy_from_slice(&w.bytes);
        }
    }
    let t = read_table(&mut reader(&img), 4096, Some(img.len() as u64)).unwrap();
    assert_eq!(t.entries.len(), 2);
    assert_eq!(t.header.alternate_lba, 4095);
}

#[test]
fn entries_encode_like_the_reader_reads_them() {
    let e = Entry {
        type_guid: VAR,
        part_guid: var_guid(),
        first_lba: 2048,
        last_lba: 4095,
        attributes: attr::NO_AUTO,
        name: "a-very-long-partition-name-that-is-cut-at-36".to_string(),
    };
    let raw = e.to_bytes(128);
    assert_eq!(raw.len(), 128);
    let mut array = vec![0u8; 128 * 8];
    array[5 * 128..6 * 128].copy_from_slice(&raw);
    let h = Header {
        revision: contract::REVISION_1_0,
        header_size: 92,
        my_lba: 1,
        alternate_lba: 9,
        first_usable_lba: 34,
        last_usable_lba: 5000,
        disk_guid: var_guid(),
        entries_lba: 2,
        num_entries: 8,
        entry_size: 128,
        entries_crc: crc32(&array),
    };
    let back = parse_entries(&h, &array).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].name, "a-very-long-partition-name-that-is-c");
    assert_eq!(
        GptEntry {
            index: 5,
            entry: Entry {
                name: e.name[..36].to_string(),
                ..e
            }
        },
        back[0]
    );
}
