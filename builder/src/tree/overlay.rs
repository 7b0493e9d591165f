//! Overlays: folders of files and minijinja templates layered over the
//! packages.
//!
//! ```text
//! overlays/<name>/overlay.toml   schema, and metadata for entries that are not 0644/0755 root:root
//! overlays/<name>/root/...       the files, as they appear under / in the image
//!                                (`*.j2` files are templates: rendered, suffix dropped)
//! ```
//! Modes and owners come from `overlay.toml`, never from the checkout, so an
//! image does not depend on the umask or the file system it was built from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{normalize, FileTree, Kind, Node, TreeError};

/// The overlay manifest schema this kiln reads.
pub const SCHEMA: u32 = 1;

/// Errors while applying an overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `overlay.toml` is malformed.
    #[error("{path}: {message}")]
    Manifest {
        /// The overlay.toml path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A template uses a variable the profile does not define.
    #[error(
        "{template}: uses undefined variable `{variable}`; define it under [vars] in the profile"
    )]
    UndefinedVariable {
        /// The template file.
        template: PathBuf,
        /// The variable name.
        variable: String,
    },
    /// A template does not parse or render.
    #[error("{template}: {message}")]
    Template {
        /// The template file.
        template: PathBuf,
        /// minijinja's message.
        message: String,
    },
    /// The entry clashes with the tree.
    #[error("overlay {overlay}: {source}")]
    Tree {
        /// Overlay name.
        overlay: String,
        /// The clash.
        source: TreeError,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    schema: u32,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    #[serde(default)]
    file: Vec<EntryMeta>,
    #[serde(default)]
    dir: Vec<EntryMeta>,
    #[serde(default)]
    symlink: Vec<SymlinkEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryMeta {
    path: String,
    mode: Option<String>,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SymlinkEntry {
    path: String,
    target: String,
}

fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
}

/// Applies one overlay folder to the tree. `vars` are the template variables.
pub fn apply(
    tree: &mut FileTree,
    name: &str,
    dir: &Path,
    vars: &BTreeMap<String, serde_json::Value>,
) -> Result<usize, OverlayError> {
    let manifest_path = dir.join("overlay.toml");
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| OverlayError::Io {
        path: manifest_path.clone(),
        source,
    })?;
    let bad = |message: String| OverlayError::Manifest {
        path: manifest_path.clone(),
        message,
    };
    let m: ManifestFile = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;
    if m.schema != SCHEMA {
        return Err(bad(format!(
            "schema {} is not supported; this kiln reads schema {SCHEMA}",
            m.schema
        )));
    }
    let mut meta: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    for (kind, entries) in [("file", &m.file), ("dir", &m.dir)] {
        for e in entries.iter() {
            let p = normalize(&e.path)
                .map_err(|err| bad(format!("[[{kind}]] path {:?}: {err}", e.path)))?;
            let default = if kind == "dir" { 0o755 } else { 0o644 };
            let mode = match &e.mode {
                Some(s) => parse_mode(s).ok_or_else(|| {
                    bad(format!(
                        "[[{kind}]] {:?}: mode {s:?} is not octal like \"0755\"",
                        e.path
                    ))
                })?,
                None => default,
            };
            meta.insert(p, (mode, e.uid, e.gid));
        }
    }

    let root = dir.join("root");
    let mut files = Vec::new();
    if root.is_dir() {
        walk(&root, &root, &mut files)?;
    }
    let env = template_env();
    let origin = format!("overlay:{name}");
    let mut seen = BTreeSet::new();
    let mut count = 0;
    for (rel, full, ft) in files {
        let (path, is_template) = match rel.strip_suffix(".j2") {
            Some(p) if ft.is_file() => (p.to_string(), true),
            _ => (rel.clone(), false),
        };
        let (mode, uid, gid) = meta.get(&path).copied().unwrap_or(if ft.is_dir() {
            (0o755, 0, 0)
        } else {
            (0o644, 0, 0)
        });
        seen.insert(path.clone());
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&full).map_err(|source| OverlayError::Io {
                path: full.clone(),
                source,
            })?;
            Kind::Symlink(t.to_string_lossy().into_owned())
        } else {
            let bytes = std::fs::read(&full).map_err(|source| OverlayError::Io {
                path: full.clone(),
                source,
            })?;
            if is_template {
                Kind::File(render(&env, &full, &bytes, vars)?.into_bytes().into())
            } else {
                Kind::File(bytes.into())
            }
        };
        let mode = if matches!(kind, Kind::Symlink(_)) {
            0o777
        } else {
            mode
        };
        let node = Node {
            kind,
            mode,
            uid,
            gid,
            mtime: tree.epoch(),
            xattrs: BTreeMap::new(),
            origin: origin.clone(),
        };
        if node.kind == Kind::Dir && tree.get(&path).is_some_and(|n| n.kind == Kind::Dir) {
            // An existing directory keeps its content; only declared metadata changes it.
            if let (Some(n), Some(&(mode, uid, gid))) = (tree.get_mut(&path), meta.get(&path)) {
                (n.mode, n.uid, n.gid) = (mode, uid, gid);
            }
            continue;
        }
        tree.insert(&path, node)
            .map_err(|source| OverlayError::Tree {
                overlay: name.to_string(),
                source,
            })?;
        count += 1;
    }
    for s in &m.symlink {
        let p = normalize(&s.path)
            .map_err(|err| bad(format!("[[symlink]] path {:?}: {err}", s.path)))?;
        tree.insert(
            &p,
            Node::symlink(s.target.clone(), tree.epoch(), origin.clone()),
        )
        .map_err(|source| OverlayError::Tree {
            overlay: name.to_string(),
            source,
        })?;
        seen.insert(p);
        count += 1;
    }
    for (p, &(mode, uid, gid)) in &meta {
        if !seen.contains(p) {
            if m.dir
                .iter()
                .any(|d| normalize(&d.path).ok().as_deref() == Some(p))
            {
                let node = Node {
                    kind: Kind::Dir,
                    mode,
                    uid,
                    gid,
                    mtime: tree.epoch(),
                    xattrs: BTreeMap::new(),
                    origin: origin.clone(),
                };
                tree.insert(p, node).map_err(|source| OverlayError::Tree {
                    overlay: name.to_string(),
                    source,
                })?;
                count += 1;
            } else {
                return Err(bad(format!(
                    "[[file]] {p:?} is declared but {} has no such file",
                    root.display()
                )));
            }
        }
    }
    Ok(count)
}

type Walked = (String, PathBuf, std::fs::FileType);

fn walk(root: &Path, dir: &Path, out: &mut Vec<Walked>) -> Result<(), OverlayError> {
    let rd = std::fs::read_dir(dir).map_err(|source| OverlayError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut entries = Vec::new();
    for e in rd {
        let e = e.map_err(|source| OverlayError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        entries.push(e.path());
    }
    entries.sort();
    for full in entries {
        let ft = std::fs::symlink_metadata(&full)
            .map_err(|source| OverlayError::Io {
                path: full.clone(),
                source,
            })?
            .file_type();
        let rel = full
            .strip_prefix(root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((rel, full.clone(), ft));
        if ft.is_dir() {
            walk(root, &full, out)?;
        }
    }
    Ok(())
}

fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_keep_trailing_newline(true);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env
}

/// Renders one template with strict undefined checking.
pub fn render(
    env: &minijinja::Environment<'_>,
    path: &Path,
    source: &[u8],
    vars: &BTreeMap<String, serde_json::Value>,
) -> Result<String, OverlayError> {
    let terr = |e: minijinja::Error| OverlayError::Template {
        template: path.to_path_buf(),
        message: e.to_string(),
    };
    let text = std::str::from_utf8(source).map_err(|_| OverlayError::Template {
        template: path.to_path_buf(),
        message: "template is not UTF-8".into(),
    })?;
    let name = path.to_string_lossy();
    let tmpl = env.template_from_named_str(&name, text).map_err(terr)?;
    let mut undeclared: Vec<String> = tmpl
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !vars.contains_key(v))
        .collect();
    undeclared.sort();
    // Names minijinja provides itself are not profile variables.
    undeclared.retain(|v| env.globals().all(|(g, _)| g != v.as_str()));
    if let Some(variable) = undeclared.into_iter().next() {
        return Err(OverlayError::UndefinedVariable {
            template: path.to_path_buf(),
            variable,
        });
    }
    tmpl.render(vars).map_err(terr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(manifest: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("overlay.toml"), manifest).unwrap();
        for (p, c) in files {
            let f = d.path().join("root").join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, c).unwrap();
        }
        d
    }

    fn vars() -> BTreeMap<String, serde_json::Value> {
        [
            ("motd".to_string(), serde_json::json!("hello")),
            ("n".to_string(), serde_json::json!(3)),
        ]
        .into()
    }

    #[test]
    fn files_templates_modes_and_symlinks() {
        let d = setup(
            "schema = 1\n[[file]]\npath = \"/usr/bin/tool\"\nmode = \"0755\"\n[[dir]]\npath = \"var/lib/x\"\nmode = \"0700\"\nuid = 5\n[[symlink]]\npath = \"etc/link\"\ntarget = \"/etc/motd\"\n",
            &[("usr/bin/tool", "#!/bin/sh\n"), ("etc/motd.j2", "{{ motd }} x{{ n }}\n")],
        );
        let mut t = FileTree::new(100);
        apply(&mut t, "o", d.path(), &vars()).unwrap();
        assert_eq!(t.get("usr/bin/tool").unwrap().mode, 0o755);
        assert_eq!(&*t.read("etc/motd").unwrap(), b"hello x3\n");
        assert!(!t.contains("etc/motd.j2"));
        assert_eq!(t.get("etc/motd").unwrap().mode, 0o644);
        assert_eq!(t.get("var/lib/x").unwrap().uid, 5);
        assert_eq!(t.get("var/lib/x").unwrap().mode, 0o700);
        assert_eq!(
            t.get("etc/link").unwrap().kind,
            Kind::Symlink("/etc/motd".into())
        );
        assert_eq!(t.get("etc/motd").unwrap().origin, "overlay:o");
    }

    #[test]
    fn undefined_variable_names_template_and_variable() {
        let d = setup("schema = 1\n", &[("etc/x.j2", "{{ motd }} {{ nope }}\n")]);
        let e = apply(&mut FileTree::new(1), "o", d.path(), &vars())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("etc/x.j2") && e.contains("`nope`") && e.contains("[vars]"),
            "{e}"
        );
        // Attribute access on a defined variable is caught at render time.
        let d = setup("schema = 1\n", &[("etc/y.j2", "{{ motd.missing }}\n")]);
        let e = apply(&mut FileTree::new(1), "o", d.path(), &vars())
            .unwrap_err()
            .to_string();
        assert!(e.contains("etc/y.j2"), "{e}");
    }

    #[test]
    fn manifest_errors_are_named() {
        let d = setup("schema = 1\nbogus = 2\n", &[]);
        let e = apply(&mut FileTree::new(1), "o", d.path(), &vars())
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlay.toml") && e.contains("bogus"), "{e}");
        let d = setup(
            "schema = 1\n[[file]]\npath = \"etc/ghost\"\nmode = \"0600\"\n",
            &[],
        );
        let e = apply(&mut FileTree::new(1), "o", d.path(), &vars())
            .unwrap_err()
            .to_string();
        assert!(e.contains("etc/ghost"), "{e}");
        let d = setup(
            "schema = 1\n[[file]]\npath = \"etc/a\"\nmode = \"rwx\"\n",
            &[("etc/a", "")],
        );
        let e = apply(&mut FileTree::new(1), "o", d.path(), &vars())
            .unwrap_err()
            .to_string();
        assert!(e.contains("rwx"), "{e}");
    }

    #[test]
    fn checkout_permissions_do_not_leak_into_the_image() {
        use std::os::unix::fs::PermissionsExt;
        let d = setup("schema = 1\n", &[("etc/secret", "s")]);
        std::fs::set_permissions(
            d.path().join("root/etc/secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut t = FileTree::new(1);
        apply(&mut t, "o", d.path(), &vars()).unwrap();
        assert_eq!(t.get("etc/secret").unwrap().mode, 0o644);
    }
}
