use super::*;
use std::collections::BTreeMap;

fn unit(t: &mut FileTree, path: &str, body: &str) {
    t.insert(
        path,
        Node::file(body.as_bytes().to_vec(), 0o644, 0, "pkg:test"),
    )
    .unwrap();
}

fn sample() -> FileTree {
    let mut t = FileTree::new(1000);
    let u = "usr/lib/systemd/system";
    unit(
        &mut t,
        &format!("{u}/multi-user.target"),
        "[Unit]\nDescription=Multi-User\n",
    );
    unit(&mut t, &format!("{u}/sysinit.target"), "[Unit]\n");
    unit(&mut t, &format!("{u}/graphical.target"), "[Unit]\n");
    unit(
        &mut t,
        &format!("{u}/containerd.service"),
        "[Unit]\nDescription=c\n[Service]\nExecStart=/usr/bin/containerd\n\n[Install]\nWantedBy=multi-user.target\n",
    );
    unit(
        &mut t,
        &format!("{u}/nftables.service"),
        "[Service]\nType=oneshot\n[Install]\nWantedBy=sysinit.target\nRequiredBy=network-pre.target\n",
    );
    unit(
        &mut t,
        &format!("{u}/systemd-timesyncd.service"),
        "[Install]\nWantedBy=sysinit.target\nAlias=dbus-org.freedesktop.timesync1.service\n",
    );
    unit(
        &mut t,
        &format!("{u}/getty@.service"),
        "[Service]\nExecStart=-/sbin/agetty %I\n[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
    );
    unit(
        &mut t,
        &format!("{u}/serial@.service"),
        "[Install]\nWantedBy=multi-user.target\n",
    );
    unit(
        &mut t,
        &format!("{u}/systemd-networkd.service"),
        "[Install]\nWantedBy=multi-user.target\n# comment\nAlso=systemd-networkd.socket \\\n  systemd-network-generator.service\nAlias=dbus-org.freedesktop.network1.service\n",
    );
    unit(
        &mut t,
        &format!("{u}/systemd-networkd.socket"),
        "[Install]\nWantedBy=sockets.target\nAlso=systemd-networkd.service\n",
    );
    unit(
        &mut t,
        &format!("{u}/systemd-network-generator.service"),
        "[Install]\nWantedBy=sysinit.target\n",
    );
    unit(
        &mut t,
        &format!("{u}/static.service"),
        "[Service]\nExecStart=/bin/true\n",
    );
    unit(
        &mut t,
        &format!("{u}/systemd-fsck-root.service"),
        "[Service]\n",
    );
    unit(
        &mut t,
        &format!("{u}/reset.service"),
        "[Install]\nWantedBy=a.target\nWantedBy=\nWantedBy=b.target\nUpheldBy=c.target\n",
    );
    t.insert("lib", Node::symlink("usr/lib", 0, "kiln:merged-usr"))
        .unwrap();
    t
}

/// Every symlink under /etc/systemd/system, as path → target.
fn links(t: &FileTree) -> BTreeMap<String, String> {
    t.descendants(ETC_UNITS)
        .filter_map(|(p, n)| match &n.kind {
            Kind::Symlink(t) => Some((p.clone(), t.clone())),
            _ => None,
        })
        .collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn wants_requires_alias_and_default() {
    let mut t = sample();
    apply(
        &mut t,
        &s(&[
            "containerd.service",
            "nftables.service",
            "systemd-timesyncd.service",
        ]),
        &[],
        "multi-user.target",
    )
    .unwrap();
    let l = links(&t);
    let want = |p: &str, tgt: &str| {
        assert_eq!(
            l.get(&format!("{ETC_UNITS}/{p}")).map(String::as_str),
            Some(tgt),
            "{p}: {l:#?}"
        )
    };
    want(
        "multi-user.target.wants/containerd.service",
        "/usr/lib/systemd/system/containerd.service",
    );
    want(
        "sysinit.target.wants/nftables.service",
        "/usr/lib/systemd/system/nftables.service",
    );
    want(
        "network-pre.target.requires/nftables.service",
        "/usr/lib/systemd/system/nftables.service",
    );
    want(
        "dbus-org.freedesktop.timesync1.service",
        "/usr/lib/systemd/system/systemd-timesyncd.service",
    );
    want(
        "default.target",
        "/usr/lib/systemd/system/multi-user.target",
    );
    assert_eq!(l.len(), 6, "{l:#?}");
}

#[test]
fn templates_default_instance_and_explicit_instances() {
    let mut t = sample();
    apply(
        &mut t,
        &s(&["getty@.service", "serial@ttyS0.service"]),
        &[],
        "multi-user.target",
    )
    .unwrap();
    let l = links(&t);
    assert_eq!(
        l[&format!("{ETC_UNITS}/getty.target.wants/getty@tty1.service")],
        "/usr/lib/systemd/system/getty@.service"
    );
    assert_eq!(
        l[&format!("{ETC_UNITS}/multi-user.target.wants/serial@ttyS0.service")],
        "/usr/lib/systemd/system/serial@.service"
    );
    let e = apply(
        &mut sample(),
        &s(&["serial@.service"]),
        &[],
        "multi-user.target",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("template") && e.contains("serial@NAME.service"),
        "{e}"
    );
}

#[test]
fn also_chains_are_followed_once() {
    let mut t = sample();
    apply(
        &mut t,
        &s(&["systemd-networkd.service"]),
        &[],
        "multi-user.target",
    )
    .unwrap();
    let l = links(&t);
    for p in [
        "multi-user.target.wants/systemd-networkd.service",
        "sockets.target.wants/systemd-networkd.socket",
        "sysinit.target.wants/systemd-network-generator.service",
        "dbus-org.freedesktop.network1.service",
    ] {
        assert!(l.contains_key(&format!("{ETC_UNITS}/{p}")), "{p}: {l:#?}");
    }
}

#[test]
fn empty_assignment_resets_and_upheld_by_is_ignored() {
    let mut t = sample();
    apply(&mut t, &s(&["reset.service"]), &[], "multi-user.target").unwrap();
    let l = links(&t);
    assert!(!l.keys().any(|k| k.contains("a.target")), "{l:#?}");
    assert!(l.contains_key(&format!("{ETC_UNITS}/b.target.wants/reset.service")));
    assert!(!l.keys().any(|k| k.contains("upholds")), "{l:#?}");
}

#[test]
fn masks_point_to_dev_null_and_conflicts_fail() {
    let mut t = sample();
    apply(
        &mut t,
        &[],
        &s(&["systemd-fsck-root.service"]),
        "multi-user.target",
    )
    .unwrap();
    assert_eq!(
        links(&t)[&format!("{ETC_UNITS}/systemd-fsck-root.service")],
        "/dev/null"
    );
    let e = apply(
        &mut sample(),
        &s(&["containerd.service"]),
        &s(&["containerd.service"]),
        "multi-user.target",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("both enabled and masked"), "{e}");
    // A real unit file in /etc is not silently replaced by a mask.
    let mut t = sample();
    unit(&mut t, "etc/systemd/system/local.service", "[Service]\n");
    let e = apply(&mut t, &[], &s(&["local.service"]), "multi-user.target")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/etc/systemd/system/local.service") && e.contains("pkg:test"),
        "{e}"
    );
}

#[test]
fn unknown_static_alias_and_bad_names_are_errors() {
    let e = apply(
        &mut sample(),
        &s(&["nosuch.service"]),
        &[],
        "multi-user.target",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("nosuch.service")
            && e.contains("/usr/lib/systemd/system")
            && e.contains("/etc/systemd/system"),
        "{e}"
    );
    let e = apply(
        &mut sample(),
        &s(&["static.service"]),
        &[],
        "multi-user.target",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no [Install] section"), "{e}");
    let e = apply(&mut sample(), &[], &[], "nosuch.target")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nosuch.target"), "{e}");
    let e = apply(&mut sample(), &s(&["containerd"]), &[], "multi-user.target")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a unit name"), "{e}");
    let mut t = sample();
    t.insert(
        "usr/lib/systemd/system/other-name.service",
        Node::symlink("containerd.service", 0, "pkg:test"),
    )
    .unwrap();
    let e = apply(
        &mut t,
        &s(&["other-name.service"]),
        &[],
        "multi-user.target",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("alias of \"containerd.service\""), "{e}");
}

#[test]
fn units_only_in_split_lib_link_there() {
    let mut t = FileTree::new(5);
    unit(
        &mut t,
        "lib/systemd/system/x.service",
        "[Install]\nWantedBy=multi-user.target\n",
    );
    unit(&mut t, "lib/systemd/system/multi-user.target", "");
    apply(&mut t, &s(&["x.service"]), &[], "multi-user.target").unwrap();
    let l = links(&t);
    assert_eq!(
        l[&format!("{ETC_UNITS}/multi-user.target.wants/x.service")],
        "/lib/systemd/system/x.service"
    );
    // Running twice is harmless.
    apply(&mut t, &s(&["x.service"]), &[], "multi-user.target").unwrap();
}

#[test]
fn postinst_units_are_reported_by_package() {
    let mut t = sample();
    t.insert(
        "usr/bin/containerd",
        Node::file(b"elf".to_vec(), 0o755, 0, "pkg:containerd"),
    )
    .unwrap();
    assert_eq!(
        debian_postinst_units(&t),
        vec![("containerd".to_string(), "containerd.service".to_string())]
    );
}

/// The host's `systemctl --root` is the referee: same unit files, same links.
#[test]
fn agrees_with_systemctl() {
    let t0 = sample();
    let dir = tempfile::tempdir().unwrap();
    for (p, n) in t0.iter() {
        let dst = dir.path().join(p);
        match &n.kind {
            Kind::Dir => std::fs::create_dir_all(&dst).unwrap(),
            Kind::File(d) => {
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::write(&dst, d).unwrap()
            }
            Kind::Symlink(target) => std::os::unix::fs::symlink(target, &dst).unwrap(),
            _ => unreachable!(),
        }
    }
    let enable = [
        "containerd.service",
        "nftables.service",
        "systemd-timesyncd.service",
        "getty@.service",
        "serial@ttyS0.service",
        "systemd-networkd.service",
        "reset.service",
    ];
    let root = format!("--root={}", dir.path().display());
    let run = |args: &[&str]| {
        let out = std::process::Command::new("systemctl")
            .arg(&root)
            .args(args)
            .output()
            .expect("systemctl must be installed");
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut args = vec!["enable"];
    args.extend(enable);
    run(&args);
    run(&["mask", "systemd-fsck-root.service"]);
    run(&["set-default", "multi-user.target"]);
    let mut theirs = BTreeMap::new();
    let etc = dir.path().join(ETC_UNITS);
    for e in walk(&etc) {
        let rel = e
            .strip_prefix(dir.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        theirs.insert(
            rel,
            std::fs::read_link(&e)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    let mut t = t0.clone();
    apply(
        &mut t,
        &s(&enable),
        &s(&["systemd-fsck-root.service"]),
        "multi-user.target",
    )
    .unwrap();
    // Debian's 252 looks in /lib before /usr/lib; with merged /usr both
    // name the same file, and kiln prefers the /usr/lib spelling.
    let theirs: BTreeMap<String, String> = theirs
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.replace("/lib/systemd/system/", "/usr/lib/systemd/system/"),
            )
        })
        .collect();
    assert_eq!(links(&t), theirs);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.file_type().is_symlink() {
            out.push(p);
        } else if md.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}
