//! The index files `depmod` would write (`modules.dep`, `modules.alias`,
//! ... and their `.bin` forms), in kmod 30's format and order.

use std::collections::HashMap;

use super::db::{ModFile, ModuleDb};
use super::elf::modinfo_pairs;
use super::index::Index;
use super::names::{modname_from_path, normalize_alias};
use super::select::ModuleSelection;
use super::{plain_module_path, KmodError};
use crate::tree::{parent, FileTree, Node, TreeError};

/// Origin recorded on the index files kiln writes.
const ORIGIN: &str = "kiln:depmod";

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
        // modules.order names modules uncompressed, as kmod matches them.
        let line = |m: &ModFile| lines.get(plain_module_path(&m.relpath)).copied();
        let ka = line(a).unwrap_or(usize::MAX);
        let kb = line(b).unwrap_or(usize::MAX);
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
