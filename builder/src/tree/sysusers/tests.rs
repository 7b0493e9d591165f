use super::udev::UDEV_GROUPS;
use super::*;
use crate::tree::{FileTree, Node};

const PASSWD_MASTER: &str = "root:*:0:0:root:/root:/bin/bash\n\
    daemon:*:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
    sync:*:4:65534:sync:/bin:/bin/sync\n\
    nobody:*:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP_MASTER: &str =
    "root:*:0:\ndaemon:*:1:\nadm:*:4:\nshadow:*:42:\nusers:*:100:\nnogroup:*:65534:\n";

fn base_tree() -> FileTree {
    let mut t = FileTree::new(86_400 * 20_000 + 5);
    t.insert(
        "usr/share/base-passwd/passwd.master",
        Node::file(
            PASSWD_MASTER.as_bytes().to_vec(),
            0o644,
            0,
            "pkg:base-passwd",
        ),
    )
    .unwrap();
    t.insert(
        "usr/share/base-passwd/group.master",
        Node::file(
            GROUP_MASTER.as_bytes().to_vec(),
            0o644,
            0,
            "pkg:base-passwd",
        ),
    )
    .unwrap();
    t
}

fn conf(t: &mut FileTree, path: &str, text: &str) {
    t.insert(
        path,
        Node::file(text.as_bytes().to_vec(), 0o644, 0, "pkg:test"),
    )
    .unwrap();
}

fn text(t: &FileTree, p: &str) -> String {
    String::from_utf8(t.read(p).unwrap().to_vec()).unwrap()
}

fn line<'a>(t: &'a str, name: &str) -> &'a str {
    t.lines()
        .find(|l| l.split(':').next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in\n{t}"))
}

#[test]
fn dynamic_ids_go_down_from_999_groups_first() {
    let mut t = base_tree();
    conf(
        &mut t,
        "usr/lib/sysusers.d/dbus.conf",
        "u messagebus - \"System Message Bus\"\n",
    );
    conf(
        &mut t,
        "usr/lib/sysusers.d/systemd-journal.conf",
        "g systemd-journal - -\n",
    );
    conf(
        &mut t,
        "usr/lib/sysusers.d/systemd-network.conf",
        "u systemd-network - \"systemd Network Management\"\n",
    );
    let r = apply(&mut t).unwrap();
    let p = text(&t, "etc/passwd");
    let g = text(&t, "etc/group");
    assert_eq!(line(&g, "systemd-journal"), "systemd-journal:x:999:");
    assert_eq!(
        line(&p, "messagebus"),
        "messagebus:x:998:998:System Message Bus:/:/usr/sbin/nologin"
    );
    assert_eq!(
        line(&p, "systemd-network"),
        "systemd-network:x:997:997:systemd Network Management:/:/usr/sbin/nologin"
    );
    // base-passwd entries keep their place and IDs, password moved to shadow.
    assert!(p.starts_with("root:x:0:0:root:/root:/bin/bash\n"), "{p}");
    assert_eq!(r.users.len(), 2);
    assert_eq!(r.files.len(), 3);
    // udev's groups come from adduser's range, lowest free first.
    assert_eq!(line(&g, "input"), "input:x:101:");
    assert_eq!(line(&g, "render"), "render:x:104:");
}

#[test]
fn shadow_files_have_locked_passwords_and_shadow_group() {
    let mut t = base_tree();
    conf(
        &mut t,
        "usr/lib/sysusers.d/a.conf",
        "u svc - \"Service\" /var/lib/svc\n",
    );
    apply(&mut t).unwrap();
    let s = text(&t, "etc/shadow");
    assert_eq!(line(&s, "root"), "root:*:20000:0:99999:7:::");
    assert_eq!(line(&s, "svc"), "svc:!*:20000::::::");
    let gs = text(&t, "etc/gshadow");
    assert_eq!(line(&gs, "svc"), "svc:!*::");
    assert_eq!(line(&gs, "kvm"), "kvm:!::");
    assert_eq!(line(&gs, "adm"), "adm:*::");
    let n = t.get("etc/shadow").unwrap();
    assert_eq!((n.mode, n.uid, n.gid), (0o640, 0, 42));
    assert_eq!(t.get("etc/passwd").unwrap().mode, 0o644);
    assert_eq!(
        line(&text(&t, "etc/passwd"), "svc"),
        "svc:x:999:999:Service:/var/lib/svc:/usr/sbin/nologin"
    );
}

#[test]
fn fixed_ids_uid_gid_pairs_members_and_ranges() {
    let mut t = base_tree();
    conf(
        &mut t,
        "usr/lib/sysusers.d/x.conf",
        "# comment\n\
         r - 500-509\n\
         g grp1 -\n\
         u fixed 321 \"Fixed\" /home/fixed /bin/sh\n\
         u paired 400:100 - /srv\n\
         u named -:adm\n\
         u daemon 7 - -\n\
         m fixed adm\n\
         m extra newgrp\n",
    );
    apply(&mut t).unwrap();
    let p = text(&t, "etc/passwd");
    let g = text(&t, "etc/group");
    assert_eq!(line(&g, "grp1"), "grp1:x:509:");
    assert_eq!(
        line(&p, "fixed"),
        "fixed:x:321:321:Fixed:/home/fixed:/bin/sh"
    );
    assert_eq!(line(&g, "fixed"), "fixed:x:321:");
    assert_eq!(
        line(&p, "paired"),
        "paired:x:400:100::/srv:/usr/sbin/nologin"
    );
    assert!(!g.lines().any(|l| l.starts_with("paired:")), "{g}");
    assert_eq!(line(&p, "named"), "named:x:507:4::/:/usr/sbin/nologin");
    // Existing entries are never duplicated or changed.
    assert_eq!(p.lines().filter(|l| l.starts_with("daemon:")).count(), 1);
    assert_eq!(
        line(&p, "daemon"),
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin"
    );
    assert_eq!(line(&g, "adm"), "adm:x:4:fixed");
    // `m` with unknown user and group creates both.
    assert_eq!(line(&g, "newgrp"), "newgrp:x:508:extra");
    assert_eq!(line(&p, "extra"), "extra:x:506:506::/:/usr/sbin/nologin");
    assert_eq!(line(&g, "extra"), "extra:x:506:");
}

#[test]
fn etc_overrides_same_named_file_and_dev_null_masks() {
    let mut t = base_tree();
    conf(&mut t, "usr/lib/sysusers.d/a.conf", "u fromusr -\n");
    conf(&mut t, "etc/sysusers.d/a.conf", "u frometc -\n");
    conf(&mut t, "usr/lib/sysusers.d/b.conf", "u masked -\n");
    t.insert(
        "etc/sysusers.d/b.conf",
        Node::symlink("/dev/null", 0, "test"),
    )
    .unwrap();
    let r = apply(&mut t).unwrap();
    assert_eq!(
        r.users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        vec!["frometc"]
    );
    assert_eq!(r.files, vec!["etc/sysusers.d/a.conf".to_string()]);
}

#[test]
fn existing_etc_files_win_over_master_and_rerun_is_stable() {
    let mut t = base_tree();
    conf(&mut t, "usr/lib/sysusers.d/a.conf", "u svc -\n");
    apply(&mut t).unwrap();
    let first: Vec<String> = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"]
        .iter()
        .map(|p| text(&t, p))
        .collect();
    let r = apply(&mut t).unwrap();
    assert!(r.users.is_empty() && r.groups.is_empty(), "{r:?}");
    let second: Vec<String> = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"]
        .iter()
        .map(|p| text(&t, p))
        .collect();
    assert_eq!(first, second);
}

#[test]
fn syntax_errors_name_file_and_line() {
    for (body, want) in [
        ("u ok -\nx bad -\n", "unknown line type"),
        ("\n\nu \"unterminated -\n", "unterminated"),
        ("u 9lives -\n", "not a valid user"),
        ("u a b c d e f g\n", "at most 6"),
        ("u a %H\n", "specifier %H"),
        ("r - 9-3\n", "bad range"),
    ] {
        let mut t = base_tree();
        conf(&mut t, "usr/lib/sysusers.d/z.conf", body);
        let e = apply(&mut t).unwrap_err().to_string();
        let n = body.lines().count();
        assert!(
            e.contains(&format!("/usr/lib/sysusers.d/z.conf:{n}")) && e.contains(want),
            "{body:?}: {e}"
        );
    }
}

#[test]
fn malformed_passwd_and_group_lines_name_file_and_line() {
    for (path, body) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nbad:x:zero:0:b:/:/bin/sh\n",
        ),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nshort:x:1\n"),
        ("etc/group", "root:x:0:\n# comment\nstaff:x:notanumber:\n"),
    ] {
        let mut t = base_tree();
        conf(&mut t, path, body);
        let e = apply(&mut t).unwrap_err().to_string();
        let line = if path == "etc/group" { 3 } else { 2 };
        assert!(e.contains(&format!("/{path}:{line}")), "{body:?}: {e}");
    }
}

#[test]
fn strict_gid_that_does_not_exist_is_an_error() {
    let mut t = base_tree();
    conf(&mut t, "usr/lib/sysusers.d/z.conf", "u svc 300:777\n");
    let e = apply(&mut t).unwrap_err().to_string();
    assert!(e.contains("z.conf:1") && e.contains("777"), "{e}");
}

#[test]
fn path_ids_take_the_owner_of_the_file() {
    let mut t = base_tree();
    let mut n = Node::dir(0o755, 0, "pkg:x");
    n.uid = 555;
    n.gid = 556;
    t.insert("var/lib/owned", n).unwrap();
    let mut n = Node::file(b"x".to_vec(), 0o644, 0, "pkg:x");
    n.uid = 560;
    n.gid = 561;
    t.insert("var/lib/owned2", n).unwrap();
    conf(
        &mut t,
        "usr/lib/sysusers.d/z.conf",
        "g ogrp /var/lib/owned\nu ousr /var/lib/owned2\nu taken /var/lib/owned\n",
    );
    apply(&mut t).unwrap();
    assert_eq!(line(&text(&t, "etc/group"), "ogrp"), "ogrp:x:556:");
    assert_eq!(
        line(&text(&t, "etc/passwd"), "ousr"),
        "ousr:x:560:561::/:/usr/sbin/nologin"
    );
    // The owner's GID is taken by ogrp: the group is allocated instead.
    assert_eq!(
        line(&text(&t, "etc/passwd"), "taken"),
        "taken:x:555:999::/:/usr/sbin/nologin"
    );
}

#[test]
fn agrees_with_systemd_sysusers() {
    referee(&[
        ("basic.conf", "g adm 4 -\ng tty 5 -\nu root 0 - /root /bin/bash\nu sync 4:65534 - /bin /bin/sync\n"),
        ("dbus.conf", "u messagebus - \"System Message Bus\"\n"),
        ("systemd-journal.conf", "g systemd-journal - -\n"),
        ("systemd-network.conf", "u systemd-network - \"systemd Network Management\"\n"),
        ("zz.conf", "g 'both' 990\nu both - \"Both\"\ng taken 998\nu wantsgid 65534\nm messagebus adm\nm newbie newgroup\n"),
    ]);
}

#[test]
fn agrees_with_systemd_sysusers_on_ranges_and_collisions() {
    referee(&[
        ("a.conf", "r - 990-995\nr - 200-201\nu first -\ng second -\nu third 994\nu fourth -:adm /home/f\n"),
        ("b.conf", "u fifth 65534 \"Uid taken\"\ng sixth 993\nu seventh -\nu eighth 100:users\n"),
    ]);
}

/// The host's systemd-sysusers is the referee: same input, same IDs.
fn referee(confs: &[(&str, &str)]) {
    let mut t = base_tree();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::create_dir_all(dir.path().join("usr/lib/sysusers.d")).unwrap();
    std::fs::write(dir.path().join("etc/passwd"), PASSWD_MASTER).unwrap();
    std::fs::write(dir.path().join("etc/group"), GROUP_MASTER).unwrap();
    for &(name, body) in confs {
        conf(&mut t, &format!("usr/lib/sysusers.d/{name}"), body);
        std::fs::write(dir.path().join("usr/lib/sysusers.d").join(name), body).unwrap();
    }
    let out = std::process::Command::new("systemd-sysusers")
        .arg(format!("--root={}", dir.path().display()))
        .output()
        .expect("systemd-sysusers (package systemd) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    apply(&mut t).unwrap();
    // Compare everything but the password field (kiln runs pwconv's step too).
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                f[1] = "";
                f.join(":")
            })
            .filter(|l| !UDEV_GROUPS.iter().any(|g| l.starts_with(&format!("{g}:"))))
            .collect()
    };
    for f in ["etc/passwd", "etc/group"] {
        let theirs = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(strip(&text(&t, f)), strip(&theirs), "{f}");
    }
    // The four files pass shadow-utils' own consistency checks.
    let ro = dir.path().join("kiln");
    std::fs::create_dir_all(ro.join("etc")).unwrap();
    for f in ["passwd", "group", "shadow", "gshadow"] {
        std::fs::write(
            ro.join("etc").join(f),
            &*t.read(&format!("etc/{f}")).unwrap(),
        )
        .unwrap();
    }
    for tool in ["pwck", "grpck"] {
        // -q: report errors only (missing home directories are not errors).
        let out = std::process::Command::new(tool)
            .args(["-r", "-q", "-R"])
            .arg(&ro)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{tool}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
