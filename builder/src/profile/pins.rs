//! `[debian] extra_suites` and `[packages.from]`: named packages taken from a
//! suite other than the base ones (containerd 2.x from forky on a trixie
//! image), checked here so that `kiln lock` only ever sees a consistent set.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Profile, ProfileError};
use crate::arch::Arch;

/// The checked extra suites (in profile order) and pins (package → suite).
pub(super) type Checked = (Vec<String>, BTreeMap<String, String>);

/// Checks `[debian] extra_suites` against `suites` and `[packages.from]`
/// against both and against the requested packages (`include` and the
/// per-arch lists). `check_pkg` is the profile's package-name rule.
pub(super) fn validate(
    path: &Path,
    suites: &[String],
    extra_suites: Vec<String>,
    from: BTreeMap<String, String>,
    include: &[String],
    arch_include: &BTreeMap<Arch, Vec<String>>,
    check_pkg: &dyn Fn(&str, &str) -> Result<(), ProfileError>,
) -> Result<Checked, ProfileError> {
    let invalid = |field: String, message: String| ProfileError::Invalid {
        path: path.to_path_buf(),
        field,
        message,
    };
    for (i, s) in extra_suites.iter().enumerate() {
        let field = format!("debian.extra_suites[{i}]");
        if s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(invalid(
                field,
                format!("{s:?} is not a suite name; give a release name such as \"forky\""),
            ));
        }
        if suites.contains(s) {
            return Err(invalid(
                field,
                format!(
                    "{s:?} is also in [debian] suites; a suite is either a base suite (every \
                     package may come from it) or an extra one (only [packages.from] packages \
                     come from it): remove it from one of the lists"
                ),
            ));
        }
        if extra_suites[..i].contains(s) {
            return Err(invalid(
                field,
                format!("{s:?} is listed twice; list each suite once"),
            ));
        }
    }
    for (name, suite) in &from {
        let field = format!("packages.from.{name}");
        check_pkg(&field, name)?;
        if suites.contains(suite) {
            return Err(invalid(
                field,
                format!(
                    "{suite:?} is a base suite ([debian] suites), from which every package \
                     already comes; to take only {name} from a suite, list that suite in \
                     [debian] extra_suites and name it here"
                ),
            ));
        }
        if !extra_suites.contains(suite) {
            return Err(invalid(
                field,
                format!(
                    "suite {suite:?} is not in [debian] extra_suites; add it there \
                     (extra_suites = [{suite:?}]) or fix the suite name"
                ),
            ));
        }
        let requested =
            include.contains(name) || arch_include.values().any(|list| list.contains(name));
        if !requested {
            return Err(invalid(
                field,
                format!(
                    "{name} is not requested: [packages.from] only says where a package comes \
                     from; add {name:?} to [packages] include (or to packages.arch.<arch>.include)"
                ),
            ));
        }
    }
    for (i, s) in extra_suites.iter().enumerate() {
        if !from.values().any(|v| v == s) {
            return Err(invalid(
                format!("debian.extra_suites[{i}]"),
                format!(
                    "no [packages.from] entry names {s:?}, so nothing would come from it; \
                     take a package from it (e.g. `containerd = {s:?}` under [packages.from]) \
                     or remove it"
                ),
            ));
        }
    }
    Ok((extra_suites, from))
}

/// The lines [`Profile::resolution_inputs`] adds for extra suites and pins:
/// none without them, so the lock of a profile that has none keeps its digest.
pub(super) fn resolution_inputs(profile: &Profile) -> String {
    let (extra, from) = (&profile.debian.extra_suites, &profile.packages.from);
    if extra.is_empty() && from.is_empty() {
        return String::new();
    }
    format!("extra_suites={extra:?}\nfrom={from:?}\n")
}

impl Profile {
    /// The `[packages.from]` entries that apply to `arch`, as (package, suite)
    /// sorted by package: those whose package is requested for that arch.
    pub fn pins_for(&self, arch: Arch) -> Vec<(String, String)> {
        let requested = self.packages_for(arch);
        self.packages
            .from
            .iter()
            .filter(|(name, _)| requested.contains(name))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }
}
