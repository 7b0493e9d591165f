//! Helpers for the QEMU tests: build the default profile once per arch with
//! the real kiln library, boot it under TCG with the real firmware, and
//! watch the serial console.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln::arch::Arch;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Scratch space for the tests, under the cargo target folder so a clean
/// checkout starts empty and `cargo clean` removes it.
pub fn work_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("kiln-qemu-tests")
}

/// A built image and its manifest.
#[derive(Debug, Clone)]
pub struct Built {
    /// The raw disk image.
    pub image: PathBuf,
    /// manifest.json beside it.
    pub manifest: PathBuf,
}

impl Built {
    /// The output beside the raw image whose name ends in `suffix`
    /// (`.qcow2`, `.vhd`, `.raw.zst`, `.raw.bmap`, `.gce.tar.gz`).
    pub fn output(&self, suffix: &str) -> PathBuf {
        let name = self
            .image
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".raw").to_string())
            .unwrap_or_default();
        self.image.with_file_name(format!("{name}{suffix}"))
    }
}

static BUILDS: OnceLock<Mutex<Vec<(Arch, bool, Built)>>> = OnceLock::new();

/// Builds `profiles/qemu.toml` for `arch` as the profile says (a raw image),
/// once per test process.
pub fn default_image(arch: Arch) -> anyhow::Result<Built> {
    build_once(arch, false)
}

/// Builds `profiles/qemu.toml` for `arch` in every output format, once per
/// test process; the other formats sit beside the raw image
/// ([`Built::output`]). Slower than [`default_image`]: only for the tests of
/// the formats themselves.
pub fn image_with_all_formats(arch: Arch) -> anyhow::Result<Built> {
    build_once(arch, true)
}

fn build_once(arch: Arch, all_formats: bool) -> anyhow::Result<Built> {
    let lock = BUILDS.get_or_init(|| Mutex::new(Vec::new()));
    let mut done = lock
        .lock()
        .map_err(|_| anyhow::anyhow!("an earlier image build panicked"))?;
    if let Some((_, _, b)) = done
        .iter()
        .find(|(a, all, _)| *a == arch && *all == all_formats)
    {
        return Ok(b.clone());
    }
    let profile = kiln::profile::Profile::load(&repo_root().join("profiles/qemu.toml"))?;
    let out = work_dir().join(if all_formats { "out-formats" } else { "out" });
    let cache = kiln::fetch::Cache::from_env()?;
    let opts = kiln::build::BuildOptions {
        arches: vec![arch],
        out: out.clone(),
        epoch: None,
        agent: kiln::build::AgentSource::from_env(),
        formats: all_formats.then(|| kiln::profile::Format::ALL.to_vec()),
    };
    let ui = kiln::build::Ui::new(true);
    let reports = kiln::build::build(&profile, &cache, &opts, &ui)
        .with_context(|| format!("building the default image for {arch}"))?;
    let r = reports
        .into_iter()
        .next()
        .context("build returned no image")?;
    let b = Built {
        image: r.image.clone(),
        manifest: r.manifest.clone(),
    };
    done.push((arch, all_formats, b.clone()));
    Ok(b)
}

/// A running VM whose serial console goes to a file.
pub struct RunningVm {
    child: Child,
    serial: PathBuf,
    started: Instant,
    _scratch: tempfile::TempDir,
}

impl RunningVm {
    /// Boots `vm` (its serial setting is replaced by a file).
    pub fn start(mut vm: kiln::qemu::Vm) -> anyhow::Result<RunningVm> {
        let scratch = tempfile::tempdir()?;
        let serial = scratch.path().join("serial.log");
        vm.serial = kiln::qemu::Serial::File(serial.clone());
        let mut cmd = vm.command(scratch.path())?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", kiln::qemu::qemu_binary(vm.arch)))?;
        Ok(RunningVm {
            child,
            serial,
            started: Instant::now(),
            _scratch: scratch,
        })
    }

    /// Everything the guest printed so far (lossy UTF-8, carriage returns dropped).
    pub fn console(&self) -> String {
        let bytes = std::fs::read(&self.serial).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    /// Seconds since QEMU started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Waits until every marker has appeared on the console. Fails early on
    /// a marker of a failed boot, on QEMU exiting, or after `timeout`;
    /// every failure carries the last console lines.
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
        const FATAL: [&str; 3] = ["kiln-init: FATAL", "Kernel panic", "end Kernel panic"];
        loop {
            let text = self.console();
            if markers.iter().all(|m| text.contains(m)) {
                return Ok(text);
            }
            if let Some(f) = FATAL.iter().find(|f| fatal_ends && text.contains(*f)) {
                bail!("boot failed ({f:?} on the console)\n{}", tail(&text, 60));
            }
            if let Some(status) = self.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!(
                    "QEMU exited ({status}) before {markers:?} appeared: {err}\n{}",
                    tail(&text, 60)
                );
            }
            if self.started.elapsed() > timeout {
                let missing: Vec<_> = markers.iter().filter(|m| !text.contains(*m)).collect();
                bail!(
                    "timed out after {timeout:?} waiting for {missing:?}\n{}",
                    tail(&text, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(src).with_context(|| src.display().to_string())?;
    f.seek(SeekFrom::Start(offset))?;
    let mut out = std::fs::File::create(dst).with_context(|| dst.display().to_string())?;
    let n = std::io::copy(&mut f.by_ref().take(len), &mut out)?;
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
pub fn report_fields(console: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let line = console
        .lines()
        .rev()
        .find(|l| l.contains("kiln-report:"))
        .context("no kiln-report line on the console")?;
    let rest = &line[line.find("kiln-report:").unwrap_or(0) + "kiln-report:".len()..];
    let mut out = std::collections::BTreeMap::new();
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
