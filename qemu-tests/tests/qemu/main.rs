//! The QEMU tests, in one binary so each image is built once per run
//! (see the build helpers in `kiln_qemu_tests`): image checks with
//! independent tools, then boots of both arches under TCG that assert on
//! the serial console and type into the debug shell.
//!
//! Run one group with e.g.
//! `cargo test --release -p kiln-qemu-tests --test qemu -- update:: --test-threads=2`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

mod bad_input;
mod boot;
mod channels;
mod cloud;
mod cluster;
mod formats;
mod image_checks;
mod inspect;
mod overlay;
mod run;
// A/B updates: libtest starts tests in name order, so these, the longest scenarios,
// start after the others' image builds and the other test binaries have used most of
// the CPU (started first, beside them, they took 985 and 850 s; started here, 565 and
// 462 s, and the main pass was 139 s shorter: BENCHMARKS.md, test suite).
mod update;
mod var;
mod verity;

use std::time::Duration;

/// TCG on 2 cores with two VMs at once: x86_64 reaches login in ~60 s
/// alone, arm64 in ~40 s; both slow down when they share the CPU.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// A boot that waits for `kiln-preflight: passed`: the node's preflight
/// itself waits up to 240 s (for timesyncd and containerd).
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(900);

/// The `kiln-config: hostname <name> (from <channel>)` line: (name, channel).
pub fn config_hostname(console: &str) -> Option<(String, String)> {
    let line = console
        .lines()
        .rev()
        .find(|l| l.contains("kiln-config: hostname "))?;
    let rest = &line[line.find("kiln-config: hostname ")? + "kiln-config: hostname ".len()..];
    let (name, from) = rest.split_once(" (from ")?;
    let channel = from.split(')').next()?;
    Some((name.trim().to_string(), channel.to_string()))
}

/// Asserts that `channel` reported config with `hostname=<value>` (the
/// `kiln-config: <channel>: <where>: hostname=<x>` line).
pub fn assert_channel_read(console: &str, channel: &str, hostname: &str, what: &str) {
    let prefix = format!("kiln-config: {channel}: ");
    let lines = kiln_qemu_tests::lines_with(console, &prefix);
    assert!(
        lines
            .iter()
            .any(|l| l.trim_end().ends_with(&format!("hostname={hostname}"))),
        "{what}: no `{prefix}...: hostname={hostname}` line; kiln-config lines: {:#?}\n{}",
        kiln_qemu_tests::lines_with(console, "kiln-config:"),
        kiln_qemu_tests::tail(console, 40)
    );
}

/// Asserts that the node took its hostname `name` from `channel`.
pub fn assert_hostname_from(console: &str, name: &str, channel: &str, what: &str) {
    assert_eq!(
        config_hostname(console),
        Some((name.to_string(), channel.to_string())),
        "{what}: kiln-config lines: {:#?}\n{}",
        kiln_qemu_tests::lines_with(console, "kiln-config:"),
        kiln_qemu_tests::tail(console, 40)
    );
}

/// Panics with the SNTP server's message if it cannot run: the boots that
/// wait for preflight need it.
pub fn need_sntp() {
    kiln_qemu_tests::sntp::ensure_server().unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn config_hostname_reads_the_final_line() {
    let c = "x\nkiln-config: cmdline: /proc/cmdline: hostname=a\n\
             kiln-config: hostname kiln-0a1b2c3d (from machine-id)\n";
    assert_eq!(
        config_hostname(c),
        Some(("kiln-0a1b2c3d".into(), "machine-id".into()))
    );
    assert_channel_read(c, "cmdline", "a", "sample");
}
