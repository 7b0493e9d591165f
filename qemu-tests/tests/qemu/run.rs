//! `kiln run`'s guest: the plain image's raw.zst (unpacked, as `kiln run`
//! does) boots from a throwaway overlay of 8 GiB made by
//! `kiln::qemu::run::prepare`, creates `var` in the free space, and its
//! preflight passes with the SNTP answers kiln serves: the first boot a user
//! of `kiln run` sees. The console goes to the harness's socket instead of a
//! terminal; the rest is `kiln run`'s own VM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use kiln::arch::Arch;
use kiln::qemu::run::{prepare, RunOptions, DEFAULT_DISK_SIZE};
use kiln_qemu_tests::{image_with_all_formats, RunningVm};

use crate::PREFLIGHT_TIMEOUT;

#[test]
fn kiln_run_boots_raw_zst_to_var_and_a_passing_preflight() {
    let arch = Arch::X86_64;
    let built = image_with_all_formats(arch).unwrap_or_else(|e| panic!("{e:#}"));
    kiln_qemu_tests::sntp::ensure_server().unwrap_or_else(|e| panic!("{e:#}"));
    let image = built.output(".raw.zst");
    let before = std::fs::metadata(&image).unwrap().len();
    let scratch = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        image: image.clone(),
        arch: None,
        memory_mib: 1024,
        cpus: 1,
        persist: false,
        disk_size: DEFAULT_DISK_SIZE,
        config: None,
        drives: vec![],
        qemu_args: vec![],
        sntp: true,
        quiet: true,
        ssh_port: None,
    };
    let p = prepare(&opts, scratch.path(), &kiln::runner::HostRunner)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(p.vm.arch, arch);
    assert_eq!(p.disk_size, 8 << 30);
    let mut vm = RunningVm::start(p.vm).unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for(&["kiln-preflight: passed"], PREFLIGHT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!(
        "{arch}: kiln run's VM: QEMU start to `kiln-preflight: passed`: {:.1} s",
        vm.elapsed()
    );
    assert!(
        text.contains("var: creating partition"),
        "{arch}: no var partition was made:\n{}",
        kiln_qemu_tests::tail(&text, 40)
    );
    assert!(
        text.contains("kiln-preflight: [PASS] clock"),
        "{arch}:\n{}",
        kiln_qemu_tests::tail(&text, 40)
    );
    drop(vm);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), before);
}
