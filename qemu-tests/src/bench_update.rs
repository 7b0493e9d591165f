//! A/B update figures for `make bench`: the signed bundle per arch (and what zstd would
//! make of it), how much of the root a small change really moves, and on one QEMU/TCG
//! node per arch: the apply, the reboot to "good" and the fall back from a version whose
//! health check fails, each against a floor measured on the same node in the same run.
//!
//! The node is the update tests' 1.0.0 (`images::UpdateBuild`), updated to their 2.0.0
//! (another motd: one overlay file) and then offered their 3.0.0 (containerd masked, a
//! 30 s health check), all signed with the test key and served from the host.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln::arch::Arch;
use kiln::output::manifest::{Manifest, Partition};
use kiln_qemu_tests::files::FileServer;
use kiln_qemu_tests::{copy_image, update_image, RunningVm, UpdateBuild};

/// A boot, an apply or a fall back under TCG, with room for a slow machine.
const LONG: Duration = Duration::from_secs(900);
/// The block size the changed-bytes count compares in (ext4's block).
const BLOCK: usize = 4096;

/// One arch's update figures.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateFigures {
    /// The node's arch.
    pub arch: Arch,
    /// The signed bundle of 2.0.0, as `kiln build --format update` writes it.
    pub bundle_bytes: u64,
    /// The same bundle through zstd level 3.
    pub bundle_zst_bytes: u64,
    /// 2.0.0's root partition.
    pub root_bytes: u64,
    /// Bytes in the 4 KiB blocks of 2.0.0's root partition that differ from 1.0.0's.
    pub changed_root_bytes: u64,
    /// The same for the verity partitions.
    pub changed_verity_bytes: u64,
    /// 2.0.0's UKI (its command line carries the root hash, so it changes whole).
    pub uki_bytes: u64,
    /// `kiln-agent update apply URL` of the 2.0.0 bundle, command to prompt.
    pub apply_secs: f64,
    /// The floor: `dd` of as many zero bytes into the other slot's root partition,
    /// synced, on the same node.
    pub write_floor_secs: f64,
    /// From `systemctl reboot` after the apply to `kiln-update: 2.0.0 is healthy`.
    pub good_secs: f64,
    /// The floor: from a plain `systemctl reboot` of 2.0.0 (not on trial) to
    /// `kiln-preflight: passed`, the check the trial waits for.
    pub reboot_floor_secs: f64,
    /// From `systemctl reboot` after applying 3.0.0 (one try) to 2.0.0 saying
    /// `ROLLED BACK from 3.0.0`.
    pub fallback_secs: f64,
}

/// The partition of `role` in slot `slot` ("a" or "b") of a manifest, with its number.
fn partition<'a>(
    m: &'a Manifest,
    role: &str,
    slot: &str,
) -> anyhow::Result<(usize, &'a Partition)> {
    m.disk
        .partitions
        .iter()
        .enumerate()
        .find(|(_, p)| p.role == role && p.slot.as_deref() == Some(slot))
        .map(|(i, p)| (i + 1, p))
        .with_context(|| format!("no {role} partition of slot {slot} in the manifest"))
}

fn manifest(path: &Path) -> anyhow::Result<Manifest> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a manifest", path.display()))
}

/// Bytes in the `BLOCK`-sized blocks that differ between two ranges of two files (a
/// block only one of them has counts as changed).
fn changed_bytes(a: (&Path, u64, u64), b: (&Path, u64, u64)) -> anyhow::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let open = |(path, offset, len): (&Path, u64, u64)| -> anyhow::Result<_> {
        let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
        f.seek(SeekFrom::Start(offset))
            .with_context(|| path.display().to_string())?;
        Ok(std::io::BufReader::with_capacity(1 << 20, f.take(len)))
    };
    let (mut ra, mut rb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut changed = 0u64;
    loop {
        let na = read_block(&mut ra, &mut ba).with_context(|| a.0.display().to_string())?;
        let nb = read_block(&mut rb, &mut bb).with_context(|| b.0.display().to_string())?;
        if na == 0 && nb == 0 {
            return Ok(changed);
        }
        if na != nb || ba[..na] != bb[..nb] {
            changed += na.max(nb) as u64;
        }
    }
}

/// Fills `buf` as far as the reader allows; the count read.
fn read_block(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Runs `cmd` in the node's shell; seconds from sending it to its end marker.
fn timed_run(vm: &mut RunningVm, cmd: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    vm.run(cmd, LONG)?;
    Ok(started.elapsed().as_secs_f64())
}

/// Reboots and waits for `marker` in the next boot; seconds from the reboot command.
fn reboot_until(vm: &mut RunningVm, marker: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let from = vm.console().len();
    vm.send_line("systemctl reboot")?;
    vm.wait_for_next_boot(from, LONG)?;
    vm.wait_for(&[marker], LONG)?;
    Ok(started.elapsed().as_secs_f64())
}

/// Measures one arch (see [`UpdateFigures`]).
pub fn measure(arch: Arch) -> anyhow::Result<UpdateFigures> {
    let v1 = update_image(arch, UpdateBuild::V1)?;
    let v2 = update_image(arch, UpdateBuild::V2)?;
    let v3 = update_image(arch, UpdateBuild::V3Unhealthy)?;
    let (m1, m2) = (manifest(&v1.manifest)?, manifest(&v2.manifest)?);
    let (_, root1) = partition(&m1, "root", "a")?;
    let (_, root2) = partition(&m2, "root", "a")?;
    let changed_root_bytes = changed_bytes(
        (&v1.image, root1.offset, root1.size),
        (&v2.image, root2.offset, root2.size),
    )?;
    let (_, verity1) = partition(&m1, "root-verity", "a")?;
    let (_, verity2) = partition(&m2, "root-verity", "a")?;
    let changed_verity_bytes = changed_bytes(
        (&v1.image, verity1.offset, verity1.size),
        (&v2.image, verity2.offset, verity2.size),
    )?;
    let uki_bytes = m2
        .esp
        .iter()
        .find(|f| f.file.starts_with("EFI/Linux/"))
        .map(|f| f.size)
        .context("no UKI under EFI/Linux in 2.0.0's manifest")?;
    let bundle = v2.output(".update");
    let bundle_bytes = std::fs::metadata(&bundle)
        .with_context(|| bundle.display().to_string())?
        .len();
    let file = std::fs::File::open(&bundle).with_context(|| bundle.display().to_string())?;
    let bundle_zst_bytes = zstd::stream::encode_all(file, 3)
        .with_context(|| format!("{}: zstd", bundle.display()))?
        .len() as u64;

    let server = FileServer::start()?;
    let v2_url = {
        let name = format!("2.0.0-{}.update", arch.name());
        server.add(&name, bundle.clone());
        server.guest_url(&name)
    };
    let v3_url = {
        let name = format!("3.0.0-{}.update", arch.name());
        server.add(&name, v3.output(".update"));
        server.guest_url(&name)
    };
    let dir = tempfile::tempdir()?;
    let disk = copy_image(&v1.image, dir.path())?;
    let mut qemu = kiln::qemu::Vm::new(arch, &disk);
    qemu.snapshot = false;
    qemu.exit_on_reboot = false;
    let mut vm = RunningVm::start(qemu)?;
    vm.wait_for(&["kiln-update: running 1.0.0 from slot a"], LONG)?;
    vm.wait_for_shell(LONG)?;

    // The floor first: slot b is empty, and the apply writes all of what dd wrote.
    let (slot_b, slot_b_part) = partition(&m1, "root", "b")?;
    let mib = bundle_bytes.div_ceil(1 << 20);
    if mib << 20 > slot_b_part.size {
        bail!(
            "{arch}: the bundle ({bundle_bytes} bytes) is larger than slot b ({} bytes)",
            slot_b_part.size
        );
    }
    let write_floor_secs = timed_run(
        &mut vm,
        &format!("dd if=/dev/zero of=/dev/vda{slot_b} bs=1M count={mib} conv=fsync status=none"),
    )?;
    let apply_secs = timed_run(&mut vm, &format!("kiln-agent update apply {v2_url}"))?;
    let good_secs = reboot_until(&mut vm, "kiln-update: 2.0.0 is healthy")?;
    vm.wait_for_shell(LONG)?;
    let reboot_floor_secs = reboot_until(&mut vm, "kiln-preflight: passed")?;
    vm.wait_for_shell(LONG)?;
    vm.run(&format!("kiln-agent update apply --tries 1 {v3_url}"), LONG)?;
    let fallback_secs = reboot_until(&mut vm, "kiln-update: ROLLED BACK from 3.0.0 to 2.0.0")?;
    Ok(UpdateFigures {
        arch,
        bundle_bytes,
        bundle_zst_bytes,
        root_bytes: root2.size,
        changed_root_bytes,
        changed_verity_bytes,
        uki_bytes,
        apply_secs,
        write_floor_secs,
        good_secs,
        reboot_floor_secs,
        fallback_secs,
    })
}

/// MiB with one decimal, or KiB below a MiB (a small change moves a few blocks).
fn mib(b: u64) -> String {
    if b < 1 << 20 {
        format!("{:.0} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
    }
}

/// The `## A/B updates (QEMU/TCG)` section from both arches' figures.
pub fn section(md: &mut String, figs: &[UpdateFigures]) -> std::fmt::Result {
    writeln!(md, "## A/B updates (QEMU/TCG)\n")?;
    writeln!(
        md,
        "One node per arch boots the update tests' 1.0.0 (profiles/qemu.toml with the \
         debug shell), applies their 2.0.0 (another motd) from the host over HTTP, \
         reboots into it on trial, is rebooted once more as a floor, then applies their \
         3.0.0 (containerd masked: its 30 s health check fails) with one try and falls \
         back. Times are from the host: command sent to prompt, `systemctl reboot` to the \
         console line. Floors on the same node: `dd` of as many bytes as the bundle into \
         the empty slot with `conv=fsync` (the apply also downloads, hashes, reads back \
         and recomputes the verity tree), and a plain reboot of 2.0.0 to \
         `kiln-preflight: passed` (the check a trial waits for).\n"
    )?;
    writeln!(
        md,
        "| arch | bundle | bundle, zstd -3 | apply | floor: dd | apply / floor | reboot to good | floor: plain reboot | good / floor | fall back | fall back / floor |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for f in figs {
        writeln!(
            md,
            "| {} | {} | {} | {:.1} s | {:.1} s | {:.2}x | {:.1} s | {:.1} s | {:.2}x | {:.1} s | {:.2}x |",
            f.arch,
            mib(f.bundle_bytes),
            mib(f.bundle_zst_bytes),
            f.apply_secs,
            f.write_floor_secs,
            f.apply_secs / f.write_floor_secs,
            f.good_secs,
            f.reboot_floor_secs,
            f.good_secs / f.reboot_floor_secs,
            f.fallback_secs,
            f.fallback_secs / f.reboot_floor_secs,
        )?;
    }
    writeln!(
        md,
        "\nWhat a small change really needs to move: the 4 KiB blocks of 2.0.0's root and \
         verity partitions that differ from 1.0.0's (the two builds differ in one overlay \
         file, /etc/motd, and the version in os-release), plus 2.0.0's whole UKI (its \
         command line names the new root hash), against the bundle, which carries all of \
         them whole. kiln's ext4 and verity writers are deterministic, so unchanged files \
         keep their blocks.\n"
    )?;
    writeln!(
        md,
        "| arch | root partition | root blocks that differ | verity blocks that differ | UKI | a delta would move | share of the bundle |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for f in figs {
        let delta = f.changed_root_bytes + f.changed_verity_bytes + f.uki_bytes;
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.0}% |",
            f.arch,
            mib(f.root_bytes),
            mib(f.changed_root_bytes),
            mib(f.changed_verity_bytes),
            mib(f.uki_bytes),
            mib(delta),
            100.0 * delta as f64 / f.bundle_bytes.max(1) as f64
        )?;
    }
    writeln!(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_bytes_counts_whole_blocks_and_a_longer_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut one = vec![7u8; 3 * BLOCK + 100];
        std::fs::write(&a, &one).unwrap();
        one[BLOCK + 5] = 8; // one byte in the second block
        one.extend_from_slice(&[1u8; BLOCK]); // and a block only b has
        std::fs::write(&b, &one).unwrap();
        let (la, lb) = (3 * BLOCK as u64 + 100, 4 * BLOCK as u64 + 100);
        // Block 1 differs in a byte; a's 100-byte tail against a whole block of b; then
        // 100 bytes only b has.
        let changed = changed_bytes((&a, 0, la), (&b, 0, lb)).unwrap();
        assert_eq!(changed, 2 * BLOCK as u64 + 100);
        // Ranges start at their offsets: a's second block against b's second block.
        let one_block = changed_bytes(
            (&a, BLOCK as u64, BLOCK as u64),
            (&b, BLOCK as u64, BLOCK as u64),
        );
        assert_eq!(one_block.unwrap(), BLOCK as u64);
        assert_eq!(changed_bytes((&a, 0, la), (&a, 0, la)).unwrap(), 0);
    }
}
