//! `kiln run` through the real binary, with a stand-in `qemu-system-*` first
//! on PATH that records its arguments and the guest disk it was given (read
//! by `qemu-img info`, the independent referee): every format `kiln inspect`
//! reads boots from a throwaway qcow2 overlay of 8 GiB backed by the image.
//! Bad input gives one `kiln: error:` line naming the file and a non-zero exit.
//! (The real boot of the default image is the QEMU suite's `run_boots_...`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use kiln::{arch, disk, fs, output, plan, tree, uki};
#[path = "../src/inspect/fixture.rs"]
mod fixture;
mod support;

use support::cli::{assert_fails, stderr};

use kiln::arch::Arch;
use kiln::profile::{Format, ZstdLevel};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A folder with a fake `qemu-system-x86_64` that writes its arguments and
/// `qemu-img info` of its boot disk to `$FAKE_QEMU_OUT`.
fn fake_qemu(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("qemu-system-x86_64");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         printf '%s\\n' \"$@\" > \"$FAKE_QEMU_OUT\"\n\
         for a in \"$@\"; do case \"$a\" in file=*if=virtio*) \
         f=${a#file=}; f=${f%%,*}; echo DISK=$f >> \"$FAKE_QEMU_OUT\"; \
         qemu-img info --output=json -U \"$f\" >> \"$FAKE_QEMU_OUT\"; break;; esac; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn kiln_run(bin: &Path, out: &Path, args: &[&str]) -> Output {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("run")
        .args(args)
        .arg("--no-ntp")
        .env("PATH", path)
        .env("FAKE_QEMU_OUT", out)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn firmware_here() -> bool {
    Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file()
}

#[test]
fn every_format_boots_from_an_overlay_of_a_real_disks_size() {
    // `kiln run` looks for the firmware before it starts QEMU: without it this test
    // proves nothing, so it fails with what is missing (make test installs it).
    assert!(
        firmware_here(),
        "needs OVMF firmware at /usr/share/OVMF/OVMF_CODE_4M.fd (Debian package ovmf; \
         `make test` installs it)"
    );
    let d = tempfile::tempdir().unwrap();
    let f = fixture::build(d.path(), Arch::X86_64);
    let bytes = std::fs::read(&f.image).unwrap();
    let mapped = support::mapped_blocks(&bytes);
    let stem = "test-x86_64";
    output::formats::write_outputs(&output::formats::OutputJob {
        raw: &f.image,
        dir: d.path(),
        stem,
        formats: &[Format::RawZst, Format::Qcow2, Format::Vhd, Format::Gce],
        zstd_level: ZstdLevel::DEFAULT,
        mapped: &mapped,
        epoch: 0,
        seed: [1; 32],
        runner: &kiln::runner::HostRunner,
        raw_sha256: None,
        progress: None,
    })
    .unwrap();
    let bin = fake_qemu(d.path());
    let out = d.path().join("qemu.txt");
    for (file, name, backing_fmt) in [
        ("test-x86_64.raw", "raw", "raw"),
        ("test-x86_64.raw.zst", "raw.zst", "raw"),
        ("test-x86_64.qcow2", "qcow2", "qcow2"),
        ("test-x86_64.vhd", "vhd", "raw"),
        ("test-x86_64.gce.tar.gz", "gce", "raw"),
    ] {
        let image = d.path().join(file);
        let before = std::fs::read(&image).unwrap();
        let o = kiln_run(&bin, &out, &[s(&image)]);
        let e = stderr(&o);
        assert!(o.status.success(), "{file}: {e}");
        assert!(e.contains(&format!("({name}, x86_64)")), "{file}: {e}");
        assert!(e.contains("throwaway overlay of 8.0 GiB"), "{file}: {e}");
        let rec = std::fs::read_to_string(&out).unwrap();
        assert!(rec.contains("q35,accel=tcg"), "{file}: {rec}");
        assert!(rec.contains("format=qcow2,if=virtio"), "{file}: {rec}");
        assert!(!rec.contains("snapshot=on"), "{file}: {rec}");
        assert!(rec.contains("logfile="), "{file}: {rec}");
        let info = &rec[rec.find('{').unwrap()..];
        let v: serde_json::Value = serde_json::from_str(info).unwrap();
        assert_eq!(v["virtual-size"], 8u64 << 30, "{file}: {info}");
        assert_eq!(v["backing-filename-format"], backing_fmt, "{file}: {info}");
        if matches!(name, "raw" | "qcow2" | "vhd") {
            let backing = std::fs::canonicalize(&image).unwrap();
            assert_eq!(v["backing-filename"], s(&backing), "{file}: {info}");
        }
        // The image is never written.
        assert!(std::fs::read(&image).unwrap() == before, "{file} changed");
    }
    // --persist boots the raw file itself; --disk-size sets the overlay's size.
    let raw = d.path().join("test-x86_64.raw");
    let o = kiln_run(&bin, &out, &[s(&raw), "--persist"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rec = std::fs::read_to_string(&out).unwrap();
    assert!(
        rec.contains(&format!(
            "file={},format=raw,if=virtio\n",
            s(&std::fs::canonicalize(&raw).unwrap())
        )),
        "{rec}"
    );
    let o = kiln_run(&bin, &out, &[s(&raw), "--disk-size", "20GiB"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("\"virtual-size\": 21474836480"));
}

#[test]
fn files_that_are_not_images_get_one_line() {
    let d = tempfile::tempdir().unwrap();
    let bin = fake_qemu(d.path());
    let out = d.path().join("qemu.txt");
    let text = d.path().join("notes.txt");
    std::fs::write(&text, "hello\n".repeat(400)).unwrap();
    assert_fails(
        &kiln_run(&bin, &out, &[s(&text)]),
        &[s(&text), "not a disk image"],
    );
    let bmap = d.path().join("x.raw.bmap");
    std::fs::write(
        &bmap,
        "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n</bmap>\n",
    )
    .unwrap();
    assert_fails(&kiln_run(&bin, &out, &[s(&bmap)]), &[s(&bmap), "XML"]);
    let empty = d.path().join("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    assert_fails(
        &kiln_run(&bin, &out, &[s(&empty)]),
        &[s(&empty), "not a disk image"],
    );
    let cut = d.path().join("cut.raw.zst");
    std::fs::write(&cut, [0x28, 0xB5, 0x2F, 0xFD, 0x04, 0x58, 0x01, 0x02]).unwrap();
    assert_fails(&kiln_run(&bin, &out, &[s(&cut)]), &[s(&cut), "zstd"]);
    let missing = d.path().join("nope.raw");
    assert_fails(&kiln_run(&bin, &out, &[s(&missing)]), &[s(&missing)]);
    assert_fails(
        &kiln_run(&bin, &out, &[s(d.path())]),
        &["not a regular file"],
    );
    assert!(!out.exists(), "QEMU was started for bad input");
}
