//! `<image>.manifest.json`: what went into an image and what came out, so a
//! user can check what they run. Deterministic: no build host paths, no
//! wall-clock times (only the build epoch).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::fetch::Fetched;
use crate::fs::ext4::Ext4Summary;
use crate::fs::verity::{self, VerityParams, VerityTree};
use crate::output::formats::Outputs;
use crate::plan::{DiskPlan, Guid, PlannedPartition};
use crate::profile::{Profile, VerityCheck};
use crate::tree::kmod::ModuleSelection;
use crate::uki::initramfs::Initramfs;
use crate::uki::parts::KernelImage;

// The digests moved to their own module; these keep the paths other
// programs (the QEMU test harness) and `kiln inspect` use.
pub use super::digest::{sha256_file, sha256_hex, sha256_image_and_ranges, sha256_range};

/// The manifest schema version.
pub const SCHEMA: u32 = 2;

/// The whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Schema version.
    pub schema: u32,
    /// The kiln version that built the image.
    pub kiln_version: String,
    /// The compilers that built the image's only code compiled from this repository,
    /// the agent (`usr/bin/kiln-agent`, also the initramfs' `/init`). Added to schema 2
    /// without a new schema number: older manifests lack it (`None` when read), and
    /// older readers skip it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<Toolchain>,
    /// Image name (profile `name`).
    pub name: String,
    /// Image version (profile `version`, "0" when it has none): os-release's
    /// `IMAGE_VERSION`, and what updates compare. Added to schema 2 without a
    /// new schema number: manifests of kilns before A/B updates lack it (`None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Target arch.
    pub arch: String,
    /// Timestamps in the image are clamped to this (seconds since the epoch).
    pub epoch: i64,
    /// The profile file.
    pub profile: Input,
    /// The lock file.
    pub lock: Input,
    /// Kernel identity and command line.
    pub kernel: Kernel,
    /// Every package in the image (and the kernel and stub packages).
    pub packages: Vec<Package>,
    /// Kernel modules shipped.
    pub modules: Modules,
    /// The partition table.
    pub disk: Disk,
    /// The files kiln put on the ESP (systemd-boot, `loader/loader.conf`, the
    /// UKI), each with its path on the ESP as `file`. Empty in manifests of
    /// kilns before A/B updates.
    #[serde(default)]
    pub esp: Vec<FileDigest>,
    /// The root filesystem.
    pub root: Root,
    /// The dm-verity hash tree over the root filesystem.
    pub verity: Verity,
    /// Files produced, by kind (`image`, ...), and their digests.
    pub outputs: BTreeMap<String, FileDigest>,
    /// Digests of components inside the image.
    pub components: BTreeMap<String, FileDigest>,
    /// Built with `kiln build --debug-shell` (root logs in on the consoles
    /// without a password): such an image is for debugging, never for production.
    #[serde(default)]
    pub debug_shell: bool,
}

/// The compilers that built the agent, as its ELF `.comment` section names them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Toolchain {
    /// The Rust compiler, as `rustc --version` prints it without the `rustc ` word:
    /// `1.95.0 (59807616e 2026-04-14)`.
    pub rustc: String,
    /// Every line of the section: rustc's, the C compiler's (the TLS library has C and
    /// assembly) and the linker's, in the file's order.
    pub comment: Vec<String>,
}

/// An input file, named without host paths.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Input {
    /// File name.
    pub file: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
}

/// Kernel facts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kernel {
    /// Package name.
    pub package: String,
    /// Package version.
    pub version: String,
    /// `uname -r`.
    pub release: String,
    /// The command line baked into the UKI.
    pub cmdline: String,
}

/// One package.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Debian arch (`all` possible).
    pub arch: String,
    /// `root`, `kernel` or `boot`.
    pub role: String,
    /// The Debian suite the lock took it from (`trixie`, `trixie-security`,
    /// an extra suite such as `forky`). Added to schema 2 without a new
    /// schema number: older manifests lack it (empty when read).
    #[serde(default)]
    pub suite: String,
    /// SHA-256 of the .deb.
    pub sha256: String,
}

/// Modules shipped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Modules {
    /// Sets selected by the profile.
    pub sets: Vec<String>,
    /// Modules in the root.
    pub root: Vec<String>,
    /// Modules in the initramfs, in load order.
    pub initramfs: Vec<String>,
}

/// The partition table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Disk {
    /// Disk size in bytes.
    pub size: u64,
    /// SHA-256 of the whole raw disk (whatever format it is published in).
    pub sha256: String,
    /// GPT disk GUID.
    pub guid: String,
    /// Partitions in table order.
    pub partitions: Vec<Partition>,
}

/// One partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Partition {
    /// Role (`esp`, `root`, ...).
    pub role: String,
    /// GPT partition name.
    pub label: String,
    /// Type GUID.
    pub type_guid: String,
    /// Unique partition GUID (PARTUUID).
    pub uuid: String,
    /// Byte offset in the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the partition's bytes.
    pub sha256: String,
    /// The root slot (`a`, `b`) of a root or root-verity partition; absent for
    /// the ESP, and in manifests of kilns before A/B updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

impl Partition {
    /// The manifest entry of a planned partition whose bytes hash to `sha256`.
    pub fn of(p: &PlannedPartition, sha256: String) -> Partition {
        Partition {
            role: p.role.to_string(),
            label: p.name.clone(),
            type_guid: p.type_guid.to_string(),
            uuid: p.unique_guid.to_string(),
            offset: p.offset(),
            size: p.size(),
            sha256,
            slot: p.slot.map(|s| s.letter().to_string()),
        }
    }
}

/// The root filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Root {
    /// Filesystem type.
    pub fs: String,
    /// Filesystem size in bytes.
    pub size: u64,
    /// Bytes of file data.
    pub data_bytes: u64,
    /// Inodes used.
    pub inodes: u64,
}

/// The dm-verity hash tree (`veritysetup format` v1 geometry).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verity {
    /// Hash algorithm (`sha256`).
    pub algorithm: String,
    /// Data block size in bytes.
    pub data_block_size: u64,
    /// Hash block size in bytes.
    pub hash_block_size: u64,
    /// Data blocks covered (the root filesystem, from the start of its partition).
    pub data_blocks: u64,
    /// Bytes of the hash device (superblock and every level).
    pub hash_size: u64,
    /// Salt, hex.
    pub salt: String,
    /// Superblock UUID.
    pub uuid: String,
    /// Root hash, hex (also `roothash=` on the kernel command line).
    pub root_hash: String,
    /// `full` or `on-read`: what the node checks at boot.
    pub check: String,
}

/// A file's size and digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    /// File name: no folder for output files, the path inside the image for
    /// what is in it (`EFI/Linux/kiln-a.efi`, `usr/bin/kiln-agent`).
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256.
    pub sha256: String,
}

impl Manifest {
    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Reads a manifest file.
    pub fn read(path: &Path) -> Result<Manifest, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a kiln manifest: {e}", path.display()))
    }
}

/// What the build's stages produced, as the manifest records it.
#[derive(Debug, Clone, Copy)]
pub struct ImageFacts<'a> {
    /// The profile built (its name, module sets, verity check and extras).
    pub profile: &'a Profile,
    /// The profile file's bytes.
    pub profile_bytes: &'a [u8],
    /// The lock file.
    pub lock_path: &'a Path,
    /// The lock file's bytes.
    pub lock_bytes: &'a [u8],
    /// Target arch.
    pub arch: Arch,
    /// The clamp timestamp.
    pub epoch: i64,
    /// Every package fetched for the image (root, kernel and boot).
    pub packages: &'a [Fetched],
    /// The kernel the UKI boots.
    pub kernel: &'a KernelImage,
    /// The UKI's command line.
    pub cmdline: &'a str,
    /// The kernel modules in the root and the initramfs.
    pub modules: &'a ModuleSelection,
    /// `[[artifact]]` files placed in the root, by artifact name.
    pub artifacts: &'a [(String, FileDigest)],
    /// The agent binary.
    pub agent: &'a [u8],
    /// The compilers that built it.
    pub toolchain: &'a Toolchain,
    /// The initramfs.
    pub initramfs: &'a Initramfs,
    /// The UKI.
    pub uki: &'a [u8],
    /// The disk's final plan (root GUIDs from the root hash).
    pub plan: &'a DiskPlan,
    /// The files on the ESP, by path.
    pub esp_files: &'a [FileDigest],
    /// The root filesystem.
    pub root: &'a Ext4Summary,
    /// The root's hash tree.
    pub verity: &'a VerityTree,
    /// Its salt and UUID.
    pub verity_params: &'a VerityParams,
    /// Digests of the raw disk and its partitions.
    pub disk: &'a super::digest::DiskDigests,
    /// The output files.
    pub outputs: &'a Outputs,
}

impl Manifest {
    /// The manifest of the image `facts` describe.
    pub fn assemble(facts: &ImageFacts<'_>) -> Manifest {
        let f = facts;
        let profile = f.profile;
        Manifest {
            debug_shell: profile.extras.debug_shell,
            schema: SCHEMA,
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            toolchain: Some(f.toolchain.clone()),
            name: profile.name.clone(),
            version: Some(profile.version.to_string()),
            arch: f.arch.name().to_string(),
            epoch: f.epoch,
            profile: Input::of(&profile.path, f.profile_bytes),
            lock: Input::of(f.lock_path, f.lock_bytes),
            kernel: Kernel {
                package: f.kernel.package.clone(),
                version: f.kernel.version.clone(),
                release: f.kernel.release.clone(),
                cmdline: f.cmdline.to_string(),
            },
            packages: f
                .packages
                .iter()
                .map(|p| Package {
                    name: p.package.name.clone(),
                    version: p.package.version.clone(),
                    arch: p.package.arch.clone(),
                    role: p.package.role.name().to_string(),
                    suite: p.package.suite.clone(),
                    sha256: p.package.sha256.clone(),
                })
                .collect(),
            modules: Modules {
                sets: profile.kernel.module_sets.clone(),
                root: f.modules.all.iter().map(|m| module_name(&m.path)).collect(),
                initramfs: f
                    .modules
                    .boot
                    .iter()
                    .map(|m| module_name(&m.path))
                    .collect(),
            },
            disk: Disk {
                size: f.plan.total_size,
                sha256: f.disk.image.clone(),
                guid: f.plan.disk_guid.to_string(),
                partitions: f
                    .plan
                    .partitions
                    .iter()
                    .zip(&f.disk.partitions)
                    .map(|(p, sha256)| Partition::of(p, sha256.clone()))
                    .collect(),
            },
            esp: f.esp_files.to_vec(),
            root: Root {
                fs: "ext4".into(),
                size: f.root.size,
                data_bytes: f.root.data_bytes,
                inodes: f.root.inodes,
            },
            verity: Verity {
                algorithm: "sha256".into(),
                data_block_size: verity::BLOCK,
                hash_block_size: verity::BLOCK,
                data_blocks: f.verity.geometry.data_blocks,
                hash_size: f.verity.hash_device.len() as u64,
                salt: hex::encode(f.verity_params.salt),
                uuid: Guid::from_bytes(f.verity_params.uuid).to_string(),
                root_hash: hex::encode(f.verity.root_hash),
                check: match profile.disk.verity_check {
                    VerityCheck::Full => "full".into(),
                    VerityCheck::OnRead => "on-read".into(),
                },
            },
            outputs: f
                .outputs
                .files
                .iter()
                .map(|o| (o.key.clone(), o.digest.clone()))
                .collect(),
            components: components(f),
        }
    }
}

impl Input {
    /// The entry of the file at `path` whose bytes are `bytes`: its name
    /// only, so no build host path ends up in the manifest.
    fn of(path: &Path, bytes: &[u8]) -> Input {
        Input {
            file: path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: sha256_hex(bytes),
        }
    }
}

/// A module's name from its tree path (`.../virtio_blk.ko` or, compressed as
/// trixie ships them, `.../virtio_blk.ko.xz` → `virtio_blk`).
fn module_name(path: &str) -> String {
    crate::tree::kmod::plain_module_path(crate::tree::file_name(path))
        .trim_end_matches(".ko")
        .to_string()
}

/// The digests of what is inside the image: the boot pieces, the agent and
/// each placed artifact.
fn components(f: &ImageFacts<'_>) -> BTreeMap<String, FileDigest> {
    let digest = |file: String, bytes: &[u8]| FileDigest {
        file,
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    };
    // The UKI's entry names where it is on the ESP (the digest is of the same bytes).
    let uki_path = f
        .esp_files
        .iter()
        .find(|e| e.file.starts_with(kiln_contract::boot::UKI_DIR))
        .map_or_else(|| "UKI".to_string(), |e| e.file.clone());
    [
        ("uki".to_string(), digest(uki_path, f.uki)),
        (
            "initramfs".to_string(),
            digest("initrd (.initrd section)".into(), &f.initramfs.cpio),
        ),
        (
            "agent".to_string(),
            digest("usr/bin/kiln-agent".into(), f.agent),
        ),
        (
            "kernel".to_string(),
            digest(format!("vmlinuz-{}", f.kernel.release), &f.kernel.vmlinuz),
        ),
    ]
    .into_iter()
    .chain(
        f.artifacts
            .iter()
            .map(|(name, d)| (format!("artifact:{name}"), d.clone())),
    )
    .collect()
}

#[cfg(test)]
mod tests {
    use super::module_name;

    #[test]
    fn module_names_drop_the_suffix_plain_or_compressed() {
        for path in [
            "usr/lib/modules/6.1.0-40-amd64/kernel/fs/overlayfs/overlay.ko",
            "usr/lib/modules/6.12.118+deb13-amd64/kernel/fs/overlayfs/overlay.ko.xz",
            "usr/lib/modules/7.2.0-1-amd64/kernel/fs/overlayfs/overlay.ko.zst",
        ] {
            assert_eq!(module_name(path), "overlay", "{path}");
        }
        assert_eq!(module_name("kernel/x/crc32c-intel.ko.xz"), "crc32c-intel");
    }
}
