//! One arch's build as a recipe: the named stages in data-flow order, each
//! returning the typed artifact the later ones take, each timed under its
//! step name (the names `BuildReport::timings` and the benchmarks use).

use super::inputs::Unpacked;
use super::publish::Built;
use super::report::Clock;
use super::{boot, image, inputs, publish, tree};
use super::{BuildError, BuildOptions, BuildReport, Ui};
use crate::arch::Arch;
use crate::fetch::Cache;
use crate::lock::Lockfile;
use crate::output::Staging;
use crate::profile::Profile;

/// What every stage of one arch's build may read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Job<'a> {
    /// The profile.
    pub profile: &'a Profile,
    /// Its lock, checked current.
    pub lock: &'a Lockfile,
    /// The arch being built.
    pub arch: Arch,
    /// The package cache.
    pub cache: &'a Cache,
    /// Build settings beyond the profile.
    pub opts: &'a BuildOptions,
    /// Progress display.
    pub ui: &'a Ui,
}

impl Job<'_> {
    /// File name stem of every output (`<profile>-<arch>`).
    pub fn stem(&self) -> String {
        format!("{}-{}", self.profile.name, self.arch)
    }

    /// File name of the raw image.
    pub fn image_name(&self) -> String {
        format!("{}.raw", self.stem())
    }
}

/// Builds one arch's image and publishes it with its outputs and manifest.
pub(super) fn build_arch(job: &Job<'_>) -> Result<BuildReport, BuildError> {
    let mut clock = Clock::new(job.arch);
    let fetched = clock.step("fetch", || inputs::fetch(job))?;
    let Unpacked { root, rules, parts } = clock.step("unpack", || inputs::unpack(job, &fetched))?;
    let root = clock.step("tree", || tree::finish(job, &fetched, &parts, root, &rules))?;
    let epoch = root.tree.epoch();
    let initramfs = clock.step("initramfs", || boot::initramfs(&fetched, &root))?;
    // Planning is timed with "ext4": the root's real size can send the disk
    // back to be planned again.
    let staging = Staging::new(&job.opts.out, &job.stem())?;
    let seed = image::seed(job, &fetched);
    let layout = image::plan(job, &seed, &root)?;
    let raw = staging.path(&job.image_name());
    let mut root_fs = clock.step("ext4", || {
        image::write_root(job, &seed, layout, &root, &raw)
    })?;
    let verity = clock.step("verity", || image::hash_root(&mut root_fs, &seed))?;
    let uki = clock.step("uki", || boot::uki(job, &parts, &root, &initramfs, &verity))?;
    let disk = clock.step("esp+gpt", || {
        image::write_esp(job, &seed, root_fs, &uki, &parts, epoch)
    })?;
    let digests = clock.step("sha256", || publish::digests(&disk))?;
    let outputs = clock.step("formats", || {
        // The update bundle is made of these, not of the raw disk.
        let bundle = publish::BundleParts {
            inputs: &fetched,
            verity: &verity,
            uki: &uki,
        };
        publish::formats(job, &seed, &disk, &digests, &staging, epoch, &bundle)
    })?;
    let built = Built {
        inputs: &fetched,
        parts: &parts,
        root: &root,
        initramfs: &initramfs,
        verity: &verity,
        uki: &uki,
        disk: &disk,
        digests: &digests,
        outputs: &outputs,
    };
    let published = clock.step("manifest", || {
        publish::publish(job, staging, &outputs, &publish::manifest(job, &built))
    })?;
    Ok(BuildReport {
        arch: job.arch,
        image: published.image,
        manifest: published.manifest,
        image_size: disk.file_size,
        root: disk.root,
        timings: clock.into_timings(),
        // Every locked .deb of this arch, as the manifest lists them.
        packages: fetched.packages.len(),
        files: published.files,
    })
}
