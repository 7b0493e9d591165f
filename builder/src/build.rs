//! Drives a build: the steps of the pipeline in order, for each arch, with
//! progress, timings and an atomic publish at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_contract::le;
use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::fetch::artifact::{fetch_artifacts, FetchedArtifact};
use crate::fetch::{Cache, FetchContext, Fetched, HttpDownloader};
use crate::fs::{cpio, ext4, fat, verity};
use crate::lock::{self, Lockfile, Role, Sources};
use crate::output::manifest::{self, sha256_hex, Manifest};
use crate::output::Staging;
use crate::plan::{Guid, PartitionRole, PlanInput};
use crate::profile::{format_size, Profile, VarFallback, VerityCheck};
use crate::runner::HostRunner;
use crate::tree::{self, FileTree, Kind, Node};
use crate::unpack::{self, Glob, InsertRules};

/// A build step failed; the message says which and why.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Lock problems (stale, unreadable, resolution).
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// Apt sources problems.
    #[error(transparent)]
    Sources(#[from] lock::SourcesError),
    /// Download or cache problems.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    /// A package could not be read or clashes.
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    /// Tree operations.
    #[error(transparent)]
    Tree(#[from] tree::TreeError),
    /// Overlays.
    #[error(transparent)]
    Overlay(#[from] tree::overlay::OverlayError),
    /// Users and groups.
    #[error(transparent)]
    Sysusers(#[from] tree::sysusers::SysusersError),
    /// Unit enablement.
    #[error(transparent)]
    Units(#[from] tree::units::UnitsError),
    /// Kernel modules.
    #[error(transparent)]
    Kmod(#[from] tree::kmod::KmodError),
    /// Disk layout.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// Disk writing.
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    /// Root filesystem.
    #[error(transparent)]
    Ext4(#[from] ext4::Ext4Error),
    /// ESP filesystem.
    #[error(transparent)]
    Fat(#[from] fat::FatError),
    /// Initramfs archive.
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
    /// Verity hash tree.
    #[error(transparent)]
    Verity(#[from] verity::VerityError),
    /// Output formats.
    #[error(transparent)]
    Format(#[from] crate::output::formats::FormatError),
    /// UKI assembly.
    #[error(transparent)]
    Uki(#[from] crate::uki::UkiError),
    /// Output staging.
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// Container images from `[[container_image]]`.
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    /// Fetching an `[[artifact]]`.
    #[error(transparent)]
    Artifact(#[from] crate::fetch::artifact::ArtifactError),
    /// Placing an `[[artifact]]` in the root.
    #[error(transparent)]
    Place(#[from] tree::artifact::PlaceError),
    /// `[cluster]` needs something the root lacks.
    #[error(transparent)]
    Cluster(#[from] tree::cluster::ClusterError),
    /// Something the packages should have provided is missing.
    #[error("{0}")]
    Missing(String),
    /// Any other I/O, with its path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Progress display: bars on a terminal, nothing when quiet or piped.
#[derive(Debug, Clone)]
pub struct Ui {
    multi: MultiProgress,
    quiet: bool,
}

impl Ui {
    /// A display; `quiet` hides everything.
    pub fn new(quiet: bool) -> Ui {
        let multi = MultiProgress::new();
        if quiet {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Ui { multi, quiet }
    }

    /// A byte-count bar.
    pub fn bytes(&self, msg: &str) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new(0));
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_message(msg.to_string());
        pb
    }

    /// A step counter bar.
    pub fn steps(&self, len: u64, msg: &str) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template("{msg:30!} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_message(msg.to_string());
        pb
    }

    /// A spinner for one step; finish it with [`ProgressBar::finish_and_clear`].
    pub fn spinner(&self, msg: String) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new_spinner());
        pb.set_message(msg);
        if !self.quiet {
            pb.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        pb
    }
}

/// Where the in-image agent binary for each arch comes from.
#[derive(Debug, Clone, Default)]
pub struct AgentSource {
    /// Explicit paths per arch (`KILN_AGENT_X86_64`, `KILN_AGENT_ARM64`).
    pub explicit: BTreeMap<Arch, PathBuf>,
}

impl AgentSource {
    /// Paths from the environment; the rest is searched next to the running binary.
    pub fn from_env() -> AgentSource {
        let mut explicit = BTreeMap::new();
        for arch in Arch::ALL {
            let var = format!("KILN_AGENT_{}", arch.name().to_uppercase());
            if let Some(p) = std::env::var_os(&var) {
                explicit.insert(arch, PathBuf::from(p));
            }
        }
        AgentSource { explicit }
    }

    /// Finds the agent for `arch`: the explicit path, else
    /// `<cargo target dir>/<musl triple>/agent/kiln-agent` above the running binary.
    pub fn locate(&self, arch: Arch) -> Result<PathBuf, BuildError> {
        if let Some(p) = self.explicit.get(&arch) {
            return if p.is_file() {
                Ok(p.clone())
            } else {
                Err(BuildError::Missing(format!(
                    "KILN_AGENT_{}={}: no such file",
                    arch.name().to_uppercase(),
                    p.display()
                )))
            };
        }
        let rel = Path::new(arch.musl_triple())
            .join("agent")
            .join("kiln-agent");
        let exe = std::env::current_exe().unwrap_or_default();
        let mut looked = Vec::new();
        for dir in exe.ancestors().skip(1) {
            let cand = dir.join(&rel);
            if cand.is_file() {
                return Ok(cand);
            }
            looked.push(cand);
            if looked.len() >= 4 {
                break;
            }
        }
        Err(BuildError::Missing(format!(
            "kiln-agent for {arch} not found (looked at {}); build it with `make agent` \
             (cargo build -p kiln-agent --profile agent --target {}) or set KILN_AGENT_{}",
            looked
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            arch.musl_triple(),
            arch.name().to_uppercase()
        )))
    }
}

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
}

/// What one arch's build produced, with timings for benchmarks.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// Arch.
    pub arch: Arch,
    /// The image.
    pub image: PathBuf,
    /// Its manifest.
    pub manifest: PathBuf,
    /// Image file size.
    pub image_size: u64,
    /// Root filesystem size and data bytes.
    pub root: ext4::Ext4Summary,
    /// Seconds per step, in order.
    pub timings: Vec<(String, f64)>,
    /// Packages in the root.
    pub packages: usize,
}

impl BuildReport {
    /// Total seconds.
    pub fn total_secs(&self) -> f64 {
        self.timings.iter().map(|(_, s)| s).sum()
    }
}

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({}, root {} of files in a {} ext4, {} packages) in {:.1} s",
            self.arch,
            self.image.display(),
            format_size(self.image_size),
            format_size(self.root.data_bytes),
            format_size(self.root.size),
            self.packages,
            self.total_secs()
        )
    }
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
    Ok(match action {
        lock::LockAction::Kept => format!(
            "{}: up to date ({}); use --update to re-resolve",
            lock.path.display(),
            counts.join(", ")
        ),
        lock::LockAction::Written(why) => format!(
            "{}: written ({}; {why})",
            lock.path.display(),
            counts.join(", ")
        ),
    })
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

fn fetch_arch(
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
fn fetch_arch_artifacts(
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
        n.packages += fetch_arch(profile, &lock, arch, cache, ui)?.len();
        n.artifacts += fetch_arch_artifacts(profile, arch, cache, ui)?.len();
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
    let lock = read_lock(profile)?;
    let mut out = Vec::new();
    for &arch in &opts.arches {
        out.push(build_arch(profile, &lock, arch, cache, opts, ui)?);
    }
    Ok(out)
}

/// Times steps for the report and logs each one.
struct Clock {
    arch: Arch,
    last: Instant,
    steps: Vec<(String, f64)>,
}

impl Clock {
    fn new(arch: Arch) -> Clock {
        Clock {
            arch,
            last: Instant::now(),
            steps: Vec::new(),
        }
    }

    fn lap(&mut self, step: &str) {
        let secs = self.last.elapsed().as_secs_f64();
        tracing::info!(arch = %self.arch, step, secs = format!("{secs:.2}"), "done");
        self.steps.push((step.to_string(), secs));
        self.last = Instant::now();
    }
}

/// Kernel pieces taken out of the kernel package.
struct KernelParts {
    release: String,
    vmlinuz: Arc<[u8]>,
    package: String,
    version: String,
}

/// Moves `boot/vmlinuz-*` out of the tree (it goes into the UKI, not the root)
/// and drops the rest of /boot (config, System.map).
fn take_kernel(tree: &mut FileTree, kernel_pkgs: &[&Fetched]) -> Result<KernelParts, BuildError> {
    let (path, release, origin) = tree
        .descendants("boot")
        .find_map(|(p, n)| {
            p.strip_prefix("boot/vmlinuz-")
                .map(|r| (p.clone(), r.to_string(), n.origin.clone()))
        })
        .ok_or_else(|| {
            BuildError::Missing(
                "no kernel image (boot/vmlinuz-*) in the locked kernel packages".into(),
            )
        })?;
    let image = kernel_pkgs
        .iter()
        .find(|f| origin == format!("pkg:{}", f.package.name))
        .ok_or_else(|| {
            BuildError::Missing(format!(
                "/{path} comes from {origin}, not from a locked kernel package"
            ))
        })?;
    let vmlinuz = tree.read(&path)?;
    tree.remove_subtree("boot");
    tree.insert("boot", Node::dir(0o755, tree.epoch(), "kiln:kernel"))?;
    Ok(KernelParts {
        release,
        vmlinuz,
        package: image.package.name.clone(),
        version: image.package.version.clone(),
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

fn seed_for(profile_bytes: &[u8], lock: &Lockfile, arch: Arch) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kiln-disk-seed-v1\0");
    h.update(Sha256::digest(profile_bytes));
    h.update(lock.inputs.as_bytes());
    for p in lock.packages_for(arch, None) {
        h.update(p.sha256.as_bytes());
    }
    h.update(arch.name().as_bytes());
    h.finalize().into()
}

/// The profile's bytes plus the build's command line settings, so an image
/// built with `--debug-shell` or `--append-cmdline` gets its own GUIDs.
fn seed_input(profile_bytes: &[u8], profile: &Profile) -> Vec<u8> {
    let mut v = profile_bytes.to_vec();
    let extras = &profile.extras;
    if extras.debug_shell || !extras.append_cmdline.is_empty() {
        v.extend_from_slice(b"\0kiln-build-extras\0");
        v.extend_from_slice(
            format!("{}\0{:?}", extras.debug_shell, extras.append_cmdline).as_bytes(),
        );
    }
    v
}

/// The UKI's command line: consoles, the verity root hash and the node's
/// boot policy from the profile, then the profile's own words.
fn kernel_cmdline(profile: &Profile, arch: Arch, root_hash: &[u8; 32]) -> String {
    let mut words: Vec<String> = match arch {
        Arch::X86_64 => vec!["console=tty0".into(), "console=ttyS0,115200".into()],
        Arch::Arm64 => vec!["console=tty0".into(), "console=ttyAMA0,115200".into()],
    };
    words.push(format!("kiln.roothash={}", hex::encode(root_hash)));
    if profile.disk.verity_check == VerityCheck::OnRead {
        words.push("kiln.verity_check=on-read".into());
    }
    words.push(format!("kiln.var_min={}", profile.disk.var_min_size));
    if profile.disk.var_fallback == VarFallback::Tmpfs {
        words.push("kiln.var_fallback=tmpfs".into());
    }
    words.extend(profile.extra_cmdline());
    words.join(" ")
}

/// Salt and superblock UUID of the root's hash tree. The seed already is a
/// digest of everything that decides the root's content (profile, lock and
/// every package's sha256), so the salt is fixed by the content and differs
/// between images.
fn verity_params(seed: &[u8; 32]) -> verity::VerityParams {
    let mut h = Sha256::new();
    h.update(b"kiln-verity-salt-v1\0");
    h.update(seed);
    verity::VerityParams {
        salt: h.finalize().into(),
        uuid: Guid::derive(seed, "root-verity-superblock").to_gpt_bytes(),
    }
}

/// Reads `len` bytes of an image file from `offset`, for hashing in place.
struct RangeReader<'a> {
    file: &'a std::fs::File,
    pos: u64,
    end: u64,
}

impl std::io::Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The initramfs: the agent as /init, a console node, and the boot modules
/// with their load order.
fn initramfs_tree(
    root: &FileTree,
    agent: &Arc<[u8]>,
    modules: &tree::kmod::ModuleSelection,
    epoch: i64,
) -> Result<FileTree, BuildError> {
    let mut t = FileTree::new(epoch);
    let o = "kiln:initramfs";
    for d in ["dev", "proc", "sys", "sysroot", "run", "tmp", "etc/kiln"] {
        t.insert(d, Node::dir(0o755, epoch, o))?;
    }
    t.insert(
        "dev/console",
        Node {
            kind: Kind::CharDev { major: 5, minor: 1 },
            ..Node::file(Vec::new(), 0o600, epoch, o)
        },
    )?;
    t.insert("init", Node::file(agent.clone(), 0o755, epoch, o))?;
    let mut load = String::from("# Kernel modules the init loads, in dependency order.\n");
    for m in &modules.boot {
        // Root paths are usr/lib/modules/...; the initramfs has no /usr merge to care about.
        let src = &m.path;
        let dst = src.strip_prefix("usr/").unwrap_or(src).to_string();
        let data = root.read(src)?;
        t.insert(&dst, Node::file(data, 0o644, epoch, o))?;
        load.push_str(&dst);
        load.push('\n');
    }
    t.insert(
        "etc/kiln/modules.load",
        Node::file(load.into_bytes(), 0o644, epoch, o),
    )?;
    Ok(t)
}

fn build_arch(
    profile: &Profile,
    lock: &Lockfile,
    arch: Arch,
    cache: &Cache,
    opts: &BuildOptions,
    ui: &Ui,
) -> Result<BuildReport, BuildError> {
    let mut clock = Clock::new(arch);
    let agent_path = opts.agent.locate(arch)?;
    let agent: Arc<[u8]> = std::fs::read(&agent_path)
        .map_err(io_err(&agent_path))?
        .into();

    // fetch
    let fetched = fetch_arch(profile, lock, arch, cache, ui)?;
    let artifacts = fetch_arch_artifacts(profile, arch, cache, ui)?;
    clock.lap("fetch");

    // unpack: root and kernel packages into one tree, the stub package aside
    let tree_debs: Vec<&Fetched> = fetched
        .iter()
        .filter(|f| f.package.role != Role::Boot)
        .collect();
    let items: Vec<(String, PathBuf)> = tree_debs
        .iter()
        .map(|f| (f.package.name.clone(), f.path.clone()))
        .collect();
    let pb = ui.steps(items.len() as u64, &format!("unpack {arch}"));
    let debs = unpack::read_debs_parallel(&items, &pb)?;
    pb.finish_and_clear();
    let epoch = opts.epoch.unwrap_or_else(|| newest_mtime(&debs));
    let mut root = FileTree::new(epoch);
    let rules = InsertRules {
        exclude: profile
            .packages
            .exclude_paths
            .iter()
            .map(|g| Glob::new(g))
            .collect(),
        prefer: profile.packages.prefer.clone(),
    };
    for deb in debs {
        unpack::insert_deb(&mut root, deb, &rules)?;
    }
    let kernel_debs: Vec<&Fetched> = fetched
        .iter()
        .filter(|f| f.package.role == Role::Kernel)
        .collect();
    let kernel = take_kernel(&mut root, &kernel_debs)?;
    let stub_pkg = fetched
        .iter()
        .find(|f| f.package.role == Role::Boot)
        .ok_or_else(|| {
            BuildError::Missing(format!(
                "{}: no boot stub package in the lock for {arch}",
                lock.path.display()
            ))
        })?;
    let stub_deb = unpack::read_deb(&stub_pkg.path, &stub_pkg.package.name)?;
    let stub = stub_deb
        .entries
        .iter()
        .find(|(p, _)| p == arch.efi_stub_path())
        .and_then(|(_, n)| match &n.kind {
            Kind::File(d) => Some(d.clone()),
            _ => None,
        })
        .ok_or_else(|| {
            BuildError::Missing(format!(
                "{} does not ship /{}",
                stub_pkg.package.name,
                arch.efi_stub_path()
            ))
        })?;
    clock.lap("unpack");

    // tree: overlays, agent, maintainer-script effects, modules
    let mut vars = profile.vars.clone();
    for (k, v) in [
        ("arch", arch.name()),
        ("deb_arch", arch.deb_arch()),
        ("profile", profile.name.as_str()),
        ("kernel_release", kernel.release.as_str()),
    ] {
        vars.entry(k.to_string())
            .or_insert_with(|| serde_json::Value::String(v.to_string()));
    }
    for o in &profile.overlays {
        tree::overlay::apply(&mut root, &o.name, &o.dir, &vars)?;
    }
    root.insert(
        "usr/bin/kiln-agent",
        Node::file(agent.clone(), 0o755, epoch, "kiln:agent"),
    )?;
    let mut artifact_digests = Vec::new();
    for a in &artifacts {
        let data: Arc<[u8]> = std::fs::read(&a.path).map_err(io_err(&a.path))?.into();
        artifact_digests.push((
            format!("artifact:{}", a.artifact.name),
            manifest::FileDigest {
                file: a.artifact.dest.clone(),
                size: data.len() as u64,
                sha256: a.artifact.sha256.clone(),
            },
        ));
        tree::artifact::place(&mut root, &a.artifact, data)?;
    }
    tree::node::apply(&mut root, &profile.agent, profile.extras.debug_shell)?;
    if let Some(cluster) = &profile.agent.cluster {
        tree::cluster::apply(&mut root, cluster, &profile.path)?;
    }
    crate::oci::add_to_root(
        &mut root,
        &profile.container_images,
        crate::oci::PackageSource {
            fetched: &fetched,
            profile: &profile.path,
            lock: &lock.path,
        },
        &rules,
        arch,
        epoch,
    )?;
    tree::effects::apply(&mut root)?;
    tree::sysusers::apply(&mut root)?;
    tree::units::apply(
        &mut root,
        &profile.systemd.enable,
        &profile.systemd.mask,
        &profile.systemd.default_target,
    )?;
    let modules = tree::kmod::select(
        &root,
        &profile.kernel.module_sets,
        &profile.kernel.custom_sets,
        arch,
    )?;
    tree::kmod::prune(&mut root, &modules)?;
    tree::kmod::write_index(&mut root, &modules)?;
    clock.lap("tree");

    // initramfs (the UKI needs the root hash, so it is assembled after the root)
    let initrd_tree = initramfs_tree(&root, &agent, &modules, epoch)?;
    let mut initrd = Vec::new();
    cpio::write_newc(&initrd_tree, &mut initrd)?;
    let osrel = root
        .read("usr/lib/os-release")
        .or_else(|_| root.read("etc/os-release"))?;
    clock.lap("initramfs");

    // plan, then write the disk: root, its hash tree, the UKI on the ESP
    let profile_bytes = std::fs::read(&profile.path).map_err(io_err(&profile.path))?;
    let seed = seed_for(&seed_input(&profile_bytes, profile), lock, arch);
    let staging = Staging::new(&opts.out, &format!("{}-{arch}", profile.name))?;
    let image_name = format!("{}-{arch}.raw", profile.name);
    let manifest_name = format!("{}-{arch}.manifest.json", profile.name);
    let image_path = staging.path(&image_name);
    let ext4_opts = ext4::Ext4Options {
        uuid: Guid::derive(&seed, "root-filesystem").to_gpt_bytes(),
        label: format!("root-{arch}"),
        epoch,
    };
    let mut root_size = ext4::estimate_size(&root);
    let (mut image, root_summary) = loop {
        let plan = crate::plan::plan_disk(&PlanInput {
            arch,
            disk_size: profile.disk.size,
            esp_size: profile.disk.esp_size,
            root_size,
            root_verity_size: verity::VerityGeometry::new(root_size)?.hash_bytes(),
            seed,
            reserve_ab: false,
        })?;
        let image = crate::disk::create_image(&image_path, &plan)?;
        let mut window = image.window(PartitionRole::Root)?;
        match ext4::write(&root, root_size, &ext4_opts, &mut window) {
            Ok(s) => break (image, s),
            Err(e) if ext4::is_out_of_space(&e) && root_size < profile.disk.size => {
                tracing::debug!(root_size, "root estimate too small; growing");
                root_size = (root_size + root_size / 10).next_multiple_of(1 << 20);
            }
            Err(e) => return Err(e.into()),
        }
    };
    clock.lap("ext4");

    let vparams = verity_params(&seed);
    let tree = {
        let root_window = image.window(PartitionRole::Root)?;
        let mut reader = std::io::BufReader::with_capacity(
            1 << 20,
            RangeReader {
                file: image.file(),
                pos: root_window.offset(),
                end: root_window.offset() + root_summary.size,
            },
        );
        verity::build(&mut reader, root_summary.size, &vparams)?
    };
    image
        .window(PartitionRole::RootVerity)?
        .write_at(0, &tree.hash_device)?;
    image.apply_root_hash(&tree.root_hash)?;
    clock.lap("verity");

    let cmdline = kernel_cmdline(profile, arch, &tree.root_hash);
    let uki = crate::uki::assemble(
        &stub,
        &crate::uki::UkiParts {
            arch,
            osrel: &osrel,
            cmdline: cmdline.as_bytes(),
            uname: kernel.release.as_bytes(),
            initrd: &initrd,
            linux: &kernel.vmlinuz,
        },
    )?;
    clock.lap("uki");
    let uki_esp_path = format!("EFI/BOOT/{}", arch.efi_boot_file());
    let esp_files = [fat::EspFile::new(&uki_esp_path, &uki)];
    {
        let esp_serial = le::u32_at(&Guid::derive(&seed, "esp-serial").to_gpt_bytes(), 0);
        let mut fat_opts = fat::FatOptions::new("KILN-ESP", esp_serial, epoch);
        let mut window = image.window(PartitionRole::Esp)?;
        fat_opts.hidden_sectors = u32::try_from(window.partition().first_lba).unwrap_or(0);
        fat::build_fat(&esp_files, window.len(), &fat_opts, &mut window)?;
    }
    let plan = image.plan().clone();
    let mapped = image.mapped_blocks();
    image.finish()?;
    clock.lap("esp+gpt");

    // manifest, then publish both files together
    let ranges: Vec<(u64, u64)> = plan
        .partitions
        .iter()
        .map(|p| (p.offset(), p.size()))
        .collect();
    let (image_sha, part_shas) =
        manifest::sha256_image_and_ranges(&image_path, &ranges).map_err(io_err(&image_path))?;
    clock.lap("sha256");
    let formats = opts
        .formats
        .clone()
        .unwrap_or_else(|| profile.formats.clone());
    let outputs = crate::output::formats::write_outputs(&crate::output::formats::OutputJob {
        raw: &image_path,
        dir: staging.dir(),
        stem: &format!("{}-{arch}", profile.name),
        formats: &formats,
        mapped: &mapped,
        epoch,
        seed,
        runner: &HostRunner,
        raw_sha256: Some(&image_sha),
        progress: None,
    })?;
    tracing::debug!(files = outputs.files.len(), "output formats written");
    clock.lap("formats");
    let partitions = plan
        .partitions
        .iter()
        .zip(part_shas)
        .map(|(p, sha256)| manifest::Partition::of(p, sha256))
        .collect();
    let image_size = std::fs::metadata(&image_path)
        .map_err(io_err(&image_path))?
        .len();
    let lock_bytes = std::fs::read(&lock.path).map_err(io_err(&lock.path))?;
    let file_name = |p: &Path| {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let stem = |p: &str| tree::file_name(p).trim_end_matches(".ko").to_string();
    let m = Manifest {
        debug_shell: profile.extras.debug_shell,
        schema: manifest::SCHEMA,
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        name: profile.name.clone(),
        arch: arch.name().to_string(),
        epoch,
        profile: manifest::Input {
            file: file_name(&profile.path),
            sha256: sha256_hex(&profile_bytes),
        },
        lock: manifest::Input {
            file: file_name(&lock.path),
            sha256: sha256_hex(&lock_bytes),
        },
        kernel: manifest::Kernel {
            package: kernel.package.clone(),
            version: kernel.version.clone(),
            release: kernel.release.clone(),
            cmdline: cmdline.clone(),
        },
        packages: fetched
            .iter()
            .map(|f| manifest::Package {
                name: f.package.name.clone(),
                version: f.package.version.clone(),
                arch: f.package.arch.clone(),
                role: f.package.role.name().to_string(),
                sha256: f.package.sha256.clone(),
            })
            .collect(),
        modules: manifest::Modules {
            sets: profile.kernel.module_sets.clone(),
            root: modules.all.iter().map(|m| stem(&m.path)).collect(),
            initramfs: modules.boot.iter().map(|m| stem(&m.path)).collect(),
        },
        disk: manifest::Disk {
            size: plan.total_size,
            sha256: image_sha.clone(),
            guid: plan.disk_guid.to_string(),
            partitions,
        },
        root: manifest::Root {
            fs: "ext4".into(),
            size: root_summary.size,
            data_bytes: root_summary.data_bytes,
            inodes: root_summary.inodes,
        },
        verity: manifest::Verity {
            algorithm: "sha256".into(),
            data_block_size: verity::BLOCK,
            hash_block_size: verity::BLOCK,
            data_blocks: tree.geometry.data_blocks,
            hash_size: tree.hash_device.len() as u64,
            salt: hex::encode(vparams.salt),
            uuid: Guid::from_bytes(vparams.uuid).to_string(),
            root_hash: hex::encode(tree.root_hash),
            check: match profile.disk.verity_check {
                VerityCheck::Full => "full".into(),
                VerityCheck::OnRead => "on-read".into(),
            },
        },
        outputs: outputs
            .files
            .iter()
            .map(|o| (o.key.clone(), o.digest.clone()))
            .collect(),
        components: [
            (
                "uki".to_string(),
                manifest::FileDigest {
                    file: format!("EFI/BOOT/{}", arch.efi_boot_file()),
                    size: uki.len() as u64,
                    sha256: sha256_hex(&uki),
                },
            ),
            (
                "initramfs".to_string(),
                manifest::FileDigest {
                    file: "initrd (.initrd section)".into(),
                    size: initrd.len() as u64,
                    sha256: sha256_hex(&initrd),
                },
            ),
            (
                "agent".to_string(),
                manifest::FileDigest {
                    file: "usr/bin/kiln-agent".into(),
                    size: agent.len() as u64,
                    sha256: sha256_hex(&agent),
                },
            ),
            (
                "kernel".to_string(),
                manifest::FileDigest {
                    file: format!("vmlinuz-{}", kernel.release),
                    size: kernel.vmlinuz.len() as u64,
                    sha256: sha256_hex(&kernel.vmlinuz),
                },
            ),
        ]
        .into_iter()
        .chain(artifact_digests)
        .collect(),
    };
    let manifest_path = staging.path(&manifest_name);
    std::fs::write(&manifest_path, m.to_json()).map_err(io_err(&manifest_path))?;
    let mut names: Vec<&str> = outputs
        .files
        .iter()
        .map(|o| o.digest.file.as_str())
        .collect();
    names.push(&manifest_name);
    let mut published = staging.publish(&names)?;
    let manifest_path = published.pop().unwrap_or_default();
    // The raw image if it was published, else the first output.
    let image = published
        .iter()
        .find(|p| p.file_name().is_some_and(|n| *n == *image_name))
        .or(published.first())
        .cloned()
        .unwrap_or_default();
    clock.lap("manifest");

    Ok(BuildReport {
        arch,
        image,
        manifest: manifest_path,
        image_size,
        root: root_summary,
        timings: clock.steps,
        packages: fetched
            .iter()
            .filter(|f| f.package.role == Role::Root)
            .count(),
    })
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
