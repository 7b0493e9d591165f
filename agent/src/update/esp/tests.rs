//! The ESP side against the fake node: the PE reader on UKIs laid out as the builder
//! lays them out (and, on request, on a real UKI), which slot each UKI boots, the boot
//! device and the mount at /efi.

use kiln_contract::boot::{Slot, ESP_MOUNT};
use kiln_contract::le::put_u32;
use nix::errno::Errno;

use super::*;
use crate::update::boot_fake::{cmdline, hash, osrel, uki_bytes, FakeBoot};
use crate::update::slot::running_arch;

const DIR: &str = "/efi/EFI/Linux";

#[test]
fn reads_the_section_table_and_the_texts() {
    let bytes = uki_bytes(&osrel("1.3.0"), &cmdline(Slot::B));
    let sections = pe_sections(&bytes).unwrap();
    let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [".text", ".osrel", ".cmdline", ".linux"]);
    let os = &sections[1];
    assert_eq!(os.raw_size % 0x200, 0);
    assert_eq!(os.virtual_size as usize, osrel("1.3.0").len());
    let mut f = FakeBoot::default();
    f.files.insert("/u.efi".into(), bytes);
    let t = read_uki_texts(&mut f, "/u.efi").unwrap();
    assert_eq!(t.osrel, osrel("1.3.0"));
    assert_eq!(t.cmdline, cmdline(Slot::B));
}

#[test]
fn data_is_virtual_size_long_but_never_past_the_raw_data() {
    let s = |virtual_size, raw_size| PeSection {
        name: ".osrel".into(),
        virtual_size,
        raw_size,
        raw_offset: 0x400,
    };
    assert_eq!(s(0x11e, 0x200).data_range(), (0x400, 0x51e));
    assert_eq!(s(0, 0x200).data_range(), (0x400, 0x600));
    assert_eq!(s(0x900, 0x200).data_range(), (0x400, 0x600));
}

#[test]
fn a_section_table_past_the_first_read_is_read_too() {
    // Move the PE header to 0x1100, so the table lies beyond the first 4096 bytes.
    let small = uki_bytes("IMAGE_VERSION=2\n", "kiln.debug");
    let mut b = vec![0u8; 0x1100];
    b[..2].copy_from_slice(b"MZ");
    put_u32(&mut b, 0x3c, 0x1100);
    let header = &small[0x80..0x400];
    b.extend_from_slice(header);
    let shift = b.len() - 0x400;
    b.extend_from_slice(&small[0x400..]);
    // Section data moved by `shift`: fix PointerToRawData.
    let table = 0x1100 + 24 + 240;
    for i in 0..4 {
        let at = table + 40 * i + 20;
        let old = u32_at(&b, at);
        put_u32(&mut b, at, old + shift as u32);
    }
    let mut f = FakeBoot::default();
    f.files.insert("/u.efi".into(), b);
    let t = read_uki_texts(&mut f, "/u.efi").unwrap();
    assert_eq!(
        (t.osrel.as_str(), t.cmdline.as_str()),
        ("IMAGE_VERSION=2\n", "kiln.debug")
    );
}

#[test]
fn what_is_not_a_uki_says_so() {
    let mut f = FakeBoot::default();
    f.files.insert("/text".into(), b"hello".to_vec());
    assert_eq!(
        read_uki_texts(&mut f, "/text").unwrap_err(),
        PeError::NotPe("no MZ header")
    );
    let mut b = uki_bytes("x", "y");
    b[0x80] = b'X';
    assert_eq!(
        pe_sections(&b).unwrap_err(),
        PeError::NotPe("no PE signature at e_lfanew")
    );
    // An .osrel far into the file is not read.
    let mut b = uki_bytes("x", "y");
    let osrel_entry = 0x98 + 240 + 40;
    put_u32(&mut b, osrel_entry + 20, 100 << 20);
    f.files.insert("/far.efi".into(), b);
    let e = read_uki_texts(&mut f, "/far.efi").unwrap_err();
    assert!(e.to_string().contains(".osrel section ends at byte"), "{e}");
    assert!(matches!(
        read_uki_texts(&mut f, "/missing.efi").unwrap_err(),
        PeError::Read(_)
    ));
}

#[test]
fn os_release_fields_are_unquoted() {
    let text = "NAME=\"Debian GNU/Linux\"\nVERSION_ID='13'\nIMAGE_VERSION=1.4.0\n# IMAGE_ID=x\n";
    assert_eq!(os_release_field(text, "NAME").unwrap(), "Debian GNU/Linux");
    assert_eq!(os_release_field(text, "VERSION_ID").unwrap(), "13");
    assert_eq!(os_release_field(text, "IMAGE_VERSION").unwrap(), "1.4.0");
    assert_eq!(os_release_field(text, "IMAGE_ID"), None);
}

#[test]
fn a_uki_boots_the_slot_its_root_hash_names_else_its_letter() {
    let mut f = FakeBoot::node(Slot::A, "1.2.0");
    let dev = boot_device(&mut f).unwrap();
    // Named for slot a but carrying slot b's root hash: the hash wins.
    f.files.insert(
        format!("{DIR}/kiln-a+1-2.efi"),
        uki_bytes(&osrel("1.3.0"), &cmdline(Slot::B)),
    );
    // A root hash no partition has: the letter.
    f.files.insert(
        format!("{DIR}/kiln-b+0-3.efi"),
        uki_bytes(
            "VERSION_ID=13\n",
            &format!("kiln.roothash={}", "ab".repeat(32)),
        ),
    );
    f.files
        .insert(format!("{DIR}/kiln-b.efi.tmp"), b"half written".to_vec());
    f.files
        .insert(format!("{DIR}/debian.efi"), b"someone else's".to_vec());
    f.files
        .insert(format!("{DIR}/kiln-b.efi"), b"not a PE".to_vec());
    let ukis = list_ukis(&mut f, ESP_MOUNT, &dev.gpt.entries, running_arch()).unwrap();
    let summary: Vec<(String, Slot, SlotSource, Option<String>)> = ukis
        .iter()
        .map(|u| {
            (
                u.file.clone(),
                u.slot,
                u.slot_source,
                u.version_text.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "kiln-a+1-2.efi".into(),
                Slot::B,
                SlotSource::RootHash,
                Some("1.3.0".into())
            ),
            (
                "kiln-a.efi".into(),
                Slot::A,
                SlotSource::RootHash,
                Some("1.2.0".into())
            ),
            (
                "kiln-b+0-3.efi".into(),
                Slot::B,
                SlotSource::FileName,
                Some("13".into())
            ),
            ("kiln-b.efi".into(), Slot::B, SlotSource::FileName, None),
        ]
    );
    assert_eq!(ukis[0].version, Some(ImageVersion::parse("1.3.0").unwrap()));
    assert_eq!(ukis[0].root_hash, Some(hash(Slot::B)));
    assert!(ukis[0].on_trial() && !ukis[0].is_bad());
    assert!(ukis[2].is_bad());
    assert_eq!(ukis[2].version, None, "VERSION_ID is for show only");
    assert!(ukis[3]
        .unreadable
        .as_deref()
        .unwrap()
        .contains("no MZ header"));
    assert_eq!(ukis[3].version_label(), "unknown version");

    f.files.retain(|p, _| !p.starts_with(DIR));
    assert_eq!(
        list_ukis(&mut f, ESP_MOUNT, &dev.gpt.entries, "x86_64").unwrap(),
        []
    );
}

#[test]
fn finds_the_boot_disk_its_esp_and_the_running_slot() {
    for running in Slot::ALL {
        let mut f = FakeBoot::node(running, "1.0");
        let dev = boot_device(&mut f).unwrap();
        assert_eq!(dev.disk.disk, "vda");
        assert_eq!(dev.esp, "/dev/vda1");
        assert_eq!(dev.gpt.entries.len(), 5);
        let h = running_root_hash(&mut f).unwrap();
        assert_eq!(h, hash(running));
        assert_eq!(
            slot_of_hash(&dev.gpt.entries, &h, running_arch()),
            Some(running)
        );
    }
    let mut f = FakeBoot::node(Slot::A, "1.0");
    f.devs.clear();
    let e = boot_device(&mut f).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("finding the ESP: reading the partition table of /dev/vda"),
        "{e}"
    );
}

#[test]
fn mounts_the_esp_read_write_once() {
    let mut f = FakeBoot::node(Slot::A, "1.0");
    assert_eq!(mount_esp(&mut f, "/dev/vda1").unwrap(), Mounted::Now);
    assert_eq!(
        f.mounts,
        ["/dev/vda1 /efi vfat MsFlags(MS_NOSUID | MS_NODEV | MS_NOEXEC) umask=0077"]
    );
    assert_eq!(mount_esp(&mut f, "/dev/vda1").unwrap(), Mounted::Already);
    assert_eq!(f.mounts.len(), 1, "{:?}", f.mounts);
}

#[test]
fn uses_a_read_only_or_automounted_esp_and_refuses_a_stranger() {
    let mountinfo = "/proc/self/mountinfo";
    let mut f = FakeBoot::node(Slot::A, "1.0");
    f.files.insert(
        mountinfo.into(),
        b"40 1 8:1 / /efi ro,relatime - vfat /dev/vda1 ro\n".to_vec(),
    );
    assert_eq!(mount_esp(&mut f, "/dev/vda1").unwrap(), Mounted::Already);
    assert_eq!(
        f.mounts,
        ["/dev/vda1 /efi - MsFlags(MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_REMOUNT) -"]
    );

    // systemd's automount that does not come up: kiln mounts over it.
    let mut f = FakeBoot::node(Slot::A, "1.0");
    f.files.insert(
        mountinfo.into(),
        b"40 1 0:50 / /efi rw,relatime - autofs systemd-1 rw\n".to_vec(),
    );
    assert_eq!(mount_esp(&mut f, "/dev/vda1").unwrap(), Mounted::Now);

    let mut f = FakeBoot::node(Slot::A, "1.0");
    f.files.insert(
        mountinfo.into(),
        b"40 1 0:51 / /efi rw - tmpfs tmpfs rw\n".to_vec(),
    );
    let e = mount_esp(&mut f, "/dev/vda1").unwrap_err();
    assert!(e.to_string().starts_with("/efi holds tmpfs (tmpfs)"), "{e}");

    let mut f = FakeBoot::node(Slot::A, "1.0");
    f.mount_errors.insert("/efi".into(), Errno::ENODEV);
    let e = mount_esp(&mut f, "/dev/vda1").unwrap_err();
    assert!(e.to_string().contains("no vfat driver"), "{e}");
}

#[test]
fn a_mount_that_loses_a_race_uses_the_winners() {
    // kiln-update.service's check mounts the ESP just before `update status` does.
    let mut f = FakeBoot::node(Slot::A, "1.0");
    f.mounted_by_another
        .insert("/efi".into(), "vfat /dev/vda1".into());
    assert_eq!(mount_esp(&mut f, "/dev/vda1").unwrap(), Mounted::Already);
    assert_eq!(f.mounts.len(), 1, "{:?}", f.mounts);

    // Busy for good: the error says so, after a few seconds of looking again.
    let mut f = FakeBoot::node(Slot::A, "1.0");
    f.mount_errors.insert("/efi".into(), Errno::EBUSY);
    let e = mount_esp(&mut f, "/dev/vda1").unwrap_err().to_string();
    assert!(e.contains("EBUSY") && e.contains("still, 5 s later"), "{e}");
    assert_eq!(f.mounts.len(), 21, "{:?}", f.mounts);
}

/// A UKI the builder made: `KILN_TEST_UKI=/path/to/kiln-a.efi cargo test -p kiln-agent
/// -- --ignored real_uki` (extract one with `mcopy -i IMAGE@@OFFSET ::EFI/Linux/kiln-a.efi .`).
#[test]
#[ignore = "needs a UKI from a built image in KILN_TEST_UKI"]
fn reads_a_real_uki() {
    let path = std::env::var("KILN_TEST_UKI").expect("KILN_TEST_UKI");
    let mut sys = crate::sys::real::RealSys::default();
    let t = read_uki_texts(&mut sys, &path).unwrap();
    println!("osrel:\n{}\ncmdline: {}", t.osrel, t.cmdline);
    assert!(os_release_field(&t.osrel, "ID").is_some(), "{}", t.osrel);
    assert!(
        crate::cmdline::parse(&t.cmdline).root_hash.is_some(),
        "{}",
        t.cmdline
    );
    let head = sys.read_prefix(&path, 4096).unwrap();
    let names: Vec<String> = pe_sections(&head)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    for want in [".osrel", ".cmdline", ".linux"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}
