//! A small but complete kiln image for the `kiln inspect` tests, made with
//! the library's own writers the way the build makes one: an ext4 root in
//! slot A, its dm-verity tree, slot A's PARTUUIDs from the root hash, an
//! empty slot B, a FAT ESP with systemd-boot (a tiny stub standing in),
//! `loader.conf` and a UKI (the tiny stub plus real sections) with
//! `kiln.roothash=` on its command line at `EFI/Linux/kiln-a.efi`, and a
//! schema-2 manifest next to it.
//!
//! Shared by the unit tests and `tests/inspect_cli.rs` (which re-exports the
//! library's modules at its root so the `crate::` paths below resolve there
//! too).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_contract::le::{put_u16, put_u32};

use crate::arch::Arch;
use crate::fs::{ext4, fat, verity};
use crate::output::manifest::{self, Manifest};
use crate::plan::{plan_disk, Guid, PartitionRole, PlanInput};
use crate::tree::{FileTree, Node};

/// The build time of every fixture.
pub const EPOCH: i64 = 1_700_000_000;
/// The fixture's verity salt.
pub const SALT: [u8; 32] = [0x5a; 32];
/// The fixture's verity superblock UUID (textual byte order).
pub const VERITY_UUID: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x46, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];
/// The ext4 UUID (textual byte order, as `blkid` shows it).
pub const ROOT_UUID: [u8; 16] = [
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x49, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
];
/// The disk's size: small, because the tests hash it often in debug builds
/// (the ESP, two slots of 16 MiB and their 1 MiB trees, and 2 MiB after them).
pub const DISK_SIZE: u64 = 40 << 20;
/// The image version, in the manifest and the UKI's os-release.
pub const VERSION: &str = "1.2.3";
/// Where the UKI is on the ESP.
pub const UKI_PATH: &str = "EFI/Linux/kiln-a.efi";
/// The ESP's volume serial.
pub const ESP_SERIAL: u32 = 0x1234_abcd;
/// The kernel release in `.uname`.
pub const RELEASE: &str = "6.1.0-99-test";

/// A built fixture.
pub struct Fixture {
    /// The raw image.
    pub image: PathBuf,
    /// Its manifest (beside it, named as kiln names it).
    pub manifest_path: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// The root hash, hex.
    pub root_hash: String,
    /// The UKI's bytes.
    pub uki: Vec<u8>,
}

/// A minimal PE32+ EFI application with one `.text` section and room in
/// its headers for the UKI's section headers: enough for `uki::assemble`.
pub fn tiny_stub(arch: Arch) -> Vec<u8> {
    let mut b = vec![0u8; 0x600];
    b[0..2].copy_from_slice(b"MZ");
    put_u32(&mut b, 0x3c, 0x80);
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    let coff = 0x84;
    let machine = match arch {
        Arch::X86_64 => 0x8664,
        Arch::Arm64 => 0xaa64,
    };
    put_u16(&mut b, coff, machine);
    put_u16(&mut b, coff + 2, 1); // one section
    let opt_size = 112 + 16 * 8;
    put_u16(&mut b, coff + 16, opt_size as u16);
    put_u16(&mut b, coff + 18, 0x0022); // executable, large-address aware
    let opt = coff + 20;
    put_u16(&mut b, opt, 0x20b); // PE32+
    put_u32(&mut b, opt + 4, 0x200); // SizeOfCode
    put_u32(&mut b, opt + 16, 0x1000); // entry point
    put_u32(&mut b, opt + 20, 0x1000); // BaseOfCode
    put_u32(&mut b, opt + 32, 0x1000); // SectionAlignment
    put_u32(&mut b, opt + 36, 0x200); // FileAlignment
    put_u32(&mut b, opt + 56, 0x2000); // SizeOfImage
    put_u32(&mut b, opt + 60, 0x400); // SizeOfHeaders
    put_u16(&mut b, opt + 68, 10); // EFI application
    put_u32(&mut b, opt + 108, 16); // data directories
    let s = opt + opt_size;
    b[s..s + 8].copy_from_slice(b".text\0\0\0");
    put_u32(&mut b, s + 8, 0x10);
    put_u32(&mut b, s + 12, 0x1000);
    put_u32(&mut b, s + 16, 0x200);
    put_u32(&mut b, s + 20, 0x400);
    put_u32(&mut b, s + 36, 0x6000_0020);
    b[0x400..0x410].copy_from_slice(b"\xc3 tiny stub....!");
    b
}

/// The root filesystem's content.
fn root_tree() -> FileTree {
    let mut t = FileTree::new(EPOCH);
    let osrel =
        format!("PRETTY_NAME=\"Kiln Test Linux 1\"\nID=kilntest\nIMAGE_VERSION={VERSION}\n")
            .into_bytes();
    t.insert(
        "usr/lib/os-release",
        Node::file(osrel, 0o644, EPOCH, "test"),
    )
    .unwrap();
    // A file across many blocks (the 16 MiB filesystem already needs two
    // tree levels).
    let big: Vec<u8> = (0..600_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    t.insert("usr/bin/tool", Node::file(big, 0o755, EPOCH, "test"))
        .unwrap();
    t.insert(
        "etc/hostname",
        Node::file(b"kiln\n".to_vec(), 0o644, EPOCH, "test"),
    )
    .unwrap();
    t
}

fn sha256_hex(b: &[u8]) -> String {
    manifest::sha256_hex(b)
}

/// One fixture per arch, built once per test process and kept in memory:
/// debug builds hash slowly, and every test wants its own copy to damage.
struct Template {
    image: Vec<u8>,
    manifest: Manifest,
    root_hash: String,
    uki: Vec<u8>,
}

static TEMPLATES: std::sync::Mutex<Vec<(Arch, std::sync::Arc<Template>)>> =
    std::sync::Mutex::new(Vec::new());

fn template(arch: Arch) -> std::sync::Arc<Template> {
    let mut all = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = all.iter().find(|(a, _)| *a == arch) {
        return t.clone();
    }
    let d = tempfile::tempdir().unwrap();
    let f = build_fresh(d.path(), arch);
    let t = std::sync::Arc::new(Template {
        image: std::fs::read(&f.image).unwrap(),
        manifest: f.manifest,
        root_hash: f.root_hash,
        uki: f.uki,
    });
    all.push((arch, t.clone()));
    t
}

/// Writes `<dir>/test-<arch>.raw` (sparse) and `<dir>/test-<arch>.manifest.json`.
pub fn build(dir: &Path, arch: Arch) -> Fixture {
    use std::os::unix::fs::FileExt;
    let t = template(arch);
    let image = dir.join(format!("test-{arch}.raw"));
    let file = std::fs::File::create(&image).unwrap();
    for (i, block) in t.image.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, i as u64 * 4096).unwrap();
        }
    }
    file.set_len(t.image.len() as u64).unwrap();
    let manifest_path = dir.join(format!("test-{arch}.manifest.json"));
    std::fs::write(&manifest_path, t.manifest.to_json()).unwrap();
    Fixture {
        image,
        manifest_path,
        manifest: t.manifest.clone(),
        root_hash: t.root_hash.clone(),
        uki: t.uki.clone(),
    }
}

/// Builds the fixture from scratch into `dir`.
fn build_fresh(dir: &Path, arch: Arch) -> Fixture {
    let image_path = dir.join(format!("test-{arch}.raw"));
    let tree = root_tree();
    let root_size = ext4::estimate_size(&tree);
    let plan = plan_disk(&PlanInput {
        arch,
        disk_size: DISK_SIZE,
        esp_size: 3 << 20,
        root_size,
        // The smallest slots that hold the root keep the disk small.
        slot_size: Some(root_size),
        var_min_size: 0,
        seed: [7; 32],
    })
    .unwrap();
    let mut image = crate::disk::create_image(&image_path, &plan).unwrap();
    let summary = {
        let mut w = image.window(PartitionRole::Root).unwrap();
        ext4::write(
            &tree,
            root_size,
            &ext4::Ext4Options {
                uuid: ROOT_UUID,
                label: format!("root-{arch}"),
                epoch: EPOCH,
            },
            &mut w,
        )
        .unwrap()
    };
    let root_off = image.window(PartitionRole::Root).unwrap().offset();
    let mut data = vec![0u8; summary.size as usize];
    std::os::unix::fs::FileExt::read_exact_at(image.file(), &mut data, root_off).unwrap();
    let params = verity::VerityParams {
        salt: SALT,
        uuid: VERITY_UUID,
    };
    let tree_v = verity::build(&mut &data[..], summary.size, &params).unwrap();
    image
        .window(PartitionRole::RootVerity)
        .unwrap()
        .write_at(0, &tree_v.hash_device)
        .unwrap();
    image.apply_root_hash(&tree_v.root_hash).unwrap();
    let root_hash = hex::encode(tree_v.root_hash);

    let cmdline = format!("console=ttyS0,115200 kiln.roothash={root_hash} kiln.var_min=64M");
    let osrel = tree.read("usr/lib/os-release").unwrap();
    let initrd = b"070701 pretend initramfs".repeat(100);
    let linux = b"MZ pretend kernel".repeat(5000);
    let uki = crate::uki::assemble(
        &tiny_stub(arch),
        &crate::uki::UkiParts {
            arch,
            osrel: &osrel,
            cmdline: cmdline.as_bytes(),
            uname: RELEASE.as_bytes(),
            initrd: &initrd,
            linux: &linux,
        },
    )
    .unwrap();
    let kiln_toml = b"# node settings\n".to_vec();
    let systemd_boot = tiny_stub(arch);
    let boot_path = arch.efi_boot_path();
    let loader = kiln_contract::boot::LOADER_CONF_TEXT.as_bytes();
    let files = [
        fat::EspFile::new(&boot_path, &systemd_boot),
        fat::EspFile::new(kiln_contract::boot::LOADER_CONF, loader),
        fat::EspFile::new(UKI_PATH, &uki),
        fat::EspFile::new("kiln.toml", &kiln_toml),
    ];
    {
        let mut w = image.window(PartitionRole::Esp).unwrap();
        let opts = fat::FatOptions::new("KILN-ESP", ESP_SERIAL, EPOCH);
        fat::build_fat(&files, w.len(), &opts, &mut w).unwrap();
    }
    // What the build records: kiln's files, not the user's kiln.toml.
    let esp_files = files[..3]
        .iter()
        .map(|f| manifest::FileDigest {
            file: f.path.to_string(),
            size: f.data.len() as u64,
            sha256: sha256_hex(f.data),
        })
        .collect();
    let plan = image.plan().clone();
    image.finish().unwrap();

    let ranges: Vec<(u64, u64)> = plan
        .partitions
        .iter()
        .map(|p| (p.offset(), p.size()))
        .collect();
    let (disk_sha, part_shas) = manifest::sha256_image_and_ranges(&image_path, &ranges).unwrap();
    let m = Manifest {
        debug_shell: false,
        schema: manifest::SCHEMA,
        kiln_version: "0.1.0".into(),
        toolchain: Some(manifest::Toolchain {
            rustc: "1.95.0 (59807616e 2026-04-14)".into(),
            comment: vec![
                "Linker: LLD 22.1.2".into(),
                "rustc version 1.95.0 (59807616e 2026-04-14)".into(),
            ],
        }),
        name: "test".into(),
        version: Some(VERSION.into()),
        arch: arch.name().into(),
        epoch: EPOCH,
        profile: manifest::Input {
            file: "test.toml".into(),
            sha256: sha256_hex(b"profile"),
        },
        lock: manifest::Input {
            file: "test.lock".into(),
            sha256: sha256_hex(b"lock"),
        },
        kernel: manifest::Kernel {
            package: format!("linux-image-{RELEASE}"),
            version: "6.1.999-1".into(),
            release: RELEASE.into(),
            cmdline: cmdline.clone(),
        },
        packages: ["base-files", "systemd", "zlib1g"]
            .iter()
            .enumerate()
            .map(|(i, n)| manifest::Package {
                name: (*n).into(),
                version: format!("1.{i}-1"),
                arch: arch.deb_arch().into(),
                role: "root".into(),
                // One package from an extra suite, as a [packages.from] pin gives.
                suite: if *n == "zlib1g" { "forky" } else { "bookworm" }.into(),
                sha256: sha256_hex(n.as_bytes()),
            })
            .collect(),
        modules: manifest::Modules {
            sets: vec![],
            root: vec![],
            initramfs: vec![],
        },
        disk: manifest::Disk {
            size: plan.total_size,
            sha256: disk_sha.clone(),
            guid: plan.disk_guid.to_string(),
            partitions: plan
                .partitions
                .iter()
                .zip(part_shas)
                .map(|(p, sha256)| manifest::Partition::of(p, sha256))
                .collect(),
        },
        esp: esp_files,
        root: manifest::Root {
            fs: "ext4".into(),
            size: summary.size,
            data_bytes: summary.data_bytes,
            inodes: summary.inodes,
        },
        verity: manifest::Verity {
            algorithm: "sha256".into(),
            data_block_size: verity::BLOCK,
            hash_block_size: verity::BLOCK,
            data_blocks: tree_v.geometry.data_blocks,
            hash_size: tree_v.hash_device.len() as u64,
            salt: hex::encode(SALT),
            uuid: Guid::from_bytes(VERITY_UUID).to_string(),
            root_hash: root_hash.clone(),
            check: "full".into(),
        },
        outputs: BTreeMap::from([(
            "raw".to_string(),
            manifest::FileDigest {
                file: format!("test-{arch}.raw"),
                size: plan.total_size,
                sha256: disk_sha,
            },
        )]),
        components: BTreeMap::new(),
    };
    let manifest_path = dir.join(format!("test-{arch}.manifest.json"));
    std::fs::write(&manifest_path, m.to_json()).unwrap();
    Fixture {
        image: image_path,
        manifest_path,
        manifest: m,
        root_hash,
        uki,
    }
}

/// Rewrites the manifest of a fixture after `edit`.
pub fn edit_manifest(f: &Fixture, edit: impl FnOnce(&mut Manifest)) {
    let mut m = f.manifest.clone();
    edit(&mut m);
    std::fs::write(&f.manifest_path, m.to_json()).unwrap();
}

/// Flips one byte of a file.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).unwrap();
}
