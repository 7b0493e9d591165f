//! Overlay figures for `make bench` from real kernels under QEMU: how long the agent
//! takes to apply a large peer list (against `wg setconf` of the same device), and the
//! time from QEMU start to the first ping over the overlay (against the same boot's
//! time to the shell).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use kiln::arch::Arch;
use kiln_qemu_tests::enroll_server::EnrollServer;
use kiln_qemu_tests::net::{enroll_url, HostServices, OwnNat};
use kiln_qemu_tests::{copy_image, default_image, fw_cfg_config, RunningVm};

/// Boots of the debug image, one or two at a time on TCG.
const BOOT: Duration = Duration::from_secs(1200);
const CMD: Duration = Duration::from_secs(300);
/// Runs of each measurement inside one boot; the best is reported (TCG is noisy).
const RUNS: usize = 3;

/// One arch's apply figures (milliseconds, best of [`RUNS`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApplyFigures {
    /// The guest's arch.
    pub arch: Arch,
    /// Peers applied.
    pub peers: usize,
    /// The agent: list check and plan.
    pub plan_ms: f64,
    /// The agent: the netlink set.
    pub apply_ms: f64,
    /// The agent: read back and compare.
    pub readback_ms: f64,
    /// The floor: `wg setconf` of the same device, process start to exit.
    pub setconf_ms: f64,
}

/// The `key=value` fields of the agent's `kiln-bench-apply:` line.
pub fn parse_apply_line(text: &str) -> anyhow::Result<(usize, f64, f64, f64)> {
    let line = text
        .lines()
        .find_map(|l| l.split("kiln-bench-apply: ").nth(1))
        .with_context(|| format!("no `kiln-bench-apply:` line in:\n{text}"))?;
    let field = |key: &str| -> anyhow::Result<&str> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("no {key}= in {line:?}"))
    };
    let num = |key: &str| -> anyhow::Result<f64> {
        let v = field(key)?;
        v.parse()
            .with_context(|| format!("{key}={v:?} in {line:?} is not a number"))
    };
    let peers = field("peers")?
        .parse()
        .with_context(|| format!("peers= in {line:?} is not a count"))?;
    Ok((
        peers,
        num("plan_ms")?,
        num("apply_ms")?,
        num("readback_ms")?,
    ))
}

/// The number after `marker` on a line of `text`.
fn number_after(text: &str, marker: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.split(marker).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no number after {marker:?} in:\n{text}"))
}

/// Boots the debug image for `arch`, runs `kiln-agent overlay bench-apply --peers N` and
/// the `wg setconf` floor [`RUNS`] times each, and checks with `wg` that both devices hold
/// the same N peers.
pub fn apply(arch: Arch, peers: usize) -> anyhow::Result<ApplyFigures> {
    let built = default_image(arch)?;
    // A private copy: another test process rebuilding the shared debug image would
    // pull the disk from under a running guest.
    let dir = tempfile::tempdir()?;
    let image = copy_image(&built.image, dir.path())?;
    let mut vm = RunningVm::start(kiln::qemu::Vm::new(arch, &image))?;
    vm.wait_for_shell(BOOT)
        .with_context(|| format!("{arch}: the debug shell"))?;
    let mut best = ApplyFigures {
        arch,
        peers,
        plan_ms: f64::INFINITY,
        apply_ms: f64::INFINITY,
        readback_ms: f64::INFINITY,
        setconf_ms: f64::INFINITY,
    };
    for run in 0..RUNS {
        let out = vm
            .run(
                &format!(
                    "kiln-agent overlay bench-apply --peers {peers} --wg-conf /tmp/kilnbench.conf"
                ),
                CMD,
            )
            .with_context(|| format!("{arch}: kiln-agent overlay bench-apply, run {run}"))?;
        let (n, plan, apply, readback) = parse_apply_line(&out)?;
        if n != peers {
            bail!("{arch}: bench-apply applied {n} peers, not {peers}");
        }
        best.plan_ms = best.plan_ms.min(plan);
        best.apply_ms = best.apply_ms.min(apply);
        best.readback_ms = best.readback_ms.min(readback);
        // The floor: a fresh interface each time, as the agent's run starts empty.
        let out = vm
            .run(
                "ip link del kilnbench1 2>/dev/null; ip link add kilnbench1 type wireguard && \
                 s=$(date +%s%N) && wg setconf kilnbench1 /tmp/kilnbench.conf && \
                 e=$(date +%s%N) && echo kiln-bench-setconf-us $(( (e - s) / 1000 ))",
                CMD,
            )
            .with_context(|| format!("{arch}: wg setconf, run {run}"))?;
        best.setconf_ms = best
            .setconf_ms
            .min(number_after(&out, "kiln-bench-setconf-us ")? / 1000.0);
    }
    // The referee: wg reads both devices; apart from the kernel-chosen port they match.
    let counts = vm.run(
        "echo kiln-bench-count $(wg show kilnbench0 peers | wc -l) $(wg show kilnbench1 peers | wc -l)",
        CMD,
    )?;
    let line = counts
        .lines()
        .find_map(|l| l.split("kiln-bench-count ").nth(1))
        .with_context(|| format!("{arch}: no peer counts in:\n{counts}"))?;
    let want = format!("{peers} {peers}");
    if line.trim() != want {
        bail!("{arch}: wg shows {line:?} peers on kilnbench0 and kilnbench1, not {want}");
    }
    let (status, diff) = vm.run_status(
        "diff <(wg showconf kilnbench0 | grep -v ListenPort) \
         <(wg showconf kilnbench1 | grep -v ListenPort) | head -20",
        CMD,
    )?;
    if status != 0
        || diff
            .lines()
            .any(|l| l.starts_with('<') || l.starts_with('>'))
    {
        bail!("{arch}: the agent's device and `wg setconf`'s differ:\n{diff}");
    }
    Ok(best)
}

/// QEMU start to the first overlay ping, for the later of two nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingFigures {
    /// The first node (public, x86_64): QEMU start to `enrolled as`.
    pub first_enrolled_secs: f64,
    /// The later node (behind NAT, x86_64): QEMU start to the root shell (the floor).
    pub shell_secs: f64,
    /// ... to its `enrolled as` line.
    pub enrolled_secs: f64,
    /// ... to the first `busybox ping -c1 -W1` of the first node's overlay address that
    /// got an answer.
    pub ping_secs: f64,
    /// Pings tried until then.
    pub tries: u32,
}

/// `kiln-tcp-relay` beside this binary (the guests' way to kiln-enroll).
fn relay_binary() -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("kiln-tcp-relay")));
    let target = kiln_qemu_tests::target_dir().join("release/kiln-tcp-relay");
    beside
        .into_iter()
        .chain([target])
        .find(|p| p.is_file())
        .context(
            "no kiln-tcp-relay binary beside kiln-bench or in target/release: build it with \
             `cargo build --release -p kiln-qemu-tests --bin kiln-tcp-relay`",
        )
}

/// The `v4` address on a `kiln-overlay: enrolled as NAME V4 ...` line, prefix dropped.
fn enrolled_v4(console: &str) -> anyhow::Result<String> {
    let line = console
        .lines()
        .find_map(|l| l.split("kiln-overlay: enrolled as ").nth(1))
        .context("no `kiln-overlay: enrolled as` line")?;
    let v4 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no address in `enrolled as {line}`"))?;
    Ok(v4.split('/').next().unwrap_or(v4).to_string())
}

/// Two debug-image x86_64 nodes, each behind a NAT of its own, kiln-enroll on the host:
/// the public one boots and enrolls first, then the later one starts and its shell pings
/// the first node's overlay address until an answer comes.
pub fn first_ping() -> anyhow::Result<PingFigures> {
    let arch = Arch::X86_64;
    kiln_qemu_tests::sntp::ensure_server().ok();
    let relay = relay_binary()?;
    let server = EnrollServer::launch(&[])?;
    let host = HostServices::new(&relay, server.port());
    let token = server.token(&["--ttl", "1h", "--uses", "2"])?;
    let dir = tempfile::tempdir()?;
    let built = default_image(arch)?;
    // A private copy (see `apply`).
    let image = copy_image(&built.image, dir.path())?;
    let config = |endpoint: Option<std::net::SocketAddr>| {
        let mut c = format!(
            "[enroll]\nserver = \"{}\"\ntoken = \"{token}\"\n",
            enroll_url()
        );
        if let Some(e) = endpoint {
            c.push_str(&format!("endpoint = \"{e}\"\n"));
        }
        c
    };
    let node_vm = |nat: &OwnNat, sub: &str| -> anyhow::Result<kiln::qemu::Vm> {
        let mut vm = kiln::qemu::Vm::new(arch, &image);
        nat.attach(&host, &mut vm);
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).with_context(|| d.display().to_string())?;
        vm.fw_cfg
            .push(fw_cfg_config(&d, config(nat.endpoint()).as_bytes())?);
        Ok(vm)
    };
    let public = OwnNat::public()?;
    let mut first = RunningVm::start(node_vm(&public, "public")?)?;
    let text = first
        .wait_for(&["kiln-overlay: enrolled as"], BOOT)
        .with_context(|| format!("the public node\nserver log:\n{}", server.log()))?;
    let first_enrolled_secs = first.elapsed();
    let target = enrolled_v4(&text)?;

    let mut later = RunningVm::start(node_vm(&OwnNat::private(), "private")?)?;
    // The console has no timestamps: poll it and note when each line first shows.
    let (mut shell, mut enrolled) = (None, None);
    while shell.is_none() || enrolled.is_none() {
        let text = later.console();
        if shell.is_none() && shell_prompt(&text) {
            shell = Some(later.elapsed());
        }
        if enrolled.is_none() && text.contains("kiln-overlay: enrolled as") {
            enrolled = Some(later.elapsed());
        }
        if later.elapsed() > BOOT.as_secs_f64() {
            bail!(
                "the later node: no shell prompt and `enrolled as` within {BOOT:?}\n{}\nserver log:\n{}",
                kiln_qemu_tests::tail(&text, 40),
                server.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (shell_secs, enrolled_secs) = (shell.unwrap_or(f64::NAN), enrolled.unwrap_or(f64::NAN));
    later
        .wait_for_shell(BOOT)
        .context("the later node's shell")?;
    let mut tries = 0;
    let ping_secs = loop {
        tries += 1;
        let (status, _) = later.run_status(&format!("busybox ping -c1 -W1 {target}"), CMD)?;
        if status == 0 {
            break later.elapsed();
        }
        if later.elapsed() > BOOT.as_secs_f64() {
            bail!(
                "the later node could not ping {target} within {BOOT:?}:\n{}\nserver log:\n{}",
                later
                    .run("kiln-agent overlay status", CMD)
                    .unwrap_or_default(),
                server.log()
            );
        }
    };
    drop(first);
    Ok(PingFigures {
        first_enrolled_secs,
        shell_secs,
        enrolled_secs,
        ping_secs,
        tries,
    })
}

/// Whether the debug shell's autologin has printed its prompt (what
/// [`RunningVm::wait_for_shell`] waits for).
fn shell_prompt(text: &str) -> bool {
    text.find("(automatic login)")
        .is_some_and(|at| text[at..].contains("# "))
}

/// The `make bench` section: a `peers`-peer list applied by the agent on a real kernel against `wg setconf`.
pub fn apply_section(md: &mut String, peers: usize) -> anyhow::Result<()> {
    let mut figs = Vec::new();
    for arch in [Arch::X86_64, Arch::Arm64] {
        eprintln!("bench: {arch}: overlay bench-apply --peers {peers} in the debug image");
        figs.push(apply(arch, peers)?);
    }
    writeln!(
        md,
        "\n## Applying a {peers}-peer list (QEMU/TCG guest kernel)\n"
    )?;
    writeln!(
        md,
        "`kiln-agent overlay bench-apply --peers {peers}` in the debug image: synthetic peers \
         through the daemon's list check and plan, one netlink set on a new WireGuard \
         interface, and a read back that must show every peer. The floor: `wg setconf` of \
         the same device (the file the agent wrote) on another new interface, process start \
         to exit. `wg showconf` of both devices is compared afterwards. Best of 3 in one \
         boot.\n"
    )?;
    writeln!(md, "| arch | floor: `wg setconf` | agent: check + plan | agent: netlink set | agent: read back | ratio (plan + set) / floor |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for f in &figs {
        writeln!(
            md,
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2}x |",
            f.arch,
            f.setconf_ms,
            f.plan_ms,
            f.apply_ms,
            f.readback_ms,
            (f.plan_ms + f.apply_ms) / f.setconf_ms
        )?;
    }
    Ok(())
}

/// The `make bench` section: QEMU start to the first overlay ping against the same
/// boot's shell.
pub fn ping_section(md: &mut String) -> anyhow::Result<()> {
    eprintln!("bench: two x86_64 nodes: QEMU start to the first overlay ping");
    let f = first_ping()?;
    writeln!(md, "\n## QEMU start to the first overlay ping\n")?;
    writeln!(
        md,
        "kiln-enroll on the host, two x86_64 debug images each behind a QEMU NAT of its own \
         with `[enroll]` from fw_cfg. The first (public: a host UDP port forwarded to its \
         WireGuard port) boots and enrolls ({:.1} s after its QEMU start); then the second \
         starts, and its shell runs `busybox ping -c1 -W1` of the first node's overlay \
         address until one answers ({} tries). The floor: the same boot's time to the root \
         shell.\n",
        f.first_enrolled_secs, f.tries
    )?;
    writeln!(md, "| floor: QEMU start to shell | to `enrolled as` | to first overlay ping | ratio ping/shell |")?;
    writeln!(md, "|---|---|---|---|")?;
    writeln!(
        md,
        "| {:.1} s | {:.1} s | {:.1} s | {:.2}x |",
        f.shell_secs,
        f.enrolled_secs,
        f.ping_secs,
        f.ping_secs / f.shell_secs
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_apply_line_is_read_field_by_field() {
        let (n, p, a, r) = parse_apply_line(
            "noise\nkiln-bench-apply: peers=1000 plan_ms=12.5 apply_ms=40.0 readback_ms=9.1\n",
        )
        .unwrap();
        assert_eq!((n, p, a, r), (1000, 12.5, 40.0, 9.1));
        let e = parse_apply_line("kiln-bench-apply: peers=10 plan_ms=x apply_ms=1 readback_ms=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plan_ms=\"x\""), "{e}");
        assert!(parse_apply_line("nothing").is_err());
    }

    #[test]
    fn the_enrolled_line_gives_the_address() {
        let c = "x\nkiln-overlay: enrolled as node-1 10.77.0.2/16 fd00::2/64 (mtu 1420)\n";
        assert_eq!(enrolled_v4(c).unwrap(), "10.77.0.2");
        assert_eq!(
            number_after("a kiln-bench-setconf-us 1234\n", "kiln-bench-setconf-us ").unwrap(),
            1234.0
        );
    }
}
