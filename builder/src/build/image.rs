//! The disk stages: plan the disk around the root (the ESP, root slot A that
//! the build fills and slot B that the first update fills), write the root's
//! ext4 into slot A ("ext4"), its hash tree ("verity"), then the ESP holding
//! systemd-boot and slot A's UKI, and the final GPT ("esp+gpt").

use std::io::BufReader;
use std::ops::Range;
use std::path::{Path, PathBuf};

use kiln_contract::boot::{self, Slot, UkiName};

use super::boot::Uki;
use super::error::io_err;
use super::inputs::{BootParts, Inputs};
use super::recipe::Job;
use super::tree::RootTree;
use super::BuildError;
use crate::disk::ImageFile;
use crate::fs::ext4::{self, Ext4Summary};
use crate::fs::fat;
use crate::fs::verity::{self, VerityParams, VerityTree};
use crate::output::manifest::{sha256_hex, FileDigest};
use crate::plan::esp::{check_esp, EspNeeds};
use crate::plan::{DiskPlan, ImageSeed, PartitionRole, PlanInput};

/// The disk plan and the root size it was made for.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// Bytes planned for the root filesystem.
    pub root_size: u64,
    /// Where everything goes.
    pub plan: DiskPlan,
}

/// Stage "ext4": the image file with its root filesystem written.
#[derive(Debug)]
pub(super) struct RootFs {
    /// The open image.
    pub image: ImageFile,
    /// The root filesystem.
    pub summary: Ext4Summary,
}

/// Stage "verity": the root's hash tree, on disk and in the GPT.
#[derive(Debug)]
pub(super) struct RootVerity {
    /// The tree, with the root hash.
    pub tree: VerityTree,
    /// Its salt and UUID.
    pub params: VerityParams,
}

/// Stage "esp+gpt": the finished raw disk, closed.
#[derive(Debug)]
pub(super) struct Disk {
    /// The raw image in the staging folder.
    pub path: PathBuf,
    /// Its final plan (root GUIDs from the root hash).
    pub plan: DiskPlan,
    /// Its written blocks, for the sparse output formats.
    pub mapped: Vec<Range<u64>>,
    /// The image file's size.
    pub file_size: u64,
    /// The root filesystem.
    pub root: Ext4Summary,
    /// The files kiln put on the ESP, by path, with their digests.
    pub esp_files: Vec<FileDigest>,
}

/// The image's seed: every identifier on the disk is derived from it.
pub(super) fn seed(job: &Job<'_>, inputs: &Inputs) -> ImageSeed {
    ImageSeed::derive(
        &inputs.profile_bytes,
        &job.profile.extras,
        job.lock,
        job.arch,
    )
}

/// Plans the disk for the root's estimated size.
pub(super) fn plan(job: &Job<'_>, seed: &ImageSeed, root: &RootTree) -> Result<Layout, BuildError> {
    plan_for(job, seed, ext4::estimate_size(&root.tree))
}

/// Plans the disk for a root filesystem of `root_size` bytes.
fn plan_for(job: &Job<'_>, seed: &ImageSeed, root_size: u64) -> Result<Layout, BuildError> {
    let plan = crate::plan::plan_disk(&PlanInput {
        arch: job.arch,
        disk_size: job.profile.disk.size,
        esp_size: job.profile.disk.esp_size,
        root_size,
        slot_size: job.profile.update.slot_size,
        var_min_size: job.profile.disk.var_min_size,
        seed: seed.bytes(),
    })?;
    Ok(Layout { root_size, plan })
}

/// Stage "ext4": creates the image at `path` and writes the root into slot A.
/// An estimate that proves too small grows by a tenth and the disk is
/// planned again, up to the whole disk.
pub(super) fn write_root(
    job: &Job<'_>,
    seed: &ImageSeed,
    mut layout: Layout,
    root: &RootTree,
    path: &Path,
) -> Result<RootFs, BuildError> {
    let opts = ext4::Ext4Options {
        uuid: seed.root_fs_uuid(),
        label: format!("root-{}", job.arch),
        epoch: root.tree.epoch(),
    };
    loop {
        let image = crate::disk::create_image(path, &layout.plan)?;
        let mut window = image.window(PartitionRole::Root)?;
        let root_size = layout.root_size;
        match ext4::write(&root.tree, root_size, &opts, &mut window) {
            Ok(summary) => return Ok(RootFs { image, summary }),
            Err(e) if ext4::is_out_of_space(&e) && root_size < job.profile.disk.size => {
                tracing::debug!(root_size, "root estimate too small; growing");
                let grown = (root_size + root_size / 10).next_multiple_of(1 << 20);
                layout = plan_for(job, seed, grown)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Stage "verity": hashes the root as it is on disk, writes the hash tree
/// and sets the root partitions' GUIDs from the root hash.
pub(super) fn hash_root(root_fs: &mut RootFs, seed: &ImageSeed) -> Result<RootVerity, BuildError> {
    let params = VerityParams {
        salt: seed.verity_salt(),
        uuid: seed.verity_uuid(),
    };
    let size = root_fs.summary.size;
    let tree = {
        let window = root_fs.image.window(PartitionRole::Root)?;
        let mut reader = BufReader::with_capacity(1 << 20, window.reader(size));
        verity::build(&mut reader, size, &params)?
    };
    root_fs
        .image
        .window(PartitionRole::RootVerity)?
        .write_at(0, &tree.hash_device)?;
    root_fs.image.apply_root_hash(&tree.root_hash)?;
    Ok(RootVerity { tree, params })
}

/// Where slot A's UKI goes: `EFI/Linux/kiln-a.efi`, without a boot counter
/// because a fresh image's only version has nothing to fall back to.
pub(super) fn uki_path() -> String {
    let name = UkiName {
        slot: Slot::A,
        tries: None,
    };
    format!("{}/{}", boot::UKI_DIR, name.file_name())
}

/// Stage "esp+gpt": the ESP with systemd-boot as the removable-media boot
/// file (so no firmware boot entry is needed), its `loader.conf` and slot A's
/// UKI, then the image is flushed and closed. The ESP is checked first for
/// room for a second UKI, which the first update needs.
pub(super) fn write_esp(
    job: &Job<'_>,
    seed: &ImageSeed,
    root_fs: RootFs,
    uki: &Uki,
    parts: &BootParts,
    epoch: i64,
) -> Result<Disk, BuildError> {
    let RootFs { image, summary } = root_fs;
    let boot_path = job.arch.efi_boot_path();
    let uki_path = uki_path();
    let loader_conf = boot::LOADER_CONF_TEXT.as_bytes();
    let files = [
        fat::EspFile::new(&boot_path, &parts.systemd_boot),
        fat::EspFile::new(boot::LOADER_CONF, loader_conf),
        fat::EspFile::new(&uki_path, &uki.image),
    ];
    check_esp(
        job.profile.disk.esp_size,
        &EspNeeds {
            systemd_boot: parts.systemd_boot.len() as u64,
            loader_conf: loader_conf.len() as u64,
            uki: uki.image.len() as u64,
        },
    )?;
    {
        let mut opts = fat::FatOptions::new("KILN-ESP", seed.esp_serial(), epoch);
        let mut window = image.window(PartitionRole::Esp)?;
        opts.hidden_sectors = u32::try_from(window.partition().first_lba).unwrap_or(0);
        fat::build_fat(&files, window.len(), &opts, &mut window)?;
    }
    let esp_files = files
        .iter()
        .map(|f| FileDigest {
            file: f.path.to_string(),
            size: f.data.len() as u64,
            sha256: sha256_hex(f.data),
        })
        .collect();
    let plan = image.plan().clone();
    let mapped = image.mapped_blocks();
    let path = image.path().to_path_buf();
    image.finish()?;
    let file_size = std::fs::metadata(&path).map_err(io_err(&path))?.len();
    Ok(Disk {
        path,
        plan,
        mapped,
        file_size,
        root: summary,
        esp_files,
    })
}
