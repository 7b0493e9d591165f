#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

//! `kiln inspect` on every output format: the fixture converted by the
//! referee tools (qemu-img, zstd, tar), read back and verified.

use std::path::Path;

use super::fixture::{self, build, edit_manifest, flip_byte, Fixture};
use super::tests::{assert_mismatch, assert_ok, opts, tool, verify};
use super::*;
use crate::arch::Arch;
use crate::profile::Format;
use crate::runner::HostRunner;

fn referee_converts(f: &Fixture, dir: &Path) -> Vec<(Format, std::path::PathBuf)> {
    let raw = f.image.to_str().unwrap();
    let qcow2 = dir.join("test-x86_64.qcow2");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw,
            qcow2.to_str().unwrap(),
        ],
    );
    let vhd = dir.join("test-x86_64.vhd");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed,force_size=on",
            raw,
            vhd.to_str().unwrap(),
        ],
    );
    let zst = dir.join("test-x86_64.raw.zst");
    tool("zstd", &["-q", "-3", raw, "-o", zst.to_str().unwrap()]);
    let stage = dir.join("stage");
    std::fs::create_dir(&stage).unwrap();
    std::fs::copy(&f.image, stage.join("disk.raw")).unwrap();
    let gce = dir.join("test-x86_64.gce.tar.gz");
    tool(
        "tar",
        &[
            "-C",
            stage.to_str().unwrap(),
            "-czSf",
            gce.to_str().unwrap(),
            "disk.raw",
        ],
    );
    vec![
        (Format::Qcow2, qcow2),
        (Format::Vhd, vhd),
        (Format::RawZst, zst),
        (Format::Gce, gce),
    ]
}

#[test]
fn every_output_format_is_read_and_verified() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    let converted = referee_converts(&f, d.path());
    // List each file's digest in the manifest, as the build does.
    edit_manifest(&f, |m| {
        for (fmt, p) in &converted {
            let bytes = std::fs::read(p).unwrap();
            m.outputs.insert(
                fmt.name().to_string(),
                crate::output::manifest::FileDigest {
                    file: p.file_name().unwrap().to_string_lossy().into_owned(),
                    size: bytes.len() as u64,
                    sha256: crate::output::manifest::sha256_hex(&bytes),
                },
            );
        }
    });
    for (fmt, p) in &converted {
        assert_eq!(manifest_beside(p), f.manifest_path);
        let r = verify(p);
        assert_eq!(r.format, *fmt);
        assert_eq!(r.disk_size, fixture::DISK_SIZE, "{fmt}");
        assert!(r.verification.as_ref().unwrap().passed(), "{fmt}:\n{r}");
        assert_ok(&r, &format!("{} file sha256 vs manifest", fmt.name()));
        assert_ok(&r, "whole raw disk sha256");
        if *fmt == Format::Vhd {
            assert_ok(&r, "VHD footer checksum");
            assert_eq!(r.vhd.as_ref().unwrap().current_size, fixture::DISK_SIZE);
        } else {
            assert!(!r.notes.is_empty(), "{fmt}: no note on how it was read");
        }
    }

    // A damaged VHD footer checksum is caught.
    let vhd = &converted[1].1;
    let len = std::fs::metadata(vhd).unwrap().len();
    flip_byte(vhd, len - 512 + 64);
    let e = inspect(vhd, &opts(false), &HostRunner).unwrap_err();
    assert!(e.to_string().contains("VHD footer checksum"), "{e}");
    let r = verify(vhd);
    assert_mismatch(&r, "VHD footer checksum");
    assert_mismatch(&r, "vhd file sha256");
    assert_ok(&r, "whole raw disk sha256");

    // A corrupt qcow2 makes qemu-img fail, and the error says so.
    let bad = d.path().join("bad.qcow2");
    let mut b = b"QFI\xfb".to_vec();
    b.resize(4096, 0xee);
    std::fs::write(&bad, b).unwrap();
    let e = inspect(&bad, &opts(false), &HostRunner).unwrap_err();
    assert!(matches!(e, InspectError::Convert { .. }), "{e}");
    assert!(
        e.to_string().contains("bad.qcow2") && e.to_string().contains("qemu-img"),
        "{e}"
    );

    // A truncated zstd stream.
    let zst = &converted[2].1;
    let cut = d.path().join("cut.raw.zst");
    let bytes = std::fs::read(zst).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = inspect(&cut, &opts(false), &HostRunner).unwrap_err();
    assert!(e.to_string().contains("cut.raw.zst"), "{e}");
}
