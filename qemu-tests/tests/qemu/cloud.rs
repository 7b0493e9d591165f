//! The cloud channel: the cloud profile's image, booted with a cloud's DMI data
//! (`-smbios`) and the fake metadata service on the host reached through guestfwd at
//! 169.254.169.254:80, takes its hostname from the user-data.
//!
//! Each provider's code in the agent is arch-independent (plain HTTP over TCP and DMI files
//! in sysfs, both verified on both arches), so the providers are spread over the arches to
//! keep the suite short: EC2 and Azure boot x86_64, GCE and Oracle boot arm64.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use kiln::arch::Arch;
use kiln_qemu_tests::metadata::{nic_options, MetadataServer, Provider, Recorded};
use kiln_qemu_tests::{lines_with, profile_image, report_fields, tail, RunningVm};

use crate::{assert_channel_read, assert_hostname_from, BOOT_TIMEOUT};

const CLOUD: &str = "profiles/cloud.toml";
const RELAY: &str = env!("CARGO_BIN_EXE_kiln-tcp-relay");

/// Boots the cloud image as `provider` with the metadata service on `port` and waits for
/// `markers` (not the login prompt).
fn boot(arch: Arch, provider: Provider, port: u16, markers: &[&str]) -> String {
    let built = profile_image(CLOUD, arch).unwrap_or_else(|e| panic!("{e:#}"));
    let mut vm = kiln::qemu::Vm::new(arch, &built.image);
    vm.user_net_options = nic_options(Path::new(RELAY), port);
    vm.extra.extend(provider.smbios_args());
    let mut vm = RunningVm::start(vm).unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for(markers, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch} {provider:?}: {e:#}"));
    eprintln!(
        "{arch} {provider:?}: {markers:?} {:.1} s after QEMU started",
        vm.elapsed()
    );
    text
}

/// Boots with `provider`'s DMI data and user-data `hostname = "<provider>-node"`; checks
/// the console and that every request the agent made was answered 200. kiln-config
/// prints its hostname line once the kernel took the name, after every fetch: the boot
/// is followed no further (the unreachable-service scenario waits for the boot report).
/// Returns the server's request log for provider-specific checks.
fn hostname_from_user_data(arch: Arch, provider: Provider, user_data: &str) -> Vec<Recorded> {
    let name = format!("{}-node", provider.name());
    let srv = MetadataServer::start(provider, Some(user_data)).unwrap();
    let text = boot(arch, provider, srv.port(), &["kiln-config: hostname "]);
    let what = format!("{arch} {provider:?}");
    assert_hostname_from(&text, &name, provider.name(), &what);
    assert_channel_read(&text, provider.name(), &name, &what);
    let errors = lines_with(&text, "kiln-config: ERROR");
    assert!(errors.is_empty(), "{what}: {errors:#?}");
    let log = srv.requests();
    assert!(
        !log.is_empty(),
        "{what}: the metadata server got no request"
    );
    for r in &log {
        assert_eq!(
            r.status,
            200,
            "{what}: {r:?} in {log:#?}\n{}",
            tail(&text, 30)
        );
    }
    log
}

#[test]
fn x86_64_ec2_user_data_after_the_imdsv2_token_put() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let log = hostname_from_user_data(
        Arch::X86_64,
        Provider::Ec2,
        "#kiln-config\nhostname = \"ec2-node\"\n",
    );
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str()),
        ("PUT", "/latest/api/token")
    );
    assert_eq!(
        log[0].header("X-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    assert_eq!(
        (log[1].method.as_str(), log[1].path.as_str()),
        ("GET", "/latest/user-data")
    );
    assert!(
        log[1]
            .header("X-aws-ec2-metadata-token")
            .is_some_and(|t| t.starts_with("AQAEAFake-Token-")),
        "{log:#?}"
    );
}

#[test]
fn x86_64_azure_user_data_from_imds() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let log = hostname_from_user_data(Arch::X86_64, Provider::Azure, "hostname = \"azure-node\"\n");
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(
        log[0].path,
        "/metadata/instance/compute/userData?api-version=2021-01-01&format=text"
    );
    assert_eq!(log[0].header("Metadata"), Some("true"));
}

#[test]
fn arm64_gce_user_data_with_metadata_flavor() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let log = hostname_from_user_data(Arch::Arm64, Provider::Gce, "hostname = \"gce-node\"\n");
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(
        log[0].path,
        "/computeMetadata/v1/instance/attributes/user-data"
    );
    assert_eq!(log[0].header("Metadata-Flavor"), Some("Google"));
}

#[test]
fn arm64_oracle_user_data_with_the_bearer_header() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let log = hostname_from_user_data(
        Arch::Arm64,
        Provider::Oracle,
        "hostname = \"oracle-node\"\n",
    );
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0].path, "/opc/v2/instance/metadata/user_data");
    assert_eq!(log[0].header("Authorization"), Some("Bearer Oracle"));
}

/// A port on 127.0.0.1 with nothing listening.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn x86_64_ec2_unreachable_metadata_service_is_an_error_and_the_node_boots() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let arch = Arch::X86_64;
    let text = boot(
        arch,
        Provider::Ec2,
        closed_port(),
        &["kiln-config: hostname ", "kiln-report:"],
    );
    let errors = lines_with(&text, "kiln-config: ERROR: ec2: ");
    assert!(
        errors
            .iter()
            .any(|l| l.contains("http://169.254.169.254/latest/api/token")
                && l.contains("the node goes on without cloud config")),
        "no ERROR line naming the token URL: {errors:#?}\n{}",
        tail(&text, 40)
    );
    let (name, from) = crate::config_hostname(&text).expect("no hostname line");
    assert_eq!(from, "machine-id", "hostname {name} from {from}");
    let fields = report_fields(&text).unwrap();
    assert_eq!(fields.get("hostname"), Some(&name), "{fields:?}");
}

/// The relay QEMU runs per guest connection: bytes both ways, nothing else on stdout or
/// stderr, and a silent exit when the host side is closed.
#[test]
fn tcp_relay_joins_stdio_to_the_server() {
    let srv = MetadataServer::start(Provider::Ec2, None).unwrap();
    let mut child = Command::new(RELAY)
        .arg(format!("127.0.0.1:{}", srv.port()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
              X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
    // Keep stdin open: the relay must answer before the guest closes its side.
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nAQAEAFake-Token-0001=="), "{out}");
    assert_eq!(err, "");
    assert_eq!(srv.requests().len(), 1);

    let out = Command::new(RELAY)
        .arg(format!("127.0.0.1:{}", closed_port()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
}
