//! Kernel modules: which ones the image carries, in which order they load,
//! and the index files `modprobe` reads at run time.
//!
//! Debian's kernel package ships ~4000 plain `.ko` files and no
//! `modules.dep` (its postinst runs depmod). kiln reads each module's
//! `.modinfo` ELF section (never loading anything), selects the closure of
//! the profile's module sets over `depends=`, `softdep= pre:` and the
//! crypto-API needs listed in `module_sets.toml`, prunes the rest, and
//! writes the `modules.*` indexes itself, in the same format and order as
//! kmod 30's depmod (which the tests use as the referee).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use object::read::elf::{ElfFile64, FileHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, SymbolSection};
use serde::Deserialize;

use super::{file_name, parent, FileTree, Kind, Node, TreeError};
use crate::arch::Arch;

const SETS_TOML: &str = include_str!("module_sets.toml");
const ORIGIN: &str = "kiln:depmod";

/// Errors of module selection and indexing.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// No `lib/modules/<kver>` in the tree.
    #[error("no kernel modules in the image: /usr/lib/modules/<version>/ is missing; add the kernel package to the profile's [kernel.package]")]
    NoKernel,
    /// More than one kernel version installed.
    #[error("/{dir}: several kernel versions ({}); the profile must install exactly one kernel", kvers.join(", "))]
    SeveralKernels {
        /// The modules directory.
        dir: String,
        /// The versions found.
        kvers: Vec<String>,
    },
    /// A set name that is neither built in nor defined by the profile.
    #[error("unknown module set {name:?}; built-in sets: {}; or define it under [kernel.sets]", known.join(", "))]
    UnknownSet {
        /// The name.
        name: String,
        /// The built-in set names.
        known: Vec<String>,
    },
    /// A set names a module the kernel has neither as a module nor built in.
    #[error("module set {set:?} names {module:?}, which kernel {kver} for {arch} has neither as a module nor built in")]
    UnknownModule {
        /// The module name as written.
        module: String,
        /// The set naming it.
        set: String,
        /// The target arch.
        arch: Arch,
        /// The kernel version.
        kver: String,
    },
    /// A module depends on one that is not in the tree.
    #[error("/{path}: {module} depends on {needs}, which is not in /{dir} (neither a module nor built in)")]
    MissingDependency {
        /// The module.
        module: String,
        /// Its tree path.
        path: String,
        /// The missing dependency.
        needs: String,
        /// The modules directory.
        dir: String,
    },
    /// A module file that is not a readable ELF kernel module.
    #[error("/{path}: not a kernel module kiln can read: {message}")]
    BadModule {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The modules are built for another machine.
    #[error("/{path}: module is for ELF machine {machine}, but the image is {arch}; check [kernel.package] for {arch}")]
    WrongArch {
        /// A module file.
        path: String,
        /// Its e_machine.
        machine: u16,
        /// The target arch.
        arch: Arch,
    },
    /// Dependencies loop, so no load order exists.
    #[error("kernel modules depend on each other in a loop: {}", .0.join(", "))]
    Cycle(Vec<String>),
    /// A key or value that the index format cannot hold.
    #[error("module index: {0:?} is not 7-bit ASCII")]
    NotAscii(String),
    /// kiln's built-in set data is invalid (a kiln bug).
    #[error("built-in module_sets.toml: {0}")]
    SetData(String),
    /// Reading or writing the tree failed.
    #[error("kernel modules: {0}")]
    Tree(#[from] TreeError),
}

// ---------------------------------------------------------------------------
// Built-in sets

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetsFile {
    sets: BTreeMap<String, SetDef>,
    traps: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetDef {
    description: String,
    boot: bool,
    modules: Vec<String>,
    #[serde(default)]
    x86_64: Vec<String>,
    #[serde(default)]
    arm64: Vec<String>,
}

fn sets_data() -> Result<&'static SetsFile, KmodError> {
    static DATA: OnceLock<Result<SetsFile, String>> = OnceLock::new();
    DATA.get_or_init(|| toml::from_str(SETS_TOML).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| KmodError::SetData(e.clone()))
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

/// Names of the module sets kiln knows (empty only if kiln's own data is broken,
/// which a unit test rules out).
pub fn builtin_set_names() -> Vec<&'static str> {
    match sets_data() {
        Ok(d) => d.sets.keys().map(String::as_str).collect(),
        Err(_) => Vec::new(),
    }
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

// ---------------------------------------------------------------------------
// Reading modules

/// Module names treat `-` and `_` as the same; the canonical form uses `_`.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a file: its base name up to the first `.`, normalised.
fn modname_from_path(path: &str) -> String {
    let base = file_name(path.trim_end());
    normalize_name(base.split('.').next().unwrap_or(base))
}

/// kmod's alias normalisation: `-` becomes `_` except inside `[...]`.
/// `None` for an unmatched bracket (depmod skips such aliases).
fn normalize_alias(alias: &str) -> Option<String> {
    let mut out = String::with_capacity(alias.len());
    let mut chars = alias.chars();
    while let Some(c) = chars.next() {
        match c {
            '-' => out.push('_'),
            ']' => return None,
            '[' => {
                out.push('[');
                loop {
                    match chars.next() {
                        Some(']') => {
                            out.push(']');
                            break;
                        }
                        Some(x) => out.push(x),
                        None => return None,
                    }
                }
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// `fnmatch(pattern, s, 0)`: `*`, `?` and `[...]` classes (with ranges and
/// `!`/`^` negation), as module alias patterns use them.
fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, len)) = class_match(&pattern[p..], s[i]) {
                        if matched {
                            p += len;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one character against a `[...]` class at the start of `pat`.
/// Returns whether it matched and the class length, or `None` if the class
/// is not terminated (then `[` is literal).
fn class_match(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut j = 1;
    let negate = matches!(pat.get(j), Some(b'!') | Some(b'^'));
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pat.len() {
        if pat[j] == b']' && !first {
            return Some((matched != negate, j + 1));
        }
        first = false;
        let lo = pat[j];
        if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
            let hi = pat[j + 2];
            if lo <= c && c <= hi {
                matched = true;
            }
            j += 3;
        } else {
            if lo == c {
                matched = true;
            }
            j += 1;
        }
    }
    None
}

/// What a module's `.modinfo` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `depends=`: modules it needs symbols from (normalised names).
    pub depends: Vec<String>,
    /// `softdep=` values, as written (`pre: a b post: c`).
    pub softdeps: Vec<String>,
    /// `alias=` values, as written.
    pub aliases: Vec<String>,
}

impl ModInfo {
    /// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
    pub fn parse(data: &[u8]) -> ModInfo {
        let mut info = ModInfo::default();
        for (k, v) in modinfo_pairs(data) {
            match k {
                "depends" => info
                    .depends
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(normalize_name)),
                "softdep" => info.softdeps.push(v.to_string()),
                "alias" => info.aliases.push(v.to_string()),
                _ => {}
            }
        }
        info
    }

    /// Names after `pre:` in the softdeps (the modules to load first).
    pub fn softdep_pre(&self) -> Vec<String> {
        self.softdep_list("pre:")
    }

    /// Names after `post:` in the softdeps.
    pub fn softdep_post(&self) -> Vec<String> {
        self.softdep_list("post:")
    }

    fn softdep_list(&self, which: &str) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.softdeps {
            let mut mode = "";
            for w in s.split_whitespace() {
                match w {
                    "pre:" | "post:" => mode = if w == "pre:" { "pre:" } else { "post:" },
                    name if mode == which => out.push(name.to_string()),
                    _ => {}
                }
            }
        }
        out
    }
}

/// The `key=value` strings of a `.modinfo` section, in order.
fn modinfo_pairs(data: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter_map(|s| s.split_once('='))
}

/// The parts of a module ELF that selection and indexing read.
#[derive(Debug, Clone, Default)]
struct ElfModule {
    machine: u16,
    modinfo: Vec<u8>,
    /// Exported symbols, in the order libkmod lists them.
    exports: Vec<String>,
    /// Undefined symbols in .symtab order, then unreferenced __versions names.
    imports: Vec<String>,
}

fn read_elf(path: &str, data: &[u8], symbols: bool) -> Result<ElfModule, KmodError> {
    let bad = |m: String| KmodError::BadModule {
        path: path.to_string(),
        message: m,
    };
    let elf = ElfFile64::<Endianness>::parse(data).map_err(|e| bad(format!("ELF: {e}")))?;
    let machine = elf.elf_header().e_machine(elf.endian());
    let section = |name: &str| -> Result<Option<&[u8]>, KmodError> {
        match elf.section_by_name(name) {
            Some(s) => s
                .data()
                .map(Some)
                .map_err(|e| bad(format!("section {name}: {e}"))),
            None => Ok(None),
        }
    };
    let modinfo = section(".modinfo")?
        .ok_or_else(|| bad("no .modinfo section".into()))?
        .to_vec();
    let mut m = ElfModule {
        machine,
        modinfo,
        ..ElfModule::default()
    };
    if !symbols {
        return Ok(m);
    }
    let mut crc_exports = Vec::new();
    let mut undefined = Vec::new();
    for sym in elf.symbols() {
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() {
            continue;
        }
        if let Some(exported) = name.strip_prefix("__crc_") {
            crc_exports.push(exported.to_string());
        }
        if sym.section() == SymbolSection::Undefined {
            undefined.push(name.to_string());
        }
    }
    m.exports = if crc_exports.is_empty() {
        // Without modversions the export names are in __ksymtab_strings.
        section("__ksymtab_strings")?
            .map(|d| {
                d.split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        crc_exports
    };
    // __versions entries (8-byte CRC + 56-byte name) not referenced from
    // .symtab (module_layout) come last, as libkmod lists them.
    if let Some(v) = section("__versions")? {
        let seen: BTreeSet<&str> = undefined.iter().map(String::as_str).collect();
        let mut extra = Vec::new();
        for entry in v.chunks_exact(64) {
            let raw = &entry[8..];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let name = String::from_utf8_lossy(&raw[..end]).into_owned();
            let name = name.strip_prefix('.').map(String::from).unwrap_or(name);
            if !seen.contains(name.as_str()) {
                extra.push(name);
            }
        }
        undefined.extend(extra);
    }
    m.imports = undefined;
    Ok(m)
}

fn elf_machine(arch: Arch) -> u16 {
    match arch {
        Arch::X86_64 => object::elf::EM_X86_64,
        Arch::Arm64 => object::elf::EM_AARCH64,
    }
}

/// One module file of the tree.
#[derive(Debug, Clone)]
struct ModFile {
    name: String,
    /// Tree path.
    path: String,
    /// Path relative to the modules directory (`kernel/fs/ext4/ext4.ko`).
    relpath: String,
    size: u64,
    info: ModInfo,
    elf: ElfModule,
}

/// Every module of one kernel in a tree.
#[derive(Debug, Clone)]
struct ModuleDb {
    kver: String,
    /// Tree path of `lib/modules/<kver>` (resolved).
    dir: String,
    modules: BTreeMap<String, ModFile>,
    /// Names of built-in modules (modules.builtin).
    builtin: BTreeSet<String>,
    /// `(normalised alias, module)` of built-in modules (modules.builtin.modinfo).
    builtin_aliases: Vec<(String, String)>,
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
    fn scan(tree: &FileTree, symbols: bool, arch: Option<Arch>) -> Result<ModuleDb, KmodError> {
        let (dir, kver) = modules_dir(tree)?;
        let prefix = format!("{dir}/");
        let mut modules = BTreeMap::new();
        for (path, node) in tree.descendants(&dir) {
            if [".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .any(|x| path.ends_with(x))
            {
                return Err(KmodError::BadModule {
                    path: path.clone(),
                    message: "compressed modules are not supported (Debian bookworm's kernels ship plain .ko)"
                        .into(),
                });
            }
            if !path.ends_with(".ko") || !matches!(node.kind, Kind::File(_) | Kind::Hardlink(_)) {
                continue;
            }
            let relpath = path.strip_prefix(&prefix).unwrap_or(path).to_string();
            // depmod skips the build and source links' trees.
            if relpath.starts_with("build/") || relpath.starts_with("source/") {
                continue;
            }
            let data = tree.read(path)?;
            let elf = read_elf(path, &data, symbols)?;
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
    fn lookup(&self, name: &str) -> Option<Vec<String>> {
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

// ---------------------------------------------------------------------------
// Selection

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
        for n in names {
            let found = db.lookup(&n).ok_or_else(|| KmodError::UnknownModule {
                module: n.clone(),
                set: set.clone(),
                arch,
                kver: db.kver.clone(),
            })?;
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

/// What [`prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Module files removed.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Removes every `.ko` under `lib/modules/<kver>` that is not selected, and
/// the directories that become empty.
pub fn prune(tree: &mut FileTree, selection: &ModuleSelection) -> Result<Pruned, KmodError> {
    let keep: BTreeSet<&str> = selection.all.iter().map(|m| m.path.as_str()).collect();
    let mut removed = Pruned::default();
    let drop: Vec<(String, u64)> = tree
        .descendants(&selection.dir)
        .filter(|(p, _)| p.ends_with(".ko") && !keep.contains(p.as_str()))
        .map(|(p, n)| {
            let size = match &n.kind {
                Kind::File(d) => d.len() as u64,
                _ => 0,
            };
            (p.clone(), size)
        })
        .collect();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for (p, size) in drop {
        tree.remove_subtree(&p);
        removed.files += 1;
        removed.bytes += size;
        dirs.insert(parent(&p).to_string());
    }
    // Deepest first, so a parent sees its children gone.
    let kernel_dir = format!("{}/kernel", selection.dir);
    let mut dirs: Vec<String> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in dirs {
        let mut d = d;
        while d.starts_with(&kernel_dir) && d != kernel_dir && tree.children(&d).is_empty() {
            tree.remove_subtree(&d);
            d = parent(&d).to_string();
        }
    }
    tracing::debug!(
        files = removed.files,
        bytes = removed.bytes,
        "pruned kernel modules"
    );
    Ok(removed)
}

// ---------------------------------------------------------------------------
// Index files (depmod)

/// Writes `modules.dep`, `modules.dep.bin`, `modules.alias(.bin)`,
/// `modules.softdep`, `modules.symbols(.bin)`, `modules.builtin.bin`,
/// `modules.builtin.alias.bin` and `modules.devname` for the modules now in
/// the tree's `lib/modules/<kver>`, as `depmod` would.
pub fn write_index(tree: &mut FileTree, selection: &ModuleSelection) -> Result<(), KmodError> {
    let db = ModuleDb::scan(tree, true, None)?;
    if db.kver != selection.kver {
        return Err(KmodError::SeveralKernels {
            dir: parent(&db.dir).to_string(),
            kvers: vec![db.kver, selection.kver.clone()],
        });
    }
    for m in &selection.all {
        if !tree.contains(&m.path) {
            return Err(TreeError::NotFound(m.path.clone()).into());
        }
    }
    // Every depends= must still be there: a pruned dependency would make
    // modprobe fail at run time.
    for m in db.modules.values() {
        for d in &m.info.depends {
            if !db.modules.contains_key(d) && !db.builtin.contains(d) {
                return Err(KmodError::MissingDependency {
                    module: m.name.clone(),
                    path: m.path.clone(),
                    needs: d.clone(),
                    dir: db.dir.clone(),
                });
            }
        }
    }
    let order = match tree.read(&format!("{}/modules.order", db.dir)) {
        Ok(d) => String::from_utf8_lossy(&d).into_owned(),
        Err(TreeError::NotFound(_)) => String::new(),
        Err(e) => return Err(e.into()),
    };
    let builtin_txt = match tree.read(&format!("{}/modules.builtin", db.dir)) {
        Ok(d) => String::from_utf8_lossy(&d).into_owned(),
        Err(TreeError::NotFound(_)) => String::new(),
        Err(e) => return Err(e.into()),
    };
    let files = depmod_files(&db, &order, &builtin_txt)?;
    let epoch = tree.epoch();
    for (name, data) in files {
        tree.insert(
            &format!("{}/{name}", db.dir),
            Node::file(data, 0o644, epoch, ORIGIN),
        )?;
    }
    Ok(())
}

/// depmod's view of a module.
struct DepMod<'a> {
    m: &'a ModFile,
    deps: Vec<usize>,
    users: usize,
    dep_sort_idx: usize,
    dep_loop: bool,
}

/// Computes every index file's bytes, keyed by file name.
fn depmod_files(
    db: &ModuleDb,
    order: &str,
    builtin_txt: &str,
) -> Result<Vec<(&'static str, Vec<u8>)>, KmodError> {
    // Sort as depmod does: by line in modules.order, the rest after (by path).
    let lines: HashMap<&str, usize> = order.lines().enumerate().map(|(i, l)| (l, i)).collect();
    let mut mods: Vec<&ModFile> = db.modules.values().collect();
    mods.sort_by(|a, b| {
        let ka = lines.get(a.relpath.as_str()).copied().unwrap_or(usize::MAX);
        let kb = lines.get(b.relpath.as_str()).copied().unwrap_or(usize::MAX);
        ka.cmp(&kb).then_with(|| a.relpath.cmp(&b.relpath))
    });
    let mut dm: Vec<DepMod> = mods
        .iter()
        .map(|m| DepMod {
            m,
            deps: Vec::new(),
            users: 0,
            dep_sort_idx: usize::MAX,
            dep_loop: false,
        })
        .collect();

    // Symbol owners: a later module in the order takes over a symbol.
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (i, d) in dm.iter().enumerate() {
        for s in &d.m.elf.exports {
            owner.insert(s.as_str(), i);
        }
    }
    for i in 0..dm.len() {
        let mut deps: Vec<usize> = Vec::new();
        for s in &dm[i].m.elf.imports {
            if let Some(&o) = owner.get(s.as_str()) {
                if !deps.contains(&o) {
                    deps.push(o);
                }
            }
        }
        for &o in &deps {
            dm[o].users += 1;
        }
        dm[i].deps = deps;
    }
    // Topological sort as depmod does it: modules nobody uses first, a
    // stack of roots, so the index of each module is reproducible.
    let mut users: Vec<usize> = dm.iter().map(|d| d.users).collect();
    let mut roots: Vec<usize> = (0..dm.len()).filter(|&i| users[i] == 0).collect();
    let mut n_sorted = 0;
    while let Some(src) = roots.pop() {
        dm[src].dep_sort_idx = n_sorted;
        n_sorted += 1;
        for k in 0..dm[src].deps.len() {
            let dst = dm[src].deps[k];
            users[dst] -= 1;
            if users[dst] == 0 {
                roots.push(dst);
            }
        }
    }
    if n_sorted < dm.len() {
        for (i, d) in dm.iter_mut().enumerate() {
            if users[i] > 0 {
                tracing::warn!(module = %d.m.name, "in a dependency loop: left out of modules.dep, as depmod does");
                d.dep_loop = true;
            }
        }
    }
    let sort_key = |d: &DepMod| (d.dep_loop, d.dep_sort_idx);
    let all_deps = |i: usize| -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        let mut stack: Vec<usize> = vec![i];
        // Unique transitive dependencies (the order is fixed by the sort below).
        while let Some(x) = stack.pop() {
            for &d in &dm[x].deps {
                if !out.contains(&d) {
                    out.push(d);
                    stack.push(d);
                }
            }
        }
        out.sort_by_key(|&d| sort_key(&dm[d]));
        out.retain(|&d| !dm[d].dep_loop);
        out
    };

    let mut dep_txt = String::new();
    let mut dep_bin = Index::default();
    for (i, d) in dm.iter().enumerate() {
        if d.dep_loop {
            continue;
        }
        let mut line = format!("{}:", d.m.relpath);
        for x in all_deps(i) {
            line.push(' ');
            line.push_str(&dm[x].m.relpath);
        }
        dep_txt.push_str(&line);
        dep_txt.push('\n');
        dep_bin.insert(&d.m.name, &line, i as u32)?;
    }

    let mut alias_txt = String::from("# Aliases extracted from modules themselves.\n");
    let mut alias_bin = Index::default();
    let mut softdep_txt = String::from("# Soft dependencies extracted from modules themselves.\n");
    let mut devname_txt = String::from("# Device nodes to trigger on-demand module loading.\n");
    for (i, d) in dm.iter().enumerate() {
        let name = &d.m.name;
        for (k, v) in modinfo_pairs(&d.m.elf.modinfo) {
            match k {
                "alias" => {
                    alias_txt.push_str(&format!("alias {v} {name}\n"));
                    if let Some(a) = normalize_alias(v) {
                        alias_bin.insert(&a, name, i as u32)?;
                    }
                }
                "softdep" => softdep_txt.push_str(&format!("softdep {name} {v}\n")),
                _ => {}
            }
        }
        if let Some(line) = devname_line(name, &d.m.elf.modinfo) {
            devname_txt.push_str(&line);
        }
    }

    let mut symbols: Vec<(&str, usize)> = owner.iter().map(|(s, &o)| (*s, o)).collect();
    symbols.sort_unstable();
    let mut symbols_txt = String::from("# Aliases for symbols, used by symbol_request().\n");
    let mut symbols_bin = Index::default();
    for (s, o) in symbols {
        symbols_txt.push_str(&format!("alias symbol:{s} {}\n", dm[o].m.name));
        symbols_bin.insert(&format!("symbol:{s}"), &dm[o].m.name, o as u32)?;
    }

    let mut builtin_bin = Index::default();
    for line in builtin_txt.lines() {
        if !line.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        builtin_bin.insert(&modname_from_path(line), "", 0)?;
    }
    let mut builtin_alias_bin = Index::default();
    for (alias, module) in &db.builtin_aliases {
        builtin_alias_bin.insert(alias, module, 0)?;
    }

    Ok(vec![
        ("modules.dep", dep_txt.into_bytes()),
        ("modules.dep.bin", dep_bin.to_bytes()),
        ("modules.alias", alias_txt.into_bytes()),
        ("modules.alias.bin", alias_bin.to_bytes()),
        ("modules.softdep", softdep_txt.into_bytes()),
        ("modules.symbols", symbols_txt.into_bytes()),
        ("modules.symbols.bin", symbols_bin.to_bytes()),
        ("modules.builtin.bin", builtin_bin.to_bytes()),
        ("modules.builtin.alias.bin", builtin_alias_bin.to_bytes()),
        ("modules.devname", devname_txt.into_bytes()),
    ])
}

/// A modules.devname line: the first `devname:` alias together with a
/// `char-major-M-m` / `block-major-M-m` alias.
fn devname_line(name: &str, modinfo: &[u8]) -> Option<String> {
    let mut devname: Option<&str> = None;
    let mut dev: Option<(char, u32, u32)> = None;
    for (k, v) in modinfo_pairs(modinfo) {
        if k != "alias" {
            continue;
        }
        if let Some(d) = v.strip_prefix("devname:") {
            devname = Some(d);
        } else if let Some(rest) = v.strip_prefix("char-major-") {
            dev = parse_major_minor(rest).map(|(a, b)| ('c', a, b)).or(dev);
        } else if let Some(rest) = v.strip_prefix("block-major-") {
            dev = parse_major_minor(rest).map(|(a, b)| ('b', a, b)).or(dev);
        }
        if let (Some(d), Some((t, maj, min))) = (devname, dev) {
            return Some(format!("{name} {d} {t}{maj}:{min}\n"));
        }
    }
    None
}

/// `%u-%u` as sscanf reads it (trailing text after the minor is ignored).
fn parse_major_minor(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    let digits: String = b.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((a.parse().ok()?, digits.parse().ok()?))
}

// ---------------------------------------------------------------------------
// libkmod's binary index: a radix trie, 32-bit big-endian offsets.

const INDEX_MAGIC: u32 = 0xB007_F457;
const INDEX_VERSION: u32 = 0x0002_0001;
const NODE_PREFIX: u32 = 0x8000_0000;
const NODE_VALUES: u32 = 0x4000_0000;
const NODE_CHILDS: u32 = 0x2000_0000;

/// A key → values index as libkmod reads it (`modules.*.bin`).
#[derive(Debug, Default)]
struct Index {
    root: TrieNode,
}

#[derive(Debug, Default)]
struct TrieNode {
    prefix: Vec<u8>,
    children: BTreeMap<u8, TrieNode>,
    /// `(priority, value)`, ascending priority; equal priorities newest first.
    values: Vec<(u32, String)>,
}

impl TrieNode {
    fn add_value(&mut self, value: &str, priority: u32) {
        let at = self
            .values
            .iter()
            .position(|(p, _)| *p >= priority)
            .unwrap_or(self.values.len());
        self.values.insert(at, (priority, value.to_string()));
    }
}

impl Index {
    fn insert(&mut self, key: &str, value: &str, priority: u32) -> Result<(), KmodError> {
        for s in [key, value] {
            if !s.is_ascii() {
                return Err(KmodError::NotAscii(s.to_string()));
            }
        }
        let key = key.as_bytes();
        let mut node = &mut self.root;
        let mut i = 0;
        loop {
            // Split the node where its prefix and the key part ways.
            let common = node
                .prefix
                .iter()
                .zip(&key[i..])
                .take_while(|(a, b)| a == b)
                .count();
            if common < node.prefix.len() {
                let ch = node.prefix[common];
                let tail = node.prefix[common + 1..].to_vec();
                node.prefix.truncate(common);
                let moved = TrieNode {
                    prefix: tail,
                    children: std::mem::take(&mut node.children),
                    values: std::mem::take(&mut node.values),
                };
                node.children.insert(ch, moved);
            }
            i += common;
            let Some(&ch) = key.get(i) else {
                node.add_value(value, priority);
                return Ok(());
            };
            node = match node.children.entry(ch) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let mut child = TrieNode {
                        prefix: key[i + 1..].to_vec(),
                        ..TrieNode::default()
                    };
                    child.add_value(value, priority);
                    v.insert(child);
                    return Ok(());
                }
            };
            i += 1;
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&INDEX_MAGIC.to_be_bytes());
        out.extend_from_slice(&INDEX_VERSION.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        let root = write_node(&self.root, &mut out);
        out[8..12].copy_from_slice(&root.to_be_bytes());
        out
    }
}

/// Writes children first (post-order, as depmod), then the node; returns
/// the node's offset with its flags.
fn write_node(node: &TrieNode, out: &mut Vec<u8>) -> u32 {
    let mut child_offsets: Vec<u32> = Vec::new();
    let range = node
        .children
        .keys()
        .next()
        .copied()
        .zip(node.children.keys().next_back().copied());
    if let Some((first, last)) = range {
        for ch in first..=last {
            child_offsets.push(
                node.children
                    .get(&ch)
                    .map(|c| write_node(c, out))
                    .unwrap_or(0),
            );
        }
    }
    let mut offset = out.len() as u32;
    if !node.prefix.is_empty() {
        out.extend_from_slice(&node.prefix);
        out.push(0);
        offset |= NODE_PREFIX;
    }
    if let Some((first, last)) = range {
        out.push(first);
        out.push(last);
        for c in child_offsets {
            out.extend_from_slice(&c.to_be_bytes());
        }
        offset |= NODE_CHILDS;
    }
    if !node.values.is_empty() {
        out.extend_from_slice(&(node.values.len() as u32).to_be_bytes());
        for (p, v) in &node.values {
            out.extend_from_slice(&p.to_be_bytes());
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        offset |= NODE_VALUES;
    }
    offset
}

#[cfg(test)]
mod tests;
