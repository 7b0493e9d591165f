#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use mkext4::RegionSink;

use super::*;
use crate::arch::Arch;
use crate::plan::{attr, plan_disk, PlanInput};

const MIB: u64 = 1 << 20;

fn plan(arch: Arch) -> DiskPlan {
    plan_disk(&PlanInput {
        arch,
        disk_size: 300 * MIB,
        esp_size: 34 * MIB,
        root_size: 100 * MIB + 4096,
        // Explicit, so both slots fit a small disk.
        slot_size: Some(110 * MIB),
        var_min_size: 0,
        seed: [0x5a; 32],
    })
    .unwrap()
}

fn sgdisk(args: &[&str], img: &Path) -> String {
    let out = Command::new("sgdisk")
        .args(args)
        .arg(img)
        .output()
        .expect("run sgdisk");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sgdisk {args:?} failed:\n{text}");
    text
}

/// `sgdisk -i N` output as "Key: value" pairs.
fn sgdisk_info(img: &Path, n: u32) -> BTreeMap<String, String> {
    sgdisk(&["-i", &n.to_string()], img)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn sgdisk_agrees_with_the_plan() {
    for arch in Arch::ALL {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let plan = plan(arch);
        let image = create_image(&img, &plan).unwrap();
        image.finish().unwrap();

        let verify = sgdisk(&["-v"], &img);
        assert!(verify.contains("No problems found"), "sgdisk -v:\n{verify}");

        let listing = sgdisk(&["-p"], &img);
        let disk_line = listing
            .lines()
            .find(|l| l.starts_with("Disk identifier (GUID):"))
            .unwrap_or_else(|| panic!("no disk GUID in:\n{listing}"));
        assert!(
            disk_line.ends_with(&plan.disk_guid.to_string().to_uppercase()),
            "{disk_line}"
        );
        // Rows of the table: "   1   2048   71679   34.0 MiB   EF00  esp"
        let rows: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|w| w.first().is_some_and(|n| n.parse::<u32>().is_ok()) && w.len() >= 7)
            .collect();
        assert_eq!(rows.len(), plan.partitions.len(), "{listing}");
        for (row, p) in rows.iter().zip(&plan.partitions) {
            assert_eq!(row[1], p.first_lba.to_string(), "{listing}");
            assert_eq!(row[2], p.last_lba.to_string(), "{listing}");
            assert_eq!(row[6], p.name, "{listing}");
        }

        let mut uniques = Vec::new();
        for (i, p) in plan.partitions.iter().enumerate() {
            let info = sgdisk_info(&img, i as u32 + 1);
            let type_code = &info["Partition GUID code"];
            assert!(
                type_code.starts_with(&p.type_guid.to_string().to_uppercase()),
                "{type_code} vs {}",
                p.type_guid
            );
            assert_eq!(
                info["Partition unique GUID"],
                p.unique_guid.to_string().to_uppercase()
            );
            assert!(info["First sector"].starts_with(&format!("{} ", p.first_lba)));
            assert!(info["Last sector"].starts_with(&format!("{} ", p.last_lba)));
            assert_eq!(info["Attribute flags"], format!("{:016X}", p.attributes));
            assert_eq!(info["Partition name"], format!("'{}'", p.name));
            uniques.push(info["Partition unique GUID"].clone());
        }
        uniques.sort();
        uniques.dedup();
        assert_eq!(uniques.len(), plan.partitions.len());

        // Our own reader sees the same table.
        let table = read_gpt(&img).unwrap();
        assert_eq!(table.disk_guid, plan.disk_guid);
        assert_eq!(table.first_usable_lba, 2048);
        assert_eq!(table.last_usable_lba, plan.last_usable_lba);
        assert_eq!(table.backup_lba, plan.total_sectors() - 1);
        assert_eq!(table.partitions.len(), plan.partitions.len());
        for (e, p) in table.partitions.iter().zip(&plan.partitions) {
            assert_eq!(
                (
                    e.type_guid,
                    e.unique_guid,
                    e.first_lba,
                    e.last_lba,
                    e.attributes,
                    &e.name
                ),
                (
                    p.type_guid,
                    p.unique_guid,
                    p.first_lba,
                    p.last_lba,
                    p.attributes,
                    &p.name
                )
            );
        }
        assert!(attr::has(table.partitions[1].attributes, attr::READ_ONLY));
        // Slot B: same types as slot A, named empty, read-only and no-auto
        // (bit 63) as sgdisk reads them.
        let a = arch.name();
        let names: Vec<&str> = rows.iter().map(|r| r[6]).collect();
        assert_eq!(
            names,
            [
                "esp",
                &format!("root-{a}-a"),
                &format!("root-{a}-a-verity"),
                "_empty",
                "_empty"
            ]
        );
        for (n, slot_a) in [(4u32, 2u32), (5, 3)] {
            let (b, a) = (sgdisk_info(&img, n), sgdisk_info(&img, slot_a));
            assert_eq!(b["Partition GUID code"], a["Partition GUID code"]);
            assert_eq!(b["Attribute flags"], "9000000000000000");
            assert_eq!(a["Attribute flags"], "1000000000000000");
        }
    }
}

#[test]
fn image_is_sparse_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    create_image(&a, &plan(Arch::X86_64))
        .unwrap()
        .finish()
        .unwrap();
    create_image(&b, &plan(Arch::X86_64))
        .unwrap()
        .finish()
        .unwrap();
    let meta = std::fs::metadata(&a).unwrap();
    assert_eq!(meta.len(), 300 * MIB);
    assert!(
        meta.blocks() * 512 < 4 * MIB,
        "image is not sparse: {} blocks",
        meta.blocks()
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

fn corrupt(img: &Path, offset: u64) {
    let f = OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn reader_rejects_damaged_tables() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(Arch::Arm64);
    let last = plan.total_sectors() - 1;
    let cases: [(&str, u64, &str); 5] = [
        ("primary header field", 512 + 40, "primary header CRC32"),
        ("primary header CRC", 512 + 16, "primary header CRC32"),
        ("primary entries", 2 * 512 + 56, "primary entry array CRC32"),
        ("backup header", last * 512 + 40, "backup header CRC32"),
        (
            "backup entries",
            plan.backup_entries_lba() * 512 + 20,
            "backup entry array CRC32",
        ),
    ];
    for (what, offset, expect) in cases {
        let img = dir.path().join("d.img");
        create_image(&img, &plan).unwrap().finish().unwrap();
        assert!(read_gpt(&img).is_ok());
        corrupt(&img, offset);
        let err = read_gpt(&img).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DiskError::BadGpt { .. }), "{what}: {msg}");
        assert!(msg.contains(expect), "{what}: {msg}");
        assert!(msg.contains("d.img"), "{what}: {msg}");
    }
    let img = dir.path().join("d.img");
    create_image(&img, &plan).unwrap().finish().unwrap();
    corrupt(&img, 512);
    assert!(read_gpt(&img)
        .unwrap_err()
        .to_string()
        .contains("signature"));
    let missing = read_gpt(&dir.path().join("nope.img"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.img"), "{missing}");
}

#[test]
fn partitions_are_written_at_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let plan = plan(Arch::X86_64);
    let image = create_image(&img, &plan).unwrap();
    let content: Vec<u8> = (0..(5 * MIB as usize + 123))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let n = image
        .write_partition(PartitionRole::Root, &content[..])
        .unwrap();
    assert_eq!(n, content.len() as u64);

    let mut window = image.window(PartitionRole::RootVerity).unwrap();
    window.data(4096, b"verity!").unwrap();
    window.zeros(0, 4096).unwrap();
    let end = window.len();
    window.data(end - 3, b"end").unwrap();
    let err = window.data(end - 2, b"end").unwrap_err().to_string();
    assert!(err.contains("root-x86_64-a-verity"), "{err}");
    assert!(window.zeros(end, 1).is_err());
    image.finish().unwrap();

    let bytes = std::fs::read(&img).unwrap();
    let root = plan.partition(PartitionRole::Root).unwrap();
    let at = root.offset() as usize;
    assert_eq!(&bytes[at..at + content.len()], &content[..]);
    assert!(bytes[at + content.len()..at + root.size() as usize]
        .iter()
        .all(|&b| b == 0));
    let v = plan.partition(PartitionRole::RootVerity).unwrap();
    let vat = v.offset() as usize;
    assert_eq!(&bytes[vat + 4096..vat + 4103], b"verity!");
    assert_eq!(&bytes[vat + end as usize - 3..vat + end as usize], b"end");
    // Writing content did not disturb the tables.
    assert!(read_gpt(&img).is_ok());
    assert!(sgdisk(&["-v"], &img).contains("No problems found"));
}

#[test]
fn too_long_content_is_refused_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let plan = plan(Arch::X86_64);
    let image = create_image(&img, &plan).unwrap();
    let size = plan.partition(PartitionRole::RootVerity).unwrap().size();
    let content = vec![1u8; size as usize + 10];
    let err = image
        .write_partition(PartitionRole::RootVerity, &content[..])
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{} bytes of content", size + 10)),
        "{msg}"
    );
    assert!(msg.contains(&format!("({size} bytes)")), "{msg}");
    assert!(msg.contains("root-x86_64-a-verity"), "{msg}");
    // Exactly the partition size is fine.
    let n = image
        .write_partition(PartitionRole::RootVerity, &content[..size as usize])
        .unwrap();
    assert_eq!(n, size);
}

#[test]
fn missing_roles_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut p = plan(Arch::X86_64);
    p.partitions.retain(|p| p.role != PartitionRole::RootVerity);
    let image = create_image(&img, &p).unwrap();
    let msg = image
        .window(PartitionRole::RootVerity)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no root-verity partition"), "{msg}");
}

#[test]
fn inconsistent_plans_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut p = plan(Arch::X86_64);
    p.partitions[1].first_lba = p.partitions[0].last_lba;
    assert!(matches!(create_image(&img, &p), Err(DiskError::BadPlan(_))));
    let mut p = plan(Arch::X86_64);
    p.partitions[2].last_lba = p.last_usable_lba + 1;
    assert!(matches!(create_image(&img, &p), Err(DiskError::BadPlan(_))));
}

#[test]
fn fat_esp_streams_into_the_image() {
    use crate::fs::fat::{build_fat, EspFile, FatOptions};

    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let plan = plan(Arch::Arm64);
    let image = create_image(&img, &plan).unwrap();
    let uki: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let files = [
        EspFile::new("EFI/Linux/kiln-a.efi", &uki),
        EspFile::new("kiln.toml", b"k = 1\n"),
    ];
    let esp = plan.partition(PartitionRole::Esp).unwrap();
    let mut opts = FatOptions::new("KILN-ESP", 7, 1_700_000_000);
    opts.hidden_sectors = esp.first_lba as u32;
    let mut window = image.window(PartitionRole::Esp).unwrap();
    build_fat(&files, esp.size(), &opts, &mut window).unwrap();
    image.finish().unwrap();
    assert!(sgdisk(&["-v"], &img).contains("No problems found"));

    // mtools reads the ESP in place, at the partition's byte offset.
    let out = dir.path().join("uki.efi");
    let status = Command::new("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{}", img.display(), esp.offset()))
        .arg("::/EFI/Linux/kiln-a.efi")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap() == uki);

    // fsck.fat checks the partition's bytes cut out of the image.
    let bytes = std::fs::read(&img).unwrap();
    let part = dir.path().join("esp.img");
    std::fs::write(
        &part,
        &bytes[esp.offset() as usize..(esp.offset() + esp.size()) as usize],
    )
    .unwrap();
    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg(&part)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&fsck.stdout);
    assert!(fsck.status.success(), "{text}");
    assert!(
        text.lines().count() == 2 && text.contains(" 5 files,"),
        "{text}"
    );
}
