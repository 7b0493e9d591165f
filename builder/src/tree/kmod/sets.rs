//! The module sets kiln knows, per arch, as the selection uses them. The
//! data (`module_sets.toml`) is read by [`crate::profile::module_sets`]:
//! the profile checks the set names it is given against it.

use std::collections::BTreeMap;

use super::KmodError;
use crate::arch::Arch;
use crate::profile::module_sets::{self, SetsFile};

pub use crate::profile::module_sets::builtin_set_names;

/// The parsed built-in data.
pub(super) fn sets_data() -> Result<&'static SetsFile, KmodError> {
    module_sets::sets_data().map_err(|e| KmodError::SetData(e.0))
}

/// A module set kiln knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSet {
    /// Its name in profiles.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Whether it is needed to reach the root (then it goes into the initramfs).
    pub boot: bool,
    /// Module names on each arch.
    pub modules: BTreeMap<Arch, Vec<String>>,
}

/// The module sets kiln knows, with their per-arch module lists.
pub fn builtin_sets() -> Result<Vec<ModuleSet>, KmodError> {
    let d = sets_data()?;
    Ok(d.sets
        .iter()
        .map(|(name, s)| {
            let per =
                |extra: &Vec<String>| s.modules.iter().chain(extra).cloned().collect::<Vec<_>>();
            ModuleSet {
                name: name.clone(),
                description: s.description.clone(),
                boot: s.boot,
                modules: BTreeMap::from([
                    (Arch::X86_64, per(&s.x86_64)),
                    (Arch::Arm64, per(&s.arm64)),
                ]),
            }
        })
        .collect())
}
