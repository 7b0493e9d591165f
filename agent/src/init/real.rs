//! The real machine behind [`InitSys`]: syscalls through nix, block devices through std
//! (files, the clock, the console, /dev/urandom and programs are [`RealSys`]'s).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};

use super::fsutil::{remove_tree_on_dev, resolve_in_root, RemoveStats};
use super::modules::ModuleError;
use super::InitSys;
use crate::cmdline::FailureAction;
use crate::sys::real::RealSys;
use crate::sys::{forward, Console};

/// statfs magic of ramfs (the kernel's `RAMFS_MAGIC`), which nix does not name.
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// The running system. Block device lookups go through `sys_block` and `dev` so that
/// tests can point them at a directory that looks like sysfs.
#[derive(Debug)]
pub struct RealInit {
    /// Normally /sys/class/block.
    pub sys_block: PathBuf,
    /// Normally /dev.
    pub dev: PathBuf,
    sys: RealSys,
}

forward!(RealInit => sys: Files, Clock, Console, Random, Exec);

impl Default for RealInit {
    fn default() -> Self {
        RealInit::new(PathBuf::from("/sys/class/block"), PathBuf::from("/dev"))
    }
}

impl RealInit {
    /// A RealInit looking for block devices in the given directories.
    pub fn new(sys_block: PathBuf, dev: PathBuf) -> Self {
        RealInit {
            sys_block,
            dev,
            sys: RealSys::default(),
        }
    }
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32))
}

fn fd_is_open(fd: i32) -> bool {
    fcntl(fd, FcntlArg::F_GETFD).is_ok()
}

impl InitSys for RealInit {
    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        mount(Some(source), target, fstype, flags, data)
    }

    fn umount_detach(&mut self, target: &str) -> Result<(), Errno> {
        umount2(target, MntFlags::MNT_DETACH)
    }

    fn ensure_console(&mut self) {
        // Without /dev/console in the initramfs the kernel starts init with fds 0-2
        // closed and every message would be lost; open the console now that devtmpfs
        // provides it.
        let missing: Vec<i32> = (0..3).filter(|fd| !fd_is_open(*fd)).collect();
        if missing.is_empty() {
            return;
        }
        let Ok(console) = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
        else {
            return;
        };
        let fd = console.into_raw_fd();
        for &target in &missing {
            if target != fd {
                let _ = nix::unistd::dup2(fd, target);
            }
        }
        if !missing.contains(&fd) {
            let _ = nix::unistd::close(fd);
        }
    }

    fn load_module(&mut self, path: &str) -> Result<(), ModuleError> {
        let file = File::open(path).map_err(|e| ModuleError::Open(errno_of(&e)))?;
        finit_module(&file, c"", ModuleInitFlags::empty()).map_err(ModuleError::Load)
    }

    fn list_block(&mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.sys_block)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn read_sysfs_block(&mut self, rel: &str) -> io::Result<String> {
        fs::read_to_string(self.sys_block.join(rel))
    }

    fn read_dev(&mut self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let path = self.dev.join(name);
        let file = File::open(&path)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn dev_exists(&mut self, name: &str) -> bool {
        self.dev.join(name).exists()
    }

    fn exists_in_root(&mut self, root: &str, path: &str) -> bool {
        resolve_in_root(Path::new(root), path).is_some_and(|p| p.is_file())
    }

    fn remove_old_root(&mut self) -> Result<String, String> {
        // Only ever delete an initramfs: run by mistake on an installed system, this
        // would otherwise wipe its root filesystem.
        let st = statfs("/").map_err(|e| format!("statfs /: {e}"))?;
        let magic = st.filesystem_type();
        if magic != TMPFS_MAGIC && magic.0 as u64 != RAMFS_MAGIC {
            return Err("/ is not a ramfs or tmpfs, so it is not an initramfs".to_string());
        }
        let dev = fs::symlink_metadata("/")
            .map_err(|e| format!("stat /: {e}"))?
            .dev();
        let mut stats = RemoveStats::default();
        remove_tree_on_dev(Path::new("/"), dev, &mut stats);
        let mut summary = format!(
            "{} files and {} directories removed ({} mount points skipped)",
            stats.files, stats.dirs, stats.skipped_mounts
        );
        if let Some(first) = stats.first_error {
            summary.push_str(&format!("; {} errors, first: {first}", stats.errors));
        }
        Ok(summary)
    }

    fn chdir(&mut self, path: &str) -> Result<(), Errno> {
        nix::unistd::chdir(path)
    }

    fn chroot(&mut self, path: &str) -> Result<(), Errno> {
        nix::unistd::chroot(path)
    }

    fn exec(&mut self, path: &str, argv: &[String]) -> Result<(), Errno> {
        let to_c = |s: &str| CString::new(s).map_err(|_| Errno::EINVAL);
        let cpath = to_c(path)?;
        let cargs = argv
            .iter()
            .map(|a| to_c(a))
            .collect::<Result<Vec<_>, _>>()?;
        match nix::unistd::execv(&cpath, &cargs) {
            Ok(never) => match never {},
            Err(e) => Err(e),
        }
    }

    fn halt(&mut self, action: FailureAction) {
        let mode = match action {
            FailureAction::Halt => None,
            FailureAction::Poweroff => Some(RebootMode::RB_POWER_OFF),
            FailureAction::Reboot => Some(RebootMode::RB_AUTOBOOT),
        };
        if let Some(mode) = mode {
            nix::unistd::sync();
            let Err(e) = reboot(mode);
            self.say(&format!(
                "kiln-init: reboot(2) failed: {e}; halting instead"
            ));
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    fn dm_ioctl(&mut self, nr: u8, buf: &mut [u8]) -> Result<(), Errno> {
        let path = self.dev.join("mapper/control");
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| errno_of(&e))?;
        crate::ioctl::dm(&control, nr, buf)
    }

    fn read_dev_all(&mut self, name: &str) -> Result<u64, (u64, io::Error)> {
        let path = self.dev.join(name);
        let file = File::open(&path).map_err(|e| (0, e))?;
        let size = file.metadata().map_err(|e| (0, e))?.len();
        // A block device's metadata length is 0; ask where it ends instead.
        let size = if size > 0 {
            size
        } else {
            use std::io::Seek;
            (&file).seek(io::SeekFrom::End(0)).map_err(|e| (0, e))?
        };
        // dm-verity checks blocks on the CPU that completes each read: several
        // readers in flight keep every CPU hashing instead of one.
        let readers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4) as u64;
        let chunk = super::verity::FULL_CHECK_READ as u64;
        let chunks = size.div_ceil(chunk);
        let first_error = std::thread::scope(|s| {
            let handles: Vec<_> = (0..readers)
                .map(|r| {
                    let file = &file;
                    s.spawn(move || -> Option<(u64, io::Error)> {
                        let mut buf = vec![0u8; chunk as usize];
                        let mut i = r;
                        while i < chunks {
                            let offset = i * chunk;
                            let len = chunk.min(size - offset) as usize;
                            if let Err(e) = file.read_exact_at(&mut buf[..len], offset) {
                                return Some((offset, e));
                            }
                            // The pages were only read to be checked; on a small VM they
                            // would crowd out the system's own. Failing to drop them
                            // costs memory, not correctness.
                            let _ = nix::fcntl::posix_fadvise(
                                file.as_raw_fd(),
                                offset as i64,
                                len as i64,
                                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                            );
                            i += readers;
                        }
                        None
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Some((0, io::Error::other("a reader thread panicked"))))
                })
                .min_by_key(|(offset, _)| *offset)
        });
        match first_error {
            Some(e) => Err(e),
            None => Ok(size),
        }
    }

    fn write_dev(&mut self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        // No O_CREAT: a missing node must fail, not become a regular file in /dev.
        let file = OpenOptions::new().write(true).open(self.dev.join(name))?;
        file.write_all_at(data, offset)
    }

    fn sync_dev(&mut self, name: &str) -> io::Result<()> {
        // fsync on any descriptor of a block device flushes its whole page cache and
        // the device's write cache.
        OpenOptions::new()
            .write(true)
            .open(self.dev.join(name))?
            .sync_all()
    }

    fn reread_partitions(&mut self, disk: &str) -> Result<(), Errno> {
        let file = File::open(self.dev.join(disk)).map_err(|e| errno_of(&e))?;
        crate::ioctl::blkrrpart(&file)
    }

    fn resolve_in_root(&mut self, root: &str, path: &str) -> Option<String> {
        resolve_in_root(Path::new(root), path)
            .filter(|p| p.is_file())
            .map(|p| p.to_string_lossy().into_owned())
    }
}
