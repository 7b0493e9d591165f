//! UKI tests against a synthetic stub, checked with the `object` crate.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use super::*;

const SA: u32 = 0x1000;
const FA: u32 = 0x200;
const TEXT: &[u8] = b"\x55\x48\x89\xe5 pretend this is systemd-stub code \xc3";

/// A minimal PE32+ EFI application: DOS header, NT headers with 16 data
/// directories, one `.text` section, and a trailing COFF symbol table with
/// its string table, like Debian's systemd 252 x86_64 stub has.
fn synthetic_stub(machine: u16, size_of_headers: u32) -> Vec<u8> {
    let mut b = vec![0u8; size_of_headers as usize];
    b[0..2].copy_from_slice(b"MZ");
    le::put_u32(&mut b, 0x3c, 0x40);
    b[0x40..0x44].copy_from_slice(b"PE\0\0");
    let coff = 0x44;
    let opt = coff + 20;
    let opt_size = 112 + 16 * 8;
    let table = opt + opt_size;
    let text_raw = size_of_headers;
    let text_raw_size = FA;
    let symtab = text_raw + text_raw_size;
    le::put_u16(&mut b, coff, machine);
    le::put_u16(&mut b, coff + 2, 1);
    le::put_u32(&mut b, coff + 8, symtab);
    le::put_u32(&mut b, coff + 12, 2);
    le::put_u16(&mut b, coff + 16, opt_size as u16);
    le::put_u16(&mut b, coff + 18, 0x0206); // executable, line numbers and debug stripped
    le::put_u16(&mut b, opt, 0x20b);
    le::put_u32(&mut b, opt + 4, text_raw_size); // SizeOfCode
    le::put_u32(&mut b, opt + 8, 0x400); // SizeOfInitializedData
    le::put_u32(&mut b, opt + 16, SA); // AddressOfEntryPoint
    le::put_u32(&mut b, opt + 20, SA); // BaseOfCode
    le::put_u64(&mut b, opt + 24, 0);
    le::put_u32(&mut b, opt + 32, SA);
    le::put_u32(&mut b, opt + 36, FA);
    le::put_u32(&mut b, opt + 56, 2 * SA); // SizeOfImage
    le::put_u32(&mut b, opt + 60, size_of_headers);
    le::put_u32(&mut b, opt + 64, 0x1234); // a stale CheckSum
    le::put_u16(&mut b, opt + 68, 10); // EFI application
    le::put_u32(&mut b, opt + 108, 16);
    let s = table;
    b[s..s + 8].copy_from_slice(b".text\0\0\0");
    le::put_u32(&mut b, s + 8, TEXT.len() as u32);
    le::put_u32(&mut b, s + 12, SA);
    le::put_u32(&mut b, s + 16, text_raw_size);
    le::put_u32(&mut b, s + 20, text_raw);
    le::put_u32(&mut b, s + 36, 0x6000_0020);
    b.resize((text_raw + text_raw_size) as usize, 0);
    b[text_raw as usize..text_raw as usize + TEXT.len()].copy_from_slice(TEXT);
    // Two 18-byte symbols, then the string table (its u32 size counts itself).
    let mut sym = [0u8; 18];
    sym[..5].copy_from_slice(b"efi_m");
    sym[12] = 1; // section number
    sym[16] = 2; // external
    b.extend_from_slice(&sym);
    b.extend_from_slice(&sym);
    b.extend_from_slice(&12u32.to_le_bytes());
    b.extend_from_slice(b"long_name\0\0\0");
    b
}

/// os-release, command line and kernel release texts.
fn texts() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        b"ID=debian\nVERSION_ID=12\n".to_vec(),
        b"console=ttyS0 root=PARTUUID=x ro".to_vec(),
        b"6.1.0-56-amd64".to_vec(),
    )
}

/// A kernel and an initramfs with odd lengths, so padding shows.
fn payloads() -> (Vec<u8>, Vec<u8>) {
    let linux: Vec<u8> = (0..300_001u32).map(|i| (i * 7 + 3) as u8).collect();
    let initrd: Vec<u8> = (0..70_003u32).map(|i| (i * 13 + 1) as u8).collect();
    (linux, initrd)
}

struct Checked {
    names: Vec<String>,
}

/// Assembles for `arch` and checks the result with `object` and our reader.
fn assemble_and_check(arch: Arch, machine: u16) -> Checked {
    let stub = synthetic_stub(machine, 0x400);
    let (linux, initrd) = payloads();
    let (osrel, cmdline, uname) = texts();
    let p = UkiParts {
        arch,
        osrel: &osrel,
        cmdline: &cmdline,
        uname: &uname,
        initrd: &initrd,
        linux: &linux,
    };
    let uki = assemble(&stub, &p).unwrap();

    // object parses it as a PE32+ image and finds every section.
    let file = PeFile64::parse(&*uki).unwrap();
    let fh = file.nt_headers().file_header();
    let oh = file.nt_headers().optional_header();
    assert_eq!(fh.number_of_sections.get(LE), 6);
    assert_eq!(
        fh.pointer_to_symbol_table.get(LE),
        0,
        "symbol table pointer left"
    );
    assert_eq!(fh.number_of_symbols.get(LE), 0);

    let secs = inspect(&uki).unwrap();
    let names: Vec<String> = secs.iter().map(|s| s.name.clone()).collect();
    // Sections ascend in memory and in the file, aligned, without overlap.
    let mut prev_mem_end = 0u64;
    let mut prev_file_end = 0u64;
    for s in &secs {
        assert_eq!(
            s.virtual_address % SA,
            0,
            "{} VA {:#x}",
            s.name,
            s.virtual_address
        );
        assert_eq!(
            s.file_offset % FA,
            0,
            "{} offset {:#x}",
            s.name,
            s.file_offset
        );
        assert_eq!(s.size % FA, 0, "{} raw size {:#x}", s.name, s.size);
        assert!(
            u64::from(s.virtual_address) >= prev_mem_end,
            "{} overlaps in memory",
            s.name
        );
        assert!(
            u64::from(s.file_offset) >= prev_file_end,
            "{} overlaps in the file",
            s.name
        );
        assert!(s.size >= s.virtual_size || s.name == ".text");
        prev_mem_end = u64::from(s.virtual_address) + u64::from(s.virtual_size);
        prev_file_end = u64::from(s.file_offset) + u64::from(s.size);
    }
    // Nothing after the last section: the symbol table bytes are gone.
    assert_eq!(uki.len() as u64, prev_file_end);
    assert!(
        !uki.windows(9).any(|w| w == b"long_name"),
        "string table bytes left in the UKI"
    );
    // SizeOfImage covers the last section, rounded to SectionAlignment.
    assert_eq!(
        u64::from(oh.size_of_image()),
        prev_mem_end.div_ceil(u64::from(SA)) * u64::from(SA)
    );
    // New sections are initialized read-only data.
    for s in file.section_table().iter().skip(1) {
        assert_eq!(
            s.characteristics.get(LE),
            pe::IMAGE_SCN_CNT_INITIALIZED_DATA | pe::IMAGE_SCN_MEM_READ
        );
    }
    let added_raw: u32 = secs.iter().skip(1).map(|s| s.size).sum();
    assert_eq!(oh.size_of_initialized_data(), 0x400 + added_raw);
    // The stored checksum is the PE checksum of the file.
    assert_eq!(oh.check_sum(), pe_checksum(&uki).unwrap());
    assert_ne!(oh.check_sum(), 0x1234);

    // Each section reads back as the input, through object and through ours.
    for (name, want) in [
        (".osrel", &osrel),
        (".cmdline", &cmdline),
        (".uname", &uname),
        (".initrd", &initrd),
        (".linux", &linux),
    ] {
        let via_object = file
            .section_table()
            .iter()
            .find(|s| &s.name[..name.len()] == name.as_bytes())
            .unwrap()
            .pe_data(&*uki)
            .unwrap();
        assert_eq!(via_object, &want[..], "{name}");
        assert_eq!(
            section_data(&uki, name).unwrap().unwrap(),
            &want[..],
            "{name}"
        );
    }
    assert_eq!(section_data(&uki, ".text").unwrap().unwrap(), TEXT);
    assert_eq!(section_data(&uki, ".dtb").unwrap(), None);

    // Streaming gives the same bytes, and a rebuild is byte-identical.
    let mut streamed = Vec::new();
    assert_eq!(
        write_uki(&stub, &p, &mut streamed).unwrap(),
        uki.len() as u64
    );
    assert_eq!(streamed, uki);
    assert_eq!(assemble(&stub, &p).unwrap(), uki);
    Checked { names }
}

#[test]
fn x86_64_uki_has_linux_last() {
    let c = assemble_and_check(Arch::X86_64, pe::IMAGE_FILE_MACHINE_AMD64);
    assert_eq!(
        c.names,
        [".text", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    );
}

#[test]
fn arm64_uki_has_initrd_after_linux() {
    let c = assemble_and_check(Arch::Arm64, pe::IMAGE_FILE_MACHINE_ARM64);
    assert_eq!(
        c.names,
        [".text", ".osrel", ".cmdline", ".uname", ".linux", ".initrd"]
    );
}

#[test]
fn file_written_to_disk_matches_memory() {
    let stub = synthetic_stub(pe::IMAGE_FILE_MACHINE_AMD64, 0x400);
    let (linux, initrd) = payloads();
    let p = UkiParts {
        arch: Arch::X86_64,
        osrel: b"ID=x\n",
        cmdline: b"a",
        uname: b"u",
        initrd: &initrd,
        linux: &linux,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("BOOTX64.EFI");
    let n = write_uki_file(&stub, &p, &path).unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len() as u64, n);
    assert_eq!(on_disk, assemble(&stub, &p).unwrap());
    let e = write_uki_file(&stub, &p, &dir.path().join("missing/x.efi"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing/x.efi"), "{e}");
}

#[test]
fn empty_optional_parts_are_left_out() {
    let stub = synthetic_stub(pe::IMAGE_FILE_MACHINE_AMD64, 0x400);
    let p = UkiParts {
        arch: Arch::X86_64,
        osrel: b"",
        cmdline: b"quiet",
        uname: b"",
        initrd: b"",
        linux: b"kernel",
    };
    let uki = assemble(&stub, &p).unwrap();
    let names: Vec<String> = inspect(&uki).unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, [".text", ".cmdline", ".linux"]);
    let e = assemble(&stub, &UkiParts { linux: b"", ..p }).unwrap_err();
    assert!(matches!(e, UkiError::EmptyKernel), "{e}");
}

#[test]
fn stub_for_the_other_arch_is_refused() {
    let stub = synthetic_stub(pe::IMAGE_FILE_MACHINE_ARM64, 0x400);
    let p = UkiParts {
        arch: Arch::X86_64,
        osrel: b"",
        cmdline: b"",
        uname: b"",
        initrd: b"",
        linux: b"k",
    };
    let e = assemble(&stub, &p).unwrap_err();
    assert!(
        matches!(e, UkiError::WrongMachine { found: 0xaa64, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("linuxx64.efi.stub"), "{e}");
}

#[test]
fn stub_without_header_room_is_refused() {
    // Section table at 0x148, SizeOfHeaders 0x200: room for 4 headers, 6 needed.
    let stub = synthetic_stub(pe::IMAGE_FILE_MACHINE_AMD64, 0x200);
    let (linux, initrd) = payloads();
    let p = UkiParts {
        arch: Arch::X86_64,
        osrel: b"o",
        cmdline: b"c",
        uname: b"u",
        initrd: &initrd,
        linux: &linux,
    };
    let e = assemble(&stub, &p).unwrap_err();
    assert!(
        matches!(
            e,
            UkiError::NoHeaderRoom {
                sections: 6,
                available: 0x200,
                ..
            }
        ),
        "{e}"
    );
    // With fewer parts it fits.
    let small = UkiParts {
        osrel: b"",
        uname: b"",
        ..p
    };
    assert_eq!(inspect(&assemble(&stub, &small).unwrap()).unwrap().len(), 4);
}

#[test]
fn garbage_is_not_a_stub() {
    let p = UkiParts {
        arch: Arch::X86_64,
        osrel: b"",
        cmdline: b"",
        uname: b"",
        initrd: b"",
        linux: b"k",
    };
    assert!(matches!(
        assemble(b"MZ not really", &p),
        Err(UkiError::BadStub(_))
    ));
    assert!(matches!(inspect(b"\x7fELF"), Err(UkiError::NotPe(_))));
}

#[test]
fn checksum_matches_a_hand_computed_value() {
    // 0x40 bytes of header plus a PE signature and a zeroed optional header;
    // words: "MZ" = 0x5a4d, e_lfanew 0x40, "PE" = 0x4550, machine 0x8664.
    let mut b = vec![0u8; 0x40 + 4 + 20 + 68];
    b[0..2].copy_from_slice(b"MZ");
    b[0x3c] = 0x40;
    b[0x40..0x44].copy_from_slice(b"PE\0\0");
    le::put_u16(&mut b, 0x44, 0x8664);
    // The CheckSum field (optional header + 64) is ignored whatever it holds.
    let ck = 0x40 + 4 + 20 + 64;
    le::put_u32(&mut b, ck, 0xffff_ffff);
    let words: u32 = 0x5a4d + 0x40 + 0x4550 + 0x8664; // = 0x14001 → folds to 0x4002
    let folded = (words & 0xffff) + (words >> 16);
    assert_eq!(pe_checksum(&b).unwrap(), folded + b.len() as u32);
}
