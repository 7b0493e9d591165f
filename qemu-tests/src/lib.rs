//! Helpers for the QEMU tests: build each profile once per arch with the
//! real kiln library, boot it under TCG with the real firmware, watch the
//! serial console and type into the debug shell on it, and the host-side
//! fixtures the node's config channels read (cidata volumes, the ESP's
//! kiln.toml, fw_cfg files) plus the SNTP server timesyncd syncs from.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln::arch::Arch;

pub mod agent_size;
pub mod enroll_server;
pub mod files;
pub mod images;
pub mod metadata;
pub mod net;
pub mod share;
pub mod sntp;
pub mod ssh;
pub mod timing;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub use images::{
    cmdline_hostname, default_image, image_with_all_formats, k3s_image, profile_image,
    update_hostname, update_image, Built, UpdateBuild,
};

/// Cargo's target folder: `CARGO_TARGET_DIR` (the Makefile sets it to a cache outside
/// the clone), else the checkout's `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Scratch space for the tests, under the cargo target folder so a clean
/// checkout starts empty and `cargo clean` removes it.
pub fn work_dir() -> PathBuf {
    target_dir().join("kiln-qemu-tests")
}

/// Markers of a boot that went wrong: waits end early on them.
const FATAL: [&str; 2] = ["kiln-init: FATAL", "Kernel panic"];

/// A running VM whose serial console is a socket the test can type into,
/// with everything the guest printed in a log file.
pub struct RunningVm {
    child: Child,
    log: PathBuf,
    console_in: Option<UnixStream>,
    started: Instant,
    commands: u32,
    shell_set_up: bool,
    /// Where the current boot's console text starts (see [`RunningVm::new_boot`]).
    boot_from: usize,
    _scratch: tempfile::TempDir,
}

impl RunningVm {
    /// Boots `vm` (its serial setting is replaced by a socket plus log)
    /// and connects to the console. Starts the SNTP server for the guest's
    /// timesyncd if it can (see [`sntp::ensure_server`]).
    pub fn start(mut vm: kiln::qemu::Vm) -> anyhow::Result<RunningVm> {
        // Two test threads boot two VMs at once on two cores. An x86_64 guest with one
        // vCPU reaches its boot report in ~42 s beside another such guest; with two vCPUs
        // each, the pair took ~54 s (vCPU threads preempt each other's lock holders).
        // Measured on the suite's machine, QEMU 10.0 TCG; arm64 guests were the same
        // with one or two and keep two (see tests/qemu/overlay.rs).
        if vm.arch == Arch::X86_64 {
            vm.cpus = 1;
        }
        // Boots that need a synced clock check `ensure_server()` themselves
        // to fail with its message; the others do not care.
        let _ = sntp::ensure_server();
        let scratch = tempfile::tempdir()?;
        let log = scratch.path().join("serial.log");
        let socket = scratch.path().join("serial.sock");
        vm.serial = kiln::qemu::Serial::Socket {
            path: socket.clone(),
        };
        let mut cmd = vm.command(scratch.path())?;
        share::vm_started();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                share::vm_stopped();
                return Err(e)
                    .with_context(|| format!("starting {}", kiln::qemu::qemu_binary(vm.arch)));
            }
        };
        let mut running = RunningVm {
            child,
            log,
            console_in: None,
            started: Instant::now(),
            commands: 0,
            shell_set_up: false,
            boot_from: 0,
            _scratch: scratch,
        };
        running.console_in = Some(running.connect(&socket)?);
        Ok(running)
    }

    /// Connects to QEMU's console socket (QEMU waits for it before the guest runs) and
    /// copies everything the guest prints into the log file, which [`RunningVm::console`]
    /// reads; an unread socket would stall the guest's serial port.
    fn connect(&mut self, socket: &Path) -> anyhow::Result<UnixStream> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match UnixStream::connect(socket) {
                Ok(s) => {
                    let mut reader = s
                        .try_clone()
                        .with_context(|| format!("{}: cloning the socket", socket.display()))?;
                    let mut log = std::fs::File::create(&self.log)
                        .with_context(|| self.log.display().to_string())?;
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = reader.read(&mut buf) {
                            if n == 0 || log.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                    return Ok(s);
                }
                Err(e) => {
                    if let Some(status) = self.child.try_wait()? {
                        bail!("QEMU exited ({status}) at start: {}", self.stderr());
                    }
                    if Instant::now() > deadline {
                        bail!("{}: QEMU's console socket: {e}", socket.display());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    /// Everything the guest printed so far (lossy UTF-8, carriage returns dropped).
    pub fn console(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    /// Starts a new boot of the same machine (for VMs with `exit_on_reboot` off): from
    /// now on markers, the shell prompt and failure lines count only when printed after
    /// this point, timeouts count from now, and the debug shell is set up again.
    pub fn new_boot(&mut self) {
        self.boot_from = self.console().len();
        self.started = Instant::now();
        self.shell_set_up = false;
    }

    /// Waits for the machine to start its next boot (the kernel's `Linux version` line
    /// printed after console offset `from`) and starts a new boot there, as
    /// [`RunningVm::new_boot`] does: what the previous boot printed on its way down (a
    /// panic's trace, shutdown lines) no longer counts. `from` is the console's length
    /// before the test caused the reboot, or [`RunningVm::offset_of_last`] of the line
    /// that ended the previous boot, so a fast reboot cannot be missed. `timeout` counts
    /// from now.
    pub fn wait_for_next_boot(&mut self, from: usize, timeout: Duration) -> anyhow::Result<()> {
        self.started = Instant::now();
        self.boot_from = from;
        let text = self.wait_until(timeout, false, "the next boot's kernel", |text| {
            text.get(from..)
                .is_some_and(|t| t.contains("Linux version"))
        })?;
        let at = text
            .get(from..)
            .and_then(|t| t.find("Linux version"))
            .unwrap_or(0);
        self.boot_from = from + at;
        self.shell_set_up = false;
        Ok(())
    }

    /// The console offset of the last `marker` in the current boot, else the console's
    /// length.
    pub fn offset_of_last(&self, marker: &str) -> usize {
        let text = self.console();
        text.get(self.boot_from..)
            .and_then(|t| t.rfind(marker))
            .map_or(text.len(), |at| self.boot_from + at)
    }

    /// The current boot's console text (everything since [`RunningVm::new_boot`]).
    pub fn boot_console(&self) -> String {
        self.console()
            .get(self.boot_from..)
            .unwrap_or_default()
            .to_string()
    }

    /// Seconds since QEMU started (or the current boot began, see [`RunningVm::new_boot`]).
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Waits until every marker has appeared on the console. Fails early on
    /// a marker of a failed boot, on QEMU exiting, or after `timeout` (from
    /// QEMU's start); every failure carries the last console lines.
    pub fn wait_for(&mut self, markers: &[&str], timeout: Duration) -> anyhow::Result<String> {
        self.wait(markers, timeout, true)
    }

    /// Like [`RunningVm::wait_for`], for boots that are meant to fail: a
    /// FATAL line from init does not end the wait early.
    pub fn wait_for_failure(
        &mut self,
        markers: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.wait(markers, timeout, false)
    }

    fn wait(
        &mut self,
        markers: &[&str],
        timeout: Duration,
        fatal_ends: bool,
    ) -> anyhow::Result<String> {
        let from = self.boot_from;
        self.wait_until(timeout, fatal_ends, &format!("{markers:?}"), |text| {
            let text = text.get(from..).unwrap_or_default();
            markers.iter().all(|m| has_whole_line_with(text, m))
        })
    }

    fn wait_until(
        &mut self,
        timeout: Duration,
        fatal_ends: bool,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        loop {
            let text = self.console();
            if done(&text) {
                return Ok(text);
            }
            let this_boot = text.get(self.boot_from..).unwrap_or_default();
            if let Some(f) = FATAL.iter().find(|f| fatal_ends && this_boot.contains(*f)) {
                bail!("boot failed ({f:?} on the console)\n{}", tail(&text, 60));
            }
            if let Some(status) = self.child.try_wait()? {
                let err = self.stderr();
                bail!(
                    "QEMU exited ({status}) before {what} appeared: {err}\n{}",
                    tail(&text, 60)
                );
            }
            if self.started.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    tail(&text, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Types `line` and Enter on the serial console.
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let s = self
            .console_in
            .as_mut()
            .context("not connected to the console")?;
        s.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| s.flush())
            .context("typing on the serial console")
    }

    /// Waits for the debug shell (the serial getty's autologin, see
    /// `kiln build --debug-shell`) and makes it easy to read: no line
    /// wrapping, no terminal escapes. `timeout` counts from QEMU's start.
    pub fn wait_for_shell(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if self.shell_set_up {
            return Ok(());
        }
        // Under heavy TCG load a node has reached multi-user and still shown no prompt
        // (twice in CI, getty's line not seen either): after a while, Enter on the
        // console every minute makes a waiting getty or shell print its prompt again.
        let from = self.boot_from;
        let prompt = move |text: &str| {
            let text = text.get(from..).unwrap_or_default();
            text.find("(automatic login)")
                .map(|at| text[at..].contains("# "))
                .unwrap_or(false)
        };
        let mut next_nudge = Duration::from_secs(240);
        while self.started.elapsed() + Duration::from_secs(60) < timeout && next_nudge < timeout {
            match self.wait_until(next_nudge, true, "the root shell prompt", prompt) {
                Ok(_) => break,
                Err(e) if !e.to_string().starts_with("timed out") => return Err(e),
                Err(_) => {
                    self.send_line("")?;
                    next_nudge = self.started.elapsed().max(next_nudge) + Duration::from_secs(60);
                }
            }
        }
        self.wait_until(timeout, true, "the root shell prompt", prompt)?;
        self.shell_set_up = true;
        // A wide terminal keeps readline from wrapping (and splitting) the
        // typed commands in the echo.
        self.run(
            "stty cols 2000 rows 50; export TERM=dumb; bind 'set enable-bracketed-paste off' 2>/dev/null",
            Duration::from_secs(60),
        )?;
        Ok(())
    }

    /// Runs `cmd` in the debug shell and returns what it printed; a
    /// non-zero exit status is an error with the output.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> anyhow::Result<String> {
        let (status, out) = self.run_status(cmd, timeout)?;
        if status != 0 {
            bail!("`{cmd}` exited with status {status}:\n{out}");
        }
        Ok(out)
    }

    /// Runs `cmd` in the debug shell: (exit status, what it printed). The
    /// command is followed by an echo of an end marker that the shell
    /// computes (`$((40+2))`), so the typed text itself never matches it.
    /// `timeout` counts from now.
    pub fn run_status(&mut self, cmd: &str, timeout: Duration) -> anyhow::Result<(i32, String)> {
        if !self.shell_set_up {
            self.wait_for_shell(Duration::from_secs(900))?;
        }
        self.commands += 1;
        let n = self.commands;
        let typed_end = format!("KILN-END-$((40+2))-{n}-$?");
        let marker = format!("KILN-END-42-{n}-");
        let from = self.console().len();
        self.send_line(&format!("{cmd}; echo {typed_end}"))?;
        let deadline = self.started.elapsed() + timeout;
        let text = self.wait_until(deadline, true, &format!("the end of `{cmd}`"), |text| {
            text.get(from..)
                .and_then(|t| t.find(&marker).map(|at| t[at..].contains('\n')))
                .unwrap_or(false)
        })?;
        let new = text.get(from..).unwrap_or_default();
        let at = new.find(&marker).unwrap_or(0);
        let status_text: String = new[at + marker.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let status = status_text
            .parse()
            .with_context(|| format!("`{cmd}`: no exit status after {marker}"))?;
        // Output starts after the echo of the typed line: after its last copy, because
        // under load the terminal echoes the typed text and readline then draws the line
        // again (a loaded run took the second copy, with a token in it, for output).
        let before = &new[..at];
        let start = before
            .rfind(&typed_end)
            .and_then(|p| before[p..].find('\n').map(|q| p + q + 1))
            .unwrap_or(0);
        Ok((status, before[start..].to_string()))
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        share::vm_stopped();
    }
}

/// Whether `marker` is on a line that has been printed to its end: the serial
/// log is read while the guest writes, and a test that parses the line (the
/// boot report) must not see half of it.
pub fn has_whole_line_with(text: &str, marker: &str) -> bool {
    text.match_indices(marker)
        .any(|(at, _)| text[at..].contains('\n'))
}

/// The last `n` lines of a console log, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    format!(
        "--- last {} console lines ---\n{}",
        lines.len() - start,
        lines[start..].join("\n")
    )
}

/// Copies a byte range of a file into a new file (to hand one partition to a checker).
pub fn extract_range(src: &Path, offset: u64, len: u64, dst: &Path) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(src).with_context(|| src.display().to_string())?;
    f.seek(SeekFrom::Start(offset))?;
    let mut out = std::fs::File::create(dst).with_context(|| dst.display().to_string())?;
    let n = std::io::copy(&mut Read::by_ref(&mut f).take(len), &mut out)?;
    if n != len {
        bail!("{}: short read at {offset}+{len}", src.display());
    }
    Ok(())
}

/// Copies an image sparsely into `dir` (to change or grow it without touching
/// the shared build) and returns the copy's path.
pub fn copy_image(image: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let dst = dir.join(
        image
            .file_name()
            .context("image path without a file name")?,
    );
    check_tool(
        "cp",
        &[
            "--sparse=always",
            &image.display().to_string(),
            &dst.display().to_string(),
        ],
    )?;
    Ok(dst)
}

/// Flips every bit of the byte at `offset` of `path`.
pub fn flip_byte(path: &Path, offset: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| path.display().to_string())?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)?;
    b[0] ^= 0xff;
    f.write_all_at(&b, offset)?;
    f.sync_all()?;
    Ok(())
}

/// The `kiln-report:` line's `key=value` fields (values unquoted).
pub fn report_fields(console: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let line = console
        .lines()
        .rev()
        .find(|l| l.contains("kiln-report:"))
        .context("no kiln-report line on the console")?;
    let rest = &line[line.find("kiln-report:").unwrap_or(0) + "kiln-report:".len()..];
    let mut out = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    while chars.peek().is_some() {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                value.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.insert(key.trim().to_string(), value);
    }
    Ok(out)
}

/// The console lines that contain `needle` (to show in assertion messages).
pub fn lines_with<'a>(console: &'a str, needle: &str) -> Vec<&'a str> {
    console.lines().filter(|l| l.contains(needle)).collect()
}

/// The manifest's partition entry with `role`: (offset, size).
pub fn partition(manifest: &Path, role: &str) -> anyhow::Result<(u64, u64)> {
    let m = kiln::output::manifest::Manifest::read(manifest).map_err(anyhow::Error::msg)?;
    m.disk
        .partitions
        .iter()
        .find(|p| p.role == role)
        .map(|p| (p.offset, p.size))
        .with_context(|| format!("{}: no {role} partition", manifest.display()))
}

/// Runs a checker program and returns its stdout; a non-zero exit is an
/// error with everything it printed.
pub fn check_tool(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (installed by `make deps`)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{}: path is not UTF-8", p.display()))
}

/// Writes `files` (name, bytes) into a fresh folder under `dir` and
/// returns it.
fn stage(dir: &Path, what: &str, files: &[(&str, &[u8])]) -> anyhow::Result<PathBuf> {
    let staged = dir.join(format!("{what}-files"));
    std::fs::create_dir_all(&staged).with_context(|| staged.display().to_string())?;
    for (name, bytes) in files {
        let p = staged.join(name);
        std::fs::write(&p, bytes).with_context(|| p.display().to_string())?;
    }
    Ok(staged)
}

/// A NoCloud volume: a 4 MiB FAT image labelled `CIDATA` in `dir` holding
/// `files` (name, bytes) in its root folder, written by mkfs.fat and mcopy.
pub fn cidata_vfat(dir: &Path, files: &[(&str, &[u8])]) -> anyhow::Result<PathBuf> {
    let img = dir.join("cidata.vfat");
    let _ = std::fs::remove_file(&img);
    check_tool("mkfs.fat", &["-C", "-n", "CIDATA", path_str(&img)?, "4096"])?;
    let staged = stage(dir, "cidata-vfat", files)?;
    for (name, _) in files {
        let src = staged.join(name);
        check_tool(
            "mcopy",
            &[
                "-i",
                path_str(&img)?,
                path_str(&src)?,
                &format!("::/{name}"),
            ],
        )?;
    }
    Ok(img)
}

/// A NoCloud volume: an ISO 9660 image (Rock Ridge and Joliet names)
/// with volume id `cidata` in `dir` holding `files`, written by xorriso.
pub fn cidata_iso(dir: &Path, files: &[(&str, &[u8])]) -> anyhow::Result<PathBuf> {
    let img = dir.join("cidata.iso");
    let _ = std::fs::remove_file(&img);
    let staged = stage(dir, "cidata-iso", files)?;
    check_tool(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-V",
            "cidata",
            "-J",
            "-r",
            "-o",
            path_str(&img)?,
            path_str(&staged)?,
        ],
    )?;
    Ok(img)
}

/// A copy of `image` in `dir` whose ESP (found through `manifest`) holds
/// `/name` with `bytes`, written by mcopy into the FAT in place. The ESP
/// stays clean for fsck.fat (checked here).
pub fn set_esp_file(
    image: &Path,
    manifest: &Path,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> anyhow::Result<PathBuf> {
    let copy = copy_image(image, dir)?;
    let (offset, size) = partition(manifest, "esp")?;
    let src = stage(dir, "esp", &[(name, bytes)])?.join(name);
    let target = format!("{}@@{offset}", path_str(&copy)?);
    check_tool(
        "mcopy",
        &["-o", "-i", &target, path_str(&src)?, &format!("::/{name}")],
    )?;
    let back = check_tool("mtype", &["-i", &target, &format!("::/{name}")])?;
    if back.as_bytes() != bytes && std::str::from_utf8(bytes).is_ok() {
        bail!("{}: ::/{name} reads back as {back:?}", copy.display());
    }
    let esp = dir.join("esp-check.fat");
    extract_range(&copy, offset, size, &esp)?;
    check_tool("fsck.fat", &["-n", path_str(&esp)?])?;
    std::fs::remove_file(&esp).with_context(|| esp.display().to_string())?;
    Ok(copy)
}

/// The fw_cfg entry the agent reads its config from
/// (`opt/kiln/config`), with `bytes` written to a file in `dir`.
pub fn fw_cfg_config(dir: &Path, bytes: &[u8]) -> anyhow::Result<kiln::qemu::FwCfg> {
    let file = dir.join("fw_cfg-kiln.toml");
    std::fs::write(&file, bytes).with_context(|| file.display().to_string())?;
    Ok(kiln::qemu::FwCfg {
        name: "opt/kiln/config".into(),
        file,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_marker_counts_once_its_line_is_complete() {
        let half = "boot\nkiln-report: arch=aarch64 state=";
        assert!(!has_whole_line_with(half, "kiln-report:"));
        let whole = format!("{half}running failed=0\n");
        assert!(has_whole_line_with(&whole, "kiln-report:"));
        assert!(!has_whole_line_with(&whole, "kiln-preflight:"));
    }

    #[test]
    fn cidata_volumes_carry_the_label_and_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let toml = b"hostname = \"cidata-x\"\n";
        let vfat = cidata_vfat(dir.path(), &[("kiln.toml", toml)]).unwrap();
        // Independent readers: fsck.fat, blkid, mtype.
        check_tool("fsck.fat", &["-n", vfat.to_str().unwrap()]).unwrap();
        let label = check_tool(
            "blkid",
            &["-p", "-o", "value", "-s", "LABEL", vfat.to_str().unwrap()],
        )
        .unwrap();
        assert_eq!(label.trim(), "CIDATA");
        let back = check_tool("mtype", &["-i", vfat.to_str().unwrap(), "::/kiln.toml"]).unwrap();
        assert_eq!(back.as_bytes(), toml);

        let iso = cidata_iso(dir.path(), &[("kiln.toml", toml)]).unwrap();
        let probe = check_tool("blkid", &["-p", "-o", "export", iso.to_str().unwrap()]).unwrap();
        assert!(probe.contains("TYPE=iso9660"), "{probe}");
        assert!(probe.contains("LABEL=cidata"), "{probe}");
        let listing = check_tool(
            "xorriso",
            &[
                "-indev",
                iso.to_str().unwrap(),
                "-osirrox",
                "on",
                "-extract",
                "/kiln.toml",
                dir.path().join("back.toml").to_str().unwrap(),
            ],
        );
        listing.unwrap();
        assert_eq!(std::fs::read(dir.path().join("back.toml")).unwrap(), toml);
    }

    #[test]
    fn report_fields_reads_quoted_values() {
        let f = report_fields(
            "x\nkiln-report: arch=x86_64 stub=\"systemd-stub 252\" hostname=n-1 failed=0\n",
        )
        .unwrap();
        assert_eq!(f["stub"], "systemd-stub 252");
        assert_eq!(f["hostname"], "n-1");
        assert_eq!(f["failed"], "0");
    }
}
