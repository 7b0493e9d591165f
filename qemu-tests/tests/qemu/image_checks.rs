//! Checks every format in the default image with an independent tool:
//! sgdisk for the GPT and its two root slots, e2fsck and debugfs for the
//! root, veritysetup for slot A's hash tree, fsck.fat and mtools for the ESP
//! (systemd-boot, loader.conf, the UKI under EFI/Linux), the `object` PE
//! parser for the UKI and systemd-boot, cpio for the initramfs.

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
    // ESP, slot A's root and verity, slot B's (empty, same types, no-auto).
    let a = arch.name();
    let names: Vec<&str> = m.disk.partitions.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(
        names,
        [
            "esp",
            &format!("root-{a}-a"),
            &format!("root-{a}-a-verity"),
            "_empty",
            "_empty"
        ]
    );
    let slots: Vec<Option<&str>> = m
        .disk
        .partitions
        .iter()
        .map(|p| p.slot.as_deref())
        .collect();
    assert_eq!(slots, [None, Some("a"), Some("a"), Some("b"), Some("b")]);
    for (i, p) in m.disk.partitions.iter().enumerate() {
        let info = check_tool("sgdisk", &["-i", &(i + 1).to_string(), &img])
            .unwrap()
            .to_lowercase();
        assert!(info.contains(&p.type_guid), "partition {}: {info}", p.role);
        assert!(info.contains(&p.uuid), "partition {}: {info}", p.role);
        assert!(info.contains(&format!("'{}'", p.label)), "{info}");
        let flags = match p.slot.as_deref() {
            None => "0000000000000000",
            Some("a") => "1000000000000000",
            _ => "9000000000000000",
        };
        assert!(
            info.contains(&format!("attribute flags: {flags}")),
            "partition {}: {info}",
            i + 1
        );
    }
    // The slots are as big as each other, and the free space after them is
    // where the node creates var.
    assert_eq!(m.disk.partitions[1].size, m.disk.partitions[3].size);
    assert_eq!(m.disk.partitions[2].size, m.disk.partitions[4].size);
    assert!(m.disk.partitions[1].size >= m.root.size);
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
    // Slot A's hash tree, as the kernel will check it.
    let verity = &m.disk.partitions[2];
    let verity_img = tmp.path().join("root.verity");
    extract_range(&built.image, verity.offset, verity.size, &verity_img).unwrap();
    check_tool(
        "veritysetup",
        &[
            "verify",
            root_s,
            verity_img.to_str().unwrap(),
            &m.verity.root_hash,
        ],
    )
    .unwrap();
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

    // ESP: fsck.fat clean; mtools reads systemd-boot, loader.conf and the UKI
    // back, each as the manifest records it.
    let esp_img = tmp.path().join("esp.fat");
    extract_range(&built.image, esp.offset, esp.size, &esp_img).unwrap();
    let esp_s = esp_img.to_str().unwrap();
    check_tool("fsck.fat", &["-n", esp_s]).unwrap();
    let listing = check_tool("mdir", &["-/", "-b", "-i", esp_s, "::/"]).unwrap();
    let read = |path: &str| {
        let out = tmp.path().join(path.replace('/', "_"));
        check_tool(
            "mcopy",
            &[
                "-n",
                "-i",
                esp_s,
                &format!("::/{path}"),
                out.to_str().unwrap(),
            ],
        )
        .unwrap_or_else(|e| panic!("{path} on the ESP: {e:#}\n{listing}"));
        std::fs::read(out).unwrap()
    };
    let esp_files: Vec<&str> = m.esp.iter().map(|f| f.file.as_str()).collect();
    let boot_path = format!("EFI/BOOT/{}", arch.efi_boot_file());
    assert_eq!(
        esp_files,
        [
            boot_path.as_str(),
            "loader/loader.conf",
            "EFI/Linux/kiln-a.efi"
        ]
    );
    for f in &m.esp {
        let bytes = read(&f.file);
        assert_eq!(bytes.len() as u64, f.size, "{}", f.file);
        assert_eq!(
            kiln::output::manifest::sha256_hex(&bytes),
            f.sha256,
            "{}",
            f.file
        );
    }
    let loader = String::from_utf8(read("loader/loader.conf")).unwrap();
    assert_eq!(loader, kiln_contract::boot::LOADER_CONF_TEXT);
    // systemd-boot is an EFI program of the image's arch.
    let systemd_boot = read(&boot_path);
    let machine = kiln::uki::summary(&systemd_boot).unwrap().machine;
    assert_eq!(
        machine,
        match arch {
            Arch::X86_64 => 0x8664,
            Arch::Arm64 => 0xaa64,
        }
    );
    let uki = read("EFI/Linux/kiln-a.efi");
    assert_eq!(m.components["uki"].file, "EFI/Linux/kiln-a.efi");

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
