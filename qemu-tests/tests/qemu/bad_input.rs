//! Bad config on every local channel at once: each channel's problem is one
//! clear ERROR line naming the channel, the node goes on with the channels
//! that work (or its machine-id) and stays up. The x86_64 node (the default test
//! image) also shows /var on a tmpfs, as its `kiln.var_min=1T` asks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use kiln::arch::Arch;
use kiln_qemu_tests::{
    cidata_vfat, cmdline_hostname, default_image, fw_cfg_config, lines_with, profile_image,
    report_fields, set_esp_file, tail, RunningVm,
};

use crate::{assert_hostname_from, config_hostname, need_sntp, PREFLIGHT_TIMEOUT};

/// The ERROR line of `channel`, which must mention every one of `words`
/// (case-insensitive).
fn assert_error(console: &str, channel: &str, words: &[&str]) {
    let prefix = format!("kiln-config: ERROR: {channel}: ");
    let lines = lines_with(console, &prefix);
    assert!(
        lines.iter().any(|l| {
            let l = l.to_lowercase();
            words.iter().all(|w| l.contains(&w.to_lowercase()))
        }),
        "no `{prefix}` line mentioning {words:?}; kiln-config lines: {:#?}",
        lines_with(console, "kiln-config:")
    );
}

#[test]
fn x86_64_bad_esp_cidata_and_fw_cfg_each_say_why_and_the_node_runs() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    need_sntp();
    let arch = Arch::X86_64;
    let built = default_image(arch).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let image = set_esp_file(
        &built.image,
        &built.manifest,
        dir.path(),
        "kiln.toml",
        b"hostname = \"esp-x\"\nbogus_key = 1\n",
    )
    .unwrap();
    let mut vm = kiln::qemu::Vm::new(arch, &image);
    // A NoCloud volume with only cloud-init's meta-data: no kiln.toml.
    vm.drives
        .push(cidata_vfat(dir.path(), &[("meta-data", b"instance-id: i-1\n")]).unwrap());
    vm.fw_cfg
        .push(fw_cfg_config(dir.path(), b"hostname = \"\xff\xfe\x00\x80\"\n").unwrap());
    let mut vm = RunningVm::start(vm).unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for(
            &["kiln-config: hostname ", "kiln-report:"],
            PREFLIGHT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!("{arch}: report {:.1} s after QEMU started", vm.elapsed());
    assert_error(&text, "esp", &["bogus_key"]);
    assert_error(&text, "cidata", &["kiln.toml"]);
    assert_error(&text, "fw_cfg", &["utf-8"]);
    assert_hostname_from(
        &text,
        &cmdline_hostname(arch),
        "cmdline",
        "x86_64 bad input",
    );
    let fields = report_fields(&text).unwrap();
    assert_eq!(
        fields.get("state").map(String::as_str),
        Some("running"),
        "{fields:?}\n{}",
        tail(&text, 40)
    );
    assert_eq!(
        fields.get("hostname"),
        Some(&cmdline_hostname(arch)),
        "{fields:?}"
    );
    // The default test image's `kiln.var_min=1T` leaves no room for var: the profile
    // allows a tmpfs, and the init said so.
    assert_eq!(
        fields.get("var").map(String::as_str),
        Some("tmpfs"),
        "{fields:?}"
    );
    assert!(
        text.contains("/var stays on a tmpfs") || text.contains("keeping /var on a tmpfs"),
        "{arch}: no word about /var on a tmpfs\n{}",
        tail(&text, 40)
    );
}

#[test]
fn arm64_homelab_cidata_with_a_wrong_type_falls_back_to_machine_id() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let arch = Arch::Arm64;
    let built = profile_image("profiles/homelab.toml", arch).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let mut vm = kiln::qemu::Vm::new(arch, &built.image);
    vm.drives
        .push(cidata_vfat(dir.path(), &[("kiln.toml", b"hostname = 5\n")]).unwrap());
    let mut vm = RunningVm::start(vm).unwrap_or_else(|e| panic!("{e:#}"));
    // Homelab's timesyncd has no reachable server here, so the boot report would come
    // only once preflight gave up waiting for the clock (240 s). kiln-config prints the
    // hostname line only after the kernel took the name: it shows the node went on.
    let text = vm
        .wait_for(&["kiln-config: hostname "], PREFLIGHT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!(
        "{arch}: hostname set {:.1} s after QEMU started",
        vm.elapsed()
    );
    assert_error(&text, "cidata", &["hostname"]);
    let (name, channel) = config_hostname(&text).unwrap_or_default();
    assert_eq!(channel, "machine-id", "{name} from {channel}");
}
