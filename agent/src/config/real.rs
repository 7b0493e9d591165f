//! The running system behind [`ConfigSys`] and [`BlockSys`]: devices, mounts, the hostname and the cloud
//! (files, the clock, the console and programs are [`RealSys`]'s own).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::blockdev::BlockSys;
use super::cloud;
use super::{ChannelFailure, ConfigSys, CLOUD_BUDGET, KERNEL_HOSTNAME};
use crate::sys::real::{with_path, RealSys};

/// Where DMI data is (for cloud detection).
pub const DMI_DIR: &str = "/sys/class/dmi/id";

impl BlockSys for RealSys {
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
}

impl ConfigSys for RealSys {
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

    fn cloud(&mut self) -> Result<Option<cloud::CloudUserData>, ChannelFailure> {
        cloud::fetch(Path::new(DMI_DIR), CLOUD_BUDGET).map_err(|e| ChannelFailure {
            channel: e.provider,
            place: e.source.clone(),
            message: e.kind.to_string(),
        })
    }

    fn set_hostname(&mut self, name: &str) -> io::Result<()> {
        fs::write(KERNEL_HOSTNAME, name.as_bytes())
            .map_err(|e| with_path(Path::new(KERNEL_HOSTNAME), e))
    }
}
