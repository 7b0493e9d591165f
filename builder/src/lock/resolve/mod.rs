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
//!
//! Packages the profile pins to an extra suite (`[packages.from]`) come from
//! that suite's own index, and only their dependencies may fall back to it;
//! see [`mod@pins`].

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::index::{Alternatives, IndexPackage, Relation};
use super::version::compare;
use super::{LockedPackage, Role};
use crate::arch::Arch;

mod pins;
pub use pins::PinUnsatisfiable;

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
    /// A package `[packages.from]` pins is not in the suite it names.
    #[error("package `{name}` is not in suite {suite} for {arch}, which [packages.from] takes it from ({name} = {suite:?}); check the name, take it from another suite, or remove it from [packages.from] to take it from the base suites ({base}){}",
        .suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    PinNotFound {
        /// The pinned package.
        name: String,
        /// The suite the profile takes it from.
        suite: String,
        /// The kiln arch.
        arch: Arch,
        /// The base suites, comma separated.
        base: String,
        /// A similar name the suite has.
        suggestion: Option<String>,
    },
    /// A pin names a suite the index was not built with (a caller's mistake:
    /// `kiln lock` indexes every extra suite of the profile).
    #[error("suite {suite} (named in [packages.from]) was not indexed for {arch}; list it in [debian] extra_suites and run `kiln lock --update <profile>`")]
    ExtraSuiteNotIndexed {
        /// The suite.
        suite: String,
        /// The kiln arch.
        arch: Arch,
    },
    /// A dependency of a pinned package that neither the base suites nor the
    /// pinned package's suite can satisfy.
    #[error(transparent)]
    PinUnsatisfiable(Box<PinUnsatisfiable>),
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
    /// `[packages.from]` for this arch: (package, extra suite). Each must be
    /// one of `packages`; it and the dependencies no base suite satisfies
    /// come from that suite's index ([`Index::with_extra_suites`]).
    pub pins: &'a [(String, String)],
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
    /// Extra suites (`[debian] extra_suites`) by name, each indexed on its
    /// own so that nothing but a pinned closure can reach it.
    extra: BTreeMap<String, Index>,
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
            extra: BTreeMap::new(),
        }
    }

    /// Like [`Index::new`], but the stanzas of `extra_suites` go into an index
    /// of their own per suite, which only `[packages.from]` pins (and their
    /// dependencies) reach. Stanzas of the other suites make the base index.
    pub fn with_extra_suites(
        deb_arch: &str,
        suites: &[String],
        extra_suites: &[String],
        packages: impl IntoIterator<Item = IndexPackage>,
    ) -> Index {
        let mut base = Vec::new();
        let mut extra: BTreeMap<String, Vec<IndexPackage>> = extra_suites
            .iter()
            .map(|s| (s.clone(), Vec::new()))
            .collect();
        for p in packages {
            match extra.get_mut(&p.suite) {
                Some(list) => list.push(p),
                None => base.push(p),
            }
        }
        let mut index = Index::new(deb_arch, suites, base);
        index.extra = extra
            .into_iter()
            .map(|(suite, list)| {
                let one = Index::new(deb_arch, std::slice::from_ref(&suite), list);
                (suite, one)
            })
            .collect();
        index
    }

    /// Puts each version of `keep` (name → version: the old lock's pins)
    /// first among its package's versions, here and in the extra suites'
    /// indexes. A re-resolve after a profile change then keeps every pin the
    /// archive still serves and the new constraints accept, and moves only
    /// what the change needs. Returns the pins no index serves any more.
    pub fn prefer(&mut self, keep: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        for (name, version) in keep {
            let mut served = self.prefer_one(name, version);
            for extra in self.extra.values_mut() {
                served |= extra.prefer_one(name, version);
            }
            if !served {
                gone.push((name.clone(), version.clone()));
            }
        }
        gone
    }

    /// Moves `name`'s `version` to the front of its versions; false when
    /// this index does not have it.
    fn prefer_one(&mut self, name: &str, version: &str) -> bool {
        let Some(list) = self.by_name.get_mut(name) else {
            return false;
        };
        let packages = &self.packages;
        match list
            .iter()
            .position(|&i| compare(&packages[i].version, version) == Ordering::Equal)
        {
            Some(at) => {
                let i = list.remove(at);
                list.insert(0, i);
                true
            }
            None => false,
        }
    }

    /// The index of an extra suite.
    pub fn extra_suite(&self, suite: &str) -> Option<&Index> {
        self.extra.get(suite)
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

/// Where a chosen stanza is: its pool ([`BASE`], or an extra suite a pin
/// uses) and its position in that pool's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct At {
    pool: usize,
    idx: usize,
}

/// The pool of the base suites; extra suites follow it.
const BASE: usize = 0;

/// One chosen package and who pulled it in (for error chains).
struct Choice {
    at: At,
    parent: Option<At>,
}

struct Closure<'a> {
    /// The base index, then the index of each extra suite a pin names.
    pools: Vec<&'a Index>,
    arch: Arch,
    /// Real name → choice.
    chosen: BTreeMap<&'a str, Choice>,
    /// Chosen packages of the base suites whose dependencies are still to follow.
    queue: VecDeque<At>,
    /// The same for packages of extra suites. They go first, so that a
    /// dependency only an extra suite satisfies is chosen before the rest of
    /// the closure settles on the base suites' older version of it. Without
    /// pins it stays empty and the order is the one it always was.
    pinned_queue: VecDeque<At>,
}

impl<'a> Closure<'a> {
    fn pkg(&self, at: At) -> &'a IndexPackage {
        &self.pools[at.pool].packages[at.idx]
    }

    fn satisfied(&self, rel: &Relation) -> bool {
        // The arch qualifier depends only on the arch, which every pool shares.
        if !self.pools[BASE].qualifier_ok(rel) {
            return false;
        }
        if let Some(c) = self.chosen.get(rel.name.as_str()) {
            if Index::version_ok(rel, &self.pkg(c.at).version) {
                return true;
            }
        }
        self.pools.iter().enumerate().any(|(pool, index)| {
            index.providers.get(&rel.name).is_some_and(|provs| {
                provs
                    .iter()
                    .any(|&idx| self.is_chosen(At { pool, idx }) && index.provides_rel(idx, rel))
            })
        })
    }

    fn is_chosen(&self, at: At) -> bool {
        self.chosen
            .get(self.pkg(at).name.as_str())
            .is_some_and(|c| c.at == at)
    }

    fn choose(&mut self, at: At, parent: Option<At>) {
        let name = self.pkg(at).name.as_str();
        self.chosen.insert(name, Choice { at, parent });
        if at.pool == BASE {
            self.queue.push_back(at);
        } else {
            self.pinned_queue.push_back(at);
        }
    }

    /// The names from the root that pulled `from` in down to `from`.
    fn chain_names(&self, from: At) -> Vec<&'a str> {
        let mut names = vec![self.pkg(from).name.as_str()];
        let mut cur = from;
        let mut seen = BTreeSet::new();
        while let Some(p) = self
            .chosen
            .get(self.pkg(cur).name.as_str())
            .and_then(|c| c.parent)
        {
            if !seen.insert(p) {
                break;
            }
            names.push(self.pkg(p).name.as_str());
            cur = p;
        }
        names.reverse();
        names
    }

    fn chain(&self, from: At) -> String {
        self.chain_names(from).join(" -> ")
    }

    /// Picks a candidate of `pool` for a dependency group that nothing chosen satisfies.
    fn pick(&self, group: &Alternatives, pool: usize) -> Result<At, Vec<String>> {
        let index = self.pools[pool];
        let mut reasons = Vec::new();
        for rel in &group.0 {
            if !index.qualifier_ok(rel) {
                reasons.push(format!("{rel}: only {} is indexed", index.deb_arch));
                continue;
            }
            let cands = index.candidates(rel);
            if cands.is_empty() {
                let versions: Vec<String> = index
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
            for idx in cands {
                let at = At { pool, idx };
                let p = self.pkg(at);
                match self.chosen.get(p.name.as_str()) {
                    Some(c) if c.at != at => {
                        let chosen = self.pkg(c.at);
                        // Say so when a pin's suite is why the version differs.
                        let from = if c.at.pool == BASE {
                            String::new()
                        } else {
                            format!(" from {} ([packages.from])", chosen.suite)
                        };
                        reasons.push(format!(
                            "{} {} is already chosen{from}",
                            p.name, chosen.version
                        ));
                    }
                    _ => return Ok(at),
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("no package has or provides this name".into());
        }
        Err(reasons)
    }

    fn run(&mut self) -> Result<(), ResolveError> {
        while let Some(at) = self
            .pinned_queue
            .pop_front()
            .or_else(|| self.queue.pop_front())
        {
            for group in self.pools[at.pool].relations(at.idx, self.arch)? {
                if group.0.iter().any(|r| self.satisfied(r)) {
                    continue;
                }
                // The base suites first, for every package: a pinned package's
                // dependency comes from its extra suite only when they cannot.
                let picked = match self.pick(&group, BASE) {
                    Ok(c) => c,
                    Err(reasons) if at.pool == BASE => {
                        return Err(ResolveError::Unsatisfiable {
                            arch: self.arch,
                            chain: self.chain(at),
                            dependency: group.to_string(),
                            reasons,
                        })
                    }
                    Err(base_reasons) => self.pick_in_extra_suite(at, &group, base_reasons)?,
                };
                self.choose(picked, Some(at));
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
        pools: pins::pools(index, req)?,
        arch,
        chosen: BTreeMap::new(),
        queue: VecDeque::new(),
        pinned_queue: VecDeque::new(),
    };
    // Pinned packages are chosen first, from their suite, so that no other
    // root or provider can stand in for them.
    let pinned = pins::choose_pinned(&mut closure, req)?;
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
        if pinned.contains(name.as_str()) {
            continue;
        }
        let rel = Relation {
            name: name.clone(),
            arch_qual: None,
            constraint: None,
        };
        if closure.satisfied(&rel) {
            continue;
        }
        match closure.pick(&Alternatives(vec![rel]), BASE) {
            Ok(at) => closure.choose(at, None),
            Err(_) => return Err(index.not_found(name, what, arch)),
        }
    }
    closure.run()?;
    let mut out: Vec<LockedPackage> = closure
        .chosen
        .values()
        .map(|c| closure.pools[c.at.pool].lock_entry(c.at.idx, arch, Role::Root))
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
