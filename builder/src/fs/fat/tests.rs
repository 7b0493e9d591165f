#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use mkext4::sink::{CheckingSink, FileSink};

use super::entries::fat_datetime;
use super::geometry::{CLUSTER_MARGIN, FAT32_MIN_CLUSTERS};
use super::names::{alias_short_name, exact_short_name};
use super::writer::VecSink;
use super::*;

const MIB: u64 = 1 << 20;
/// 2023-11-14 22:13:21 UTC.
const TS: i64 = 1_700_000_001;

/// Deterministic pseudo-random bytes (xorshift), so no file is all zeros.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn opts() -> FatOptions {
    FatOptions::new("KILN-ESP", 0x1234_ABCD, TS)
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn fsck_clean(img: &Path) -> String {
    let (ok, text) = run("fsck.fat", &["-n", "-v", img.to_str().unwrap()]);
    assert!(ok, "fsck.fat -n failed:\n{text}");
    for bad in ["Fix", "fix", "differ", "Warning", "wrong", "Free cluster"] {
        assert!(!text.contains(bad), "fsck.fat complained ({bad}):\n{text}");
    }
    text
}

/// Reads every file back with mtools and compares it with the input.
fn mtools_read_back(img: &Path, files: &[EspFile<'_>]) {
    let dir = tempfile::tempdir().unwrap();
    let img_s = img.to_str().unwrap();
    let (ok, listing) = run("mdir", &["-/", "-b", "-i", img_s, "::"]);
    assert!(ok, "mdir failed:\n{listing}");
    let mut listed: Vec<&str> = listing
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.trim_start_matches("::/"))
        .collect();
    listed.sort();
    let mut expected: Vec<&str> = files.iter().map(|f| f.path).collect();
    expected.sort();
    assert_eq!(listed, expected, "mdir listing:\n{listing}");
    for (i, f) in files.iter().enumerate() {
        let out = dir.path().join(format!("f{i}"));
        let (ok, text) = run(
            "mcopy",
            &[
                "-n",
                "-i",
                img_s,
                &format!("::/{}", f.path),
                out.to_str().unwrap(),
            ],
        );
        assert!(ok, "mcopy {} failed:\n{text}", f.path);
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == f.data,
            "{} differs after mcopy ({} vs {} bytes)",
            f.path,
            got.len(),
            f.data.len()
        );
    }
}

fn sample_files(big: &[u8], small: &[u8]) -> Vec<(String, Vec<u8>)> {
    let _ = small;
    vec![
        ("EFI/BOOT/BOOTX64.EFI".to_string(), big.to_vec()),
        (
            "kiln.toml".to_string(),
            b"[enroll]\nurl = \"https://x\"\n".to_vec(),
        ),
        (
            "loader/entries/kiln-a-rather-long-entry-name.conf".to_string(),
            small.to_vec(),
        ),
        ("loader/loader.conf".to_string(), b"timeout 0\n".to_vec()),
        ("EMPTY.TXT".to_string(), Vec::new()),
        ("Mixed Case Dir/Readme.md".to_string(), b"hello".to_vec()),
        ("kiln.tomlx".to_string(), b"alias collision".to_vec()),
        (
            "EFI/Linux/kiln-1.0-\u{e9}t\u{e9}.efi".to_string(),
            noise(4096, 9),
        ),
    ]
}

fn as_esp(files: &[(String, Vec<u8>)]) -> Vec<EspFile<'_>> {
    files.iter().map(|(p, d)| EspFile::new(p, d)).collect()
}

#[test]
fn fsck_and_mtools_accept_every_size_and_type() {
    let big = noise(3 * MIB as usize + 17, 1);
    let small = noise(70_000, 2);
    let owned = sample_files(&big, &small);
    let files = as_esp(&owned);
    let dir = tempfile::tempdir().unwrap();
    let cases: [(u64, Option<FatType>, FatType); 7] = [
        (32 * MIB, None, FatType::Fat16),
        (33 * MIB, None, FatType::Fat32),
        (64 * MIB, None, FatType::Fat32),
        (128 * MIB, None, FatType::Fat32),
        (1024 * MIB, None, FatType::Fat32),
        (128 * MIB, Some(FatType::Fat16), FatType::Fat16),
        (1024 * MIB, Some(FatType::Fat16), FatType::Fat16),
    ];
    for (size, forced, expect) in cases {
        let img = dir.path().join("esp.img");
        let mut o = opts();
        o.fat_type = forced;
        let mut sink = CheckingSink::new(FileSink::create(&img, size).unwrap());
        let summary = build_fat(&files, size, &o, &mut sink).unwrap();
        sink.finish(size).unwrap();
        let g = summary.geometry;
        assert_eq!(g.fat_type, expect, "size {size}");
        let text = fsck_clean(&img);
        let want = if expect == FatType::Fat32 {
            "32 bit entries"
        } else {
            "16 bit entries"
        };
        assert!(
            text.contains(want),
            "size {size}: fsck.fat -v says:\n{text}"
        );
        mtools_read_back(&img, &files);
        let (ok, info) = run("minfo", &["-i", img.to_str().unwrap(), "::"]);
        assert!(ok, "{info}");
        assert!(info.contains("KILN-ESP"), "{info}");
        assert!(
            info.to_lowercase().contains("1234abcd") || info.contains("1234-ABCD"),
            "{info}"
        );
    }
}

#[test]
fn output_is_deterministic_and_independent_of_input_order() {
    let big = noise(MIB as usize, 3);
    let small = noise(5000, 4);
    let owned = sample_files(&big, &small);
    let files = as_esp(&owned);
    let a = build_fat_vec(&files, 40 * MIB, &opts()).unwrap();
    let b = build_fat_vec(&files, 40 * MIB, &opts()).unwrap();
    assert!(a == b);
    let mut reversed = files.clone();
    reversed.reverse();
    let c = build_fat_vec(&reversed, 40 * MIB, &opts()).unwrap();
    assert!(a == c);
    let mut o = opts();
    o.serial = 1;
    assert!(a != build_fat_vec(&files, 40 * MIB, &o).unwrap());
}

#[test]
fn type_selection_boundary() {
    // The smallest FAT32 volume, searched sector by sector around 33 MiB.
    let mut first32 = None;
    for total in (32 * MIB / 512)..(34 * MIB / 512) {
        if fat_geometry(total * 512, None).unwrap().fat_type == FatType::Fat32 {
            first32 = Some(total);
            break;
        }
    }
    let first32 = first32.expect("FAT32 below 34 MiB");
    let g32 = fat_geometry(first32 * 512, None).unwrap();
    let g16 = fat_geometry((first32 - 1) * 512, None).unwrap();
    assert_eq!(g16.fat_type, FatType::Fat16);
    assert!(g32.clusters >= FAT32_MIN_CLUSTERS + CLUSTER_MARGIN);
    assert!(g16.clusters < FAT32_MIN_CLUSTERS);
    assert!(
        first32 * 512 > 32 * MIB && first32 * 512 <= 33 * MIB,
        "{first32}"
    );

    // Both sides of the boundary pass fsck.fat with the type they claim.
    let dir = tempfile::tempdir().unwrap();
    let data = noise(10_000, 5);
    let files = [EspFile::new("EFI/BOOT/BOOTAA64.EFI", &data)];
    for (total, want) in [(first32, "32 bit entries"), (first32 - 1, "16 bit entries")] {
        let img = dir.path().join("b.img");
        let bytes = build_fat_vec(&files, total * 512, &opts()).unwrap();
        std::fs::write(&img, bytes).unwrap();
        let text = fsck_clean(&img);
        assert!(text.contains(want), "{total}: {text}");
    }

    // Forcing FAT32 on a 32 MiB ESP fails with advice.
    let mut o = opts();
    o.fat_type = Some(FatType::Fat32);
    let msg = build_fat_vec(&files, 32 * MIB, &o).unwrap_err().to_string();
    assert!(
        msg.contains("disk.esp_size") && msg.contains("FAT32"),
        "{msg}"
    );
    // Too small for anything, and not a sector multiple.
    assert!(fat_geometry(MIB, None)
        .unwrap_err()
        .to_string()
        .contains("disk.esp_size"));
    assert!(fat_geometry(33 * MIB + 1, None).is_err());
    // Cluster sizes grow with the volume.
    assert_eq!(fat_geometry(128 * MIB, None).unwrap().cluster_size(), 1024);
    assert_eq!(fat_geometry(1024 * MIB, None).unwrap().cluster_size(), 4096);
}

#[test]
fn too_big_content_names_file_and_sizes() {
    let big = vec![0x5au8; 34 * MIB as usize];
    let files = [
        EspFile::new("kiln.toml", b"x"),
        EspFile::new("EFI/BOOT/BOOTAA64.EFI", &big),
    ];
    let err = build_fat_vec(&files, 33 * MIB, &opts()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FatError::ContentTooLarge { .. }), "{msg}");
    assert!(msg.contains("EFI/BOOT/BOOTAA64.EFI"), "{msg}");
    assert!(msg.contains(&(34 * MIB + 1).to_string()), "{msg}");
    assert!(msg.contains(&(33 * MIB).to_string()), "{msg}");
    assert!(msg.contains("disk.esp_size"), "{msg}");
    // A file that fills the data area exactly fits (the root, EFI and
    // EFI/BOOT directories take one cluster each).
    let g = fat_geometry(33 * MIB, None).unwrap();
    let fill = vec![1u8; (g.data_capacity() - 3 * g.cluster_size()) as usize];
    let files = [EspFile::new("EFI/BOOT/BOOTAA64.EFI", &fill)];
    let summary = build_fat(
        &files,
        33 * MIB,
        &opts(),
        &mut CheckingSink::new(VecSink(vec![0; 33 * MIB as usize])),
    )
    .unwrap();
    assert_eq!(summary.used_clusters, g.clusters);
}

#[test]
fn full_volume_and_large_uki_are_fast_and_intact() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("esp.img");
    let uki = noise(70 * MIB as usize + 333, 6);
    let files = [
        EspFile::new("EFI/BOOT/BOOTAA64.EFI", &uki),
        EspFile::new("kiln.toml", b""),
    ];
    let start = Instant::now();
    let mut sink = FileSink::create(&img, 128 * MIB).unwrap();
    build_fat(&files, 128 * MIB, &opts(), &mut sink).unwrap();
    drop(sink);
    let took = start.elapsed();
    assert!(took.as_secs_f64() < 5.0, "70 MB ESP took {took:?}");
    fsck_clean(&img);
    mtools_read_back(&img, &files);
}

#[test]
fn names_and_labels_are_checked() {
    let d = b"x".as_slice();
    for (paths, expect) in [
        (vec!["/EFI/BOOT/X.EFI"], "relative"),
        (vec!["EFI//X.EFI"], "relative"),
        (vec!["EFI/../X.EFI"], "relative"),
        (vec!["a:b"], "not allowed"),
        (vec!["trailing."], "ends with"),
        (vec!["A.TXT", "A.TXT"], "listed twice"),
        (vec!["efi/a", "EFI/b"], "differ only in case"),
        (vec!["EFI", "EFI/X"], "is a file"),
        (vec!["EFI/X", "EFI"], "also a directory"),
    ] {
        let files: Vec<EspFile<'_>> = paths.iter().map(|p| EspFile::new(p, d)).collect();
        let msg = build_fat_vec(&files, 33 * MIB, &opts())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(expect), "{paths:?}: {msg}");
    }
    for label in ["kiln", "TOO-LONG-LABEL", " X", "A.B"] {
        let mut o = opts();
        o.label = label.into();
        let msg = build_fat_vec(&[], 33 * MIB, &o).unwrap_err().to_string();
        assert!(msg.contains("label"), "{label}: {msg}");
    }
    // No label at all is fine.
    let mut o = opts();
    o.label.clear();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("n.img");
    std::fs::write(
        &img,
        build_fat_vec(&[EspFile::new("A", d)], 33 * MIB, &o).unwrap(),
    )
    .unwrap();
    fsck_clean(&img);
}

#[test]
fn fat16_root_directory_limit() {
    let names: Vec<String> = (0..600).map(|i| format!("F{i}.TXT")).collect();
    let files: Vec<EspFile<'_>> = names.iter().map(|n| EspFile::new(n, b"x")).collect();
    let msg = build_fat_vec(&files, 32 * MIB, &opts())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("root directory needs 601 entries"), "{msg}");
    // FAT32 grows its root directory instead, and many entries still check clean.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("many.img");
    std::fs::write(&img, build_fat_vec(&files, 33 * MIB, &opts()).unwrap()).unwrap();
    fsck_clean(&img);
    mtools_read_back(&img, &files);
}

#[test]
fn timestamps_convert_and_clamp() {
    // 2023-11-14 22:13:21 UTC
    let (date, time, tenth) = fat_datetime(TS);
    assert_eq!(date, (43 << 9) | (11 << 5) | 14);
    assert_eq!(time, (22 << 11) | (13 << 5) | 10);
    assert_eq!(tenth, 100);
    assert_eq!(fat_datetime(0), ((1 << 5) | 1, 0, 0));
    assert_eq!(fat_datetime(-5), ((1 << 5) | 1, 0, 0));
    // 2000-02-29 (leap day) 00:00:00 UTC
    assert_eq!(fat_datetime(951_782_400).0, (20 << 9) | (2 << 5) | 29);
    assert_eq!(fat_datetime(i64::MAX / 2).0, (127 << 9) | (12 << 5) | 31);

    // mtools shows the stored time (FAT has no time zone).
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("t.img");
    std::fs::write(
        &img,
        build_fat_vec(&[EspFile::new("A.TXT", b"x")], 33 * MIB, &opts()).unwrap(),
    )
    .unwrap();
    let (ok, text) = run("mdir", &["-i", img.to_str().unwrap(), "::"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("2023-11-14") && text.contains("22:13"),
        "{text}"
    );
}

#[test]
fn short_names() {
    assert_eq!(&exact_short_name("BOOTX64.EFI").unwrap(), b"BOOTX64 EFI");
    assert_eq!(&exact_short_name("EFI").unwrap(), b"EFI        ");
    assert!(exact_short_name("kiln.toml").is_none());
    assert!(exact_short_name("Boot").is_none());
    assert!(exact_short_name("TOOLONGNAME").is_none());
    assert!(exact_short_name("A.B.C").is_none());
    assert!(exact_short_name("A.").is_none());
    let mut used = BTreeSet::new();
    let a = alias_short_name("kiln.toml", &used);
    assert_eq!(&a, b"KILN~1  TOM");
    used.insert(a);
    assert_eq!(&alias_short_name("kiln.tomlx", &used), b"KILN~2  TOM");
    assert_eq!(&alias_short_name(".hidden", &used), b"HIDDEN~1   ");
    assert_eq!(&alias_short_name("a b+c.conf", &used), b"AB_C~1  CON");
}
