//! Stage "tree": the unpacked root made into the node's root. The steps are
//! in `crate::tree` and `crate::oci`; their order is decided here, because
//! later steps read what earlier ones wrote (the effects see the overlays,
//! the module selection sees the final kernel tree).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::read_file;
use super::inputs::{BootParts, Inputs};
use super::recipe::Job;
use super::BuildError;
use crate::output::manifest::FileDigest;
use crate::tree::kmod::ModuleSelection;
use crate::tree::{self, FileTree, Node};
use crate::unpack::InsertRules;

/// Stage "tree": the finished root.
#[derive(Debug)]
pub(super) struct RootTree {
    /// The root's files, as they go into the filesystem.
    pub tree: FileTree,
    /// The kernel modules kept in the root, and those the initramfs loads.
    pub modules: ModuleSelection,
    /// The root's os-release (the UKI's `.osrel`).
    pub os_release: Arc<[u8]>,
    /// The `[[artifact]]` files placed, by artifact name.
    pub artifacts: Vec<(String, FileDigest)>,
}

/// Stage "tree": overlays, the agent, artifacts, the node and cluster
/// settings, container images, what maintainer scripts would have done and
/// the kernel modules, in that order.
pub(super) fn finish(
    job: &Job<'_>,
    inputs: &Inputs,
    parts: &BootParts,
    mut root: FileTree,
    rules: &InsertRules,
) -> Result<RootTree, BuildError> {
    let profile = job.profile;
    let vars = template_vars(job, &parts.kernel.release);
    for o in &profile.overlays {
        tree::overlay::apply(&mut root, &o.name, &o.dir, &vars)?;
    }
    root.insert(
        "usr/bin/kiln-agent",
        Node::file(inputs.agent.clone(), 0o755, root.epoch(), "kiln:agent"),
    )?;
    let artifacts = place_artifacts(&mut root, inputs)?;
    tree::node::apply_profile(&mut root, profile)?;
    if let Some(cluster) = &profile.agent.cluster {
        let containerd = inputs
            .packages
            .iter()
            .find(|f| f.package.name == "containerd")
            .map(|f| f.package.version.as_str());
        tree::cluster::check_runtime(cluster, containerd, &profile.path, &job.lock.path)?;
        tree::cluster::apply(&mut root, cluster, &profile.path)?;
    }
    let epoch = root.epoch();
    crate::oci::add_to_root(
        &mut root,
        &profile.container_images,
        crate::oci::PackageSource {
            fetched: &inputs.packages,
            profile: &profile.path,
            lock: &job.lock.path,
        },
        rules,
        job.arch,
        epoch,
    )?;
    tree::effects::apply(&mut root)?;
    tree::sysusers::apply(&mut root)?;
    tree::units::apply(
        &mut root,
        &profile.systemd.enable,
        &profile.systemd.mask,
        &profile.systemd.default_target,
    )?;
    let modules = tree::kmod::select(
        &root,
        &profile.kernel.module_sets,
        &profile.kernel.custom_sets,
        job.arch,
    )?;
    tree::kmod::prune(&mut root, &modules)?;
    tree::kmod::write_index(&mut root, &modules)?;
    let os_release = root
        .read("usr/lib/os-release")
        .or_else(|_| root.read("etc/os-release"))?;
    Ok(RootTree {
        tree: root,
        modules,
        os_release,
        artifacts,
    })
}

/// The overlays' template variables: the profile's, plus the build's own
/// unless the profile sets them.
fn template_vars(job: &Job<'_>, kernel_release: &str) -> BTreeMap<String, serde_json::Value> {
    let mut vars = job.profile.vars.clone();
    for (k, v) in [
        ("arch", job.arch.name()),
        ("deb_arch", job.arch.deb_arch()),
        ("profile", job.profile.name.as_str()),
        ("kernel_release", kernel_release),
    ] {
        vars.entry(k.to_string())
            .or_insert_with(|| serde_json::Value::String(v.to_string()));
    }
    vars
}

/// Places every fetched `[[artifact]]` in the root; returns their digests
/// for the manifest.
fn place_artifacts(
    root: &mut FileTree,
    inputs: &Inputs,
) -> Result<Vec<(String, FileDigest)>, BuildError> {
    let mut placed = Vec::new();
    for a in &inputs.artifacts {
        let data: Arc<[u8]> = read_file(&a.path)?.into();
        placed.push((
            a.artifact.name.clone(),
            FileDigest {
                file: a.artifact.dest.clone(),
                size: data.len() as u64,
                sha256: a.artifact.sha256.clone(),
            },
        ));
        tree::artifact::place(root, &a.artifact, data)?;
    }
    Ok(placed)
}
