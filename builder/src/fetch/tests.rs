use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::lock::{AptArchive, Request};
use crate::runner::{Cmd, HostRunner, Runner};

/// Serves fixed bytes per URL (404 for unknown URLs) and records every call.
#[derive(Default)]
struct FakeArchive {
    files: BTreeMap<String, Vec<u8>>,
    calls: Mutex<Vec<String>>,
}

impl Downloader for FakeArchive {
    fn download(&self, url: &str, sink: &mut dyn Write) -> Result<(), DownloadError> {
        self.calls.lock().unwrap().push(url.to_string());
        let body = self.files.get(url).ok_or_else(|| DownloadError::NotFound {
            url: url.to_string(),
        })?;
        // Several writes, like a real transfer.
        for chunk in body.chunks(7) {
            sink.write_all(chunk)
                .map_err(|source| DownloadError::Write {
                    url: url.to_string(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// Fails every call: proves a warm cache does no network I/O.
struct Offline;

impl Downloader for Offline {
    fn download(&self, url: &str, _: &mut dyn Write) -> Result<(), DownloadError> {
        panic!("network I/O attempted for {url} although the cache is warm");
    }
}

const URI: &str = "http://mirror.test/debian";

fn sources() -> Sources {
    let mut s = Sources::default();
    s.parse_deb822(
        &format!("Types: deb\nURIs: {URI}\nSuites: bookworm\nComponents: main\n"),
        Path::new("test.sources"),
    )
    .unwrap();
    s
}

fn package(name: &str, bytes: &[u8]) -> LockedPackage {
    LockedPackage {
        name: name.into(),
        version: "1.0-1".into(),
        arch: "arm64".into(),
        for_arch: Arch::Arm64,
        role: Role::Root,
        suite: "bookworm".into(),
        filename: format!("pool/main/{name}_1.0-1_arm64.deb"),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    }
}

fn lock(pkgs: Vec<LockedPackage>) -> Lockfile {
    Lockfile::new(PathBuf::from("profiles/qemu.lock"), "0".repeat(64), pkgs)
}

struct Setup {
    _dir: tempfile::TempDir,
    cache: Cache,
    sources: Sources,
    progress: ProgressBar,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().join("cache"));
    Setup {
        _dir: dir,
        cache,
        sources: sources(),
        progress: ProgressBar::hidden(),
    }
}

impl Setup {
    fn ctx<'a>(&'a self, d: &'a dyn Downloader) -> FetchContext<'a> {
        FetchContext {
            cache: &self.cache,
            sources: &self.sources,
            downloader: d,
            profile: Path::new("profiles/qemu.toml"),
            progress: &self.progress,
        }
    }
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn cache_root_precedence() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    };
    assert_eq!(
        cache_root_from(env(&[
            ("KILN_CACHE", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h")
        ])),
        Some(PathBuf::from("/c"))
    );
    assert_eq!(
        cache_root_from(env(&[
            ("KILN_CACHE", ""),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h")
        ])),
        Some(PathBuf::from("/x/kiln"))
    );
    assert_eq!(
        cache_root_from(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")])),
        Some(PathBuf::from("/h/.cache/kiln"))
    );
    assert_eq!(cache_root_from(env(&[])), None);
    let c = Cache::new("/c");
    assert_eq!(
        c.deb_path(&"ab".repeat(32)),
        PathBuf::from(format!("/c/sha256/ab/{}.deb", "ab".repeat(32)))
    );
}

#[test]
fn package_urls_join_uri_and_pool_path() {
    assert_eq!(
        package_url(
            "http://m/debian/",
            "pool/main/b/bash/bash_5.2+b7~1_arm64.deb"
        ),
        "http://m/debian/pool/main/b/bash/bash_5.2%2Bb7%7E1_arm64.deb"
    );
    assert_eq!(
        package_url("http://m", "pool/x_1:2 3.deb"),
        "http://m/pool/x_1%3A2%203.deb"
    );
}

#[test]
fn fetch_downloads_verifies_and_then_serves_from_cache_without_network() {
    let s = setup();
    let a = package("a", b"first package bytes");
    let b = package("b", b"second");
    let mut fake = FakeArchive::default();
    fake.files.insert(
        format!("{URI}/{}", a.filename),
        b"first package bytes".to_vec(),
    );
    fake.files
        .insert(format!("{URI}/{}", b.filename), b"second".to_vec());
    let l = lock(vec![b.clone(), a.clone()]);
    let got = fetch_all(&s.ctx(&fake), &l, Arch::Arm64, None).unwrap();
    assert_eq!(
        got.iter()
            .map(|f| f.package.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(std::fs::read(&got[0].path).unwrap(), b"first package bytes");
    assert_eq!(got[0].path, s.cache.deb_path(&a.sha256));
    assert_eq!(fake.calls.lock().unwrap().len(), 2);
    // Only the final files exist: no temp files left.
    assert_eq!(
        files_under(s.cache.root()).len(),
        2,
        "{:?}",
        files_under(s.cache.root())
    );

    let again = fetch_all(&s.ctx(&Offline), &l, Arch::Arm64, None).unwrap();
    assert_eq!(again, got);
    // A warm cache does not even need the suite's mirror.
    let empty = Sources::default();
    let ctx = FetchContext {
        sources: &empty,
        ..s.ctx(&Offline)
    };
    assert_eq!(fetch_all(&ctx, &l, Arch::Arm64, None).unwrap(), got);
    // Other arches and roles select nothing here.
    assert!(fetch_all(&s.ctx(&Offline), &l, Arch::X86_64, None)
        .unwrap()
        .is_empty());
    assert!(
        fetch_all(&s.ctx(&Offline), &l, Arch::Arm64, Some(Role::Kernel))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn corrupted_cached_file_is_removed_and_fetched_again() {
    let s = setup();
    let bytes = b"the real package content".to_vec();
    let p = package("pkg", &bytes);
    let path = s.cache.deb_path(&p.sha256);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut fake = FakeArchive::default();
    fake.files
        .insert(format!("{URI}/{}", p.filename), bytes.clone());
    let l = lock(vec![p.clone()]);

    // Same size, one byte flipped: only hashing can tell.
    let mut bad = bytes.clone();
    bad[3] ^= 0x20;
    std::fs::write(&path, &bad).unwrap();
    assert_eq!(s.cache.lookup(&p).unwrap(), None);
    assert!(!path.exists(), "a corrupt file must be removed");

    // Truncated, then through fetch_all: re-fetched and correct.
    std::fs::write(&path, &bytes[..5]).unwrap();
    let got = fetch_all(&s.ctx(&fake), &l, Arch::Arm64, None).unwrap();
    assert_eq!(std::fs::read(&got[0].path).unwrap(), bytes);
    assert_eq!(fake.calls.lock().unwrap().len(), 1);

    // The repaired file is now used as is, and sha256sum agrees with the lock.
    assert_eq!(s.cache.lookup(&p).unwrap(), Some(path.clone()));
    let out = HostRunner.run(&Cmd::new("sha256sum").arg(&path)).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&p.sha256));
}

#[test]
fn wrong_bytes_from_the_archive_are_an_error_and_leave_nothing() {
    let s = setup();
    let p = package("pkg", b"expected bytes");
    for served in [
        b"unexpected!!!!".to_vec(),
        b"short".to_vec(),
        b"expected bytes and then some more".to_vec(),
    ] {
        let mut fake = FakeArchive::default();
        fake.files.insert(format!("{URI}/{}", p.filename), served);
        let err = fetch_all(&s.ctx(&fake), &lock(vec![p.clone()]), Arch::Arm64, None).unwrap_err();
        assert!(matches!(err, FetchError::Mismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("pkg 1.0-1 (arm64)") && msg.contains("nothing was cached"),
            "{msg}"
        );
        assert!(!s.cache.deb_path(&p.sha256).exists());
        assert!(
            files_under(s.cache.root()).is_empty(),
            "{:?}",
            files_under(s.cache.root())
        );
    }
}

#[test]
fn vanished_pin_says_how_to_relock() {
    let s = setup();
    let p = package("containerd", b"gone");
    let err = fetch_all(
        &s.ctx(&FakeArchive::default()),
        &lock(vec![p]),
        Arch::Arm64,
        None,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "containerd 1.0-1 (arm64) is no longer served by the archive and is not in the cache; run `kiln lock --update profiles/qemu.toml`"
    );
}

#[test]
fn network_failure_says_retry_and_unknown_suite_is_named() {
    struct Down;
    impl Downloader for Down {
        fn download(&self, url: &str, _: &mut dyn Write) -> Result<(), DownloadError> {
            Err(DownloadError::Network {
                url: url.into(),
                message: "connection refused".into(),
            })
        }
    }
    let s = setup();
    let p = package("runc", b"x");
    let err = fetch_all(&s.ctx(&Down), &lock(vec![p.clone()]), Arch::Arm64, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("runc 1.0-1 (arm64)")
            && err.contains("connection refused")
            && err.contains("retry"),
        "{err}"
    );
    let mut q = p;
    q.suite = "bookworm-security".into();
    let err = fetch_all(&s.ctx(&Down), &lock(vec![q]), Arch::Arm64, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"bookworm-security\"") && err.contains("test.sources"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Integration tests against the real Debian archive (network). They fail,
// never skip, when the archive cannot be reached.

#[test]
fn archive_integration_real_download_is_a_valid_deb_and_404_is_vanished() {
    let dir = tempfile::tempdir().unwrap();
    let sources = Sources::from_host().unwrap();
    let debian = crate::profile::Debian {
        suites: vec!["bookworm".into(), "bookworm-security".into()],
        components: vec!["main".into()],
        essential: false,
        extra_suites: Vec::new(),
    };
    let apt = AptArchive::prepare(dir.path(), Arch::Arm64, &debian, &sources).unwrap();
    apt.update(&HostRunner).unwrap_or_else(|e| {
        panic!("integration test needs the Debian archive from the host's apt sources: {e}")
    });
    let index = apt.index(&HostRunner).unwrap();
    let wanted = vec!["usr-is-merged".to_string()];
    let locked = crate::lock::resolve(
        &index,
        &Request {
            arch: Arch::Arm64,
            packages: &wanted,
            essential: false,
            kernel: None,
            boot: None,
            pins: &[],
        },
    )
    .unwrap();
    let l = lock(locked);
    let cache = Cache::new(dir.path().join("cache"));
    let progress = ProgressBar::hidden();
    let http = HttpDownloader::new();
    let ctx = FetchContext {
        cache: &cache,
        sources: &sources,
        downloader: &http,
        profile: Path::new("profiles/qemu.toml"),
        progress: &progress,
    };
    let got = fetch_all(&ctx, &l, Arch::Arm64, None)
        .unwrap_or_else(|e| panic!("integration test needs the Debian archive: {e}"));
    assert_eq!(got.len(), l.packages.len());
    for f in &got {
        // dpkg-deb reads the control data of what we downloaded.
        let out = HostRunner
            .run(
                &Cmd::new("dpkg-deb")
                    .args(["-f"])
                    .arg(&f.path)
                    .args(["Package", "Version"]),
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            text.contains(&format!("Package: {}", f.package.name))
                && text.contains(&format!("Version: {}", f.package.version)),
            "{text}"
        );
    }
    // Warm: no network.
    let offline = FetchContext {
        downloader: &Offline,
        ..ctx
    };
    assert_eq!(fetch_all(&offline, &l, Arch::Arm64, None).unwrap(), got);

    // A pin the archive does not serve.
    let mut gone = l.packages[0].clone();
    gone.name = "kiln-no-such-package".into();
    gone.filename = "pool/main/k/kiln-no-such-package/kiln-no-such-package_0.0-0_all.deb".into();
    gone.sha256 = "0".repeat(64);
    let err = FetchContext {
        downloader: &http,
        ..offline
    }
    .fetch(&gone)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("is no longer served by the archive")
            && err.contains("kiln lock --update profiles/qemu.toml"),
        "{err}"
    );
}
