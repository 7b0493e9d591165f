//! The machine behind [`ApplySys`]: the boot disk found from `/` (or the disks a test
//! names), positioned reads and writes on it, the ESP mounted at `/efi` by the boot
//! side's [`esp::mount_esp`], and files, the clock, the console and programs from
//! [`RealSys`].

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use kiln_contract::boot::ESP_MOUNT;
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

use super::super::esp;
use super::super::fetch::{self, BundleStream, FetchError, FetchOptions};
use super::ApplySys;
use crate::config::blockdev::SYS_BLOCK;
use crate::sys::forward;
use crate::sys::real::{with_path, RealSys};

/// The real machine, with optional overrides for tests on loop devices.
pub struct RealApply {
    sys: RealSys,
    /// Open devices, read-write once written.
    open: BTreeMap<String, (File, bool)>,
    /// Some: search these disks instead of the boot disk.
    pub disks: Option<Vec<String>>,
    /// Some: the ESP's folder, used as it is (not mounted).
    pub esp: Option<String>,
    /// How bundles are downloaded.
    pub fetch: FetchOptions,
}

forward!(RealApply => sys: Files, Clock, Console, Exec);

impl Default for RealApply {
    fn default() -> Self {
        RealApply::new()
    }
}

impl RealApply {
    /// The running system.
    pub fn new() -> RealApply {
        RealApply {
            sys: RealSys::default(),
            open: BTreeMap::new(),
            disks: None,
            esp: None,
            fetch: FetchOptions::default(),
        }
    }

    fn file(&mut self, dev: &str, write: bool) -> io::Result<&File> {
        let reopen = match self.open.get(dev) {
            Some((_, rw)) => write && !rw,
            None => true,
        };
        if reopen {
            let file = OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(nix::libc::O_CLOEXEC)
                .open(dev)
                .map_err(|e| with_path(Path::new(dev), e))?;
            self.open.insert(dev.to_string(), (file, write));
        }
        self.open
            .get(dev)
            .map(|(f, _)| f)
            .ok_or_else(|| io::Error::other("device not open"))
    }

    /// The kernel name of a device path (`/dev/vda` → `vda`).
    fn name(dev: &str) -> &str {
        dev.rsplit('/').next().unwrap_or(dev)
    }
}

impl ApplySys for RealApply {
    fn open_bundle(&mut self, source: &str) -> Result<Box<dyn BundleStream>, FetchError> {
        fetch::open(source, &self.fetch)
    }

    fn disks(&mut self) -> Result<Vec<String>, String> {
        if let Some(d) = &self.disks {
            return Ok(d.clone());
        }
        let boot = esp::boot_device(&mut self.sys).map_err(|e| e.to_string())?;
        Ok(vec![format!("/dev/{}", boot.disk.disk)])
    }

    fn disk_bytes(&mut self, dev: &str) -> io::Result<u64> {
        let sectors = fs::read_to_string(format!("{SYS_BLOCK}/{}/size", Self::name(dev)))?;
        sectors
            .trim()
            .parse::<u64>()
            .map(|s| s * 512)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn sector_size(&mut self, dev: &str) -> io::Result<u64> {
        let path = format!("{SYS_BLOCK}/{}/queue/logical_block_size", Self::name(dev));
        fs::read_to_string(path)?
            .trim()
            .parse::<u64>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn read_at(&mut self, dev: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file(dev, false)?.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn write_at(&mut self, dev: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file(dev, true)?.write_all_at(data, offset)
    }

    fn sync_disk(&mut self, dev: &str) -> io::Result<()> {
        let file = self.file(dev, true)?;
        file.sync_all()?;
        // The written pages are clean now: dropping them makes the read-back that
        // follows (the verity tree, the GPT check) read the device, not the cache.
        let _ = posix_fadvise(
            file.as_raw_fd(),
            0,
            0,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        Ok(())
    }

    fn esp_dir(&mut self) -> Result<String, String> {
        if let Some(d) = &self.esp {
            return Ok(d.clone());
        }
        let boot = esp::boot_device(&mut self.sys).map_err(|e| e.to_string())?;
        esp::mount_esp(&mut self.sys, &boot.esp).map_err(|e| e.to_string())?;
        Ok(ESP_MOUNT.to_string())
    }

    fn free_bytes(&mut self, dir: &str) -> io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    fn file_len(&mut self, path: &str) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn write_synced(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(path).map_err(|e| with_path(Path::new(path), e))?;
        f.write_all(data)?;
        f.sync_all()
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        crate::update::rename_durably(from, to)
    }

    fn sync_dir(&mut self, dir: &str) -> io::Result<()> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(Path::new(dir), e))
    }

    fn is_terminal(&mut self) -> bool {
        io::stdout().is_terminal()
    }
}
