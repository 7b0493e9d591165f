//! Drives a build: `kiln lock`, `kiln fetch` and `kiln build`. A build runs
//! [`recipe`]'s named stages for each arch, with progress, timings and an
//! atomic publish at the end; each stage's own work lives in the module of
//! its step (`lock`, `fetch`, `unpack`, `tree`, `uki`, `plan`, `fs`, `disk`,
//! `output`), and the files here only call them in order.

mod agent;
mod boot;
mod error;
mod image;
mod inputs;
mod publish;
mod recipe;
mod report;
mod tree;
mod ui;

use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::fetch::Cache;
use crate::lock::{self, Lockfile, Sources};
use crate::profile::Profile;
use crate::runner::HostRunner;

pub use agent::{toolchain_of, AgentSource, ToolchainError};
pub use error::BuildError;
pub use report::BuildReport;
pub use ui::Ui;

/// Build settings beyond the profile.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Arches to build.
    pub arches: Vec<Arch>,
    /// Output folder.
    pub out: PathBuf,
    /// Clamp timestamp; `None` derives it from the locked packages.
    pub epoch: Option<i64>,
    /// Where the agent binaries are.
    pub agent: AgentSource,
    /// Output formats instead of the profile's `[output] formats`.
    pub formats: Option<Vec<crate::profile::Format>>,
    /// The key that signs the `update` format's bundles (`--update-key`).
    pub update_key: Option<crate::keygen::UpdateKey>,
}

/// The apt sources (`KILN_APT_SOURCES`, else the host's).
fn sources() -> Result<Sources, BuildError> {
    Ok(Sources::from_host()?)
}

/// `kiln lock`: returns a sentence saying what happened.
pub fn lock(profile: &Profile, cache: &Cache, update: bool, ui: &Ui) -> Result<String, BuildError> {
    let sp = ui.spinner(format!("resolving {}", profile.name));
    let (lock, action) =
        lock::lock_profile(profile, cache.root(), &sources()?, &HostRunner, update)?;
    sp.finish_and_clear();
    let counts: Vec<String> = profile
        .arches
        .iter()
        .map(|a| format!("{} packages for {a}", lock.packages_for(*a, None).count()))
        .collect();
    let line = match action {
        lock::LockAction::Kept => format!(
            "{}: up to date ({}); use --update to re-resolve",
            lock.path.display(),
            counts.join(", ")
        ),
        lock::LockAction::Written { reason, changes } => {
            let changed = if changes.is_empty() {
                String::new()
            } else {
                format!("\n{changes}")
            };
            format!(
                "{}: written ({}; {reason}){changed}",
                lock.path.display(),
                counts.join(", ")
            )
        }
    };
    // Which packages came from a suite other than the first base suite.
    let suites = lock::suite_summary(&lock, &profile.debian);
    Ok(format!("{line}\n{suites}").trim_end().to_string())
}

fn read_lock(profile: &Profile) -> Result<Lockfile, BuildError> {
    let path = lock::lock_path(&profile.path);
    if !path.exists() {
        return Err(BuildError::Missing(format!(
            "{}: no lock for this profile; run `kiln lock {}` first",
            path.display(),
            profile.path.display()
        )));
    }
    let lock = Lockfile::read(&path)?;
    lock::check_current(&lock, profile)?;
    Ok(lock)
}

/// What `kiln fetch` verified in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FetchSummary {
    /// Locked packages, summed over the arches.
    pub packages: usize,
    /// `[[artifact]]` files, summed over the arches.
    pub artifacts: usize,
}

/// `kiln fetch`: every locked package and every artifact of `arches`
/// verified in the cache.
pub fn fetch(
    profile: &Profile,
    arches: &[Arch],
    cache: &Cache,
    ui: &Ui,
) -> Result<FetchSummary, BuildError> {
    let lock = read_lock(profile)?;
    let mut n = FetchSummary::default();
    for &arch in arches {
        n.packages += inputs::fetch_packages(profile, &lock, arch, cache, ui)?.len();
        n.artifacts += inputs::fetch_profile_artifacts(profile, arch, cache, ui)?.len();
    }
    Ok(n)
}

/// `kiln build`: one image per arch, published atomically.
pub fn build(
    profile: &Profile,
    cache: &Cache,
    opts: &BuildOptions,
    ui: &Ui,
) -> Result<Vec<BuildReport>, BuildError> {
    // A missing or untrusted signing key fails here, before the first download.
    publish::check_update_key(profile, opts)?;
    let lock = read_lock(profile)?;
    let mut out = Vec::new();
    for &arch in &opts.arches {
        out.push(recipe::build_arch(&recipe::Job {
            profile,
            lock: &lock,
            arch,
            cache,
            opts,
            ui,
        })?);
    }
    Ok(out)
}

/// The arch of an image, from its root partition's type GUID.
pub fn image_arch(image: &Path) -> Result<Arch, BuildError> {
    let table = crate::disk::read_gpt(image)?;
    for arch in Arch::ALL {
        let want = arch.root_type_guid();
        if table.partitions.iter().any(|p| p.type_guid == want) {
            return Ok(arch);
        }
    }
    Err(BuildError::Missing(format!(
        "{}: no x86_64 or arm64 root partition in its GPT; pass --arch",
        image.display()
    )))
}
