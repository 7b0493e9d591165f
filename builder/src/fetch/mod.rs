//! `kiln fetch`: bring every locked .deb (and, in [`artifact`], every
//! `[[artifact]]` file) into a content-addressed cache.
//!
//! Files live at `<cache>/sha256/<first 2 hex>/<sha256>.deb`. A cached file
//! is used only after its size and SHA-256 are checked against the lock, on
//! every lookup: hashing is cheap next to a build, and a stamp keyed by size
//! and mtime would miss corruption that keeps both (bit rot, a tool that
//! restores mtimes). A file that does not match is removed, reported, and
//! fetched again. Downloads go to a temporary file in the same directory and
//! are renamed into place only after verification, so the final path never
//! holds a partial or wrong file. A warm cache does no network I/O at all.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

pub mod artifact;

use crate::arch::Arch;
use crate::lock::{LockedPackage, Lockfile, Role, Sources, SourcesError};

/// Environment variable that sets the cache directory.
pub const CACHE_ENV: &str = "KILN_CACHE";

/// A problem while fetching packages.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A cache file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No cache directory could be derived from the environment.
    #[error(
        "no cache directory: set {CACHE_ENV} (or XDG_CACHE_HOME or HOME), or pass --cache DIR"
    )]
    NoCacheDir,
    /// The archive no longer serves a locked version and the cache lacks it.
    #[error("{name} {version} ({arch}) is no longer served by the archive and is not in the cache; run `kiln lock --update {profile}`")]
    Vanished {
        /// Package name.
        name: String,
        /// Locked version.
        version: String,
        /// Debian arch of the .deb.
        arch: String,
        /// The profile to re-lock.
        profile: PathBuf,
    },
    /// A download failed for a reason that may pass.
    #[error("{package}: {source}; check the network and retry")]
    Network {
        /// `name version (arch)` of the package.
        package: String,
        /// What failed.
        source: DownloadError,
    },
    /// The downloaded bytes are not the locked file.
    #[error("{package}: {url} served {detail}; nothing was cached. Retry; if it persists the archive changed the file: run `kiln lock --update {profile}`")]
    Mismatch {
        /// `name version (arch)` of the package.
        package: String,
        /// The URL.
        url: String,
        /// Expected versus received.
        detail: String,
        /// The profile to re-lock.
        profile: PathBuf,
    },
    /// The suite of a locked package has no mirror in the apt sources.
    #[error(transparent)]
    Sources(#[from] SourcesError),
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// HTTP 404: the archive does not have the file.
    #[error("{url}: not found (HTTP 404)")]
    NotFound {
        /// The URL.
        url: String,
    },
    /// Another HTTP error status.
    #[error("{url}: HTTP status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// Connection, DNS, TLS, timeout or a broken transfer.
    #[error("{url}: {message}")]
    Network {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The sink refused the bytes (disk full, or more bytes than expected).
    #[error("{url}: {source}")]
    Write {
        /// The URL.
        url: String,
        /// The sink's error.
        source: std::io::Error,
    },
}

/// Gets the bytes of a URL. The real implementation is [`HttpDownloader`].
pub trait Downloader: Send + Sync {
    /// Streams the body of `url` into `sink`.
    fn download(&self, url: &str, sink: &mut dyn Write) -> Result<(), DownloadError>;
}

/// Downloads over HTTP(S) with ureq (proxy taken from the environment).
#[derive(Debug, Clone)]
pub struct HttpDownloader {
    agent: ureq::Agent,
}

impl Default for HttpDownloader {
    fn default() -> Self {
        HttpDownloader::new()
    }
}

impl HttpDownloader {
    /// A downloader with connect and response timeouts but no whole-transfer
    /// limit (a kernel package is 60-70 MB).
    pub fn new() -> HttpDownloader {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpDownloader {
            agent: config.into(),
        }
    }
}

impl Downloader for HttpDownloader {
    fn download(&self, url: &str, sink: &mut dyn Write) -> Result<(), DownloadError> {
        let resp = self.agent.get(url).call().map_err(|e| match e {
            ureq::Error::StatusCode(404) => DownloadError::NotFound {
                url: url.to_string(),
            },
            ureq::Error::StatusCode(status) => DownloadError::Status {
                url: url.to_string(),
                status,
            },
            other => DownloadError::Network {
                url: url.to_string(),
                message: other.to_string(),
            },
        })?;
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(DownloadError::Network {
                        url: url.to_string(),
                        message: format!("transfer broke: {e}"),
                    })
                }
            };
            sink.write_all(&buf[..n])
                .map_err(|source| DownloadError::Write {
                    url: url.to_string(),
                    source,
                })?;
        }
    }
}

/// The content-addressed .deb cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

/// The cache root from environment lookups: `$KILN_CACHE`, else
/// `$XDG_CACHE_HOME/kiln` (if absolute), else `$HOME/.cache/kiln`.
pub fn cache_root_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let get = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    get(CACHE_ENV)
        .or_else(|| {
            get("XDG_CACHE_HOME")
                .filter(|p| p.is_absolute())
                .map(|p| p.join("kiln"))
        })
        .or_else(|| get("HOME").map(|p| p.join(".cache").join("kiln")))
}

/// Hex SHA-256 and length of a file.
fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(h.finalize()), len))
}

impl Cache {
    /// A cache at an explicit directory (`--cache DIR`).
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// The cache from the environment (see [`cache_root_from`]).
    pub fn from_env() -> Result<Cache, FetchError> {
        cache_root_from(|k| std::env::var_os(k))
            .map(Cache::new)
            .ok_or(FetchError::NoCacheDir)
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a .deb with this SHA-256 is stored.
    pub fn deb_path(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("00");
        self.root
            .join("sha256")
            .join(prefix)
            .join(format!("{sha256}.deb"))
    }

    /// The cached, verified file of `pkg`, or `None`. A file whose size or
    /// SHA-256 differs from the lock is removed (with a warning) and `None`
    /// is returned, so the caller fetches it again.
    pub fn lookup(&self, pkg: &LockedPackage) -> Result<Option<PathBuf>, FetchError> {
        let path = self.deb_path(&pkg.sha256);
        let io = |source| FetchError::Io {
            path: path.clone(),
            source,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let problem = if !meta.is_file() {
            Some("is not a regular file".to_string())
        } else if meta.len() != pkg.size {
            Some(format!(
                "has {} bytes, the lock says {}",
                meta.len(),
                pkg.size
            ))
        } else {
            let (sha, _) = hash_file(&path).map_err(io)?;
            (sha != pkg.sha256).then(|| format!("has sha256 {sha}, the lock says {}", pkg.sha256))
        };
        match problem {
            None => Ok(Some(path)),
            Some(p) => {
                tracing::warn!(
                    "cached {} {} ({}) at {} {p}: removed, fetching it again",
                    pkg.name,
                    pkg.version,
                    pkg.arch,
                    path.display()
                );
                let removed = if meta.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(io)?;
                Ok(None)
            }
        }
    }
}

/// Hashes, counts and bounds what a downloader writes.
struct VerifyingSink<'a> {
    file: &'a mut std::fs::File,
    hasher: Sha256,
    written: u64,
    limit: u64,
    overflowed: bool,
    progress: &'a ProgressBar,
}

impl Write for VerifyingSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other(format!(
                "more than the {} bytes the lock pins",
                self.limit
            )));
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The archive URL of a pool path: `uri/filename`, percent-encoding every
/// byte but letters, digits, `-._/`. Like apt, this encodes `+` and `~`:
/// some object-store mirrors read a literal `+` in a path as a space.
pub fn package_url(uri: &str, filename: &str) -> String {
    let mut url = String::with_capacity(uri.len() + filename.len() + 8);
    url.push_str(uri.trim_end_matches('/'));
    url.push('/');
    for b in filename.bytes() {
        if b.is_ascii_alphanumeric() || b"-._/".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// `name version (arch)`, how messages name a package.
fn label(pkg: &LockedPackage) -> String {
    format!("{} {} ({})", pkg.name, pkg.version, pkg.arch)
}

/// Everything a fetch needs besides the lock.
pub struct FetchContext<'a> {
    /// The cache to fill.
    pub cache: &'a Cache,
    /// Mirror URIs per suite (only consulted for packages not yet cached).
    pub sources: &'a Sources,
    /// How bytes are downloaded.
    pub downloader: &'a dyn Downloader,
    /// The profile the lock belongs to (named in "re-lock" advice).
    pub profile: &'a Path,
    /// Byte progress of the downloads (use `ProgressBar::hidden()` for none).
    pub progress: &'a ProgressBar,
}

/// A locked package and its verified file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The lock entry.
    pub package: LockedPackage,
    /// The verified .deb.
    pub path: PathBuf,
}

impl FetchContext<'_> {
    /// Downloads `pkg` into the cache and returns its final path. The bytes
    /// go to a temp file next to the final path and are renamed into place
    /// only when size and SHA-256 match the lock.
    pub fn download(&self, pkg: &LockedPackage) -> Result<PathBuf, FetchError> {
        let url = package_url(&self.sources.get(&pkg.suite)?.uri, &pkg.filename);
        let path = self.cache.deb_path(&pkg.sha256);
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.cache.root.clone());
        std::fs::create_dir_all(&dir).map_err(|source| FetchError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".part-")
            .tempfile_in(&dir)
            .map_err(|source| FetchError::Io {
                path: dir.clone(),
                source,
            })?;
        tracing::info!(package = %pkg.name, version = %pkg.version, %url, "download");
        self.progress
            .set_message(format!("{} {}", pkg.name, pkg.version));
        let (written, sha) = {
            let mut sink = VerifyingSink {
                file: tmp.as_file_mut(),
                hasher: Sha256::new(),
                written: 0,
                limit: pkg.size,
                overflowed: false,
                progress: self.progress,
            };
            let result = self.downloader.download(&url, &mut sink);
            match result {
                Ok(()) => {}
                Err(DownloadError::NotFound { .. }) => {
                    return Err(FetchError::Vanished {
                        name: pkg.name.clone(),
                        version: pkg.version.clone(),
                        arch: pkg.arch.clone(),
                        profile: self.profile.to_path_buf(),
                    })
                }
                Err(DownloadError::Write { source, .. }) if sink.overflowed => {
                    return Err(FetchError::Mismatch {
                        package: label(pkg),
                        url,
                        detail: source.to_string(),
                        profile: self.profile.to_path_buf(),
                    })
                }
                Err(DownloadError::Write { source, .. }) => {
                    return Err(FetchError::Io {
                        path: tmp.path().to_path_buf(),
                        source,
                    })
                }
                Err(source) => {
                    return Err(FetchError::Network {
                        package: label(pkg),
                        source,
                    })
                }
            }
            (sink.written, hex::encode(sink.hasher.finalize()))
        };
        if written != pkg.size || sha != pkg.sha256 {
            return Err(FetchError::Mismatch {
                package: label(pkg),
                url,
                detail: format!(
                    "{written} bytes with sha256 {sha}, but the lock pins {} bytes with sha256 {}",
                    pkg.size, pkg.sha256
                ),
                profile: self.profile.to_path_buf(),
            });
        }
        tmp.as_file().sync_all().map_err(|source| FetchError::Io {
            path: tmp.path().to_path_buf(),
            source,
        })?;
        tmp.persist(&path).map_err(|e| FetchError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(path)
    }

    /// The verified cache path of `pkg`, downloading it if needed.
    pub fn fetch(&self, pkg: &LockedPackage) -> Result<PathBuf, FetchError> {
        match self.cache.lookup(pkg)? {
            Some(p) => Ok(p),
            None => self.download(pkg),
        }
    }
}

/// Every locked package of `arch` (and `role`, if given), verified in the
/// cache, in lock order. Only missing or damaged files are downloaded; a
/// warm cache performs no network I/O.
pub fn fetch_all(
    ctx: &FetchContext<'_>,
    lock: &Lockfile,
    arch: Arch,
    role: Option<Role>,
) -> Result<Vec<Fetched>, FetchError> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for pkg in lock.packages_for(arch, role) {
        match ctx.cache.lookup(pkg)? {
            Some(path) => out.push(Fetched {
                package: pkg.clone(),
                path,
            }),
            None => missing.push(pkg),
        }
    }
    if !missing.is_empty() {
        let total: u64 = missing.iter().map(|p| p.size).sum();
        tracing::info!(%arch, packages = missing.len(), bytes = total, "fetching packages missing from the cache");
        ctx.progress.set_length(total);
        ctx.progress.set_position(0);
        for pkg in missing {
            let path = ctx.download(pkg)?;
            out.push(Fetched {
                package: pkg.clone(),
                path,
            });
        }
        ctx.progress.finish_and_clear();
    }
    out.sort_by(|a, b| a.package.sort_key().cmp(&b.package.sort_key()));
    Ok(out)
}

#[cfg(test)]
mod tests;
