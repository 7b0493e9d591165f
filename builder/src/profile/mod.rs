//! Profiles: the one declarative input of a build.
//!
//! A profile file is parsed into [`dto`] types that mirror the TOML exactly
//! (unknown fields rejected, schema version required), then validated into
//! the domain [`Profile`] the rest of the pipeline uses. Every error names
//! the file and the field.

mod agent;
mod artifact;
mod cluster;
pub mod container_image;
pub mod dto;
pub mod module_sets;
mod output;
mod pins;
mod size;
pub mod ssh;
mod update;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::arch::Arch;
pub use agent::Agent;
pub use artifact::{Artifact, ArtifactSource};
pub use cluster::{
    release_in_url, Cluster, ClusterFlavor, ClusterKind, Containerd, ImageRole, KubeVersion,
    KubeadmApi,
};
pub use kiln_contract::agent_config::Channel;
use kiln_contract::agent_config::ALL_CHANNELS;
use kiln_contract::cmdline::DEFAULT_VAR_MIN;
use kiln_contract::version::ImageVersion;
// The values are the command line's words, so the enums are the contract's.
pub use kiln_contract::cmdline::{VarFallback, VerityCheck};
pub use output::{Format, ZstdLevel};
pub use size::{format_size, parse_size};
pub use update::{parse_duration, UpdatePolicy};

/// The profile schema version this kiln reads.
pub const SCHEMA: u32 = 1;

/// The image version of a profile without `version`: older than any version a
/// profile can set, so the first versioned image is an update to it.
pub const DEFAULT_VERSION: &str = "0";

/// Errors while reading or validating a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("{path}: cannot read profile: {source}")]
    Read {
        /// The profile path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown field or a wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The profile path.
        path: PathBuf,
        /// What the TOML parser said (includes line and field).
        message: String,
    },
    /// A field has a value kiln cannot use.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        /// The profile path.
        path: PathBuf,
        /// Dotted field name.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// An `[[artifact]]` field has a value kiln cannot use.
    #[error("{path}: artifact[{index}] ({name}) {field}: {message}")]
    Artifact {
        /// The profile path.
        path: PathBuf,
        /// Position in the `[[artifact]]` list, from 0.
        index: usize,
        /// The artifact's `name` as written.
        name: String,
        /// The field.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// `--debug-shell` asked for an image that reads cloud metadata.
    #[error(
        "{path}: --debug-shell is refused: `[agent] channels` includes \"cloud\", and a \
         password-less root shell must never ship in a cloud image; build without \
         --debug-shell, or use a profile without the cloud channel"
    )]
    DebugShellRefused {
        /// The profile path.
        path: PathBuf,
    },
    /// A `--append-cmdline` word kiln cannot use.
    #[error("--append-cmdline {word:?}: {message}")]
    BadCmdlineWord {
        /// The word as given.
        word: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Settings given to one build on the command line rather than in the file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildExtras {
    /// `--debug-shell`: root autologin on the consoles.
    pub debug_shell: bool,
    /// `--append-cmdline`: words after the profile's `[kernel] cmdline`.
    pub append_cmdline: Vec<String>,
}

/// Where packages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debian {
    /// Suites, e.g. `bookworm`, `bookworm-updates`, `bookworm-security`.
    pub suites: Vec<String>,
    /// Archive components, e.g. `main`.
    pub components: Vec<String>,
    /// Whether every `Essential: yes` package joins the closure.
    pub essential: bool,
    /// Suites that serve only the packages `[packages.from]` names, and what
    /// those need that `suites` cannot satisfy (e.g. `forky`).
    pub extra_suites: Vec<String>,
}

/// Which packages make the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packages {
    /// Packages for every arch.
    pub include: Vec<String>,
    /// Extra packages per arch.
    pub arch_include: BTreeMap<Arch, Vec<String>>,
    /// Path (normalised, no leading `/`) → package that wins a content conflict there.
    pub prefer: BTreeMap<String, String>,
    /// Glob patterns (normalised, no leading `/`) of package files left out of the image.
    pub exclude_paths: Vec<String>,
    /// `[packages.from]`: package → the extra suite it is taken from (see [`Profile::pins_for`]).
    pub from: BTreeMap<String, String>,
}

/// The kernel and its modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// Kernel package per arch (a metapackage is followed to the image package).
    pub package: BTreeMap<Arch, String>,
    /// Module sets by name (built-in or from `[kernel.sets]`).
    pub module_sets: Vec<String>,
    /// Sets defined by the profile: name → module names.
    pub custom_sets: BTreeMap<String, Vec<String>>,
    /// Extra kernel command line words.
    pub cmdline: Vec<String>,
}

/// The UEFI boot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// Package that ships systemd-stub (`systemd-boot-efi`).
    pub stub_package: String,
}

/// systemd unit state set at build time (what maintainer scripts would do).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Systemd {
    /// Units to enable through their `[Install]` sections.
    pub enable: Vec<String>,
    /// Units to mask.
    pub mask: Vec<String>,
    /// The default target.
    pub default_target: String,
}

/// An overlay to apply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayRef {
    /// Folder name under the overlays directory.
    pub name: String,
    /// Resolved folder path.
    pub dir: PathBuf,
}

/// Disk geometry wishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    /// Total image size in bytes.
    pub size: u64,
    /// ESP size in bytes.
    pub esp_size: u64,
    /// Smallest `var` partition the node creates on first boot.
    pub var_min_size: u64,
    /// Without room for that: halt or keep /var on a tmpfs.
    pub var_fallback: VarFallback,
    /// How the node checks the verified root at boot.
    pub verity_check: VerityCheck,
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The profile file.
    pub path: PathBuf,
    /// Image name (used in output file names).
    pub name: String,
    /// Image version (`version`, "0" when absent): os-release's `IMAGE_VERSION`, and
    /// what updates compare to tell newer from older.
    pub version: ImageVersion,
    /// Free text.
    pub description: String,
    /// Arches this profile builds for.
    pub arches: Vec<Arch>,
    /// Package sources.
    pub debian: Debian,
    /// Root packages.
    pub packages: Packages,
    /// Kernel and modules.
    pub kernel: Kernel,
    /// Boot path.
    pub boot: Boot,
    /// Unit state.
    pub systemd: Systemd,
    /// Overlays in application order.
    pub overlays: Vec<OverlayRef>,
    /// Template variables for overlays.
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Disk geometry.
    pub disk: Disk,
    /// Output formats.
    pub formats: Vec<Format>,
    /// The zstd level of the `raw.zst` output.
    pub zstd_level: ZstdLevel,
    /// The in-image agent's settings.
    pub agent: Agent,
    /// `[update]`: trusted update keys, slot size, boot tries and health checks.
    pub update: UpdatePolicy,
    /// OCI images built from locked packages and shipped in the root.
    pub container_images: Vec<container_image::ImageSpec>,
    /// Files pinned by sha256 and placed in the root (`[[artifact]]`).
    pub artifacts: Vec<Artifact>,
    /// Command line settings of this build (not part of the file).
    pub extras: BuildExtras,
}

impl Profile {
    /// Reads, parses and validates a profile file. Overlays are looked up in
    /// the folders of [`overlay_search_path`]: `overlays/` next to the
    /// profile's folder, then the overlays shipped with kiln.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Profile::parse_in(path, &text, &overlay_search_path(path))
    }

    /// Parses and validates profile text (`path` is used in messages), with
    /// overlays looked up in `overlays_dir` only.
    pub fn parse(path: &Path, text: &str, overlays_dir: &Path) -> Result<Profile, ProfileError> {
        Profile::parse_in(path, text, &[overlays_dir.to_path_buf()])
    }

    /// Parses and validates profile text; each overlay is the first folder
    /// of that name in `overlay_dirs`.
    pub fn parse_in(
        path: &Path,
        text: &str,
        overlay_dirs: &[PathBuf],
    ) -> Result<Profile, ProfileError> {
        let raw: dto::ProfileFile =
            dto::from_toml(text).map_err(|message| ProfileError::Parse {
                path: path.to_path_buf(),
                message,
            })?;
        validate(path, raw, overlay_dirs)
    }

    /// Turns on the debug shell (`kiln build --debug-shell`): root logs in
    /// on the consoles without a password. Refused when the node reads cloud
    /// metadata, so it can never reach a cloud image.
    pub fn enable_debug_shell(&mut self) -> Result<(), ProfileError> {
        if self.agent.uses_cloud() {
            return Err(ProfileError::DebugShellRefused {
                path: self.path.clone(),
            });
        }
        self.extras.debug_shell = true;
        Ok(())
    }

    /// Appends kernel command line words (`kiln build --append-cmdline`),
    /// e.g. `kiln.hostname=node-1`. Each entry may hold several words
    /// separated by spaces.
    pub fn append_cmdline(&mut self, entries: &[String]) -> Result<(), ProfileError> {
        for entry in entries {
            for word in entry.split_whitespace() {
                if word.chars().any(char::is_control) {
                    return Err(ProfileError::BadCmdlineWord {
                        word: word.to_string(),
                        message: "control characters cannot be on a kernel command line".into(),
                    });
                }
                let key = word.split('=').next().unwrap_or_default();
                if kiln_contract::cmdline::RESERVED_KEYS.contains(&key) {
                    return Err(ProfileError::BadCmdlineWord {
                        word: word.to_string(),
                        message: format!("{key} is computed by kiln and cannot be overridden"),
                    });
                }
                self.extras.append_cmdline.push(word.to_string());
            }
            if entry.trim().is_empty() {
                return Err(ProfileError::BadCmdlineWord {
                    word: entry.clone(),
                    message: "empty; give at least one word, e.g. kiln.hostname=node-1".into(),
                });
            }
        }
        Ok(())
    }

    /// The profile's own command line words, then the appended ones.
    pub fn extra_cmdline(&self) -> Vec<String> {
        self.kernel
            .cmdline
            .iter()
            .chain(&self.extras.append_cmdline)
            .cloned()
            .collect()
    }

    /// The artifacts that go into `arch`'s image, in profile order.
    pub fn artifacts_for(&self, arch: Arch) -> impl Iterator<Item = &Artifact> + '_ {
        self.artifacts.iter().filter(move |a| a.applies_to(arch))
    }

    /// Packages requested for `arch` (common plus arch-specific), sorted.
    pub fn packages_for(&self, arch: Arch) -> Vec<String> {
        let mut set: BTreeSet<String> = self.packages.include.iter().cloned().collect();
        if let Some(extra) = self.packages.arch_include.get(&arch) {
            set.extend(extra.iter().cloned());
        }
        set.into_iter().collect()
    }

    /// The inputs that decide the lock's content, as a stable string. The lock
    /// stores its digest so `build` can tell a stale lock from a current one.
    pub fn resolution_inputs(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "suites={:?}\ncomponents={:?}\nessential={}\n",
            self.debian.suites, self.debian.components, self.debian.essential
        ));
        for arch in &self.arches {
            s.push_str(&format!("{arch}.packages={:?}\n", self.packages_for(*arch)));
            s.push_str(&format!(
                "{arch}.kernel={:?}\n",
                self.kernel.package.get(arch)
            ));
        }
        s.push_str(&format!("stub={}\n", self.boot.stub_package));
        s.push_str(&pins::resolution_inputs(self));
        s
    }
}

/// toml's messages span several lines (with a caret diagram); kiln's errors are one line.
fn one_line(msg: &str) -> String {
    let mut lines = msg.lines().map(str::trim).filter(|l| {
        !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^' || c == ' ')
    });
    let first = lines.next().unwrap_or_default().to_string();
    let rest: Vec<&str> = lines.filter(|l| !l.contains(" | ")).collect();
    if rest.is_empty() {
        first
    } else {
        format!("{first}: {}", rest.join("; "))
    }
}

/// Where the overlays a profile names are looked up, in order:
///
/// 1. `overlays/` beside the profile's folder (`profiles/../overlays`), from
///    the profile's absolute path, so the current folder and the way the
///    path is written (`qemu.toml`, `./profiles/qemu.toml`) do not matter;
/// 2. `KILN_OVERLAYS`, when set;
/// 3. the overlays installed with kiln: `<prefix>/share/kiln/overlays` for a
///    `kiln` in `<prefix>/bin` (`make install`);
/// 4. the `overlays/` of the checkout this kiln was compiled from, if it is
///    still there (a `cargo install --path builder` or `target/release/kiln`).
///
/// Folders that do not exist are left out, except the first, which error
/// messages name.
pub fn overlay_search_path(profile: &Path) -> Vec<PathBuf> {
    let absolute = std::path::absolute(profile).unwrap_or_else(|_| profile.to_path_buf());
    let beside = absolute
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("overlays"))
        .unwrap_or_else(|| PathBuf::from("overlays"));
    let mut dirs = vec![beside];
    if let Some(dir) = std::env::var_os("KILN_OVERLAYS").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(prefix) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
    {
        dirs.push(prefix.join("share/kiln/overlays"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays"));
    let mut kept: Vec<PathBuf> = Vec::new();
    for (i, d) in dirs.into_iter().enumerate() {
        if (i == 0 || d.is_dir()) && !kept.contains(&d) {
            kept.push(d);
        }
    }
    kept
}

fn validate(
    path: &Path,
    mut raw: dto::ProfileFile,
    overlay_dirs: &[PathBuf],
) -> Result<Profile, ProfileError> {
    // Before the checks: what `[ssh]` adds is checked like what the file lists.
    ssh::apply(&mut raw);
    let invalid = |field: &str, message: String| ProfileError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    if raw.schema != SCHEMA {
        return Err(invalid(
            "schema",
            format!(
                "version {} is not supported; this kiln reads schema {SCHEMA}",
                raw.schema
            ),
        ));
    }
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(invalid(
            "name",
            format!(
                "{:?}: use letters, digits, '-', '_' or '.' (it names output files)",
                raw.name
            ),
        ));
    }
    let version = match &raw.version {
        None => ImageVersion::parse(DEFAULT_VERSION).expect("the default version parses"),
        Some(toml::Value::String(v)) => {
            ImageVersion::parse(v).map_err(|e| invalid("version", e.to_string()))?
        }
        Some(v) => {
            return Err(invalid(
                "version",
                format!("{v} is not a string; quote it: version = \"{v}\""),
            ))
        }
    };
    let mut arches = Vec::new();
    for (i, a) in raw.arches.iter().enumerate() {
        let arch: Arch = a.parse().map_err(|e: crate::arch::UnknownArch| {
            invalid(&format!("arches[{i}]"), e.to_string())
        })?;
        if !arches.contains(&arch) {
            arches.push(arch);
        }
    }
    if arches.is_empty() {
        return Err(invalid(
            "arches",
            "list at least one of \"x86_64\", \"arm64\"".into(),
        ));
    }
    arches.sort();

    if raw.debian.suites.is_empty() {
        return Err(invalid(
            "debian.suites",
            "list at least one suite, e.g. \"bookworm\"".into(),
        ));
    }
    let components = if raw.debian.components.is_empty() {
        vec!["main".to_string()]
    } else {
        raw.debian.components
    };

    let check_pkg = |field: &str, name: &str| -> Result<(), ProfileError> {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if ok {
            Ok(())
        } else {
            Err(invalid(
                field,
                format!("{name:?} is not a Debian package name"),
            ))
        }
    };
    for (i, p) in raw.packages.include.iter().enumerate() {
        check_pkg(&format!("packages.include[{i}]"), p)?;
    }
    let mut arch_include = BTreeMap::new();
    for (a, list) in raw.packages.arch {
        let arch: Arch = a.parse().map_err(|e: crate::arch::UnknownArch| {
            invalid(&format!("packages.arch.{a}"), e.to_string())
        })?;
        for (i, p) in list.include.iter().enumerate() {
            check_pkg(&format!("packages.arch.{a}.include[{i}]"), p)?;
        }
        arch_include.insert(arch, list.include);
    }
    let (extra_suites, from) = pins::validate(
        path,
        &raw.debian.suites,
        raw.debian.extra_suites,
        raw.packages.from,
        &raw.packages.include,
        &arch_include,
        &check_pkg,
    )?;
    let mut prefer = BTreeMap::new();
    for (p, pkg) in raw.packages.prefer {
        let norm = crate::image_path::normalize(&p)
            .map_err(|e| invalid(&format!("packages.prefer.{p:?}"), e.to_string()))?;
        check_pkg(&format!("packages.prefer.{p:?}"), &pkg)?;
        prefer.insert(norm, pkg);
    }
    let exclude_paths = raw
        .packages
        .exclude_paths
        .iter()
        .map(|p| p.trim_start_matches('/').to_string())
        .collect();

    let mut package = BTreeMap::new();
    for (a, p) in raw.kernel.package {
        let arch: Arch = a.parse().map_err(|e: crate::arch::UnknownArch| {
            invalid(&format!("kernel.package.{a}"), e.to_string())
        })?;
        check_pkg(&format!("kernel.package.{a}"), &p)?;
        package.insert(arch, p);
    }
    for arch in &arches {
        if !package.contains_key(arch) {
            return Err(invalid(
                "kernel.package",
                format!(
                    "no kernel package for {arch}; add `{arch} = \"linux-image-{}\"`",
                    arch.deb_arch()
                ),
            ));
        }
    }
    let known = module_sets::builtin_set_names();
    for (i, s) in raw.kernel.modules.iter().enumerate() {
        if !known.contains(&s.as_str()) && !raw.kernel.sets.contains_key(s) {
            return Err(invalid(
                &format!("kernel.modules[{i}]"),
                format!(
                    "unknown module set {s:?}; built-in sets: {}; or define it under [kernel.sets]",
                    known.join(", ")
                ),
            ));
        }
    }
    for (i, w) in raw.kernel.cmdline.iter().enumerate() {
        if w.is_empty() || w.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                &format!("kernel.cmdline[{i}]"),
                format!("{w:?}: one word per entry, no spaces"),
            ));
        }
    }

    let mut overlays = Vec::new();
    for (i, o) in raw.overlays.iter().enumerate() {
        let searched = || {
            overlay_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if o.is_empty() || o.contains('/') || o.starts_with('.') {
            return Err(invalid(
                &format!("overlays[{i}]"),
                format!("{o:?}: give a folder name under {}", searched()),
            ));
        }
        let Some(dir) = overlay_dirs.iter().map(|d| d.join(o)).find(|d| d.is_dir()) else {
            return Err(invalid(
                &format!("overlays[{i}]"),
                format!("{o:?}: no folder overlays/{o} in {}", searched()),
            ));
        };
        overlays.push(OverlayRef {
            name: o.clone(),
            dir,
        });
    }
    let mut vars = BTreeMap::new();
    for (k, v) in raw.vars {
        let json =
            serde_json::to_value(&v).map_err(|e| invalid(&format!("vars.{k}"), e.to_string()))?;
        vars.insert(k, json);
    }

    let size = parse_size(&raw.disk.size).map_err(|m| invalid("disk.size", m))?;
    let esp_size = match &raw.disk.esp_size {
        Some(s) => parse_size(s).map_err(|m| invalid("disk.esp_size", m))?,
        None => 128 << 20,
    };
    if esp_size < (33 << 20) {
        return Err(invalid(
            "disk.esp_size",
            format!(
                "{} is too small: the ESP needs at least 33 MiB",
                format_size(esp_size)
            ),
        ));
    }
    if size <= esp_size + (64 << 20) {
        return Err(invalid(
            "disk.size",
            format!(
                "{} leaves no room for the root next to a {} ESP",
                format_size(size),
                format_size(esp_size)
            ),
        ));
    }

    let var_min_size = match &raw.disk.var_min_size {
        Some(s) => parse_size(s).map_err(|m| invalid("disk.var_min_size", m))?,
        None => DEFAULT_VAR_MIN,
    };
    if var_min_size < 16 << 20 {
        return Err(invalid(
            "disk.var_min_size",
            format!(
                "{} is too small for an ext4 /var; use at least 16MiB",
                format_size(var_min_size)
            ),
        ));
    }
    let var_fallback = match raw.disk.var_fallback.as_deref() {
        None => VarFallback::default(),
        Some(word) => VarFallback::from_word(word).ok_or_else(|| {
            invalid(
                "disk.var_fallback",
                format!("{word:?}: expected \"halt\" or \"tmpfs\""),
            )
        })?,
    };
    let verity_check = match raw.disk.verity_check.as_deref() {
        None => VerityCheck::default(),
        Some(word) => VerityCheck::from_word(word).ok_or_else(|| {
            invalid(
                "disk.verity_check",
                format!("{word:?}: expected \"full\" or \"on-read\""),
            )
        })?,
    };

    let mut agent = match raw.agent.channels {
        None => Agent::default(),
        Some(list) => {
            let known = || ALL_CHANNELS.map(|c| format!("{:?}", c.name())).join(", ");
            if list.is_empty() {
                return Err(invalid(
                    "agent.channels",
                    format!("empty: list at least one of {}", known()),
                ));
            }
            let mut channels = Vec::new();
            for (i, name) in list.iter().enumerate() {
                let Some(c) = Channel::from_name(name) else {
                    return Err(invalid(
                        &format!("agent.channels[{i}]"),
                        format!("unknown channel {name:?}; known: {}", known()),
                    ));
                };
                if channels.contains(&c) {
                    return Err(invalid(
                        &format!("agent.channels[{i}]"),
                        format!("{name:?} is listed twice; list each channel once"),
                    ));
                }
                channels.push(c);
            }
            Agent {
                channels,
                cluster: None,
            }
        }
    };
    let artifacts = artifact::validate(path, &raw.artifact, &arches)?;
    // After the artifacts: their release URLs give the cluster's Kubernetes version.
    agent.cluster = raw
        .cluster
        .as_ref()
        .map(|c| cluster::validate(path, c, &artifacts))
        .transpose()?;
    cluster::check_runtime(
        path,
        agent.cluster.as_ref(),
        &cluster::Installs {
            include: &raw.packages.include,
            arch_include: &arch_include,
            arches: &arches,
        },
        &raw.systemd.enable,
    )?;

    let update = update::validate(path, &raw.update, agent.cluster.is_some())?;

    let container_images = container_image::validate_images(&raw.container_image)
        .map_err(|e| invalid(&e.field, e.message))?;

    let output = output::validate(path, raw.output)?;

    Ok(Profile {
        path: path.to_path_buf(),
        name: raw.name,
        version,
        description: raw.description,
        arches,
        debian: Debian {
            suites: raw.debian.suites,
            components,
            essential: raw.debian.essential,
            extra_suites,
        },
        packages: Packages {
            include: raw.packages.include,
            arch_include,
            prefer,
            exclude_paths,
            from,
        },
        kernel: Kernel {
            package,
            module_sets: raw.kernel.modules,
            custom_sets: raw.kernel.sets,
            cmdline: raw.kernel.cmdline,
        },
        boot: Boot {
            stub_package: raw
                .boot
                .stub_package
                .unwrap_or_else(|| "systemd-boot-efi".into()),
        },
        systemd: Systemd {
            enable: raw.systemd.enable,
            mask: raw.systemd.mask,
            default_target: raw
                .systemd
                .default_target
                .unwrap_or_else(|| "multi-user.target".into()),
        },
        overlays,
        vars,
        disk: Disk {
            size,
            esp_size,
            var_min_size,
            var_fallback,
            verity_check,
        },
        formats: output.formats,
        zstd_level: output.zstd_level,
        agent,
        update,
        container_images,
        artifacts,
        extras: BuildExtras::default(),
    })
}

#[cfg(test)]
mod tests;
