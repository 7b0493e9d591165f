//! What a profile's `[[container_image]]` entry asks for, validated: a fully
//! qualified reference with a tag, the packages that make the layer, and the
//! runtime defaults of the image config.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::dto::ContainerImageFile;

/// The `PATH` an image gets unless its `env` sets one: the usual Debian
/// search path, so a `cmd` like `["busybox", "echo"]` finds merged-/usr binaries.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A validated image reference, `DOMAIN/PATH:TAG`.
///
/// The domain is required because containerd's CRI plugin normalises short
/// names to `docker.io/library/...`: an image imported under a short name
/// would never match what a pod spec asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    /// `DOMAIN/PATH`, e.g. `localhost/kiln/busybox`.
    pub repository: String,
    /// The tag, e.g. `1.35`.
    pub tag: String,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

fn path_component_ok(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !c.is_empty()
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || b"._-".contains(b))
        && !c.contains("..")
}

fn domain_ok(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()));
    host_ok && port_ok && (host.contains('.') || port.is_some() || host == "localhost")
}

impl ImageRef {
    /// Parses `DOMAIN/PATH:TAG` (e.g. `localhost/kiln/busybox:1.35`).
    /// The message of an error says what is wrong and what a good one looks like.
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let example = "e.g. \"localhost/kiln/busybox:1.35\"";
        if s.contains('@') {
            return Err(format!(
                "{s:?}: digests are not supported; give DOMAIN/PATH:TAG, {example}"
            ));
        }
        let last_slash = s.rfind('/').unwrap_or(0);
        let (repository, tag) = match s[last_slash..].rfind(':') {
            Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
            None => return Err(format!("{s:?}: no tag; give DOMAIN/PATH:TAG, {example}")),
        };
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !tag_ok {
            return Err(format!(
                "{s:?}: tag {tag:?} must be 1-128 of letters, digits, '_', '.', '-' \
                 and not start with '.' or '-'"
            ));
        }
        let mut parts = repository.split('/');
        let domain = parts.next().unwrap_or_default();
        let path: Vec<&str> = parts.collect();
        if path.is_empty() || !domain_ok(domain) {
            return Err(format!(
                "{s:?}: the name must start with a registry domain (\"localhost\", a name \
                 with a '.', or HOST:PORT) followed by a path, {example}; containerd's CRI \
                 would otherwise look for it under docker.io"
            ));
        }
        if let Some(bad) = path.iter().find(|c| !path_component_ok(c)) {
            return Err(format!(
                "{s:?}: path component {bad:?} must be lowercase letters and digits, \
                 separated by '.', '_' or '-'"
            ));
        }
        if repository.len() > 255 {
            return Err(format!("{s:?}: the name is longer than 255 characters"));
        }
        Ok(ImageRef {
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }

    /// The archive's file name in the image: every character outside
    /// `[A-Za-z0-9._-]` becomes `_`, then `.oci.tar`
    /// (`localhost/kiln/busybox:1.35` → `localhost_kiln_busybox_1.35.oci.tar`).
    pub fn file_name(&self) -> String {
        let s: String = self
            .to_string()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{s}.oci.tar")
    }
}

/// A validated `[[container_image]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The reference it is imported under.
    pub reference: ImageRef,
    /// Packages whose files make the single layer (each must be in the lock).
    pub packages: Vec<String>,
    /// Default arguments (`config.Cmd`); `None` leaves it unset.
    pub cmd: Option<Vec<String>>,
    /// Entrypoint (`config.Entrypoint`); `None` leaves it unset.
    pub entrypoint: Option<Vec<String>>,
    /// Environment; `PATH` defaults to [`DEFAULT_PATH`].
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute), if any.
    pub workdir: Option<String>,
}

impl ImageSpec {
    /// `config.Env` as the OCI config wants it: `KEY=VALUE`, sorted by key.
    pub fn env_list(&self) -> Vec<String> {
        let mut env = self.env.clone();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.to_string());
        env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// A `[[container_image]]` entry the profile cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct SpecError {
    /// Dotted field name, e.g. `container_image[0].ref`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn package_name_ok(name: &str) -> bool {
    name.len() >= 2
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// Validates every `[[container_image]]` entry of a profile; two entries may
/// not share a reference or an archive file name.
pub fn validate_images(files: &[ContainerImageFile]) -> Result<Vec<ImageSpec>, SpecError> {
    let mut out: Vec<ImageSpec> = Vec::new();
    let mut names = BTreeSet::new();
    for (i, f) in files.iter().enumerate() {
        let err = |field: &str, message: String| SpecError {
            field: format!("container_image[{i}].{field}"),
            message,
        };
        let reference = ImageRef::parse(&f.reference).map_err(|m| err("ref", m))?;
        if !names.insert(reference.file_name()) {
            return Err(err(
                "ref",
                format!(
                    "{:?}: another [[container_image]] has the same reference or archive name {}",
                    f.reference,
                    reference.file_name()
                ),
            ));
        }
        if f.packages.is_empty() {
            return Err(err(
                "packages",
                "list at least one package, e.g. [\"busybox-static\"]".into(),
            ));
        }
        for (j, p) in f.packages.iter().enumerate() {
            if !package_name_ok(p) {
                return Err(err(
                    &format!("packages[{j}]"),
                    format!("{p:?} is not a Debian package name"),
                ));
            }
        }
        for (field, argv) in [("cmd", &f.cmd), ("entrypoint", &f.entrypoint)] {
            if let Some(argv) = argv {
                if argv.first().is_none_or(|a| a.is_empty()) {
                    return Err(err(
                        field,
                        "give the program and its arguments, e.g. [\"/bin/busybox\", \"sh\"], \
                         or leave the field out"
                            .into(),
                    ));
                }
            }
        }
        for k in f.env.keys() {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(err(
                    &format!("env.{k}"),
                    format!("{k:?} is not an environment variable name (letters, digits, '_')"),
                ));
            }
        }
        if let Some(w) = &f.workdir {
            if !w.starts_with('/') || w.contains('\0') {
                return Err(err(
                    "workdir",
                    format!("{w:?}: give an absolute path, e.g. \"/\""),
                ));
            }
        }
        let mut packages = f.packages.clone();
        packages.sort();
        packages.dedup();
        out.push(ImageSpec {
            reference,
            packages,
            cmd: f.cmd.clone(),
            entrypoint: f.entrypoint.clone(),
            env: f.env.clone(),
            workdir: f.workdir.clone(),
        });
    }
    Ok(out)
}
