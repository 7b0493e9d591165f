use super::*;
use crate::tree::effects::merged_usr_links;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Builds a real .deb with dpkg-deb (the independent tool) from a staged tree.
fn build_deb(
    dir: &Path,
    name: &str,
    files: &[(&str, &[u8], u32)],
    symlinks: &[(&str, &str)],
    hardlinks: &[(&str, &str)],
) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n multi-line\n"),
    )
    .unwrap();
    for (p, data, mode) in files {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, data).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    for (p, target) in symlinks {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &f).unwrap();
    }
    for (p, target) in hardlinks {
        std::fs::hard_link(root.join(target), root.join(p)).unwrap();
    }
    let out = dir.join(format!("{name}.deb"));
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&out)
        .output()
        .expect("dpkg-deb is part of every Debian system");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    out
}

#[test]
fn reads_files_links_modes_and_merges_usr() {
    let d = tempfile::tempdir().unwrap();
    let deb = build_deb(
        d.path(),
        "demo",
        &[
            ("bin/tool", b"#!/bin/sh\n", 0o4755),
            ("etc/demo.conf", b"x=1\n", 0o640),
        ],
        &[("usr/bin/alias", "../../bin/tool")],
        &[("bin/tool2", "bin/tool")],
    );
    let parsed = read_deb(&deb, "demo").unwrap();
    assert_eq!(parsed.control["Package"], "demo");
    assert_eq!(parsed.control["Description"], "test\nmulti-line");
    let mut tree = FileTree::new(2_000_000_000);
    let stats = insert_deb(&mut tree, parsed, &InsertRules::default()).unwrap();
    assert!(stats.entries >= 4);
    let tool = tree
        .get("usr/bin/tool")
        .expect("bin/ is mapped onto usr/bin");
    assert_eq!(tool.mode, 0o4755);
    assert_eq!((tool.uid, tool.gid), (0, 0));
    assert_eq!(tree.get("etc/demo.conf").unwrap().mode, 0o640);
    assert_eq!(
        tree.get("usr/bin/alias").unwrap().kind,
        Kind::Symlink("../../bin/tool".into())
    );
    let link = &tree.get("usr/bin/tool2").unwrap().kind;
    assert!(
        matches!(link, Kind::Hardlink(t) if t == "usr/bin/tool") || matches!(link, Kind::File(_)),
        "{link:?}"
    );
    assert!(!tree.contains("bin"));
    merged_usr_links(&mut tree).unwrap();
    assert_eq!(&*tree.read("bin/tool").unwrap(), b"#!/bin/sh\n");
}

/// Debian 13's base-files ships merged /usr's top-level links itself (`bin` → `usr/bin`)
/// beside the `usr/bin` folder: the links are dropped (the tree makes its own), other
/// top-level links are kept as they are.
#[test]
fn a_package_s_own_merged_usr_links_are_dropped() {
    let d = tempfile::tempdir().unwrap();
    let deb = build_deb(
        d.path(),
        "base-files",
        &[
            ("usr/bin/.keep", b"", 0o644),
            ("usr/lib/os-release", b"ID=debian\n", 0o644),
        ],
        &[
            ("bin", "usr/bin"),
            ("lib", "/usr/lib/"),
            ("sbin", "usr/bin"),
            ("opt", "usr/bin"),
        ],
        &[],
    );
    let parsed = read_deb(&deb, "base-files").unwrap();
    let links: Vec<&str> = parsed
        .entries
        .iter()
        .filter(|(_, n)| matches!(n.kind, Kind::Symlink(_)))
        .map(|(p, _)| p.as_str())
        .collect();
    // bin -> usr/bin and lib -> /usr/lib/ are dropped; sbin -> usr/bin is not merged
    // /usr's link for sbin, so it is kept (mapped, as before), and so is opt.
    assert_eq!(links, ["opt", "usr/sbin"]);
    let mut tree = FileTree::new(2_000_000_000);
    insert_deb(&mut tree, parsed, &InsertRules::default()).unwrap();
    assert_eq!(tree.get("usr/bin").unwrap().kind, Kind::Dir);
    merged_usr_links(&mut tree).unwrap();
    assert_eq!(
        tree.get("bin").unwrap().kind,
        Kind::Symlink("usr/bin".into())
    );
    assert_eq!(&*tree.read("lib/os-release").unwrap(), b"ID=debian\n");
    assert!(is_merged_usr_link(
        "lib64",
        &Kind::Symlink("usr/lib64".into())
    ));
    assert!(!is_merged_usr_link("lib64", &Kind::Dir));
    assert!(!is_merged_usr_link(
        "usr/bin",
        &Kind::Symlink("usr/bin".into())
    ));
}

#[test]
fn truncated_package_names_file_and_package() {
    let d = tempfile::tempdir().unwrap();
    let deb = build_deb(
        d.path(),
        "big",
        &[("usr/share/big", &vec![7u8; 300_000], 0o644)],
        &[],
        &[],
    );
    let bytes = std::fs::read(&deb).unwrap();
    let cut = d.path().join("cut.deb");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_deb(&cut, "big").unwrap_err().to_string();
    assert!(
        e.contains("cut.deb") && e.contains("big") && e.contains("corrupt"),
        "{e}"
    );
    std::fs::write(&cut, b"not a deb at all").unwrap();
    assert!(read_deb(&cut, "big").is_err());
}

#[test]
fn conflicting_packages_are_named_unless_preferred() {
    let d = tempfile::tempdir().unwrap();
    let a = read_deb(
        &build_deb(d.path(), "aa", &[("etc/x", b"a", 0o644)], &[], &[]),
        "aa",
    )
    .unwrap();
    let b = read_deb(
        &build_deb(d.path(), "bb", &[("etc/x", b"b", 0o644)], &[], &[]),
        "bb",
    )
    .unwrap();
    let mut tree = FileTree::new(2_000_000_000);
    insert_deb(&mut tree, a, &InsertRules::default()).unwrap();
    let e = insert_deb(&mut tree, b, &InsertRules::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pkg:aa") && e.contains("pkg:bb") && e.contains("etc/x") && e.contains("prefer"),
        "{e}"
    );

    let a = read_deb(
        &build_deb(d.path(), "aa", &[("etc/x", b"a", 0o644)], &[], &[]),
        "aa",
    )
    .unwrap();
    let b = read_deb(
        &build_deb(d.path(), "bb", &[("etc/x", b"b", 0o644)], &[], &[]),
        "bb",
    )
    .unwrap();
    let rules = InsertRules {
        prefer: [("etc/x".to_string(), "bb".to_string())].into(),
        ..Default::default()
    };
    let mut tree = FileTree::new(2_000_000_000);
    insert_deb(&mut tree, a, &rules).unwrap();
    insert_deb(&mut tree, b, &rules).unwrap();
    assert_eq!(&*tree.read("etc/x").unwrap(), b"b");
}

#[test]
fn excluded_paths_and_their_hardlinks_are_left_out() {
    let d = tempfile::tempdir().unwrap();
    let deb = build_deb(
        d.path(),
        "docs",
        &[
            ("usr/share/doc/docs/README", b"r", 0o644),
            ("usr/bin/keep", b"k", 0o755),
        ],
        &[],
        &[("usr/share/doc/docs/README2", "usr/share/doc/docs/README")],
    );
    let rules = InsertRules {
        exclude: vec![Glob::new("usr/share/doc/**")],
        ..Default::default()
    };
    let mut tree = FileTree::new(2_000_000_000);
    let stats = insert_deb(&mut tree, read_deb(&deb, "docs").unwrap(), &rules).unwrap();
    assert_eq!(stats.excluded, 2);
    assert!(!tree.contains("usr/share/doc/docs/README"));
    assert!(tree.contains("usr/bin/keep"));
}

#[test]
fn parallel_reads_keep_input_order() {
    let d = tempfile::tempdir().unwrap();
    let items: Vec<(String, PathBuf)> = (0..5)
        .map(|i| {
            let name = format!("p{i}");
            let big = vec![i as u8; 10_000 * (5 - i)];
            let deb = build_deb(
                d.path(),
                &name,
                &[(&format!("usr/share/{name}"), &big, 0o644)],
                &[],
                &[],
            );
            (name, deb)
        })
        .collect();
    let debs = read_debs_parallel(&items, &indicatif::ProgressBar::hidden()).unwrap();
    let names: Vec<&str> = debs.iter().map(|d| d.package.as_str()).collect();
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
}
