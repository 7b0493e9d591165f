//! A/B updates with health-checked rollback, on one machine per arch that reboots in
//! the same QEMU process, its disk a copy of the image so power cuts (QEMU killed and
//! started again) keep what reached it:
//!
//! 1. Boot 1.0.0 (the flashed image, on its qcow2 grown like a real disk, with config
//!    on cidata and fw_cfg too): the first-boot checks of boot.rs and var.rs. `update
//!    status` says slot a runs 1.0.0 and slot b is empty. A file under /var and the
//!    machine-id are noted.
//! 2. `update check` reads a signed channel document from the host offering 2.0.0 and
//!    applies it over HTTP; the server cuts the first download short and the agent
//!    resumes it with a range request. The power is cut right after the new UKI is
//!    renamed into place; at the next power-on 2.0.0 boots on trial, passes its health
//!    check and is marked good (systemd-bless-boot); /var, the machine-id and the
//!    hostname are kept; the motd is 2.0.0's. Between the two, with the power off,
//!    sgdisk checks the table the init grew and the updater rewrote.
//! 3. (x86_64: first a power cut while 3.0.0 is being written: 2.0.0 boots as before,
//!    its other slot empty.) Apply 3.0.0, whose preflight fails (its image has
//!    containerd masked),
//!    with one try: it boots, fails its health check, reboots, and systemd-boot falls
//!    back to 2.0.0, which says on the console that it rolled back from 3.0.0 and why.
//!    Applying 3.0.0 again is refused.
//! 4. One more failing kind per arch, split to keep the suite short: x86_64 applies a
//!    3.0.1 whose init finds no root disk (no virtio driver), arm64 a 3.0.2 whose kernel
//!    panics (no init); both fall back to 2.0.0 by themselves.
//! 5. x86_64 (with QEMU's i6300esb watchdog) applies a 3.0.3 whose boot hangs: real-time
//!    spinners starve userspace, so PID 1 stops feeding the watchdog, which resets the
//!    machine; 2.0.0 comes back and says the watchdog ended 3.0.3's boot.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use kiln::arch::Arch;
use kiln_qemu_tests::files::FileServer;
use kiln_qemu_tests::{report_fields, update_hostname, update_image, RunningVm, UpdateBuild};

use crate::{boot, need_sntp, var, PREFLIGHT_TIMEOUT};

/// An apply downloads and writes ~200 MB under TCG and hashes it twice.
const APPLY: Duration = Duration::from_secs(900);
const SHORT: Duration = Duration::from_secs(120);

fn bundle(arch: Arch, which: UpdateBuild, server: &FileServer) -> String {
    let built = update_image(arch, which).unwrap_or_else(|e| panic!("{e:#}"));
    let name = format!("{}-{}.update", which.version(), arch.name());
    server.add(&name, built.output(".update"));
    server.guest_url(&name)
}

/// A channel document offering `which`'s bundle (by a URL relative to the document),
/// signed now with the test key and valid for a day; served as `<version>.channel.json`.
fn channel(arch: Arch, which: UpdateBuild, server: &FileServer, dir: &std::path::Path) -> String {
    let built = update_image(arch, which).unwrap_or_else(|e| panic!("{e:#}"));
    let key = kiln::keygen::UpdateKey::load(&kiln_qemu_tests::images::update_test_key()).unwrap();
    let out = dir.join(format!("{}.channel.json", which.version()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    kiln::channel::sign(&kiln::channel::SignJob {
        key: &key,
        bundle: &built.output(".update"),
        url: &format!("{}-{}.update", which.version(), arch.name()),
        expires_in: 86_400,
        issued: now,
        out: Some(&out),
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let name = format!("{}-{}.channel.json", which.version(), arch.name());
    server.add(&name, out);
    server.guest_url(&name)
}

fn status(vm: &mut RunningVm) -> serde_json::Value {
    let out = vm
        .run("kiln-agent update status --json", SHORT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The serial console also carries kernel and journal lines (`[   43.85] ...`), which
    // may land between the JSON's lines.
    let out: String = out
        .lines()
        .filter(|l| !is_printk(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let json = out.find('{').map(|at| &out[at..]);
    serde_json::from_str(json.unwrap_or_else(|| panic!("no JSON in {out:?}")))
        .unwrap_or_else(|e| panic!("update status --json: {e}: {out:?}"))
}

/// A kernel log line on the console: `[  12.345678] ...`.
fn is_printk(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .is_some_and(|(stamp, _)| {
            let t = stamp.trim();
            !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        })
}

fn field<'a>(v: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// The first word of 32 hex digits (`/etc/machine-id`) in `out`.
fn machine_id(out: &str) -> Option<String> {
    out.split_whitespace()
        .find(|w| w.len() == 32 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// Reboots into what was just applied and waits until the next boot starts.
fn reboot(vm: &mut RunningVm) {
    let from = vm.console().len();
    vm.send_line("systemctl reboot").unwrap();
    vm.wait_for_next_boot(from, SHORT * 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Waits for the boot that follows the one that printed `last` (a failure).
fn next_boot_after(vm: &mut RunningVm, last: &str) {
    let from = vm.offset_of_last(last);
    vm.wait_for_next_boot(from, SHORT * 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

fn updates_and_rolls_back(arch: Arch) {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    need_sntp();
    let server = FileServer::start().unwrap();
    let v1 = update_image(arch, UpdateBuild::V1).unwrap_or_else(|e| panic!("{e:#}"));
    let docs = tempfile::tempdir().unwrap();
    bundle(arch, UpdateBuild::V2, &server);
    let v2_channel = channel(arch, UpdateBuild::V2, &server, docs.path());
    let v3 = bundle(arch, UpdateBuild::V3Unhealthy, &server);
    let fourth = match arch {
        Arch::X86_64 => UpdateBuild::V3NoRoot,
        Arch::Arm64 => UpdateBuild::V3Panic,
    };
    let v4 = bundle(arch, fourth, &server);
    let hang = (arch == Arch::X86_64).then(|| bundle(arch, UpdateBuild::V3Hang, &server));

    // A copy the guest writes for real, so the power cuts below (QEMU killed) keep what
    // reached the disk and a new QEMU process boots from it: the qcow2 output, grown
    // like a real disk so the first boot makes var (var.rs).
    let disk_dir = tempfile::tempdir().unwrap();
    let disk = var::grown_disk(&v1.image, &v1.output(".qcow2"), disk_dir.path());
    let mut qemu = kiln::qemu::Vm::new(arch, &disk.qcow2);
    qemu.disk_format = "qcow2".into();
    qemu.snapshot = false;
    boot::add_config_drives(&mut qemu, disk_dir.path());
    qemu.exit_on_reboot = false;
    if arch == Arch::X86_64 {
        // The watchdog a homelab board or a VM host offers; its default action resets.
        qemu.extra
            .extend(["-device".to_string(), "i6300esb".to_string()]);
    }
    let power_on = || RunningVm::start(qemu.clone()).unwrap_or_else(|e| panic!("{e:#}"));
    let mut vm = power_on();

    // 1. The flashed image: the first-boot checks of boot.rs and var.rs.
    // kiln-update.service runs once the network is online: its line is what a user
    // would wait for before fetching anything.
    vm.wait_for(
        &["kiln-update: running 1.0.0 from slot a"],
        PREFLIGHT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    boot::check_first_boot(&mut vm, arch, &update_hostname(arch), var::VAR_DEV);
    let report_id = var::check_first_report(arch, &report_fields(&vm.boot_console()).unwrap());
    let s = status(&mut vm);
    assert_eq!(field(&s, "running.version"), "1.0.0", "{arch}: {s}");
    assert_eq!(field(&s, "running.slot"), "a", "{arch}: {s}");
    assert_eq!(field(&s, "other.state"), "empty", "{arch}: {s}");
    let out = vm
        .run(
            "echo kept > /var/lib/update-test-marker; cat /etc/machine-id",
            SHORT,
        )
        .unwrap();
    let id = machine_id(&out).unwrap_or_else(|| panic!("{arch}: no machine-id in {out:?}"));
    assert_eq!(id, report_id, "{arch}: the report's machine-id");

    // 2. 2.0.0 from the channel, with the first download of the bundle cut after 50 MB;
    // the check applies it and reboots by itself.
    server.cut_next_after(&format!("2.0.0-{}.update", arch.name()), 50 << 20);
    let started = std::time::Instant::now();
    vm.send_line(&format!(
        "kiln-agent update check --now --channel {v2_channel}"
    ))
    .unwrap();
    vm.wait_for(&["kiln-update: applied version 2.0.0"], APPLY)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!(
        "{arch}: apply of 2.0.0 from the channel took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let resumed = server
        .seen()
        .iter()
        .any(|r| r.range.as_deref().is_some_and(|h| h != "bytes=0-") && r.status == 206);
    assert!(resumed, "{arch}: no resumed download: {:?}", server.seen());
    // Power cut right after the UKI rename (the check's own reboot has only begun):
    // the next power-on boots 2.0.0 on trial.
    drop(vm);
    // The table as the init grew it and the updater then rewrote it (slot b named).
    var::check_grown_table(arch, &disk, disk_dir.path());
    let mut vm = power_on();
    vm.wait_for(&["kiln-update: 2.0.0 is healthy"], PREFLIGHT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!("{arch}: 2.0.0 good {:.1} s after the reboot", vm.elapsed());
    let text = vm
        .wait_for(&["kiln-report:"], PREFLIGHT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    var::check_later_report(arch, &report_fields(&text).unwrap(), 2, &id);
    let s = status(&mut vm);
    assert_eq!(field(&s, "running.version"), "2.0.0", "{arch}: {s}");
    assert_eq!(field(&s, "running.slot"), "b", "{arch}: {s}");
    assert_eq!(field(&s, "other.version"), "1.0.0", "{arch}: {s}");
    let out = vm
        .run(
            &format!("kiln-agent update check --now --channel {v2_channel}"),
            SHORT,
        )
        .unwrap();
    assert!(out.contains("up to date"), "{arch}: {out}");
    let out = vm
        .run(
            "cat /var/lib/update-test-marker /etc/machine-id /etc/motd; \
             ls /efi/EFI/Linux",
            SHORT,
        )
        .unwrap();
    assert!(out.contains("kept"), "{arch}: /var lost: {out}");
    assert_eq!(
        machine_id(&out),
        Some(id),
        "{arch}: machine-id changed: {out}"
    );
    assert!(out.contains(&UpdateBuild::V2.motd()), "{arch}: motd: {out}");
    // systemd-bless-boot dropped the counter (not the agent's stand-in for it): the
    // entry is good.
    assert!(out.contains("kiln-b.efi"), "{arch}: not blessed: {out}");
    assert!(
        !vm.boot_console().contains("is not in the image"),
        "{arch}: blessed by the agent, not systemd-bless-boot"
    );

    // 3. 3.0.0 fails its health check and the node falls back by itself.
    if arch == Arch::X86_64 {
        // First a power cut while the slot is being written: 2.0.0 boots as before
        // (not on trial) and the half-written slot is empty, with no UKI for it.
        vm.send_line(&format!("kiln-agent update apply --tries 1 {v3}"))
            .unwrap();
        vm.wait_for(&["kiln-update:  40% ("], APPLY)
            .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
        drop(vm);
        vm = power_on();
        vm.wait_for_shell(PREFLIGHT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
        let s = status(&mut vm);
        assert_eq!(field(&s, "running.version"), "2.0.0", "{arch}: {s}");
        assert_eq!(field(&s, "running.uki"), "kiln-b.efi", "{arch}: {s}");
        assert_eq!(field(&s, "other.state"), "empty", "{arch}: {s}");
    }
    vm.run(&format!("kiln-agent update apply --tries 1 {v3}"), APPLY)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    reboot(&mut vm);
    let failed = "kiln-update: 3.0.0 FAILED its health check";
    vm.wait_for(&[failed], PREFLIGHT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    next_boot_after(&mut vm, failed);
    vm.wait_for(
        &["kiln-update: ROLLED BACK from 3.0.0 to 2.0.0"],
        PREFLIGHT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!(
        "{arch}: back on 2.0.0 {:.1} s after 3.0.0 failed",
        vm.elapsed()
    );
    let s = status(&mut vm);
    assert_eq!(field(&s, "running.version"), "2.0.0", "{arch}: {s}");
    let rejected = field(&s, "rejected").to_string();
    assert!(
        rejected.contains("3.0.0") && rejected.contains("containerd"),
        "{arch}: {s}"
    );
    let (code, out) = vm
        .run_status(&format!("kiln-agent update apply {v3}"), APPLY)
        .unwrap();
    assert_ne!(
        code, 0,
        "{arch}: a rejected version was applied again: {out}"
    );
    assert!(out.contains("--force"), "{arch}: {out}");

    // 4. A version that never reaches userspace.
    vm.run(&format!("kiln-agent update apply --tries 1 {v4}"), APPLY)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    reboot(&mut vm);
    let failure = match fourth {
        UpdateBuild::V3NoRoot => "kiln-init: FATAL",
        _ => "Kernel panic",
    };
    vm.wait_for_failure(&[failure], PREFLIGHT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    next_boot_after(&mut vm, failure);
    let back = format!(
        "kiln-update: ROLLED BACK from {} to 2.0.0",
        fourth.version()
    );
    vm.wait_for(&[back.as_str()], PREFLIGHT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    let s = status(&mut vm);
    assert_eq!(field(&s, "running.version"), "2.0.0", "{arch}: {s}");
    assert!(
        field(&s, "rejected").to_string().contains(fourth.version()),
        "{arch}: {s}"
    );

    // 5. (x86_64) A version that hangs: nothing but the hardware watchdog can end
    // that boot, and the node says it was the watchdog.
    if let Some(hang) = hang {
        vm.run(&format!("kiln-agent update apply --tries 1 {hang}"), APPLY)
            .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
        reboot(&mut vm);
        let hung = "kiln-test: hanging this boot";
        vm.wait_for_failure(&[hung], PREFLIGHT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
        let hung_at = std::time::Instant::now();
        next_boot_after(&mut vm, hung);
        eprintln!(
            "{arch}: the watchdog (20 s) reset the machine {:.1} s after the hang began",
            hung_at.elapsed().as_secs_f64()
        );
        let back = vm
            .wait_for(
                &["kiln-update: ROLLED BACK from 3.0.3 to 2.0.0"],
                PREFLIGHT_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
        eprintln!(
            "{arch}: back on 2.0.0 {:.1} s after 3.0.3 hung",
            hung_at.elapsed().as_secs_f64()
        );
        let line = back
            .lines()
            .find(|l| l.contains("ROLLED BACK from 3.0.3"))
            .unwrap_or_default();
        assert!(
            line.contains("the hardware watchdog reset the machine"),
            "{arch}: the rollback does not name the watchdog: {line}"
        );
    }
}

#[test]
fn x86_64_updates_and_rolls_back() {
    updates_and_rolls_back(Arch::X86_64);
}

#[test]
fn arm64_updates_and_rolls_back() {
    updates_and_rolls_back(Arch::Arm64);
}
