use super::*;
use crate::lock::index::parse_packages;
use std::path::Path;

/// Builds stanzas from a compact description: `name version [field: value]...`.
fn stanza(name: &str, version: &str, fields: &[(&str, &str)]) -> String {
    let mut s = format!("Package: {name}\nVersion: {version}\n");
    if !fields.iter().any(|(k, _)| *k == "Architecture") {
        s.push_str("Architecture: arm64\n");
    }
    for (k, v) in fields {
        s.push_str(&format!("{k}: {v}\n"));
    }
    let sha = format!("{:064x}", name.len() * 1000 + version.len());
    s.push_str(&format!(
        "Filename: pool/main/{name}_{version}.deb\nSize: 10\nSHA256: {sha}\n\n"
    ));
    s
}

fn index(suites: &[(&str, String)]) -> Index {
    let mut all = Vec::new();
    for (suite, text) in suites {
        all.extend(parse_packages(text, suite, Path::new("synthetic")).unwrap());
    }
    let names: Vec<String> = suites.iter().map(|(s, _)| s.to_string()).collect();
    Index::new("arm64", &names, all)
}

fn req<'a>(pkgs: &'a [String]) -> Request<'a> {
    Request {
        arch: Arch::Arm64,
        packages: pkgs,
        essential: false,
        kernel: None,
        boot: None,
    }
}

fn names(v: &[LockedPackage]) -> Vec<String> {
    v.iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn follows_depends_and_pre_depends_with_highest_satisfying_version_across_suites() {
    let main = [
        stanza(
            "app",
            "1.0",
            &[("Depends", "libx (>= 2)"), ("Pre-Depends", "libc6")],
        ),
        stanza("libx", "2.0", &[]),
        stanza("libc6", "2.36-9", &[]),
        stanza("unrelated", "1", &[]),
        stanza("x86only", "1", &[("Architecture", "amd64")]),
    ]
    .concat();
    let sec = [
        stanza("libc6", "2.36-9+deb12u4", &[]),
        stanza("libx", "2.0~rc1", &[]),
    ]
    .concat();
    let idx = index(&[("bookworm", main), ("bookworm-security", sec)]);
    let got = resolve(&idx, &req(&s(&["app"]))).unwrap();
    assert_eq!(names(&got), ["app=1.0", "libc6=2.36-9+deb12u4", "libx=2.0"]);
    assert_eq!(got[1].suite, "bookworm-security");
    assert!(got
        .iter()
        .all(|p| p.role == Role::Root && p.for_arch == Arch::Arm64));
}

#[test]
fn version_constraints_pick_the_highest_that_satisfies() {
    let text = [
        stanza("a", "1", &[("Depends", "lib (<< 2.0)")]),
        stanza("lib", "2.0", &[]),
        stanza("lib", "1.9", &[]),
        stanza("lib", "1.5", &[]),
    ]
    .concat();
    let idx = index(&[("s", text)]);
    assert_eq!(
        names(&resolve(&idx, &req(&s(&["a"]))).unwrap()),
        ["a=1", "lib=1.9"]
    );
    for (dep, want) in [
        ("lib (<= 1.5)", "1.5"),
        ("lib (= 1.9)", "1.9"),
        ("lib (>= 1.6)", "2.0"),
        ("lib (>> 1.9)", "2.0"),
    ] {
        let text = [
            stanza("a", "1", &[("Depends", dep)]),
            stanza("lib", "2.0", &[]),
            stanza("lib", "1.9", &[]),
            stanza("lib", "1.5", &[]),
        ]
        .concat();
        let got = resolve(&index(&[("s", text)]), &req(&s(&["a"]))).unwrap();
        assert_eq!(got[1].version, want, "{dep}");
    }
}

#[test]
fn alternatives_prefer_a_chosen_package_else_the_first_satisfiable() {
    let text = [
        stanza("a", "1", &[("Depends", "missing | first | second")]),
        stanza("b", "1", &[("Depends", "first | second")]),
        stanza("first", "1", &[]),
        stanza("second", "1", &[]),
    ]
    .concat();
    let idx = index(&[("s", text)]);
    assert_eq!(
        names(&resolve(&idx, &req(&s(&["a"]))).unwrap()),
        ["a=1", "first=1"]
    );
    // `second` is requested, so `b` takes it rather than adding `first`.
    assert_eq!(
        names(&resolve(&idx, &req(&s(&["b", "second"]))).unwrap()),
        ["b=1", "second=1"]
    );
}

#[test]
fn virtual_packages_and_versioned_provides() {
    let text = [
        stanza("base-files", "12", &[("Pre-Depends", "awk")]),
        stanza(
            "gawk",
            "5",
            &[("Provides", "awk"), ("Priority", "optional")],
        ),
        stanza(
            "mawk",
            "1.3",
            &[("Provides", "awk"), ("Priority", "required")],
        ),
        stanza("app", "1", &[("Depends", "libabi (>= 3)")]),
        stanza("libold", "1", &[("Provides", "libabi (= 2)")]),
        stanza("libnew", "1", &[("Provides", "libabi (= 3)")]),
        stanza("libplain", "1", &[("Provides", "libabi")]),
    ]
    .concat();
    let idx = index(&[("s", text)]);
    assert_eq!(
        names(&resolve(&idx, &req(&s(&["base-files"]))).unwrap()),
        ["base-files=12", "mawk=1.3"]
    );
    assert_eq!(
        names(&resolve(&idx, &req(&s(&["base-files", "gawk"]))).unwrap()),
        ["base-files=12", "gawk=5"]
    );
    assert_eq!(
        names(&resolve(&idx, &req(&s(&["app"]))).unwrap()),
        ["app=1", "libnew=1"]
    );
}

#[test]
fn arch_qualifiers_and_arch_all() {
    let text = [
        stanza("a", "1", &[("Depends", "py:any, tool:native, data")]),
        stanza("py", "3", &[]),
        stanza("tool", "1", &[]),
        stanza("data", "1", &[("Architecture", "all")]),
        stanza("b", "1", &[("Depends", "py:amd64")]),
    ]
    .concat();
    let idx = index(&[("s", text)]);
    let got = resolve(&idx, &req(&s(&["a"]))).unwrap();
    assert_eq!(names(&got), ["a=1", "data=1", "py=3", "tool=1"]);
    assert_eq!(got[1].arch, "all");
    let err = resolve(&idx, &req(&s(&["b"]))).unwrap_err().to_string();
    assert!(
        err.contains("py:amd64") && err.contains("no candidate"),
        "{err}"
    );
}

#[test]
fn essential_packages_join_when_asked() {
    let text = [
        stanza("a", "1", &[]),
        stanza(
            "coreutils",
            "9",
            &[("Essential", "yes"), ("Depends", "libacl")],
        ),
        stanza("libacl", "2", &[]),
    ]
    .concat();
    let idx = index(&[("s", text)]);
    let mut r = req(&[]);
    r.essential = true;
    let pkgs = s(&["a"]);
    r.packages = &pkgs;
    assert_eq!(
        names(&resolve(&idx, &r).unwrap()),
        ["a=1", "coreutils=9", "libacl=2"]
    );
    assert_eq!(names(&resolve(&idx, &req(&pkgs)).unwrap()), ["a=1"]);
}

#[test]
fn missing_request_names_package_arch_and_a_close_name() {
    let text = [
        stanza("wireguard-tools", "1", &[]),
        stanza("containerd", "1.6", &[]),
    ]
    .concat();
    let idx = index(&[("bookworm", text)]);
    let err = resolve(&idx, &req(&s(&["containerdd"])))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`containerdd`")
            && err.contains("arm64")
            && err.contains("did you mean `containerd`"),
        "{err}"
    );
    let err = resolve(&idx, &req(&s(&["wireguard"])))
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean `wireguard-tools`"), "{err}");
    let err = resolve(&idx, &req(&s(&["zzzzzzzz"])))
        .unwrap_err()
        .to_string();
    assert!(!err.contains("did you mean"), "{err}");
}

#[test]
fn unsatisfiable_dependency_names_the_chain() {
    let text = [
        stanza("containerd", "1.6", &[("Depends", "runc (>= 1.1)")]),
        stanza("runc", "1.0", &[]),
        stanza("top", "1", &[("Depends", "containerd")]),
    ]
    .concat();
    let idx = index(&[("s", text)]);
    let err = resolve(&idx, &req(&s(&["top"]))).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("top -> containerd -> runc (>= 1.1) : no candidate"),
        "{msg}"
    );
    assert!(msg.contains("the archive has runc 1.0"), "{msg}");
    assert!(msg.contains("arm64"), "{msg}");
}

#[test]
fn a_chosen_version_is_not_changed_by_a_later_constraint() {
    let text = [
        stanza("a", "1", &[("Depends", "lib (= 1)")]),
        stanza("b", "1", &[("Depends", "lib (= 2)")]),
        stanza("lib", "1", &[]),
        stanza("lib", "2", &[]),
    ]
    .concat();
    let idx = index(&[("s", text)]);
    let err = resolve(&idx, &req(&s(&["a", "b"])))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b -> lib (= 2)") && err.contains("lib 1 is already chosen"),
        "{err}"
    );
}

#[test]
fn dependency_cycles_terminate() {
    let text = [
        stanza("libc6", "2", &[("Depends", "libgcc-s1")]),
        stanza("libgcc-s1", "12", &[("Depends", "libc6 (>= 2)")]),
    ]
    .concat();
    let idx = index(&[("s", text)]);
    assert_eq!(
        names(&resolve(&idx, &req(&s(&["libc6"]))).unwrap()),
        ["libc6=2", "libgcc-s1=12"]
    );
}

#[test]
fn kernel_follows_the_metapackage_only_and_boot_takes_the_stub_alone() {
    let text = [
        stanza(
            "linux-image-arm64",
            "6.1.140-1",
            &[("Depends", "linux-image-6.1.0-37-arm64 (= 6.1.140-1)")],
        ),
        stanza(
            "linux-image-6.1.0-37-arm64",
            "6.1.140-1",
            &[(
                "Depends",
                "kmod, linux-base (>= 4.3~), initramfs-tools | linux-initramfs-tool",
            )],
        ),
        stanza("linux-image-6.1.0-37-arm64", "6.1.137-1", &[]),
        stanza("kmod", "30", &[]),
        stanza("systemd-boot-efi", "252.38", &[("Depends", "systemd")]),
        stanza("bash", "5", &[]),
    ]
    .concat();
    let idx = index(&[("s", text)]);
    let pkgs = s(&["bash"]);
    let r = Request {
        arch: Arch::Arm64,
        packages: &pkgs,
        essential: false,
        kernel: Some("linux-image-arm64"),
        boot: Some("systemd-boot-efi"),
    };
    let got = resolve(&idx, &r).unwrap();
    let summary: Vec<String> = got
        .iter()
        .map(|p| format!("{:?}:{}={}", p.role, p.name, p.version))
        .collect();
    assert_eq!(
        summary,
        [
            "Root:bash=5",
            "Kernel:linux-image-6.1.0-37-arm64=6.1.140-1",
            "Kernel:linux-image-arm64=6.1.140-1",
            "Boot:systemd-boot-efi=252.38"
        ]
    );
    let bad = Request {
        kernel: Some("linux-image-arm46"),
        ..r
    };
    let err = resolve(&idx, &bad).unwrap_err().to_string();
    assert!(
        err.contains("kernel.package") && err.contains("did you mean `linux-image-arm64`"),
        "{err}"
    );
}

#[test]
fn duplicate_versions_keep_the_first_suite() {
    let a = stanza("p", "1", &[]);
    let idx = index(&[("bookworm", a.clone()), ("bookworm-updates", a)]);
    let got = resolve(&idx, &req(&s(&["p"]))).unwrap();
    assert_eq!(got[0].suite, "bookworm");
    assert_eq!(idx.len(), 1);
}
