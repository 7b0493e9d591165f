//! The running system behind [`ReportSys`]: uname, statvfs and the write probe (files,
//! programs and stderr are [`RealSys`]'s own).

use std::io;

use super::ReportSys;
use crate::sys::real::RealSys;
use crate::sys::Console;

impl ReportSys for RealSys {
    fn uname(&mut self) -> (String, String) {
        match nix::sys::utsname::uname() {
            Ok(u) => (
                u.machine().to_string_lossy().into_owned(),
                u.release().to_string_lossy().into_owned(),
            ),
            Err(e) => {
                self.note(&format!("kiln-report: uname: {e}"));
                ("unknown".to_string(), "unknown".to_string())
            }
        }
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
    fn write_probe_leaves_nothing_and_reports_the_errno() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(try_create_in(dir.path()), Ok(()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = dir.path().join("missing");
        assert_eq!(try_create_in(&missing), Err(nix::errno::Errno::ENOENT));
        let size = RealSys::default()
            .fs_size(&dir.path().to_string_lossy())
            .unwrap();
        assert!(size > 0);
    }

    #[test]
    fn uname_matches_the_build_target() {
        let (machine, release) = RealSys::default().uname();
        assert_eq!(machine, std::env::consts::ARCH);
        assert!(!release.is_empty());
    }
}
