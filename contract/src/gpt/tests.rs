#![allow(clippy::unwrap_used)]

use super::*;
use std::process::Command;

#[test]
fn guids_print_parse_and_swap_to_the_on_disk_order() {
    let g: Guid = "4F68BCE3-e8cd-4db1-96e7-fbcaf984b709".parse().unwrap();
    assert_eq!(g, types::ROOT_X86_64);
    assert_eq!(g.to_string(), "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
    assert_eq!(
        format!("{g:?}"),
        "Guid(4f68bce3-e8cd-4db1-96e7-fbcaf984b709)"
    );
    // The first three fields little-endian, the rest as written.
    let disk = g.to_gpt_bytes();
    assert_eq!(
        &disk[..8],
        &[0xe3, 0xbc, 0x68, 0x4f, 0xcd, 0xe8, 0xb1, 0x4d]
    );
    assert_eq!(
        &disk[8..],
        &[0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09]
    );
    assert_eq!(Guid::from_gpt_bytes(&disk), g);
    for bad in [
        "",
        "4f68bce3e8cd4db196e7fbcaf984b709",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b70",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b7090",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b70g",
        "4f68bce3-e8cd-4db1-96e7fbcaf984b709-",
        "+f68bce3-e8cd-4db1-96e7-fbcaf984b709",
    ] {
        let e = bad.parse::<Guid>().unwrap_err();
        assert!(e.to_string().contains("8-4-4-4-12"), "{bad}: {e}");
    }
}

#[test]
fn derived_guids_are_stable_version_4_and_differ_by_domain() {
    let seed = [7u8; 32];
    let a = Guid::derive(&seed, "root");
    assert_eq!(a, Guid::derive(&seed, "root"));
    assert_ne!(a, Guid::derive(&seed, "esp"));
    assert_eq!(a.as_bytes()[6] >> 4, 4);
    assert_eq!(a.as_bytes()[8] >> 6, 0b10);
}

#[test]
fn known_types_have_names_and_unknown_ones_do_not() {
    assert_eq!(types::short_name(&types::VAR), Some("var"));
    assert_eq!(types::name(&types::ESP), Some("EFI System"));
    assert_eq!(types::name(&Guid::from_u128(1)), None);
    let mut seen: Vec<Guid> = types::KNOWN.iter().map(|k| k.0).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), types::KNOWN.len());
}

fn entry(type_guid: Guid, n: u8, first: u64, last: u64, name: &str) -> Entry {
    Entry {
        type_guid,
        part_guid: Guid::from_bytes([n; 16]),
        first_lba: first,
        last_lba: last,
        attributes: attr::NO_AUTO | attr::REQUIRED_PARTITION,
        name: name.into(),
    }
}

/// A whole disk of `sectors` 512-byte sectors with `used` entries: MBR, both headers,
/// both arrays.
fn disk(sectors: u64, used: &[(u32, &Entry)]) -> Vec<u8> {
    let array = encode_array(used, 128, 128);
    let array_sectors = array.len() as u64 / 512;
    let last = sectors - 1;
    let primary = Header {
        revision: REVISION_1_0,
        header_size: HEADER_SIZE,
        my_lba: 1,
        alternate_lba: last,
        first_usable_lba: 2048,
        last_usable_lba: last - array_sectors - 1,
        disk_guid: Guid::from_u128(0x1234),
        entries_lba: 2,
        num_entries: 128,
        entry_size: 128,
        entries_crc: crc32(&array),
    };
    let backup = Header {
        my_lba: last,
        alternate_lba: 1,
        entries_lba: last - array_sectors,
        ..primary.clone()
    };
    let mut d = vec![0u8; (sectors * 512) as usize];
    d[..512].copy_from_slice(&protective_mbr(sectors));
    d[512..1024].copy_from_slice(&primary.to_sector(512));
    d[1024..1024 + array.len()].copy_from_slice(&array);
    let at = (backup.entries_lba * 512) as usize;
    d[at..at + array.len()].copy_from_slice(&array);
    d[(last * 512) as usize..].copy_from_slice(&backup.to_sector(512));
    d
}

#[test]
fn a_written_table_reads_back_and_sgdisk_finds_no_problem() {
    let esp = entry(types::ESP, 1, 2048, 4095, "esp");
    let root = entry(
        types::ROOT_ARM64,
        2,
        4096,
        8191,
        "a name of exactly thirty-six units!!",
    );
    let bytes = disk(16384, &[(0, &esp), (2, &root)]);

    let h = Header::parse(&bytes[512..1024], 1).unwrap();
    assert_eq!(h.alternate_lba, 16383);
    let found = parse_entries(&h, &bytes[1024..1024 + 16384]).unwrap();
    assert_eq!(found, vec![(0, esp.clone()), (2, root.clone())]);
    let b = Header::parse(&bytes[16383 * 512..], 16383).unwrap();
    assert_eq!(b.entries_lba, 16383 - 32);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, &bytes).unwrap();
    let out = Command::new("sgdisk")
        .arg("-v")
        .arg(&path)
        .output()
        .expect("sgdisk (apt package gdisk) is needed for this test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "{text}");
    let out = Command::new("sgdisk")
        .arg("-i")
        .arg("3")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains(&types::ROOT_ARM64.to_string()), "{text}");
    assert!(
        text.contains("02020202-0202-0202-0202-020202020202"),
        "{text}"
    );
    assert!(text.contains("attribute flags: 8000000000000001"), "{text}");
    assert!(text.contains("first sector: 4096"), "{text}");
    assert!(
        text.contains("a name of exactly thirty-six units!!"),
        "{text}"
    );
}

#[test]
fn damaged_headers_and_arrays_say_what_is_wrong() {
    let root = entry(types::ROOT_X86_64, 2, 4096, 8191, "root");
    let bytes = disk(16384, &[(0, &root)]);
    let sector = &bytes[512..1024];

    assert_eq!(Header::parse(&[0u8; 512], 1), Err(GptError::NoSignature));
    let mut flipped = sector.to_vec();
    flipped[40] ^= 1;
    let e = Header::parse(&flipped, 1).unwrap_err().to_string();
    assert!(e.contains("header CRC32"), "{e}");
    let (_, crc) = Header::decode(&flipped).unwrap();
    assert!(!crc.matches());
    let e = Header::parse(sector, 2).unwrap_err().to_string();
    assert!(e.contains("says it is at LBA 1"), "{e}");

    let mut h = Header::parse(sector, 1).unwrap();
    h.num_entries = 1 << 20;
    let e = Header::parse(&h.to_sector(512), 1).unwrap_err().to_string();
    assert!(e.contains("limit"), "{e}");
    h.num_entries = 128;
    h.entry_size = 100;
    let e = Header::parse(&h.to_sector(512), 1).unwrap_err().to_string();
    assert!(e.contains("entry size 100"), "{e}");
    // A reader that judges the CRC itself (inspect) checks the shape the same way.
    let e = h.check_shape().unwrap_err().to_string();
    assert!(e.contains("entry size 100"), "{e}");
    let mut big = h.to_sector(512);
    put_u32(&mut big, 12, 600);
    let e = Header::decode(&big).unwrap_err().to_string();
    assert!(e.contains("header size 600"), "{e}");

    let h = Header::parse(sector, 1).unwrap();
    let mut array = bytes[1024..1024 + 16384].to_vec();
    let e = parse_entries(&h, &array[..100]).unwrap_err().to_string();
    assert!(e.contains("100 bytes"), "{e}");
    array[33] ^= 1;
    let e = parse_entries(&h, &array).unwrap_err().to_string();
    assert!(e.contains("entry array CRC32"), "{e}");
}

#[test]
fn a_header_keeps_a_later_revisions_bytes_and_zeroes_the_rest_of_the_sector() {
    let mut sector = vec![0xAAu8; 512];
    let h = Header {
        revision: REVISION_1_0,
        header_size: 100,
        my_lba: 1,
        alternate_lba: 99,
        first_usable_lba: 34,
        last_usable_lba: 60,
        disk_guid: Guid::from_u128(5),
        entries_lba: 2,
        num_entries: 128,
        entry_size: 128,
        entries_crc: 0,
    };
    h.write_into(&mut sector);
    assert!(sector[92..100].iter().all(|&b| b == 0xAA));
    assert!(sector[100..].iter().all(|&b| b == 0));
    assert_eq!(Header::parse(&sector, 1).unwrap(), h);
}

#[test]
fn the_protective_mbr_covers_the_disk_up_to_32_bits() {
    let m = protective_mbr(16384);
    assert_eq!(m[446 + 4], MBR_PROTECTIVE_TYPE);
    assert_eq!(u32_at(&m, 446 + 8), 1);
    assert_eq!(u32_at(&m, 446 + 12), 16383);
    assert_eq!(&m[510..], &[0x55, 0xAA]);
    assert_eq!(mbr_sectors(1 << 40), u32::MAX);
}
