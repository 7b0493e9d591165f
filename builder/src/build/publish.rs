//! Stages "sha256", "formats" and "manifest": the raw disk's digests, every
//! output format, the manifest, then all of them published together out of
//! the staging folder.

use std::path::PathBuf;

use super::boot::Uki;
use super::error::io_err;
use super::image::{Disk, RootVerity};
use super::inputs::{BootParts, Inputs};
use super::recipe::Job;
use super::tree::RootTree;
use super::BuildError;
use crate::output::digest::{digest_disk, DiskDigests};
use crate::output::formats::{write_outputs, OutputJob, Outputs};
use crate::output::manifest::{ImageFacts, Manifest};
use crate::output::Staging;
use crate::plan::ImageSeed;
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
}

/// Stage "sha256": digests of the raw disk and of each partition.
pub(super) fn digests(disk: &Disk) -> Result<DiskDigests, BuildError> {
    digest_disk(&disk.path, &disk.plan).map_err(io_err(&disk.path))
}

/// Stage "formats": every wanted output format, in the staging folder.
pub(super) fn formats(
    job: &Job<'_>,
    seed: &ImageSeed,
    disk: &Disk,
    digests: &DiskDigests,
    staging: &Staging,
    epoch: i64,
) -> Result<Outputs, BuildError> {
    let formats = job
        .opts
        .formats
        .clone()
        .unwrap_or_else(|| job.profile.formats.clone());
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
    tracing::debug!(files = outputs.files.len(), "output formats written");
    Ok(outputs)
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
    let manifest = published.pop().unwrap_or_default();
    let image_name = job.image_name();
    let image = published
        .iter()
        .find(|p| p.file_name().is_some_and(|n| *n == *image_name))
        .or(published.first())
        .cloned()
        .unwrap_or_default();
    Ok(Published { image, manifest })
}
