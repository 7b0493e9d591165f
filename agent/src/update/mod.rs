//! `kiln-agent update`: A/B updates of the node's image.
//!
//! - [`apply`]: `update apply SOURCE`: check a signed bundle, write it into the slot
//!   that is not running, install its UKI on trial (with systemd-boot's boot counter).
//! - [`check`]: `update check` (kiln-update-check.timer): follow the node config's
//!   update channel, apply a newer version inside the maintenance window, reboot.
//! - [`fetch`]: where a bundle comes from: a local file or an http/https URL, read as a
//!   stream that resumes a broken download with a range request.
//! - [`slot`]: which slot runs, and rewriting the other slot's GPT entries.
//! - [`esp`]: the ESP mounted at `/efi`, the UKIs there, which slot and version each boots.
//! - [`efivars`]: the EFI variables systemd-boot sets (is this boot on trial?).
//! - [`state`]: what the node remembers under `/var/lib/kiln/update`: versions it rolled
//!   back from (never applied again by itself), failed health checks, the last apply.
//! - [`status`]: `update status [--json]`.
//! - [`health`]: `update boot` (kiln-update.service): after every boot, notice a rollback
//!   and say so on the console; when the boot is on trial, wait until the node is healthy
//!   (or fail, which reboots it).
//!
//! The boot side ([`esp`], [`efivars`], [`state`], [`status`], [`health`]) reaches the
//! machine through [`UpdateSys`] (block devices, files, the clock, the console, mounts,
//! renames) and the health checks through [`health::Probe`], so its decisions are tested
//! against fakes.

pub mod apply;
pub mod check;
pub mod efivars;
pub mod esp;
pub mod fetch;
pub mod health;
pub mod slot;
pub mod state;
pub mod status;

#[cfg(test)]
mod boot_fake;

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::process::ExitCode;

use kiln_contract::agent_config::{SettingsFile, UpdateTable, PATH as SETTINGS_PATH};
use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::config::blockdev::BlockSys;
use crate::sys::real::{with_path, RealSys};
use crate::sys::{Console, Files};

/// Where the image's os-release is (in the verified root).
pub const OS_RELEASE: &str = "/usr/lib/os-release";
/// Prefix of the boot side's console lines.
pub const TAG: &str = "kiln-update";

/// What the boot side of the updater does to the machine beyond [`BlockSys`] (sysfs,
/// device reads, the root's device number, files, the clock) and the console.
///
/// `update apply`'s own trait can extend this one: the functions here are generic over
/// `S: UpdateSys + ?Sized`, so they take a `&mut dyn` of any trait built on it.
pub trait UpdateSys: BlockSys + Console {
    /// mount(2).
    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// Renames a file and makes the rename durable (fsync of its folder). Errors name
    /// the file.
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
}

impl UpdateSys for RealSys {
    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(Some(source), target, fstype, flags, data)
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        rename_durably(from, to)?;
        let dir = Path::new(to).parent().unwrap_or(Path::new("/"));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(dir, e))
    }
}

/// Renames a file on the ESP so the new name survives a power cut with its contents.
/// vfat gives the renamed file a new directory entry with size 0 and no first cluster,
/// and fills them in only when the file's inode is written back: after a power cut that
/// followed an fsync of the directory alone, the QEMU test found `kiln-b+3.efi` empty.
/// Syncing the file itself writes that entry (the caller still syncs the directory, for
/// the old name's removal).
pub fn rename_durably(from: &str, to: &str) -> io::Result<()> {
    fs::rename(from, to).map_err(|e| with_path(Path::new(from), e))?;
    File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| with_path(Path::new(to), e))
}

/// The image's update settings: agent.toml's `[update]` (None in an image built without
/// one) and whether it has `[cluster]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSettings {
    /// `[update]`.
    pub update: Option<UpdateTable>,
    /// Whether `[cluster]` is there (the node joins Kubernetes).
    pub cluster: bool,
}

/// Reads agent.toml ([`SETTINGS_PATH`]); a missing file is an image without settings.
/// The error names the file.
pub fn image_settings<S: Files + ?Sized>(sys: &mut S) -> Result<ImageSettings, String> {
    let bytes = match sys.read_file(SETTINGS_PATH) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ImageSettings::default()),
        Err(e) => return Err(format!("{SETTINGS_PATH}: {e}")),
    };
    let text = String::from_utf8_lossy(&bytes);
    let file: SettingsFile =
        toml::from_str(&text).map_err(|e| format!("{SETTINGS_PATH}: {}", e.message().trim()))?;
    Ok(ImageSettings {
        update: file.update,
        cluster: file.cluster.is_some(),
    })
}

/// The running image's version: agent.toml's `[update] version`, else `IMAGE_VERSION`
/// of the image's os-release. None for an image built without one.
pub fn running_version<S: Files + ?Sized>(sys: &mut S, settings: &ImageSettings) -> Option<String> {
    if let Some(u) = &settings.update {
        return Some(u.version.clone());
    }
    let text = sys.read_file(OS_RELEASE).ok()?;
    esp::os_release_field(&String::from_utf8_lossy(&text), "IMAGE_VERSION")
}

/// `update` without arguments or with `--help`.
pub const UPDATE_USAGE: &str = "\
Usage:
  kiln-agent update apply SOURCE [...]
                                write a signed update bundle (a path or an http/https
                                URL) into the slot that is not running and install its
                                UKI on trial; `update apply --help` for details
  kiln-agent update check [--now] [--channel URL]
                                follow the node config's [update] channel (run hourly
                                by kiln-update-check.timer; checks every check_every):
                                apply a newer signed version inside the maintenance
                                window and reboot into it; `update check --help` for
                                details
  kiln-agent update status [--json]
                                the running version and slot, the other slot (empty,
                                good, on trial with its tries left, or bad), a pending
                                update, the last apply, the versions this node rolled
                                back from and the last failed health check; exit 0
  kiln-agent update boot        run at every boot by kiln-update.service: mount the ESP
                                on /efi, say on the console when the node rolled back
                                (and never apply that version again by itself), and on a
                                boot on trial wait for the health check (agent.toml
                                [update] health, default: preflight, plus the overlay
                                with [enroll] config and the cluster with [cluster]) for
                                up to health_timeout_secs: exit 0 when healthy (systemd
                                then marks the version good), 1 when not (the unit
                                reboots the node and systemd-boot counts the try down)
";

/// The start of `update apply` and `update check`: `--help` anywhere prints `usage`
/// (exit 0); else the arguments parse, or one error line and `usage` (exit 2) name
/// the subcommand.
fn parse_or_usage<T>(
    cmd: &str,
    usage: &str,
    args: &[String],
    parse: impl FnOnce(&[String]) -> Result<T, String>,
) -> Result<T, ExitCode> {
    if args
        .iter()
        .any(|a| matches!(a.as_str(), "--help" | "-h" | "help"))
    {
        print!("{usage}");
        return Err(ExitCode::SUCCESS);
    }
    parse(args).map_err(|e| {
        eprint!("kiln-agent update {cmd}: {e}\n\n{usage}");
        ExitCode::from(2)
    })
}

/// `kiln-agent update ...`.
pub fn main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        // CONTRACT: `update apply ...` is `apply::main(&args[1..])`: it gets the arguments
        // after `apply`, prints its own usage and errors, and returns the exit code. The
        // boot side offers it: `esp::boot_device` + `esp::mount_esp` (the ESP at /efi),
        // `esp::list_ukis` (UKIs with slot, version, root hash, counter),
        // `esp::running_root_hash` + `esp::slot_of_hash` (the running slot),
        // `running_version`, and `state::State::load/save` + `state::is_rejected` (refuse
        // a version the node rolled back from unless --force; `apply` writes
        // `last_apply`). Its own trait may extend `UpdateSys`.
        Some("apply") => apply::main(&args[1..]),
        Some("check") => check::main(&args[1..]),
        Some("status") => status::main(&args[1..]),
        Some("boot") if args.len() == 1 => health::main(),
        Some("--help" | "-h" | "help") => {
            print!("{UPDATE_USAGE}");
            ExitCode::SUCCESS
        }
        None => {
            eprint!("kiln-agent update: which one?\n\n{UPDATE_USAGE}");
            ExitCode::from(2)
        }
        Some(_) => {
            eprint!("kiln-agent update: unknown arguments {args:?}\n\n{UPDATE_USAGE}");
            ExitCode::from(2)
        }
    }
}
