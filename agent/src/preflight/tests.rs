//! Every check against a fake system: passing, and failing with the right reason.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::*;
use crate::grpc::tests::{accept_call, hex, ok_response, respond_with, UNIMPLEMENTED};
use crate::grpc::{encode_frame, flag, frame_type};
use crate::sys::fake::{fake_base, FakeSys};
use crate::sys::{forward, Clock};

/// What connecting to containerd's socket gives.
#[derive(Clone, Copy)]
enum Socket {
    Refuse(io::ErrorKind),
    Serve(fn(&mut UnixStream)),
    /// Answers Version as (runtime name, runtime version).
    Version(&'static str, &'static str),
}

/// A change the fake applies once its clock reaches a time.
type Hook = (Duration, fn(&mut Fake));

/// Preflight's fake: the shared one (tool paths are its folders, broken tools its
/// scripted programs), containerd's socket and changes that happen at set times.
struct Fake {
    base: FakeSys,
    socket: Socket,
    hooks: Vec<Hook>,
    /// The sockets connected to, in order.
    connected: Vec<String>,
}

forward!(Fake => base: Files, Console, Exec);
fake_base!(Fake => base);

impl Clock for Fake {
    fn now(&mut self) -> u64 {
        self.base.now()
    }
    fn elapsed(&mut self) -> Duration {
        self.base.elapsed()
    }
    fn sleep(&mut self, d: Duration) {
        self.base.sleep(d);
        let now = self.base.elapsed;
        let due: Vec<Hook> = self.hooks.iter().copied().filter(|h| h.0 <= now).collect();
        self.hooks.retain(|h| h.0 > now);
        for (_, hook) in due {
            hook(self);
        }
    }
}

impl PreflightSys for Fake {
    fn connect(&mut self, path: &str) -> io::Result<Box<dyn Stream>> {
        self.connected.push(path.to_string());
        let serve = |respond: Box<dyn FnOnce(&mut UnixStream) + Send>| {
            let (client, mut server) = UnixStream::pair()?;
            client.set_read_timeout(Some(Duration::from_secs(10)))?;
            std::thread::spawn(move || {
                accept_call(&mut server);
                respond(&mut server);
            });
            Ok(Box::new(client) as Box<dyn Stream>)
        };
        match self.socket {
            Socket::Refuse(kind) => Err(io::Error::from(kind)),
            Socket::Serve(respond) => serve(Box::new(respond)),
            Socket::Version(name, version) => {
                serve(Box::new(move |s| respond_with(s, name, version)))
            }
        }
    }
}

const MOUNTINFO: &str = "\
22 1 254:2 / / ro,relatime shared:1 - ext4 /dev/vda2 ro
25 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
26 25 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
40 22 254:4 / /var rw,relatime shared:20 - ext4 /dev/vda4 rw
";

const CONTAINERD_TOML: &str = r#"
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
"#;

const ROUTE_HEADER: &str =
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

/// lo's unreachable default route, present on every IPv6-enabled system.
const IPV6_LO_REJECT: &str = "00000000000000000000000000000000 00 \
    00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff \
    00000001 00000000 00200200       lo\n";

const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
    retrnsmt   uid  timeout inode\n";

fn tcp_line(port: u16, state: &str) -> String {
    format!(
        "   0: 00000000:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 \
         00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n"
    )
}

fn healthy() -> Fake {
    let mut files = BTreeMap::new();
    let mut put = |p: &str, c: &str| {
        files.insert(p.to_string(), c.as_bytes().to_vec());
    };
    put(
        "/proc/modules",
        "overlay 151552 0 - Live 0x0000000000000000\n",
    );
    for key in checks::SYSCTLS {
        put(&format!("/proc/sys/{}", key.replace('.', "/")), "1\n");
    }
    put(
        "/proc/swaps",
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
    );
    put("/proc/self/mountinfo", MOUNTINFO);
    put(
        "/sys/fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    put(runtime::CONTAINERD_CONFIG, CONTAINERD_TOML);
    put(
        "/proc/net/route",
        &format!(
            "{ROUTE_HEADER}enp0s2\t0002000A\t00000000\t0001\t0\t0\t1024\t00FFFFFF\t0\t0\t0\n\
             enp0s2\t00000000\t0202000A\t0003\t0\t0\t1024\t00000000\t0\t0\t0\n"
        ),
    );
    put("/proc/net/ipv6_route", IPV6_LO_REJECT);
    put("/proc/sys/kernel/hostname", "node-1\n");
    put(
        "/proc/net/tcp",
        &format!("{TCP_HEADER}{}", tcp_line(22, "0A")),
    );
    put("/proc/net/tcp6", TCP_HEADER);
    let mut paths: BTreeSet<String> = [
        "/sys/module/overlay",
        "/sys/module/br_netfilter",
        checks::TIMESYNC_FLAG,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for tool in checks::TOOLS {
        paths.insert(format!("/usr/sbin/{tool}"));
    }
    Fake {
        base: FakeSys {
            files,
            dirs: paths,
            unscripted: Some(CommandResult::exited(0, "v1\n")),
            ..FakeSys::default()
        },
        socket: Socket::Serve(ok_response),
        hooks: Vec::new(),
        connected: Vec::new(),
    }
}

impl Fake {
    fn put(&mut self, path: &str, content: &str) {
        self.files
            .insert(path.to_string(), content.as_bytes().to_vec());
    }
    fn check(&mut self, name: &str) -> Outcome {
        let c = CHECKS.iter().find(|c| c.name == name).unwrap();
        (c.run)(self)
    }
}

fn fail(s: &str) -> Outcome {
    Outcome::Fail(s.to_string())
}

#[test]
fn a_healthy_node_passes_every_check() {
    let mut f = healthy();
    assert!(run(&mut f, CHECKS, Duration::ZERO));
    assert_eq!(
        f.lines,
        [
            "kiln-preflight: [PASS] modules: overlay, br_netfilter loaded",
            "kiln-preflight: [PASS] sysctl: net.ipv4.ip_forward, net.ipv6.conf.all.forwarding, \
             net.bridge.bridge-nf-call-iptables, net.bridge.bridge-nf-call-ip6tables = 1",
            "kiln-preflight: [PASS] swap: off",
            "kiln-preflight: [PASS] tools: nft, iptables, ip6tables, conntrack run (in /usr/sbin)",
            "kiln-preflight: [PASS] cgroup: cgroup2 with cpu cpuset io memory pids",
            "kiln-preflight: [PASS] containerd-config: SystemdCgroup = true, snapshotter \
             overlayfs (config version 2)",
            "kiln-preflight: [PASS] containerd: containerd 1.6.20~ds1 (CRI v1)",
            "kiln-preflight: [PASS] clock: synchronized (systemd-timesyncd)",
            "kiln-preflight: [PASS] route: IPv4 via 10.0.2.2 dev enp0s2",
            "kiln-preflight: [PASS] hostname: node-1",
            "kiln-preflight: [PASS] var: /var on /dev/vda4 (ext4)",
            "kiln-preflight: [PASS] kubelet-port: port 10250 free",
            "kiln-preflight: passed (12 checks)",
        ]
    );
    assert_eq!(
        f.ran,
        [
            "/usr/sbin/nft --version",
            "/usr/sbin/iptables --version",
            "/usr/sbin/ip6tables --version",
            "/usr/sbin/conntrack --version"
        ]
    );
}

#[test]
fn modules_missing_are_named() {
    let mut f = healthy();
    f.dirs.remove("/sys/module/br_netfilter");
    assert!(
        matches!(f.check("modules"), Outcome::Fail(m) if m.starts_with("not loaded: br_netfilter ("))
    );
    // /proc/modules alone is enough.
    f.put("/proc/modules", "br_netfilter 32768 0 - Live 0x0\n");
    assert!(!f.check("modules").failed());
    f.dirs.remove("/sys/module/overlay");
    assert!(
        matches!(f.check("modules"), Outcome::Fail(m) if m.starts_with("not loaded: overlay ("))
    );
}

#[test]
fn sysctls_not_one_or_missing_are_named() {
    let mut f = healthy();
    f.put("/proc/sys/net/ipv4/ip_forward", "0\n");
    f.files
        .remove("/proc/sys/net/bridge/bridge-nf-call-iptables");
    assert_eq!(
        f.check("sysctl"),
        fail(
            "net.ipv4.ip_forward = 0 (needs 1); net.bridge.bridge-nf-call-iptables missing \
             (br_netfilter is not loaded)"
        )
    );
}

#[test]
fn swap_on_names_the_device() {
    let mut f = healthy();
    f.put(
        "/proc/swaps",
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
         /dev/vda3                               partition\t524284\t\t0\t\t-2\n",
    );
    assert_eq!(
        f.check("swap"),
        fail("swap is on: /dev/vda3 (524284 KiB); kubelet needs it off (swapoff)")
    );
    f.files.remove("/proc/swaps");
    assert!(matches!(f.check("swap"), Outcome::Fail(m) if m.starts_with("/proc/swaps: ")));
}

#[test]
fn tools_missing_or_broken_are_named() {
    let mut f = healthy();
    f.dirs.remove("/usr/sbin/conntrack");
    f.dirs.remove("/usr/sbin/nft");
    f.dirs.insert("/usr/bin/nft".into());
    f.commands.insert(
        "/usr/sbin/iptables".into(),
        CommandResult::Failed("/usr/sbin/iptables: No such file or directory".into()),
    );
    f.commands
        .insert("/usr/sbin/ip6tables".into(), CommandResult::TimedOut);
    assert_eq!(
        f.check("tools"),
        fail(
            "missing: conntrack (looked in /usr/sbin, /sbin, /usr/bin); /usr/sbin/iptables \
             does not run: /usr/sbin/iptables: No such file or directory; \
             /usr/sbin/ip6tables --version timed out"
        )
    );
    f.commands.clear();
    f.dirs.insert("/sbin/conntrack".into());
    assert_eq!(
        f.check("tools"),
        Outcome::Pass(
            "nft, iptables, ip6tables, conntrack run (in /usr/bin, /usr/sbin, /sbin)".into()
        )
    );
    f.commands
        .insert("/usr/bin/nft".into(), CommandResult::exited(1, ""));
    assert_eq!(f.check("tools"), fail("/usr/bin/nft --version failed"));
}

#[test]
fn cgroup_v1_and_missing_controllers_fail() {
    let mut f = healthy();
    f.put("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n");
    assert_eq!(
        f.check("cgroup"),
        fail(
            "cgroup2 lacks controllers: cpuset, io (/sys/fs/cgroup/cgroup.controllers has \
             \"cpu memory pids\")"
        )
    );
    let v1 = MOUNTINFO.replace("- cgroup2 cgroup2", "- tmpfs tmpfs");
    f.put("/proc/self/mountinfo", &v1);
    assert!(
        matches!(f.check("cgroup"), Outcome::Fail(m) if m.starts_with("/sys/fs/cgroup is tmpfs, not cgroup2"))
    );
    let none: String = MOUNTINFO
        .lines()
        .filter(|l| !l.contains("cgroup"))
        .map(|l| format!("{l}\n"))
        .collect();
    f.put("/proc/self/mountinfo", &none);
    assert_eq!(
        f.check("cgroup"),
        fail("nothing is mounted on /sys/fs/cgroup")
    );
}

#[test]
fn containerd_config_problems_are_named() {
    let mut f = healthy();
    f.put(
        runtime::CONTAINERD_CONFIG,
        &CONTAINERD_TOML
            .replace("SystemdCgroup = true", "SystemdCgroup = false")
            .replace("\"overlayfs\"", "\"native\""),
    );
    assert_eq!(
        f.check("containerd-config"),
        fail(
            "/etc/containerd/config.toml: SystemdCgroup is false for the runc runtime, needs \
             true ([plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]); \
             snapshotter is \"native\", needs \"overlayfs\" \
             (plugins.\"io.containerd.grpc.v1.cri\".containerd.snapshotter)"
        )
    );
    // An unset snapshotter is containerd's default, overlayfs; an unset SystemdCgroup is
    // false; a disabled CRI plugin is named.
    f.put(
        runtime::CONTAINERD_CONFIG,
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
    );
    assert_eq!(
        f.check("containerd-config"),
        fail(
            "/etc/containerd/config.toml: disabled_plugins turns the CRI plugin off; \
             SystemdCgroup is not set for the runc runtime, needs true \
             ([plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options])"
        )
    );
    f.put(runtime::CONTAINERD_CONFIG, "version = 2\n[plugins\n");
    assert!(
        matches!(f.check("containerd-config"), Outcome::Fail(m) if m.starts_with("/etc/containerd/config.toml is not valid TOML (line 2): "))
    );
    f.files.remove(runtime::CONTAINERD_CONFIG);
    assert!(
        matches!(f.check("containerd-config"), Outcome::Fail(m) if m.starts_with("no /etc/containerd/config.toml: "))
    );
    // containerd 2's version 3 layout.
    f.put(
        runtime::CONTAINERD_CONFIG,
        "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n\
         SystemdCgroup = true\n",
    );
    assert_eq!(
        f.check("containerd-config"),
        Outcome::Pass("SystemdCgroup = true, snapshotter overlayfs (config version 3)".into())
    );
}

#[test]
fn containerd_socket_failures_have_clear_reasons() {
    let mut f = healthy();
    f.socket = Socket::Refuse(io::ErrorKind::NotFound);
    assert_eq!(
        f.check("containerd"),
        fail("no socket /run/containerd/containerd.sock (containerd not running?)")
    );
    f.socket = Socket::Refuse(io::ErrorKind::ConnectionRefused);
    assert_eq!(
        f.check("containerd"),
        fail("/run/containerd/containerd.sock: connection refused (containerd not listening)")
    );
    f.socket = Socket::Serve(|s| {
        use std::io::Write;
        s.write_all(&encode_frame(
            frame_type::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &hex(UNIMPLEMENTED),
        ))
        .unwrap();
    });
    assert_eq!(
        f.check("containerd"),
        fail(
            "CRI Version call on /run/containerd/containerd.sock: grpc-status 12 \
             UNIMPLEMENTED: unknown service runtime.v1.RuntimeService (is the CRI plugin \
             disabled?)"
        )
    );
    f.socket = Socket::Serve(|s| {
        use std::io::Write;
        s.write_all(&encode_frame(
            frame_type::GOAWAY,
            0,
            0,
            &[0, 0, 0, 0, 0, 0, 0, 2],
        ))
        .unwrap();
    });
    assert_eq!(
        f.check("containerd"),
        fail(
            "CRI Version call on /run/containerd/containerd.sock: the server sent GOAWAY \
             INTERNAL_ERROR (2)"
        )
    );
}

#[test]
fn unsynchronized_clock_fails() {
    let mut f = healthy();
    f.dirs.remove(checks::TIMESYNC_FLAG);
    assert_eq!(
        f.check("clock"),
        fail("not synchronized (no NTP answer yet; no /run/systemd/timesync/synchronized)")
    );
}

#[test]
fn default_routes_ipv4_ipv6_and_none() {
    let mut f = healthy();
    // IPv6 only: a default via a link-local router; lo's reject route is ignored.
    f.put("/proc/net/route", ROUTE_HEADER);
    f.put(
        "/proc/net/ipv6_route",
        &format!(
            "{IPV6_LO_REJECT}00000000000000000000000000000000 00 \
             00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 \
             00000001 00000000 00000003   enp0s2\n"
        ),
    );
    assert_eq!(
        f.check("route"),
        Outcome::Pass("IPv6 via fe80::1 dev enp0s2".into())
    );
    f.put("/proc/net/ipv6_route", IPV6_LO_REJECT);
    assert!(
        matches!(f.check("route"), Outcome::Fail(m) if m.starts_with("no default route (IPv4 in /proc/net/route or IPv6"))
    );
    // A down (flags 0) IPv4 default does not count; an on-link one does.
    f.put(
        "/proc/net/route",
        &format!(
            "{ROUTE_HEADER}eth0\t00000000\t0101A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n\
             wg0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n"
        ),
    );
    assert_eq!(
        f.check("route"),
        Outcome::Pass("IPv4 dev wg0 (no gateway)".into())
    );
}

#[test]
fn hostname_localhost_invalid_and_upper_case() {
    let mut f = healthy();
    f.put("/proc/sys/kernel/hostname", "localhost\n");
    assert!(
        matches!(f.check("hostname"), Outcome::Fail(m) if m.starts_with("hostname is \"localhost\": give the node a name"))
    );
    f.put("/proc/sys/kernel/hostname", "node_1\n");
    assert_eq!(
        f.check("hostname"),
        fail(
            "hostname \"node_1\" is not a valid node name: label \"node_1\" has characters \
             other than letters, digits and '-'"
        )
    );
    f.put("/proc/sys/kernel/hostname", "-a.b\n");
    assert!(f.check("hostname").failed());
    f.put(
        "/proc/sys/kernel/hostname",
        &format!("{}\n", "a".repeat(64)),
    );
    assert!(f.check("hostname").failed());
    f.put("/proc/sys/kernel/hostname", "Node-1.example\n");
    assert_eq!(
        f.check("hostname"),
        Outcome::Warn("Node-1.example: kubelet registers the node as \"node-1.example\"".into())
    );
    // The rule itself (every problem and its wording) is tested in kiln_contract::names.
    f.put("/proc/sys/kernel/hostname", "a..b\n");
    assert_eq!(
        f.check("hostname"),
        fail("hostname \"a..b\" is not a valid node name: has an empty label")
    );
}

#[test]
fn var_on_tmpfs_warns_and_read_only_fails() {
    let mut f = healthy();
    f.put(
        "/proc/self/mountinfo",
        &MOUNTINFO.replace("- ext4 /dev/vda4 rw", "- tmpfs tmpfs rw,size=200m"),
    );
    assert_eq!(
        f.check("var"),
        Outcome::Warn(
            "/var is a tmpfs: container images and kubelet state are lost at reboot".into()
        )
    );
    // The WARN does not fail the run.
    assert!(run(&mut f, CHECKS, Duration::ZERO));
    assert!(f
        .lines
        .contains(&"kiln-preflight: passed (12 checks)".to_string()));
    let no_var: String = MOUNTINFO
        .lines()
        .filter(|l| !l.contains(" /var "))
        .map(|l| format!("{l}\n"))
        .collect();
    f.put("/proc/self/mountinfo", &no_var);
    assert_eq!(
        f.check("var"),
        fail("/ (/dev/vda2, ext4) is read-only: containerd and kubelet write under /var/lib")
    );
}

#[test]
fn kubelet_port_in_use_fails() {
    let mut f = healthy();
    f.put(
        "/proc/net/tcp6",
        &format!("{TCP_HEADER}{}", tcp_line(10250, "0A")),
    );
    assert_eq!(
        f.check("kubelet-port"),
        fail("port 10250 is already in use (is a kubelet running already?)")
    );
    // An established connection from port 10250 is not a listener.
    f.put(
        "/proc/net/tcp6",
        &format!("{TCP_HEADER}{}", tcp_line(10250, "01")),
    );
    assert!(!f.check("kubelet-port").failed());
}

#[test]
fn wait_retries_only_failing_checks_until_they_pass() {
    let mut f = healthy();
    f.dirs.remove(checks::TIMESYNC_FLAG);
    f.socket = Socket::Refuse(io::ErrorKind::NotFound);
    f.hooks.push((Duration::from_secs(4), |f| {
        f.socket = Socket::Serve(ok_response);
    }));
    f.hooks.push((Duration::from_secs(20), |f| {
        f.dirs.insert(checks::TIMESYNC_FLAG.into());
    }));
    assert!(run(&mut f, CHECKS, Duration::from_secs(240)));
    assert_eq!(f.elapsed, Duration::from_secs(20));
    let waiting: Vec<&String> = f.lines.iter().filter(|l| l.contains("waiting")).collect();
    assert_eq!(
        waiting,
        [
            "kiln-preflight: waiting for: containerd, clock",
            "kiln-preflight: waiting for: clock",
        ]
    );
    assert_eq!(f.lines.len(), 2 + 13);
    assert_eq!(
        f.lines.last().unwrap(),
        "kiln-preflight: passed (12 checks)"
    );
    // The passing tools check ran once, not once per retry.
    assert_eq!(f.ran.len(), 4);
}

#[test]
fn wait_gives_up_after_the_limit_with_the_full_report() {
    let mut f = healthy();
    f.dirs.remove(checks::TIMESYNC_FLAG);
    assert!(!run(&mut f, CHECKS, Duration::from_secs(41)));
    assert_eq!(f.elapsed, Duration::from_secs(41));
    let waiting = f.lines.iter().filter(|l| l.contains("waiting")).count();
    // At 0, 16 and 32 s: at most one line every 15 s.
    assert_eq!(waiting, 3);
    assert!(f
        .lines
        .contains(&"kiln-preflight: [FAIL] clock: not synchronized (no NTP answer yet; no /run/systemd/timesync/synchronized)".to_string()));
    assert_eq!(
        f.lines.last().unwrap(),
        "kiln-preflight: FAILED (1 of 12 checks)"
    );
    // Without --wait nothing is retried and nothing waits.
    let mut f = healthy();
    f.dirs.remove(checks::TIMESYNC_FLAG);
    assert!(!run(&mut f, CHECKS, Duration::ZERO));
    assert_eq!(f.elapsed, Duration::ZERO);
    assert_eq!(f.lines.len(), 13);
}

#[test]
fn arguments() {
    let a = |s: &[&str]| parse_args(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(a(&[]), Ok(Duration::ZERO));
    assert_eq!(a(&["--wait", "240"]), Ok(Duration::from_secs(240)));
    assert_eq!(a(&["--wait=5"]), Ok(Duration::from_secs(5)));
    assert!(a(&["--wait"]).is_err());
    assert!(a(&["--wait", "x"]).is_err());
    assert_eq!(a(&["-v"]), Err("unknown argument \"-v\"".into()));
}

/// The image's agent.toml with a `[cluster]` of `table`'s lines.
fn with_cluster(table: &str) -> Fake {
    let mut f = healthy();
    f.put(
        crate::config::settings::SETTINGS_PATH,
        &format!("schema = 1\n[cluster]\n{table}\n"),
    );
    f
}

const KUBEADM_1_34: &str = "kind = \"kubeadm\"\nkubernetes = \"1.34.2\"";

#[test]
fn containerd_is_checked_against_the_clusters_kubernetes_version() {
    let mut f = with_cluster(KUBEADM_1_34);
    f.socket = Socket::Version("containerd", "2.1.9+ds1");
    assert_eq!(
        f.check("containerd"),
        Outcome::Pass("containerd 2.1.9+ds1 (CRI v1), supports Kubernetes 1.34.2".into())
    );
    assert_eq!(f.connected, [runtime::CONTAINERD_SOCKET]);
    // trixie's containerd is too old for 1.34: the ranges, their source and what to change.
    f.socket = Socket::Version("containerd", "1.7.24~ds1");
    assert_eq!(
        f.check("containerd"),
        fail(&format!(
            "containerd 1.7.24~ds1 (CRI v1): containerd 1.7.24 does not support Kubernetes \
             1.34.2: {} lists 2.1.3+, 2.0.6+, 1.7.28+, 1.6.39+ for Kubernetes 1.34; use a \
             containerd in one of those ranges, or a Kubernetes version containerd 1.7.24 \
             supports: 1.30, 1.31, 1.32, 1.33 (the image's containerd comes from the \
             profile's packages: take a supported one from another suite with \
             [packages.from] (e.g. containerd 2.x from forky), or build the image for a \
             Kubernetes version this containerd supports)",
            kiln_contract::kubernetes::SOURCE
        ))
    );
    // A line newer than the matrix lists for 1.34: a warning, not a failure.
    f.socket = Socket::Version("containerd", "v2.4.0");
    assert!(
        matches!(f.check("containerd"), Outcome::Warn(m) if m.starts_with("containerd v2.4.0 (CRI v1) for Kubernetes 1.34.2: a newer containerd line than") && m.ends_with("upstream has not tested the pair"))
    );
    // A Kubernetes minor newer than the table: kiln must be updated.
    let mut f = with_cluster("kind = \"kubeadm\"\nkubernetes = \"1.37.0\"");
    f.socket = Socket::Version("containerd", "2.3.0");
    assert!(
        matches!(f.check("containerd"), Outcome::Fail(m) if m.contains("Kubernetes 1.37.0 is newer than kiln's copy") && m.contains("update kiln"))
    );
    // Not containerd, or a version kiln cannot read: said, not failed.
    f.socket = Socket::Version("cri-o", "1.34.0");
    assert!(
        matches!(f.check("containerd"), Outcome::Warn(m) if m.starts_with("cri-o 1.34.0 (CRI v1): not containerd"))
    );
    f.socket = Socket::Version("containerd", "main");
    assert!(
        matches!(f.check("containerd"), Outcome::Warn(m) if m.contains("\"main\" is not a containerd version"))
    );
}

#[test]
fn without_a_version_nothing_is_checked_and_a_broken_agent_toml_is_named() {
    // No [cluster] (the healthy node) and an agent.toml from before the version: as before.
    for mut f in [healthy(), with_cluster("kind = \"kubeadm\"")] {
        f.socket = Socket::Version("containerd", "1.6.20~ds1");
        assert_eq!(
            f.check("containerd"),
            Outcome::Pass("containerd 1.6.20~ds1 (CRI v1)".into())
        );
    }
    let mut f = with_cluster("kind = \"kubeadm\"\nkubernetes = \"one\"");
    assert!(
        matches!(f.check("containerd"), Outcome::Warn(m) if m.starts_with("containerd 1.6.20~ds1 (CRI v1); not checked against the cluster's Kubernetes version: /usr/lib/kiln/agent.toml: cluster.kubernetes = \"one\""))
    );
    // The config check falls back to the image's containerd.
    assert!(!f.check("containerd-config").failed());
}

#[test]
fn k3s_embedded_containerd_is_checked_on_its_socket_once_k3s_runs() {
    let mut f = with_cluster("kind = \"k3s\"\ncontainerd = \"k3s\"\nkubernetes = \"1.36.4\"");
    // Before kiln-cluster started k3s: SKIP, and the run passes.
    f.socket = Socket::Refuse(io::ErrorKind::NotFound);
    assert!(run(&mut f, CHECKS, Duration::from_secs(240)));
    assert_eq!(f.elapsed, Duration::ZERO, "a SKIP is not waited for");
    let skips: Vec<&String> = f.lines.iter().filter(|l| l.contains("[SKIP]")).collect();
    assert_eq!(
        skips,
        [
            "kiln-preflight: [SKIP] containerd-config: k3s's embedded containerd: k3s writes \
             its config (/var/lib/rancher/k3s/agent/etc/containerd/config.toml) itself",
            "kiln-preflight: [SKIP] containerd: k3s's embedded containerd is not running yet \
             (no socket /run/k3s/containerd/containerd.sock): kiln-cluster starts k3s once the \
             node has enrolled; run `kiln-agent preflight` again then",
        ]
    );
    assert_eq!(
        f.lines.last().unwrap(),
        "kiln-preflight: passed (12 checks, 2 skipped)"
    );
    assert!(f
        .connected
        .iter()
        .all(|p| p == runtime::K3S_CONTAINERD_SOCKET));
    // /etc/containerd/config.toml is not read for it: a broken one does not matter.
    f.put(runtime::CONTAINERD_CONFIG, "[plugins\n");
    assert!(matches!(f.check("containerd-config"), Outcome::Skip(_)));
    f.socket = Socket::Refuse(io::ErrorKind::ConnectionRefused);
    assert!(matches!(f.check("containerd"), Outcome::Skip(m) if m.contains("connection refused")));
    // k3s running: its containerd is checked like the image's.
    f.socket = Socket::Version("containerd", "v2.2.1-k3s1");
    assert_eq!(
        f.check("containerd"),
        Outcome::Pass("containerd v2.2.1-k3s1 (CRI v1), supports Kubernetes 1.36.4".into())
    );
    f.socket = Socket::Version("containerd", "v2.1.5-k3s1");
    assert!(
        matches!(f.check("containerd"), Outcome::Fail(m) if m.contains("lists 2.3.0+, 2.2.0+ for Kubernetes 1.36") && m.ends_with("(k3s brings its own containerd: build the image with a k3s release of a Kubernetes version that containerd supports, or set [cluster] containerd = \"image\")"))
    );
    // Other socket errors still fail.
    f.socket = Socket::Refuse(io::ErrorKind::PermissionDenied);
    assert!(f.check("containerd").failed());
    // k3s on the image's containerd: the image's socket and config.
    let mut f = with_cluster("kind = \"k3s\"\ncontainerd = \"image\"\nkubernetes = \"1.33\"");
    f.socket = Socket::Version("containerd", "1.7.24~ds1");
    assert_eq!(
        f.check("containerd"),
        Outcome::Pass("containerd 1.7.24~ds1 (CRI v1), supports Kubernetes 1.33".into())
    );
    assert_eq!(f.connected, [runtime::CONTAINERD_SOCKET]);
    assert!(matches!(f.check("containerd-config"), Outcome::Pass(_)));
}

#[test]
fn containerd_2_config_version_3_is_read_and_version_2_still_is() {
    let mut f = healthy();
    let v3 = "version = 3\n\
              [plugins.'io.containerd.cri.v1.images']\n\
              snapshotter = \"overlayfs\"\n\
              [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n\
              SystemdCgroup = true\n";
    f.put(runtime::CONTAINERD_CONFIG, v3);
    assert_eq!(
        f.check("containerd-config"),
        Outcome::Pass("SystemdCgroup = true, snapshotter overlayfs (config version 3)".into())
    );
    f.put(
        runtime::CONTAINERD_CONFIG,
        &format!("disabled_plugins = [\"io.containerd.cri.v1.images\"]\n{v3}"),
    );
    assert_eq!(
        f.check("containerd-config"),
        fail("/etc/containerd/config.toml: disabled_plugins turns the CRI plugin off")
    );
    f.put(
        runtime::CONTAINERD_CONFIG,
        &v3.replace("SystemdCgroup = true", "SystemdCgroup = false")
            .replace("\"overlayfs\"", "\"native\""),
    );
    assert_eq!(
        f.check("containerd-config"),
        fail(
            "/etc/containerd/config.toml: SystemdCgroup is false for the runc runtime, needs \
             true ([plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc.options]); \
             snapshotter is \"native\", needs \"overlayfs\" \
             (plugins.\"io.containerd.cri.v1.images\".snapshotter)"
        )
    );
    // The base overlay's version 2 file (containerd 2 migrates it when it starts).
    f.put(runtime::CONTAINERD_CONFIG, CONTAINERD_TOML);
    assert!(
        matches!(f.check("containerd-config"), Outcome::Pass(m) if m.ends_with("(config version 2)"))
    );
}
