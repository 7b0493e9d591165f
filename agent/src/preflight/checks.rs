//! The checks. Each reads what it needs through [`PreflightSys`] and says, on failure,
//! what is wrong and where.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::{CommandResult, Outcome, PreflightSys};
use crate::report::mountinfo::{parse_mountinfo, Mount};
use crate::sys::Cmd;

/// Modules kubelet and kube-proxy need.
pub const MODULES: [&str; 2] = ["overlay", "br_netfilter"];

/// Sysctls that must be 1.
pub const SYSCTLS: [&str; 4] = [
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
];

/// Programs kube-proxy (iptables or nftables mode) runs.
pub const TOOLS: [&str; 4] = ["nft", "iptables", "ip6tables", "conntrack"];

/// Where the tools are looked for.
pub const TOOL_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/bin"];

/// Limit for one `--version` run of a tool.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// cgroup v2 controllers kubelet needs.
pub const CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

/// systemd-timesyncd creates this on its first successful synchronization.
pub const TIMESYNC_FLAG: &str = "/run/systemd/timesync/synchronized";

/// kubelet's API port.
pub const KUBELET_PORT: u16 = 10250;

pub(super) fn read_text(sys: &mut dyn PreflightSys, path: &str) -> Result<String, io::Error> {
    sys.read_file(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// `overlay` and `br_netfilter` loaded (or built in: both appear under /sys/module).
pub fn modules(sys: &mut dyn PreflightSys) -> Outcome {
    let proc_modules = read_text(sys, "/proc/modules").unwrap_or_default();
    let missing: Vec<&str> = MODULES
        .iter()
        .copied()
        .filter(|m| {
            !sys.exists(&format!("/sys/module/{m}"))
                && !proc_modules
                    .lines()
                    .any(|l| l.split(' ').next() == Some(*m))
        })
        .collect();
    if missing.is_empty() {
        Outcome::Pass(format!("{} loaded", MODULES.join(", ")))
    } else {
        Outcome::Fail(format!(
            "not loaded: {} (not in /sys/module or /proc/modules; load with modprobe, \
             or list in /etc/modules-load.d)",
            missing.join(", ")
        ))
    }
}

/// The forwarding and bridge-netfilter sysctls are 1.
pub fn sysctls(sys: &mut dyn PreflightSys) -> Outcome {
    let mut problems = Vec::new();
    for key in SYSCTLS {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        match read_text(sys, &path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(v) => problems.push(format!("{key} = {} (needs 1)", v.trim())),
            Err(e) if e.kind() == io::ErrorKind::NotFound && key.starts_with("net.bridge.") => {
                problems.push(format!("{key} missing (br_netfilter is not loaded)"));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && key.starts_with("net.ipv6.") => {
                problems.push(format!("{key} missing (IPv6 disabled?)"));
            }
            Err(e) => problems.push(format!("{key}: {path}: {e}")),
        }
    }
    if problems.is_empty() {
        Outcome::Pass(format!("{} = 1", SYSCTLS.join(", ")))
    } else {
        Outcome::Fail(problems.join("; "))
    }
}

/// No active swap.
pub fn swap(sys: &mut dyn PreflightSys) -> Outcome {
    let text = match read_text(sys, "/proc/swaps") {
        Ok(t) => t,
        Err(e) => return Outcome::Fail(format!("/proc/swaps: {e}")),
    };
    // The first line is the column header.
    let on: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = crate::report::mountinfo::unescape(f.first()?);
            Some(match f.get(2) {
                Some(kib) => format!("{name} ({kib} KiB)"),
                None => name,
            })
        })
        .collect();
    if on.is_empty() {
        Outcome::Pass("off".into())
    } else {
        Outcome::Fail(format!(
            "swap is on: {}; kubelet needs it off (swapoff)",
            on.join(", ")
        ))
    }
}

/// nft, iptables, ip6tables and conntrack are installed and run.
pub fn tools(sys: &mut dyn PreflightSys) -> Outcome {
    let mut missing = Vec::new();
    let mut broken = Vec::new();
    let mut dirs: Vec<&str> = Vec::new();
    for tool in TOOLS {
        let Some(dir) = TOOL_DIRS
            .iter()
            .copied()
            .find(|d| sys.exists(&format!("{d}/{tool}")))
        else {
            missing.push(tool);
            continue;
        };
        let path = format!("{dir}/{tool}");
        match sys.run(&Cmd::new(&path, &["--version"]).timeout(RUN_TIMEOUT)) {
            CommandResult::Exited { code: Some(0), .. } => {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
            CommandResult::Exited { .. } => {
                broken.push(format!("{path} --version failed"));
            }
            CommandResult::TimedOut => broken.push(format!("{path} --version timed out")),
            CommandResult::Failed(e) => broken.push(format!("{path} does not run: {e}")),
        }
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "missing: {} (looked in {})",
            missing.join(", "),
            TOOL_DIRS.join(", ")
        ));
    }
    problems.extend(broken);
    if problems.is_empty() {
        Outcome::Pass(format!("{} run (in {})", TOOLS.join(", "), dirs.join(", ")))
    } else {
        Outcome::Fail(problems.join("; "))
    }
}

fn mounts(sys: &mut dyn PreflightSys) -> Result<Vec<Mount>, String> {
    read_text(sys, "/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))
}

/// /sys/fs/cgroup is the cgroup v2 hierarchy with the controllers kubelet needs.
pub fn cgroup(sys: &mut dyn PreflightSys) -> Outcome {
    let mounts = match mounts(sys) {
        Ok(m) => m,
        Err(e) => return Outcome::Fail(e),
    };
    // The last mount on a point is the visible one.
    let Some(m) = mounts.iter().rfind(|m| m.mount_point == "/sys/fs/cgroup") else {
        return Outcome::Fail("nothing is mounted on /sys/fs/cgroup".into());
    };
    if m.fstype != "cgroup2" {
        return Outcome::Fail(format!(
            "/sys/fs/cgroup is {}, not cgroup2 (cgroup v1 or hybrid; boot with \
             systemd.unified_cgroup_hierarchy=1)",
            m.fstype
        ));
    }
    let path = "/sys/fs/cgroup/cgroup.controllers";
    let have = match read_text(sys, path) {
        Ok(t) => t,
        Err(e) => return Outcome::Fail(format!("{path}: {e}")),
    };
    let have: Vec<&str> = have.split_whitespace().collect();
    let missing: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !have.contains(c))
        .collect();
    if missing.is_empty() {
        Outcome::Pass(format!("cgroup2 with {}", CONTROLLERS.join(" ")))
    } else {
        Outcome::Fail(format!(
            "cgroup2 lacks controllers: {} ({path} has {:?})",
            missing.join(", "),
            have.join(" ")
        ))
    }
}

/// The clock is NTP-synchronized.
pub fn clock(sys: &mut dyn PreflightSys) -> Outcome {
    if sys.exists(TIMESYNC_FLAG) {
        Outcome::Pass("synchronized (systemd-timesyncd)".into())
    } else {
        Outcome::Fail(format!(
            "not synchronized (no NTP answer yet; no {TIMESYNC_FLAG})"
        ))
    }
}

/// Flags of /proc/net/route and /proc/net/ipv6_route.
const RTF_UP: u32 = 0x1;
const RTF_REJECT: u32 = 0x200;

/// (metric, interface, gateway) of the best IPv4 default route.
fn ipv4_default(text: &str) -> Option<(u32, String, Option<Ipv4Addr>)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |i: usize| f.get(i).and_then(|v| u32::from_str_radix(v, 16).ok());
            let (dest, gw, flags, metric, mask) = (hex(1)?, hex(2)?, hex(3)?, hex(6)?, hex(7)?);
            if dest != 0 || mask != 0 || flags & RTF_UP == 0 || flags & RTF_REJECT != 0 {
                return None;
            }
            // The kernel prints the network-order address as a native-endian number.
            let gw = Ipv4Addr::from(gw.to_ne_bytes());
            Some((
                metric,
                f[0].to_string(),
                (!gw.is_unspecified()).then_some(gw),
            ))
        })
        .min_by_key(|r| r.0)
}

/// (metric, interface, gateway) of the best IPv6 default route.
fn ipv6_default(text: &str) -> Option<(u32, String, Option<Ipv6Addr>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, plen, hop) = (f.first()?, f.get(1)?, f.get(4)?);
            let metric = u32::from_str_radix(f.get(5)?, 16).ok()?;
            let flags = u32::from_str_radix(f.get(8)?, 16).ok()?;
            let iface = f.get(9)?;
            if dest.bytes().any(|b| b != b'0')
                || *plen != "00"
                || flags & RTF_UP == 0
                || flags & RTF_REJECT != 0
                || *iface == "lo"
            {
                return None;
            }
            let gw = Ipv6Addr::from(u128::from_str_radix(hop, 16).ok()?);
            Some((
                metric,
                (*iface).to_string(),
                (!gw.is_unspecified()).then_some(gw),
            ))
        })
        .min_by_key(|r| r.0)
}

fn describe<A: std::fmt::Display>(family: &str, iface: &str, gw: Option<A>) -> String {
    match gw {
        Some(gw) => format!("{family} via {gw} dev {iface}"),
        None => format!("{family} dev {iface} (no gateway)"),
    }
}

/// A default route exists (kubelet picks the node IP from it).
pub fn default_route(sys: &mut dyn PreflightSys) -> Outcome {
    let v4 = read_text(sys, "/proc/net/route")
        .ok()
        .and_then(|t| ipv4_default(&t));
    let v6 = read_text(sys, "/proc/net/ipv6_route")
        .ok()
        .and_then(|t| ipv6_default(&t));
    let mut found = Vec::new();
    if let Some((_, iface, gw)) = v4 {
        found.push(describe("IPv4", &iface, gw));
    }
    if let Some((_, iface, gw)) = v6 {
        found.push(describe("IPv6", &iface, gw));
    }
    if found.is_empty() {
        Outcome::Fail(
            "no default route (IPv4 in /proc/net/route or IPv6 in /proc/net/ipv6_route); \
             kubelet needs one to pick the node address"
                .into(),
        )
    } else {
        Outcome::Pass(found.join("; "))
    }
}

/// The host name is set, not localhost, and valid as a node name.
pub fn hostname(sys: &mut dyn PreflightSys) -> Outcome {
    let path = "/proc/sys/kernel/hostname";
    let name = match read_text(sys, path) {
        Ok(n) => n.trim().to_string(),
        Err(e) => return Outcome::Fail(format!("{path}: {e}")),
    };
    if name.is_empty() || name == "(none)" || name == "localhost" || name.starts_with("localhost.")
    {
        return Outcome::Fail(format!(
            "hostname is {name:?}: give the node a name (kiln.hostname=, kiln.toml, cidata, \
             fw_cfg or cloud user-data)"
        ));
    }
    if let Err(p) = kiln_contract::names::check_hostname(&name) {
        return Outcome::Fail(format!("hostname {name:?} is not a valid node name: {p}"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Outcome::Warn(format!(
            "{name}: kubelet registers the node as {:?}",
            name.to_ascii_lowercase()
        ));
    }
    Outcome::Pass(name)
}

/// /var/lib (containerd and kubelet state) is writable and persistent.
pub fn var(sys: &mut dyn PreflightSys) -> Outcome {
    let mounts = match mounts(sys) {
        Ok(m) => m,
        Err(e) => return Outcome::Fail(e),
    };
    let covers = |m: &&Mount| {
        let p = m.mount_point.trim_end_matches('/');
        "/var/lib" == p || "/var/lib".starts_with(&format!("{p}/"))
    };
    // The longest (and, on one point, the last) mount covering /var/lib is the one used.
    let Some(m) = mounts
        .iter()
        .filter(covers)
        .max_by_key(|m| m.mount_point.len())
    else {
        return Outcome::Fail("no mount covers /var/lib".into());
    };
    if m.read_only() {
        Outcome::Fail(format!(
            "{} ({}, {}) is read-only: containerd and kubelet write under /var/lib",
            m.mount_point, m.source, m.fstype
        ))
    } else if m.fstype == "tmpfs" {
        Outcome::Warn(format!(
            "{} is a tmpfs: container images and kubelet state are lost at reboot",
            m.mount_point
        ))
    } else {
        Outcome::Pass(format!("{} on {} ({})", m.mount_point, m.source, m.fstype))
    }
}

/// Whether a /proc/net/tcp{,6} table has a listening socket on `port`.
fn listening(text: &str, port: u16) -> bool {
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = f
            .get(1)
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        // State 0A is TCP_LISTEN.
        local_port == Some(port) && f.get(3) == Some(&"0A")
    })
}

/// Nothing listens on kubelet's port yet.
pub fn kubelet_port(sys: &mut dyn PreflightSys) -> Outcome {
    let v4 = match read_text(sys, "/proc/net/tcp") {
        Ok(t) => t,
        Err(e) => return Outcome::Fail(format!("/proc/net/tcp: {e}")),
    };
    // Without IPv6 there is no tcp6 table, and nothing can listen there.
    let v6 = read_text(sys, "/proc/net/tcp6").unwrap_or_default();
    if listening(&v4, KUBELET_PORT) || listening(&v6, KUBELET_PORT) {
        Outcome::Fail(format!(
            "port {KUBELET_PORT} is already in use (is a kubelet running already?)"
        ))
    } else {
        Outcome::Pass(format!("port {KUBELET_PORT} free"))
    }
}
