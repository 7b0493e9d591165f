//! k3s over the overlay with a real k3s binary: a server node (public, x86_64) and two
//! agents behind their own NATs (arm64 when an arm64 k3s is given) join one cluster by
//! themselves with the parameters kiln-enroll hands out, and all three are Ready with
//! their overlay addresses as INTERNAL-IP.
//!
//! k3s is not in Debian and release downloads are unreachable from these machines, so the
//! test needs `KILN_K3S_BINARY` (x86_64 k3s) and, for a mixed-arch cluster,
//! `KILN_K3S_BINARY_ARM64`. It is an ignored test: `make test` runs it when
//! `KILN_K3S_BINARY` is set, and without it the suite lists it as ignored, not passed. The parts
//! that run without k3s are tested elsewhere: kiln-enroll's cluster parameters
//! (enroll/tests/cluster.rs, real server on SQLite and PostgreSQL), the configs the agent
//! writes parsed back against k3s's and kubeadm's schemas and its join supervision
//! (agent/src/cluster/tests.rs), the artifact and the units in a built image
//! (builder/tests/artifact.rs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln::arch::Arch;
use kiln_qemu_tests::enroll_server::EnrollServer;
use kiln_qemu_tests::net::{enroll_url, HostServices, OwnNat};
use kiln_qemu_tests::{fw_cfg_config, k3s_image, RunningVm};

/// TCG: a k3s server takes many minutes to start.
const JOIN: Duration = Duration::from_secs(3600);
const READY: Duration = Duration::from_secs(1800);
const CMD: Duration = Duration::from_secs(300);

#[test]
#[ignore = "needs a k3s binary (KILN_K3S_BINARY): k3s is not in Debian and its downloads are \
            unreachable here; `make test KILN_K3S_BINARY=/path/to/k3s` runs it"]
fn k3s_server_and_two_agents_join_over_the_overlay_and_are_ready() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let Some(k3s_x86) = std::env::var_os("KILN_K3S_BINARY").map(PathBuf::from) else {
        panic!(
            "KILN_K3S_BINARY is not set: this test boots real k3s, which is not packaged in \
             Debian and whose release downloads are unreachable from this machine; set \
             KILN_K3S_BINARY=/path/to/k3s (x86_64) and optionally \
             KILN_K3S_BINARY_ARM64=/path/to/k3s-arm64"
        );
    };
    let k3s_arm = std::env::var_os("KILN_K3S_BINARY_ARM64").map(PathBuf::from);
    let _whole = kiln_qemu_tests::share::whole_machine();
    kiln_qemu_tests::sntp::ensure_server().ok();
    let server = EnrollServer::launch(&["--heartbeat", "10", "--endpoint-ttl", "60"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    server
        .cli(&["cluster", "init", "k3s"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let server_token = server
        .token(&["--ttl", "2h", "--uses", "1", "--role", "server"])
        .unwrap();
    let worker_token = server
        .token(&[
            "--ttl",
            "2h",
            "--uses",
            "2",
            "--role",
            "worker",
            "--label",
            "kiln.test/pool=edge",
        ])
        .unwrap();
    let host = HostServices::new(
        &PathBuf::from(env!("CARGO_BIN_EXE_kiln-tcp-relay")),
        server.port(),
    );
    let dir = tempfile::tempdir().unwrap();
    let second = match &k3s_arm {
        Some(p) => (Arch::Arm64, p.clone()),
        None => (Arch::X86_64, k3s_x86.clone()),
    };
    let plan = [
        (
            "cp",
            Arch::X86_64,
            k3s_x86.clone(),
            OwnNat::public().unwrap(),
            &server_token,
        ),
        (
            "edge-a",
            second.0,
            second.1,
            OwnNat::private(),
            &worker_token,
        ),
        (
            "edge-b",
            Arch::X86_64,
            k3s_x86,
            OwnNat::private(),
            &worker_token,
        ),
    ];
    let mut nodes: Vec<(String, RunningVm)> = Vec::new();
    for (name, arch, k3s, nat, token) in plan {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let built = k3s_image(arch, &k3s, name).unwrap_or_else(|e| panic!("{e:#}"));
        let mut vm = kiln::qemu::Vm::new(arch, &built.image);
        vm.memory_mib = vm.memory_mib.max(2048);
        nat.attach(&host, &mut vm);
        let mut config = format!(
            "[enroll]\nserver = \"{}\"\ntoken = \"{token}\"\n",
            enroll_url()
        );
        if let Some(e) = nat.endpoint() {
            config.push_str(&format!("endpoint = \"{e}\"\n"));
        }
        vm.fw_cfg
            .push(fw_cfg_config(&out, config.as_bytes()).unwrap());
        nodes.push((
            name.to_string(),
            RunningVm::start(vm).unwrap_or_else(|e| panic!("{name}: {e:#}")),
        ));
    }
    let mut addrs = Vec::new();
    for (i, (name, vm)) in nodes.iter_mut().enumerate() {
        let role = if i == 0 { "server" } else { "worker" };
        let text = vm
            .wait_for(&[&format!("kiln-cluster: joined k3s as {role}")], JOIN)
            .unwrap_or_else(|e| panic!("{name}: {e:#}\nkiln-enroll log:\n{}", server.log()));
        let line = text
            .lines()
            .find(|l| l.contains("kiln-cluster: joined k3s as"))
            .unwrap();
        let ip = line
            .split("(node-ip ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_else(|| panic!("{name}: no node-ip in {line:?}"))
            .to_string();
        eprintln!(
            "{name}: joined as {role} with node-ip {ip}, {:.0} s after QEMU started",
            vm.elapsed()
        );
        addrs.push(ip);
        // Secrets removed once joined.
        let (status, out) = vm.run_status("test ! -e /run/kiln/k3s/token", CMD).unwrap();
        assert_eq!(
            status, 0,
            "{name}: the k3s token is still on the node: {out}"
        );
    }
    let started = Instant::now();
    let cp = &mut nodes[0].1;
    let mut last = String::new();
    while started.elapsed() < READY {
        let (status, out) = cp
            .run_status("k3s kubectl get nodes --no-headers -o wide", CMD)
            .unwrap();
        last = out;
        let ready: Vec<&str> = last
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
            .collect();
        if status == 0
            && ready.len() == 3
            && addrs
                .iter()
                .all(|a| ready.iter().any(|l| l.split_whitespace().nth(5) == Some(a)))
        {
            eprintln!(
                "all 3 nodes Ready after {:.0} s:\n{last}",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(Duration::from_secs(15));
    }
    panic!("not all nodes Ready with their overlay addresses {addrs:?} after {READY:?}:\n{last}");
}
