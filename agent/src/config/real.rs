//! The running system behind [`ConfigSys`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::cloud;
use super::schema::MAX_CONFIG_BYTES;
use super::{ChannelFailure, ConfigSys, CLOUD_BUDGET, KERNEL_HOSTNAME};
use crate::report::real::run_with_timeout;
use crate::report::CommandResult;

/// Where DMI data is (for cloud detection).
pub const DMI_DIR: &str = "/sys/class/dmi/id";

/// How long `modprobe` may take.
const MODPROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The running system.
#[derive(Debug, Default)]
pub struct RealConfigSys;

fn with_path(path: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{path}: {e}"))
}

impl ConfigSys for RealConfigSys {
    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        // One byte past the limit is enough to tell "too large" without reading a huge
        // file into memory.
        let mut buf = Vec::new();
        File::open(path)?
            .take(MAX_CONFIG_BYTES as u64 + 1)
            .read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn exists(&mut self, path: &str) -> bool {
        Path::new(path).exists()
    }

    fn read_dev(&mut self, dev: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = File::open(dev)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn root_dev(&mut self) -> io::Result<(u64, u64)> {
        let dev = fs::metadata("/")?.dev();
        Ok((nix::sys::stat::major(dev), nix::sys::stat::minor(dev)))
    }

    fn mount_ro(&mut self, dev: &str, target: &str, fstype: &str) -> Result<(), String> {
        fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some(dev), target, Some(fstype), flags, None::<&str>)
            .map_err(|e| format!("mount {dev} on {target}: {}", e.desc()))
    }

    fn umount(&mut self, target: &str) -> Result<(), String> {
        umount2(target, MntFlags::empty())
            .or_else(|_| umount2(target, MntFlags::MNT_DETACH))
            .map_err(|e| format!("umount {target}: {}", e.desc()))
    }

    fn modprobe(&mut self, module: &str) -> Result<(), String> {
        match run_with_timeout("modprobe", &["-q", module], MODPROBE_TIMEOUT) {
            CommandResult::Exited { success: true, .. } => Ok(()),
            CommandResult::Exited { .. } => Err(format!("modprobe {module} failed")),
            CommandResult::TimedOut => Err(format!(
                "modprobe {module} did not finish within {} s",
                MODPROBE_TIMEOUT.as_secs()
            )),
            CommandResult::Failed(why) => Err(why),
        }
    }

    fn cloud(&mut self) -> Result<Option<cloud::CloudUserData>, ChannelFailure> {
        cloud::fetch(Path::new(DMI_DIR), CLOUD_BUDGET).map_err(|e| ChannelFailure {
            channel: e.provider,
            place: e.source.clone(),
            message: e.kind.to_string(),
        })
    }

    fn set_hostname(&mut self, name: &str) -> io::Result<()> {
        fs::write(KERNEL_HOSTNAME, name.as_bytes()).map_err(|e| with_path(KERNEL_HOSTNAME, e))
    }

    fn write_file_atomic(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        write_atomic(Path::new(path), data)
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn say(&mut self, line: &str) {
        let _ = writeln!(io::stdout().lock(), "{line}");
    }
}

/// Writes `data` to a temporary file next to `path`, syncs it and renames it over
/// `path`, so readers see the old file or the new one, never half of one. Errors name
/// the path.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let shown = path.display().to_string();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| with_path(&dir.display().to_string(), e))?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{shown}: no file name"),
        )
    })?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let tmp_shown = tmp.display().to_string();
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| with_path(&tmp_shown, e))?;
    // Root only: the merged config is where enrollment secrets will land.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| with_path(&tmp_shown, e))?;
    file.write_all(data).map_err(|e| with_path(&tmp_shown, e))?;
    file.sync_all().map_err(|e| with_path(&tmp_shown, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| with_path(&shown, e))
}
