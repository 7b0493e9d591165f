//! Stages "sha256", "formats" and "manifest": the raw disk's digests, every
//! output format (the update bundle among them), the manifest, then all of
//! them published together out of the staging folder.

use std::path::PathBuf;

use super::boot::Uki;
use super::error::io_err;
use super::image::{Disk, RootVerity};
use super::inputs::{BootParts, Inputs};
use super::recipe::Job;
use super::tree::RootTree;
use super::BuildError;
use kiln_contract::boot::Slot;
use kiln_contract::bundle::BundleFacts;
use kiln_contract::cmdline::format_root_hash;

use super::BuildOptions;
use crate::output::digest::{digest_disk, sha256_hex, DiskDigests};
use crate::output::formats::update::{self, BundleJob, UpdateError, UpdateSettings};
use crate::output::formats::{file_names, write_outputs, FormatError, Output, OutputJob, Outputs};
use crate::output::manifest::{ImageFacts, Manifest};
use crate::output::Staging;
use crate::plan::{ImageSeed, PartitionRole};
use crate::profile::{Format, Profile};
use crate::runner::HostRunner;
use crate::uki::initramfs::Initramfs;

/// The artifacts the manifest describes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Built<'a> {
    /// Stage "fetch".
    pub inputs: &'a Inputs,
    /// The kernel and stub of stage "unpack".
    pub parts: &'a BootParts,
    /// Stage "tree".
    pub root: &'a RootTree,
    /// Stage "initramfs".
    pub initramfs: &'a Initramfs,
    /// Stage "verity".
    pub verity: &'a RootVerity,
    /// Stage "uki".
    pub uki: &'a Uki,
    /// Stage "esp+gpt".
    pub disk: &'a Disk,
    /// Stage "sha256".
    pub digests: &'a DiskDigests,
    /// Stage "formats".
    pub outputs: &'a Outputs,
}

/// What was published.
#[derive(Debug)]
pub(super) struct Published {
    /// The raw image if it was published, else the first output.
    pub image: PathBuf,
    /// The manifest.
    pub manifest: PathBuf,
    /// Every published file (the manifest last) and its size.
    pub files: Vec<(PathBuf, u64)>,
}

/// Stage "sha256": digests of the raw disk and of each partition.
pub(super) fn digests(disk: &Disk) -> Result<DiskDigests, BuildError> {
    digest_disk(&disk.path, &disk.plan).map_err(io_err(&disk.path))
}

/// The pieces of the build the update bundle is made of, besides the raw disk.
#[derive(Debug, Clone, Copy)]
pub(super) struct BundleParts<'a> {
    /// Stage "fetch" (the lock's bytes).
    pub inputs: &'a Inputs,
    /// Stage "verity".
    pub verity: &'a RootVerity,
    /// Stage "uki".
    pub uki: &'a Uki,
}

/// The formats this build writes: `--format`, else the profile's.
fn wanted_formats(profile: &Profile, opts: &BuildOptions) -> Vec<Format> {
    opts.formats
        .clone()
        .unwrap_or_else(|| profile.formats.clone())
}

/// Before any work: when the update format is wanted, a signing key is given
/// and the profile trusts it.
pub(super) fn check_update_key(profile: &Profile, opts: &BuildOptions) -> Result<(), BuildError> {
    if !wanted_formats(profile, opts).contains(&Format::Update) {
        return Ok(());
    }
    let key = opts
        .update_key
        .as_ref()
        .map(|k| (k.path.as_path(), &k.secret));
    update::check_signer(&UpdateSettings::of(profile), key)
        .map_err(|e| BuildError::Format(e.into()))
}

/// Stage "formats": every wanted output format, in the staging folder.
pub(super) fn formats(
    job: &Job<'_>,
    seed: &ImageSeed,
    disk: &Disk,
    digests: &DiskDigests,
    staging: &Staging,
    epoch: i64,
    bundle: &BundleParts<'_>,
) -> Result<Outputs, BuildError> {
    let formats = wanted_formats(job.profile, job.opts);
    let outputs = write_outputs(&OutputJob {
        raw: &disk.path,
        dir: staging.dir(),
        stem: &job.stem(),
        formats: &formats,
        zstd_level: job.profile.zstd_level,
        mapped: &disk.mapped,
        epoch,
        seed: seed.bytes(),
        runner: &HostRunner,
        raw_sha256: Some(&digests.image),
        progress: None,
    })?;
    let mut outputs = outputs;
    if formats.contains(&Format::Update) {
        outputs
            .files
            .push(update_bundle(job, disk, staging, bundle)?);
    }
    tracing::debug!(files = outputs.files.len(), "output formats written");
    Ok(outputs)
}

/// `<stem>.update`: slot A's root filesystem as written into the raw disk, its
/// verity partition's bytes and the UKI, signed with `--update-key`.
fn update_bundle(
    job: &Job<'_>,
    disk: &Disk,
    staging: &Staging,
    bundle: &BundleParts<'_>,
) -> Result<Output, BuildError> {
    // check_update_key refused the build without a key; this is the same check.
    let key = job
        .opts
        .update_key
        .as_ref()
        .ok_or(FormatError::Update(UpdateError::NoKey))?;
    let root = disk
        .plan
        .slot_partition(PartitionRole::Root, Slot::A)
        .ok_or_else(|| BuildError::Missing("the disk plan has no slot A root partition".into()))?;
    let names = file_names(Format::Update, &job.stem());
    let out = staging.path(&names[0].1);
    let digest = update::write(&BundleJob {
        raw: &disk.path,
        // The filesystem's bytes: what the verity tree covers, not the whole slot.
        root: root.offset()..root.offset() + disk.root.size,
        verity: &bundle.verity.tree.hash_device,
        uki: &bundle.uki.image,
        facts: BundleFacts {
            image: job.profile.name.clone(),
            arch: job.arch.name().to_string(),
            version: job.profile.version.to_string(),
            root_hash: format_root_hash(&bundle.verity.tree.root_hash),
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            // The manifest's `lock.sha256`: the same lock, the same digest.
            lock_digest: sha256_hex(&bundle.inputs.lock_bytes),
        },
        key: &key.secret,
        out: &out,
    })?;
    Ok(Output {
        format: Format::Update,
        key: names[0].0.to_string(),
        digest,
    })
}

/// Stage "manifest": the manifest of everything built.
pub(super) fn manifest(job: &Job<'_>, built: &Built<'_>) -> Manifest {
    Manifest::assemble(&ImageFacts {
        profile: job.profile,
        profile_bytes: &built.inputs.profile_bytes,
        lock_path: &job.lock.path,
        lock_bytes: &built.inputs.lock_bytes,
        arch: job.arch,
        epoch: built.root.tree.epoch(),
        packages: &built.inputs.packages,
        kernel: &built.parts.kernel,
        cmdline: &built.uki.cmdline,
        modules: &built.root.modules,
        artifacts: &built.root.artifacts,
        agent: &built.inputs.agent,
        toolchain: &built.inputs.toolchain,
        initramfs: built.initramfs,
        uki: &built.uki.image,
        plan: &built.disk.plan,
        esp_files: &built.disk.esp_files,
        root: &built.disk.root,
        verity: &built.verity.tree,
        verity_params: &built.verity.params,
        disk: built.digests,
        outputs: built.outputs,
    })
}

/// Writes the manifest next to the outputs and publishes them all at once.
pub(super) fn publish(
    job: &Job<'_>,
    staging: Staging,
    outputs: &Outputs,
    manifest: &Manifest,
) -> Result<Published, BuildError> {
    let manifest_name = format!("{}.manifest.json", job.stem());
    let manifest_path = staging.path(&manifest_name);
    std::fs::write(&manifest_path, manifest.to_json()).map_err(io_err(&manifest_path))?;
    let mut names: Vec<&str> = outputs
        .files
        .iter()
        .map(|o| o.digest.file.as_str())
        .collect();
    names.push(&manifest_name);
    let mut published = staging.publish(&names)?;
    let files = published
        .iter()
        .map(|p| {
            (
                p.clone(),
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    let manifest = published.pop().unwrap_or_default();
    let image_name = job.image_name();
    let image = published
        .iter()
        .find(|p| p.file_name().is_some_and(|n| *n == *image_name))
        .or(published.first())
        .cloned()
        .unwrap_or_default();
    Ok(Published {
        image,
        manifest,
        files,
    })
}
