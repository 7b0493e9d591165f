//! The pipeline modules import each other only downstream → upstream, so
//! their import graph has no cycle: `profile` at the top imports none of
//! them, and each stage sees only the stages before it. These tests read the
//! sources and fail when an import would close a cycle again.
//!
//! Test code is left out: a test may use a later stage as its referee (the
//! lock's tests check their URLs against the fetcher's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The modules of the build pipeline, in data-flow order.
const PIPELINE: [&str; 11] = [
    "profile", "lock", "fetch", "unpack", "oci", "tree", "plan", "fs", "uki", "disk", "output",
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The non-test source files of top-level module `name`.
fn module_files(name: &str) -> Vec<PathBuf> {
    let src = src_dir();
    let mut files = Vec::new();
    let single = src.join(format!("{name}.rs"));
    if single.is_file() {
        files.push(single);
    }
    let mut dirs = vec![src.join(name)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let file_name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if file_name != "tests" {
                    dirs.push(p);
                }
            } else if file_name.ends_with(".rs") && file_name != "tests.rs" {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// `text` without comments and without items marked `#[cfg(test)]`.
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let code = line.trim();
        if code.starts_with("//") {
            continue;
        }
        if code == "#[cfg(test)]" {
            // Skip the item that follows: through its closing brace, or its `;`.
            let mut depth = 0i64;
            for item in lines.by_ref() {
                depth += item.matches('{').count() as i64 - item.matches('}').count() as i64;
                let t = item.trim_end();
                if depth <= 0 && (t.ends_with('}') || t.ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Top-level modules named by `crate::X` paths in `code`, including each
/// name in a `crate::{X, Y::Z}` group.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        start = true;
                        continue;
                    }
                    c if c.is_whitespace() => continue,
                    _ => {}
                }
                if start && depth == 0 {
                    out.insert(ident(&group[j..]));
                    start = false;
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// For each pipeline module, the pipeline modules it imports.
fn pipeline_graph() -> BTreeMap<&'static str, BTreeSet<String>> {
    PIPELINE
        .iter()
        .map(|&m| {
            let files = module_files(m);
            assert!(!files.is_empty(), "module {m}: no source files under src/");
            let mut deps = BTreeSet::new();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                deps.extend(crate_paths(&production_code(&text)));
            }
            deps.retain(|d| d != m && PIPELINE.contains(&d.as_str()));
            (m, deps)
        })
        .collect()
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<&str, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<&str, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_pipeline_modules_import_each_other_without_a_cycle() {
    let graph = pipeline_graph();
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle among the pipeline modules: {}\nthe graph: {graph:#?}",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_profile_imports_no_pipeline_module() {
    let graph = pipeline_graph();
    assert_eq!(
        graph["profile"],
        BTreeSet::new(),
        "profile is the first stage: it may import arch-level modules only"
    );
}

#[test]
fn the_scanner_sees_imports_groups_and_cycles() {
    let code = production_code(
        "use crate::tree::{FileTree, Node};\n\
         use crate::{fetch::Fetched, lock};\n\
         // use crate::disk;\n\
         /// See [`crate::plan`].\n\
         fn f() { crate::oci::add(); }\n\
         #[cfg(test)]\n\
         mod tests {\n\
             use crate::output;\n\
             fn g() {\n\
             }\n\
         }\n\
         fn h() { crate::fs::cpio::write(); }\n",
    );
    let found: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(found, ["fetch", "fs", "lock", "oci", "tree"]);

    let graph: BTreeMap<&str, BTreeSet<String>> = [
        ("profile", BTreeSet::new()),
        ("lock", BTreeSet::from(["profile".to_string()])),
        ("fetch", BTreeSet::from(["lock".to_string()])),
    ]
    .into_iter()
    .collect();
    assert_eq!(find_cycle(&graph), None);
    let mut cyclic = graph.clone();
    cyclic.insert("profile", BTreeSet::from(["fetch".to_string()]));
    assert_eq!(
        find_cycle(&cyclic).unwrap(),
        ["fetch", "lock", "profile", "fetch"]
    );
}
