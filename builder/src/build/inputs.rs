//! Stages "fetch" and "unpack": everything the image is made of, verified in
//! the cache, then the root's packages unpacked into one tree with the
//! kernel and the stub taken aside for the UKI, and systemd-boot for the ESP.

use std::path::PathBuf;
use std::sync::Arc;

use super::error::read_file;
use super::recipe::Job;
use super::{sources, BuildError, Ui};
use crate::arch::Arch;
use crate::fetch::artifact::{fetch_artifacts, FetchedArtifact};
use crate::fetch::{Cache, FetchContext, Fetched, HttpDownloader};
use crate::lock::{LockedPackage, Lockfile, Role};
use crate::output::manifest::Toolchain;
use crate::profile::Profile;
use crate::tree::FileTree;
use crate::uki::parts::{self, KernelImage};
use crate::unpack::{self, Glob, InsertRules};

/// Stage "fetch": the build's inputs, read or verified in the cache.
#[derive(Debug)]
pub(super) struct Inputs {
    /// The agent binary.
    pub agent: Arc<[u8]>,
    /// The compilers that built it (for the manifest).
    pub toolchain: Toolchain,
    /// The profile file's bytes (the image's seed and the manifest hash them).
    pub profile_bytes: Vec<u8>,
    /// The lock file's bytes (for the manifest).
    pub lock_bytes: Vec<u8>,
    /// Every locked package of the arch: root, kernel and boot.
    pub packages: Vec<Fetched>,
    /// The profile's `[[artifact]]`s for the arch.
    pub artifacts: Vec<FetchedArtifact>,
}

/// Stage "unpack": the root as the packages make it.
#[derive(Debug)]
pub(super) struct Unpacked {
    /// Root and kernel packages in one tree, without /boot.
    pub root: FileTree,
    /// The profile's excludes and conflict winners, for every later insert.
    pub rules: InsertRules,
    /// What the UKI takes from the packages.
    pub parts: BootParts,
}

/// The boot pieces that come out of packages: the UKI's and the ESP's.
#[derive(Debug)]
pub(super) struct BootParts {
    /// The kernel, moved out of the root's /boot.
    pub kernel: KernelImage,
    /// systemd-stub from the boot package.
    pub stub: Arc<[u8]>,
    /// systemd-boot from the same package, for the ESP.
    pub systemd_boot: Arc<[u8]>,
}

/// Stage "fetch".
pub(super) fn fetch(job: &Job<'_>) -> Result<Inputs, BuildError> {
    let agent = job.opts.agent.read(job.arch)?;
    let packages = fetch_packages(job.profile, job.lock, job.arch, job.cache, job.ui)?;
    let artifacts = fetch_profile_artifacts(job.profile, job.arch, job.cache, job.ui)?;
    Ok(Inputs {
        agent: agent.bytes,
        toolchain: agent.toolchain,
        profile_bytes: read_file(&job.profile.path)?,
        lock_bytes: read_file(&job.lock.path)?,
        packages,
        artifacts,
    })
}

/// Every locked package of `arch`, verified in the cache (downloaded if missing).
pub(super) fn fetch_packages(
    profile: &Profile,
    lock: &Lockfile,
    arch: Arch,
    cache: &Cache,
    ui: &Ui,
) -> Result<Vec<Fetched>, BuildError> {
    let sources = sources()?;
    let downloader = HttpDownloader::new();
    let pb = ui.bytes(&format!("fetch {arch}"));
    let ctx = FetchContext {
        cache,
        sources: &sources,
        downloader: &downloader,
        profile: &profile.path,
        progress: &pb,
    };
    let r = crate::fetch::fetch_all(&ctx, lock, arch, None);
    pb.finish_and_clear();
    Ok(r?)
}

/// The profile's `[[artifact]]`s for `arch`, verified in the cache
/// (downloaded or copied in if missing).
pub(super) fn fetch_profile_artifacts(
    profile: &Profile,
    arch: Arch,
    cache: &Cache,
    ui: &Ui,
) -> Result<Vec<FetchedArtifact>, BuildError> {
    let downloader = HttpDownloader::new();
    let pb = ui.bytes(&format!("artifacts {arch}"));
    let r = fetch_artifacts(cache, &downloader, profile.artifacts_for(arch), arch, &pb);
    pb.finish_and_clear();
    Ok(r?)
}

/// Stage "unpack".
pub(super) fn unpack(job: &Job<'_>, inputs: &Inputs) -> Result<Unpacked, BuildError> {
    let arch = job.arch;
    let items: Vec<(String, PathBuf)> = inputs
        .packages
        .iter()
        .filter(|f| f.package.role != Role::Boot)
        .map(|f| (f.package.name.clone(), f.path.clone()))
        .collect();
    // The bar counts every locked .deb, the boot stub's too (read below), so it ends
    // on the number the build summary, the manifest and `kiln inspect` show.
    let pb = job
        .ui
        .steps(inputs.packages.len() as u64, &format!("unpack {arch}"));
    let debs = unpack::read_debs_parallel(&items, &pb)?;
    let epoch = job.opts.epoch.unwrap_or_else(|| newest_mtime(&debs));
    let mut root = FileTree::new(epoch);
    let rules = InsertRules {
        exclude: job
            .profile
            .packages
            .exclude_paths
            .iter()
            .map(|g| Glob::new(g))
            .collect(),
        prefer: job.profile.packages.prefer.clone(),
    };
    for deb in debs {
        unpack::insert_deb(&mut root, deb, &rules)?;
    }
    let kernel_packages: Vec<&LockedPackage> = inputs
        .packages
        .iter()
        .filter(|f| f.package.role == Role::Kernel)
        .map(|f| &f.package)
        .collect();
    let kernel = parts::take_kernel(&mut root, &kernel_packages)?;
    let stub_package = inputs
        .packages
        .iter()
        .find(|f| f.package.role == Role::Boot)
        .ok_or_else(|| {
            BuildError::Missing(format!(
                "{}: no boot stub package in the lock for {arch}",
                job.lock.path.display()
            ))
        })?;
    let stub_deb = unpack::read_deb(&stub_package.path, &stub_package.package.name)?;
    pb.inc(1);
    pb.finish_and_clear();
    let stub = parts::stub(&stub_deb, arch)?;
    let systemd_boot = parts::systemd_boot(&stub_deb, arch)?;
    Ok(Unpacked {
        root,
        rules,
        parts: BootParts {
            kernel,
            stub,
            systemd_boot,
        },
    })
}

/// The newest file time in the packages: the default clamp, so the same
/// lock always gives the same timestamps.
fn newest_mtime(debs: &[unpack::Deb]) -> i64 {
    debs.iter()
        .flat_map(|d| d.entries.iter().map(|(_, n)| n.mtime))
        .max()
        .unwrap_or(0)
}
