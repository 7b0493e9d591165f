//! Output formats, each checked by an independent tool: bmaptool and zstd
//! for `raw.zst` + bmap, `qemu-img` for qcow2 and VHD, tar and gzip for the
//! GCE tarball. Test images come from kiln's own disk writer (GPT, ext4
//! root, FAT ESP), so the recorded block map is the real one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::arch::Arch;
use kiln::disk::{create_image, MAP_BLOCK_SIZE};
use kiln::fs::{ext4, fat};
use kiln::output::formats::{write_outputs, FormatError, Output, OutputJob, Outputs};
use kiln::plan::{plan_disk, PartitionRole, PlanInput};
use kiln::profile::{Format, ZstdLevel};
use kiln::runner::HostRunner;
use kiln::tree::{FileTree, Node};
use mkext4::RegionSink;

const MIB: u64 = 1 << 20;
const EPOCH: i64 = 1_700_000_000;
const SEED: [u8; 32] = [0x42; 32];

/// Runs a command and returns its stdout; fails the test with its output
/// if it fails or cannot start.
fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| {
        let prog = cmd.get_program().to_string_lossy().into_owned();
        let pkg = match prog.as_str() {
            "bmaptool" => "bmap-tools",
            "qemu-img" => "qemu-utils",
            other => other,
        };
        panic!("cannot run {prog} ({e}): install the Debian package {pkg}")
    });
    assert!(
        out.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn same_bytes(a: &Path, b: &Path) {
    run(Command::new("cmp").arg(a).arg(b));
}

/// Pseudo-random bytes (xorshift), incompressible.
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A disk image from kiln's writer: GPT, an ext4 root holding `tree`, a FAT
/// ESP with one file. Returns its path and recorded block map.
fn image_from_tree(path: &Path, tree: &FileTree, disk_size: u64, esp_size: u64) -> Vec<Range<u64>> {
    let root_size = ext4::estimate_size(tree);
    let plan = plan_disk(&PlanInput {
        arch: Arch::X86_64,
        disk_size,
        esp_size,
        root_size,
        // The smallest slots that hold the root keep the image small.
        slot_size: Some(root_size),
        var_min_size: 0,
        seed: SEED,
    })
    .unwrap();
    let image = create_image(path, &plan).unwrap();
    let opts = ext4::Ext4Options {
        uuid: [7; 16],
        label: "root".into(),
        epoch: EPOCH,
    };
    ext4::write(
        tree,
        root_size,
        &opts,
        &mut image.window(PartitionRole::Root).unwrap(),
    )
    .unwrap();
    let uki = noise(300_000, 9);
    let files = [fat::EspFile::new("EFI/Linux/kiln-a.efi", &uki)];
    let mut esp = image.window(PartitionRole::Esp).unwrap();
    fat::build_fat(
        &files,
        esp.len(),
        &fat::FatOptions::new("KILN-ESP", 1, EPOCH),
        &mut esp,
    )
    .unwrap();
    let mapped = image.mapped_blocks();
    image.finish().unwrap();
    mapped
}

/// A small image with incompressible, compressible and all-zero files.
fn small_image(dir: &Path) -> (PathBuf, Vec<Range<u64>>) {
    let mut tree = FileTree::new(EPOCH);
    tree.insert(
        "usr/lib/noise",
        Node::file(noise(1 << 20, 1), 0o644, EPOCH, "t"),
    )
    .unwrap();
    let text: Vec<u8> = (0..40_000)
        .flat_map(|i| format!("line {i} of a compressible file\n").into_bytes())
        .collect();
    tree.insert("usr/share/text", Node::file(text, 0o644, EPOCH, "t"))
        .unwrap();
    tree.insert(
        "var/zeros",
        Node::file(vec![0u8; 300_000], 0o600, EPOCH, "t"),
    )
    .unwrap();
    let raw = dir.join("test-x86_64.raw");
    let mapped = image_from_tree(&raw, &tree, 48 * MIB, 8 * MIB);
    (raw, mapped)
}

fn job<'a>(
    raw: &'a Path,
    formats: &'a [Format],
    mapped: &'a [Range<u64>],
    stem: &'a str,
) -> OutputJob<'a> {
    OutputJob {
        raw,
        dir: raw.parent().unwrap(),
        stem,
        formats,
        zstd_level: ZstdLevel::DEFAULT,
        mapped,
        epoch: EPOCH,
        seed: SEED,
        runner: &HostRunner,
        raw_sha256: None,
        progress: None,
    }
}

fn sha256sum(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// Checks every output with its referee; `dir` holds them and `raw`.
fn check_outputs(raw: &Path, outputs: &[Output]) {
    let dir = raw.parent().unwrap();
    let size = std::fs::metadata(raw).unwrap().len();
    let scratch = tempfile::tempdir().unwrap();
    let file = |key: &str| dir.join(&outputs.iter().find(|o| o.key == key).unwrap().digest.file);
    for o in outputs {
        let p = dir.join(&o.digest.file);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            o.digest.size,
            "{}",
            o.key
        );
        assert_eq!(sha256sum(&p), o.digest.sha256, "{}", o.key);
    }
    let keys: Vec<&str> = outputs.iter().map(|o| o.key.as_str()).collect();

    if keys.contains(&"raw.zst") {
        let zst = file("raw.zst");
        let bmap = file("bmap");
        run(Command::new("zstd").arg("-q").arg("-t").arg(&zst));
        let unpacked = scratch.path().join("unzstd.raw");
        run(Command::new("zstd")
            .args(["-q", "-d", "-o"])
            .arg(&unpacked)
            .arg(&zst));
        same_bytes(raw, &unpacked);
        // bmaptool copies only the mapped blocks, checking each range's sha256
        // and the bmap's own checksum; the rest of a fresh file reads as zero.
        let dest = scratch.path().join("flashed.raw");
        run(Command::new("bmaptool")
            .arg("copy")
            .arg(&zst)
            .arg("--bmap")
            .arg(&bmap)
            .arg(&dest));
        same_bytes(raw, &dest);
    }
    if keys.contains(&"qcow2") {
        let q = file("qcow2");
        run(Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&q));
        let info = json(&run(Command::new("qemu-img")
            .args(["info", "-f", "qcow2", "--output=json"])
            .arg(&q)));
        assert_eq!(info["virtual-size"], size);
        assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
        let cmp = run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(raw)
            .arg(&q));
        assert!(cmp.contains("Images are identical"), "{cmp}");
    }
    if keys.contains(&"vhd") {
        let v = file("vhd");
        let virt = size.next_multiple_of(MIB);
        assert_eq!(std::fs::metadata(&v).unwrap().len(), virt + 512);
        let info = json(&run(Command::new("qemu-img")
            .args(["info", "-f", "vpc", "--output=json"])
            .arg(&v)));
        assert_eq!(info["virtual-size"], virt, "{info}");
        let cmp = run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "vpc"])
            .arg(raw)
            .arg(&v));
        assert!(cmp.contains("Images are identical"), "{cmp}");
        // And back: the VHD converted to raw is the image plus zero padding.
        let back = scratch.path().join("from-vhd.raw");
        run(Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "raw"])
            .arg(&v)
            .arg(&back));
        assert_eq!(std::fs::metadata(&back).unwrap().len(), virt);
        run(Command::new("cmp")
            .arg("-n")
            .arg(size.to_string())
            .arg(raw)
            .arg(&back));
    }
    if keys.contains(&"gce") {
        let g = file("gce");
        run(Command::new("gzip").arg("-t").arg(&g));
        let head = std::fs::read(&g).unwrap()[..10].to_vec();
        assert_eq!(head[3], 0, "gzip flags: no name, no extras");
        assert_eq!(&head[4..8], &[0, 0, 0, 0], "gzip mtime");
        let listing = run(Command::new("tar").args(["-tzvf"]).arg(&g).env("TZ", "UTC"));
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 1, "{listing}");
        let w: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(w[0], "-rw-r--r--", "{listing}");
        assert_eq!(w[1], "root/root", "{listing}");
        assert_eq!(w[2], size.to_string(), "{listing}");
        assert_eq!(w[3], "2023-11-14", "{listing}"); // EPOCH in UTC
        assert_eq!(w[5], "disk.raw", "{listing}");
        let numeric = run(Command::new("tar")
            .args(["--numeric-owner", "-tzvf"])
            .arg(&g));
        assert!(numeric.contains(" 0/0 "), "{numeric}");
        let head = Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -dc '{}' | head -c 512", g.display()))
            .output()
            .unwrap()
            .stdout;
        assert_eq!(&head[257..265], b"ustar  \0", "GNU tar magic");
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&g)
            .arg("-C")
            .arg(scratch.path()));
        same_bytes(raw, &scratch.path().join("disk.raw"));
    }
}

#[test]
fn mapped_blocks_hold_every_write_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let plan = plan_disk(&PlanInput {
        arch: Arch::Arm64,
        disk_size: 64 * MIB,
        esp_size: 34 * MIB,
        root_size: 8 * MIB,
        slot_size: Some(8 * MIB),
        var_min_size: 0,
        seed: SEED,
    })
    .unwrap();
    let path = d.path().join("disk.raw");
    let mut image = create_image(&path, &plan).unwrap();
    let gpt_only = image.mapped_blocks();
    let total_blocks = plan.total_size / MAP_BLOCK_SIZE;
    // MBR + primary GPT at the start, backup GPT at the end.
    assert_eq!(gpt_only.first().unwrap().start, 0);
    assert_eq!(gpt_only.last().unwrap().end, total_blocks);
    assert_eq!(gpt_only.len(), 2, "{gpt_only:?}");

    let root = plan.partition(PartitionRole::Root).unwrap().offset() / MAP_BLOCK_SIZE;
    let mut w = image.window(PartitionRole::Root).unwrap();
    w.write_at(10, b"x").unwrap(); // inside block 0 of the root
    w.write_at(5 * MAP_BLOCK_SIZE - 1, b"ab").unwrap(); // straddles blocks 4 and 5
    w.write_at(9 * MAP_BLOCK_SIZE, &[0u8; 4096]).unwrap(); // written zeros count
    w.zeros(20 * MAP_BLOCK_SIZE, MAP_BLOCK_SIZE).unwrap(); // skipped zeros do not
    w.data(1 << 20, &[1u8; 8192]).unwrap();
    // Rewriting the table (verity root hash) keeps the same blocks.
    image.apply_root_hash(&[3; 32]).unwrap();
    let mapped = image.mapped_blocks();
    let mut want = vec![
        gpt_only[0].clone(),
        root..root + 1,
        root + 4..root + 6,
        root + 9..root + 10,
        root + 256..root + 258,
        gpt_only[1].clone(),
    ];
    want.sort_by_key(|r| r.start);
    assert_eq!(mapped, want);
    image.finish().unwrap();

    // Every block outside the map reads as zero.
    let bytes = std::fs::read(&path).unwrap();
    let mut in_map = vec![false; total_blocks as usize];
    for r in &mapped {
        for b in r.clone() {
            in_map[b as usize] = true;
        }
    }
    for (i, block) in bytes.chunks(MAP_BLOCK_SIZE as usize).enumerate() {
        if !in_map[i] {
            assert!(block.iter().all(|&b| b == 0), "block {i} is not zero");
        }
    }
}

#[test]
fn every_format_passes_its_referee() {
    let d = tempfile::tempdir().unwrap();
    let (raw, mapped) = small_image(d.path());
    let outputs = write_outputs(&job(&raw, &Format::ALL, &mapped, "test-x86_64"))
        .unwrap()
        .files;
    let keys: Vec<(&str, &str)> = outputs
        .iter()
        .map(|o| (o.key.as_str(), o.digest.file.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("raw", "test-x86_64.raw"),
            ("raw.zst", "test-x86_64.raw.zst"),
            ("bmap", "test-x86_64.raw.bmap"),
            ("qcow2", "test-x86_64.qcow2"),
            ("vhd", "test-x86_64.vhd"),
            ("gce", "test-x86_64.gce.tar.gz"),
        ]
    );
    check_outputs(&raw, &outputs);
    // The mapped share is small: the bmap lists far fewer blocks than the disk has.
    let bmap = std::fs::read_to_string(d.path().join("test-x86_64.raw.bmap")).unwrap();
    assert!(
        bmap.contains("<BlocksCount> 12288 </BlocksCount>"),
        "{bmap}"
    );
    let mapped_count: u64 = bmap
        .split("<MappedBlocksCount>")
        .nth(1)
        .and_then(|r| r.split("</MappedBlocksCount>").next())
        .map(|n| n.trim().parse().unwrap())
        .unwrap();
    let recorded: u64 = mapped.iter().map(|r| r.end - r.start).sum();
    assert_eq!(mapped_count, recorded);
    assert!(
        mapped_count < 12288 / 2,
        "{mapped_count} of 12288 blocks mapped"
    );
    // Nothing else was written into the folder.
    let mut names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = outputs.iter().map(|o| o.digest.file.clone()).collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn a_tampered_bmap_is_refused_by_bmaptool() {
    let d = tempfile::tempdir().unwrap();
    let (raw, mapped) = small_image(d.path());
    let outputs = write_outputs(&job(&raw, &[Format::RawZst], &mapped, "test-x86_64"))
        .unwrap()
        .files;
    let bmap = d.path().join(&outputs[1].digest.file);
    let text = std::fs::read_to_string(&bmap).unwrap();
    // Change one range checksum and keep the file checksum: bmaptool must
    // notice the file checksum no longer matches.
    let i = text.find("chksum=\"").unwrap() + 8;
    let flipped = if &text[i..i + 1] == "0" { "1" } else { "0" };
    let bad = format!("{}{}{}", &text[..i], flipped, &text[i + 1..]);
    std::fs::write(&bmap, bad).unwrap();
    let out = Command::new("bmaptool")
        .arg("copy")
        .arg(d.path().join(&outputs[0].digest.file))
        .arg("--bmap")
        .arg(&bmap)
        .arg(d.path().join("dest"))
        .output()
        .expect("bmaptool (Debian package bmap-tools)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum mismatch"), "{err}");
}

#[test]
fn outputs_are_reproducible_whatever_the_holes() {
    let d = tempfile::tempdir().unwrap();
    let (raw, mapped) = small_image(d.path());
    let wanted = [Format::RawZst, Format::Qcow2, Format::Vhd, Format::Gce];
    let mut runs = Vec::new();
    // The same bytes as a sparse file and as a fully allocated one.
    for sparse in ["--sparse=always", "--sparse=never"] {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("r-x86_64.raw");
        run(Command::new("cp").arg(sparse).arg(&raw).arg(&copy));
        let outputs = write_outputs(&job(&copy, &wanted, &mapped, "r-x86_64"))
            .unwrap()
            .files;
        runs.push((dir, outputs));
    }
    // And a second run over the first folder's files.
    let again = write_outputs(&job(
        &runs[0].0.path().join("r-x86_64.raw"),
        &wanted,
        &mapped,
        "r-x86_64",
    ))
    .unwrap()
    .files;
    assert_eq!(runs[0].1, runs[1].1);
    assert_eq!(runs[0].1, again);
    for o in &runs[0].1 {
        same_bytes(
            &runs[0].0.path().join(&o.digest.file),
            &runs[1].0.path().join(&o.digest.file),
        );
    }
}

/// Writes `raw.zst` of `raw` at `level` into a fresh folder (the image is
/// copied there), checked with zstd and bmaptool if `check`; returns the
/// folder and the file.
fn zst_at(
    raw: &Path,
    mapped: &[Range<u64>],
    level: u8,
    check: bool,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("z-x86_64.raw");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(raw)
        .arg(&copy));
    let mut j = job(&copy, &[Format::RawZst], mapped, "z-x86_64");
    j.zstd_level = ZstdLevel::new(level.into()).unwrap();
    let outputs = write_outputs(&j).unwrap().files;
    if check {
        check_outputs(&copy, &outputs);
    }
    let zst = dir.path().join("z-x86_64.raw.zst");
    (dir, zst)
}

#[test]
fn raw_zst_at_each_level_decodes_to_the_image_and_repeats() {
    // 24 MiB of text and noise in one mapped range, zeros around it.
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("big-x86_64.raw");
    let size = 64 * MIB;
    let text: Vec<u8> = (0..1_600_000u32)
        .flat_map(|i| format!("{:x} ", i.wrapping_mul(2_654_435_761) % 65_536).into_bytes())
        .collect();
    let mut data = text.clone();
    data.extend(noise(2 << 20, 11));
    while data.len() < 24 << 20 {
        data.extend_from_slice(&text[..text.len().min((24 << 20) - data.len())]);
    }
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&data, 8 * MIB).unwrap();
    let blocks = 8 * MIB / MAP_BLOCK_SIZE..32 * MIB / MAP_BLOCK_SIZE;
    let mapped = std::slice::from_ref(&blocks);
    let default = ZstdLevel::DEFAULT.get() as u8;
    let mut sizes = Vec::new();
    for level in [1, default, 9] {
        let (_a, first) = zst_at(&raw, mapped, level, true);
        let (_b, second) = zst_at(&raw, mapped, level, false);
        same_bytes(&first, &second);
        let list = run(Command::new("zstd").arg("-lv").arg(&first));
        // Zero run, data, zero run: one frame each.
        assert!(list.contains("# Zstandard Frames: 3"), "{list}");
        sizes.push(std::fs::metadata(&first).unwrap().len());
    }
    assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2], "{sizes:?}");
}

#[test]
fn raw_is_listed_only_when_wanted_and_a_given_digest_is_used() {
    let d = tempfile::tempdir().unwrap();
    let (raw, mapped) = small_image(d.path());
    let raw_sum = sha256sum(&raw);
    let only_vhd: Outputs =
        write_outputs(&job(&raw, &[Format::Vhd], &mapped, "test-x86_64")).unwrap();
    assert_eq!(only_vhd.files.len(), 1);
    assert_eq!(only_vhd.files[0].key, "vhd");
    // Not published, but its digest is there for the manifest.
    assert_eq!(only_vhd.raw.sha256, raw_sum);
    assert_eq!(only_vhd.raw.file, "test-x86_64.raw");
    let only_zst = write_outputs(&job(&raw, &[Format::RawZst], &mapped, "test-x86_64")).unwrap();
    assert_eq!(only_zst.raw, only_vhd.raw);

    // The raw digest falls out of the VHD pass, or is hashed, or is taken as given.
    let both = write_outputs(&job(
        &raw,
        &[Format::Vhd, Format::Raw, Format::Vhd],
        &mapped,
        "test-x86_64",
    ))
    .unwrap()
    .files;
    assert_eq!(both.len(), 2);
    assert_eq!(both[0].key, "raw");
    assert_eq!(both[0].digest, only_vhd.raw);
    let hashed = write_outputs(&job(&raw, &[Format::Raw], &mapped, "test-x86_64"))
        .unwrap()
        .files;
    assert_eq!(hashed, both[..1]);
    let mut given = job(&raw, &[Format::Raw], &mapped, "test-x86_64");
    given.raw_sha256 = Some("given");
    let given = write_outputs(&given).unwrap();
    assert_eq!(given.files[0].digest.sha256, "given");
    assert_eq!(given.raw, given.files[0].digest);
}

#[test]
fn vhd_size_is_rounded_up_to_whole_mib() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("odd.raw");
    let size = 5 * MIB + 3 * 4096 + 512;
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&noise(8192, 5), 4096).unwrap();
    f.write_all_at(b"last sector", size - 512).unwrap();
    let mapped = [1..3, size / 4096..size / 4096 + 1];
    let outputs = write_outputs(&job(
        &raw,
        &[Format::Vhd, Format::RawZst, Format::Gce],
        &mapped,
        "odd",
    ))
    .unwrap()
    .files;
    check_outputs(&raw, &outputs);
}

#[test]
fn data_outside_the_recorded_blocks_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (raw, mapped) = small_image(d.path());
    // A write that bypassed the disk writer: the compressed outputs would drop it.
    let gap = mapped[0].end * MAP_BLOCK_SIZE + 100;
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .unwrap()
        .write_all_at(b"stray", gap)
        .unwrap();
    let err = write_outputs(&job(&raw, &[Format::Gce], &mapped, "test-x86_64")).unwrap_err();
    assert!(
        matches!(err, FormatError::Unrecorded { offset, .. } if offset == gap),
        "{err}"
    );
    assert!(err.to_string().contains(&gap.to_string()), "{err}");

    let bad_map = [0..4, 2..6];
    let err = write_outputs(&job(&raw, &[Format::RawZst], &bad_map, "test-x86_64")).unwrap_err();
    assert!(matches!(err, FormatError::BadJob { .. }), "{err}");
    let err = write_outputs(&job(&raw, &[Format::RawZst], &mapped, "other")).unwrap_err();
    assert!(err.to_string().contains("must be other.raw"), "{err}");
}

#[test]
fn a_multi_gib_sparse_image_streams() {
    // Larger than 8 GiB: the tar size field needs GNU's binary form, gzip's
    // ISIZE wraps, and block numbers pass 2^21.
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("big.raw");
    let size = 9 * 1024 * MIB;
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    let pieces = [
        (0u64, 256usize << 10),
        ((4 << 30) + 12288, 256 << 10),
        (size - (256 << 10), 256 << 10),
    ];
    let mut mapped = Vec::new();
    for (i, (at, len)) in pieces.iter().enumerate() {
        f.write_all_at(&noise(*len, i as u64 + 3), *at).unwrap();
        mapped.push(at / MAP_BLOCK_SIZE..(at + *len as u64) / MAP_BLOCK_SIZE);
    }
    // The raw digest is checked elsewhere; hashing 9 GiB here would only cost time.
    let mut j = job(&raw, &[Format::RawZst, Format::Gce], &mapped, "big");
    j.raw_sha256 = Some("not hashed here");
    let outputs = write_outputs(&j).unwrap().files;
    let zst = d.path().join("big.raw.zst");
    let gce = d.path().join("big.gce.tar.gz");
    assert!(std::fs::metadata(&zst).unwrap().len() < 2 * MIB);
    assert!(std::fs::metadata(&gce).unwrap().len() < 12 * MIB);
    for o in &outputs {
        assert_eq!(sha256sum(&d.path().join(&o.digest.file)), o.digest.sha256);
    }
    run(Command::new("zstd").args(["-q", "-t"]).arg(&zst));
    let dest = d.path().join("flashed.raw");
    run(Command::new("bmaptool")
        .arg("copy")
        .arg(&zst)
        .arg("--bmap")
        .arg(d.path().join("big.raw.bmap"))
        .arg(&dest));
    for (at, len) in pieces {
        run(Command::new("cmp")
            .arg("-n")
            .arg(len.to_string())
            .arg("-i")
            .arg(format!("{at}:{at}"))
            .arg(&raw)
            .arg(&dest));
    }
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), size);
    // tar reads the whole stream through gzip, which checks the CRC and ISIZE.
    let listing = run(Command::new("tar").arg("-tzvf").arg(&gce));
    assert!(listing.contains(&format!(" {size} ")), "{listing}");
}

#[test]
fn progress_goes_forward_to_the_image_size() {
    let d = tempfile::tempdir().unwrap();
    let (raw, mapped) = small_image(d.path());
    let size = std::fs::metadata(&raw).unwrap().len();
    let seen = std::sync::Mutex::new(Vec::new());
    let record = |p: kiln::output::formats::Progress| seen.lock().unwrap().push(p);
    let mut j = job(&raw, &[Format::Gce, Format::RawZst], &mapped, "test-x86_64");
    j.progress = Some(&record);
    write_outputs(&j).unwrap();
    let seen = seen.into_inner().unwrap();
    for f in [Format::RawZst, Format::Gce] {
        let steps: Vec<u64> = seen
            .iter()
            .filter(|p| p.format == f)
            .map(|p| {
                assert_eq!(p.total, size);
                p.done
            })
            .collect();
        assert!(steps.len() > 2, "{f}: {steps:?}");
        assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{f}: {steps:?}");
        assert_eq!(steps.first(), Some(&0));
        assert_eq!(steps.last(), Some(&size));
    }
}
