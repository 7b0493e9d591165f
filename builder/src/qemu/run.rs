//! `kiln run IMAGE`: boots any image `kiln inspect` reads, the way a node
//! boots from a real disk, and leaves the image as it was.
//!
//! - The format comes from the bytes: raw and fixed VHD are used in place
//!   (QEMU reads a fixed VHD as raw: the footer is one sector past the image's
//!   end, in the free space), qcow2 too; raw.zst and the GCE tarball are
//!   unpacked to a sparse temporary raw disk.
//! - The guest's disk is a throwaway qcow2 overlay in a temporary folder, with
//!   the image as its backing file and the size of a real disk
//!   ([`DEFAULT_DISK_SIZE`]), so the first boot creates `var` in the free
//!   space as on hardware. `--persist` boots the raw or qcow2 file itself.
//! - The qemu profile's timesyncd asks 10.0.2.2 for the time; QEMU's user
//!   network delivers that to the host's 127.0.0.1:123, where `kiln run`
//!   answers SNTP itself ([`super::sntp`]) so the node's preflight passes
//!   with nothing else running on the host.
//! - The console goes to the terminal and to a log that is watched for the
//!   `login:` prompt, to say there how to get a shell.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::sntp::{self, GuestNtp};
use super::{qemu_binary, FwCfg, QemuError, Serial, Vm};
use crate::arch::Arch;
use crate::flash::plan::ImageGpt;
use crate::flash::source::{self, ImageFormat};
use crate::flash::FlashError;
use crate::runner::{Cmd, RunError, Runner};

/// The guest disk's size unless `--disk-size` says otherwise: room for `var`.
pub const DEFAULT_DISK_SIZE: u64 = 8 << 30;

/// What to boot, and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The image.
    pub image: PathBuf,
    /// Guest arch; `None`: from the image's root partition type.
    pub arch: Option<Arch>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Boot the image file itself and keep what the guest writes.
    pub persist: bool,
    /// Size of the guest's disk (the overlay), at least the image's.
    pub disk_size: u64,
    /// A node config handed over fw_cfg.
    pub config: Option<PathBuf>,
    /// Extra read-only raw disks.
    pub drives: Vec<PathBuf>,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
    /// Answer the guest's NTP requests on the host's 127.0.0.1:123.
    pub sntp: bool,
    /// Print nothing but errors.
    pub quiet: bool,
    /// Forward the host's 127.0.0.1:PORT to the guest's SSH port.
    pub ssh_port: Option<u16>,
}

/// Why an image cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image is not a disk image.
    #[error(transparent)]
    Image(#[from] FlashError),
    /// A file named on the command line is missing.
    #[error("{}: no such file", .0.display())]
    Missing(PathBuf),
    /// No root partition says which arch.
    #[error("{}: no x86_64 or arm64 root partition in its GPT; pass --arch", .0.display())]
    NoArch(PathBuf),
    /// `--persist` with a format QEMU cannot write in place.
    #[error(
        "{}: --persist boots the image file itself, which QEMU writes only as raw or qcow2 \
         (this is {format}); unpack it first or boot it without --persist", path.display()
    )]
    Persist {
        /// The image.
        path: PathBuf,
        /// Its format.
        format: &'static str,
    },
    /// qemu-img failed.
    #[error("{}: {source}", path.display())]
    Tool {
        /// The image.
        path: PathBuf,
        /// The failed command.
        source: RunError,
    },
    /// QEMU or its firmware is missing.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// An I/O error.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> BootError + 'a {
    move |source| BootError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// A VM ready to start, with the temporary files it needs.
#[derive(Debug)]
pub struct Prepared {
    /// The VM.
    pub vm: Vm,
    /// The image's format.
    pub format: ImageFormat,
    /// The guest disk's size in bytes.
    pub disk_size: u64,
    /// The console log (watched for the login prompt).
    pub console_log: PathBuf,
}

/// Bytes read at the image's start for its GPT.
const HEAD: u64 = (4 << 20) + (64 << 10);

fn read_head(raw: &Path) -> Result<Vec<u8>, BootError> {
    let f = File::open(raw).map_err(io_err(raw, "opening"))?;
    let mut head = Vec::new();
    f.take(HEAD)
        .read_to_end(&mut head)
        .map_err(io_err(raw, "reading"))?;
    Ok(head)
}

/// The qcow2 image's virtual size and its first bytes, through qemu-img.
fn qcow2_facts(
    image: &Path,
    scratch: &Path,
    runner: &dyn Runner,
) -> Result<(u64, Vec<u8>), BootError> {
    let tool = |source| BootError::Tool {
        path: image.to_path_buf(),
        source,
    };
    let info = runner
        .run(
            &Cmd::new("qemu-img")
                .args(["info", "--output=json", "-f", "qcow2"])
                .arg(image),
        )
        .map_err(tool)?;
    let size = serde_json::from_slice::<serde_json::Value>(&info.stdout)
        .ok()
        .and_then(|v| v["virtual-size"].as_u64())
        .ok_or_else(|| {
            BootError::Image(FlashError::NotAnImage {
                path: image.to_path_buf(),
                what: "qemu-img info names no virtual size".into(),
            })
        })?;
    let head = scratch.join("head.raw");
    runner
        .run(
            &Cmd::new("qemu-img")
                .args(["dd", "-f", "qcow2", "-O", "raw", "bs=64k"])
                .arg(format!("count={}", HEAD.div_ceil(64 << 10)))
                .arg(format!("if={}", image.display()))
                .arg(format!("of={}", head.display())),
        )
        .map_err(tool)?;
    Ok((size, read_head(&head)?))
}

/// The arch whose root partition type the image has.
fn arch_of(gpt: &ImageGpt) -> Option<Arch> {
    Arch::ALL.into_iter().find(|a| {
        gpt.entries
            .iter()
            .any(|(_, e)| e.type_guid == a.root_type_guid())
    })
}

/// Opens the image, makes the guest's disk in `scratch` and sets up the VM.
pub fn prepare(
    opts: &RunOptions,
    scratch: &Path,
    runner: &dyn Runner,
) -> Result<Prepared, BootError> {
    let image = &opts.image;
    for p in opts.config.iter().chain(&opts.drives) {
        if !p.is_file() {
            return Err(BootError::Missing(p.clone()));
        }
    }
    let (format, file_len) = source::detect(image)?;
    let abs = std::fs::canonicalize(image).map_err(io_err(image, "resolving"))?;
    // (backing file, its format, the raw disk's size, its first bytes)
    let (backing, backing_fmt, size, head) = match format {
        ImageFormat::Raw | ImageFormat::Vhd => {
            let size = if format == ImageFormat::Vhd {
                file_len - 512
            } else {
                file_len
            };
            (abs.clone(), "raw", size, read_head(&abs)?)
        }
        ImageFormat::Qcow2 => {
            let (size, head) = qcow2_facts(&abs, scratch, runner)?;
            (abs.clone(), "qcow2", size, head)
        }
        ImageFormat::RawZst | ImageFormat::Gce => {
            let raw = scratch.join("disk.raw");
            let out = File::create(&raw).map_err(io_err(&raw, "creating"))?;
            if !opts.quiet {
                eprintln!(
                    "kiln: unpacking {} ({}) to a temporary raw disk",
                    image.display(),
                    format.name()
                );
            }
            let size = source::unpack(&abs, format, &out)?;
            let head = read_head(&raw)?;
            (raw, "raw", size, head)
        }
    };
    let gpt = ImageGpt::read(&head).map_err(|what| FlashError::NotAnImage {
        path: image.clone(),
        what,
    })?;
    let arch = match opts.arch {
        Some(a) => a,
        None => arch_of(&gpt).ok_or_else(|| BootError::NoArch(image.clone()))?,
    };
    let (disk, disk_format, disk_size) = if opts.persist {
        if !matches!(format, ImageFormat::Raw | ImageFormat::Qcow2) {
            return Err(BootError::Persist {
                path: image.clone(),
                format: format.name(),
            });
        }
        (abs.clone(), backing_fmt, size)
    } else {
        let overlay = scratch.join("disk.qcow2");
        let disk_size = opts.disk_size.max(size);
        runner
            .run(
                &Cmd::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b"])
                    .arg(&backing)
                    .arg(&overlay)
                    .arg(disk_size.to_string()),
            )
            .map_err(|source| BootError::Tool {
                path: image.clone(),
                source,
            })?;
        (overlay, "qcow2", disk_size)
    };
    let mut vm = Vm::new(arch, disk);
    vm.disk_format = disk_format.into();
    vm.snapshot = false;
    vm.memory_mib = opts.memory_mib;
    vm.cpus = opts.cpus;
    vm.fw_cfg = opts
        .config
        .iter()
        .map(|file| FwCfg {
            name: "opt/kiln/config".into(),
            file: file.clone(),
        })
        .collect();
    vm.drives = opts.drives.clone();
    vm.extra = opts.qemu_args.clone();
    if let Some(port) = opts.ssh_port {
        vm.forward_tcp(port, 22);
    }
    let console_log = scratch.join("console.log");
    vm.serial = Serial::StdioLogged {
        log: console_log.clone(),
    };
    Ok(Prepared {
        vm,
        format,
        disk_size,
        console_log,
    })
}

/// What to say at the login prompt, from the manifest beside the image: how to get a
/// shell on the console, and over SSH when the image has a server.
pub fn login_hint(image: &Path, ssh_port: Option<u16>) -> String {
    let manifest = crate::inspect::manifest_beside(image);
    let m = crate::inspect::read_manifest(&manifest).ok();
    let debug = m.as_ref().map(|m| m.debug_shell);
    let ssh = m.as_ref().map(|m| {
        m.packages
            .iter()
            .any(|p| p.name == crate::profile::ssh::SERVER_PACKAGE)
    });
    hint_text(debug, ssh, ssh_port)
}

/// [`login_hint`]'s text from what the manifest says (None: no manifest).
pub fn hint_text(debug: Option<bool>, ssh: Option<bool>, ssh_port: Option<u16>) -> String {
    let console = match debug {
        Some(true) => "kiln: a --debug-shell build: root is logged in on this console without a \
                       password."
            .to_string(),
        Some(false) => "kiln: no password opens this login prompt (kiln images have none). For a \
                        root shell on the console, build the image with `kiln build \
                        --debug-shell`."
            .to_string(),
        None => "kiln: no password opens this login prompt, unless the image was built with \
                 `kiln build --debug-shell` (then root is logged in on the console)."
            .to_string(),
    };
    let keys = "a key listed in `ssh_authorized_keys = [\"...\"]` of the --config file \
                (e.g. your ~/.ssh/id_ed25519.pub)";
    let ssh = match (ssh, ssh_port) {
        (Some(false), _) => {
            " For SSH, build from a profile with `[ssh] enable = true`.".to_string()
        }
        (_, Some(port)) => format!(
            " SSH: `ssh -p {port} root@127.0.0.1` with {keys}; the host key fingerprints are \
             the kiln-ssh: lines above."
        ),
        (Some(true), None) => format!(
            " This image runs sshd: rerun with `--ssh-port 2222 --config kiln.toml`, \
             kiln.toml holding {keys}, then `ssh -p 2222 root@127.0.0.1`."
        ),
        (None, None) => String::new(),
    };
    format!("{console}{ssh} Ctrl-A X quits.")
}

/// Whether the console text shows a getty's login prompt (`<host> login: `),
/// possibly with kernel messages printed after it on the same line.
pub fn shows_login_prompt(text: &str) -> bool {
    text.split(['\n', '\r']).any(|line| {
        let l = line.trim_end();
        !l.trim_start().starts_with("Last login")
            && (l.ends_with(" login:") || l.contains(" login: "))
    })
}

/// Watches `log` until `stop`; after each login prompt, once the console
/// went quiet, prints `hint`.
fn watch_for_login(log: PathBuf, hint: String, stop: Arc<AtomicBool>) {
    let mut pos = 0u64;
    let mut carry = String::new();
    let mut pending = false;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(mut f) = File::open(&log) else {
            continue;
        };
        if f.seek(SeekFrom::Start(pos)).is_err() {
            continue;
        }
        let mut new = Vec::new();
        if f.read_to_end(&mut new).is_err() || new.is_empty() {
            if pending {
                let _ = write!(std::io::stderr(), "\r\n{hint}\r\n");
                pending = false;
            }
            continue;
        }
        pos += new.len() as u64;
        let text = carry + &String::from_utf8_lossy(&new);
        if shows_login_prompt(&text) {
            pending = true;
            carry = String::new();
            continue;
        }
        // Keep the last line's end, so a prompt cut between two reads is seen.
        let keep = text.len().saturating_sub(64);
        let keep = (keep..=text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        carry = text[keep..]
            .rsplit(['\n', '\r'])
            .next()
            .unwrap_or("")
            .to_string();
    }
}

/// `kiln run`: prepares the VM, answers SNTP, boots with the console on this
/// terminal, and returns QEMU's exit status.
pub fn run(opts: &RunOptions, runner: &dyn Runner) -> Result<ExitStatus, BootError> {
    let scratch = tempfile::Builder::new()
        .prefix("kiln-run-")
        .tempdir()
        .map_err(io_err(&std::env::temp_dir(), "creating a folder in"))?;
    let p = prepare(opts, scratch.path(), runner)?;
    let mut cmd = p.vm.command(scratch.path())?;
    let ntp = if opts.sntp {
        sntp::serve_for_guests()
    } else {
        GuestNtp::Unavailable(std::io::Error::other("--no-ntp was given"))
    };
    if !opts.quiet {
        let disk = if opts.persist {
            "its own file, writes kept".to_string()
        } else {
            format!(
                "a throwaway overlay of {}, writes discarded",
                crate::flash::human(p.disk_size)
            )
        };
        eprintln!(
            "kiln: booting {} ({}, {}) under TCG on {disk}; quit with Ctrl-A X",
            opts.image.display(),
            p.format.name(),
            p.vm.arch
        );
        match &ntp {
            GuestNtp::Serving(_) => eprintln!(
                "kiln: answering the guest's NTP requests to 10.0.2.2 on {}",
                sntp::HOST_NTP_ADDR
            ),
            GuestNtp::AlreadyServed => eprintln!(
                "kiln: the guest's NTP requests to 10.0.2.2 go to the server already on {}",
                sntp::HOST_NTP_ADDR
            ),
            GuestNtp::Unavailable(_) if !opts.sntp => {}
            GuestNtp::Unavailable(e) => eprintln!(
                "kiln: warning: cannot answer the guest's NTP requests on {} ({e}): its \
                 preflight waits for a synced clock. Run as root, or once: sudo setcap \
                 cap_net_bind_service=+ep {}",
                sntp::HOST_NTP_ADDR,
                std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "kiln".into())
            ),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = (!opts.quiet).then(|| {
        let (log, hint, stop) = (
            p.console_log.clone(),
            login_hint(&opts.image, opts.ssh_port),
            stop.clone(),
        );
        std::thread::spawn(move || watch_for_login(log, hint, stop))
    });
    let status = cmd.status().map_err(|source| BootError::Io {
        path: PathBuf::from(qemu_binary(p.vm.arch)),
        action: "starting",
        source,
    });
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    drop(ntp);
    status
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_login_prompt_is_recognised() {
        assert!(shows_login_prompt(
            "\r\nDebian GNU/Linux 13 node ttyS0\r\n\r\nnode login: "
        ));
        // Kernel messages land on the prompt's line.
        assert!(shows_login_prompt(
            "kiln-4be665a3 login: [   40.9] kiln-agent[320]: kiln-report: arch=x86_64"
        ));
        assert!(!shows_login_prompt("Last login: Mon Dec  7 on ttyS0\r\n"));
        assert!(!shows_login_prompt("kiln-preflight: waiting"));
    }
    #[test]
    fn the_hint_says_how_to_log_in_over_ssh_where_the_image_can() {
        let h = hint_text(Some(false), Some(true), Some(2222));
        assert!(h.contains("`ssh -p 2222 root@127.0.0.1`"), "{h}");
        assert!(
            h.contains("ssh_authorized_keys") && h.contains("kiln-ssh:"),
            "{h}"
        );
        let h = hint_text(Some(false), Some(true), None);
        assert!(
            h.contains("rerun with `--ssh-port 2222 --config kiln.toml`"),
            "{h}"
        );
        let h = hint_text(Some(false), Some(false), None);
        assert!(
            h.contains("`[ssh] enable = true`") && h.contains("--debug-shell"),
            "{h}"
        );
        let h = hint_text(None, None, None);
        assert!(!h.contains("SSH") && h.ends_with("Ctrl-A X quits."), "{h}");
    }

    #[test]
    fn a_text_file_is_not_an_image() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("notes.txt");
        std::fs::write(&f, "hello\n".repeat(300)).unwrap();
        let opts = RunOptions {
            image: f.clone(),
            arch: None,
            memory_mib: 512,
            cpus: 1,
            persist: false,
            disk_size: DEFAULT_DISK_SIZE,
            config: None,
            drives: vec![],
            qemu_args: vec![],
            sntp: false,
            quiet: true,
            ssh_port: None,
        };
        let e = prepare(&opts, d.path(), &crate::runner::HostRunner)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("notes.txt") && e.contains("not a disk image"),
            "{e}"
        );
    }
}
