//! Every module of the tree's one kernel, and what its name or alias means
//! to `modprobe`.

use std::collections::{BTreeMap, BTreeSet};

use super::elf::{elf_machine, read_elf, ElfModule, ModInfo};
use super::names::{glob_match, modname_from_path, normalize_alias, normalize_name};
use super::{is_module_path, module_bytes, KmodError};
use crate::arch::Arch;
use crate::tree::{FileTree, Kind, TreeError};

/// One module file of the tree.
#[derive(Debug, Clone)]
pub(super) struct ModFile {
    pub(super) name: String,
    /// Tree path.
    pub(super) path: String,
    /// Path relative to the modules directory (`kernel/fs/ext4/ext4.ko`).
    pub(super) relpath: String,
    pub(super) size: u64,
    pub(super) info: ModInfo,
    pub(super) elf: ElfModule,
}

/// Every module of one kernel in a tree.
#[derive(Debug, Clone)]
pub(super) struct ModuleDb {
    pub(super) kver: String,
    /// Tree path of `lib/modules/<kver>` (resolved).
    pub(super) dir: String,
    pub(super) modules: BTreeMap<String, ModFile>,
    /// Names of built-in modules (modules.builtin).
    pub(super) builtin: BTreeSet<String>,
    /// `(normalised alias, module)` of built-in modules (modules.builtin.modinfo).
    pub(super) builtin_aliases: Vec<(String, String)>,
}

/// Finds the one `lib/modules/<kver>` directory of the tree.
fn modules_dir(tree: &FileTree) -> Result<(String, String), KmodError> {
    for base in ["usr/lib/modules", "lib/modules"] {
        let Ok(real) = tree.resolve(base) else {
            continue;
        };
        if tree.get(&real).map(|n| &n.kind) != Some(&Kind::Dir) {
            continue;
        }
        let kvers: Vec<String> = tree
            .children(&real)
            .into_iter()
            .filter(|k| tree.get(&format!("{real}/{k}")).map(|n| &n.kind) == Some(&Kind::Dir))
            .collect();
        return match kvers.len() {
            0 => Err(KmodError::NoKernel),
            1 => {
                let kver = kvers.into_iter().next().unwrap_or_default();
                Ok((format!("{real}/{kver}"), kver))
            }
            _ => Err(KmodError::SeveralKernels { dir: real, kvers }),
        };
    }
    Err(KmodError::NoKernel)
}

impl ModuleDb {
    /// Reads every module of the tree's kernel; `symbols` also reads their
    /// exported and imported symbols (only indexing needs them), and `arch`
    /// checks the modules' ELF machine.
    pub(super) fn scan(
        tree: &FileTree,
        symbols: bool,
        arch: Option<Arch>,
    ) -> Result<ModuleDb, KmodError> {
        let (dir, kver) = modules_dir(tree)?;
        let prefix = format!("{dir}/");
        let mut modules = BTreeMap::new();
        for (path, node) in tree.descendants(&dir) {
            if !is_module_path(path) || !matches!(node.kind, Kind::File(_) | Kind::Hardlink(_)) {
                continue;
            }
            let relpath = path.strip_prefix(&prefix).unwrap_or(path).to_string();
            // depmod skips the build and source links' trees.
            if relpath.starts_with("build/") || relpath.starts_with("source/") {
                continue;
            }
            let data = tree.read(path)?;
            let elf = read_elf(path, &module_bytes(path, &data)?, symbols)?;
            if let Some(a) = arch {
                if elf.machine != elf_machine(a) {
                    return Err(KmodError::WrongArch {
                        path: path.clone(),
                        machine: elf.machine,
                        arch: a,
                    });
                }
            }
            let info = ModInfo::parse(&elf.modinfo);
            let name = modname_from_path(path);
            let m = ModFile {
                name: name.clone(),
                path: path.clone(),
                relpath,
                size: data.len() as u64,
                info,
                elf,
            };
            if let Some(old) = modules.insert(name.clone(), m) {
                tracing::warn!(module = %name, first = %old.path, "two files for one module name: the later path wins");
            }
        }
        let builtin = match tree.read(&format!("{dir}/modules.builtin")) {
            Ok(d) => String::from_utf8_lossy(&d)
                .lines()
                .filter(|l| !l.is_empty())
                .map(modname_from_path)
                .collect(),
            Err(TreeError::NotFound(_)) => BTreeSet::new(),
            Err(e) => return Err(e.into()),
        };
        let builtin_aliases = match tree.read(&format!("{dir}/modules.builtin.modinfo")) {
            Ok(d) => builtin_modinfo_aliases(&d),
            Err(TreeError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(ModuleDb {
            kver,
            dir,
            modules,
            builtin,
            builtin_aliases,
        })
    }

    /// What a name given to modprobe (a module name or an alias) means here:
    /// `Some(modules)` (empty if only built-in code provides it), `None` if nothing.
    pub(super) fn lookup(&self, name: &str) -> Option<Vec<String>> {
        let n = normalize_name(name);
        if self.modules.contains_key(&n) {
            return Some(vec![n]);
        }
        if self.builtin.contains(&n) {
            return Some(Vec::new());
        }
        let alias = normalize_alias(name)?;
        let found: Vec<String> = self
            .modules
            .values()
            .filter(|m| {
                m.info
                    .aliases
                    .iter()
                    .filter_map(|a| normalize_alias(a))
                    .any(|a| glob_match(a.as_bytes(), alias.as_bytes()))
            })
            .map(|m| m.name.clone())
            .collect();
        if !found.is_empty() {
            return Some(found);
        }
        if self
            .builtin_aliases
            .iter()
            .any(|(a, _)| glob_match(a.as_bytes(), alias.as_bytes()))
        {
            return Some(Vec::new());
        }
        None
    }
}

/// `(normalised alias, module)` pairs of modules.builtin.modinfo
/// (`module.key=value` strings, NUL-separated).
fn builtin_modinfo_aliases(data: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in data.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let s = String::from_utf8_lossy(s);
        let Some((module, rest)) = s.split_once('.') else {
            continue;
        };
        let Some(("alias", value)) = rest.split_once('=') else {
            continue;
        };
        if module.is_empty() || value.is_empty() {
            continue;
        }
        if let Some(a) = normalize_alias(value) {
            out.push((a, module.to_string()));
        }
    }
    out
}
