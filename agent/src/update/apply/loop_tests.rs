//! `update apply` on a real block device: a disk image with the two-slot layout made by
//! `sgdisk`, attached with `losetup`, a bundle of a real ext4 root whose tree
//! `veritysetup format` made, applied through [`RealApply`] (positioned writes and
//! fsync on the loop device, the ESP a folder). Then the referees: `sgdisk` reads the
//! new table, `veritysetup verify` and `e2fsck` check slot B's root, and slot A is
//! byte for byte what it was. Skipped (with the reason) only where loop devices are not
//! available.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_contract::boot::Slot;
use kiln_contract::bundle::{self, BundleFacts, PartDigest};
use kiln_contract::gpt::types;
use kiln_contract::signing::SecretKey;
use kiln_contract::verity::hex;
use sha2::{Digest, Sha256};

use super::real::RealApply;
use super::verify::fake_pe;
use super::*;
use crate::update::slot::{hash_guids, root_type, running_arch, verity_type};

const MIB: u64 = 1 << 20;
/// Partition sizes: ESP, and each slot's root and verity.
const ESP: u64 = 4 * MIB;
const SLOT: u64 = 64 * MIB;
const VERITY: u64 = MIB;
/// The root file system in the bundle.
const ROOT_FS: u64 = 48 * MIB;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device, detached when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Attaches `file`, or says why loop devices cannot be used here.
fn attach(file: &Path) -> Result<Loop, String> {
    if !Path::new("/dev/loop-control").exists() {
        return Err("/dev/loop-control does not exist".into());
    }
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(file)
        .output()
        .map_err(|e| format!("losetup: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "losetup --find --show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Loop(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// The partition table as `sgdisk -i N` shows partition N: (name, unique GUID, attrs).
fn sgdisk_info(image: &Path, n: u32) -> (String, String, String) {
    let text = run(Command::new("sgdisk").arg(format!("-i{n}")).arg(image));
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (
        field("Partition name:").trim_matches('\'').to_string(),
        field("Partition unique GUID:").to_ascii_lowercase(),
        field("Attribute flags:"),
    )
}

#[test]
fn applies_a_bundle_to_a_loop_device_and_the_referees_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let arch = running_arch();
    let hash_a = [0x3cu8; 32];
    let (ra, va) = hash_guids(&hash_a);

    // The disk: sgdisk lays out ESP, slot A (running) and slot B (empty, as built).
    let image = d("disk.img");
    let size = MIB + ESP + 2 * (SLOT + VERITY) + MIB;
    fs::File::create(&image).unwrap().set_len(size).unwrap();
    let mut sg = Command::new("sgdisk");
    sg.arg("-o");
    let parts = [
        (1, ESP, types::ESP.to_string(), "esp".to_string(), None, "0"),
        (
            2,
            SLOT,
            root_type(arch).to_string(),
            Slot::A.root_label(arch),
            Some(ra),
            "60",
        ),
        (
            3,
            VERITY,
            verity_type(arch).to_string(),
            Slot::A.verity_label(arch),
            Some(va),
            "60",
        ),
        (
            4,
            SLOT,
            root_type(arch).to_string(),
            "_empty".into(),
            None,
            "60,63",
        ),
        (
            5,
            VERITY,
            verity_type(arch).to_string(),
            "_empty".into(),
            None,
            "60,63",
        ),
    ];
    for (n, bytes, t, name, guid, attrs) in &parts {
        sg.arg(format!("-n{n}:0:+{}K", bytes / 1024))
            .arg(format!("-t{n}:{t}"))
            .arg(format!("-c{n}:{name}"));
        if let Some(g) = guid {
            sg.arg(format!("-u{n}:{g}"));
        }
        for bit in attrs.split(',').filter(|b| *b != "0") {
            sg.arg(format!("-A{n}:set:{bit}"));
        }
    }
    run(sg.arg(&image));
    let start_of = |n: u32| -> u64 {
        let text = run(Command::new("sgdisk").arg(format!("-i{n}")).arg(&image));
        let first: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("First sector:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        first * 512
    };
    // Slot A holds something recognisable; it must come out unchanged.
    let slot_a = start_of(2);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
        f.write_all_at(&vec![0xA5; (SLOT + VERITY) as usize], slot_a)
            .unwrap();
    }
    let slot_a_digest = |image: &Path| {
        let bytes = fs::read(image).unwrap();
        Sha256::digest(&bytes[slot_a as usize..(slot_a + SLOT + VERITY) as usize])
    };
    let before_a = slot_a_digest(&image);

    // The bundle: an ext4 root, veritysetup's tree, a UKI naming its hash.
    fs::create_dir(d("tree")).unwrap();
    fs::write(d("tree/os-release"), "IMAGE_VERSION=2.0\n").unwrap();
    fs::write(d("tree/big"), crate::verity_tree::test_data(2048)).unwrap();
    let root_img = d("root.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(d("tree"))
        .arg(&root_img)
        .arg(format!("{}K", ROOT_FS / 1024)));
    let verity_img = d("verity.img");
    let out = run(Command::new("veritysetup")
        .args(["format", "--salt", &"5a".repeat(32)])
        .arg(&root_img)
        .arg(&verity_img));
    let root_hex = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim()
        .to_string();
    let root = fs::read(&root_img).unwrap();
    let verity = fs::read(&verity_img).unwrap();
    let cmdline = format!("console=ttyS0 kiln.roothash={root_hex}");
    let uki = fake_pe(&[
        (".osrel", b"ID=debian\nIMAGE_VERSION=2.0\n"),
        (".cmdline", cmdline.as_bytes()),
        (".linux", &[0x90; 300_000]),
    ]);
    let key = SecretKey::from_seed([4; 32]);
    let digest = |b: &[u8]| PartDigest {
        size: b.len() as u64,
        sha256: hex(&Sha256::digest(b)),
    };
    let m = bundle::plan(
        BundleFacts {
            image: "homelab".into(),
            arch: arch.into(),
            version: "2.0".into(),
            root_hash: root_hex.clone(),
            kiln_version: "0.1.0".into(),
            lock_digest: "ab".repeat(32),
        },
        [digest(&root), digest(&verity), digest(&uki)],
    )
    .unwrap();
    let mut file = bundle::encode_header(&m, &key).unwrap();
    for (p, b) in m.parts.iter().zip([&root, &verity, &uki]) {
        file.resize(p.offset as usize, 0);
        file.extend_from_slice(b);
    }
    fs::write(d("homelab.update"), &file).unwrap();

    // The node: keys, agent.toml, command line, state, and an ESP with slot A's UKI.
    fs::create_dir_all(d("keys")).unwrap();
    fs::write(
        d("keys").join(key.public().id().file_name()),
        key.public().to_text(),
    )
    .unwrap();
    fs::write(
        d("agent.toml"),
        "[update]\nimage = \"homelab\"\nversion = \"1.0\"\n",
    )
    .unwrap();
    fs::write(d("cmdline"), format!("kiln.roothash={}\n", hex(&hash_a))).unwrap();
    fs::create_dir_all(d("esp/EFI/Linux")).unwrap();
    let uki_a = fake_pe(&[(
        ".cmdline",
        format!("kiln.roothash={}", hex(&hash_a)).as_bytes(),
    )]);
    fs::write(d("esp/EFI/Linux/kiln-a.efi"), &uki_a).unwrap();
    let paths = Paths {
        keys_dir: d("keys").to_string_lossy().into_owned(),
        agent_toml: d("agent.toml").to_string_lossy().into_owned(),
        cmdline: d("cmdline").to_string_lossy().into_owned(),
        state_dir: d("state").to_string_lossy().into_owned(),
    };

    let lo = match attach(&image) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIPPED: loop devices are not available here: {why}");
            return;
        }
    };
    let mut sys = RealApply::new();
    sys.disks = Some(vec![lo.0.clone()]);
    sys.esp = Some(d("esp").to_string_lossy().into_owned());
    let opts = Options {
        source: d("homelab.update").to_string_lossy().into_owned(),
        reboot: false,
        allow_downgrade: false,
        force: false,
        tries: None,
    };
    let done = apply(&mut sys, &paths, &opts).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("loop device apply: {}", done.summary());
    drop(sys);
    drop(lo);

    // sgdisk reads the new table: slot B named, its GUIDs the root hash's halves,
    // read-only (bit 60) without no-auto; slot A as it was; the whole table valid.
    run(Command::new("sgdisk").arg("-v").arg(&image));
    let hash: [u8; 32] = {
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = u8::from_str_radix(&root_hex[2 * i..2 * i + 2], 16).unwrap();
        }
        h
    };
    let (rb, vb) = hash_guids(&hash);
    let (name, guid, attrs) = sgdisk_info(&image, 4);
    assert_eq!(name, Slot::B.root_label(arch));
    assert_eq!(guid, rb.to_string());
    assert_eq!(attrs, "1000000000000000");
    let (name, guid, _) = sgdisk_info(&image, 5);
    assert_eq!(name, Slot::B.verity_label(arch));
    assert_eq!(guid, vb.to_string());
    let (name, guid, _) = sgdisk_info(&image, 2);
    assert_eq!((name, guid), (Slot::A.root_label(arch), ra.to_string()));
    assert_eq!(slot_a_digest(&image), before_a, "slot A changed");

    // veritysetup and e2fsck check slot B's root as written.
    let bytes = fs::read(&image).unwrap();
    let (b_root, b_verity) = (start_of(4) as usize, start_of(5) as usize);
    fs::write(d("b-root"), &bytes[b_root..b_root + root.len()]).unwrap();
    fs::write(d("b-verity"), &bytes[b_verity..b_verity + verity.len()]).unwrap();
    run(Command::new("veritysetup")
        .arg("verify")
        .arg(d("b-root"))
        .arg(d("b-verity"))
        .arg(&root_hex));
    run(Command::new("e2fsck").args(["-fn"]).arg(d("b-root")));

    // The UKI is on trial; the state has the apply.
    let mut names: Vec<String> = fs::read_dir(d("esp/EFI/Linux"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["kiln-a.efi", "kiln-b+3.efi"]);
    assert_eq!(fs::read(d("esp/EFI/Linux/kiln-b+3.efi")).unwrap(), uki);
    let state = fs::read_to_string(d("state/state.json")).unwrap();
    assert!(state.contains("\"version\": \"2.0\""), "{state}");

    // The same bundle again is the version slot B now holds, not the running one: it is
    // rewritten. A changed byte in the root refuses it and leaves slot B empty.
    let lo = attach(&image).unwrap();
    let mut bad = file.clone();
    bad[m.parts[0].offset as usize + 12345] ^= 1;
    fs::write(d("bad.update"), &bad).unwrap();
    let mut sys = RealApply::new();
    sys.disks = Some(vec![lo.0.clone()]);
    sys.esp = Some(d("esp").to_string_lossy().into_owned());
    let e = apply(
        &mut sys,
        &paths,
        &Options {
            source: d("bad.update").to_string_lossy().into_owned(),
            ..opts.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("the bundle's root part has SHA-256"), "{e}");
    assert!(e.contains("slot b is left empty"), "{e}");
    drop(sys);
    drop(lo);
    assert_eq!(sgdisk_info(&image, 4).0, "_empty");
    assert_eq!(sgdisk_info(&image, 4).2, "9000000000000000");
    assert_eq!(slot_a_digest(&image), before_a, "slot A changed");
    run(Command::new("sgdisk").arg("-v").arg(&image));
}
