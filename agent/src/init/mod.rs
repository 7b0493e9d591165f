//! `init` mode: the initramfs's PID 1. Mounts the API filesystems, loads the listed
//! modules, finds the root partition by GPT type, mounts it read-only and hands over to
//! the system's init. Any failure is printed and the machine is halted, never left in a
//! silent hang and never with PID 1 exiting (which panics the kernel). A boot on trial
//! (a new version whose UKI systemd-boot booted with a boot counter) reboots instead,
//! after [`TRIAL_REBOOT_DELAY`], so that systemd-boot counts the attempt and falls back
//! to the previous version once the attempts run out.
//!
//! The steps are written against [`InitSys`], so the whole sequence is tested with a fake.

pub mod fsutil;
pub mod machine_id;
pub mod modules;
pub mod real;
pub mod root;
pub mod var;
pub mod verity;

use std::io;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::cmdline::{self, FailureAction, InitOptions};
use crate::sys::{Clock, Console, Exec, Files, Random};
use crate::update::efivars::{self, TrialBoot};
use modules::{load_all, parse_modules_load, ModuleError, ModuleResults, MODULES_LOAD};
use root::{describe_type, wait_for_root, RootPartition};

/// Where the root filesystem is mounted before the switch.
pub const SYSROOT: &str = "/sysroot";

/// Programs tried, in order, as the system's init.
pub const INIT_CANDIDATES: [&str; 3] = [
    "/sbin/init",
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd",
];

/// Every effect init has on the machine: files, the clock, the console, random bytes
/// (the machine-id, partition GUIDs), programs (mke2fs), and the below.
/// [`real::RealInit`] does them; tests use a fake.
pub trait InitSys: Files + Clock + Console + Random + Exec {
    /// mount(2).
    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// umount2(2) with MNT_DETACH.
    fn umount_detach(&mut self, target: &str) -> Result<(), Errno>;
    /// Makes sure fds 0-2 are open on /dev/console (once /dev is mounted).
    fn ensure_console(&mut self);
    /// finit_module(2) on the file at `path`, without parameters.
    fn load_module(&mut self, path: &str) -> Result<(), ModuleError>;
    /// Names under /sys/class/block.
    fn list_block(&mut self) -> io::Result<Vec<String>>;
    /// Reads /sys/class/block/`rel`.
    fn read_sysfs_block(&mut self, rel: &str) -> io::Result<String>;
    /// Reads `len` bytes at `offset` of /dev/`name`.
    fn read_dev(&mut self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// True if /dev/`name` exists.
    fn dev_exists(&mut self, name: &str) -> bool;
    /// True if `path` names an existing file once `root` is `/` (symlinks resolved
    /// inside `root`).
    fn exists_in_root(&mut self, root: &str, path: &str) -> bool;
    /// Deletes the initramfs's files (not crossing mount points), if `/` is an
    /// initramfs. Returns a one-line summary.
    fn remove_old_root(&mut self) -> Result<String, String>;
    /// chdir(2).
    fn chdir(&mut self, path: &str) -> Result<(), Errno>;
    /// chroot(2).
    fn chroot(&mut self, path: &str) -> Result<(), Errno>;
    /// execv(2). Returns only on failure (a fake returns Ok to mean "it ran").
    fn exec(&mut self, path: &str, argv: &[String]) -> Result<(), Errno>;
    /// Stops for good: sleeps forever, powers off or reboots. Only a fake returns.
    fn halt(&mut self, action: FailureAction);
    /// Device-mapper ioctl `nr` on /dev/mapper/control; `buf` holds a `struct dm_ioctl`
    /// and its payload (built by [`crate::dm`]) and receives the kernel's reply. ENOENT:
    /// there is no control device (dm-mod not loaded).
    fn dm_ioctl(&mut self, nr: u8, buf: &mut [u8]) -> Result<(), Errno>;
    /// Reads all of /dev/`name` front to back in large reads without keeping it in the
    /// page cache. Returns the bytes read, or the offset of the failed read and its error.
    fn read_dev_all(&mut self, name: &str) -> Result<u64, (u64, io::Error)>;
    /// Writes `data` at byte `offset` of /dev/`name` (buffered: see `sync_dev`).
    fn write_dev(&mut self, name: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Flushes what was written to /dev/`name` down to the device (fsync).
    fn sync_dev(&mut self, name: &str) -> io::Result<()>;
    /// Makes the kernel re-read /dev/`disk`'s partition table (BLKRRPART).
    fn reread_partitions(&mut self, disk: &str) -> Result<(), Errno>;
    /// Where `path` leads once `root` is `/` (symlinks resolved inside `root`), as a
    /// path usable now; None unless it is an existing file.
    fn resolve_in_root(&mut self, root: &str, path: &str) -> Option<String>;
}

/// How far init got when it failed, which decides the final message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    BeforeRoot,
    AfterRoot,
    Var,
}

/// A failure that stops the boot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fatal {
    stage: Stage,
    message: String,
}

fn fatal(stage: Stage, message: String) -> Fatal {
    Fatal { stage, message }
}

fn say(sys: &mut dyn InitSys, msg: &str) {
    sys.say(&format!("kiln-init: {msg}"));
}

/// Runs init. `init_args` are the arguments init was given (passed on to the system's
/// init). Returns only if the Sys's exec or halt returns (tests).
pub fn run(sys: &mut dyn InitSys, init_args: &[String]) {
    let mut on_failure = FailureAction::Halt;
    if let Err(f) = boot(sys, init_args, &mut on_failure) {
        say(sys, &format!("FATAL: {}", f.message));
        let why = match f.stage {
            Stage::BeforeRoot => "the root filesystem could not be mounted",
            Stage::AfterRoot => "the system's init could not be started",
            Stage::Var => "/var could not be set up on the var partition",
        };
        if let Some(trial) = trial_boot(sys) {
            let then = if trial.last() {
                "; it was the last one: systemd-boot falls back to the previous version"
            } else {
                ""
            };
            say(
                sys,
                &format!(
                    "{why}; this boot is on trial (attempt {} of {}): rebooting in {} s so that \
                     systemd-boot counts the attempt{then}",
                    trial.attempt(),
                    trial.attempts(),
                    TRIAL_REBOOT_DELAY.as_secs()
                ),
            );
            sys.sleep(TRIAL_REBOOT_DELAY);
            sys.halt(FailureAction::Reboot);
            return;
        }
        say(sys, &format!("halting; {why}"));
        match on_failure {
            FailureAction::Halt => {}
            FailureAction::Poweroff => say(sys, "powering off (kiln.on_failure=poweroff)"),
            FailureAction::Reboot => say(sys, "rebooting (kiln.on_failure=reboot)"),
        }
        sys.halt(on_failure);
    }
}

/// How long a failed boot on trial leaves its message on the console before it reboots.
pub const TRIAL_REBOOT_DELAY: Duration = Duration::from_secs(5);

/// The booted UKI when this boot is on trial (systemd-boot's `LoaderBootCountPath`), read
/// through efivarfs, which is mounted for it (under /sys, or /sysroot/sys once /sys has
/// moved there). Anything unreadable is said and counts as not on trial.
fn trial_boot<S: InitSys + ?Sized>(sys: &mut S) -> Option<TrialBoot> {
    let sysfs = ["/sys", "/sysroot/sys"]
        .into_iter()
        .find(|s| sys.exists(&format!("{s}/firmware")))?;
    let mount = |s: &mut S, target: &str| {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        s.mount("efivarfs", target, Some("efivarfs"), flags, None)
    };
    match efivars::read(sys, sysfs, mount) {
        Ok(vars) => vars.trial(),
        Err(e) => {
            sys.say(&format!(
                "kiln-init: cannot tell whether this boot is on trial: {e}"
            ));
            None
        }
    }
}

fn mount_api_filesystems(sys: &mut dyn InitSys) -> Result<(), Fatal> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let mounts: [(&str, &str, MsFlags, Option<&str>); 3] = [
        ("proc", "/proc", hardened, None),
        ("sysfs", "/sys", hardened, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
    ];
    for (fstype, target, flags, data) in mounts {
        sys.mkdir(target)
            .map_err(|e| fatal(Stage::BeforeRoot, format!("creating {target}: {e}")))?;
        match sys.mount(fstype, target, Some(fstype), flags, data) {
            // Already there (e.g. the kernel mounted devtmpfs itself): fine.
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => {
                return Err(fatal(
                    Stage::BeforeRoot,
                    format!("mounting {fstype} on {target}: {e}"),
                ))
            }
        }
    }
    sys.ensure_console();
    say(sys, "mounted /proc, /sys and /dev");
    Ok(())
}

fn read_options(sys: &mut dyn InitSys, on_failure: &mut FailureAction) -> InitOptions {
    let text = match sys.read_file("/proc/cmdline") {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            say(
                sys,
                &format!("cannot read /proc/cmdline ({e}); using defaults"),
            );
            String::new()
        }
    };
    let opts = cmdline::parse(&text);
    *on_failure = opts.on_failure;
    for w in &opts.warnings {
        say(sys, &format!("warning: {w}"));
    }
    say(
        sys,
        &format!(
            "options: root_type={} rootwait={}s on_failure={} debug={}",
            opts.root_type,
            opts.root_wait.as_secs(),
            match opts.on_failure {
                FailureAction::Halt => "halt",
                FailureAction::Poweroff => "poweroff",
                FailureAction::Reboot => "reboot",
            },
            if opts.debug { "on" } else { "off" }
        ),
    );
    opts
}

fn load_modules(sys: &mut dyn InitSys, debug: bool) -> ModuleResults {
    let text = match sys.read_file(MODULES_LOAD) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            say(sys, &format!("no {MODULES_LOAD}; loading no modules"));
            return ModuleResults::default();
        }
        Err(e) => {
            say(
                sys,
                &format!("cannot read {MODULES_LOAD}: {e}; loading no modules"),
            );
            return ModuleResults {
                failed: vec![(MODULES_LOAD.to_string(), e.to_string())],
                ..ModuleResults::default()
            };
        }
    };
    let paths = parse_modules_load(&text);
    let results = load_all(sys, &paths, debug);
    say(
        sys,
        &format!(
            "modules: {} loaded, {} already present, {} failed (of {} in {MODULES_LOAD})",
            results.loaded,
            results.present,
            results.failed.len(),
            paths.len()
        ),
    );
    results
}

fn find_root(
    sys: &mut dyn InitSys,
    opts: &InitOptions,
    modules: &ModuleResults,
) -> Result<RootPartition, Fatal> {
    let root_uuid = opts.root_hash.as_ref().map(verity::root_part_uuid);
    let (root, others) = wait_for_root(
        sys,
        &opts.root_type,
        root_uuid.as_ref(),
        opts.root_wait,
        opts.debug,
    )
    .map_err(|nf| {
        fatal(
            Stage::BeforeRoot,
            format!("{}; {}", nf.message(), modules.failures_phrase()),
        )
    })?;
    say(
        sys,
        &format!(
            "root partition /dev/{} (partition {} of {}, PARTUUID {}{})",
            root.device,
            root.number,
            root.disk,
            root.part_uuid,
            if root.from_backup {
                ", from the backup GPT header"
            } else {
                ""
            }
        ),
    );
    if !others.is_empty() {
        say(
            sys,
            &format!(
                "warning: also of type {}, not used: {}",
                describe_type(&opts.root_type),
                others.join(", ")
            ),
        );
    }
    Ok(root)
}

/// Mounts `dev` (the root partition itself, or the dm-verity device over it) read-only
/// on [`SYSROOT`], then a tmpfs on /tmp.
fn mount_root(
    sys: &mut dyn InitSys,
    root: &RootPartition,
    dev: &str,
    modules: &ModuleResults,
) -> Result<(), Fatal> {
    sys.mkdir(SYSROOT)
        .map_err(|e| fatal(Stage::BeforeRoot, format!("creating {SYSROOT}: {e}")))?;
    if let Err(e) = sys.mount(dev, SYSROOT, Some("ext4"), MsFlags::MS_RDONLY, None) {
        let hint = match e {
            Errno::ENODEV => {
                "; the kernel has no ext4 driver: ext4.ko (with crc32c_generic, jbd2, mbcache, \
                 crc16) must be in modules.load"
            }
            Errno::EINVAL => "; the partition does not hold a valid ext4 filesystem",
            _ => "",
        };
        return Err(fatal(
            Stage::BeforeRoot,
            format!(
                "mounting {dev} (PARTUUID {}) read-only as ext4 on {SYSROOT}: {e}{hint}; {}",
                root.part_uuid,
                modules.failures_phrase()
            ),
        ));
    }
    say(sys, &format!("mounted {dev} read-only on {SYSROOT}"));
    let tmpfs: [(&str, MsFlags, &str); 1] =
        [("tmp", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=1777")];
    for (dir, flags, data) in tmpfs {
        let target = format!("{SYSROOT}/{dir}");
        if !sys.is_dir(&target) {
            say(
                sys,
                &format!("warning: no /{dir} in the root filesystem; not mounting a tmpfs"),
            );
            continue;
        }
        sys.mount("tmpfs", &target, Some("tmpfs"), flags, Some(data))
            .map_err(|e| {
                fatal(
                    Stage::BeforeRoot,
                    format!("mounting tmpfs on {target}: {e}"),
                )
            })?;
        say(sys, &format!("mounted tmpfs on /{dir} ({data})"));
    }
    Ok(())
}

fn switch_root(sys: &mut dyn InitSys, init_args: &[String], debug: bool) -> Result<(), Fatal> {
    let present: Vec<&str> = INIT_CANDIDATES
        .iter()
        .copied()
        .filter(|p| sys.exists_in_root(SYSROOT, p))
        .collect();
    if present.is_empty() {
        return Err(fatal(
            Stage::AfterRoot,
            format!(
                "no init program in the root filesystem: tried {} (is systemd in the image?)",
                INIT_CANDIDATES.join(", ")
            ),
        ));
    }
    for api in ["/dev", "/proc", "/sys"] {
        let target = format!("{SYSROOT}{api}");
        if sys.is_dir(&target) {
            sys.mount(api, &target, None, MsFlags::MS_MOVE, None)
                .map_err(|e| fatal(Stage::AfterRoot, format!("moving {api} to {target}: {e}")))?;
        } else {
            say(
                sys,
                &format!("warning: no {api} in the root filesystem; unmounting it"),
            );
            // Best effort: the system's init will complain about the missing mount.
            let _ = sys.umount_detach(api);
        }
    }
    match sys.remove_old_root() {
        Ok(summary) if debug => say(sys, &format!("initramfs cleaned up: {summary}")),
        Ok(_) => {}
        Err(why) => say(sys, &format!("warning: initramfs not cleaned up: {why}")),
    }
    let step = |r: Result<(), Errno>, what: &str| {
        r.map_err(|e| fatal(Stage::AfterRoot, format!("{what}: {e}")))
    };
    step(sys.chdir(SYSROOT), "chdir to /sysroot")?;
    step(
        sys.mount(".", "/", None, MsFlags::MS_MOVE, None),
        "moving /sysroot onto /",
    )?;
    step(sys.chroot("."), "chroot into the new root")?;
    step(sys.chdir("/"), "chdir to the new /")?;
    let mut errors = Vec::new();
    for path in present {
        let mut argv = vec![path.to_string()];
        argv.extend(init_args.iter().cloned());
        say(sys, &format!("switching to {path}"));
        match sys.exec(path, &argv) {
            Ok(()) => return Ok(()),
            Err(e) => {
                say(sys, &format!("cannot execute {path}: {e}"));
                errors.push(format!("{path}: {e}"));
            }
        }
    }
    Err(fatal(
        Stage::AfterRoot,
        format!(
            "could not execute the system's init ({})",
            errors.join("; ")
        ),
    ))
}

fn boot(
    sys: &mut dyn InitSys,
    init_args: &[String],
    on_failure: &mut FailureAction,
) -> Result<(), Fatal> {
    say(
        sys,
        &format!("kiln-agent {} starting", env!("CARGO_PKG_VERSION")),
    );
    mount_api_filesystems(sys)?;
    let opts = read_options(sys, on_failure);
    if !opts.errors.is_empty() {
        return Err(fatal(Stage::BeforeRoot, opts.errors.join("; ")));
    }
    let modules = load_modules(sys, opts.debug);
    let root = find_root(sys, &opts, &modules)?;
    // The partition table may only change while nothing on the disk is open.
    let var_plan = var::prepare(sys, &opts, &root)?;
    let dev = verity::open_root(sys, &opts, &root)?;
    mount_root(sys, &root, &dev, &modules)?;
    let var = var::mount(sys, &opts, var_plan)?;
    let mut args = init_args.to_vec();
    args.extend(machine_id::machine_id(sys, &var)?);
    switch_root(sys, &args, opts.debug)
}

#[cfg(test)]
mod tests;
