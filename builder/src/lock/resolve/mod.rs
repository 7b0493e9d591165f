//! The resolver: a pure function from parsed indexes and a request to the
//! exact set of packages to lock for one arch.
//!
//! It follows what `apt-get install --no-install-recommends` would pick on an
//! empty system: Pre-Depends and Depends (never Recommends), the highest
//! version that satisfies, alternatives resolved by preferring one already
//! chosen and otherwise the first satisfiable one, virtual packages through
//! Provides. There is no backtracking: once a package name is chosen, later
//! constraints must accept that version (Debian's archive is consistent, so
//! this holds in practice, and when it does not the error names the chain).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::index::{Alternatives, IndexPackage, Relation};
use super::version::compare;
use super::{LockedPackage, Role};
use crate::arch::Arch;

/// Why a closure cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A package the profile asks for is in no index.
    #[error("package `{name}` ({what}) does not exist for {arch} in suites {suites}{}",
        .suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    NotFound {
        /// The requested name.
        name: String,
        /// Where the request came from (`packages.include`, `kernel.package`, ...).
        what: String,
        /// The kiln arch.
        arch: Arch,
        /// The suites searched, comma separated.
        suites: String,
        /// A similar existing name.
        suggestion: Option<String>,
    },
    /// An index stanza has a dependency field kiln cannot parse.
    #[error("{arch}: package {package} (suite {suite}): {message}")]
    BadIndex {
        /// The kiln arch.
        arch: Arch,
        /// The package whose stanza is malformed.
        package: String,
        /// Its suite.
        suite: String,
        /// What is wrong.
        message: String,
    },
    /// A dependency has no usable candidate.
    #[error("cannot resolve for {arch}: {chain} -> {dependency} : no candidate{}", if .reasons.is_empty() { String::new() } else { format!(" ({})", .reasons.join("; ")) })]
    Unsatisfiable {
        /// The kiln arch.
        arch: Arch,
        /// Package names from the requested root to the package with the dependency.
        chain: String,
        /// The dependency as written.
        dependency: String,
        /// What was found instead.
        reasons: Vec<String>,
    },
}

/// What to resolve for one arch.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The target arch.
    pub arch: Arch,
    /// Root packages (role `root`).
    pub packages: &'a [String],
    /// Add every `Essential: yes` package to the roots.
    pub essential: bool,
    /// The kernel package (role `kernel`): followed through metapackages to
    /// the image, without its other dependencies.
    pub kernel: Option<&'a str>,
    /// The boot stub package (role `boot`), without its dependencies.
    pub boot: Option<&'a str>,
}

/// Parsed indexes of one arch, with lookups by name and by provided name.
#[derive(Debug, Clone)]
pub struct Index {
    deb_arch: String,
    suites: Vec<String>,
    packages: Vec<IndexPackage>,
    /// Real name → indices, best candidate first.
    by_name: BTreeMap<String, Vec<usize>>,
    /// Provided name → indices of providers.
    providers: BTreeMap<String, Vec<usize>>,
}

fn priority_rank(p: &str) -> u8 {
    match p {
        "required" => 0,
        "important" => 1,
        "standard" => 2,
        "optional" => 3,
        "extra" => 4,
        _ => 5,
    }
}

impl Index {
    /// Builds the index for `deb_arch` from stanzas of any suites. Stanzas of
    /// other arches are dropped; `all` is kept. `suites` gives the preference
    /// order when two suites carry the same version.
    pub fn new(
        deb_arch: &str,
        suites: &[String],
        packages: impl IntoIterator<Item = IndexPackage>,
    ) -> Index {
        let rank = |s: &str| suites.iter().position(|x| x == s).unwrap_or(usize::MAX);
        let all: Vec<IndexPackage> = packages
            .into_iter()
            .filter(|p| p.arch == deb_arch || p.arch == "all")
            .collect();
        // Best first: name, then highest version, then preferred suite. Sort
        // indices rather than the (large) stanzas themselves.
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&all[a], &all[b]);
            a.name
                .cmp(&b.name)
                .then_with(|| compare(&b.version, &a.version))
                .then_with(|| rank(&a.suite).cmp(&rank(&b.suite)))
                .then_with(|| a.arch.cmp(&b.arch))
        });
        let mut slots: Vec<Option<IndexPackage>> = all.into_iter().map(Some).collect();
        let mut pkgs: Vec<IndexPackage> = Vec::with_capacity(order.len());
        for i in order {
            let Some(p) = slots[i].take() else { continue };
            // The same (name, version, arch) in two suites: keep the preferred suite's.
            let dup = pkgs.last().is_some_and(|q| {
                q.name == p.name
                    && q.arch == p.arch
                    && compare(&q.version, &p.version) == Ordering::Equal
            });
            if !dup {
                pkgs.push(p);
            }
        }
        let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut providers: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, p) in pkgs.iter().enumerate() {
            by_name.entry(p.name.clone()).or_default().push(i);
            for pr in &p.provides {
                providers.entry(pr.name.clone()).or_default().push(i);
            }
        }
        Index {
            deb_arch: deb_arch.to_string(),
            suites: suites.to_vec(),
            packages: pkgs,
            by_name,
            providers,
        }
    }

    /// Number of stanzas kept.
    pub fn len(&self) -> usize {
        self.packages.len()
    }

    /// Whether no stanza was kept.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    /// All versions of a real package, best first.
    pub fn versions(&self, name: &str) -> Vec<&IndexPackage> {
        self.by_name
            .get(name)
            .map(|v| v.iter().map(|&i| &self.packages[i]).collect())
            .unwrap_or_default()
    }

    fn qualifier_ok(&self, rel: &Relation) -> bool {
        match rel.arch_qual.as_deref() {
            None | Some("any") | Some("native") => true,
            Some(a) => a == self.deb_arch,
        }
    }

    fn version_ok(rel: &Relation, version: &str) -> bool {
        match &rel.constraint {
            None => true,
            Some((op, want)) => op.holds(version, want),
        }
    }

    /// Whether package `i` provides `rel` (a versioned relation needs a versioned provide).
    fn provides_rel(&self, i: usize, rel: &Relation) -> bool {
        self.packages[i].provides.iter().any(|p| {
            p.name == rel.name
                && match (&rel.constraint, &p.version) {
                    (None, _) => true,
                    (Some((op, want)), Some(have)) => op.holds(have, want),
                    (Some(_), None) => false,
                }
        })
    }

    /// Candidates for `rel`, most preferred first: real packages (highest
    /// version first), then providers (by priority, then name).
    fn candidates(&self, rel: &Relation) -> Vec<usize> {
        if !self.qualifier_ok(rel) {
            return Vec::new();
        }
        let mut out: Vec<usize> = self
            .by_name
            .get(&rel.name)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|&i| Index::version_ok(rel, &self.packages[i].version))
                    .collect()
            })
            .unwrap_or_default();
        let mut provs: Vec<usize> = self
            .providers
            .get(&rel.name)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|&i| self.provides_rel(i, rel))
                    .collect()
            })
            .unwrap_or_default();
        provs.sort_by(|&a, &b| {
            let (pa, pb) = (&self.packages[a], &self.packages[b]);
            priority_rank(&pa.priority)
                .cmp(&priority_rank(&pb.priority))
                .then_with(|| pa.name.cmp(&pb.name))
                .then_with(|| a.cmp(&b))
        });
        out.extend(provs);
        out
    }

    /// A similar existing name, for "did you mean".
    fn suggest(&self, name: &str) -> Option<String> {
        let limit = (name.len() / 3).max(2);
        let mut best: Option<(usize, &str)> = None;
        for cand in self.by_name.keys().chain(self.providers.keys()) {
            if cand.len().abs_diff(name.len()) > limit {
                continue;
            }
            let d = levenshtein(name, cand);
            if d <= limit && best.is_none_or(|(bd, bn)| (d, cand.as_str()) < (bd, bn)) {
                best = Some((d, cand));
            }
        }
        if let Some((_, n)) = best {
            return Some(n.to_string());
        }
        // A longer name that starts with the request (`wireguard` → `wireguard-tools`).
        let prefix = format!("{name}-");
        self.by_name
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .min_by_key(|k| (k.len(), k.as_str()))
            .cloned()
    }

    fn not_found(&self, name: &str, what: &str, arch: Arch) -> ResolveError {
        ResolveError::NotFound {
            name: name.to_string(),
            what: what.to_string(),
            arch,
            suites: self.suites.join(", "),
            suggestion: self.suggest(name),
        }
    }

    fn relations(&self, i: usize, arch: Arch) -> Result<Vec<Alternatives>, ResolveError> {
        let p = &self.packages[i];
        p.relations().map_err(|message| ResolveError::BadIndex {
            arch,
            package: p.name.clone(),
            suite: p.suite.clone(),
            message,
        })
    }

    fn lock_entry(&self, i: usize, arch: Arch, role: Role) -> LockedPackage {
        let p = &self.packages[i];
        LockedPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.arch.clone(),
            for_arch: arch,
            role,
            suite: p.suite.clone(),
            filename: p.filename.clone(),
            size: p.size,
            sha256: p.sha256.clone(),
        }
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// One chosen package and who pulled it in (for error chains).
struct Choice {
    idx: usize,
    parent: Option<usize>,
}

struct Closure<'a> {
    index: &'a Index,
    arch: Arch,
    /// Real name → choice.
    chosen: BTreeMap<&'a str, Choice>,
    queue: VecDeque<usize>,
}

impl<'a> Closure<'a> {
    fn satisfied(&self, rel: &Relation) -> bool {
        if !self.index.qualifier_ok(rel) {
            return false;
        }
        if let Some(c) = self.chosen.get(rel.name.as_str()) {
            if Index::version_ok(rel, &self.index.packages[c.idx].version) {
                return true;
            }
        }
        self.index.providers.get(&rel.name).is_some_and(|provs| {
            provs
                .iter()
                .any(|&i| self.is_chosen(i) && self.index.provides_rel(i, rel))
        })
    }

    fn is_chosen(&self, i: usize) -> bool {
        self.chosen
            .get(self.index.packages[i].name.as_str())
            .is_some_and(|c| c.idx == i)
    }

    fn choose(&mut self, i: usize, parent: Option<usize>) {
        let name = self.index.packages[i].name.as_str();
        self.chosen.insert(name, Choice { idx: i, parent });
        self.queue.push_back(i);
    }

    fn chain(&self, from: usize) -> String {
        let mut names = vec![self.index.packages[from].name.as_str()];
        let mut cur = from;
        let mut seen = BTreeSet::new();
        while let Some(p) = self
            .chosen
            .get(self.index.packages[cur].name.as_str())
            .and_then(|c| c.parent)
        {
            if !seen.insert(p) {
                break;
            }
            names.push(self.index.packages[p].name.as_str());
            cur = p;
        }
        names.reverse();
        names.join(" -> ")
    }

    /// Picks a candidate for a dependency group that nothing chosen satisfies.
    fn pick(&self, group: &Alternatives) -> Result<usize, Vec<String>> {
        let mut reasons = Vec::new();
        for rel in &group.0 {
            if !self.index.qualifier_ok(rel) {
                reasons.push(format!("{rel}: only {} is indexed", self.index.deb_arch));
                continue;
            }
            let cands = self.index.candidates(rel);
            if cands.is_empty() {
                let versions: Vec<String> = self
                    .index
                    .versions(&rel.name)
                    .iter()
                    .map(|p| p.version.clone())
                    .collect();
                if !versions.is_empty() {
                    reasons.push(format!(
                        "the archive has {} {}",
                        rel.name,
                        versions.join(", ")
                    ));
                }
                continue;
            }
            for i in cands {
                let p = &self.index.packages[i];
                match self.chosen.get(p.name.as_str()) {
                    Some(c) if c.idx != i => {
                        reasons.push(format!(
                            "{} {} is already chosen",
                            p.name, self.index.packages[c.idx].version
                        ));
                    }
                    _ => return Ok(i),
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("no package has or provides this name".into());
        }
        Err(reasons)
    }

    fn run(&mut self) -> Result<(), ResolveError> {
        while let Some(i) = self.queue.pop_front() {
            for group in self.index.relations(i, self.arch)? {
                if group.0.iter().any(|r| self.satisfied(r)) {
                    continue;
                }
                match self.pick(&group) {
                    Ok(c) => self.choose(c, Some(i)),
                    Err(reasons) => {
                        return Err(ResolveError::Unsatisfiable {
                            arch: self.arch,
                            chain: self.chain(i),
                            dependency: group.to_string(),
                            reasons,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

/// Resolves the lock entries of one arch: the root closure, the kernel and
/// the boot stub. The result is sorted by (role, name).
pub fn resolve(index: &Index, req: &Request<'_>) -> Result<Vec<LockedPackage>, ResolveError> {
    let arch = req.arch;
    let mut closure = Closure {
        index,
        arch,
        chosen: BTreeMap::new(),
        queue: VecDeque::new(),
    };
    // Every root is chosen before any dependency, so alternatives prefer a
    // package the profile asked for.
    let mut roots: Vec<(String, &str)> = req
        .packages
        .iter()
        .map(|n| (n.clone(), "packages.include"))
        .collect();
    if req.essential {
        let mut ess: Vec<&str> = index
            .packages
            .iter()
            .filter(|p| p.essential)
            .map(|p| p.name.as_str())
            .collect();
        ess.dedup();
        roots.extend(ess.into_iter().map(|n| (n.to_string(), "debian.essential")));
    }
    for (name, what) in &roots {
        let rel = Relation {
            name: name.clone(),
            arch_qual: None,
            constraint: None,
        };
        if closure.satisfied(&rel) {
            continue;
        }
        match closure.pick(&Alternatives(vec![rel])) {
            Ok(i) => closure.choose(i, None),
            Err(_) => return Err(index.not_found(name, what, arch)),
        }
    }
    closure.run()?;
    let mut out: Vec<LockedPackage> = closure
        .chosen
        .values()
        .map(|c| index.lock_entry(c.idx, arch, Role::Root))
        .collect();

    if let Some(kernel) = req.kernel {
        let first = *index
            .by_name
            .get(kernel)
            .and_then(|v| v.first())
            .ok_or_else(|| index.not_found(kernel, "kernel.package", arch))?;
        let mut seen = BTreeSet::from([first]);
        out.push(index.lock_entry(first, arch, Role::Kernel));
        // A metapackage depends on the versioned image package; follow such
        // links only, since kiln builds its own initramfs and needs none of
        // the kernel's tooling dependencies.
        let mut cur = first;
        'follow: loop {
            let p = &index.packages[cur];
            for group in index.relations(cur, arch)? {
                for rel in group
                    .0
                    .iter()
                    .filter(|r| r.name.starts_with("linux-image-"))
                {
                    let Some(&next) = index.by_name.get(&rel.name).and_then(|v| {
                        v.iter()
                            .find(|&&i| Index::version_ok(rel, &index.packages[i].version))
                    }) else {
                        return Err(ResolveError::Unsatisfiable {
                            arch,
                            chain: p.name.clone(),
                            dependency: group.to_string(),
                            reasons: vec!["the kernel image package is missing".into()],
                        });
                    };
                    if seen.insert(next) {
                        out.push(index.lock_entry(next, arch, Role::Kernel));
                        cur = next;
                        continue 'follow;
                    }
                }
            }
            break;
        }
    }

    if let Some(stub) = req.boot {
        let i = *index
            .by_name
            .get(stub)
            .and_then(|v| v.first())
            .ok_or_else(|| index.not_found(stub, "boot.stub_package", arch))?;
        out.push(index.lock_entry(i, arch, Role::Boot));
    }
    out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    Ok(out)
}

#[cfg(test)]
mod tests;
