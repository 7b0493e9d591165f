//! Checks every format in the default image with an independent tool:
//! sgdisk for the GPT, e2fsck and debugfs for the root, fsck.fat and mtools
//! for the ESP, the `object` PE parser for the UKI, cpio for the initramfs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use kiln::arch::Arch;
use kiln::output::manifest::Manifest;
use kiln_qemu_tests::{check_tool, default_image, extract_range};

fn check_image(arch: Arch) {
    let built = default_image(arch).unwrap_or_else(|e| panic!("{e:#}"));
    let m = Manifest::read(&built.manifest).unwrap();
    let img = built.image.to_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();

    // GPT: sgdisk finds no problems and shows the planned partitions.
    let v = check_tool("sgdisk", &["-v", &img]).unwrap();
    assert!(v.contains("No problems found"), "{v}");
    for (i, p) in m.disk.partitions.iter().enumerate() {
        let info = check_tool("sgdisk", &["-i", &(i + 1).to_string(), &img])
            .unwrap()
            .to_lowercase();
        assert!(info.contains(&p.type_guid), "partition {}: {info}", p.role);
        assert!(info.contains(&p.uuid), "partition {}: {info}", p.role);
    }
    let root = m
        .disk
        .partitions
        .iter()
        .find(|p| p.role == "root")
        .expect("root partition");
    assert_eq!(root.type_guid, arch.root_type_guid().to_string());
    let esp = m
        .disk
        .partitions
        .iter()
        .find(|p| p.role == "esp")
        .expect("esp partition");

    // Root: e2fsck clean; debugfs sees what the build put there.
    let root_img = tmp.path().join("root.ext4");
    extract_range(&built.image, root.offset, root.size, &root_img).unwrap();
    let root_s = root_img.to_str().unwrap();
    check_tool("e2fsck", &["-fn", root_s]).unwrap();
    let passwd = check_tool("debugfs", &["-R", "cat /etc/passwd", root_s]).unwrap();
    assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
    assert!(
        passwd.contains("messagebus:"),
        "sysusers.d users missing: {passwd}"
    );
    let agent = check_tool("debugfs", &["-R", "stat /usr/bin/kiln-agent", root_s]).unwrap();
    assert!(agent.contains("Mode:  0755"), "{agent}");
    let deps = check_tool(
        "debugfs",
        &[
            "-R",
            &format!("cat /usr/lib/modules/{}/modules.dep", m.kernel.release),
            root_s,
        ],
    )
    .unwrap();
    assert!(
        deps.contains("wireguard.ko"),
        "modules.dep lacks wireguard: {deps}"
    );

    // ESP: fsck.fat clean; mtools reads the UKI back.
    let esp_img = tmp.path().join("esp.fat");
    extract_range(&built.image, esp.offset, esp.size, &esp_img).unwrap();
    let esp_s = esp_img.to_str().unwrap();
    check_tool("fsck.fat", &["-n", esp_s]).unwrap();
    let uki_path = tmp.path().join("uki.efi");
    check_tool(
        "mcopy",
        &[
            "-n",
            "-i",
            esp_s,
            &format!("::/EFI/BOOT/{}", arch.efi_boot_file()),
            uki_path.to_str().unwrap(),
        ],
    )
    .unwrap();
    let uki = std::fs::read(&uki_path).unwrap();

    // UKI: the PE sections parse back, with the command line and kernel release we asked for.
    let sections = kiln::uki::inspect(&uki).unwrap();
    let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
    for want in [".osrel", ".cmdline", ".uname", ".initrd", ".linux"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let cmdline = kiln::uki::section_data(&uki, ".cmdline").unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(cmdline).trim_end_matches('\0'),
        m.kernel.cmdline
    );
    let uname = kiln::uki::section_data(&uki, ".uname").unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(uname).trim_end_matches('\0'),
        m.kernel.release
    );

    // initramfs: cpio lists the init, the console node and the boot modules.
    let initrd = kiln::uki::section_data(&uki, ".initrd").unwrap().unwrap();
    let initrd_path = tmp.path().join("initrd.cpio");
    std::fs::write(&initrd_path, initrd).unwrap();
    let out = std::process::Command::new("cpio")
        .args(["-itv", "-F", initrd_path.to_str().unwrap()])
        .output()
        .expect("cpio is installed by make deps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.ends_with(" init") && l.starts_with("-rwxr-xr-x")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("crw") && l.ends_with("dev/console")),
        "{listing}"
    );
    assert!(listing.contains("etc/kiln/modules.load"), "{listing}");
    for module in &m.modules.initramfs {
        assert!(
            listing.contains(&format!("/{module}.ko")),
            "{module} not in the initramfs:\n{listing}"
        );
    }
}

#[test]
fn x86_64_image_passes_independent_checks() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    check_image(Arch::X86_64);
}

#[test]
fn arm64_image_passes_independent_checks() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    check_image(Arch::Arm64);
}

/// The agent every image carries stays within its budget
/// (`kiln_qemu_tests::agent_size`), on both arches.
#[test]
fn the_static_agent_stays_within_its_size_budget() {
    let mut over = Vec::new();
    for arch in [Arch::X86_64, Arch::Arm64] {
        let size = kiln_qemu_tests::agent_size::size(arch).unwrap_or_else(|e| panic!("{e:#}"));
        let budget = kiln_qemu_tests::agent_size::budget(arch);
        eprintln!("{arch}: kiln-agent is {size} bytes, budget {budget}");
        if size > budget {
            over.push(format!(
                "{arch}: {size} bytes, {} over the budget of {budget}",
                size - budget
            ));
        }
    }
    assert!(
        over.is_empty(),
        "the static agent grew past its size budget: {}; make it smaller, or raise the \
         budget in qemu-tests/src/agent_size.rs with the measured sizes and the reason in \
         the commit message",
        over.join("; ")
    );
}
