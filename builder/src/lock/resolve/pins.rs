//! `[packages.from]`: packages taken from an extra suite.
//!
//! A pinned package is the newest version its suite has, never a base
//! suite's. Its dependencies are met from the base suites whenever a base
//! package satisfies them (version constraints included) and from its suite
//! only otherwise, recursively; nothing outside such a closure ever comes
//! from an extra suite, because only packages of an extra suite's pool may
//! fall back to it ([`Closure::pick_in_extra_suite`]).

use std::collections::BTreeSet;

use super::{Alternatives, At, Closure, Index, Request, ResolveError, BASE};
use crate::arch::Arch;

/// A dependency of a pinned package that neither the base suites nor the
/// pinned package's suite can satisfy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot resolve for {arch}: {chain} -> {dependency} : neither the base suites ({base}) nor {suite} can satisfy it ({}); [packages.from] takes {pinned} from {suite}: take it from another suite, pin the dependency's package to {suite} as well, or remove the pin", .reasons.join("; "))]
pub struct PinUnsatisfiable {
    /// The kiln arch.
    pub arch: Arch,
    /// Package names from the pinned package to the one with the dependency.
    pub chain: String,
    /// The dependency as written.
    pub dependency: String,
    /// The pinned package the chain starts from.
    pub pinned: String,
    /// The suite it is taken from.
    pub suite: String,
    /// The base suites, comma separated.
    pub base: String,
    /// What each place had instead.
    pub reasons: Vec<String>,
}

/// The pools a closure picks from: the base index, then the index of each
/// suite the pins name, in suite-name order.
pub(super) fn pools<'a>(
    index: &'a Index,
    req: &Request<'_>,
) -> Result<Vec<&'a Index>, ResolveError> {
    let suites: BTreeSet<&str> = req.pins.iter().map(|(_, s)| s.as_str()).collect();
    let mut pools = vec![index];
    for suite in suites {
        let extra = index
            .extra_suite(suite)
            .ok_or_else(|| ResolveError::ExtraSuiteNotIndexed {
                suite: suite.to_string(),
                arch: req.arch,
            })?;
        pools.push(extra);
    }
    Ok(pools)
}

/// Chooses every pinned package from its suite's pool, as a root, and
/// returns their names.
pub(super) fn choose_pinned<'r>(
    closure: &mut Closure<'_>,
    req: &'r Request<'_>,
) -> Result<BTreeSet<&'r str>, ResolveError> {
    let mut names = BTreeSet::new();
    for (name, suite) in req.pins {
        let pool = closure
            .pools
            .iter()
            .skip(1)
            .position(|p| p.suites.first() == Some(suite))
            .map(|i| i + 1)
            .ok_or_else(|| ResolveError::ExtraSuiteNotIndexed {
                suite: suite.clone(),
                arch: req.arch,
            })?;
        let index = closure.pools[pool];
        // Versions are best first: the newest the suite has.
        let Some(&idx) = index.by_name.get(name).and_then(|v| v.first()) else {
            return Err(ResolveError::PinNotFound {
                name: name.clone(),
                suite: suite.clone(),
                arch: req.arch,
                base: closure.pools[BASE].suites.join(", "),
                suggestion: index.suggest(name),
            });
        };
        closure.choose(At { pool, idx }, None);
        names.insert(name.as_str());
    }
    Ok(names)
}

impl Closure<'_> {
    /// Picks from the extra suite of `at` (a package of that suite) for a
    /// dependency no base package satisfies; `base_reasons` says why not.
    pub(super) fn pick_in_extra_suite(
        &self,
        at: At,
        group: &Alternatives,
        base_reasons: Vec<String>,
    ) -> Result<At, ResolveError> {
        let base = self.pools[BASE].suites.join(", ");
        let suite = self.pools[at.pool].suites.join(", ");
        self.pick(group, at.pool).map_err(|extra_reasons| {
            let names = self.chain_names(at);
            let mut reasons: Vec<String> = base_reasons
                .into_iter()
                .map(|r| format!("base suites: {r}"))
                .collect();
            reasons.extend(extra_reasons.into_iter().map(|r| format!("{suite}: {r}")));
            ResolveError::PinUnsatisfiable(Box::new(PinUnsatisfiable {
                arch: self.arch,
                chain: names.join(" -> "),
                dependency: group.to_string(),
                pinned: names.first().copied().unwrap_or_default().to_string(),
                suite: suite.clone(),
                base,
                reasons,
            }))
        })
    }
}
