//! The container runtime: containerd's config and the CRI `Version` it answers, checked
//! against the cluster's Kubernetes version from the image's agent.toml with containerd's
//! support matrix ([`kiln_contract::kubernetes`], which names its source).
//!
//! Which containerd is checked follows the image's `[cluster]`: the image's own
//! (`/run/containerd/containerd.sock`, configured by `/etc/containerd/config.toml`), or,
//! with `kind = "k3s"` and `containerd = "k3s"`, the one embedded in k3s, which k3s
//! configures itself and starts only once kiln-cluster starts k3s after enrollment. Until
//! then its checks are SKIP, not FAIL: nothing is wrong yet, and the boot's preflight
//! should not wait for a step that comes later by design.

use std::io;

use kiln_contract::kubernetes::{self, ContainerdVersion, KubeVersion, Support, SOURCE};

use super::checks::read_text;
use super::{Outcome, PreflightSys};
use crate::config::settings::{parse_settings, ClusterSettings, SETTINGS_PATH};
use crate::grpc::cri::{self, CriVersion};
use crate::grpc::CallError;

/// The image's containerd configuration.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The image's containerd's gRPC socket (CRI included).
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// The socket of k3s's embedded containerd.
pub const K3S_CONTAINERD_SOCKET: &str = "/run/k3s/containerd/containerd.sock";

/// Where k3s writes its embedded containerd's configuration.
pub const K3S_CONTAINERD_CONFIG: &str = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml";

/// The most of agent.toml read (it is a few hundred bytes).
const SETTINGS_LIMIT: usize = 64 * 1024;

/// The image's `[cluster]` (None: no cluster, or no agent.toml); an error says why the
/// file could not be used (kiln-config and kiln-cluster report it too).
fn cluster(sys: &mut dyn PreflightSys) -> Result<Option<ClusterSettings>, String> {
    match sys.read_prefix(SETTINGS_PATH, SETTINGS_LIMIT) {
        Ok(bytes) => std::str::from_utf8(&bytes)
            .map_err(|e| format!("not UTF-8 (at byte {})", e.valid_up_to()))
            .and_then(parse_settings)
            .map(|s| s.cluster)
            .map_err(|e| format!("{SETTINGS_PATH}: {e}")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{SETTINGS_PATH}: {e}")),
    }
}

/// containerd's config uses systemd cgroups for runc and the overlayfs snapshotter, and
/// does not disable the CRI plugin; with k3s's embedded containerd, k3s writes the config.
pub fn containerd_config(sys: &mut dyn PreflightSys) -> Outcome {
    if matches!(cluster(sys), Ok(Some(c)) if c.k3s_containerd()) {
        return Outcome::Skip(format!(
            "k3s's embedded containerd: k3s writes its config ({K3S_CONTAINERD_CONFIG}) itself"
        ));
    }
    image_config(sys)
}

fn lookup<'a>(table: &'a toml::Table, keys: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = keys.split_first()?;
    let mut v = table.get(*first)?;
    for k in rest {
        v = v.as_table()?.get(*k)?;
    }
    Some(v)
}

fn toml_path(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| {
            if k.contains('.') {
                format!("{k:?}")
            } else {
                (*k).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The image's containerd config: systemd cgroups for runc, the overlayfs snapshotter, the
/// CRI plugin not disabled. containerd 1.x reads version 1 and 2 files, 2.x version 3
/// (and migrates a version 2 file when it starts).
fn image_config(sys: &mut dyn PreflightSys) -> Outcome {
    let text = match read_text(sys, CONTAINERD_CONFIG) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Outcome::Fail(format!(
                "no {CONTAINERD_CONFIG}: containerd's defaults use cgroupfs, not the \
                 systemd cgroup driver kubelet is set up for"
            ))
        }
        Err(e) => return Outcome::Fail(format!("{CONTAINERD_CONFIG}: {e}")),
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let msg = e.message().trim().replace('\n', " ");
            let line = e
                .span()
                .map(|s| format!(" (line {})", text[..s.start].lines().count().max(1)))
                .unwrap_or_default();
            return Outcome::Fail(format!(
                "{CONTAINERD_CONFIG} is not valid TOML{line}: {msg}"
            ));
        }
    };
    let version = table
        .get("version")
        .and_then(toml::Value::as_integer)
        .unwrap_or(1);
    // Where the runc options and the snapshotter live, by config schema version.
    let (cri, runc_opts, snapshotter): (&str, Vec<&str>, Vec<&str>) = match version {
        1 | 2 => {
            let cri = if version == 1 {
                "cri"
            } else {
                "io.containerd.grpc.v1.cri"
            };
            (
                cri,
                vec!["plugins", cri, "containerd", "runtimes", "runc", "options"],
                vec!["plugins", cri, "containerd", "snapshotter"],
            )
        }
        3 => (
            "io.containerd.cri.v1.runtime",
            vec![
                "plugins",
                "io.containerd.cri.v1.runtime",
                "containerd",
                "runtimes",
                "runc",
                "options",
            ],
            vec!["plugins", "io.containerd.cri.v1.images", "snapshotter"],
        ),
        v => {
            return Outcome::Fail(format!(
                "{CONTAINERD_CONFIG}: unknown config version {v} (1, 2 or 3)"
            ))
        }
    };
    let mut problems = Vec::new();
    let disabled = table
        .get("disabled_plugins")
        .and_then(toml::Value::as_array)
        .map(|a| {
            a.iter().filter_map(toml::Value::as_str).any(|p| {
                p == "cri"
                        || p == cri
                        || p == "io.containerd.grpc.v1.cri"
                        // containerd 2's image half of the CRI.
                        || (version == 3 && p == "io.containerd.cri.v1.images")
            })
        })
        .unwrap_or(false);
    if disabled {
        problems.push("disabled_plugins turns the CRI plugin off".to_string());
    }
    let mut cgroup_keys = runc_opts.clone();
    cgroup_keys.push("SystemdCgroup");
    match lookup(&table, &cgroup_keys).and_then(toml::Value::as_bool) {
        Some(true) => {}
        other => problems.push(format!(
            "SystemdCgroup is {} for the runc runtime, needs true ([{}])",
            other.map_or("not set".to_string(), |b| b.to_string()),
            toml_path(&runc_opts)
        )),
    }
    let snap = match lookup(&table, &snapshotter) {
        None => "overlayfs",
        Some(v) => v.as_str().unwrap_or("(not a string)"),
    };
    if snap != "overlayfs" {
        problems.push(format!(
            "snapshotter is {snap:?}, needs \"overlayfs\" ({})",
            toml_path(&snapshotter)
        ));
    }
    if problems.is_empty() {
        Outcome::Pass(format!(
            "SystemdCgroup = true, snapshotter overlayfs (config version {version})"
        ))
    } else {
        Outcome::Fail(format!("{CONTAINERD_CONFIG}: {}", problems.join("; ")))
    }
}

/// containerd answers the CRI `RuntimeService/Version` call on its socket, and its version
/// supports the cluster's Kubernetes version.
pub fn containerd_cri(sys: &mut dyn PreflightSys) -> Outcome {
    let settings = cluster(sys);
    let k3s = matches!(&settings, Ok(Some(c)) if c.k3s_containerd());
    let socket = if k3s {
        K3S_CONTAINERD_SOCKET
    } else {
        CONTAINERD_SOCKET
    };
    let mut conn = match sys.connect(socket) {
        Ok(c) => c,
        Err(e) if k3s && e.kind() == io::ErrorKind::NotFound => {
            return Outcome::Skip(format!(
                "k3s's embedded containerd is not running yet (no socket {socket}): \
                 kiln-cluster starts k3s once the node has enrolled; run `kiln-agent \
                 preflight` again then"
            ))
        }
        Err(e) if k3s && e.kind() == io::ErrorKind::ConnectionRefused => {
            return Outcome::Skip(format!(
                "k3s's embedded containerd is not running ({socket}: connection refused): \
                 kiln-cluster starts k3s; `kiln-agent cluster status` says where it is"
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Outcome::Fail(format!("no socket {socket} (containerd not running?)"))
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Outcome::Fail(format!(
                "{socket}: connection refused (containerd not listening)"
            ))
        }
        Err(e) => return Outcome::Fail(format!("connecting to {socket}: {e}")),
    };
    match cri::cri_version(&mut conn) {
        Ok(v) => supports(&v, settings, k3s),
        Err(CallError::Io(_, e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Outcome::Fail(format!("CRI Version call on {socket}: no answer in time"))
        }
        Err(e @ CallError::Grpc { code: 12, .. }) => Outcome::Fail(format!(
            "CRI Version call on {socket}: {e} (is the CRI plugin disabled?)"
        )),
        Err(e) => Outcome::Fail(format!("CRI Version call on {socket}: {e}")),
    }
}

/// The verdict on the runtime `v` for the cluster in `settings` (`k3s`: it is k3s's
/// embedded containerd). Without a cluster, or with an agent.toml written before kiln
/// knew the cluster's version, there is nothing to check the version against.
fn supports(
    v: &CriVersion,
    settings: Result<Option<ClusterSettings>, String>,
    k3s: bool,
) -> Outcome {
    let found = format!(
        "{} {} (CRI {})",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    );
    let kube: KubeVersion = match settings {
        Err(e) => {
            return Outcome::Warn(format!(
                "{found}; not checked against the cluster's Kubernetes version: {e}"
            ))
        }
        Ok(None) => return Outcome::Pass(found),
        Ok(Some(c)) => match c.kubernetes {
            Some(k) => k,
            None => return Outcome::Pass(found),
        },
    };
    if v.runtime_name != "containerd" {
        return Outcome::Warn(format!(
            "{found}: not containerd, so not checked against Kubernetes {kube} ({SOURCE} \
             covers containerd only)"
        ));
    }
    let version = match ContainerdVersion::parse(&v.runtime_version) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Warn(format!(
                "{found}: {e}; not checked against Kubernetes {kube}"
            ))
        }
    };
    match kubernetes::check(kube, version) {
        Ok(Support::Listed(_)) => Outcome::Pass(format!("{found}, supports Kubernetes {kube}")),
        Ok(Support::Untested(row)) => Outcome::Warn(format!(
            "{found} for Kubernetes {kube}: a newer containerd line than {SOURCE} lists for \
             Kubernetes {}.{} ({}); it speaks the same CRI, but upstream has not tested the pair",
            row.kubernetes.0,
            row.kubernetes.1,
            row.ranges()
        )),
        Err(e) => {
            // Where the runtime comes from decides what to change.
            let fix = if k3s {
                "k3s brings its own containerd: build the image with a k3s release of a \
                 Kubernetes version that containerd supports, or set [cluster] containerd = \
                 \"image\""
            } else {
                "the image's containerd comes from the profile's packages: take a supported \
                 one from another suite with [packages.from] (e.g. containerd 2.x from forky), \
                 or build the image for a Kubernetes version this containerd supports"
            };
            Outcome::Fail(format!("{found}: {e} ({fix})"))
        }
    }
}
