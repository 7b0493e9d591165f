#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

//! `kiln inspect` on images made by the library (see `fixture.rs`), with
//! independent tools (sgdisk, blkid, veritysetup, qemu-img, zstd, tar) as
//! referees for what the report says and to make the other formats.

use std::path::Path;
use std::process::Command;

use super::fixture::{self, build, edit_manifest, flip_byte, Fixture};
use super::show::utc;
use super::*;
use crate::arch::Arch;
use crate::profile::Format;
use crate::runner::HostRunner;

pub(super) fn opts(verify: bool) -> InspectOptions {
    InspectOptions {
        manifest: ManifestSource::Beside,
        verify,
    }
}

pub(super) fn verify(path: &Path) -> Report {
    inspect(path, &opts(true), &HostRunner).unwrap()
}

pub(super) fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (installed by make deps): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(super) fn check<'a>(r: &'a Report, what: &str) -> &'a Check {
    let v = r.verification.as_ref().expect("verification ran");
    v.checks
        .iter()
        .find(|c| c.what.contains(what))
        .unwrap_or_else(|| panic!("no check `{what}` in:\n{v}"))
}

pub(super) fn assert_ok(r: &Report, what: &str) {
    let c = check(r, what);
    assert!(matches!(c.outcome, Outcome::Ok { .. }), "expected ok: {c}");
}

pub(super) fn assert_mismatch(r: &Report, what: &str) {
    let c = check(r, what);
    assert!(
        matches!(c.outcome, Outcome::Mismatch { .. }),
        "expected MISMATCH: {c}"
    );
}

pub(super) fn failed_names(r: &Report) -> Vec<String> {
    r.verification
        .as_ref()
        .unwrap()
        .failures()
        .map(|c| c.what.clone())
        .collect()
}

pub(super) fn partition(f: &Fixture, role: &str) -> crate::output::manifest::Partition {
    f.manifest
        .disk
        .partitions
        .iter()
        .find(|p| p.role == role)
        .unwrap()
        .clone()
}

/// Extracts a partition of the fixture to a file (for the referee tools).
pub(super) fn extract(f: &Fixture, role: &str, to: &Path) {
    let p = partition(f, role);
    let mut data = vec![0u8; p.size as usize];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&f.image).unwrap(),
        &mut data,
        p.offset,
    )
    .unwrap();
    std::fs::write(to, data).unwrap();
}

#[test]
fn a_clean_image_is_reported_fully_and_passes_every_check() {
    for arch in Arch::ALL {
        let d = tempfile::tempdir().unwrap();
        let f = build(d.path(), arch);
        let r = verify(&f.image);
        let v = r.verification.as_ref().unwrap();
        assert!(v.passed(), "{r}");
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(v.manifest_skipped.is_none());
        assert_eq!(r.format, Format::Raw);
        assert_eq!(r.arch, Some(arch));
        assert_eq!(r.disk_size, fixture::DISK_SIZE);

        // GPT: our reading agrees with sgdisk's.
        let img = f.image.to_str().unwrap();
        assert!(tool("sgdisk", &["-v", img]).contains("No problems found"));
        assert_eq!(r.gpt.partitions.len(), 5);
        for p in &r.gpt.partitions {
            let info = tool("sgdisk", &["-i", &p.number.to_string(), img]).to_lowercase();
            assert!(info.contains(&p.partuuid.to_string()), "{info}");
            assert!(info.contains(&p.type_guid.to_string()), "{info}");
            assert!(
                info.contains(&format!("first sector: {} ", p.first_lba)),
                "{info}"
            );
            assert!(info.contains(&format!("'{}'", p.name)), "{info}");
        }
        assert_eq!(r.gpt.partitions[0].kind, Kind::Esp);
        assert_eq!(r.gpt.partitions[1].kind, Kind::Root(arch));
        assert_eq!(r.gpt.partitions[2].kind, Kind::RootVerity(arch));
        assert_eq!(r.gpt.partitions[3].kind, Kind::Root(arch));
        assert_eq!(r.gpt.partitions[4].kind, Kind::RootVerity(arch));
        assert_eq!(r.gpt.partitions[1].attribute_names, ["read-only"]);
        assert_eq!(
            r.gpt.partitions[3].attribute_names,
            ["read-only", "no-auto"]
        );
        assert_eq!(r.gpt.partitions[4].name, "_empty");

        // ESP and UKI.
        let esp = r.esp.as_ref().unwrap();
        assert_eq!(esp.label.as_deref(), Some("KILN-ESP"));
        assert_eq!(esp.serial.as_deref(), Some("1234-ABCD"));
        let uki_path = fixture::UKI_PATH;
        let boot_path = arch.efi_boot_path();
        let listed: Vec<(&str, u64)> = esp
            .files
            .iter()
            .filter(|e| !e.is_dir)
            .map(|e| (e.path.as_str(), e.size))
            .collect();
        assert_eq!(
            listed,
            [
                (boot_path.as_str(), fixture::tiny_stub(arch).len() as u64),
                (uki_path, f.uki.len() as u64),
                ("kiln.toml", 16),
                ("loader/loader.conf", 53),
            ]
        );
        assert_eq!(esp.systemd_boot.as_deref(), Some(boot_path.as_str()));
        assert_eq!(
            esp.loader_conf.as_deref(),
            Some(kiln_contract::boot::LOADER_CONF_TEXT)
        );
        let uki = r.uki.as_ref().unwrap();
        assert_eq!(uki.machine, arch.name());
        assert_eq!(uki.kernel_release.as_deref(), Some(fixture::RELEASE));
        assert_eq!(uki.os.as_deref(), Some("Kiln Test Linux 1"));
        assert_eq!(uki.version.as_deref(), Some(fixture::VERSION));
        assert!(r.other_ukis.is_empty());

        // Slots: A holds the root the UKI boots, B is empty.
        assert_eq!(r.active_slot, Some(kiln_contract::boot::Slot::A));
        let shape: Vec<_> = r
            .slots
            .iter()
            .map(|s| (s.slot.letter(), s.root, s.verity, s.state, s.uki.as_deref()))
            .collect();
        assert_eq!(
            shape,
            [
                ('a', Some(2), Some(3), SlotState::Filled, Some(uki_path)),
                ('b', Some(4), Some(5), SlotState::Empty, None),
            ]
        );
        assert_eq!(r.slots[0].root_hash.as_deref(), Some(f.root_hash.as_str()));
        assert_eq!(
            uki.cmdline.as_deref(),
            Some(f.manifest.kernel.cmdline.as_str())
        );
        assert_eq!(uki.roothash.as_deref(), Some(f.root_hash.as_str()));

        // Verity superblock: as veritysetup dump shows it.
        let vs = r.verity.as_ref().unwrap();
        let hash_file = d.path().join("hash");
        let data_file = d.path().join("data");
        extract(&f, "root-verity", &hash_file);
        extract(&f, "root", &data_file);
        let dump = tool("veritysetup", &["dump", hash_file.to_str().unwrap()]);
        let field = |k: &str| {
            dump.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {dump}"))
                .trim()
                .to_string()
        };
        assert_eq!(field("UUID:"), vs.uuid.to_string());
        assert_eq!(field("Data blocks:"), vs.data_blocks.to_string());
        assert_eq!(field("Salt:"), vs.salt);
        assert_eq!(field("Hash algorithm:"), vs.algorithm);
        // And the fixture is a tree veritysetup accepts with this root hash.
        tool(
            "veritysetup",
            &[
                "verify",
                data_file.to_str().unwrap(),
                hash_file.to_str().unwrap(),
                &f.root_hash,
            ],
        );

        // Root filesystem: as blkid and dumpe2fs see it.
        let fs = r.root_fs.as_ref().unwrap();
        let root = partition(&f, "root");
        let blkid = tool(
            "blkid",
            &["-p", "-O", &root.offset.to_string(), "-o", "export", img],
        );
        assert!(blkid.contains(&format!("UUID={}\n", fs.uuid)), "{blkid}");
        assert!(blkid.contains(&format!("LABEL={}\n", fs.label)), "{blkid}");
        assert_eq!(fs.label, format!("root-{arch}"));
        let dumpe2fs = tool("dumpe2fs", &["-h", data_file.to_str().unwrap()]);
        let ext = |k: &str| {
            dumpe2fs
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(ext("Block count:"), fs.blocks.to_string());
        assert_eq!(ext("Free blocks:"), fs.free_blocks.to_string());
        assert_eq!(ext("Free inodes:"), fs.free_inodes.to_string());
        assert_eq!(fs.size, f.manifest.root.size);

        // Manifest facts.
        let m = r.manifest.as_ref().unwrap();
        assert_eq!(m.epoch, fixture::EPOCH);
        assert_eq!(m.version.as_deref(), Some(fixture::VERSION));
        assert_eq!(m.packages.len(), 3);

        // Every kind of check ran and passed.
        for what in [
            "primary GPT header CRC32",
            "primary GPT entry array CRC32",
            "backup GPT header CRC32",
            "backup GPT entry array CRC32",
            "backup GPT agrees with the primary",
            "verity hash tree rebuilt from partition 2",
            "root hash vs the UKI command line",
            "partition 2 (root-",
            "partition 3 (root-",
            "verity data covers the whole root filesystem",
            "partition 1 (esp) sha256 vs manifest",
            "partition 2 (root-",
            "partition 3 (root-",
            "whole raw disk sha256",
            "raw file sha256 vs manifest outputs",
            "UKI command line vs manifest",
            "UKI kernel release vs manifest",
            "verity superblock vs manifest",
            "root hash vs manifest verity.root_hash",
            "hash tree size vs manifest",
            "GPT disk GUID vs manifest",
            "partition 4 (_empty) entry vs manifest",
            "partition 5 (_empty) sha256 vs manifest",
            "systemd-boot on the ESP",
            "systemd-boot's loader.conf on the ESP",
            "UKI in EFI/Linux/ selects a root slot",
            "slot b (partitions 4 and 5)",
            "ESP file EFI/Linux/kiln-a.efi sha256 vs manifest esp",
            "ESP file loader/loader.conf sha256",
            "ESP file EFI/BOOT/",
            "UKI os-release IMAGE_VERSION vs manifest version",
        ] {
            assert_ok(&r, what);
        }

        // The text report says what the data says.
        let text = r.to_string();
        for needle in [
            "format      raw",
            &f.root_hash,
            "Kiln Test Linux 1",
            uki_path,
            "  a  partitions #2 + #3 (16 MiB root): booted by EFI/Linux/kiln-a.efi (shown below)",
            "  b  partitions #4 + #5 (16 MiB root): empty\n",
            "version     1.2.3",
            "KILN-ESP",
            "label \"root-",
            "2023-11-14 22:13:20 UTC",
            "packages    3 (",
            "agent       built by rustc 1.95.0 (59807616e 2026-04-14)",
            "result: ",
            "0 failed",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert!(
            !text.contains("zlib1g"),
            "packages listed without --packages"
        );
        assert!(r.with_packages().to_string().contains("zlib1g"));
        // The suite each package came from: counted in the summary, named per package.
        assert!(
            text.contains("packages    3 (2 from bookworm, 1 from forky; `kiln inspect"),
            "{text}"
        );
        let listed = r.with_packages().to_string();
        assert!(
            listed.contains("packages    3 (2 from bookworm, 1 from forky)\n"),
            "{listed}"
        );
        let zlib = listed.lines().find(|l| l.contains("zlib1g")).unwrap();
        assert!(zlib.ends_with(", root, forky)"), "{zlib}");

        // JSON carries the same data.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["format"], "raw");
        assert_eq!(json["uki"]["roothash"], f.root_hash.as_str());
        assert_eq!(json["verification"]["checks"][0]["status"], "ok");
        assert_eq!(json["manifest"]["suites"][1]["suite"], "forky");
        assert_eq!(json["gpt"]["partitions"][1]["kind"]["root"], arch.name());
        assert_eq!(json["active_slot"], "a");
        assert_eq!(json["slots"][1]["state"], "empty");
    }
}

#[test]
fn a_changed_root_byte_breaks_the_tree_the_hashes_and_the_roothash() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    let root = partition(&f, "root");
    // A byte inside the filesystem (the data area of the big file).
    flip_byte(&f.image, root.offset + 300_000);
    let r = verify(&f.image);
    assert!(!r.verification.as_ref().unwrap().passed());
    assert_mismatch(&r, "verity hash tree rebuilt");
    assert_mismatch(&r, "root hash vs the UKI command line");
    assert_mismatch(&r, "root hash vs manifest verity.root_hash");
    assert_mismatch(&r, "partition 2 (root-x86_64-a) sha256 vs manifest");
    assert_mismatch(&r, "partition 2 (root-x86_64-a) PARTUUID");
    assert_mismatch(&r, "whole raw disk sha256");
    assert_ok(&r, "partition 1 (esp) sha256 vs manifest");
    assert_ok(&r, "partition 3 (root-x86_64-a-verity) sha256 vs manifest");
    assert_ok(&r, "primary GPT header CRC32");
    // veritysetup, the referee, agrees that the data no longer matches.
    let (data, hash) = (d.path().join("data"), d.path().join("hash"));
    extract(&f, "root", &data);
    extract(&f, "root-verity", &hash);
    let out = Command::new("veritysetup")
        .args([
            "verify",
            data.to_str().unwrap(),
            hash.to_str().unwrap(),
            &f.root_hash,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The text shows both values of a mismatch.
    let text = r.verification.as_ref().unwrap().to_string();
    assert!(
        text.contains("MISMATCH  root hash vs the UKI command line"),
        "{text}"
    );
    assert!(
        text.contains(&format!("command line: {}", f.root_hash)),
        "{text}"
    );
}

#[test]
fn a_changed_hash_block_is_found_by_the_byte_comparison() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::Arm64);
    let hash = partition(&f, "root-verity");
    flip_byte(&f.image, hash.offset + 4096 + 77);
    let r = verify(&f.image);
    let c = check(&r, "verity hash tree rebuilt");
    assert!(
        c.describe()
            .contains("first difference at byte 4173 (hash block 1)"),
        "{c}"
    );
    // The data is intact, so its root hash still matches the command line.
    assert_ok(&r, "root hash vs the UKI command line");
    assert_mismatch(&r, "partition 3 (root-arm64-a-verity) sha256 vs manifest");
}

#[test]
fn partuuids_must_be_the_root_hash_halves() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    // sgdisk rewrites both tables with valid CRCs.
    tool(
        "sgdisk",
        &[
            "-u",
            "2:11111111-2222-4333-8444-555555555555",
            f.image.to_str().unwrap(),
        ],
    );
    let r = verify(&f.image);
    assert_ok(&r, "primary GPT header CRC32");
    assert_ok(&r, "backup GPT agrees with the primary");
    assert_mismatch(&r, "partition 2 (root-x86_64-a) PARTUUID vs first half");
    assert_ok(
        &r,
        "partition 3 (root-x86_64-a-verity) PARTUUID vs second half",
    );
    assert_mismatch(&r, "partition 2 (root-x86_64-a) entry vs manifest");
    assert_ok(&r, "verity hash tree rebuilt");
}

#[test]
fn a_corrupt_primary_header_is_an_error_and_verify_falls_back_to_the_backup() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    flip_byte(&f.image, 512 + 60); // inside the disk GUID
    let e = inspect(&f.image, &opts(false), &HostRunner).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, InspectError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(f.image.to_str().unwrap()), "{msg}");
    assert!(msg.contains("primary GPT header CRC32"), "{msg}");
    assert!(msg.contains("--verify"), "{msg}");

    let r = verify(&f.image);
    assert_eq!(r.gpt.source, "backup");
    assert_eq!(r.gpt.partitions.len(), 5);
    assert_mismatch(&r, "primary GPT header CRC32");
    assert_ok(&r, "backup GPT header CRC32");
    assert_ok(&r, "backup GPT entry array CRC32");
    assert_ok(&r, "verity hash tree rebuilt");
    assert_mismatch(&r, "whole raw disk sha256");
    // The partitions are untouched.
    assert_ok(&r, "partition 2 (root-x86_64-a) sha256 vs manifest");
}

#[test]
fn a_corrupt_entry_array_is_named() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    flip_byte(&f.image, 1024 + 128 + 60); // partition 2's name
    let msg = inspect(&f.image, &opts(false), &HostRunner)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("primary GPT entry array CRC32"), "{msg}");
    let r = verify(&f.image);
    assert_mismatch(&r, "primary GPT entry array CRC32");
    assert_ok(&r, "backup GPT entry array CRC32");
    // Partition names come from the intact backup array.
    assert_eq!(r.gpt.partitions[1].name, "root-x86_64-a");
    assert_eq!(
        failed_names(&r),
        [
            "primary GPT entry array CRC32",
            "backup GPT agrees with the primary",
            "whole raw disk sha256 vs manifest disk.sha256",
            "raw file sha256 vs manifest outputs.\"raw\""
        ]
    );
}

#[test]
fn bad_files_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    let run = |p: &Path| inspect(p, &opts(false), &HostRunner).unwrap_err();

    // Truncated: the backup header is gone.
    let cut = d.path().join("cut.raw");
    std::fs::copy(&f.image, &cut).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let e = run(&cut);
    assert!(matches!(e, InspectError::Truncated { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("cut.raw") && msg.contains(&format!("{} bytes", fixture::DISK_SIZE)),
        "{msg}"
    );

    // Missing.
    let e = run(&d.path().join("nope.raw"));
    assert!(matches!(e, InspectError::Io { .. }), "{e}");
    assert!(e.to_string().contains("nope.raw"), "{e}");

    // A folder, an empty file, a text file, random bytes, a bmap.
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("empty.raw", Vec::new(), "too small"),
        ("notes.txt", b"hello\n".repeat(500), "no partition table"),
        (
            "noise.raw",
            (0..1_000_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
                .collect(),
            "no partition table",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = run(&p);
        assert!(matches!(e, InspectError::NotAnImage { .. }), "{name}: {e}");
        assert!(
            e.to_string().contains(needle) && e.to_string().contains(name),
            "{e}"
        );
    }
    let e = run(d.path());
    assert!(e.to_string().contains("folder"), "{e}");

    // A block map made by bmaptool, the referee, for the fixture.
    let bmap = d.path().join("test-x86_64.bmap");
    tool(
        "bmaptool",
        &[
            "create",
            "-o",
            bmap.to_str().unwrap(),
            f.image.to_str().unwrap(),
        ],
    );
    let e = run(&bmap);
    assert!(matches!(e, InspectError::NotAnImage { .. }), "{e}");
    assert!(e.to_string().contains("bmap block map"), "{e}");

    // An MBR-only disk.
    let mbr = d.path().join("mbr.raw");
    let mut b = vec![0u8; 1 << 20];
    b[510] = 0x55;
    b[511] = 0xAA;
    std::fs::write(&mbr, b).unwrap();
    assert!(run(&mbr).to_string().contains("no GPT header"));
}

#[test]
fn manifests_beside_given_missing_and_broken() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);

    // Named explicitly, from elsewhere.
    let other = d.path().join("elsewhere.json");
    std::fs::rename(&f.manifest_path, &other).unwrap();
    let r = inspect(
        &f.image,
        &InspectOptions {
            manifest: ManifestSource::Path(other.clone()),
            verify: true,
        },
        &HostRunner,
    )
    .unwrap();
    assert!(r.verification.as_ref().unwrap().passed());
    assert_eq!(r.manifest.as_ref().unwrap().path, other);

    // None beside: the image's own checks run, the manifest's are skipped and said so.
    let r = verify(&f.image);
    let v = r.verification.as_ref().unwrap();
    assert!(v.passed(), "{v}");
    let why = v.manifest_skipped.as_deref().unwrap();
    assert!(why.contains("test-x86_64.manifest.json"), "{why}");
    assert!(v.to_string().contains("manifest checks SKIPPED"), "{v}");
    assert_ok(&r, "verity hash tree rebuilt");
    assert_ok(&r, "root hash vs the UKI command line");
    assert!(!v
        .checks
        .iter()
        .any(|c| c.what.contains("sha256 vs manifest")));

    // --no-manifest ignores even a broken one.
    std::fs::write(&f.manifest_path, "{").unwrap();
    let r = inspect(
        &f.image,
        &InspectOptions {
            manifest: ManifestSource::Skip,
            verify: true,
        },
        &HostRunner,
    )
    .unwrap();
    assert!(r.verification.unwrap().passed());

    // Broken ones are errors naming the file and the problem.
    let cases = [
        ("{", "not JSON"),
        ("[1, 2]", "no numeric `schema`"),
        ("{\"schema\": 1}", "schema 1, but this kiln reads schema 2"),
        ("{\"schema\": 2, \"name\": \"x\"}", "missing field"),
    ];
    for (text, needle) in cases {
        std::fs::write(&f.manifest_path, text).unwrap();
        let e = inspect(&f.image, &opts(false), &HostRunner).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, InspectError::Manifest { .. }), "{msg}");
        assert!(
            msg.contains("test-x86_64.manifest.json") && msg.contains(needle),
            "{msg}"
        );
    }
    let e = inspect(
        &f.image,
        &InspectOptions {
            manifest: ManifestSource::Path(d.path().join("gone.json")),
            verify: false,
        },
        &HostRunner,
    )
    .unwrap_err();
    assert!(e.to_string().contains("gone.json"), "{e}");
}

#[test]
fn a_schema_2_manifest_from_before_the_toolchain_field_is_still_read() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    let r = verify(&f.image);
    assert_eq!(
        r.manifest.as_ref().unwrap().rustc.as_deref(),
        Some("1.95.0 (59807616e 2026-04-14)")
    );
    // An older kiln wrote the same schema without `toolchain`: nothing else changes.
    edit_manifest(&f, |m| m.toolchain = None);
    let text = std::fs::read_to_string(&f.manifest_path).unwrap();
    assert!(!text.contains("toolchain"), "{text}");
    let r = verify(&f.image);
    assert!(r.ok(), "{r}");
    assert_eq!(r.manifest.as_ref().unwrap().rustc, None);
    let shown = r.to_string();
    assert!(
        shown.contains("agent       built by rustc ? (not recorded"),
        "{shown}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["manifest"]["rustc"].is_null());
}

#[test]
fn a_schema_2_manifest_from_before_the_suite_field_is_still_read() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    let text = std::fs::read_to_string(&f.manifest_path).unwrap();
    let old: String = text.lines().filter(|l| !l.contains("\"suite\"")).collect();
    std::fs::write(&f.manifest_path, old).unwrap();
    let r = verify(&f.image);
    assert!(
        r.ok() && r.manifest.as_ref().unwrap().suites.is_empty(),
        "{r}"
    );
    let listed = r.with_packages().to_string();
    assert!(listed.contains("packages    3\n"), "{listed}");
    assert!(listed.contains(", root)\n"), "{listed}");
}

#[test]
fn manifest_values_that_differ_are_mismatches() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    edit_manifest(&f, |m| {
        m.verity.root_hash = "00".repeat(32);
        m.kernel.cmdline.push_str(" quiet");
        m.disk.partitions[0].sha256 = "11".repeat(32);
        m.verity.salt = "22".repeat(32);
    });
    let r = verify(&f.image);
    assert_eq!(
        failed_names(&r),
        [
            "partition 1 (esp) sha256 vs manifest",
            "UKI command line vs manifest kernel.cmdline",
            "verity superblock vs manifest verity",
            "root hash vs manifest verity.root_hash",
        ]
    );
}

#[test]
fn manifest_names_and_dates() {
    for (image, manifest) in [
        ("out/qemu-x86_64.raw", "out/qemu-x86_64.manifest.json"),
        ("qemu-arm64.raw.zst", "qemu-arm64.manifest.json"),
        ("/x/y/qemu-arm64.qcow2", "/x/y/qemu-arm64.manifest.json"),
        ("a.vhd", "a.manifest.json"),
        ("a.gce.tar.gz", "a.manifest.json"),
        ("disk.img", "disk.manifest.json"),
        ("noext", "noext.manifest.json"),
    ] {
        assert_eq!(
            manifest_beside(Path::new(image)),
            Path::new(manifest),
            "{image}"
        );
    }
    assert_eq!(
        roothash_of("a kiln.roothash=ab roothash=cd"),
        Some("ab".into())
    );
    assert_eq!(roothash_of("roothash=cd quiet"), Some("cd".into()));
    assert_eq!(roothash_of("quiet kiln.roothash"), None);
    assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    assert_eq!(utc(-1), "1969-12-31 23:59:59 UTC");
}

#[test]
fn a_broken_esp_is_a_problem_not_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    let esp = partition(&f, "esp");
    // Wipe the boot sector's signature.
    flip_byte(&f.image, esp.offset + 510);
    let r = inspect(&f.image, &opts(true), &HostRunner).unwrap();
    assert!(r.esp.is_none() && r.uki.is_none());
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("partition 1 (esp)") && p.contains("55 AA")),
        "{:?}",
        r.problems
    );
    assert!(!r.ok());
    // Without a UKI there is no roothash= to compare with: a failed check.
    let c = check(&r, "root hash vs the UKI command line");
    assert!(matches!(c.outcome, Outcome::Failed { .. }), "{c}");
    // The verity tree itself is still verified.
    assert_ok(&r, "verity hash tree rebuilt");
}
