//! `kiln flash` through the real binary, onto regular files and loop devices
//! (never a real disk), each result checked by independent tools: sgdisk -v
//! for the GPT, fsck.fat -n and mtools for the ESP, byte comparison for the
//! partitions. Bad input must give one `kiln: error:` line naming the device
//! or file, a non-zero exit, and leave the target as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use kiln::{arch, disk, fs, output, plan, tree, uki};
#[path = "../src/inspect/fixture.rs"]
mod fixture;
mod support;

use support::cli::{assert_fails, kiln, stderr, stdout};

use kiln::arch::Arch;
use kiln::profile::{Format, ZstdLevel};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The fixture image in every format `kiln flash` takes.
struct Images {
    _dir: tempfile::TempDir,
    raw: PathBuf,
    zst: PathBuf,
    bmap: PathBuf,
    qcow2: PathBuf,
    bytes: Vec<u8>,
}

fn images(arch: Arch) -> Images {
    let d = tempfile::tempdir().unwrap();
    let f = fixture::build(d.path(), arch);
    let bytes = std::fs::read(&f.image).unwrap();
    let mapped = support::mapped_blocks(&bytes);
    let stem = f.image.file_stem().unwrap().to_str().unwrap().to_string();
    output::formats::write_outputs(&output::formats::OutputJob {
        raw: &f.image,
        dir: d.path(),
        stem: &stem,
        formats: &[Format::RawZst, Format::Qcow2],
        zstd_level: ZstdLevel::DEFAULT,
        mapped: &mapped,
        epoch: 0,
        seed: [1; 32],
        runner: &kiln::runner::HostRunner,
        raw_sha256: None,
        progress: None,
    })
    .unwrap();
    let p = |ext: &str| d.path().join(format!("{stem}.{ext}"));
    let (zst, bmap, qcow2) = (p("raw.zst"), p("raw.bmap"), p("qcow2"));
    assert!(zst.is_file() && bmap.is_file() && qcow2.is_file());
    Images {
        raw: f.image.clone(),
        zst,
        bmap,
        qcow2,
        bytes,
        _dir: d,
    }
}

/// A target file of `size` bytes.
fn target(dir: &Path, size: u64) -> PathBuf {
    let t = dir.join("disk.img");
    let f = std::fs::File::create(&t).unwrap();
    f.set_len(size).unwrap();
    t
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// The ESP (partition 1) of a disk file, copied out for the FAT tools.
fn esp_of(disk: &Path, dir: &Path) -> PathBuf {
    let info = run_ok(Command::new("sgdisk").arg("-i").arg("1").arg(disk));
    let sector = |key: &str| -> u64 {
        let l = info.lines().find(|l| l.starts_with(key)).unwrap();
        l.split(':')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (first, last) = (sector("First sector"), sector("Last sector"));
    let mut buf = vec![0u8; ((last + 1 - first) * 512) as usize];
    std::fs::File::open(disk)
        .unwrap()
        .read_exact_at(&mut buf, first * 512)
        .unwrap();
    let esp = dir.join("esp.img");
    std::fs::write(&esp, buf).unwrap();
    esp
}

/// Checks the flashed target with independent tools: a valid GPT whose backup
/// is at the target's end, the image's bytes between the tables, a clean FAT.
fn check_flashed(t: &Path, img: &Images, dir: &Path) {
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(t));
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    let mut got = vec![0u8; img.bytes.len()];
    std::fs::File::open(t)
        .unwrap()
        .read_exact_at(&mut got, 0)
        .unwrap();
    // Everything between the primary table and the image's old backup is the image's.
    let (from, to) = (34 * 512, img.bytes.len() - 33 * 512);
    assert!(
        got[from..to] == img.bytes[from..to],
        "partition bytes differ"
    );
    let esp = esp_of(t, dir);
    run_ok(Command::new("fsck.fat").arg("-n").arg(&esp));
}

#[test]
fn raw_zst_with_its_bmap_goes_on_a_larger_file() {
    let img = images(Arch::X86_64);
    let d = tempfile::tempdir().unwrap();
    let t = target(d.path(), 64 << 20);
    let o = kiln(&["flash", s(&img.zst), s(&t)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("backup GPT moved"), "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("verified: read back"),
        "{out}"
    );
    check_flashed(&t, &img, d.path());
    // Only mapped blocks (and the tables) were written: the rest is still sparse.
    let used = std::fs::metadata(&t).unwrap();
    let blocks = std::os::unix::fs::MetadataExt::blocks(&used) * 512;
    assert!(blocks < img.bytes.len() as u64, "{blocks} bytes allocated");
}

#[test]
fn raw_and_qcow2_of_the_same_size_give_the_image_bytes() {
    let img = images(Arch::X86_64);
    for (src, extra) in [(&img.raw, None), (&img.qcow2, Some("--no-bmap"))] {
        let d = tempfile::tempdir().unwrap();
        let t = target(d.path(), img.bytes.len() as u64);
        let mut args = vec!["flash", s(src), s(&t)];
        args.extend(extra);
        let o = kiln(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stdout(&o).contains("backup GPT moved"));
        let got = std::fs::read(&t).unwrap();
        assert!(
            got == img.bytes,
            "{}: target differs from the image",
            src.display()
        );
        run_ok(Command::new("sgdisk").arg("-v").arg(&t));
    }
}

#[test]
fn config_lands_on_the_esp_and_fsck_fat_is_happy() {
    let img = images(Arch::Arm64);
    let d = tempfile::tempdir().unwrap();
    let t = target(d.path(), 48 << 20);
    let cfg = d.path().join("node.toml");
    let text = "hostname = \"nuc-1\"\n\n[enroll]\nserver = \"https://10.0.0.1:8443\"\n";
    std::fs::write(&cfg, text).unwrap();
    let o = kiln(&["flash", s(&img.zst), s(&t), "--config", s(&cfg)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("node config: /kiln.toml on the ESP"),
        "{}",
        stdout(&o)
    );
    let esp = esp_of(&t, d.path());
    run_ok(Command::new("fsck.fat").arg("-n").arg(&esp));
    let got = run_ok(
        Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .arg("::/kiln.toml"),
    );
    assert_eq!(got, text);
    // The image's own files are still there.
    let dir = run_ok(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-/", "-b", "-i"])
            .arg(&esp)
            .arg("::/"),
    );
    assert!(dir.to_lowercase().contains("efi/linux/kiln-a.efi"), "{dir}");
}

fn sha(p: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

#[test]
fn bad_input_writes_nothing() {
    let img = images(Arch::X86_64);
    let other = images(Arch::Arm64);
    let d = tempfile::tempdir().unwrap();

    // Too small.
    let small = target(d.path(), 8 << 20);
    let before = sha(&small);
    let o = kiln(&["flash", s(&img.zst), s(&small)]);
    assert_fails(&o, &[s(&small), "too small", "41943040"]);
    assert_eq!(sha(&small), before);

    // A block map of another image (same size, other bytes).
    let t = target(d.path(), 64 << 20);
    let before = sha(&t);
    let o = kiln(&["flash", s(&img.zst), s(&t), "--bmap", s(&other.bmap)]);
    assert_fails(
        &o,
        &[
            s(&img.zst),
            "does not match the block map",
            "nothing was written",
        ],
    );
    assert_eq!(sha(&t), before);

    // A block map edited by hand.
    let edited = d.path().join("edited.bmap");
    let text = std::fs::read_to_string(&img.bmap).unwrap();
    std::fs::write(
        &edited,
        text.replacen("<Range", "<Range ", 1)
            .replacen(" 0-", " 1-", 1),
    )
    .unwrap();
    let o = kiln(&["flash", s(&img.zst), s(&t), "--bmap", s(&edited)]);
    assert_fails(&o, &[s(&edited), "block map"]);
    assert_eq!(sha(&t), before);

    // raw.zst without its map.
    let lone = d.path().join("lone.raw.zst");
    std::fs::copy(&img.zst, &lone).unwrap();
    let o = kiln(&["flash", s(&lone), s(&t)]);
    assert_fails(&o, &[s(&lone), "lone.raw.bmap"]);

    // Not an image; a bad config; a folder; a missing target.
    let text_file = d.path().join("notes.txt");
    std::fs::write(&text_file, "hello\n".repeat(400)).unwrap();
    assert_fails(
        &kiln(&["flash", s(&text_file), s(&t)]),
        &[s(&text_file), "not a disk image"],
    );
    let cfg = d.path().join("bad.toml");
    std::fs::write(&cfg, "hostname = \n").unwrap();
    let o = kiln(&["flash", s(&img.zst), s(&t), "--config", s(&cfg)]);
    assert_fails(&o, &[s(&cfg), "not TOML"]);
    // An SSH key line that is not a key: one line naming the entry, nothing written.
    std::fs::write(&cfg, "ssh_authorized_keys = [\"ssh-ed25519 not-a-key\"]\n").unwrap();
    let o = kiln(&["flash", s(&img.zst), s(&t), "--config", s(&cfg)]);
    assert_fails(
        &o,
        &[s(&cfg), "ssh_authorized_keys[0]: \"ssh-ed25519 not-a-key\""],
    );
    assert_fails(
        &kiln(&["flash", s(&img.zst), s(d.path())]),
        &["not a disk or a regular file"],
    );
    let o = kiln(&["flash", s(&img.raw), s(&img.raw), "--no-bmap"]);
    assert_fails(&o, &[s(&img.raw), "the image itself"]);
    assert!(std::fs::read(&img.raw).unwrap() == img.bytes);
    let missing = d.path().join("nope.img");
    assert_fails(
        &kiln(&["flash", s(&img.zst), s(&missing)]),
        &[s(&missing), "truncate -s"],
    );
    assert!(!missing.exists());
    assert_eq!(sha(&t), before);
}

/// Runs `losetup ARGS` and returns what it printed; panics saying what is missing when
/// loop devices cannot be attached (these tests need root: `make test` runs as root on
/// the machines it targets, which all have loop devices).
fn losetup(args: &[&str]) -> String {
    let o = Command::new("losetup")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running losetup (util-linux): {e}"));
    assert!(
        o.status.success(),
        "losetup {} failed: {}; this test needs loop devices (run it as root)",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A loop device over `file`, detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path, extra: &[&str]) -> Loop {
        let mut args = vec!["-f", "--show"];
        args.extend(extra);
        args.push(s(file));
        Loop(losetup(&args))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn loop_device_gets_the_image_and_bad_devices_are_refused() {
    let img = images(Arch::X86_64);
    let d = tempfile::tempdir().unwrap();
    let backing = target(d.path(), 96 << 20);
    // Old data everywhere, as on a used stick.
    std::fs::write(&backing, vec![0xA5u8; 96 << 20]).unwrap();
    let dev = Loop::new(&backing, &[]);
    // The fixture's block map lists non-zero blocks only (kiln's own lists
    // every block its writers wrote, zeros included): flash without it.
    let o = kiln(&["flash", s(&img.qcow2), &dev.0, "--no-bmap"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("from {}", dev.0)), "{out}");
    drop(dev);
    // Without a block map every byte is written, so nothing of the old data
    // is left inside the image's extent.
    check_flashed(&backing, &img, d.path());

    // A read-only loop device.
    let ro = Loop::new(&backing, &["-r"]);
    let before = sha(&backing);
    assert_fails(&kiln(&["flash", s(&img.zst), &ro.0]), &[&ro.0, "read-only"]);
    drop(ro);

    assert_eq!(sha(&backing), before, "a refused flash changed the target");

    // Mounted: an ext4 on a loop device, mounted.
    let fs_file = target(d.path(), 32 << 20);
    run_ok(Command::new("mkfs.ext4").arg("-q").arg(&fs_file));
    let fs_before = sha(&fs_file);
    let fs_dev = Loop::new(&fs_file, &[]);
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = Command::new("mount")
        .args(["-o", "ro", &fs_dev.0, s(&mnt)])
        .output()
        .unwrap_or_else(|e| panic!("running mount: {e}"));
    assert!(
        mount.status.success(),
        "mount -o ro {} {} failed: {}; this test needs to mount a file system (run it \
         as root)",
        fs_dev.0,
        mnt.display(),
        String::from_utf8_lossy(&mount.stderr).trim()
    );
    let o = kiln(&["flash", s(&img.zst), &fs_dev.0]);
    let _ = Command::new("umount").arg(&mnt).status();
    assert_fails(
        &o,
        &[&fs_dev.0, "is mounted on", s(&mnt), "unmount it first"],
    );
    drop(fs_dev);
    assert_eq!(
        sha(&fs_file),
        fs_before,
        "a refused flash changed the mounted disk"
    );
}

/// A partition is refused without --force. The loop driver on these machines makes no
/// partition devices (`losetup -P` gives no `loopNp1`, in /dev or in sysfs), so this
/// runs only where it does; the refusal itself is unit-tested on a fake sysfs
/// (`flash::target`'s tests).
#[test]
#[ignore = "needs loop partition scanning (`losetup -P` making loopNp1), which these machines' kernels do not do"]
fn a_partition_is_refused_without_force() {
    let img = images(Arch::X86_64);
    let d = tempfile::tempdir().unwrap();
    let backing = target(d.path(), 96 << 20);
    let o = kiln(&["flash", s(&img.zst), s(&backing)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = sha(&backing);
    let parts = Loop::new(&backing, &["-P"]);
    let p1 = format!("{}p1", parts.0);
    for _ in 0..20 {
        if Path::new(&p1).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        Path::new(&p1).exists(),
        "the kernel made no {p1} for a loop device attached with `losetup -P` \
         (this test needs loop partition scanning)"
    );
    assert_fails(
        &kiln(&["flash", s(&img.zst), &p1]),
        &[&p1, "is a partition of", "--force"],
    );
    drop(parts);
    assert_eq!(sha(&backing), before, "a refused flash changed the target");
}
