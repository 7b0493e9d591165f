//! What a new lock changed against the old one, per arch: the packages added,
//! removed and moved to another version, and which of the moves happened
//! because the archive no longer serves the old version (rather than because
//! the profile change needed them).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{LockedPackage, Lockfile};
use crate::arch::Arch;

/// A pinned version the archive no longer serves: `kiln lock` had to move it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gone {
    /// The arch whose indexes lack it.
    pub arch: Arch,
    /// Package name.
    pub name: String,
    /// The old lock's version.
    pub version: String,
}

/// One package whose version changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Package name.
    pub name: String,
    /// The old lock's version.
    pub old: String,
    /// The new lock's version.
    pub new: String,
    /// Whether the archive no longer serves `old` (else the profile change
    /// needed the move, or `--update` asked for the newest).
    pub gone: bool,
}

/// The changes of one arch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchChanges {
    /// (name, version) in the new lock only.
    pub added: Vec<(String, String)>,
    /// (name, version) in the old lock only.
    pub removed: Vec<(String, String)>,
    /// In both, with another version.
    pub moved: Vec<Moved>,
}

/// Every arch's changes; arches without any are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockChanges {
    /// By arch.
    pub arches: BTreeMap<Arch, ArchChanges>,
}

/// (arch, name) → version of every entry; the same name under two roles
/// (a kernel metapackage also in the root) keeps one entry.
fn versions(lock: &Lockfile) -> BTreeMap<(Arch, &str), &str> {
    lock.packages
        .iter()
        .map(|p: &LockedPackage| ((p.for_arch, p.name.as_str()), p.version.as_str()))
        .collect()
}

impl LockChanges {
    /// The differences from `old` to `new`; `gone` lists the old pins the
    /// archive no longer served when `new` was resolved.
    pub fn between(old: &Lockfile, new: &Lockfile, gone: &[Gone]) -> LockChanges {
        let (before, after) = (versions(old), versions(new));
        let gone: BTreeSet<(Arch, &str, &str)> = gone
            .iter()
            .map(|g| (g.arch, g.name.as_str(), g.version.as_str()))
            .collect();
        let mut out = LockChanges::default();
        for (&(arch, name), &version) in &after {
            match before.get(&(arch, name)) {
                None => out
                    .arches
                    .entry(arch)
                    .or_default()
                    .added
                    .push((name.to_string(), version.to_string())),
                Some(&old) if old != version => {
                    out.arches.entry(arch).or_default().moved.push(Moved {
                        name: name.to_string(),
                        old: old.to_string(),
                        new: version.to_string(),
                        gone: gone.contains(&(arch, name, old)),
                    })
                }
                Some(_) => {}
            }
        }
        for (&(arch, name), &version) in &before {
            if !after.contains_key(&(arch, name)) {
                out.arches
                    .entry(arch)
                    .or_default()
                    .removed
                    .push((name.to_string(), version.to_string()));
            }
        }
        out
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.arches.is_empty()
    }
}

/// One line per package: `+ name version`, `- name version`,
/// `~ name old -> new`, the last with `(old no longer served)` when the
/// archive forced the move. Each line ends in a newline.
impl fmt::Display for LockChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (arch, c) in &self.arches {
            writeln!(
                f,
                "changes for {arch}: {} added, {} removed, {} changed",
                c.added.len(),
                c.removed.len(),
                c.moved.len()
            )?;
            for (name, version) in &c.added {
                writeln!(f, "  + {name} {version}")?;
            }
            for (name, version) in &c.removed {
                writeln!(f, "  - {name} {version}")?;
            }
            for m in &c.moved {
                let why = if m.gone {
                    format!(" ({} no longer served)", m.old)
                } else {
                    String::new()
                };
                writeln!(f, "  ~ {} {} -> {}{why}", m.name, m.old, m.new)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::Role;
    use std::path::PathBuf;

    fn pkg(name: &str, version: &str) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            for_arch: Arch::X86_64,
            role: Role::Root,
            suite: "trixie".into(),
            filename: format!("pool/{name}.deb"),
            size: 1,
            sha256: "0".repeat(64),
        }
    }

    fn lock(pkgs: Vec<LockedPackage>) -> Lockfile {
        Lockfile::new(PathBuf::from("t.lock"), String::new(), pkgs)
    }

    #[test]
    fn lists_added_removed_and_moved_with_the_reason() {
        let old = lock(vec![
            pkg("bash", "5.2-1"),
            pkg("gone", "1"),
            pkg("kept", "2"),
        ]);
        let new = lock(vec![
            pkg("bash", "5.2-2"),
            pkg("htop", "3.3"),
            pkg("kept", "2"),
        ]);
        let gone = [Gone {
            arch: Arch::X86_64,
            name: "bash".into(),
            version: "5.2-1".into(),
        }];
        let c = LockChanges::between(&old, &new, &gone);
        assert_eq!(
            c.to_string(),
            "changes for x86_64: 1 added, 1 removed, 1 changed\n  + htop 3.3\n  - gone 1\n  \
             ~ bash 5.2-1 -> 5.2-2 (5.2-1 no longer served)\n"
        );
        assert!(LockChanges::between(&old, &old, &[]).is_empty());
    }
}
