//! The manifest published next to the image: where it is, reading and
//! checking it, and what the report shows of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{InspectError, ManifestSummary, PackageLine, SuiteCount};
use crate::output::manifest::{self, Manifest};

/// The manifest's path for an image: `qemu-x86_64.raw` (or `.raw.zst`,
/// `.qcow2`, `.vhd`, `.gce.tar.gz`) → `qemu-x86_64.manifest.json` in the
/// same folder.
pub fn manifest_beside(image: &Path) -> PathBuf {
    const SUFFIXES: [&str; 5] = [".gce.tar.gz", ".raw.zst", ".raw", ".qcow2", ".vhd"];
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .map(str::to_string)
        .or_else(|| image.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or(name);
    image.with_file_name(format!("{stem}.manifest.json"))
}

/// Refuses a manifest of another image: another arch than the image's root
/// partition, or another disk GUID (kiln derives it from the build's inputs,
/// so another GUID is another build). `arch` is `None` when the GPT has no
/// root partition; the rest of the report says so.
pub fn check_belongs(
    path: &Path,
    m: &Manifest,
    disk_guid: &str,
    arch: Option<crate::arch::Arch>,
) -> Result<(), InspectError> {
    let other = |what: String| InspectError::Manifest {
        path: path.to_path_buf(),
        what: format!(
            "{what}: it describes another image; pass the manifest written with this image, \
             or --no-manifest"
        ),
    };
    if let Some(arch) = arch.filter(|a| a.name() != m.arch) {
        return Err(other(format!(
            "the manifest is of {}-{}, but the image is an {arch} image",
            m.name, m.arch
        )));
    }
    if !m.disk.guid.eq_ignore_ascii_case(disk_guid) {
        return Err(other(format!(
            "the manifest's disk GUID is {}, the image's {disk_guid}",
            m.disk.guid
        )));
    }
    Ok(())
}

/// Reads and checks a manifest file.
pub fn read_manifest(path: &Path) -> Result<Manifest, InspectError> {
    let fail = |what: String| InspectError::Manifest {
        path: path.to_path_buf(),
        what,
    };
    let text = std::fs::read(path).map_err(|source| InspectError::Io {
        path: path.to_path_buf(),
        action: "reading the manifest",
        source,
    })?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| fail(format!("not a kiln manifest: not JSON: {e}")))?;
    let schema = value
        .get("schema")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| fail("not a kiln manifest: no numeric `schema` field".into()))?;
    if schema != u64::from(manifest::SCHEMA) {
        return Err(fail(format!(
            "manifest schema {schema}, but this kiln reads schema {}; rebuild the image with \
             this kiln, or pass --no-manifest to inspect the image alone",
            manifest::SCHEMA
        )));
    }
    serde_json::from_value(value).map_err(|e| fail(format!("not a kiln manifest: {e}")))
}

/// What the report shows of the manifest at `path`.
pub(super) fn summarize(path: &Path, m: &Manifest) -> ManifestSummary {
    ManifestSummary {
        path: path.to_path_buf(),
        kiln_version: m.kiln_version.clone(),
        rustc: m.toolchain.as_ref().map(|t| t.rustc.clone()),
        name: m.name.clone(),
        version: m.version.clone(),
        arch: m.arch.clone(),
        profile: m.profile.file.clone(),
        epoch: m.epoch,
        kernel_package: m.kernel.package.clone(),
        kernel_version: m.kernel.version.clone(),
        kernel_release: m.kernel.release.clone(),
        packages: m
            .packages
            .iter()
            .map(|p| PackageLine {
                name: p.name.clone(),
                version: p.version.clone(),
                arch: p.arch.clone(),
                role: p.role.clone(),
                suite: p.suite.clone(),
            })
            .collect(),
        suites: suite_counts(m),
    }
}

/// Packages per suite, most first: the base suite the image is built on
/// leads, and a suite that gave few (an extra suite's pins) stands out.
fn suite_counts(m: &Manifest) -> Vec<SuiteCount> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in m.packages.iter().filter(|p| !p.suite.is_empty()) {
        *counts.entry(&p.suite).or_default() += 1;
    }
    let mut out: Vec<SuiteCount> = counts
        .into_iter()
        .map(|(suite, packages)| SuiteCount {
            suite: suite.to_string(),
            packages,
        })
        .collect();
    out.sort_by(|a, b| {
        b.packages
            .cmp(&a.packages)
            .then_with(|| a.suite.cmp(&b.suite))
    });
    out
}
