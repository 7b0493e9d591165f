#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use super::*;
use crate::fs::fat::{build_fat_vec, EspFile, FatOptions, FatType};
use kiln_contract::le::put_u16;
use std::path::Path;
use std::process::Command;

fn noise(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (installed by make deps): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Files with long names, short names, NT lower-case names, nested
/// folders, an empty file and a fragmented file, put on the volume by
/// mtools (an independent writer).
fn mtools_volume(img: &Path, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let i = img.to_str().unwrap();
    let files = vec![
        ("EFI/BOOT/BOOTX64.EFI".to_string(), noise(300_000, 1)),
        (
            "EFI/Linux/a rather long file name.conf".to_string(),
            noise(5000, 2),
        ),
        ("kiln.toml".to_string(), b"token = \"x\"\n".to_vec()),
        ("empty".to_string(), Vec::new()),
        (
            "deep/a/b/c/d/Ünïcode-ñame.txt".to_string(),
            noise(70_000, 3),
        ),
    ];
    let mut made = std::collections::BTreeSet::new();
    for (path, data) in &files {
        let parts: Vec<&str> = path.split('/').collect();
        for k in 1..parts.len() {
            let d = parts[..k].join("/");
            if made.insert(d.clone()) {
                run("mmd", &["-i", i, &format!("::/{d}")]);
            }
        }
        let src = dir.join("src");
        std::fs::write(&src, data).unwrap();
        run(
            "mcopy",
            &["-i", i, src.to_str().unwrap(), &format!("::/{path}")],
        );
    }
    // Fragment: delete a file between two others, then write a larger one.
    let gap = dir.join("gap");
    std::fs::write(&gap, noise(20_000, 4)).unwrap();
    run("mcopy", &["-i", i, gap.to_str().unwrap(), "::/gap"]);
    let after = dir.join("after");
    std::fs::write(&after, noise(3000, 5)).unwrap();
    run("mcopy", &["-i", i, after.to_str().unwrap(), "::/after"]);
    run("mdel", &["-i", i, "::/gap"]);
    let frag = noise(60_000, 6);
    std::fs::write(dir.join("frag"), &frag).unwrap();
    run(
        "mcopy",
        &["-i", i, dir.join("frag").to_str().unwrap(), "::/frag.bin"],
    );
    let mut files = files;
    files.push(("after".into(), noise(3000, 5)));
    files.push(("frag.bin".into(), frag));
    files
}

#[test]
fn reads_mkfs_fat_and_mtools_volumes_of_every_type() {
    for (bits, size_kib) in [("12", 2048u64), ("16", 20 * 1024), ("32", 40 * 1024)] {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("vol.img");
        run(
            "mkfs.fat",
            &[
                "-F",
                bits,
                "-n",
                "TESTVOL",
                "-i",
                "1234abcd",
                "-C",
                img.to_str().unwrap(),
                &size_kib.to_string(),
            ],
        );
        let files = mtools_volume(&img, d.path());
        let bytes = std::fs::read(&img).unwrap();
        let vol = FatVolume::open(&bytes[..]).unwrap();
        assert_eq!(vol.kind.to_string(), format!("FAT{bits}"));
        assert_eq!(vol.label.as_deref(), Some("TESTVOL"));
        assert_eq!(vol.serial, Some(0x1234_abcd));
        assert_eq!(vol.volume_size, size_kib * 1024);
        let listed = vol.walk(&bytes[..]).unwrap();
        for (path, data) in &files {
            let e = listed
                .iter()
                .find(|e| &e.path == path)
                .unwrap_or_else(|| panic!("FAT{bits}: {path} not listed in {listed:?}"));
            assert!(!e.is_dir);
            assert_eq!(e.size, data.len() as u64, "{path}");
            assert_eq!(
                &vol.read_entry(&bytes[..], e).unwrap(),
                data,
                "FAT{bits} {path}"
            );
        }
        assert!(listed.iter().any(|e| e.path == "deep/a/b/c" && e.is_dir));
        assert!(
            !listed.iter().any(|e| e.path == "gap"),
            "deleted file listed"
        );
        let frag = listed.iter().find(|e| e.path == "frag.bin").unwrap();
        let chain = vol.chain(frag.first_cluster).unwrap();
        // mtools reuses the freed gap on FAT12/16; on FAT32 it follows
        // the FSInfo next-free hint past it instead.
        assert!(
            bits == "32" || chain.windows(2).any(|w| w[1] != w[0] + 1),
            "FAT{bits}: frag.bin is contiguous, the test does not cover fragments"
        );
        // Lookup is case-insensitive and takes 8.3 aliases too.
        assert_eq!(
            vol.read_file(&bytes[..], "efi/boot/bootx64.efi").unwrap(),
            files[0].1
        );
        let long = listed
            .iter()
            .find(|e| e.path == "EFI/Linux/a rather long file name.conf")
            .unwrap();
        assert_ne!(long.short_name, "a rather long file name.conf");
        assert_eq!(
            vol.read_file(&bytes[..], &format!("EFI/LINUX/{}", long.short_name))
                .unwrap(),
            files[1].1
        );
        assert!(matches!(
            vol.read_file(&bytes[..], "EFI/BOOT/missing.efi"),
            Err(FatReadError::NotFound(_))
        ));
        assert!(matches!(
            vol.read_file(&bytes[..], "kiln.toml/x"),
            Err(FatReadError::NotFound(_))
        ));
    }
}

#[test]
fn reads_kilns_own_esp_writer() {
    let uki = noise(3 << 20, 9);
    let conf = b"hello".to_vec();
    let files = [
        EspFile::new("EFI/BOOT/BOOTAA64.EFI", &uki),
        EspFile::new("kiln.toml", &conf),
    ];
    for (size, ty) in [(34u64 << 20, FatType::Fat16), (40 << 20, FatType::Fat32)] {
        let mut opts = FatOptions::new("KILN-ESP", 0xdead_beef, 1_700_000_000);
        opts.fat_type = Some(ty);
        let bytes = build_fat_vec(&files, size, &opts).unwrap();
        let vol = FatVolume::open(&bytes[..]).unwrap();
        assert_eq!(vol.kind.to_string(), ty.to_string());
        assert_eq!(vol.label.as_deref(), Some("KILN-ESP"));
        assert_eq!(vol.serial, Some(0xdead_beef));
        let paths: Vec<String> = vol
            .walk(&bytes[..])
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            ["EFI", "EFI/BOOT", "EFI/BOOT/BOOTAA64.EFI", "kiln.toml"]
        );
        assert_eq!(
            vol.read_file(&bytes[..], "EFI/BOOT/BOOTAA64.EFI").unwrap(),
            uki
        );
        assert_eq!(vol.read_file(&bytes[..], "kiln.toml").unwrap(), conf);
    }
}

#[test]
fn corrupt_volumes_are_errors_not_panics() {
    let data = noise(100_000, 7);
    let mut opts = FatOptions::new("KILN-ESP", 1, 0);
    opts.fat_type = Some(FatType::Fat16);
    let good = build_fat_vec(&[EspFile::new("a/b.bin", &data)], 34 << 20, &opts).unwrap();

    // Not FAT at all.
    let zeros = vec![0u8; 4096];
    assert!(matches!(
        FatVolume::open(&zeros[..]),
        Err(FatReadError::NotFat(_))
    ));
    assert!(matches!(
        FatVolume::open(&zeros[..100]),
        Err(FatReadError::NotFat(_))
    ));

    // The volume claims more sectors than its partition holds.
    let e = FatVolume::open(&good[..good.len() / 2]).unwrap_err();
    assert!(e.to_string().contains("partition holds only"), "{e}");

    let vol = FatVolume::open(&good[..]).unwrap();
    let file = vol.find(&good[..], "a/b.bin").unwrap();
    let fat_at = 512 * u16_at(&good, 14) as usize;
    let link = fat_at + 2 * file.first_cluster as usize;

    // A chain that loops onto itself.
    let mut looped = good.clone();
    put_u16(&mut looped, link, file.first_cluster as u16);
    let v = FatVolume::open(&looped[..]).unwrap();
    let e = v.read_file(&looped[..], "a/b.bin").unwrap_err();
    assert!(e.to_string().contains("loops"), "{e}");

    // A chain that ends early: the size says more than the clusters hold.
    let mut short = good.clone();
    put_u16(&mut short, link, 0xFFFF);
    let v = FatVolume::open(&short[..]).unwrap();
    let e = v.read_file(&short[..], "a/b.bin").unwrap_err();
    assert!(e.to_string().contains("clusters"), "{e}");

    // A link to a cluster that does not exist.
    let mut wild = good.clone();
    put_u16(&mut wild, link, 0xFFF0);
    let v = FatVolume::open(&wild[..]).unwrap();
    let e = v.read_file(&wild[..], "a/b.bin").unwrap_err();
    assert!(e.to_string().contains("not a data cluster"), "{e}");

    // Garbage in the BPB fields.
    for (at, value) in [(11usize, 0u8), (13, 3), (16, 0)] {
        let mut bad = good.clone();
        bad[at] = value;
        if at == 11 {
            bad[12] = 0;
        }
        assert!(FatVolume::open(&bad[..]).is_err(), "byte {at} = {value}");
    }
}
