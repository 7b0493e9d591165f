//! The machine behind the capability traits: std's files, the clock, stdout and stderr,
//! /dev/urandom, child processes and the resolver.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{exec, Clock, Cmd, CommandResult, Console, Exec, Files, Random, Resolve};

/// The running system. Its monotonic clock starts when it is made.
#[derive(Debug, Clone)]
pub struct RealSys {
    start: Instant,
}

impl Default for RealSys {
    fn default() -> Self {
        RealSys {
            start: Instant::now(),
        }
    }
}

/// `e` with `path` in front, for errors that must say which of several files failed.
pub fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The folder of `path` (`.` for a bare name).
fn folder(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The temporary file next to `path` that [`write_atomic`] renames over it.
fn temporary(path: &Path) -> io::Result<std::path::PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: no file name", path.display()),
        )
    })?;
    Ok(folder(path).join(format!(".{}.tmp", name.to_string_lossy())))
}

/// Creates `dir` and its parents 0700, and makes an existing `dir` 0700 too.
pub fn mkdir_private(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| with_path(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| with_path(dir, e))
}

/// Replaces `path` with `data` (mode `mode`) through a temporary file, fsync, rename and
/// fsync of the folder, so readers and a power loss see the old file or the new one.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temporary(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // A leftover temporary file keeps its old mode; set it explicitly.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    File::open(folder(path))?.sync_all()
}

/// [`Files::write_private`] on the real file system.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = folder(path);
    mkdir_private(dir)?;
    let tmp = temporary(path)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| with_path(&tmp, e))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| with_path(&tmp, e))?;
    f.write_all(data).map_err(|e| with_path(&tmp, e))?;
    f.sync_all().map_err(|e| with_path(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| with_path(path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(dir, e))
}

impl Files for RealSys {
    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_prefix(&mut self, path: &str, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        File::open(path)?.take(max as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn exists(&mut self, path: &str) -> bool {
        Path::new(path).exists()
    }

    fn is_dir(&mut self, path: &str) -> bool {
        Path::new(path).is_dir()
    }

    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn modified(&mut self, path: &str) -> Option<u64> {
        let t = fs::metadata(path).ok()?.modified().ok()?;
        Some(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    fn mkdir(&mut self, path: &str) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn mkdir_private(&mut self, path: &str) -> io::Result<()> {
        mkdir_private(Path::new(path))
    }

    fn write_atomic(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
        write_atomic(Path::new(path), data, mode)
    }

    fn write_private(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        write_private(Path::new(path), data)
    }

    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(Path::new(path), e)),
            _ => Ok(()),
        }
    }
}

impl Clock for RealSys {
    fn now(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn elapsed(&mut self) -> Duration {
        self.start.elapsed()
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

impl Console for RealSys {
    fn say(&mut self, line: &str) {
        // Never panic on a console error: as PID 1 that would panic the kernel. Each line
        // reaches the console as it happens, not when the run ends.
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn note(&mut self, line: &str) {
        let _ = writeln!(io::stderr(), "{line}");
    }
}

impl Random for RealSys {
    fn random(&mut self, buf: &mut [u8]) -> io::Result<()> {
        // /dev/urandom never blocks, which early boot needs; by the time the agent runs
        // the kernel's generator is seeded on the machines kiln targets.
        File::open("/dev/urandom")?.read_exact(buf)
    }
}

impl Resolve for RealSys {
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        (host, port).to_socket_addrs().map(Iterator::collect)
    }
}

impl Exec for RealSys {
    fn run(&mut self, cmd: &Cmd<'_>) -> CommandResult {
        exec::run_command(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_root_only_atomic_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("run/kiln");
        let path = base.join("k3s/token");
        let p = path.to_str().unwrap();
        let mut sys = RealSys::default();
        sys.write_private(p, b"one").unwrap();
        sys.mkdir_private(base.join("etc").to_str().unwrap())
            .unwrap();
        sys.write_private(p, b"two").unwrap();
        assert_eq!(sys.read_file(p).unwrap(), b"two");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&base.join("k3s")), 0o700);
        assert_eq!(mode(&base.join("etc")), 0o700);
        // No temporary file is left behind.
        assert_eq!(
            sys.list_dir(base.join("k3s").to_str().unwrap()).unwrap(),
            ["token"]
        );
        let e = sys.write_private("/proc/nonexistent/x", b"").unwrap_err();
        assert!(e.to_string().contains("/proc/nonexistent"), "{e}");
        assert!(sys.modified(p).is_some());
        sys.remove_file(p).unwrap();
        sys.remove_file(p).unwrap();
        assert!(!sys.exists(p) && sys.modified(p).is_none());
    }

    #[test]
    fn atomic_writes_replace_the_file_with_its_mode_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("machine-id");
        let mut sys = RealSys::default();
        sys.write_atomic(p.to_str().unwrap(), b"one\n", 0o444)
            .unwrap();
        // Replacing a read-only file works: rename does not need write permission on it.
        sys.write_atomic(p.to_str().unwrap(), b"two\n", 0o444)
            .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let big = dir.path().join("big");
        fs::write(&big, [7u8; 100]).unwrap();
        assert_eq!(
            sys.read_prefix(big.to_str().unwrap(), 10).unwrap().len(),
            10
        );
    }
}
