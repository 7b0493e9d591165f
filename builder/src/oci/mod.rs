//! OCI image archives made from Debian packages, for containerd inside the
//! image.
//!
//! A profile's `[[container_image]]` names packages from its lock; their files
//! (read by the same .deb unpacker as the root, merged /usr, the profile's
//! `exclude_paths`) become one layer. The result is an OCI image layout in a
//! tar file (`oci-layout`, `index.json`, `blobs/sha256/...`) that
//! `kiln-agent images import` reads (as would `ctr images import`). Everything
//! is derived from the packages, the entry and the build epoch, so the bytes
//! are the same on every build.
//!
//! The archives go to [`IMAGES_DIR`] in the root, listed in [`LIST_FILE`]
//! (`<file> <ref>` per line) for `kiln-images.service`
//! (overlays/base, `kiln-agent images import`), which imports them into
//! containerd's `k8s.io` namespace at boot, naming each image by its line's
//! ref and pointing it at the index entry this module annotates with that
//! ref. On a node that runs k3s on its embedded containerd, k3s imports them
//! instead ([`k3s`]).

pub mod k3s;
mod tarball;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::fetch::Fetched;
use crate::tree::{effects, FileTree, Node, TreeError};
use crate::unpack::{self, InsertRules, UnpackError};

// The `[[container_image]]` entries are profile settings; these keep the
// names at the module that builds the images.
pub use crate::profile::container_image::{
    validate_images, ImageRef, ImageSpec, SpecError, DEFAULT_PATH,
};
pub use tarball::write_tree;

/// Where the archives are in the root.
pub const IMAGES_DIR: &str = "usr/share/kiln/images";
/// The list `kiln-images.service` reads: `<file name> <ref>` per line, sorted.
pub const LIST_FILE: &str = "usr/share/kiln/images/images.list";

/// OCI media types used here.
pub mod media {
    /// `index.json`.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// The image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// The image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// A gzip-compressed layer.
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
}

/// Annotation containerd's importer names the image by.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the tag (what `umoci` and `skopeo` select by).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors while making container images.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A package of a `[[container_image]]` is not locked for this arch.
    #[error(
        "{profile}: container_image {reference:?}: package {package:?} is not in the lock \
         {lock} for {arch}; add it to `[packages] include` (or \
         `packages.arch.{arch}.include`) and run `kiln lock {profile}`"
    )]
    NotLocked {
        /// The profile.
        profile: PathBuf,
        /// The lock.
        lock: PathBuf,
        /// The image reference.
        reference: String,
        /// The missing package.
        package: String,
        /// The arch being built.
        arch: Arch,
    },
    /// A package could not be read or clashes with another one in the layer.
    #[error("container_image {reference:?}: {source}")]
    Unpack {
        /// The image reference.
        reference: String,
        /// What went wrong.
        source: Box<UnpackError>,
    },
    /// The archive could not be placed in the root.
    #[error("container_image {reference:?}: {source}")]
    Tree {
        /// The image reference.
        reference: String,
        /// What went wrong.
        source: Box<TreeError>,
    },
    /// Writing the layer or archive failed (a path tar cannot store, ...).
    #[error("container_image {reference:?}: {what}: {source}")]
    Write {
        /// The image reference.
        reference: String,
        /// Which part was being written.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A content descriptor (`mediaType`, `digest`, `size`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform (only in the index).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (only in the index).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    fn of(media_type: &str, blob: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest(blob),
            size: blob.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// `platform` of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    /// GOARCH name (`amd64`, `arm64`).
    pub architecture: String,
    /// Always `linux`.
    pub os: String,
}

#[derive(Serialize)]
struct Index<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
struct RunConfig<'a> {
    #[serde(rename = "Env")]
    env: Vec<String>,
    #[serde(rename = "Entrypoint", skip_serializing_if = "Option::is_none")]
    entrypoint: Option<&'a [String]>,
    #[serde(rename = "Cmd", skip_serializing_if = "Option::is_none")]
    cmd: Option<&'a [String]>,
    #[serde(rename = "WorkingDir", skip_serializing_if = "Option::is_none")]
    working_dir: Option<&'a str>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: String,
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    created: String,
    architecture: &'a str,
    os: &'a str,
    config: RunConfig<'a>,
    rootfs: RootFs,
    history: Vec<History>,
}

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// RFC 3339 UTC time of a Unix timestamp (`1970-01-01T00:00:00Z`), computed
/// from the epoch alone so no clock or time zone is consulted.
pub fn rfc3339(epoch: i64) -> String {
    kiln_contract::civil::DateTime::from_unix(epoch).rfc3339()
}

/// The layer's file tree: the packages' files as the root would get them
/// (merged /usr with its top-level links, `rules` applied), times clamped
/// to `epoch`.
pub fn layer_tree(
    debs: Vec<unpack::Deb>,
    rules: &InsertRules,
    epoch: i64,
) -> Result<FileTree, UnpackError> {
    let mut tree = FileTree::new(epoch);
    for deb in debs {
        unpack::insert_deb(&mut tree, deb, rules)?;
    }
    effects::merged_usr_links(&mut tree).map_err(|source| UnpackError::Tree {
        package: "kiln:merged-usr".into(),
        source,
    })?;
    Ok(tree)
}

/// One built archive and what it contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciArchive {
    /// The reference it is imported under.
    pub reference: ImageRef,
    /// The archive bytes (an OCI image layout as a tar file).
    pub bytes: Vec<u8>,
    /// The manifest's descriptor as listed in `index.json`.
    pub manifest: Descriptor,
    /// The config blob's descriptor.
    pub config: Descriptor,
    /// The gzip layer's descriptor.
    pub layer: Descriptor,
    /// `sha256:` of the uncompressed layer tar (`rootfs.diff_ids[0]`).
    pub diff_id: String,
}

/// Builds the OCI archive of `spec` with `layer` as its only layer, for
/// `arch`; `epoch` is the image's `created` time and every tar entry's mtime.
pub fn build_archive(
    spec: &ImageSpec,
    layer: &FileTree,
    arch: Arch,
    epoch: i64,
) -> Result<OciArchive, OciError> {
    let reference = spec.reference.to_string();
    let write_err = |what: &str| {
        let reference = reference.clone();
        let what = what.to_string();
        move |source| OciError::Write {
            reference,
            what,
            source,
        }
    };
    let layer_tar = write_tree(layer, Vec::new()).map_err(write_err("layer tar"))?;
    let diff_id = digest(&layer_tar);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &layer_tar).map_err(write_err("layer gzip"))?;
    let layer_gz = gz.finish().map_err(write_err("layer gzip"))?;
    let created = rfc3339(epoch);
    let config = ImageConfig {
        created: created.clone(),
        architecture: arch.deb_arch(),
        os: "linux",
        config: RunConfig {
            env: spec.env_list(),
            entrypoint: spec.entrypoint.as_deref(),
            cmd: spec.cmd.as_deref(),
            working_dir: spec.workdir.as_deref(),
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![diff_id.clone()],
        },
        history: vec![History {
            created,
            created_by: format!("kiln: packages {}", spec.packages.join(" ")),
        }],
    };
    let json = |v: &dyn JsonDoc, what: &str| -> Result<Vec<u8>, OciError> {
        v.to_json().map_err(|e| OciError::Write {
            reference: reference.clone(),
            what: what.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    };
    let config_json = json(&config, "config")?;
    let config_desc = Descriptor::of(media::CONFIG, &config_json);
    let layer_desc = Descriptor::of(media::LAYER_GZIP, &layer_gz);
    let manifest = Manifest {
        schema_version: 2,
        media_type: media::MANIFEST,
        config: config_desc.clone(),
        layers: vec![layer_desc.clone()],
    };
    let manifest_json = json(&manifest, "manifest")?;
    let mut manifest_desc = Descriptor::of(media::MANIFEST, &manifest_json);
    manifest_desc.platform = Some(Platform {
        architecture: arch.deb_arch().to_string(),
        os: "linux".into(),
    });
    manifest_desc.annotations = BTreeMap::from([
        (ANNOTATION_CONTAINERD_NAME.to_string(), reference.clone()),
        (ANNOTATION_REF_NAME.to_string(), spec.reference.tag.clone()),
    ]);
    let index = Index {
        schema_version: 2,
        media_type: media::INDEX,
        manifests: vec![manifest_desc.clone()],
    };
    let index_json = json(&index, "index.json")?;

    // The layout as a tree, so the archive is written like the layer:
    // sorted, fixed owners, modes and times.
    let mut layout = FileTree::new(epoch);
    let mut put = |path: String, data: Vec<u8>| {
        layout
            .insert(&path, Node::file(data, 0o644, epoch, "kiln:oci"))
            .map_err(|source| OciError::Tree {
                reference: reference.clone(),
                source: Box::new(source),
            })
    };
    put(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )?;
    put("index.json".into(), index_json)?;
    for (desc, blob) in [
        (&manifest_desc, manifest_json),
        (&config_desc, config_json),
        (&layer_desc, layer_gz),
    ] {
        let hex = desc.digest.trim_start_matches("sha256:");
        put(format!("blobs/sha256/{hex}"), blob)?;
    }
    let bytes = write_tree(&layout, Vec::new()).map_err(write_err("archive tar"))?;
    Ok(OciArchive {
        reference: spec.reference.clone(),
        bytes,
        manifest: manifest_desc,
        config: config_desc,
        layer: layer_desc,
        diff_id,
    })
}

/// The JSON documents of a layout, behind one object-safe trait so a
/// single closure can serialise them all with the same error mapping.
trait JsonDoc {
    fn to_json(&self) -> serde_json::Result<Vec<u8>>;
}

impl<T: Serialize> JsonDoc for T {
    fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }
}

/// What the build needs to find a `[[container_image]]`'s packages.
#[derive(Debug, Clone, Copy)]
pub struct PackageSource<'a> {
    /// The arch's locked packages, verified in the cache.
    pub fetched: &'a [Fetched],
    /// The profile (named in errors).
    pub profile: &'a Path,
    /// The lock (named in errors).
    pub lock: &'a Path,
}

/// Builds every image of `images` for `arch` and puts the archives and
/// [`LIST_FILE`] into `root`, and [`k3s::K3S_LINKS_FILE`] when the root's agent.toml
/// (written earlier in the tree stage) says k3s imports them. Does nothing when
/// `images` is empty.
pub fn add_to_root(
    root: &mut FileTree,
    images: &[ImageSpec],
    source: PackageSource<'_>,
    rules: &InsertRules,
    arch: Arch,
    epoch: i64,
) -> Result<Vec<OciArchive>, OciError> {
    let mut built = Vec::new();
    for spec in images {
        let reference = spec.reference.to_string();
        let mut debs = Vec::new();
        for name in &spec.packages {
            let f = source
                .fetched
                .iter()
                .find(|f| f.package.name == *name)
                .ok_or_else(|| OciError::NotLocked {
                    profile: source.profile.to_path_buf(),
                    lock: source.lock.to_path_buf(),
                    reference: reference.clone(),
                    package: name.clone(),
                    arch,
                })?;
            debs.push(
                unpack::read_deb(&f.path, name).map_err(|source| OciError::Unpack {
                    reference: reference.clone(),
                    source: Box::new(source),
                })?,
            );
        }
        let layer = layer_tree(debs, rules, epoch).map_err(|source| OciError::Unpack {
            reference: reference.clone(),
            source: Box::new(source),
        })?;
        built.push(build_archive(spec, &layer, arch, epoch)?);
    }
    if built.is_empty() {
        return Ok(built);
    }
    let mut list = String::new();
    let mut sorted: Vec<&OciArchive> = built.iter().collect();
    sorted.sort_by_key(|a| a.reference.file_name());
    for a in &sorted {
        let name = a.reference.file_name();
        list.push_str(&format!("{name} {}\n", a.reference));
        let path = format!("{IMAGES_DIR}/{name}");
        root.insert(&path, Node::file(a.bytes.clone(), 0o644, epoch, "kiln:oci"))
            .map_err(|source| OciError::Tree {
                reference: a.reference.to_string(),
                source: Box::new(source),
            })?;
    }
    root.insert(
        LIST_FILE,
        Node::file(list.into_bytes(), 0o644, epoch, "kiln:oci"),
    )
    .map_err(|source| OciError::Tree {
        reference: LIST_FILE.to_string(),
        source: Box::new(source),
    })?;
    k3s::hand_to_k3s(root, &built, epoch)?;
    Ok(built)
}

#[cfg(test)]
mod tests;
