//! An image whose root or hash partition was changed must not boot into
//! that root: the init says that root verification failed and halts. Each
//! case changes one byte of a copy of the default image and boots it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use kiln::arch::Arch;
use kiln_qemu_tests::{check_tool, copy_image, default_image, extract_range, flip_byte, partition};

/// Init fails before the root is used: firmware, kernel and the check only.
const TIMEOUT: Duration = Duration::from_secs(300);

/// A file no boot reads (so only a check of the whole root finds the change).
const VICTIM: &str = "/usr/bin/wg";

#[derive(Debug, Clone, Copy)]
enum Tamper {
    RootFileData,
    HashPartition,
}

fn refuses(arch: Arch, tamper: Tamper) {
    let built = default_image(arch).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let image = copy_image(&built.image, dir.path()).unwrap();
    let offset = match tamper {
        Tamper::RootFileData => {
            let (root_off, root_len) = partition(&built.manifest, "root").unwrap();
            let root = dir.path().join("root.ext4");
            extract_range(&image, root_off, root_len, &root).unwrap();
            // debugfs (e2fsprogs) maps the file's first block: an independent
            // reader of the builder's ext4.
            let out = check_tool(
                "debugfs",
                &[
                    "-R",
                    &format!("bmap {VICTIM} 0"),
                    &root.display().to_string(),
                ],
            )
            .unwrap();
            let block: u64 = out
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("debugfs bmap {VICTIM}: unexpected output {out:?}"));
            assert!(block > 0, "{VICTIM} has no data block");
            root_off + block * 4096 + 100
        }
        // Block 2 of the hash partition is a hash block of the tree (block 0
        // is the superblock, block 1 the top level).
        Tamper::HashPartition => {
            partition(&built.manifest, "root-verity").unwrap().0 + 2 * 4096 + 7
        }
    };
    flip_byte(&image, offset).unwrap();

    let mut vm = kiln_qemu_tests::RunningVm::start(kiln::qemu::Vm::new(arch, &image))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for_failure(&["root verification failed", "kiln-init: halting"], TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch} {tamper:?}: {e:#}"));
    eprintln!(
        "{arch} {tamper:?}: refused {:.1} s after QEMU started",
        vm.elapsed()
    );
    let tail = kiln_qemu_tests::tail(&text, 30);
    assert!(
        !text.contains("kiln-init: switching"),
        "{arch} {tamper:?}: init switched to the changed root\n{tail}"
    );
    // Halted means nothing else starts: give it a moment and check that
    // systemd never came up.
    std::thread::sleep(Duration::from_secs(3));
    let later = vm.console();
    assert!(
        !later.contains("systemd[1]") && !later.contains("Welcome to"),
        "{arch} {tamper:?}: the system kept booting\n{}",
        kiln_qemu_tests::tail(&later, 30)
    );
}

#[test]
fn x86_64_refuses_a_changed_root_file() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    refuses(Arch::X86_64, Tamper::RootFileData);
}

#[test]
fn x86_64_refuses_a_changed_hash_partition() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    refuses(Arch::X86_64, Tamper::HashPartition);
}

#[test]
fn arm64_refuses_a_changed_root_file() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    refuses(Arch::Arm64, Tamper::RootFileData);
}

#[test]
fn arm64_refuses_a_changed_hash_partition() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    refuses(Arch::Arm64, Tamper::HashPartition);
}
