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
        pins: &[],
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
        pins: &[],
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

// ---------------------------------------------------------------------------
// [packages.from]: packages pinned to an extra suite.

/// Base suites `trixie` and `trixie-security`, extra suite `forky`.
fn with_forky(trixie: &[String], security: &[String], forky: &[String]) -> Index {
    let mut all = Vec::new();
    for (suite, stanzas) in [
        ("trixie", trixie),
        ("trixie-security", security),
        ("forky", forky),
    ] {
        all.extend(parse_packages(&stanzas.concat(), suite, Path::new("synthetic")).unwrap());
    }
    Index::with_extra_suites(
        "arm64",
        &s(&["trixie", "trixie-security"]),
        &s(&["forky"]),
        all,
    )
}

fn pins(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

fn suites(v: &[LockedPackage]) -> Vec<String> {
    v.iter()
        .map(|p| format!("{}={} ({})", p.name, p.version, p.suite))
        .collect()
}

/// A trixie-like base with containerd 1.7 ...
fn trixie() -> Vec<String> {
    vec![
        stanza(
            "containerd",
            "1.7.24",
            &[("Depends", "libc6 (>= 2.34), runc")],
        ),
        stanza("runc", "1.1.15", &[("Depends", "libc6 (>= 2.34)")]),
        stanza("libc6", "2.41-12", &[]),
        stanza("libseccomp2", "2.6.0-2", &[]),
        stanza("bash", "5.2.37", &[("Depends", "libc6 (>= 2.36)")]),
        stanza("libfoo", "2.0", &[("Depends", "libc6")]),
    ]
}

fn trixie_security() -> Vec<String> {
    vec![stanza("libc6", "2.41-12+deb13u1", &[])]
}

/// ... and a forky with containerd 2 and newer versions of everything, which
/// only a pin may reach.
fn forky() -> Vec<String> {
    vec![
        stanza(
            "containerd",
            "2.1.9",
            &[("Depends", "libc6 (>= 2.38), runc (>= 1.2)")],
        ),
        stanza(
            "runc",
            "1.3.6",
            &[("Depends", "libc6 (>= 2.38), libseccomp2 (>= 2.5)")],
        ),
        stanza("libc6", "2.42-1", &[]),
        stanza("libseccomp2", "2.6.0-3", &[]),
        stanza("bash", "5.3", &[("Depends", "libc6 (>= 2.42)")]),
        stanza("libfoo", "3.0", &[("Depends", "libc6 (>= 2.36), libbar")]),
        stanza("libbar", "1.0", &[]),
    ]
}

fn containerd_archive() -> Index {
    with_forky(&trixie(), &trixie_security(), &forky())
}

#[test]
fn a_pinned_package_comes_from_its_suite_and_its_dependencies_from_the_base_suites() {
    let idx = containerd_archive();
    let pkgs = s(&["bash", "containerd", "runc"]);
    let p = pins(&[("containerd", "forky"), ("runc", "forky")]);
    let got = resolve(
        &idx,
        &Request {
            pins: &p,
            ..req(&pkgs)
        },
    )
    .unwrap();
    assert_eq!(
        suites(&got),
        [
            "bash=5.2.37 (trixie)",
            "containerd=2.1.9 (forky)",
            // Newer in forky, but the base suites satisfy every constraint.
            "libc6=2.41-12+deb13u1 (trixie-security)",
            "libseccomp2=2.6.0-2 (trixie)",
            "runc=1.3.6 (forky)",
        ]
    );
    assert!(got.iter().all(|p| p.role == Role::Root));
}

#[test]
fn a_dependency_only_the_extra_suite_satisfies_comes_from_it_with_its_own_closure() {
    // containerd 2 needs runc 1.3, which needs libfoo 3: only forky has them;
    // libfoo 3 needs libbar, which only forky has, and libc6, which trixie
    // satisfies.
    let idx = with_forky(
        &[
            stanza("libc6", "2.41-12", &[]),
            stanza("libfoo", "2.0", &[]),
            stanza("runc", "1.1.15", &[]),
            stanza("app", "1", &[("Depends", "libfoo")]),
        ],
        &[],
        &[
            stanza("containerd", "2.1.9", &[("Depends", "runc (>= 1.3)")]),
            stanza("runc", "1.3.6", &[("Depends", "libfoo (>= 3)")]),
            stanza("libfoo", "3.0", &[("Depends", "libc6 (>= 2.36), libbar")]),
            stanza("libbar", "1.0", &[]),
            stanza("libc6", "2.42-1", &[]),
        ],
    );
    // `app` sorts first and its libfoo is nearer the roots, yet the pinned
    // closure is followed first, so app's unversioned libfoo accepts the 3.0
    // that runc needs (the other way round, libfoo 2.0 would be chosen first).
    let pkgs = s(&["app", "containerd"]);
    let p = pins(&[("containerd", "forky")]);
    let got = resolve(
        &idx,
        &Request {
            pins: &p,
            ..req(&pkgs)
        },
    )
    .unwrap();
    assert_eq!(
        suites(&got),
        [
            "app=1 (trixie)",
            "containerd=2.1.9 (forky)",
            "libbar=1.0 (forky)",
            "libc6=2.41-12 (trixie)",
            "libfoo=3.0 (forky)",
            "runc=1.3.6 (forky)",
        ]
    );
}

#[test]
fn unpinned_packages_never_come_from_an_extra_suite() {
    let idx = containerd_archive();
    let pkgs = s(&["bash", "containerd", "libfoo"]);
    // Without pins the request resolves exactly as it does without forky.
    let got = resolve(&idx, &req(&pkgs)).unwrap();
    assert_eq!(
        suites(&got),
        [
            "bash=5.2.37 (trixie)",
            "containerd=1.7.24 (trixie)",
            "libc6=2.41-12+deb13u1 (trixie-security)",
            "libfoo=2.0 (trixie)",
            "runc=1.1.15 (trixie)",
        ]
    );
    let base_only = index(&[
        ("trixie", trixie().concat()),
        ("trixie-security", trixie_security().concat()),
    ]);
    assert_eq!(resolve(&base_only, &req(&pkgs)).unwrap(), got);
    // A pin on containerd leaves bash, libfoo and libc6 on the base suites.
    let p = pins(&[("containerd", "forky")]);
    let got = resolve(
        &idx,
        &Request {
            pins: &p,
            ..req(&pkgs)
        },
    )
    .unwrap();
    assert_eq!(
        suites(&got),
        [
            "bash=5.2.37 (trixie)",
            "containerd=2.1.9 (forky)",
            "libc6=2.41-12+deb13u1 (trixie-security)",
            "libfoo=2.0 (trixie)",
            "libseccomp2=2.6.0-2 (trixie)",
            "runc=1.3.6 (forky)",
        ]
    );
    // A base package whose dependency only forky has: an error, not a fallback.
    let idx = with_forky(
        &[stanza("app", "1", &[("Depends", "libnew")])],
        &[],
        &[stanza("libnew", "1", &[])],
    );
    let err = resolve(&idx, &req(&s(&["app"]))).unwrap_err().to_string();
    assert!(err.contains("app -> libnew : no candidate"), "{err}");
}

#[test]
fn kernel_boot_stub_and_essential_packages_stay_on_the_base_suites() {
    let idx = with_forky(
        &[
            stanza("linux-image-arm64", "6.12.57-1", &[]),
            stanza("systemd-boot-efi", "257.9-1", &[]),
            stanza("dash", "0.5.12", &[("Essential", "yes")]),
            stanza("containerd", "1.7.24", &[]),
        ],
        &[],
        &[
            stanza("linux-image-arm64", "7.2.1-1", &[]),
            stanza("systemd-boot-efi", "262-1", &[]),
            stanza("dash", "0.5.13", &[("Essential", "yes")]),
            stanza("coreutils", "9.7", &[("Essential", "yes")]),
            stanza("containerd", "2.1.9", &[]),
        ],
    );
    let pkgs = s(&["containerd"]);
    let p = pins(&[("containerd", "forky")]);
    let r = Request {
        essential: true,
        kernel: Some("linux-image-arm64"),
        boot: Some("systemd-boot-efi"),
        pins: &p,
        ..req(&pkgs)
    };
    assert_eq!(
        suites(&resolve(&idx, &r).unwrap()),
        [
            "containerd=2.1.9 (forky)",
            "dash=0.5.12 (trixie)",
            "linux-image-arm64=6.12.57-1 (trixie)",
            "systemd-boot-efi=257.9-1 (trixie)",
        ]
    );
}

#[test]
fn a_pin_the_suite_lacks_names_the_package_the_suite_and_the_fix() {
    let idx = with_forky(&trixie(), &[], &[stanza("containerd-shim", "2", &[])]);
    let pkgs = s(&["containerd"]);
    let p = pins(&[("containerd", "forky")]);
    let err = resolve(
        &idx,
        &Request {
            pins: &p,
            ..req(&pkgs)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(
            "package `containerd` is not in suite forky for arm64, which [packages.from] \
             takes it from (containerd = \"forky\"); check the name"
        ),
        "{err}"
    );
    assert!(
        err.ends_with(
            "remove it from [packages.from] to take it from the base suites (trixie, \
             trixie-security); did you mean `containerd-shim`?"
        ),
        "{err}"
    );
    // A pin naming a suite the index was not built with.
    let p = pins(&[("containerd", "sid")]);
    let err = resolve(
        &idx,
        &Request {
            pins: &p,
            ..req(&pkgs)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("suite sid (named in [packages.from]) was not indexed for arm64")
            && err.contains("extra_suites"),
        "{err}"
    );
}

#[test]
fn a_pinned_dependency_neither_place_satisfies_names_the_chain_and_both_places() {
    let idx = with_forky(
        &[stanza("libfoo", "2.0", &[])],
        &[],
        &[
            stanza("containerd", "2.1.9", &[("Depends", "runc (>= 1.2)")]),
            stanza("runc", "1.3.6", &[("Depends", "libfoo (>= 9)")]),
            stanza("libfoo", "3.0", &[]),
        ],
    );
    let pkgs = s(&["containerd"]);
    let p = pins(&[("containerd", "forky")]);
    let err = resolve(
        &idx,
        &Request {
            pins: &p,
            ..req(&pkgs)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(
            "cannot resolve for arm64: containerd -> runc -> libfoo (>= 9) : neither the base \
             suites (trixie, trixie-security) nor forky can satisfy it"
        ),
        "{err}"
    );
    assert!(
        err.contains("base suites: the archive has libfoo 2.0")
            && err.contains("forky: the archive has libfoo 3.0")
            && err.contains("[packages.from] takes containerd from forky"),
        "{err}"
    );
    // A base package that needs the pinned package's older version.
    let idx = with_forky(
        &[
            stanza("shim", "1", &[("Depends", "containerd (<< 2)")]),
            stanza("containerd", "1.7.24", &[]),
        ],
        &[],
        &[stanza("containerd", "2.1.9", &[])],
    );
    let pkgs = s(&["containerd", "shim"]);
    let err = resolve(
        &idx,
        &Request {
            pins: &p,
            ..req(&pkgs)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("shim -> containerd (<< 2) : no candidate")
            && err.contains("containerd 2.1.9 is already chosen from forky ([packages.from])"),
        "{err}"
    );
}

#[test]
fn an_index_with_extra_suites_keeps_the_base_index_as_it_was() {
    let plain = index(&[
        ("trixie", trixie().concat()),
        ("trixie-security", trixie_security().concat()),
    ]);
    let split = containerd_archive();
    assert_eq!(split.len(), plain.len());
    assert_eq!(split.extra_suite("forky").unwrap().len(), forky().len());
    assert!(split.extra_suite("sid").is_none());
    // One version in a base suite and in forky is kept in both, so a pin
    // still takes forky's.
    let same = [stanza("runc", "1.3.6", &[])];
    let idx = with_forky(&same, &[], &same);
    assert_eq!((idx.len(), idx.extra_suite("forky").unwrap().len()), (1, 1));
    let p = pins(&[("runc", "forky")]);
    let pkgs = s(&["runc"]);
    let got = resolve(
        &idx,
        &Request {
            pins: &p,
            ..req(&pkgs)
        },
    )
    .unwrap();
    assert_eq!(suites(&got), ["runc=1.3.6 (forky)"]);
}
