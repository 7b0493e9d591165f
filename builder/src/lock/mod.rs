//! `kiln lock`: resolve a profile's packages against the Debian archive and
//! pin every .deb (name, version, pool path, size, sha256) in a lockfile.
//!
//! - [`sources`] finds each suite's mirror in the host's apt sources.
//! - [`apt`] runs `apt-get update` in a private state tree per arch, so apt
//!   verifies the archive signatures, and reads the `Packages` indexes.
//! - [`index`] parses the indexes; [`version`] compares Debian versions.
//! - [`mod@resolve`] is the pure resolver from indexes to lock entries.
//! - [`report`] says which suites the locked packages came from.
//!
//! The lockfile (`profiles/qemu.toml` → `profiles/qemu.lock`) records a
//! digest of the profile's resolution inputs; [`check_current`] tells a
//! build when the lock no longer matches its profile.

pub mod apt;
pub mod changes;
pub mod index;
pub mod report;
pub mod resolve;
pub mod sources;
pub mod version;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::profile::Profile;
use crate::runner::{RunError, Runner};
pub use apt::AptArchive;
pub use changes::{Gone, LockChanges};
pub use report::suite_summary;
pub use resolve::{resolve, Index, Request, ResolveError};
pub use sources::{SourceEntry, Sources, SourcesError};

/// The lockfile schema this kiln writes and reads.
pub const LOCK_SCHEMA: u32 = 1;

/// Why a package is in the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Part of the root filesystem closure.
    Root,
    /// The kernel (metapackage and image); only its files are used.
    Kernel,
    /// The UEFI stub package; only its stub files are used.
    Boot,
}

impl Role {
    /// The name used in the lockfile.
    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Kernel => "kernel",
            Role::Boot => "boot",
        }
    }
}

/// One pinned .deb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// Package name.
    pub name: String,
    /// Exact Debian version.
    pub version: String,
    /// Debian arch of the .deb (`amd64`, `arm64` or `all`).
    pub arch: String,
    /// The image arch this entry is for.
    pub for_arch: Arch,
    /// Why it is locked.
    pub role: Role,
    /// The suite whose index listed it (selects the mirror URI at fetch time).
    pub suite: String,
    /// Path of the .deb under the archive root (`pool/main/...`).
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the .deb, lowercase hex.
    pub sha256: String,
}

impl LockedPackage {
    /// The order of entries in a lockfile: (for_arch, role, name, version).
    pub fn sort_key(&self) -> (Arch, Role, &str, &str) {
        (self.for_arch, self.role, &self.name, &self.version)
    }
}

/// A problem while locking or reading a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The lock file could not be read.
    #[error("{path}: cannot read lock file: {source} (run `kiln lock <profile>` to create it)")]
    Read {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The lock file is not valid TOML for this schema.
    #[error(
        "{path}: invalid lock file: {message} (regenerate it with `kiln lock --update <profile>`)"
    )]
    Parse {
        /// The lock file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The lock does not match the profile any more.
    #[error("{lock} does not match {profile}: {}; run `kiln lock --update {profile}`", .details.join("; "))]
    Stale {
        /// The lock file.
        lock: PathBuf,
        /// The profile file.
        profile: PathBuf,
        /// What differs.
        details: Vec<String>,
    },
    /// The apt sources lack a suite or cannot be read.
    #[error(transparent)]
    Sources(#[from] SourcesError),
    /// An apt command failed.
    #[error("apt for {arch}: {source}; check that the archive is reachable and retry")]
    Apt {
        /// The arch whose apt tree was used.
        arch: Arch,
        /// The failed command.
        source: RunError,
    },
    /// The archive has no such suite (apt found no Release file for it).
    #[error("suite {suite:?} is not in the archive at {uri} (apt-get update found no Release file for it); check [debian] {field} in the profile: a release name (trixie), or one with -updates, -security or -backports")]
    NoSuchSuite {
        /// The `[debian]` key that lists it: `suites` or `extra_suites`.
        field: &'static str,
        /// The suite as the profile names it.
        suite: String,
        /// The archive asked.
        uri: String,
    },
    /// The archive's Release file for a suite is past its `Valid-Until`.
    #[error("the Release file of suite {suite:?} at {uri} has expired ({since}): the mirror serves a stale copy. Use a current mirror; or, if it is a cache or snapshot you trust, set `Acquire::Check-Valid-Until \"false\";` in the host's apt configuration (/etc/apt/apt.conf.d/), which kiln follows; signatures are still checked")]
    ExpiredRelease {
        /// The suite.
        suite: String,
        /// The archive.
        uri: String,
        /// apt's words, e.g. `invalid since 31d 4h 17min 12s`.
        since: String,
    },
    /// `apt-get update` reported download or signature problems.
    #[error("apt-get update for {arch} failed:\n{messages}\ncheck that the archive is reachable and retry")]
    AptWarnings {
        /// The arch.
        arch: Arch,
        /// apt's warning and error lines.
        messages: String,
    },
    /// An index apt should have downloaded is missing.
    #[error("no Packages index for suite {suite:?} ({arch}) at {path}: does the suite have the profile's components? run `kiln lock --update <profile>`")]
    MissingIndex {
        /// The arch.
        arch: Arch,
        /// Where the index was expected.
        path: PathBuf,
        /// The suite.
        suite: String,
    },
    /// A path cannot be written into an apt.conf.
    #[error("{path}: kiln cannot pass this path to apt (it must be UTF-8 without '\"'); use another --cache directory")]
    UnusablePath {
        /// The path.
        path: PathBuf,
    },
    /// An index could not be read.
    #[error(transparent)]
    Index(#[from] index::IndexError),
    /// Resolution failed.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// The lockfile: every pinned .deb of every arch of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    /// Schema version ([`LOCK_SCHEMA`]).
    pub schema: u32,
    /// SHA-256 of the profile's [`Profile::resolution_inputs`].
    pub inputs: String,
    /// Entries sorted by [`LockedPackage::sort_key`].
    #[serde(rename = "package", default)]
    pub packages: Vec<LockedPackage>,
    /// Where the lock was read from or will be written (not serialized).
    #[serde(skip)]
    pub path: PathBuf,
}

const HEADER: &str = "# Generated by `kiln lock` from the profile of the same name. Do not edit.\n\
                      # Refresh with `kiln lock --update <profile>`.\n";

/// toml's messages span several lines with a caret diagram; keep the
/// location line and the message, on one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('|')
                && !l.contains(" | ")
                && !l.chars().all(|c| c == '^' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// The lock file of a profile: `<profile dir>/<profile stem>.lock`.
pub fn lock_path(profile: &Path) -> PathBuf {
    let stem = profile
        .file_stem()
        .map(|s| s.to_os_string())
        .unwrap_or_else(|| "profile".into());
    let mut name = stem;
    name.push(".lock");
    profile.with_file_name(name)
}

/// Hex SHA-256 of the profile's resolution inputs.
pub fn inputs_digest(profile: &Profile) -> String {
    hex::encode(Sha256::digest(profile.resolution_inputs().as_bytes()))
}

impl Lockfile {
    /// A lock for `path` with entries sorted into lockfile order.
    pub fn new(path: PathBuf, inputs: String, mut packages: Vec<LockedPackage>) -> Lockfile {
        packages.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        Lockfile {
            schema: LOCK_SCHEMA,
            inputs,
            packages,
            path,
        }
    }

    /// The entries for one image arch and, optionally, one role.
    pub fn packages_for(
        &self,
        arch: Arch,
        role: Option<Role>,
    ) -> impl Iterator<Item = &LockedPackage> {
        self.packages
            .iter()
            .filter(move |p| p.for_arch == arch && role.is_none_or(|r| p.role == r))
    }

    /// Parses lock text (`path` names the file in errors and is kept).
    pub fn parse(path: &Path, text: &str) -> Result<Lockfile, LockError> {
        let bad = |message: String| LockError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let mut lock: Lockfile = toml::from_str(text).map_err(|e| bad(one_line(&e.to_string())))?;
        if lock.schema != LOCK_SCHEMA {
            return Err(bad(format!(
                "schema {} is not supported; this kiln reads schema {LOCK_SCHEMA}",
                lock.schema
            )));
        }
        for p in &lock.packages {
            if p.sha256.len() != 64
                || !p
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(bad(format!(
                    "package {} ({}): sha256 {:?} is not 64 lowercase hex digits",
                    p.name, p.for_arch, p.sha256
                )));
            }
            if p.filename.is_empty()
                || p.filename.starts_with('/')
                || p.filename.split('/').any(|c| c == "..")
            {
                return Err(bad(format!(
                    "package {} ({}): filename {:?} is not a pool path",
                    p.name, p.for_arch, p.filename
                )));
            }
        }
        lock.path = path.to_path_buf();
        Ok(lock)
    }

    /// Reads a lock file.
    pub fn read(path: &Path) -> Result<Lockfile, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Lockfile::parse(path, &text)
    }

    /// The file's text: header comment, then sorted entries.
    pub fn to_toml(&self) -> Result<String, LockError> {
        let mut sorted = self.clone();
        sorted
            .packages
            .sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let body = toml::to_string(&sorted).map_err(|e| LockError::Parse {
            path: self.path.clone(),
            message: format!("cannot serialize: {e}"),
        })?;
        Ok(format!("{HEADER}{body}"))
    }

    /// Writes the lock to [`Lockfile::path`] atomically (temp file + rename).
    pub fn write(&self) -> Result<(), LockError> {
        let path = &self.path;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // A lock is a source file like the profile: 0666 less the umask, as an
        // editor would make it (the temp file would otherwise be private, 0600).
        let mut tmp = tempfile::Builder::new()
            .prefix(".kiln-lock")
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(&dir)
            .map_err(|source| LockError::Io {
                path: dir.clone(),
                source,
            })?;
        std::io::Write::write_all(&mut tmp, self.to_toml()?.as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// Checks that `lock` was made from `profile`'s current inputs. Otherwise
/// the error names both files, says what is missing (which requested
/// package for which arch, when that is the case) and gives the command
/// that refreshes the lock.
pub fn check_current(lock: &Lockfile, profile: &Profile) -> Result<(), LockError> {
    if lock.inputs == inputs_digest(profile) {
        return Ok(());
    }
    let mut details = Vec::new();
    for &arch in &profile.arches {
        let have = |role: Role| {
            lock.packages_for(arch, Some(role))
                .map(|p| p.name.as_str())
                .collect::<BTreeSet<_>>()
        };
        let roots = have(Role::Root);
        let missing: Vec<String> = profile
            .packages_for(arch)
            .into_iter()
            .filter(|p| !roots.contains(p.as_str()))
            .collect();
        if !missing.is_empty() {
            details.push(format!(
                "requested {} for {arch} not in the lock: {}",
                if missing.len() == 1 {
                    "package"
                } else {
                    "packages"
                },
                missing.join(", ")
            ));
        }
        for (name, suite) in profile.pins_for(arch) {
            if let Some(p) = lock
                .packages_for(arch, Some(Role::Root))
                .find(|p| p.name == name && p.suite != suite)
            {
                details.push(format!(
                    "{name} for {arch} is from {} in the lock, [packages.from] takes it from {suite}",
                    p.suite
                ));
            }
        }
        if let Some(k) = profile.kernel.package.get(&arch) {
            if !have(Role::Kernel).contains(k.as_str()) {
                details.push(format!("kernel package {k} for {arch} not in the lock"));
            }
        }
        if !have(Role::Boot).contains(profile.boot.stub_package.as_str()) {
            details.push(format!(
                "boot stub package {} for {arch} not in the lock",
                profile.boot.stub_package
            ));
        }
    }
    let extra: BTreeSet<Arch> = lock
        .packages
        .iter()
        .map(|p| p.for_arch)
        .filter(|a| !profile.arches.contains(a))
        .collect();
    for a in extra {
        details.push(format!(
            "the lock has packages for {a}, which the profile no longer builds"
        ));
    }
    if details.is_empty() {
        details.push("the profile's suites, components, essential flag, package lists or [packages.from] changed since the lock was made".into());
    }
    Err(LockError::Stale {
        lock: lock.path.clone(),
        profile: profile.path.clone(),
        details,
    })
}

/// Downloads the indexes for every arch of `profile` (private apt trees
/// under `<cache_root>/apt/`) and resolves a new lock. Nothing is written.
pub fn resolve_profile(
    profile: &Profile,
    cache_root: &Path,
    sources: &Sources,
    runner: &dyn Runner,
) -> Result<Lockfile, LockError> {
    resolve_keeping(profile, cache_root, sources, runner, None).map(|(lock, _)| lock)
}

/// Like [`resolve_profile`], but every pin of `old` that the archive still
/// serves is kept unless the profile's new constraints need another version
/// ([`Index::prefer`]). Returns the new lock and the old pins the archive no
/// longer serves.
pub fn resolve_keeping(
    profile: &Profile,
    cache_root: &Path,
    sources: &Sources,
    runner: &dyn Runner,
    old: Option<&Lockfile>,
) -> Result<(Lockfile, Vec<Gone>), LockError> {
    let mut all = Vec::new();
    let mut gone = Vec::new();
    for &arch in &profile.arches {
        let t = Instant::now();
        let apt = AptArchive::prepare(cache_root, arch, &profile.debian, sources)?;
        apt.update(runner)?;
        let mut index = apt.index(runner)?;
        if let Some(old) = old {
            let keep = old
                .packages_for(arch, None)
                .map(|p| (p.name.clone(), p.version.clone()))
                .collect();
            gone.extend(index.prefer(&keep).into_iter().map(|(name, version)| Gone {
                arch,
                name,
                version,
            }));
        }
        let packages = profile.packages_for(arch);
        let pins = profile.pins_for(arch);
        let req = Request {
            arch,
            packages: &packages,
            essential: profile.debian.essential,
            kernel: profile.kernel.package.get(&arch).map(String::as_str),
            boot: Some(profile.boot.stub_package.as_str()),
            pins: &pins,
        };
        let locked = resolve(&index, &req)?;
        tracing::info!(%arch, packages = locked.len(), secs = t.elapsed().as_secs_f64(), "resolved");
        all.extend(locked);
    }
    let lock = Lockfile::new(lock_path(&profile.path), inputs_digest(profile), all);
    Ok((lock, gone))
}

/// What [`lock_profile`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAction {
    /// The existing lock matches the profile and was kept.
    Kept,
    /// A new lock was resolved and written.
    Written {
        /// Why (`no lock yet`, `--update`, `profile changed: ...`).
        reason: String,
        /// What changed against the old lock (empty when there was none).
        changes: LockChanges,
    },
}

/// `kiln lock`: keep a current lock unless `update`, else resolve and write
/// `<profile dir>/<stem>.lock`. After a profile change the old lock's pins
/// are kept where the archive still serves them; `update` takes the newest
/// of everything. An unreadable existing lock is an error
/// without `update` (so a bad merge is not silently replaced).
pub fn lock_profile(
    profile: &Profile,
    cache_root: &Path,
    sources: &Sources,
    runner: &dyn Runner,
    update: bool,
) -> Result<(Lockfile, LockAction), LockError> {
    let path = lock_path(&profile.path);
    let (old, reason) = if update {
        // --update replaces even an unreadable lock; a readable one is compared.
        (Lockfile::read(&path).ok(), "--update".to_string())
    } else if path.exists() {
        let old = Lockfile::read(&path)?;
        match check_current(&old, profile) {
            Ok(()) => return Ok((old, LockAction::Kept)),
            Err(LockError::Stale { details, .. }) => {
                let why = format!("profile changed: {}", details.join("; "));
                (Some(old), why)
            }
            Err(e) => return Err(e),
        }
    } else {
        (None, "no lock yet".to_string())
    };
    // A profile change moves only what it needs; --update moves everything to the newest.
    let keep = if update { None } else { old.as_ref() };
    let (lock, gone) = resolve_keeping(profile, cache_root, sources, runner, keep)?;
    lock.write()?;
    let changes = old
        .map(|old| LockChanges::between(&old, &lock, &gone))
        .unwrap_or_default();
    Ok((lock, LockAction::Written { reason, changes }))
}

#[cfg(test)]
mod tests;
