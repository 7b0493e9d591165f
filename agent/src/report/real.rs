//! The running system behind [`ReportSys`].

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{CommandResult, ReportSys};

/// The running system.
#[derive(Debug, Default)]
pub struct RealReport;

/// How often a running command is checked for exit.
const POLL: Duration = Duration::from_millis(50);

/// Runs `program args`, killing it after `timeout`; stdout is collected on a thread so a
/// chatty program cannot block on a full pipe.
pub fn run_with_timeout(program: &str, args: &[&str], timeout: Duration) -> CommandResult {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return CommandResult::Failed(format!("{program}: {e}")),
    };
    let reader = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            buf
        })
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() >= timeout => break None,
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return CommandResult::Failed(format!("waiting for {program}: {e}"));
            }
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        // A grandchild could keep the pipe open, so the reader is not joined here.
        return CommandResult::TimedOut;
    };
    let stdout = reader
        .and_then(|r| r.join().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    CommandResult::Exited {
        success: status.success(),
        stdout,
    }
}

impl ReportSys for RealReport {
    fn uname(&mut self) -> (String, String) {
        match nix::sys::utsname::uname() {
            Ok(u) => (
                u.machine().to_string_lossy().into_owned(),
                u.release().to_string_lossy().into_owned(),
            ),
            Err(e) => {
                self.note(&format!("uname: {e}"));
                ("unknown".to_string(), "unknown".to_string())
            }
        }
    }

    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn run(&mut self, program: &str, args: &[&str], timeout: Duration) -> CommandResult {
        run_with_timeout(program, args, timeout)
    }

    fn note(&mut self, msg: &str) {
        let _ = writeln!(io::stderr(), "kiln-report: {msg}");
    }

    fn fs_size(&mut self, path: &str) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(path).ok()?;
        Some(st.blocks().saturating_mul(st.fragment_size()))
    }

    fn try_create(&mut self, dir: &str) -> Result<(), nix::errno::Errno> {
        try_create_in(std::path::Path::new(dir))
    }
}

/// Creates and removes a probe file in `dir`. Without O_EXCL a leftover probe is
/// reused; a read-only filesystem refuses the open for writing either way (EROFS comes
/// before permission checks, so this holds for any user).
pub fn try_create_in(dir: &std::path::Path) -> Result<(), nix::errno::Errno> {
    let path = dir.join(".kiln-report-write-probe");
    let errno =
        |e: io::Error| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(errno)?;
    std::fs::remove_file(&path).map_err(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_captures_stdout() {
        let r = run_with_timeout(
            "sh",
            &["-c", "echo degraded; exit 1"],
            Duration::from_secs(10),
        );
        assert_eq!(
            r,
            CommandResult::Exited {
                success: false,
                stdout: "degraded\n".into()
            }
        );
    }

    #[test]
    fn kills_on_timeout() {
        let start = Instant::now();
        let r = run_with_timeout("sleep", &["30"], Duration::from_millis(300));
        assert_eq!(r, CommandResult::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_is_a_failure() {
        let r = run_with_timeout("/nonexistent/systemctl", &[], Duration::from_secs(1));
        assert!(matches!(r, CommandResult::Failed(ref m) if m.contains("/nonexistent/systemctl")));
    }

    #[test]
    fn write_probe_leaves_nothing_and_reports_the_errno() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(try_create_in(dir.path()), Ok(()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = dir.path().join("missing");
        assert_eq!(try_create_in(&missing), Err(nix::errno::Errno::ENOENT));
        let size = RealReport.fs_size(&dir.path().to_string_lossy()).unwrap();
        assert!(size > 0);
    }

    #[test]
    fn uname_matches_the_build_target() {
        let (machine, release) = RealReport.uname();
        assert_eq!(machine, std::env::consts::ARCH);
        assert!(!release.is_empty());
    }
}
