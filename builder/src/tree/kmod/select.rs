//! Selection: the closure of the profile's sets over `depends=`,
//! `softdep= pre:` and the traps, in a deterministic load order.

use std::collections::{BTreeMap, BTreeSet};

use super::db::ModuleDb;
use super::names::normalize_name;
use super::sets::sets_data;
use super::KmodError;
use crate::arch::Arch;
use crate::tree::FileTree;

/// A selected module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Module name (`_` form).
    pub name: String,
    /// Tree path of its `.ko`.
    pub path: String,
    /// Modules that must be loaded before it: `depends=`, `softdep= pre:`
    /// and the crypto-API needs kiln knows (only those that are modules).
    pub depends: Vec<String>,
    /// File size in bytes.
    pub size: u64,
}

/// The modules an image carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSelection {
    /// Kernel version (the `lib/modules` directory name).
    pub kver: String,
    /// Tree path of `lib/modules/<kver>`.
    pub dir: String,
    /// Every selected module, in a valid load order (dependencies first,
    /// ties broken by name).
    pub all: Vec<Module>,
    /// The closure of the boot sets, in load order (a subsequence of `all`).
    pub boot: Vec<Module>,
    /// Names the sets ask for that the kernel has built in.
    pub builtin: Vec<String>,
}

impl ModuleSelection {
    /// Total size of the selected module files.
    pub fn bytes(&self) -> u64 {
        self.all.iter().map(|m| m.size).sum()
    }
}

/// Selects the closure of `sets` (built-in names, or names defined in
/// `custom`, which win over built-in ones) for `arch` from the kernel in `tree`.
pub fn select(
    tree: &FileTree,
    sets: &[String],
    custom: &BTreeMap<String, Vec<String>>,
    arch: Arch,
) -> Result<ModuleSelection, KmodError> {
    let db = ModuleDb::scan(tree, false, Some(arch))?;
    let data = sets_data()?;
    let mut roots: Vec<String> = Vec::new();
    let mut boot_roots: Vec<String> = Vec::new();
    let mut builtin: BTreeSet<String> = BTreeSet::new();
    for set in sets {
        let (names, boot): (Vec<String>, bool) = if let Some(list) = custom.get(set) {
            (list.clone(), false)
        } else if let Some(def) = data.sets.get(set) {
            let extra = match arch {
                Arch::X86_64 => &def.x86_64,
                Arch::Arm64 => &def.arm64,
            };
            (def.modules.iter().chain(extra).cloned().collect(), def.boot)
        } else {
            let mut known: Vec<String> = data.sets.keys().cloned().collect();
            known.extend(custom.keys().cloned());
            return Err(KmodError::UnknownSet {
                name: set.clone(),
                known,
            });
        };
        for written in names {
            // `name?`: the module where the kernel has it (names move between kernel
            // versions, e.g. nft_objref became part of nf_tables), nothing where not.
            let (n, optional) = match written.strip_suffix('?') {
                Some(name) => (name.to_string(), true),
                None => (written, false),
            };
            let found = match db.lookup(&n) {
                Some(found) => found,
                None if optional => {
                    tracing::debug!(module = %n, set = %set, kver = %db.kver, "optional module not in this kernel");
                    continue;
                }
                None => {
                    return Err(KmodError::UnknownModule {
                        module: n.clone(),
                        set: set.clone(),
                        arch,
                        kver: db.kver.clone(),
                    })
                }
            };
            if found.is_empty() {
                builtin.insert(normalize_name(&n));
            }
            for m in found {
                if boot {
                    boot_roots.push(m.clone());
                }
                roots.push(m);
            }
        }
    }
    let edges = closure_edges(&db, &roots, &data.traps)?;
    let order = load_order(&edges)?;
    let boot_set = reachable(&edges, &boot_roots);
    let module = |name: &String| -> Module {
        // Every name in `edges` is a module of `db` (closure_edges checked it).
        let (path, size) = db
            .modules
            .get(name)
            .map(|m| (m.path.clone(), m.size))
            .unwrap_or_default();
        Module {
            name: name.clone(),
            path,
            depends: edges.get(name).cloned().unwrap_or_default(),
            size,
        }
    };
    let all: Vec<Module> = order.iter().map(module).collect();
    let boot: Vec<Module> = all
        .iter()
        .filter(|m| boot_set.contains(&m.name))
        .cloned()
        .collect();
    tracing::debug!(kver = %db.kver, modules = all.len(), boot = boot.len(), "kernel modules selected");
    Ok(ModuleSelection {
        kver: db.kver,
        dir: db.dir,
        all,
        boot,
        builtin: builtin.into_iter().collect(),
    })
}

/// For every module reachable from `roots`: the modules to load before it.
fn closure_edges(
    db: &ModuleDb,
    roots: &[String],
    traps: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, Vec<String>>, KmodError> {
    let traps: BTreeMap<String, &Vec<String>> =
        traps.iter().map(|(k, v)| (normalize_name(k), v)).collect();
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut todo: Vec<String> = roots.to_vec();
    while let Some(name) = todo.pop() {
        if edges.contains_key(&name) {
            continue;
        }
        let Some(m) = db.modules.get(&name) else {
            continue;
        };
        let mut before: Vec<String> = Vec::new();
        for d in &m.info.depends {
            if db.modules.contains_key(d) {
                before.push(d.clone());
            } else if !db.builtin.contains(d) {
                return Err(KmodError::MissingDependency {
                    module: name.clone(),
                    path: m.path.clone(),
                    needs: d.clone(),
                    dir: db.dir.clone(),
                });
            }
        }
        let soft = m.info.softdep_pre();
        let trap = traps.get(&name).map(|v| v.as_slice()).unwrap_or(&[]);
        for s in soft.iter().chain(trap) {
            match db.lookup(s) {
                Some(found) => before.extend(found.into_iter().filter(|f| f != &name)),
                // modprobe ignores soft dependencies it cannot find.
                None => {
                    tracing::debug!(module = %name, needs = %s, "soft dependency not in this kernel: skipped")
                }
            }
        }
        for s in m.info.softdep_post() {
            tracing::debug!(module = %name, post = %s, "softdep post: not selected (modprobe loads it only if present)");
        }
        let mut seen = BTreeSet::new();
        before.retain(|b| seen.insert(b.clone()));
        todo.extend(before.iter().cloned());
        edges.insert(name, before);
    }
    Ok(edges)
}

/// Kahn's algorithm with the ready set ordered by name: dependencies first,
/// deterministic.
fn load_order(edges: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, KmodError> {
    let mut pending: BTreeMap<&str, usize> =
        edges.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in edges {
        for d in v {
            users.entry(d.as_str()).or_default().push(k.as_str());
        }
    }
    let mut ready: BTreeSet<&str> = pending
        .iter()
        .filter(|(_, &n)| n == 0)
        .map(|(k, _)| *k)
        .collect();
    let mut out = Vec::with_capacity(edges.len());
    while let Some(next) = ready.pop_first() {
        out.push(next.to_string());
        pending.remove(next);
        for u in users.get(next).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(n) = pending.get_mut(u) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(u);
                }
            }
        }
    }
    if !pending.is_empty() {
        return Err(KmodError::Cycle(
            pending.keys().map(|k| k.to_string()).collect(),
        ));
    }
    Ok(out)
}

fn reachable(edges: &BTreeMap<String, Vec<String>>, roots: &[String]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&String> = roots.iter().collect();
    while let Some(n) = todo.pop() {
        if seen.insert(n.clone()) {
            todo.extend(edges.get(n).into_iter().flatten());
        }
    }
    seen
}
