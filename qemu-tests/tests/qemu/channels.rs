//! The homelab image takes its hostname from the highest-precedence
//! channel that has one: the ESP's kiln.toml (what a user edits after
//! flashing) over a NoCloud cidata ISO and fw_cfg; without it, the cidata
//! volume over fw_cfg.
//!
//! The same boots log in over SSH (homelab images have `[ssh] enable = true`)
//! as an operator would: root's key comes from one channel (the ESP on
//! x86_64, cidata on arm64), the host key ssh sees is the one the node
//! printed, a key not in the config is refused, and on arm64 a channel whose
//! key line is not a key is refused with one ERROR line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use kiln::arch::Arch;
use kiln_qemu_tests::ssh::{console_host_keys, Client};
use kiln_qemu_tests::{cidata_iso, fw_cfg_config, profile_image, set_esp_file, RunningVm};

use crate::{assert_channel_read, assert_hostname_from, BOOT_TIMEOUT};

const HOMELAB: &str = "profiles/homelab.toml";

/// The console line kiln-ssh prints once root's keys are written, just before
/// ssh.service starts.
const SSH_READY: &str = "kiln-ssh: authorized key for root: ";

/// How long sshd may take to answer once kiln-ssh is done (TCG).
const SSH_TIMEOUT: Duration = Duration::from_secs(180);

/// The node config line that authorizes `key`.
fn keys_line(key: &str) -> String {
    format!(
        "ssh_authorized_keys = [{}]\n",
        toml::Value::String(key.into())
    )
}

/// Logs in with the good key, runs a command, checks the host key against the
/// console, and checks that the wrong key is refused.
fn assert_ssh(vm: &mut RunningVm, client: &Client, port: u16, hostname: &str, what: &str) {
    let out = client
        .run_when_up(
            port,
            "good",
            "cat /proc/sys/kernel/hostname; id -u",
            SSH_TIMEOUT,
        )
        .unwrap_or_else(|e| {
            panic!(
                "{what}: {e:#}\n{}",
                kiln_qemu_tests::tail(&vm.console(), 40)
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout == format!("{hostname}\n0\n"),
        "{what}: ssh with the authorized key: {:?}, stdout {stdout:?}, stderr {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        kiln_qemu_tests::tail(&vm.console(), 40)
    );
    eprintln!(
        "{what}: ssh login ran a command {:.1} s after QEMU started",
        vm.elapsed()
    );
    let printed = console_host_keys(&vm.console());
    let seen = client.seen_host_keys().unwrap();
    assert!(!seen.is_empty(), "{what}: ssh recorded no host key");
    for (kind, fp) in &seen {
        assert_eq!(
            printed.get(kind),
            Some(fp),
            "{what}: ssh saw {kind} {fp}; the console printed {printed:?}"
        );
    }
    let wrong = client.run(port, "wrong", "true").unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        wrong.status.code() == Some(255) && stderr.contains("Permission denied (publickey)"),
        "{what}: a key not in the config must be refused, and only keys offered: {:?} {stderr}",
        wrong.status
    );
}

#[test]
fn x86_64_homelab_hostname_from_the_esp_over_cidata_and_fw_cfg() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let arch = Arch::X86_64;
    let built = profile_image(HOMELAB, arch).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(dir.path()).unwrap();
    let esp = format!(
        "# written after flashing\nhostname = \"esp-x\"\n{}",
        keys_line(&client.public_key("good").unwrap())
    );
    let image = set_esp_file(
        &built.image,
        &built.manifest,
        dir.path(),
        "kiln.toml",
        esp.as_bytes(),
    )
    .unwrap();
    let mut vm = kiln::qemu::Vm::new(arch, &image);
    let port = kiln_qemu_tests::net::free_tcp_port().unwrap();
    vm.forward_tcp(port, 22);
    vm.drives.push(
        cidata_iso(
            dir.path(),
            &[("kiln.toml", b"hostname = \"cidata-iso-x\"\n")],
        )
        .unwrap(),
    );
    vm.fw_cfg
        .push(fw_cfg_config(dir.path(), b"hostname = \"fwcfg-x\"\n").unwrap());
    let mut vm = RunningVm::start(vm).unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for(&["kiln-config: hostname ", SSH_READY], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!(
        "{arch}: hostname set and ssh keys ready {:.1} s after QEMU started",
        vm.elapsed()
    );
    assert_hostname_from(&text, "esp-x", "esp", "x86_64 homelab");
    assert_channel_read(
        &text,
        "esp",
        "esp-x ssh_authorized_keys=1",
        "x86_64 homelab",
    );
    assert_channel_read(&text, "cidata", "cidata-iso-x", "x86_64 homelab");
    assert_channel_read(&text, "fw_cfg", "fwcfg-x", "x86_64 homelab");
    assert_ssh(&mut vm, &client, port, "esp-x", "x86_64 homelab");
}

#[test]
fn arm64_homelab_hostname_from_a_cidata_iso_over_fw_cfg() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let arch = Arch::Arm64;
    let built = profile_image(HOMELAB, arch).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(dir.path()).unwrap();
    let mut vm = kiln::qemu::Vm::new(arch, &built.image);
    let port = kiln_qemu_tests::net::free_tcp_port().unwrap();
    vm.forward_tcp(port, 22);
    let cidata = format!(
        "hostname=\"cidata-iso\"\n{}",
        keys_line(&client.public_key("good").unwrap())
    );
    vm.drives
        .push(cidata_iso(dir.path(), &[("kiln.toml", cidata.as_bytes())]).unwrap());
    // A line that is not a key: fw_cfg is refused as a whole, with one line that
    // names the channel, the entry and what is wrong.
    vm.fw_cfg.push(
        fw_cfg_config(
            dir.path(),
            b"hostname = \"fwcfg-a\"\nssh_authorized_keys = [\"ssh-ed25519 not-base64!\"]\n",
        )
        .unwrap(),
    );
    let mut vm = RunningVm::start(vm).unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for(&["kiln-config: hostname ", SSH_READY], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!(
        "{arch}: hostname set and ssh keys ready {:.1} s after QEMU started",
        vm.elapsed()
    );
    assert_hostname_from(&text, "cidata-iso", "cidata", "arm64 homelab");
    assert_channel_read(
        &text,
        "cidata",
        "cidata-iso ssh_authorized_keys=1",
        "arm64 homelab",
    );
    let errors = kiln_qemu_tests::lines_with(&text, "kiln-config: ERROR: fw_cfg: ");
    assert!(
        errors.len() == 1
            && errors[0].contains(
                "ssh_authorized_keys[0]: \"ssh-ed25519 not-base64!\": the key data is not base64"
            ),
        "arm64 homelab: the bad key line must give one ERROR line naming fw_cfg and the \
         entry: {errors:#?}"
    );
    assert_ssh(&mut vm, &client, port, "cidata-iso", "arm64 homelab");
}
