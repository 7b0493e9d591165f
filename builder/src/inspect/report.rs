//! The report's data: plain values, serialisable for `--json`.

use std::path::PathBuf;

use serde::{Serialize, Serializer};

use super::{Check, FatEntry, FatKind, GptReport, SlotReport, Verification};
use crate::arch::Arch;
use crate::plan::{guid_text, Guid};
use crate::profile::Format;

/// The footer of a fixed VHD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VhdFooter {
    /// Disk type (2: fixed).
    pub disk_type: u32,
    /// Size of the disk the footer describes.
    pub current_size: u64,
    /// The VHD's unique id.
    #[serde(with = "guid_text")]
    pub unique_id: Guid,
    /// Checksum as stored.
    pub checksum: u32,
    /// Checksum computed from the footer's bytes.
    pub computed_checksum: u32,
}

impl VhdFooter {
    /// The footer's checksum as a check.
    pub fn check(&self) -> Check {
        Check::compare(
            "VHD footer checksum",
            ("footer says", format!("{:#010x}", self.checksum)),
            ("computed", format!("{:#010x}", self.computed_checksum)),
        )
    }
}

/// The ESP's FAT volume and its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspReport {
    /// GPT entry number.
    pub partition: u32,
    /// FAT12/16/32.
    pub fat: FatKind,
    /// Volume label.
    pub label: Option<String>,
    /// Volume serial (`XXXX-XXXX`, as `blkid` shows it).
    pub serial: Option<String>,
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Where systemd-boot is (`EFI/BOOT/BOOTX64.EFI`), if it is there.
    pub systemd_boot: Option<String>,
    /// The text of `loader/loader.conf`, if it is there.
    pub loader_conf: Option<String>,
    /// Every file and folder.
    pub files: Vec<FatEntry>,
}

/// One section of the UKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionInfo {
    /// Section name.
    pub name: String,
    /// Bytes of content (virtual size).
    pub size: u64,
}

/// The Unified Kernel Image found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UkiReport {
    /// Path on the ESP.
    pub path: String,
    /// File size.
    pub size: u64,
    /// PE machine (`x86_64`, `arm64` or the hex value).
    pub machine: String,
    /// Sections in header order.
    pub sections: Vec<SectionInfo>,
    /// `.uname`: the kernel release.
    pub kernel_release: Option<String>,
    /// `PRETTY_NAME` from `.osrel`.
    pub os: Option<String>,
    /// `IMAGE_VERSION` from `.osrel`: the image version systemd-boot orders
    /// its entries by.
    pub version: Option<String>,
    /// `.cmdline`: the kernel command line.
    pub cmdline: Option<String>,
    /// The root hash on the command line: `kiln.roothash=` (what kiln's
    /// init reads), else `roothash=` (what systemd's generator reads).
    pub roothash: Option<String>,
}

/// The dm-verity superblock at the start of the hash partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VeritySuperblock {
    /// GPT entry number of the hash partition.
    pub partition: u32,
    /// Format version (1).
    pub version: u32,
    /// Hash type (1: normal).
    pub hash_type: u32,
    /// Superblock UUID.
    #[serde(with = "guid_text")]
    pub uuid: Guid,
    /// Hash algorithm.
    pub algorithm: String,
    /// Data block size.
    pub data_block_size: u32,
    /// Hash block size.
    pub hash_block_size: u32,
    /// Data blocks covered.
    pub data_blocks: u64,
    /// Salt, hex.
    pub salt: String,
}

/// The few ext4 superblock fields worth showing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ext4Superblock {
    /// GPT entry number.
    pub partition: u32,
    /// Volume label.
    pub label: String,
    /// Filesystem UUID.
    #[serde(with = "guid_text")]
    pub uuid: Guid,
    /// Block size.
    pub block_size: u64,
    /// Blocks.
    pub blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Filesystem size in bytes.
    pub size: u64,
    /// Inodes.
    pub inodes: u32,
    /// Free inodes.
    pub free_inodes: u32,
}

/// One package, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageLine {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Debian arch.
    pub arch: String,
    /// `root`, `kernel` or `boot`.
    pub role: String,
    /// The suite it came from (empty in manifests of older kilns).
    pub suite: String,
}

/// What the manifest says about how the image was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestSummary {
    /// The manifest file.
    pub path: PathBuf,
    /// kiln version that built the image.
    pub kiln_version: String,
    /// The Rust compiler that built the agent (`None`: a manifest of an older kiln,
    /// which did not record it).
    pub rustc: Option<String>,
    /// Image (profile) name.
    pub name: String,
    /// Image version (`None`: a manifest of a kiln before A/B updates).
    pub version: Option<String>,
    /// Arch.
    pub arch: String,
    /// Profile file name.
    pub profile: String,
    /// Build epoch (seconds since 1970).
    pub epoch: i64,
    /// Kernel package.
    pub kernel_package: String,
    /// Kernel package version.
    pub kernel_version: String,
    /// Kernel release.
    pub kernel_release: String,
    /// Every package.
    pub packages: Vec<PackageLine>,
    /// How many packages each suite gave, most first (then by name); empty
    /// when the manifest does not record suites.
    pub suites: Vec<SuiteCount>,
}

/// How many of the image's packages one Debian suite gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SuiteCount {
    /// The suite.
    pub suite: String,
    /// Its packages (root, kernel and boot).
    pub packages: usize,
}

/// Everything `kiln inspect` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The file inspected.
    pub image: PathBuf,
    /// Its format.
    #[serde(serialize_with = "format_name")]
    pub format: Format,
    /// Size of the file.
    pub file_size: u64,
    /// Size of the raw disk inside it.
    pub disk_size: u64,
    /// The VHD footer, for VHD input.
    pub vhd: Option<VhdFooter>,
    /// The partition table.
    pub gpt: GptReport,
    /// The arch, from the root partition's type.
    pub arch: Option<Arch>,
    /// The ESP.
    pub esp: Option<EspReport>,
    /// The UKI on the ESP that is verified: a fresh image's only one
    /// (`EFI/Linux/kiln-a.efi`); with several, a good one before a bad one,
    /// slot A's before slot B's.
    pub uki: Option<UkiReport>,
    /// Any other UKIs under `EFI/Linux` (a node's disk after an update).
    pub other_ukis: Vec<UkiReport>,
    /// The root slots, A first.
    pub slots: Vec<SlotReport>,
    /// The slot whose partitions' GUIDs match [`Report::uki`]'s root hash
    /// (else the first holding a root): the one whose superblocks are shown
    /// and whose hash tree `--verify` rebuilds.
    #[serde(serialize_with = "super::slots::letter_opt")]
    pub active_slot: Option<kiln_contract::boot::Slot>,
    /// The verity superblock of the active slot.
    pub verity: Option<VeritySuperblock>,
    /// The root filesystem's superblock in the active slot.
    pub root_fs: Option<Ext4Superblock>,
    /// The manifest, if one was read.
    pub manifest: Option<ManifestSummary>,
    /// Why no manifest was read.
    pub manifest_note: Option<String>,
    /// The checks, with `--verify`.
    pub verification: Option<Verification>,
    /// How the image was read (conversions).
    pub notes: Vec<String>,
    /// Parts of the image that could not be read, each naming the part.
    pub problems: Vec<String>,
}

fn format_name<S: Serializer>(f: &Format, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.name())
}

impl Report {
    /// Whether everything could be read and, with `--verify`, every check passed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.verification.as_ref().is_none_or(|v| v.passed())
    }
}
