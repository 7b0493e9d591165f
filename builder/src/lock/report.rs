//! What `kiln lock` says about where the packages came from: a count per
//! suite and arch, every package of an extra suite with its version, and the
//! names each other base suite gave (security and point-release updates).

use std::collections::{BTreeMap, BTreeSet};

use super::Lockfile;
use crate::arch::Arch;
use crate::profile::Debian;

/// The lines `kiln lock` prints under its summary, each ending in a newline;
/// empty when every package is from the first base suite.
pub fn suite_summary(lock: &Lockfile, debian: &Debian) -> String {
    let first = debian
        .suites
        .first()
        .map(String::as_str)
        .unwrap_or_default();
    if lock.packages.iter().all(|p| p.suite == first) {
        return String::new();
    }
    // The profile's order (base, then extra), then anything else by name.
    let rank = |s: &str| {
        debian
            .suites
            .iter()
            .chain(&debian.extra_suites)
            .position(|x| x == s)
            .unwrap_or(usize::MAX)
    };
    let arches: BTreeSet<Arch> = lock.packages.iter().map(|p| p.for_arch).collect();
    let mut out = String::from("packages by suite:\n");
    for &arch in &arches {
        let mut counts: BTreeMap<(usize, &str), usize> = BTreeMap::new();
        for p in lock.packages_for(arch, None) {
            *counts
                .entry((rank(&p.suite), p.suite.as_str()))
                .or_default() += 1;
        }
        let counts: Vec<String> = counts
            .iter()
            .map(|((_, s), n)| format!("{s} {n}"))
            .collect();
        out.push_str(&format!("  {arch}: {}\n", counts.join(", ")));
    }
    // (suite rank, suite, name, version) → arches, so a package every arch
    // has is listed once.
    let mut seen: BTreeMap<(usize, &str, &str, &str), Vec<Arch>> = BTreeMap::new();
    for p in lock.packages.iter().filter(|p| p.suite != first) {
        let arches = seen
            .entry((rank(&p.suite), &p.suite, &p.name, &p.version))
            .or_default();
        if !arches.contains(&p.for_arch) {
            arches.push(p.for_arch);
        }
    }
    let only = |on: &[Arch]| {
        if on.len() == arches.len() {
            String::new()
        } else {
            let names: Vec<&str> = on.iter().map(|a| a.name()).collect();
            format!(" for {}", names.join(", "))
        }
    };
    let extra: Vec<String> = seen
        .iter()
        .filter(|((_, s, _, _), _)| !debian.suites.iter().any(|b| b == s))
        .map(|((_, s, n, v), on)| format!("  {n} {v} ({s}){}\n", only(on)))
        .collect();
    if !extra.is_empty() {
        out.push_str("from extra suites:\n");
        out.extend(extra);
    }
    let mut by_suite: BTreeMap<(usize, &str), Vec<String>> = BTreeMap::new();
    for ((r, s, n, _), on) in &seen {
        if debian.suites.iter().any(|b| b == s) {
            let list = by_suite.entry((*r, s)).or_default();
            let name = format!("{n}{}", only(on));
            // Two versions of one name (one per arch) are listed once.
            if !list.contains(&name) {
                list.push(name);
            }
        }
    }
    for ((_, s), names) in by_suite {
        out.push_str(&format!("from {s}: {}\n", names.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockedPackage, Role};
    use std::path::PathBuf;

    fn p(name: &str, version: &str, suite: &str, for_arch: Arch) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: version.into(),
            arch: for_arch.deb_arch().into(),
            for_arch,
            role: Role::Root,
            suite: suite.into(),
            filename: format!("pool/main/{name}.deb"),
            size: 1,
            sha256: "0".repeat(64),
        }
    }

    fn debian() -> Debian {
        Debian {
            suites: vec!["trixie".into(), "trixie-security".into()],
            components: vec!["main".into()],
            essential: false,
            extra_suites: vec!["forky".into()],
        }
    }

    #[test]
    fn counts_per_arch_extra_packages_with_versions_and_base_updates_by_name() {
        let mut pkgs = Vec::new();
        for a in [Arch::X86_64, Arch::Arm64] {
            pkgs.push(p("bash", "5.2", "trixie", a));
            pkgs.push(p("libc6", "2.41-12", "trixie-security", a));
            pkgs.push(p("containerd", "2.1.9-1", "forky", a));
        }
        pkgs.push(p("runc", "1.3.6-1", "forky", Arch::Arm64));
        pkgs.push(p("u-boot-tools", "2025.01", "trixie-security", Arch::Arm64));
        let lock = Lockfile::new(PathBuf::from("t.lock"), "x".into(), pkgs);
        assert_eq!(
            suite_summary(&lock, &debian()),
            "packages by suite:\n\
             \x20 x86_64: trixie 1, trixie-security 1, forky 1\n\
             \x20 arm64: trixie 1, trixie-security 2, forky 2\n\
             from extra suites:\n\
             \x20 containerd 2.1.9-1 (forky)\n\
             \x20 runc 1.3.6-1 (forky) for arm64\n\
             from trixie-security: libc6, u-boot-tools for arm64\n"
        );
    }

    #[test]
    fn nothing_to_say_when_every_package_is_from_the_first_suite() {
        let lock = Lockfile::new(
            PathBuf::from("t.lock"),
            "x".into(),
            vec![p("bash", "5.2", "trixie", Arch::X86_64)],
        );
        assert_eq!(suite_summary(&lock, &debian()), "");
    }
}
