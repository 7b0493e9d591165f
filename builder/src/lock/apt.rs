//! A private apt state tree per arch, used only to download and verify the
//! archive's `Packages` indexes. apt checks the Release signatures; kiln
//! never touches the host's apt state or configuration.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::index::{read_index, IndexPackage};
use super::resolve::Index;
use super::sources::Sources;
use super::LockError;
use crate::arch::Arch;
use crate::profile::Debian;
use crate::runner::{Cmd, Runner};

/// apt configured for one arch under `<cache>/apt/<arch>/`.
#[derive(Debug, Clone)]
pub struct AptArchive {
    arch: Arch,
    root: PathBuf,
    suites: Vec<String>,
    /// `[debian] extra_suites`: fetched like `suites`, indexed apart.
    extra_suites: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// apt.conf strings cannot escape `"`; refuse such paths instead of writing
/// a config that apt would misread.
fn quoted(path: &Path) -> Result<String, LockError> {
    let s = path
        .to_str()
        .filter(|s| !s.contains('"') && !s.contains('\n'))
        .ok_or_else(|| LockError::UnusablePath {
            path: path.to_path_buf(),
        })?;
    Ok(format!("\"{s}\""))
}

impl AptArchive {
    /// Creates (or refreshes) the private apt tree for `arch` under
    /// `<cache_root>/apt/<arch>/`: the apt.conf, an empty dpkg status, and a
    /// sources file listing the profile's suites (base, then extra) and
    /// components with the URI and keyring the host uses for each suite.
    pub fn prepare(
        cache_root: &Path,
        arch: Arch,
        debian: &Debian,
        sources: &Sources,
    ) -> Result<AptArchive, LockError> {
        let root = cache_root.join("apt").join(arch.name());
        let state = root.join("state");
        let cache = root.join("cache");
        let parts = root.join("sources.list.d");
        let conf_parts = root.join("apt.conf.d");
        for d in [
            state.join("lists/partial"),
            cache.join("archives/partial"),
            parts.clone(),
            conf_parts.clone(),
        ] {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let status = state.join("status");
        std::fs::write(&status, b"").map_err(io_err(&status))?;

        let mut list = String::from(
            "# Written by kiln for its private apt state; regenerated on every `kiln lock`.\n",
        );
        for suite in debian.suites.iter().chain(&debian.extra_suites) {
            let src = sources.get(suite)?;
            list.push_str(&format!(
                "\nTypes: deb\nURIs: {}\nSuites: {suite}\nComponents: {}\nArchitectures: {}\n",
                src.uri,
                debian.components.join(" "),
                arch.deb_arch()
            ));
            if let Some(key) = &src.signed_by {
                list.push_str("Signed-By:");
                let mut lines = key.lines();
                if let Some(first) = lines.next() {
                    list.push(' ');
                    list.push_str(first);
                }
                for l in lines {
                    list.push_str(if l.is_empty() { "\n ." } else { "\n " });
                    list.push_str(l);
                }
                list.push('\n');
            }
        }
        let list_path = parts.join("kiln.sources");
        std::fs::write(&list_path, list).map_err(io_err(&list_path))?;

        // Dir::Etc::Parts and Dir::Etc::Main point away from the host's
        // /etc/apt so its hooks and extra index targets never run here.
        let mut conf = format!(
            "Dir::State {};\nDir::State::status {};\nDir::Cache {};\nDir::Etc::SourceList \"/dev/null\";\nDir::Etc::SourceParts {};\n\
             Dir::Etc::Preferences \"/dev/null\";\nDir::Etc::PreferencesParts \"/dev/null\";\nDir::Etc::Parts {};\nDir::Etc::Main \"/dev/null\";\n\
             APT::Architecture \"{deb}\";\nAPT::Architectures {{ \"{deb}\"; }};\nAcquire::Languages \"none\";\nAcquire::GzipIndexes \"true\";\n",
            quoted(&state)?,
            quoted(&status)?,
            quoted(&cache)?,
            quoted(&parts)?,
            quoted(&conf_parts)?,
            deb = arch.deb_arch(),
        );
        if sources.allow_expired_release {
            // The host's apt accepts its mirrors' stale Release files; so must this one.
            conf.push_str("Acquire::Check-Valid-Until \"false\";\n");
        }
        let conf_path = root.join("apt.conf");
        std::fs::write(&conf_path, conf).map_err(io_err(&conf_path))?;
        Ok(AptArchive {
            arch,
            root,
            suites: debian.suites.clone(),
            extra_suites: debian.extra_suites.clone(),
        })
    }

    /// The tree's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The arch this tree serves.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The apt.conf to pass as `APT_CONFIG`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("apt.conf")
    }

    /// An apt command with this tree's configuration.
    pub fn apt_cmd(&self, program: &str) -> Cmd {
        Cmd::new(program).env("APT_CONFIG", self.config_path())
    }

    /// Downloads the indexes (`apt-get update`); apt verifies the signatures.
    pub fn update(&self, runner: &dyn Runner) -> Result<(), LockError> {
        let t = Instant::now();
        let out = runner
            .run(&self.apt_cmd("apt-get").args(["-q", "update"]))
            .map_err(|source| {
                // apt says `E: The repository 'URI SUITE Release' does not have a
                // Release file.` for a suite the archive lacks: name the suite.
                let text = source.to_string();
                let missing = text.lines().find_map(|l| {
                    let (_, rest) = l.split_once("The repository '")?;
                    let (repo, _) = rest.split_once(" Release' does not have a Release file")?;
                    let (uri, suite) = repo.rsplit_once(' ')?;
                    Some((uri.to_string(), suite.to_string()))
                });
                // `E: Release file for URI/dists/SUITE/InRelease is expired (invalid since ...)`.
                let expired = text.lines().find_map(|l| {
                    let (_, rest) = l.split_once("Release file for ")?;
                    let (url, rest) = rest.split_once(" is expired")?;
                    let (uri, path) = url.split_once("/dists/")?;
                    let suite = path.split('/').next()?;
                    let since = rest.split_once('(').and_then(|(_, r)| r.split_once(')'));
                    Some((
                        uri.to_string(),
                        suite.to_string(),
                        since.map(|(s, _)| s.to_string()),
                    ))
                });
                if let Some((uri, suite, since)) = expired {
                    return LockError::ExpiredRelease {
                        suite,
                        uri,
                        since: since.unwrap_or_else(|| "expired".into()),
                    };
                }
                match missing {
                    Some((uri, suite)) => LockError::NoSuchSuite {
                        field: if self.extra_suites.contains(&suite) {
                            "extra_suites"
                        } else {
                            "suites"
                        },
                        suite,
                        uri,
                    },
                    None => LockError::Apt {
                        arch: self.arch,
                        source,
                    },
                }
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // apt reports unreachable mirrors and bad signatures as warnings with
        // exit status 0, then keeps old (or no) indexes: treat them as errors.
        let fatal = |l: &str| {
            l.starts_with("E:")
                || (l.starts_with("W:")
                    && [
                        "Failed to fetch",
                        "failed to download",
                        "GPG error",
                        "NO_PUBKEY",
                        "not signed",
                    ]
                    .iter()
                    .any(|m| l.contains(m)))
        };
        for l in stderr.lines().filter(|l| l.starts_with("W:") && !fatal(l)) {
            // Run as root on a cache the `_apt` user cannot enter, apt
            // downloads without its sandbox and says so: not the user's concern.
            if l.contains("unsandboxed") {
                tracing::debug!(arch = %self.arch, "apt: {l}");
            } else {
                tracing::warn!(arch = %self.arch, "apt: {l}");
            }
        }
        let problems: Vec<&str> = stderr.lines().filter(|l| fatal(l)).collect();
        if !problems.is_empty() {
            return Err(LockError::AptWarnings {
                arch: self.arch,
                messages: problems.join("\n"),
            });
        }
        tracing::info!(arch = %self.arch, secs = t.elapsed().as_secs_f64(), "apt-get update done");
        Ok(())
    }

    /// Index files apt downloaded: (path, suite), from `apt-get indextargets`.
    pub fn index_files(&self, runner: &dyn Runner) -> Result<Vec<(PathBuf, String)>, LockError> {
        let out = runner
            .run(&self.apt_cmd("apt-get").args([
                "indextargets",
                "--format",
                "$(FILENAME)\t$(RELEASE)",
                "Identifier: Packages",
            ]))
            .map_err(|source| LockError::Apt {
                arch: self.arch,
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut files = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Some((name, suite)) = line.split_once('\t') else {
                continue;
            };
            // apt keeps indexes compressed (GzipIndexes); the target names the
            // uncompressed file, so look for each kept form.
            let found = ["", ".lz4", ".zst", ".gz", ".xz"]
                .iter()
                .map(|ext| PathBuf::from(format!("{name}{ext}")))
                .find(|p| p.is_file());
            let path = found.ok_or_else(|| LockError::MissingIndex {
                arch: self.arch,
                path: PathBuf::from(name),
                suite: suite.to_string(),
            })?;
            files.push((path, suite.to_string()));
        }
        for suite in self.suites.iter().chain(&self.extra_suites) {
            if !files.iter().any(|(_, s)| s == suite) {
                return Err(LockError::MissingIndex {
                    arch: self.arch,
                    path: self.root.join("state/lists"),
                    suite: suite.clone(),
                });
            }
        }
        Ok(files)
    }

    /// Reads and parses every downloaded `Packages` index.
    pub fn read_indexes(&self, runner: &dyn Runner) -> Result<Vec<IndexPackage>, LockError> {
        let mut all = Vec::new();
        for (path, suite) in self.index_files(runner)? {
            all.extend(read_index(&path, &suite)?);
        }
        Ok(all)
    }

    /// Reads the indexes into a resolver [`Index`] for this arch, each
    /// extra suite's apart ([`Index::with_extra_suites`]).
    pub fn index(&self, runner: &dyn Runner) -> Result<Index, LockError> {
        let t = Instant::now();
        let idx = Index::with_extra_suites(
            self.arch.deb_arch(),
            &self.suites,
            &self.extra_suites,
            self.read_indexes(runner)?,
        );
        tracing::info!(arch = %self.arch, packages = idx.len(), secs = t.elapsed().as_secs_f64(), "indexes parsed");
        Ok(idx)
    }
}
