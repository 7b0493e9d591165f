//! The kernel module sets kiln knows: the names a profile's `[kernel]
//! modules` may use, each set's modules per arch, and the crypto-API needs
//! (`traps`) that `depends=` does not show. The profile checks names against
//! them; `crate::tree::kmod` selects modules from them.
//!
//! The data file stays next to the module selection, where the docs point
//! readers who look up what a set holds.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

const SETS_TOML: &str = include_str!("../tree/module_sets.toml");

/// `module_sets.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetsFile {
    /// The sets, by name.
    pub sets: BTreeMap<String, SetDef>,
    /// Modules a module needs beyond its `depends=`, by module name.
    pub traps: BTreeMap<String, Vec<String>>,
}

/// One `[sets.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetDef {
    /// What the set is for.
    pub description: String,
    /// Needed to reach the root (then it goes into the initramfs).
    pub boot: bool,
    /// Modules on every arch.
    pub modules: Vec<String>,
    /// Modules on x86_64 only.
    #[serde(default)]
    pub x86_64: Vec<String>,
    /// Modules on arm64 only.
    #[serde(default)]
    pub arm64: Vec<String>,
}

/// kiln's built-in `module_sets.toml` does not parse (a kiln bug, which a
/// unit test rules out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SetDataError(pub String);

/// The built-in data, parsed once.
pub fn sets_data() -> Result<&'static SetsFile, SetDataError> {
    static DATA: OnceLock<Result<SetsFile, String>> = OnceLock::new();
    DATA.get_or_init(|| toml::from_str(SETS_TOML).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| SetDataError(e.clone()))
}

/// Names of the module sets kiln knows (empty only if kiln's own data is broken,
/// which a unit test rules out).
pub fn builtin_set_names() -> Vec<&'static str> {
    match sets_data() {
        Ok(d) => d.sets.keys().map(String::as_str).collect(),
        Err(_) => Vec::new(),
    }
}
