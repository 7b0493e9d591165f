//! `report` mode: one status line on the console for people and the QEMU tests, e.g.
//!
//! ```text
//! kiln-report: arch=x86_64 kernel=6.1.0-28-amd64 hostname=node-1 root=/dev/vda2 root_mode=ro usr_write=EROFS var=/dev/vda4 var_size=2.3G machine_id=0123456789abcdef0123456789abcdef boots=2 stub="systemd-stub 252.x" state=running failed=0 verity=off
//! ```
//!
//! `hostname` is the kernel's hostname (what `kiln-agent config` set), `unknown` when it
//! cannot be read.
//!
//! `usr_write` is what creating a file under /usr and /etc gave (`EROFS` on a read-only
//! root); `var=tmpfs` has no `var_size`; `boots` counts boots of the persistent /var
//! (init keeps the count) and is `none` without one.
//!
//! `verity=on:dm-0:0123456789ab` says the root is kiln's dm-verity device `dm-0`, set up
//! for the root hash starting with those 12 hex digits.
//!
//! It waits for systemd to finish starting up, so its unit must not hold up start-up
//! itself: use `Type=simple` (or `idle`), not `Type=oneshot`, or
//! `systemctl is-system-running --wait` waits for the report's own start job.

pub mod mountinfo;
pub mod real;

use std::io;
use std::time::Duration;

use kiln_contract::le;
use mountinfo::{mounted_on, parse_mountinfo, parse_proc_mounts, Mount};

use crate::sys::{Cmd, CommandResult, Console, Exec, Files};

/// The EFI variable systemd-stub sets to its name and version.
pub const STUB_INFO: &str =
    "/sys/firmware/efi/efivars/StubInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Default limit for waiting on systemd.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Limit for listing failed units (systemd is up by then; this only guards a hang).
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything report reads from the system: files, programs (systemctl) and diagnostics
/// on stderr ([`Console::note`], the journal, never the report line), plus the below.
pub trait ReportSys: Files + Console + Exec {
    /// uname(2): (machine, release).
    fn uname(&mut self) -> (String, String);
    /// Size in bytes of the filesystem mounted at `path` (statvfs), if known.
    fn fs_size(&mut self, path: &str) -> Option<u64>;
    /// Tries to create (and then removes) a file in the folder `dir`: Ok if it could
    /// be created, else the error (EROFS on a read-only filesystem).
    fn try_create(&mut self, dir: &str) -> Result<(), nix::errno::Errno>;
}

/// What the report found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// uname machine.
    pub arch: String,
    /// uname release.
    pub kernel: String,
    /// The kernel's hostname (/proc/sys/kernel/hostname, trimmed), if readable.
    pub hostname: Option<String>,
    /// The mount on `/`, if the mount table could be read.
    pub root: Option<Mount>,
    /// The mount on `/var`, if any.
    pub var: Option<Mount>,
    /// The boot stub's self-description, if it left one.
    pub stub: Option<String>,
    /// systemd's state word (`running`, `degraded`, ... or `timeout`/`unknown`).
    pub state: String,
    /// Failed unit names, or None if they could not be listed.
    pub failed: Option<Vec<String>>,
    /// Whether the root is kiln's dm-verity device.
    pub verity: Verity,
    /// What creating a file under /usr and /etc gave: `EROFS` when both refuse that way.
    pub usr_write: String,
    /// Size of the filesystem on /var when it is a device.
    pub var_size: Option<u64>,
    /// Contents of /etc/machine-id (trimmed), if it has any.
    pub machine_id: Option<String>,
    /// Contents of /var/lib/kiln/boots (trimmed), if it exists.
    pub boots: Option<String>,
}

/// Whether `/` is mounted through kiln's dm-verity device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verity {
    /// The root is the device-mapper device `dev` (`dm-0`) that init created for the root
    /// hash beginning with `hash_prefix` (12 hex digits).
    On {
        /// Device name.
        dev: String,
        /// First 12 hex digits of the root hash.
        hash_prefix: String,
    },
    /// The root is not a kiln verity device.
    Off,
    /// The mount table or the device's sysfs entry could not be read.
    Unknown,
}

/// A diagnostic line for stderr.
fn note(sys: &mut dyn ReportSys, msg: &str) {
    sys.note(&format!("kiln-report: {msg}"));
}

/// The device-mapper uuid prefix init gives the verity device (see `init::verity`).
const VERITY_UUID_PREFIX: &str = "KILN-VERITY-";

/// Reads whether the device `source` (the root mount's source) is kiln's verity device,
/// from /sys/block/dm-N/dm/uuid.
fn verity_of(sys: &mut dyn ReportSys, source: &str) -> Verity {
    let Some(dev) = source.strip_prefix("/dev/").filter(|d| {
        d.strip_prefix("dm-")
            .is_some_and(|n| n.parse::<u32>().is_ok())
    }) else {
        return Verity::Off;
    };
    let path = format!("/sys/block/{dev}/dm/uuid");
    match sys.read_file(&path) {
        Ok(bytes) => {
            let uuid = String::from_utf8_lossy(&bytes).trim().to_string();
            match uuid.strip_prefix(VERITY_UUID_PREFIX) {
                Some(hash) if hash.len() >= 12 && hash.is_ascii() => Verity::On {
                    dev: dev.to_string(),
                    hash_prefix: hash[..12].to_ascii_lowercase(),
                },
                _ => {
                    note(
                        sys,
                        &format!(
                            "/ is on {dev}, a device-mapper device that is not kiln's verity \
                         device (uuid {uuid:?})"
                        ),
                    );
                    Verity::Off
                }
            }
        }
        Err(e) => {
            note(sys, &format!("reading {path}: {e}"));
            Verity::Unknown
        }
    }
}

/// Decodes StubInfo/LoaderInfo-style EFI variables: 4 bytes of attributes, then a
/// NUL-terminated UTF-16LE string.
pub fn decode_efi_string(bytes: &[u8]) -> Option<String> {
    let body = bytes.get(4..)?;
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| le::u16_at(c, 0))
        .take_while(|&u| u != 0)
        .collect();
    if units.is_empty() {
        return None;
    }
    Some(String::from_utf16_lossy(&units))
}

/// Unit names from `systemctl list-units --failed --plain --no-legend`.
pub fn parse_failed_units(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|line| {
            // Some systemctl versions keep the status bullet even with --plain.
            line.split_whitespace().find(|w| *w != "●" && *w != "*")
        })
        .map(str::to_string)
        .collect()
}

/// Quotes a value for the report line when it would otherwise break the `key=value`
/// word structure.
fn quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

fn word(value: &str) -> String {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        quoted(value)
    } else {
        value.to_string()
    }
}

impl Report {
    /// True when `/` is mounted read-only.
    pub fn root_read_only(&self) -> bool {
        self.root.as_ref().is_some_and(Mount::read_only)
    }

    /// The healthy outcome: systemd reports `running` and the root is read-only.
    pub fn healthy(&self) -> bool {
        self.state == "running" && self.root_read_only() && self.usr_write == "EROFS"
    }

    /// The one line printed on the console.
    pub fn line(&self) -> String {
        let (root, mode) = match &self.root {
            Some(m) => (word(&m.source), if m.read_only() { "ro" } else { "rw" }),
            None => ("unknown".to_string(), "unknown"),
        };
        let var = match &self.var {
            None => "none".to_string(),
            Some(m) if m.source == m.fstype || !m.source.starts_with('/') => word(&m.fstype),
            Some(m) => word(&m.source),
        };
        let var_size = match (&self.var, self.var_size) {
            (Some(m), Some(bytes)) if m.source.starts_with('/') => {
                format!(" var_size={}", short_size(bytes))
            }
            (Some(m), None) if m.source.starts_with('/') => " var_size=unknown".to_string(),
            _ => String::new(),
        };
        let machine_id = self.machine_id.as_deref().map_or("none".to_string(), word);
        let hostname = self.hostname.as_deref().map_or("unknown".to_string(), word);
        let boots = self.boots.as_deref().map_or("none".to_string(), word);
        let stub = match &self.stub {
            Some(s) => quoted(s),
            None => "none".to_string(),
        };
        let failed = match &self.failed {
            None => "unknown".to_string(),
            Some(units) if units.is_empty() => "0".to_string(),
            Some(units) => word(&format!("{}({})", units.len(), units.join(","))),
        };
        let verity = match &self.verity {
            Verity::On { dev, hash_prefix } => word(&format!("on:{dev}:{hash_prefix}")),
            Verity::Off => "off".to_string(),
            Verity::Unknown => "unknown".to_string(),
        };
        format!(
            "kiln-report: arch={} kernel={} hostname={hostname} root={root} root_mode={mode} usr_write={} var={var}\
             {var_size} machine_id={machine_id} boots={boots} stub={stub} \
             state={} failed={failed} verity={verity}",
            word(&self.arch),
            word(&self.kernel),
            word(&self.usr_write),
            word(&self.state),
        )
    }
}

fn read_mounts(sys: &mut dyn ReportSys) -> Option<Vec<Mount>> {
    match sys.read_file("/proc/self/mountinfo") {
        Ok(b) => return Some(parse_mountinfo(&String::from_utf8_lossy(&b))),
        Err(e) => note(sys, &format!("reading /proc/self/mountinfo: {e}")),
    }
    match sys.read_file("/proc/mounts") {
        Ok(b) => Some(parse_proc_mounts(&String::from_utf8_lossy(&b))),
        Err(e) => {
            note(sys, &format!("reading /proc/mounts: {e}"));
            None
        }
    }
}

/// Gathers the report. `timeout` bounds the wait for systemd to settle.
pub fn collect(sys: &mut dyn ReportSys, timeout: Duration) -> Report {
    let (arch, kernel) = sys.uname();
    let mounts = read_mounts(sys).unwrap_or_default();
    let root = mounted_on(&mounts, "/").cloned();
    let var = mounted_on(&mounts, "/var").cloned();
    let var_size = match &var {
        Some(m) if m.source.starts_with('/') => sys.fs_size("/var"),
        _ => None,
    };
    let machine_id = read_trimmed(sys, "/etc/machine-id").filter(|s| !s.is_empty());
    let hostname = read_trimmed(sys, HOSTNAME_FILE).filter(|s| !s.is_empty());
    let boots = read_trimmed(sys, BOOTS_FILE);
    let verity = match &root {
        Some(m) => verity_of(sys, &m.source),
        None => Verity::Unknown,
    };
    let stub = match sys.read_file(STUB_INFO) {
        Ok(bytes) => decode_efi_string(&bytes),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                note(sys, &format!("reading {STUB_INFO}: {e}"));
            }
            None
        }
    };
    let state =
        match sys.run(&Cmd::new("systemctl", &["is-system-running", "--wait"]).timeout(timeout)) {
            // The exit status is non-zero for anything but "running"; the word says which.
            CommandResult::Exited { stdout, .. } => stdout
                .split_whitespace()
                .next()
                .unwrap_or("unknown")
                .to_string(),
            CommandResult::TimedOut => {
                note(
                    sys,
                    &format!(
                        "systemctl is-system-running --wait did not finish within {} s",
                        timeout.as_secs()
                    ),
                );
                "timeout".to_string()
            }
            CommandResult::Failed(why) => {
                note(sys, &format!("running systemctl: {why}"));
                "unknown".to_string()
            }
        };
    let failed = match sys.run(
        &Cmd::new(
            "systemctl",
            &["list-units", "--failed", "--plain", "--no-legend"],
        )
        .timeout(LIST_TIMEOUT),
    ) {
        CommandResult::Exited {
            code: Some(0),
            stdout,
            ..
        } => Some(parse_failed_units(&stdout)),
        other => {
            note(sys, &format!("systemctl list-units --failed: {other:?}"));
            None
        }
    };
    Report {
        arch,
        kernel,
        hostname,
        root,
        var,
        stub,
        state,
        failed,
        verity,
        usr_write: usr_write(sys),
        var_size,
        machine_id,
        boots,
    }
}

/// The kernel's hostname.
pub const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// Where init counts the boots of a persistent /var.
pub const BOOTS_FILE: &str = "/var/lib/kiln/boots";

/// Sizes for the report line: `2.3G`, `512M`.
pub fn short_size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{}M", bytes >> 20)
    }
}

fn read_trimmed(sys: &mut dyn ReportSys, path: &str) -> Option<String> {
    match sys.read_file(path) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).trim().to_string()),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                note(sys, &format!("reading {path}: {e}"));
            }
            None
        }
    }
}

/// Tries to create a file under /usr and /etc, which a read-only root must refuse:
/// `EROFS` when both do, else each folder's outcome (`/usr:writable,/etc:EROFS`).
fn usr_write(sys: &mut dyn ReportSys) -> String {
    let outcomes: Vec<(&str, String)> = ["/usr", "/etc"]
        .into_iter()
        .map(|dir| {
            let outcome = match sys.try_create(dir) {
                Ok(()) => {
                    note(
                        sys,
                        &format!("{dir} is writable: a file could be created in it"),
                    );
                    "writable".to_string()
                }
                Err(e) => format!("{e:?}"),
            };
            (dir, outcome)
        })
        .collect();
    if outcomes.iter().all(|(_, o)| *o == outcomes[0].1) {
        return outcomes[0].1.clone();
    }
    let each: Vec<String> = outcomes.iter().map(|(d, o)| format!("{d}:{o}")).collect();
    each.join(",")
}

#[cfg(test)]
mod tests;
