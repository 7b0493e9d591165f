//! Tests of module selection and indexing on small synthetic kernels.
//!
//! The modules are tiny ELF relocatables built here with just the sections
//! depmod reads (.modinfo, .symtab, .strtab, __versions), so the host's
//! `depmod` and `modprobe` can referee kiln's index files.

use super::index::{Index, NODE_CHILDS, NODE_PREFIX, NODE_VALUES};
use super::names::{glob_match, modname_from_path, normalize_alias};
use super::*;
use crate::tree::{FileTree, Kind, Node};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const KVER: &str = "6.1.0-99-test";
const DIR: &str = "usr/lib/modules/6.1.0-99-test";

/// A synthetic module.
#[derive(Clone, Default)]
struct Fake {
    relpath: &'static str,
    modinfo: Vec<&'static str>,
    exports: Vec<&'static str>,
    imports: Vec<&'static str>,
    weak: Vec<&'static str>,
    /// Use __ksymtab_strings instead of __crc_ symbols for exports.
    no_modversions: bool,
}

/// Builds an ELF64 little-endian relocatable with the given sections.
/// An ELF section of a test module: name, type, data, link, info, entsize.
type Section<'a> = (&'a str, u32, Vec<u8>, u32, u32, u64);

fn elf(machine: u16, f: &Fake) -> Vec<u8> {
    let mut strtab = vec![0u8];
    let mut syms: Vec<[u8; 24]> = vec![[0; 24]];
    let mut add_sym = |name: &str, info: u8, shndx: u16, value: u64| {
        let off = strtab.len() as u32;
        strtab.extend_from_slice(name.as_bytes());
        strtab.push(0);
        let mut s = [0u8; 24];
        s[0..4].copy_from_slice(&off.to_le_bytes());
        s[4] = info;
        s[6..8].copy_from_slice(&shndx.to_le_bytes());
        s[8..16].copy_from_slice(&value.to_le_bytes());
        syms.push(s);
    };
    if !f.no_modversions {
        for (i, e) in f.exports.iter().enumerate() {
            // Local, absolute: the CRC value itself.
            add_sym(&format!("__crc_{e}"), 0, 0xfff1, 0x1000 + i as u64);
        }
    }
    let first_global = 1 + if f.no_modversions {
        0
    } else {
        f.exports.len() as u32
    };
    for e in &f.exports {
        add_sym(e, 0x12, 1, 0); // GLOBAL FUNC in section 1
    }
    for i in &f.imports {
        add_sym(i, 0x10, 0, 0); // GLOBAL NOTYPE undefined
    }
    for w in &f.weak {
        add_sym(w, 0x20, 0, 0); // WEAK undefined
    }
    let mut modinfo = Vec::new();
    for kv in &f.modinfo {
        modinfo.extend_from_slice(kv.as_bytes());
        modinfo.push(0);
    }
    let mut versions = Vec::new();
    for i in f.imports.iter().chain(["module_layout"].iter()) {
        let mut e = [0u8; 64];
        e[0..8].copy_from_slice(&0xabcdu64.to_le_bytes());
        e[8..8 + i.len()].copy_from_slice(i.as_bytes());
        versions.extend_from_slice(&e);
    }
    let mut ksymstr = Vec::new();
    if f.no_modversions {
        for e in &f.exports {
            ksymstr.extend_from_slice(e.as_bytes());
            ksymstr.push(0);
        }
    }
    let symtab: Vec<u8> = syms.concat();
    let mut sections: Vec<Section> = vec![
        (".text", 1, vec![0xc3; 16], 0, 0, 0),
        (".modinfo", 1, modinfo, 0, 0, 0),
        (".symtab", 2, symtab, 4, first_global, 24),
        (".strtab", 3, strtab, 0, 0, 0),
        ("__versions", 1, versions, 0, 0, 0),
    ];
    if f.no_modversions {
        sections.push(("__ksymtab_strings", 1, ksymstr, 0, 0, 0));
    }
    let mut shstrtab = vec![0u8];
    let mut names = Vec::new();
    for s in &sections {
        names.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(s.0.as_bytes());
        shstrtab.push(0);
    }
    names.push(shstrtab.len() as u32);
    shstrtab.extend_from_slice(b".shstrtab\0");
    sections.push((".shstrtab", 3, shstrtab, 0, 0, 0));

    let mut out = vec![0u8; 64];
    let mut headers = vec![[0u8; 64]];
    for (idx, (_, ty, data, link, info, entsize)) in sections.iter().enumerate() {
        while out.len() % 8 != 0 {
            out.push(0);
        }
        let off = out.len() as u64;
        out.extend_from_slice(data);
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&names[idx].to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[24..32].copy_from_slice(&off.to_le_bytes());
        h[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        h[40..44].copy_from_slice(&link.to_le_bytes());
        h[44..48].copy_from_slice(&info.to_le_bytes());
        h[48..56].copy_from_slice(&8u64.to_le_bytes());
        h[56..64].copy_from_slice(&entsize.to_le_bytes());
        headers.push(h);
    }
    while out.len() % 8 != 0 {
        out.push(0);
    }
    let shoff = out.len() as u64;
    for h in &headers {
        out.extend_from_slice(h);
    }
    let shnum = headers.len() as u16;
    let hdr = &mut out[0..64];
    hdr[0..4].copy_from_slice(b"\x7fELF");
    hdr[4] = 2; // 64-bit
    hdr[5] = 1; // little endian
    hdr[6] = 1;
    hdr[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    hdr[18..20].copy_from_slice(&machine.to_le_bytes());
    hdr[20..24].copy_from_slice(&1u32.to_le_bytes());
    hdr[40..48].copy_from_slice(&shoff.to_le_bytes());
    hdr[52..54].copy_from_slice(&64u16.to_le_bytes());
    hdr[58..60].copy_from_slice(&64u16.to_le_bytes());
    hdr[60..62].copy_from_slice(&shnum.to_le_bytes());
    hdr[62..64].copy_from_slice(&(shnum - 1).to_le_bytes());
    out
}

fn fakes() -> Vec<Fake> {
    vec![
        Fake {
            relpath: "kernel/lib/crc16.ko",
            modinfo: vec!["license=GPL", "depends="],
            exports: vec!["crc16"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/fs/mbcache.ko",
            modinfo: vec!["depends="],
            exports: vec!["mb_cache_create", "mb_cache_destroy"],
            imports: vec!["printk"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/fs/jbd2/jbd2.ko",
            modinfo: vec!["softdep=pre: crypto-crc32c", "depends="],
            exports: vec!["jbd2_start"],
            imports: vec!["printk"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/fs/ext4/ext4.ko",
            modinfo: vec![
                "alias=fs-ext4",
                "alias=ext3",
                "alias=fs-ext3",
                "softdep=pre: crypto-crc32c",
                "depends=jbd2,mbcache,crc16",
                "name=ext4",
            ],
            imports: vec!["printk", "jbd2_start", "mb_cache_create", "crc16"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/crypto/crc32c_generic.ko",
            modinfo: vec![
                "alias=crypto-crc32c-generic",
                "alias=crc32c-generic",
                "alias=crypto-crc32c",
                "alias=crc32c",
                "depends=",
            ],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/arch/x86/crypto/crc32c-intel.ko",
            modinfo: vec![
                "alias=crypto-crc32c-intel",
                "alias=crypto-crc32c",
                "alias=crc32c",
                "alias=cpu:type:x86,ven*fam*mod*:feature:*0094*",
                "depends=",
            ],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/drivers/virtio/virtio.ko",
            modinfo: vec!["depends="],
            exports: vec!["register_virtio_driver"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/drivers/virtio/virtio_ring.ko",
            modinfo: vec!["depends="],
            exports: vec!["vring_new_virtqueue"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/drivers/block/virtio_blk.ko",
            modinfo: vec!["alias=virtio:d00000002v*", "depends=virtio_ring,virtio"],
            imports: vec!["vring_new_virtqueue", "register_virtio_driver"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/drivers/block/loop.ko",
            modinfo: vec![
                "alias=devname:loop-control",
                "alias=char-major-10-237",
                "alias=block-major-7-*",
                "depends=",
            ],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/fs/nls/nls_iso8859-1.ko",
            modinfo: vec!["depends="],
            no_modversions: true,
            exports: vec!["iso_helper"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/net/wg/wireguard.ko",
            modinfo: vec![
                "alias=net-pf-16-proto-16-family-wireguard",
                "alias=[a-c]x-tr*",
                "depends=libchacha,udp_tunnel",
            ],
            imports: vec!["chacha_init", "udp_tunnel_sock"],
            weak: vec!["zlib_inflate"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/lib/libchacha.ko",
            modinfo: vec!["depends="],
            exports: vec!["chacha_init"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/net/ipv4/udp_tunnel.ko",
            modinfo: vec!["depends="],
            exports: vec!["udp_tunnel_sock"],
            ..Fake::default()
        },
        Fake {
            relpath: "kernel/drivers/misc/unused_big.ko",
            modinfo: vec!["depends=", "softdep=post: loop"],
            ..Fake::default()
        },
    ]
}

fn kernel_tree(machine: u16, fakes: &[Fake]) -> FileTree {
    let mut t = FileTree::new(1_700_000_000);
    let mut order = String::new();
    for f in fakes {
        t.insert(
            &format!("{DIR}/{}", f.relpath),
            Node::file(elf(machine, f), 0o644, 0, "pkg:linux-image"),
        )
        .unwrap();
        order.push_str(f.relpath);
        order.push('\n');
    }
    t.insert(
        &format!("{DIR}/modules.order"),
        Node::file(order.into_bytes(), 0o644, 0, "pkg:linux-image"),
    )
    .unwrap();
    t.insert(
        &format!("{DIR}/modules.builtin"),
        Node::file(
            b"kernel/lib/zlib_inflate.ko\nkernel/crypto/sha256_generic.ko\n".to_vec(),
            0o644,
            0,
            "pkg:linux-image",
        ),
    )
    .unwrap();
    t.insert(
        &format!("{DIR}/modules.builtin.modinfo"),
        Node::file(
            b"zlib_inflate.license=GPL\0sha256_generic.alias=sha256\0sha256_generic.alias=crypto-sha256-generic\0sha256_generic.alias=crypto-sha256\0".to_vec(),
            0o644,
            0,
            "pkg:linux-image",
        ),
    )
    .unwrap();
    t.insert("lib", Node::symlink("usr/lib", 0, "kiln:merged-usr"))
        .unwrap();
    t
}

fn amd64_tree() -> FileTree {
    kernel_tree(object::elf::EM_X86_64, &fakes())
}

fn custom(sets: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    sets.iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect()
}

fn names(ms: &[Module]) -> Vec<&str> {
    ms.iter().map(|m| m.name.as_str()).collect()
}

#[test]
fn builtin_sets_parse_and_have_the_required_names() {
    let names = builtin_set_names();
    for want in [
        "virtio",
        "ext4",
        "vfat",
        "dm-verity",
        "netfilter",
        "wireguard",
        "overlay",
        "nvme",
        "ahci",
        "usb-storage",
        "nics",
        "efi",
        "watchdog",
        "kubernetes",
        "config-channels",
        "cloud",
        "homelab",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let sets = builtin_sets().unwrap();
    let boot: Vec<&str> = sets
        .iter()
        .filter(|s| s.boot)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        boot,
        vec![
            "ahci",
            "cloud",
            "dm-verity",
            // init reads systemd-boot's EFI variables (is this boot on trial?).
            "efi",
            "ext4",
            "homelab",
            "nvme",
            "usb-storage",
            "virtio"
        ]
    );
    let dmv = sets.iter().find(|s| s.name == "dm-verity").unwrap();
    assert!(dmv.modules[&Arch::X86_64].contains(&"sha256-ssse3".to_string()));
    assert!(!dmv.modules[&Arch::Arm64].contains(&"sha256-ssse3".to_string()));
}

#[test]
fn modinfo_and_softdeps_parse() {
    let info = ModInfo::parse(b"\0\0alias=fs-ext4\0softdep=pre: a b-c post: d\0softdep=x\0depends=jbd2,crc-16\0vermagic=6.1\0");
    assert_eq!(info.depends, vec!["jbd2", "crc_16"]);
    assert_eq!(info.aliases, vec!["fs-ext4"]);
    assert_eq!(info.softdep_pre(), vec!["a", "b-c"]);
    assert_eq!(info.softdep_post(), vec!["d"]);
    assert_eq!(ModInfo::parse(b"depends=").depends, Vec::<String>::new());
}

#[test]
fn alias_globs_and_normalisation() {
    assert!(glob_match(
        b"virtio:d00000002v*",
        b"virtio:d00000002v00001af4"
    ));
    assert!(!glob_match(
        b"virtio:d00000002v*",
        b"virtio:d00000001v00001af4"
    ));
    assert!(glob_match(
        b"pci:v*d*sv*sd*bc01sc06i01*",
        b"pci:v00008086d00002922sv0sd0bc01sc06i01"
    ));
    assert!(glob_match(b"[a-c]x?", b"bxz"));
    assert!(!glob_match(b"[!a-c]x", b"bx"));
    assert!(glob_match(b"a[", b"a["));
    assert_eq!(
        normalize_alias("crypto-crc32c").as_deref(),
        Some("crypto_crc32c")
    );
    assert_eq!(normalize_alias("x-[a-b]-y").as_deref(), Some("x_[a-b]_y"));
    assert_eq!(normalize_alias("bad]"), None);
    assert_eq!(
        modname_from_path("kernel/fs/nls/nls_iso8859-1.ko"),
        "nls_iso8859_1"
    );
}

#[test]
fn selection_is_the_closure_in_load_order() {
    let t = amd64_tree();
    let sets = custom(&[
        ("disk", &["ext4", "virtio-blk"]),
        ("vpn", &["wireguard", "sha256"]),
    ]);
    let sel = select(&t, &["disk".into(), "vpn".into()], &sets, Arch::X86_64).unwrap();
    assert_eq!(sel.kver, KVER);
    assert_eq!(sel.dir, DIR);
    // Dependencies first; ties by name; the crc32c providers come in
    // through ext4's and jbd2's soft dependency on the crypto-crc32c alias.
    assert_eq!(
        names(&sel.all),
        vec![
            "crc16",
            "crc32c_generic",
            "crc32c_intel",
            "jbd2",
            "libchacha",
            "mbcache",
            "ext4",
            "udp_tunnel",
            "virtio",
            "virtio_ring",
            "virtio_blk",
            "wireguard"
        ]
    );
    let ext4 = sel.all.iter().find(|m| m.name == "ext4").unwrap();
    assert_eq!(ext4.path, format!("{DIR}/kernel/fs/ext4/ext4.ko"));
    assert_eq!(
        ext4.depends,
        vec!["jbd2", "mbcache", "crc16", "crc32c_generic", "crc32c_intel"]
    );
    assert!(ext4.size > 0);
    // Custom sets are not boot sets.
    assert!(sel.boot.is_empty());
    assert_eq!(sel.builtin, vec!["sha256"]);
    for (i, m) in sel.all.iter().enumerate() {
        for d in &m.depends {
            assert!(
                sel.all[..i].iter().any(|x| &x.name == d),
                "{} loads before its dependency {d}",
                m.name
            );
        }
    }
}

#[test]
fn boot_sets_give_the_boot_closure() {
    let t = amd64_tree();
    // The built-in ext4 set is a boot set; the custom one is not.
    let sel = select(
        &t,
        &["ext4".into(), "vpn".into()],
        &custom(&[("vpn", &["wireguard"])]),
        Arch::X86_64,
    )
    .unwrap();
    assert_eq!(
        names(&sel.boot),
        vec![
            "crc16",
            "crc32c_generic",
            "crc32c_intel",
            "jbd2",
            "mbcache",
            "ext4"
        ]
    );
    assert_eq!(sel.all.len(), 9);
    // Traps add what the crypto API needs even without a softdep.
    let mut fk = fakes();
    for f in &mut fk {
        if f.relpath.ends_with("ext4.ko") || f.relpath.ends_with("jbd2.ko") {
            f.modinfo.retain(|m| !m.starts_with("softdep"));
        }
    }
    let t = kernel_tree(object::elf::EM_X86_64, &fk);
    let sel = select(&t, &["ext4".into()], &BTreeMap::new(), Arch::X86_64).unwrap();
    assert!(
        names(&sel.boot).contains(&"crc32c_generic"),
        "{:?}",
        names(&sel.boot)
    );
}

#[test]
fn unknown_sets_and_modules_are_errors_naming_them() {
    let t = amd64_tree();
    let e = select(&t, &["nosuch".into()], &BTreeMap::new(), Arch::X86_64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nosuch") && e.contains("netfilter"), "{e}");
    // The built-in wireguard set is fine; overlay names a module this kernel lacks.
    let e = select(&t, &["overlay".into()], &BTreeMap::new(), Arch::X86_64)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"overlay\"") && e.contains("x86_64") && e.contains(KVER),
        "{e}"
    );
    // `name?` is taken where the kernel has it and skipped where it does not.
    let sets = custom(&[("opt", &["overlay?", "loop?"])]);
    let sel = select(&t, &["opt".into()], &sets, Arch::X86_64).unwrap();
    assert_eq!(names(&sel.all), ["loop"]);
    // A module for the other arch is caught.
    let e = select(&t, &["ext4".into()], &BTreeMap::new(), Arch::Arm64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("arm64") && e.contains(".ko"), "{e}");
    // A depends= naming a module that is not there.
    let mut fk = fakes();
    fk.retain(|f| !f.relpath.ends_with("crc16.ko"));
    let t = kernel_tree(object::elf::EM_X86_64, &fk);
    let e = select(&t, &["ext4".into()], &BTreeMap::new(), Arch::X86_64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ext4 depends on crc16"), "{e}");
}

#[test]
fn dependency_loops_are_errors() {
    let mut fk = fakes();
    for f in &mut fk {
        if f.relpath.ends_with("crc16.ko") {
            f.modinfo = vec!["depends=ext4"];
        }
    }
    let t = kernel_tree(object::elf::EM_X86_64, &fk);
    let e = select(&t, &["ext4".into()], &BTreeMap::new(), Arch::X86_64)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("loop") && e.contains("crc16") && e.contains("ext4"),
        "{e}"
    );
}

#[test]
fn prune_keeps_only_the_selection() {
    let mut t = amd64_tree();
    let sel = select(&t, &["ext4".into()], &BTreeMap::new(), Arch::X86_64).unwrap();
    let p = prune(&mut t, &sel).unwrap();
    assert_eq!(p.files, fakes().len() - sel.all.len());
    let left: Vec<String> = t
        .descendants(DIR)
        .filter(|(k, _)| k.ends_with(".ko"))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(left.len(), sel.all.len());
    // Emptied directories go; the index files stay.
    assert!(!t.contains(&format!("{DIR}/kernel/drivers")));
    assert!(t.contains(&format!("{DIR}/modules.order")));
}

/// Writes the tree's module directory to `root/lib/modules/KVER`.
fn stage(t: &FileTree, root: &Path) {
    for (p, n) in t.descendants(DIR) {
        let rel = p.strip_prefix("usr/").unwrap();
        let dst = root.join(rel);
        match &n.kind {
            Kind::Dir => std::fs::create_dir_all(&dst).unwrap(),
            Kind::File(d) => {
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::write(&dst, d).unwrap();
            }
            _ => {}
        }
    }
}

const INDEX_FILES: [&str; 10] = [
    "modules.dep",
    "modules.dep.bin",
    "modules.alias",
    "modules.alias.bin",
    "modules.softdep",
    "modules.symbols",
    "modules.symbols.bin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.devname",
];

/// kiln's index files and the host depmod's for the same modules.
fn compare_with_depmod(t: &FileTree) {
    let dir = tempfile::tempdir().unwrap();
    stage(t, dir.path());
    let out = Command::new("depmod")
        .arg("-b")
        .arg(dir.path())
        .arg(KVER)
        .output()
        .expect("depmod (package kmod) must be installed");
    assert!(
        out.status.success(),
        "depmod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kdir = dir.path().join("lib/modules").join(KVER);
    for f in INDEX_FILES {
        let theirs = std::fs::read(kdir.join(f)).unwrap();
        let ours = t.read(&format!("{DIR}/{f}")).unwrap().to_vec();
        if f == "modules.symbols" {
            // depmod writes symbols in hash-table order; compare as sets.
            let sorted = |b: &[u8]| {
                let mut l: Vec<String> = String::from_utf8_lossy(b)
                    .lines()
                    .map(String::from)
                    .collect();
                l.sort();
                l
            };
            assert_eq!(sorted(&ours), sorted(&theirs), "{f}");
        } else {
            assert!(
                ours == theirs,
                "{f} differs:\nkiln:\n{}\ndepmod:\n{}",
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
    }
}

#[test]
fn index_files_match_depmod_byte_for_byte() {
    let mut t = amd64_tree();
    let sel = select(
        &t,
        &["all".into()],
        &custom(&[(
            "all",
            &[
                "ext4",
                "virtio_blk",
                "wireguard",
                "loop",
                "nls_iso8859-1",
                "unused_big",
            ],
        )]),
        Arch::X86_64,
    )
    .unwrap();
    write_index(&mut t, &sel).unwrap();
    compare_with_depmod(&t);
    let dep = String::from_utf8(t.read(&format!("{DIR}/modules.dep")).unwrap().to_vec()).unwrap();
    assert!(dep.contains("kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"), "{dep}");
    let devname =
        String::from_utf8(t.read(&format!("{DIR}/modules.devname")).unwrap().to_vec()).unwrap();
    assert!(
        devname.ends_with("loop loop-control c10:237\n"),
        "{devname}"
    );
}

#[test]
fn pruned_index_matches_depmod_and_modprobe_resolves_it() {
    let mut t = amd64_tree();
    let sel = select(
        &t,
        &["ext4".into(), "x".into()],
        &custom(&[("x", &["virtio_blk", "loop"])]),
        Arch::X86_64,
    )
    .unwrap();
    prune(&mut t, &sel).unwrap();
    write_index(&mut t, &sel).unwrap();
    compare_with_depmod(&t);

    // modprobe reads kiln's .bin files (no depmod run here).
    let dir = tempfile::tempdir().unwrap();
    stage(&t, dir.path());
    let show = |what: &str| -> String {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(dir.path())
            .args(["-S", KVER, "--show-depends", what])
            .output()
            .expect("modprobe (package kmod) must be installed");
        assert!(
            out.status.success(),
            "modprobe {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let base = dir.path().join("lib/modules").join(KVER);
        String::from_utf8_lossy(&out.stdout).replace(&format!("{}/", base.display()), "")
    };
    // Soft dependencies (modules.softdep), hard ones (modules.dep.bin), in order.
    let lines = |s: String| s.lines().map(|l| l.trim().to_string()).collect::<Vec<_>>();
    assert_eq!(
        lines(show("ext4")),
        [
            "crypto/crc32c_generic",
            "arch/x86/crypto/crc32c-intel",
            "fs/jbd2/jbd2",
            "fs/mbcache",
            "lib/crc16",
            "fs/ext4/ext4",
        ]
        .map(|m| format!("insmod kernel/{m}.ko"))
    );
    // Aliases (modules.alias.bin) and wildcard aliases.
    assert!(show("fs-ext3").ends_with("insmod kernel/fs/ext4/ext4.ko \n"));
    assert!(
        show("virtio:d00000002v00001AF4").ends_with("insmod kernel/drivers/block/virtio_blk.ko \n")
    );
    // Built-in modules and their aliases (modules.builtin.bin, modules.builtin.alias.bin).
    assert_eq!(show("zlib_inflate").trim(), "builtin zlib_inflate");
    assert_eq!(show("crypto-sha256").trim(), "builtin sha256_generic");
}

/// `data` compressed by the program `tool` (xz, zstd or gzip: the independent encoders).
fn compress(tool: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(tool)
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} must be installed: {e}"));
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{tool} failed");
    out.stdout
}

/// The test kernel as Debian 13 ships its modules: each compressed whole (xz, some zstd),
/// modules.order still naming them `.ko`.
fn compressed_tree() -> FileTree {
    let plain = amd64_tree();
    let mut t = FileTree::new(1_700_000_000);
    for (i, (path, node)) in plain.descendants(DIR).enumerate() {
        let Kind::File(data) = &node.kind else {
            continue;
        };
        let (path, data) = match path.ends_with(".ko") {
            true if i % 4 == 0 => (format!("{path}.zst"), compress("zstd", data)),
            true => (format!("{path}.xz"), compress("xz", data)),
            false => (path.clone(), data.to_vec()),
        };
        t.insert(&path, Node::file(data, 0o644, 0, "pkg:linux-image"))
            .unwrap();
    }
    t.insert("lib", Node::symlink("usr/lib", 0, "kiln:merged-usr"))
        .unwrap();
    t
}

#[test]
fn compressed_modules_are_selected_indexed_and_pruned_like_plain_ones() {
    let mut t = compressed_tree();
    let sel = select(
        &t,
        &["ext4".into(), "x".into()],
        &custom(&[("x", &["virtio_blk", "loop"])]),
        Arch::X86_64,
    )
    .unwrap();
    let plain = select(
        &amd64_tree(),
        &["ext4".into(), "x".into()],
        &custom(&[("x", &["virtio_blk", "loop"])]),
        Arch::X86_64,
    )
    .unwrap();
    assert_eq!(
        names(&sel.all),
        names(&plain.all),
        "same selection, same order"
    );
    assert!(sel
        .all
        .iter()
        .all(|m| m.path.ends_with(".xz") || m.path.ends_with(".zst")));
    let pruned = prune(&mut t, &sel).unwrap();
    assert!(pruned.files > 0);
    assert!(t
        .descendants(DIR)
        .all(|(p, _)| !is_module_path(p) || sel.all.iter().any(|m| &m.path == p)));
    write_index(&mut t, &sel).unwrap();
    // The host's depmod (kmod 30, built with xz and zstd) reads the same files.
    compare_with_depmod(&t);
    let dep = String::from_utf8(t.read(&format!("{DIR}/modules.dep")).unwrap().to_vec()).unwrap();
    assert!(dep.contains("kernel/fs/ext4/ext4.ko.xz: "), "{dep}");
    // What the initramfs takes: the plain ELF under the plain name.
    for m in &sel.all {
        let file = t.read(&m.path).unwrap();
        let elf = module_bytes(&m.path, &file).unwrap();
        assert_eq!(&elf[..4], b"\x7fELF", "{}", m.path);
        assert!(plain_module_path(&m.path).ends_with(".ko"));
    }
    let bad = module_bytes("x/bad.ko.xz", b"not xz")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("/x/bad.ko.xz") && bad.contains("xz"), "{bad}");
}

#[test]
fn index_trie_layout() {
    let mut idx = Index::default();
    idx.insert("ab", "v1", 2).unwrap();
    idx.insert("abc", "v2", 0).unwrap();
    idx.insert("ab", "v0", 1).unwrap();
    idx.insert("b", "v3", 0).unwrap();
    let b = idx.to_bytes();
    assert_eq!(&b[0..8], &[0xb0, 0x07, 0xf4, 0x57, 0, 2, 0, 1]);
    // Read it back with a minimal reader of the documented format.
    fn lookup(b: &[u8], key: &[u8]) -> Vec<(u32, String)> {
        let u32at = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
        let mut off = u32at(8);
        let mut k = 0;
        loop {
            let mut p = (off & 0x0fff_ffff) as usize;
            if off & NODE_PREFIX != 0 {
                let end = p + b[p..].iter().position(|&c| c == 0).unwrap();
                let prefix = &b[p..end];
                if !key[k..].starts_with(prefix) {
                    return vec![];
                }
                k += prefix.len();
                p = end + 1;
            }
            let (mut first, mut last, mut children) = (1u8, 0u8, p);
            if off & NODE_CHILDS != 0 {
                first = b[p];
                last = b[p + 1];
                children = p + 2;
                p = children + 4 * (last as usize - first as usize + 1);
            }
            if k == key.len() {
                let mut vals = vec![];
                if off & NODE_VALUES != 0 {
                    let n = u32at(p);
                    p += 4;
                    for _ in 0..n {
                        let prio = u32at(p);
                        p += 4;
                        let end = p + b[p..].iter().position(|&c| c == 0).unwrap();
                        vals.push((prio, String::from_utf8(b[p..end].to_vec()).unwrap()));
                        p = end + 1;
                    }
                }
                return vals;
            }
            let c = key[k];
            if c < first || c > last {
                return vec![];
            }
            off = u32at(children + 4 * (c - first) as usize);
            if off == 0 {
                return vec![];
            }
            k += 1;
        }
    }
    assert_eq!(
        lookup(&b, b"ab"),
        vec![(1, "v0".to_string()), (2, "v1".to_string())]
    );
    assert_eq!(lookup(&b, b"abc"), vec![(0, "v2".to_string())]);
    assert_eq!(lookup(&b, b"b"), vec![(0, "v3".to_string())]);
    assert!(lookup(&b, b"a").is_empty());
    assert!(idx.insert("é", "x", 0).is_err());
}
