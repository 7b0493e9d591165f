//! `make bench`: builds and boots the default profile on both arches and
//! writes BENCHMARKS.md with the figures, the machine, and floors measured
//! in the same run (`mkfs.ext4 -d` on the same tree, a bare kernel boot), then
//! the overlay: enrollment throughput against TLS alone, a 1,000-peer apply
//! against `wg setconf`, and QEMU start to the first overlay ping against the
//! same boot's shell; then A/B updates: bundle sizes, apply, reboot to good and fall
//! back on a QEMU node against `dd` and a plain reboot.
//!
//! `KILN_BENCH_ONLY=build,zst,enroll,apply,ping,update` (any of them) runs only those parts
//! and prints their sections without writing BENCHMARKS.md.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use kiln::arch::Arch;
use kiln::output::manifest::Manifest;
use kiln_qemu_tests::{check_tool, extract_range, repo_root, RunningVm};

#[path = "../bench_enroll.rs"]
mod bench_enroll;
#[path = "../bench_overlay.rs"]
mod bench_overlay;
#[path = "../bench_update.rs"]
mod bench_update;
#[path = "../bench_zst.rs"]
mod bench_zst;

/// Simulated nodes of the enrollment bench and peers of the apply bench.
const NODES: usize = 1000;
/// Clients enrolling at once.
const CONCURRENCY: usize = 32;
/// Simulated nodes of the enrollment bench (enrolled in bands of 1,000).
const ENROLL_NODES: usize = 10_000;

struct ArchFigures {
    arch: Arch,
    cold_secs: f64,
    warm_secs: f64,
    warm_steps: Vec<(String, f64)>,
    image_size: u64,
    image_allocated: u64,
    root_fs_size: u64,
    root_data: u64,
    packages: usize,
    mkfs_secs: f64,
    ours_ext4_secs: f64,
    boot_init_secs: f64,
    boot_login_secs: f64,
    /// QEMU start to `kiln-preflight: passed` on the console.
    boot_preflight_secs: f64,
    bare_init_secs: f64,
    /// Seconds the init spent reading the whole root through dm-verity.
    boot_verity_secs: f64,
    /// Whether the cold and both warm builds gave the same image sha256.
    identical_images: bool,
    /// Seconds of the warm build's verity step.
    verity_secs: f64,
    /// A warm build with every format: its seconds and (format, file, bytes, seconds of
    /// the formats step).
    all_formats_secs: f64,
    formats_step_secs: f64,
    outputs: Vec<(String, String, u64)>,
    /// `kiln inspect --verify` on the raw image and on the qcow2.
    verify_raw_secs: f64,
    verify_qcow2_secs: f64,
}

fn build(
    profile: &kiln::profile::Profile,
    arch: Arch,
    cache: &Path,
    out: &Path,
    formats: Option<Vec<kiln::profile::Format>>,
) -> anyhow::Result<(f64, kiln::build::BuildReport)> {
    let opts = kiln::build::BuildOptions {
        arches: vec![arch],
        out: out.to_path_buf(),
        epoch: None,
        agent: kiln::build::AgentSource::from_env(),
        formats,
        update_key: None,
    };
    let t = Instant::now();
    let r = kiln::build::build(
        profile,
        &kiln::fetch::Cache::new(cache),
        &opts,
        &kiln::build::Ui::new(true),
    )?;
    Ok((
        t.elapsed().as_secs_f64(),
        r.into_iter().next().context("no image")?,
    ))
}

/// `mkfs.ext4 -d` on the same tree: the root partition unpacked with
/// debugfs (ownership kept, we run as root), then rebuilt by mke2fs.
fn mkfs_floor(image: &Path, m: &Manifest, work: &Path) -> anyhow::Result<f64> {
    let root = m
        .disk
        .partitions
        .iter()
        .find(|p| p.role == "root")
        .context("no root partition")?;
    let part = work.join("root.ext4");
    extract_range(image, root.offset, root.size, &part)?;
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree)?;
    check_tool(
        "debugfs",
        &[
            "-R",
            &format!("rdump / {}", tree.display()),
            part.to_str().unwrap_or_default(),
        ],
    )?;
    let out = work.join("mkfs.ext4");
    let mut best = f64::MAX;
    for _ in 0..3 {
        let _ = std::fs::remove_file(&out);
        let t = Instant::now();
        check_tool(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                "-d",
                tree.to_str().unwrap_or_default(),
                out.to_str().unwrap_or_default(),
                &format!("{}k", root.size / 1024),
            ],
        )?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Direct kernel boot (no firmware, no UKI) of the same kernel with a
/// tiny initramfs holding only the agent as /init: the time from QEMU start
/// to the first line of userspace.
fn bare_boot(arch: Arch, image: &Path, m: &Manifest, work: &Path) -> anyhow::Result<f64> {
    let esp = m
        .disk
        .partitions
        .iter()
        .find(|p| p.role == "esp")
        .context("no esp")?;
    let esp_img = work.join("esp.fat");
    extract_range(image, esp.offset, esp.size, &esp_img)?;
    let uki_path = work.join("uki.efi");
    // The manifest names where the UKI is on the ESP (`EFI/Linux/kiln-a.efi`).
    let uki_on_esp = &m.components.get("uki").context("no uki component")?.file;
    check_tool(
        "mcopy",
        &[
            "-n",
            "-i",
            esp_img.to_str().unwrap_or_default(),
            &format!("::/{uki_on_esp}"),
            uki_path.to_str().unwrap_or_default(),
        ],
    )?;
    let uki = std::fs::read(&uki_path)?;
    let linux = kiln::uki::section_data(&uki, ".linux")?.context("no .linux")?;
    let kernel = work.join("vmlinuz");
    std::fs::write(&kernel, linux)?;
    let agent = kiln::build::AgentSource::from_env().locate(arch)?;
    let mut t = kiln::tree::FileTree::new(0);
    t.insert(
        "init",
        kiln::tree::Node::file(std::fs::read(agent)?, 0o755, 0, "bench"),
    )?;
    t.insert(
        "dev/console",
        kiln::tree::Node {
            kind: kiln::tree::Kind::CharDev { major: 5, minor: 1 },
            ..kiln::tree::Node::file(Vec::new(), 0o600, 0, "bench")
        },
    )?;
    let mut cpio = Vec::new();
    kiln::fs::cpio::write_newc(&t, &mut cpio)?;
    let initrd = work.join("tiny.cpio");
    std::fs::write(&initrd, cpio)?;
    let console = if arch == Arch::X86_64 {
        "ttyS0"
    } else {
        "ttyAMA0"
    };
    let serial = work.join("bare-serial.log");
    let mut cmd = std::process::Command::new(kiln::qemu::qemu_binary(arch));
    match arch {
        Arch::X86_64 => cmd.args(["-machine", "q35,accel=tcg", "-cpu", "max"]),
        Arch::Arm64 => cmd.args(["-machine", "virt,accel=tcg", "-cpu", "cortex-a57"]),
    };
    cmd.args([
        "-nodefaults",
        "-m",
        "1024",
        "-smp",
        "2",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd)
    .arg("-append")
    .arg(format!(
        "console={console} kiln.on_failure=poweroff kiln.rootwait=1"
    ))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let result = loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.contains("kiln-init:") {
            break Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(300) {
            break Err(anyhow::anyhow!("bare boot: no init output in 300 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Seconds from the init's "verified N MiB of the root in S s" line.
fn verity_boot_secs(console: &str) -> f64 {
    console
        .lines()
        .find_map(|l| {
            let rest = l.split("of the root in ").nth(1)?;
            rest.trim().trim_end_matches('s').trim().parse().ok()
        })
        .unwrap_or(f64::NAN)
}

/// `kiln inspect --verify` through the real binary: seconds.
fn verify_secs(image: &Path) -> anyhow::Result<f64> {
    let kiln = kiln_qemu_tests::target_dir().join("release/kiln");
    let t = Instant::now();
    let out = std::process::Command::new(&kiln)
        .args(["-q", "inspect", "--verify"])
        .arg(image)
        .output()
        .with_context(|| format!("running {} (make kiln)", kiln.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "kiln inspect --verify {} failed:\n{}{}",
            image.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Boots the image: seconds from QEMU start to the first init line, the
/// login prompt and `kiln-preflight: passed`, and the init's verity seconds.
fn boot(arch: Arch, image: &Path) -> anyhow::Result<(f64, f64, f64, f64)> {
    let vm = RunningVm::start(kiln::qemu::Vm::new(arch, image))?;
    let mut init = None;
    let mut login = None;
    let mut preflight = None;
    let deadline = Duration::from_secs(900);
    loop {
        let text = vm.console();
        if init.is_none() && text.contains("kiln-init:") {
            init = Some(vm.elapsed());
        }
        if login.is_none() && text.contains("login:") {
            login = Some(vm.elapsed());
        }
        if preflight.is_none() && text.contains("kiln-preflight: passed") {
            preflight = Some(vm.elapsed());
        }
        if text.contains("kiln-preflight: FAILED") {
            anyhow::bail!(
                "{arch}: preflight failed\n{}",
                kiln_qemu_tests::tail(&text, 40)
            );
        }
        if let (Some(login), Some(preflight)) = (login, preflight) {
            return Ok((
                init.unwrap_or(f64::NAN),
                login,
                preflight,
                verity_boot_secs(&text),
            ));
        }
        if vm.elapsed() > deadline.as_secs_f64() {
            anyhow::bail!(
                "{arch}: no login prompt and `kiln-preflight: passed` in {deadline:?}\n{}",
                kiln_qemu_tests::tail(&text, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn measure(profile: &kiln::profile::Profile, arch: Arch) -> anyhow::Result<ArchFigures> {
    let work = tempfile::tempdir()?;
    let cache = work.path().join("cache");
    eprintln!("bench: {arch}: cold build (empty cache)");
    let (cold_secs, cold) = build(profile, arch, &cache, &work.path().join("out-cold"), None)?;
    let image_sha = |r: &kiln::build::BuildReport| -> anyhow::Result<String> {
        let m = Manifest::read(&r.manifest).map_err(anyhow::Error::msg)?;
        Ok(m.disk.sha256)
    };
    let mut shas = vec![image_sha(&cold)?];
    eprintln!("bench: {arch}: warm builds");
    let mut warm: Option<(f64, kiln::build::BuildReport)> = None;
    for i in 0..2 {
        let r = build(
            profile,
            arch,
            &cache,
            &work.path().join(format!("out-warm{i}")),
            None,
        )?;
        shas.push(image_sha(&r.1)?);
        if warm.as_ref().is_none_or(|w| r.0 < w.0) {
            warm = Some(r);
        }
    }
    let (warm_secs, report) = warm.context("no warm build")?;
    let m = Manifest::read(&report.manifest).map_err(anyhow::Error::msg)?;
    let meta = std::fs::metadata(&report.image)?;
    eprintln!("bench: {arch}: mkfs.ext4 -d floor");
    let mkfs_secs = mkfs_floor(&report.image, &m, work.path())?;
    eprintln!("bench: {arch}: booting to login and preflight passed");
    // The qemu profile's timesyncd asks 10.0.2.2, which slirp delivers to
    // this host's 127.0.0.1:123; preflight's clock check waits for it.
    kiln_qemu_tests::sntp::ensure_server()?;
    let (boot_init_secs, boot_login_secs, boot_preflight_secs, boot_verity_secs) =
        boot(arch, &report.image)?;
    eprintln!("bench: {arch}: bare kernel boot floor");
    let bare_init_secs = bare_boot(arch, &report.image, &m, work.path())?;
    eprintln!("bench: {arch}: warm build with every output format");
    let (all_formats_secs, all) = build(
        profile,
        arch,
        &cache,
        &work.path().join("out-all"),
        Some(kiln::profile::Format::IMAGES.to_vec()),
    )?;
    let all_m = Manifest::read(&all.manifest).map_err(anyhow::Error::msg)?;
    let outputs = all_m
        .outputs
        .iter()
        .map(|(k, d)| (k.clone(), d.file.clone(), d.size))
        .collect();
    eprintln!("bench: {arch}: kiln inspect --verify");
    let verify_raw_secs = verify_secs(&all.image)?;
    let qcow2 = all.image.with_extension("qcow2");
    let verify_qcow2_secs = verify_secs(&qcow2)?;
    let step = |r: &kiln::build::BuildReport, name: &str| {
        r.timings
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, t)| *t)
            .unwrap_or(f64::NAN)
    };
    Ok(ArchFigures {
        arch,
        cold_secs,
        warm_secs,
        ours_ext4_secs: report
            .timings
            .iter()
            .find(|(s, _)| s == "ext4")
            .map(|(_, t)| *t)
            .unwrap_or(f64::NAN),
        warm_steps: report.timings.clone(),
        image_size: meta.len(),
        image_allocated: meta.blocks() * 512,
        root_fs_size: report.root.size,
        root_data: report.root.data_bytes,
        packages: report.packages,
        mkfs_secs,
        boot_init_secs,
        boot_login_secs,
        boot_preflight_secs,
        bare_init_secs,
        boot_verity_secs,
        identical_images: shas.windows(2).all(|w| w[0] == w[1]),
        verity_secs: step(&report, "verity"),
        all_formats_secs,
        formats_step_secs: step(&all, "formats"),
        outputs,
        verify_raw_secs,
        verify_qcow2_secs,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|o| {
            o.lines()
                .find(|l| l.starts_with("PRETTY_NAME="))
                .map(|l| l[12..].trim_matches('"').to_string())
        })
        .unwrap_or_default();
    let qemu = check_tool("qemu-system-x86_64", &["--version"])
        .map(|v| v.lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} RAM, {os}; {qemu}; TCG (no KVM)")
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// The heading of BENCHMARKS.md's section that `make test` runs fill in.
const SUITE_SECTION: &str = "## Test suite (`make test`)";

/// The heading of BENCHMARKS.md's section that `make repro` runs fill in.
const REPRO_SECTION: &str = "## Reproducibility";

/// The section of `md` that starts with the line `heading`, up to the next `## ` heading,
/// or nothing.
fn kept_section(md: &str, heading: &str) -> String {
    let Some(start) = md.find(&format!("\n{heading}\n")).map(|i| i + 1) else {
        return String::new();
    };
    let body = start + heading.len();
    let end = md[body..].find("\n## ").map_or(md.len(), |i| body + i + 1);
    format!("\n{}\n", md[start..end].trim_end())
}

/// Whether `part` runs: all of them unless `KILN_BENCH_ONLY` names some.
fn wanted(only: &Option<String>, part: &str) -> bool {
    only.as_ref()
        .is_none_or(|o| o.split(',').any(|p| p.trim() == part))
}

fn main() -> anyhow::Result<()> {
    let only = std::env::var("KILN_BENCH_ONLY").ok();
    if let Some(o) = &only {
        let known = ["build", "zst", "enroll", "apply", "ping", "update"];
        if let Some(bad) = o.split(',').find(|p| !known.contains(&p.trim())) {
            anyhow::bail!("KILN_BENCH_ONLY={o:?}: {bad:?} is not one of {known:?}");
        }
    }
    let mut md = String::new();
    writeln!(md, "# kiln benchmarks\n")?;
    writeln!(md, "Written by `make bench` (qemu-tests/src/bin/kiln-bench.rs). Profile: `profiles/qemu.toml`.\n")?;
    writeln!(md, "Machine: {}\n", machine())?;
    if wanted(&only, "build") {
        build_sections(&mut md)?;
    }
    if wanted(&only, "zst") {
        let from = md.len();
        zst_section(&mut md)?;
        // Shown at once: a later part that fails must not lose these figures.
        eprint!("{}", &md[from..]);
    }
    if wanted(&only, "enroll") {
        let from = md.len();
        bench_enroll::section(&mut md, ENROLL_NODES, CONCURRENCY)?;
        // Shown at once: a later part that fails must not lose these figures.
        eprint!("{}", &md[from..]);
    }
    if wanted(&only, "apply") {
        let from = md.len();
        bench_overlay::apply_section(&mut md, NODES)?;
        // Shown at once: a later part that fails must not lose these figures.
        eprint!("{}", &md[from..]);
    }
    if wanted(&only, "ping") {
        let from = md.len();
        bench_overlay::ping_section(&mut md)?;
        // Shown at once: a later part that fails must not lose these figures.
        eprint!("{}", &md[from..]);
    }
    if wanted(&only, "update") {
        let from = md.len();
        update_section(&mut md)?;
        // Shown at once, as the parts above.
        eprint!("{}", &md[from..]);
    }
    if only.is_some() {
        print!("{md}");
        eprintln!("bench: KILN_BENCH_ONLY is set: BENCHMARKS.md left as it is");
        return Ok(());
    }
    let path = repo_root().join("BENCHMARKS.md");
    // The reproducibility figures (`make repro`) and the test suite's (timed `make test`
    // runs) do not come from this bench: their sections are carried over as they are.
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    md.push_str(&kept_section(&old, REPRO_SECTION));
    md.push_str(&kept_section(&old, SUITE_SECTION));
    std::fs::write(&path, &md).with_context(|| path.display().to_string())?;
    print!("{md}");
    Ok(())
}

/// Build, size, ext4, formats, verify and boot: both arches of the default profile.
fn build_sections(md: &mut String) -> anyhow::Result<()> {
    // The boots wait for preflight, which waits for timesyncd's first sync.
    kiln_qemu_tests::sntp::ensure_server()?;
    let profile = kiln::profile::Profile::load(&repo_root().join("profiles/qemu.toml"))?;
    let mut figs = Vec::new();
    for arch in profile.arches.clone() {
        figs.push(measure(&profile, arch)?);
    }
    writeln!(md, "## Build\n")?;
    writeln!(
        md,
        "| arch | cold build (empty cache, downloads) | warm build | target | packages |"
    )?;
    writeln!(md, "|---|---|---|---|---|")?;
    for f in &figs {
        writeln!(
            md,
            "| {} | {:.1} s | {:.1} s | < 15 s | {} |",
            f.arch, f.cold_secs, f.warm_secs, f.packages
        )?;
    }
    for f in &figs {
        writeln!(
            md,
            "\n{}: the cold and two warm builds (separate output folders) gave {} images.",
            f.arch,
            if f.identical_images {
                "byte-identical"
            } else {
                "DIFFERENT"
            }
        )?;
    }
    writeln!(md, "\nWarm build steps (seconds):\n")?;
    for f in &figs {
        let steps: Vec<String> = f
            .warm_steps
            .iter()
            .map(|(s, t)| format!("{s} {t:.2}"))
            .collect();
        writeln!(md, "- {}: {}", f.arch, steps.join(", "))?;
    }
    writeln!(
        md,
        "\nThe verity step (reading the root back and building its hash tree): {}.",
        figs.iter()
            .map(|f| format!("{} {:.2} s", f.arch, f.verity_secs))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(md, "\n## Size\n")?;
    writeln!(md, "| arch | root data (files) | root ext4 size | image file | image bytes allocated (sparse) | target |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for f in &figs {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | root < 250 MB used |",
            f.arch,
            mib(f.root_data),
            mib(f.root_fs_size),
            mib(f.image_size),
            mib(f.image_allocated)
        )?;
    }
    writeln!(
        md,
        "\n### The static agent (`kiln-agent`, musl, `--profile agent`)\n"
    )?;
    writeln!(
        md,
        "In every image's initramfs and root. The budget (qemu-tests/src/agent_size.rs) is \
         checked by `make test`.\n"
    )?;
    writeln!(md, "| arch | bytes | budget | of the budget |")?;
    writeln!(md, "|---|---|---|---|")?;
    for f in &figs {
        let size = kiln_qemu_tests::agent_size::size(f.arch)?;
        let budget = kiln_qemu_tests::agent_size::budget(f.arch);
        writeln!(
            md,
            "| {} | {size} | {budget} | {:.0} % |",
            f.arch,
            100.0 * size as f64 / budget as f64
        )?;
    }
    writeln!(
        md,
        "\n## ext4 step against the `mkfs.ext4 -d` floor (same tree, same size)\n"
    )?;
    writeln!(
        md,
        "kiln writes the in-memory tree straight into the image's root partition; \
         `mkfs.ext4 -d` reads the same tree, unpacked by `debugfs rdump` with its \
         ownership, from the page cache. Neither syncs to disk.\n"
    )?;
    writeln!(
        md,
        "| arch | `mkfs.ext4 -d` (best of 3) | kiln ext4 step | ratio | target |"
    )?;
    writeln!(md, "|---|---|---|---|---|")?;
    for f in &figs {
        writeln!(
            md,
            "| {} | {:.2} s | {:.2} s | {:.2}x | within 3x |",
            f.arch,
            f.mkfs_secs,
            f.ours_ext4_secs,
            f.ours_ext4_secs / f.mkfs_secs
        )?;
    }
    writeln!(md, "\n## Output formats\n")?;
    writeln!(md, "A warm build with every format (`--format raw,raw.zst,qcow2,vhd,gce`); the formats step writes all of them from the finished raw image.\n")?;
    writeln!(md, "| arch | build | formats step | file | bytes |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    for f in &figs {
        for (i, (key, file, size)) in f.outputs.iter().enumerate() {
            if i == 0 {
                writeln!(
                    md,
                    "| {} | {:.1} s | {:.1} s | {file} ({key}) | {} |",
                    f.arch,
                    f.all_formats_secs,
                    f.formats_step_secs,
                    mib(*size)
                )?;
            } else {
                writeln!(md, "| | | | {file} ({key}) | {} |", mib(*size))?;
            }
        }
    }
    writeln!(md, "\n## Verify\n")?;
    writeln!(md, "`kiln inspect --verify`: both GPTs, every partition's and the disk's sha256 against the manifest, the verity tree rebuilt from the root and compared with the hash partition, the root hash against the UKI command line. The qcow2 is converted to raw by `qemu-img` first.\n")?;
    writeln!(md, "| arch | raw | qcow2 |")?;
    writeln!(md, "|---|---|---|")?;
    for f in &figs {
        writeln!(
            md,
            "| {} | {:.1} s | {:.1} s |",
            f.arch, f.verify_raw_secs, f.verify_qcow2_secs
        )?;
    }
    writeln!(md, "\n## Boot under QEMU/TCG\n")?;
    writeln!(md, "From QEMU start. The floor is a direct kernel boot (no firmware, no UKI) of the same kernel with a tiny initramfs whose /init is the agent.\n")?;
    writeln!(md, "| arch | floor: bare kernel to first init line | kiln: UEFI + UKI to first init line | kiln: to login prompt | ratio init/floor | of which: init reading the whole root through dm-verity |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for f in &figs {
        writeln!(
            md,
            "| {} | {:.1} s | {:.1} s | {:.1} s | {:.2}x | {:.1} s |",
            f.arch,
            f.bare_init_secs,
            f.boot_init_secs,
            f.boot_login_secs,
            f.boot_init_secs / f.bare_init_secs,
            f.boot_verity_secs
        )?;
    }
    writeln!(md, "\n### QEMU start to `kiln-preflight: passed`\n")?;
    writeln!(md, "The same boots: the node's Kubernetes preflight (`kiln-agent preflight --wait 240`: modules, sysctls, no swap, cgroup v2, containerd's CRI socket answering, clock synced by timesyncd from the host's SNTP server, a default route) printing its last line.\n")?;
    writeln!(
        md,
        "| arch | QEMU start to `kiln-preflight: passed` | to login prompt |"
    )?;
    writeln!(md, "|---|---|---|")?;
    for f in &figs {
        writeln!(
            md,
            "| {} | {:.1} s | {:.1} s |",
            f.arch, f.boot_preflight_secs, f.boot_login_secs
        )?;
    }
    writeln!(md, "\nThe whole-root check (`verity_check = \"full\"`) hashes every block in the emulated CPU; on hardware with SHA extensions it takes a fraction of a second. `verity_check = \"on-read\"` skips it.")?;
    Ok(())
}

/// The raw.zst encoder: kiln at several levels and the choices behind it
/// (bench_zst.rs), on warm x86_64 builds from the usual package cache.
fn zst_section(md: &mut String) -> anyhow::Result<()> {
    let profile = kiln::profile::Profile::load(&repo_root().join("profiles/qemu.toml"))?;
    let cache = kiln::fetch::cache_root_from(|k| std::env::var_os(k))
        .context("no package cache folder: set KILN_CACHE or HOME")?;
    let figs = bench_zst::measure(&profile, &|p, out, formats| {
        Ok(build(p, Arch::X86_64, &cache, out, Some(formats))?.1)
    })?;
    bench_zst::section(md, &figs, &machine())?;
    Ok(())
}

/// A/B updates on one node per arch (`bench_update`).
fn update_section(md: &mut String) -> anyhow::Result<()> {
    // The nodes' preflight (the health check) waits for timesyncd's first sync.
    kiln_qemu_tests::sntp::ensure_server()?;
    let mut figs = Vec::new();
    for arch in [Arch::X86_64, Arch::Arm64] {
        figs.push(bench_update::measure(arch).with_context(|| format!("update bench on {arch}"))?);
    }
    bench_update::section(md, &figs)?;
    Ok(())
}

#[cfg(test)]
mod section_tests {
    use super::*;

    #[test]
    fn the_suite_section_is_carried_over_alone() {
        let md = "# kiln benchmarks\n\n## Build\nx\n\n## Test suite (`make test`)\n\n| a |\n\n## Boot\ny\n";
        assert_eq!(
            kept_section(md, SUITE_SECTION),
            "\n## Test suite (`make test`)\n\n| a |\n"
        );
        let last = "# k\n\n## Test suite (`make test`)\nz\n";
        assert_eq!(
            kept_section(last, SUITE_SECTION),
            "\n## Test suite (`make test`)\nz\n"
        );
        assert_eq!(kept_section("# k\n\n## Build\n", SUITE_SECTION), "");
    }
}
