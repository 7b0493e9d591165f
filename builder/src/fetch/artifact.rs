//! `[[artifact]]` files in the same content-addressed cache as the .debs.
//!
//! An artifact lives at `<cache>/sha256/<first 2 hex>/<sha256>.artifact`.
//! As for .debs, the SHA-256 is checked on every lookup and a file that does
//! not match is removed and fetched again. Downloads and copies of local
//! files go to a temporary file in the same directory and are renamed into
//! place only after the SHA-256 matches the profile's pin, so the final
//! path never holds a partial or wrong file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::{hash_file, Cache, DownloadError, Downloader};
use crate::arch::Arch;
use crate::profile::{Artifact, ArtifactSource};

/// A problem while fetching an artifact; each names the artifact, its arch
/// and its URL or path.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The bytes are not the pinned file.
    #[error(
        "artifact {label}: {origin} has sha256 {got}, the profile pins {want}; nothing was \
         cached. If that file is the one you want, put its sha256 in the profile; otherwise \
         check the {what}"
    )]
    Mismatch {
        /// `name (arch)`.
        label: String,
        /// URL or path.
        origin: String,
        /// SHA-256 of what was read.
        got: String,
        /// SHA-256 the profile pins.
        want: String,
        /// "URL" or "file", for the advice.
        what: &'static str,
    },
    /// The download failed (HTTP status, connection, TLS, timeout).
    #[error(
        "artifact {label}: download failed: {error}; check the URL in the profile and the \
         network, then retry"
    )]
    Download {
        /// `name (arch)`.
        label: String,
        /// What failed; names the URL and the status.
        error: DownloadError,
    },
    /// A local `path` artifact cannot be read.
    #[error(
        "artifact {label}: cannot read {path}: {error}; put the file there or fix `path` in \
         the profile (a relative path is taken from the profile's folder)"
    )]
    Missing {
        /// `name (arch)`.
        label: String,
        /// The file.
        path: PathBuf,
        /// The I/O error (shown in the message, not chained).
        error: std::io::Error,
    },
    /// A cache file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl Cache {
    /// Where an artifact with this SHA-256 is stored.
    pub fn artifact_path(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("00");
        self.root()
            .join("sha256")
            .join(prefix)
            .join(format!("{sha256}.artifact"))
    }

    /// The cached, verified file with this SHA-256, or `None`. A file whose
    /// SHA-256 differs is removed (with a warning), so the caller fetches it
    /// again.
    pub fn lookup_artifact(&self, sha256: &str) -> Result<Option<PathBuf>, ArtifactError> {
        let path = self.artifact_path(sha256);
        let io = |source| ArtifactError::Io {
            path: path.clone(),
            source,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let problem = if meta.is_file() {
            let (sha, _) = hash_file(&path).map_err(io)?;
            (sha != sha256).then(|| format!("has sha256 {sha}"))
        } else {
            Some("is not a regular file".to_string())
        };
        let Some(problem) = problem else {
            return Ok(Some(path));
        };
        tracing::warn!(
            "cached artifact {} {problem}, not {sha256}: removed, fetching it again",
            path.display()
        );
        if meta.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io)?;
        } else {
            std::fs::remove_file(&path).map_err(io)?;
        }
        Ok(None)
    }
}

/// Hashes what passes through on its way to the temporary file.
struct HashingSink<'a> {
    file: &'a mut std::fs::File,
    hasher: Sha256,
    progress: &'a ProgressBar,
}

impl Write for HashingSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The verified cache path of `artifact` for `arch`'s build: from the
/// cache if it is there and intact, else downloaded or copied from its
/// local path. A warm cache does no network I/O.
pub fn fetch_artifact(
    cache: &Cache,
    downloader: &dyn Downloader,
    artifact: &Artifact,
    arch: Arch,
    progress: &ProgressBar,
) -> Result<PathBuf, ArtifactError> {
    if let Some(p) = cache.lookup_artifact(&artifact.sha256)? {
        return Ok(p);
    }
    let label = artifact.label(arch);
    let path = cache.artifact_path(&artifact.sha256);
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cache.root().to_path_buf());
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ArtifactError::Io { path: p, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // Dropped (and so deleted) on every error path below.
    let mut tmp = tempfile::Builder::new()
        .prefix(".part-")
        .tempfile_in(&dir)
        .map_err(io(&dir))?;
    let mut sink = HashingSink {
        file: tmp.as_file_mut(),
        hasher: Sha256::new(),
        progress,
    };
    let what = match &artifact.source {
        ArtifactSource::Url(url) => {
            tracing::info!(artifact = %label, %url, "download");
            progress.set_message(format!("artifact {label}"));
            downloader
                .download(url, &mut sink)
                .map_err(|error| match error {
                    // The cache's disk refused the bytes: not the URL's fault.
                    DownloadError::Write { source, .. } => ArtifactError::Io {
                        path: dir.clone(),
                        source,
                    },
                    error => ArtifactError::Download {
                        label: label.clone(),
                        error,
                    },
                })?;
            "URL"
        }
        ArtifactSource::Path(src) => {
            let missing = |error| ArtifactError::Missing {
                label: label.clone(),
                path: src.clone(),
                error,
            };
            let mut f = std::fs::File::open(src).map_err(missing)?;
            if f.metadata().map_err(missing)?.is_dir() {
                return Err(ArtifactError::Missing {
                    label: label.clone(),
                    path: src.clone(),
                    error: std::io::Error::other("it is a directory, not a file"),
                });
            }
            copy(&mut f, &mut sink).map_err(|e| match e {
                CopyError::Read(error) => ArtifactError::Missing {
                    label: label.clone(),
                    path: src.clone(),
                    error,
                },
                CopyError::Write(source) => ArtifactError::Io {
                    path: dir.clone(),
                    source,
                },
            })?;
            "file"
        }
    };
    let got = hex::encode(sink.hasher.finalize());
    if got != artifact.sha256 {
        return Err(ArtifactError::Mismatch {
            label,
            origin: artifact.source.to_string(),
            got,
            want: artifact.sha256.clone(),
            what,
        });
    }
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    tmp.persist(&path).map_err(|e| ArtifactError::Io {
        path: path.clone(),
        source: e.error,
    })?;
    Ok(path)
}

/// Which side of a copy failed: the source file or the cache.
enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies `from` into `to`, telling read errors (the profile's file) from
/// write errors (the cache's disk).
fn copy(from: &mut impl Read, to: &mut impl Write) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

/// One artifact of a build and its verified file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedArtifact {
    /// The profile entry.
    pub artifact: Artifact,
    /// The verified cache file.
    pub path: PathBuf,
}

/// Every artifact of `arch`, verified in the cache, in profile order.
pub fn fetch_artifacts<'a>(
    cache: &Cache,
    downloader: &dyn Downloader,
    artifacts: impl IntoIterator<Item = &'a Artifact>,
    arch: Arch,
    progress: &ProgressBar,
) -> Result<Vec<FetchedArtifact>, ArtifactError> {
    artifacts
        .into_iter()
        .map(|a| {
            Ok(FetchedArtifact {
                artifact: a.clone(),
                path: fetch_artifact(cache, downloader, a, arch, progress)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::fetch::HttpDownloader;

    const BINARY: &[u8] = b"\x7fELF pretend k3s binary";

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    /// A real HTTP server on a loopback port: `/k3s` is [`BINARY`], `/other`
    /// is different bytes, anything else is 404. Counts requests.
    struct Server {
        base: String,
        requests: Arc<AtomicUsize>,
    }

    fn serve() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        // Detached: it dies with the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let (status, body): (&str, &[u8]) = match path.as_str() {
                    "/k3s" => ("200 OK", BINARY),
                    "/other" => ("200 OK", b"not the pinned file"),
                    _ => ("404 Not Found", b"no such file"),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        Server { base, requests }
    }

    fn artifact(source: ArtifactSource, sha256: &str) -> Artifact {
        Artifact {
            name: "k3s".into(),
            source,
            sha256: sha256.into(),
            dest: "usr/bin/k3s".into(),
            mode: 0o755,
            arch: None,
        }
    }

    /// Every file under `dir`, temporary ones included.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return out;
        };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    /// Fails every call: proves a warm cache does no network I/O.
    struct Offline;

    impl Downloader for Offline {
        fn download(&self, url: &str, _: &mut dyn Write) -> Result<(), DownloadError> {
            panic!("network I/O attempted for {url} although the cache is warm");
        }
    }

    fn fetch(cache: &Cache, d: &dyn Downloader, a: &Artifact) -> Result<PathBuf, ArtifactError> {
        fetch_artifact(cache, d, a, Arch::X86_64, &ProgressBar::hidden())
    }

    #[test]
    fn download_is_verified_cached_and_a_second_fetch_does_no_network_io() {
        let srv = serve();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let a = artifact(
            ArtifactSource::Url(format!("{}/k3s", srv.base)),
            &sha(BINARY),
        );
        let p = fetch(&cache, &HttpDownloader::new(), &a).unwrap();
        assert_eq!(p, cache.artifact_path(&sha(BINARY)));
        assert!(p.ends_with(format!(
            "sha256/{}/{}.artifact",
            &sha(BINARY)[..2],
            sha(BINARY)
        )));
        assert_eq!(std::fs::read(&p).unwrap(), BINARY);
        assert_eq!(srv.requests.load(Ordering::SeqCst), 1);
        assert_eq!(
            files_under(dir.path()),
            vec![p.clone()],
            "no temp file left"
        );

        assert_eq!(fetch(&cache, &HttpDownloader::new(), &a).unwrap(), p);
        assert_eq!(fetch(&cache, &Offline, &a).unwrap(), p);
        assert_eq!(
            srv.requests.load(Ordering::SeqCst),
            1,
            "served from the cache"
        );
    }

    #[test]
    fn wrong_sha256_is_named_and_nothing_is_cached() {
        let srv = serve();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let url = format!("{}/other", srv.base);
        let a = artifact(ArtifactSource::Url(url.clone()), &sha(BINARY));
        let e = fetch(&cache, &HttpDownloader::new(), &a)
            .unwrap_err()
            .to_string();
        let want = format!(
            "artifact k3s (x86_64): {url} has sha256 {}, the profile pins {}; nothing was cached",
            sha(b"not the pinned file"),
            sha(BINARY)
        );
        assert!(e.starts_with(&want), "{e}");
        assert!(
            files_under(dir.path()).is_empty(),
            "{:?}",
            files_under(dir.path())
        );
    }

    #[test]
    fn http_404_names_the_url_and_status_and_says_retry() {
        let srv = serve();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let url = format!("{}/missing", srv.base);
        let a = artifact(ArtifactSource::Url(url.clone()), &sha(BINARY));
        let e = fetch(&cache, &HttpDownloader::new(), &a)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("artifact k3s (x86_64)")
                && e.contains(&url)
                && e.contains("404")
                && e.contains("check the URL")
                && e.contains("retry"),
            "{e}"
        );
        assert!(files_under(dir.path()).is_empty());
    }

    #[test]
    fn local_file_is_hashed_and_copied_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let src = dir.path().join("k3s");
        std::fs::write(&src, BINARY).unwrap();
        let a = artifact(ArtifactSource::Path(src.clone()), &sha(BINARY));
        let p = fetch(&cache, &Offline, &a).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), BINARY);
        assert!(src.exists(), "the source stays");

        let gone = dir.path().join("nope/k3s");
        let a = artifact(ArtifactSource::Path(gone.clone()), &sha(b"x"));
        let e = fetch(&cache, &Offline, &a).unwrap_err().to_string();
        assert!(
            e.contains("artifact k3s (x86_64)") && e.contains(&gone.display().to_string()),
            "{e}"
        );

        std::fs::write(&src, b"changed").unwrap();
        let a = artifact(ArtifactSource::Path(src.clone()), &sha(b"pinned"));
        let e = fetch(&cache, &Offline, &a).unwrap_err().to_string();
        assert!(
            e.contains(&src.display().to_string())
                && e.contains(&sha(b"changed"))
                && e.contains("nothing was cached"),
            "{e}"
        );
        assert!(!cache.artifact_path(&sha(b"pinned")).exists());
    }

    #[test]
    fn damaged_cache_file_is_removed_and_fetched_again() {
        let srv = serve();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let a = artifact(
            ArtifactSource::Url(format!("{}/k3s", srv.base)),
            &sha(BINARY),
        );
        let p = cache.artifact_path(&sha(BINARY));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"bit rot").unwrap();
        assert_eq!(cache.lookup_artifact(&sha(BINARY)).unwrap(), None);
        assert!(!p.exists(), "the damaged file is removed");
        std::fs::write(&p, b"bit rot").unwrap();
        assert_eq!(fetch(&cache, &HttpDownloader::new(), &a).unwrap(), p);
        assert_eq!(std::fs::read(&p).unwrap(), BINARY);
        assert_eq!(srv.requests.load(Ordering::SeqCst), 1);
    }
}
