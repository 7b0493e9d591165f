//! `[[artifact]]`: single files (a k3s binary, a CNI plugin) that are not
//! Debian packages, pinned by SHA-256 and placed at a fixed path in the root.

use std::path::{Path, PathBuf};

use super::{dto, ProfileError};
use crate::arch::Arch;

/// Top-level folders an artifact may not go to: they are mounted over at
/// boot (tmpfs, the `var` partition, kernel file systems) or, for /boot,
/// dropped from the root, so a file placed there would never be seen.
const FORBIDDEN_TOPS: [&str; 7] = ["var", "run", "proc", "sys", "dev", "tmp", "boot"];

/// Where an artifact's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// Downloaded over http(s).
    Url(String),
    /// A local file; relative paths are already joined to the profile's folder.
    Path(PathBuf),
}

impl std::fmt::Display for ArtifactSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArtifactSource::Url(u) => f.write_str(u),
            ArtifactSource::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A validated `[[artifact]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Name for messages.
    pub name: String,
    /// URL or local file.
    pub source: ArtifactSource,
    /// SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// Path in the image, normalised (no leading `/`), like every tree path.
    pub dest: String,
    /// Permission bits (`<= 0o7777`).
    pub mode: u32,
    /// Only for this arch; `None` = every arch of the profile.
    pub arch: Option<Arch>,
}

impl Artifact {
    /// Whether the artifact goes into `arch`'s image.
    pub fn applies_to(&self, arch: Arch) -> bool {
        self.arch.is_none_or(|a| a == arch)
    }

    /// `name (arch)`, how messages name the artifact in one arch's build.
    pub fn label(&self, arch: Arch) -> String {
        format!("{} ({arch})", self.name)
    }
}

/// Validates the `[[artifact]]` list of the profile at `path`; `arches` are
/// the profile's (validated) arches.
pub(super) fn validate(
    path: &Path,
    raw: &[dto::ArtifactFile],
    arches: &[Arch],
) -> Result<Vec<Artifact>, ProfileError> {
    let base = path.parent().unwrap_or(Path::new(""));
    let mut out: Vec<Artifact> = Vec::new();
    for (index, a) in raw.iter().enumerate() {
        let bad = |field: &str, message: String| ProfileError::Artifact {
            path: path.to_path_buf(),
            index,
            name: a.name.clone(),
            field: field.to_string(),
            message,
        };
        if a.name.is_empty() || a.name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad(
                "name",
                format!(
                    "{:?}: give a short name without spaces, e.g. \"k3s\" (messages use it)",
                    a.name
                ),
            ));
        }
        let source = match (&a.url, &a.path) {
            (Some(u), None) => ArtifactSource::Url(check_url(u).map_err(|m| bad("url", m))?),
            (None, Some(p)) => {
                if p.is_empty() {
                    return Err(bad(
                        "path",
                        "empty: give the file, relative to the profile's folder or absolute".into(),
                    ));
                }
                ArtifactSource::Path(base.join(p))
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "url",
                    "both `url` and `path` are set: keep the one the file comes from".into(),
                ))
            }
            (None, None) => {
                return Err(bad(
                    "url",
                    "neither `url` nor `path` is set: say where the file comes from".into(),
                ))
            }
        };
        if a.sha256.len() != 64
            || !a
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad(
                "sha256",
                format!(
                    "{:?} is not 64 hex digits (lowercase); `sha256sum FILE` prints it",
                    a.sha256
                ),
            ));
        }
        let dest = check_dest(&a.dest).map_err(|m| bad("dest", m))?;
        let mode = parse_mode(&a.mode).ok_or_else(|| {
            bad(
                "mode",
                format!(
                    "{:?} is not an octal mode up to \"7777\", e.g. \"0755\"",
                    a.mode
                ),
            )
        })?;
        let arch = match &a.arch {
            None => None,
            Some(s) => {
                let arch: Arch = s
                    .parse()
                    .map_err(|e: crate::arch::UnknownArch| bad("arch", e.to_string()))?;
                if !arches.contains(&arch) {
                    return Err(bad(
                        "arch",
                        format!(
                            "{s:?}: the profile does not build for {arch} (`arches` = {}); \
                             drop this artifact or add the arch",
                            arches
                                .iter()
                                .map(|a| format!("{:?}", a.name()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                Some(arch)
            }
        };
        // Two files at one path in one image: the second would silently win.
        if let Some((j, other)) = out
            .iter()
            .enumerate()
            .find(|(_, o)| o.dest == dest && (o.arch.is_none() || arch.is_none() || o.arch == arch))
        {
            return Err(bad(
                "dest",
                format!(
                    "\"/{dest}\" is also the dest of artifact[{j}] ({}) for the same arch; \
                     give each file its own dest, or set `arch` on each",
                    other.name
                ),
            ));
        }
        // The manifest lists artifacts by name, so names must tell them apart.
        if let Some(j) = out.iter().position(|o| {
            o.name == a.name && (o.arch.is_none() || arch.is_none() || o.arch == arch)
        }) {
            return Err(bad(
                "name",
                format!(
                    "artifact[{j}] has the same name for the same arch; give each its own name"
                ),
            ));
        }
        out.push(Artifact {
            name: a.name.clone(),
            source,
            sha256: a.sha256.clone(),
            dest,
            mode,
            arch,
        });
    }
    Ok(out)
}

/// An http(s) URL with a host, returned as given.
fn check_url(u: &str) -> Result<String, String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("{u:?}: use an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{u:?}: the URL has no host"));
    }
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{u:?}: spaces and control characters must be percent-encoded"
        ));
    }
    Ok(u.to_string())
}

/// An absolute, already normal path outside the folders the node mounts
/// over; returned in the tree's form (no leading `/`).
fn check_dest(d: &str) -> Result<String, String> {
    let rel = d.strip_prefix('/').ok_or_else(|| {
        format!("{d:?}: give an absolute path in the image, e.g. \"/usr/bin/k3s\"")
    })?;
    let parts: Vec<&str> = rel.split('/').collect();
    if rel.is_empty()
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(format!(
            "{d:?}: write the path plainly: no `.`, `..`, empty components or trailing `/`"
        ));
    }
    if d.chars().any(char::is_control) {
        return Err(format!("{d:?}: control characters are not allowed"));
    }
    if let Some(top) = parts.first().filter(|t| FORBIDDEN_TOPS.contains(t)) {
        return Err(format!(
            "{d:?}: /{top} is not part of the image's root at run time (mounted over or \
             dropped); put the file under /usr (e.g. /usr/bin, /usr/lib) or /etc, /opt"
        ));
    }
    Ok(rel.to_string())
}

/// Octal permission bits as written in profiles ("0755", "755").
fn parse_mode(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}
