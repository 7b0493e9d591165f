//! `/usr/lib/kiln/agent.toml`: the image's own settings, which the builder writes from
//! the profile and the agent reads at boot.
//!
//! ```toml
//! schema = 1
//! channels = ["cmdline", "esp", "cidata", "fw_cfg", "cloud"]   # precedence, highest first
//!
//! [cluster]                     # optional: join Kubernetes (kiln-cluster.service)
//! kind = "k3s"                  # "k3s" | "kubeadm"
//! role = "any"                  # "any" (the token decides) | "worker" | "server"
//! kubelet_args = ["max-pods=110"]
//! containerd = "image"          # k3s only: "image" | "k3s"
//! kubeadm_api = "v1beta4"       # kubeadm only: "v1beta3" | "v1beta4"
//! kubernetes = "1.36.4"         # the cluster's version (preflight checks containerd by it)
//!
//! [cluster.labels]
//! "kiln.dev/pool" = "edge"
//! ```
//!
//! [`SettingsFile`] is the file as serde types: the builder serializes it, the agent
//! deserializes it, so a field or a name cannot exist on one side only. Both sides turn
//! it into their own domain types; the checks both make (the names here, the kubelet
//! arguments) live here too. A missing file means every channel in [`ALL_CHANNELS`]
//! order and no cluster.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::kubernetes::KubeVersion;

/// The schema version the builder writes and the agent reads. An `i64`, TOML's integer,
/// so any version a file holds reaches the reader's version check as a number.
pub const SCHEMA: i64 = 1;

/// Where the settings live in the image.
pub const PATH: &str = "/usr/lib/kiln/agent.toml";

/// A name in agent.toml that is not one of its type's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// An unknown config channel.
    #[error("channels: unknown channel {0:?} (known: {known})", known = Channel::names())]
    Channel(String),
    /// An unknown value of a `[cluster]` key.
    #[error("{key} = {value:?}: must be {expected}")]
    Value {
        /// The dotted key, e.g. `cluster.kind`.
        key: &'static str,
        /// The value as written.
        value: String,
        /// The accepted names, with what they mean.
        expected: &'static str,
    },
}

/// Gives an enum its names in agent.toml, both ways; `From<_> for &str` is what serde's
/// `into` writes, and each enum's `TryFrom<String>` (serde's `try_from`) reads them.
macro_rules! names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name in agent.toml, in profiles and on the console.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// The value called `name`.
            pub fn from_name(name: &str) -> Option<$ty> {
                $ty::ALL.iter().copied().find(|v| v.name() == name)
            }

            /// The names, comma-separated, for messages.
            pub fn names() -> String {
                $ty::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl From<$ty> for &'static str {
            fn from(v: $ty) -> &'static str {
                v.name()
            }
        }
    };
}

/// Reads a `[cluster]` value by its name (serde's `try_from`): an unknown one is a
/// [`NameError::Value`] naming the key and the accepted names.
macro_rules! value_names {
    ($ty:ident, $key:literal, $expected:literal) => {
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(value: String) -> Result<$ty, NameError> {
                $ty::from_name(&value).ok_or(NameError::Value {
                    key: $key,
                    value,
                    expected: $expected,
                })
            }
        }
    };
}

/// A configuration channel: where the node finds its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Channel {
    /// `kiln.*` on the kernel command line.
    Cmdline,
    /// `kiln.toml` on the boot disk's EFI system partition.
    Esp,
    /// A NoCloud volume labelled `cidata`.
    Cidata,
    /// QEMU's fw_cfg item `opt/kiln/config`.
    FwCfg,
    /// The cloud provider's user-data (detected from DMI).
    Cloud,
}

names!(Channel {
    Cmdline => "cmdline",
    Esp => "esp",
    Cidata => "cidata",
    FwCfg => "fw_cfg",
    Cloud => "cloud",
});

impl TryFrom<String> for Channel {
    type Error = NameError;
    fn try_from(s: String) -> Result<Channel, NameError> {
        Channel::from_name(&s).ok_or(NameError::Channel(s))
    }
}

/// Every channel in the default precedence, highest first: what an image reads when
/// the profile does not choose (and when agent.toml is missing or unusable).
pub const ALL_CHANNELS: [Channel; 5] = [
    Channel::Cmdline,
    Channel::Esp,
    Channel::Cidata,
    Channel::FwCfg,
    Channel::Cloud,
];

/// The Kubernetes distribution the image joins with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum ClusterKind {
    /// k3s (`/usr/bin/k3s`, units `k3s-agent`/`k3s-server`).
    K3s,
    /// kubeadm (`kubeadm join`) with the image's kubelet.
    Kubeadm,
}

names!(ClusterKind {
    K3s => "k3s",
    Kubeadm => "kubeadm",
});

value_names!(ClusterKind, "cluster.kind", "\"k3s\" or \"kubeadm\"");

/// What nodes of the image may become in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum ImageRole {
    /// Whatever the node's enrollment token says.
    Any,
    /// Workers only: a server token is refused.
    Worker,
    /// Control-plane servers only: a worker token is refused.
    Server,
}

names!(ImageRole {
    Any => "any",
    Worker => "worker",
    Server => "server",
});

value_names!(
    ImageRole,
    "cluster.role",
    "\"any\" (the token decides), \"worker\" or \"server\""
);

/// Which containerd k3s talks to (kubeadm always uses the image's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Containerd {
    /// The image's own containerd (`unix:///run/containerd/containerd.sock`).
    Image,
    /// The containerd embedded in k3s.
    K3s,
}

names!(Containerd {
    Image => "image",
    K3s => "k3s",
});

value_names!(
    Containerd,
    "cluster.containerd",
    "\"image\" (the image's containerd) or \"k3s\" (k3s's own)"
);

/// The kubeadm configuration API version the join file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum KubeadmApi {
    /// `kubeadm.k8s.io/v1beta3` (kubeletExtraArgs is a map).
    V1beta3,
    /// `kubeadm.k8s.io/v1beta4` (kubeletExtraArgs is a list of name/value).
    V1beta4,
}

names!(KubeadmApi {
    V1beta3 => "v1beta3",
    V1beta4 => "v1beta4",
});

value_names!(
    KubeadmApi,
    "cluster.kubeadm_api",
    "\"v1beta3\" (kubeadm before 1.31) or \"v1beta4\""
);

/// agent.toml as written: every key the file may have, nothing more.
///
/// Unset keys are `None`; what they default to is the reader's business (the builder
/// writes every value out, so the agent reads what the build validated).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    /// The schema version ([`SCHEMA`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<i64>,
    /// Config channels to read, highest precedence first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<Channel>>,
    /// `[cluster]`: how the node joins Kubernetes; without it, it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterTable>,
    /// `[update]`: the image's A/B update settings; without it, the defaults of
    /// [`UpdateTable`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateTable>,
}

/// agent.toml's `[update]` table: how a new version proves itself after an update.
///
/// ```toml
/// [update]
/// image = "homelab"        # the profile's name: bundles for another image are refused
/// version = "1.4.0"        # this image's version (also os-release's IMAGE_VERSION)
/// tries = 3                # boot attempts of a new version before systemd-boot falls back
/// health_timeout_secs = 600
/// health = ["preflight", "overlay", "cluster"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTable {
    /// The image's name (the profile's `name`).
    pub image: String,
    /// The image's version, [`crate::version::ImageVersion`]'s grammar.
    pub version: String,
    /// Boot attempts a newly installed version gets ([`crate::boot::DEFAULT_TRIES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    /// Seconds a new version has to become healthy after boot before it counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_secs: Option<u64>,
    /// What "healthy" means; unset: preflight, plus the overlay when the node has
    /// `[enroll]` config and the cluster when the image has `[cluster]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<HealthCheck>>,
}

/// Default seconds a new version has to become healthy (10 minutes: a TCG-emulated
/// arm64 node takes minutes to join a cluster).
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 600;

/// One condition of a healthy boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum HealthCheck {
    /// `kiln-agent preflight` passes.
    Preflight,
    /// The WireGuard overlay is up (enrolled, interface configured).
    Overlay,
    /// The node has joined its Kubernetes cluster.
    Cluster,
}

names!(HealthCheck {
    Preflight => "preflight",
    Overlay => "overlay",
    Cluster => "cluster",
});
value_names!(
    HealthCheck,
    "update.health",
    "\"preflight\", \"overlay\" or \"cluster\""
);

/// agent.toml's `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTable {
    /// k3s or kubeadm.
    pub kind: ClusterKind,
    /// What nodes of the image may become (unset: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ImageRole>,
    /// Node labels of the image (the token's labels win on a clash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra kubelet arguments, `name=value` (see [`parse_kubelet_arg`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_args: Option<Vec<String>>,
    /// k3s only: which containerd it uses (unset: the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerd: Option<Containerd>,
    /// kubeadm only: its configuration API version (unset: v1beta4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeadm_api: Option<KubeadmApi>,
    /// The cluster's Kubernetes version, from the pinned artifacts or the profile; unset in
    /// files written before kiln knew it (then preflight checks no runtime version).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "kubernetes_field"
    )]
    pub kubernetes: Option<KubeVersion>,
}

/// Reads `cluster.kubernetes` and names the key when the value is not a version.
fn kubernetes_field<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<KubeVersion>, D::Error> {
    let text = String::deserialize(d)?;
    KubeVersion::parse(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("cluster.kubernetes = {e}")))
}

/// kubelet flags kiln-cluster sets on the node itself, so an image may not.
pub const RESERVED_KUBELET_ARGS: [&str; 2] = ["node-ip", "node-labels"];

/// A kubelet argument that cannot be passed on. Each message starts with the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeletArgError {
    /// No `=`.
    #[error(
        "{0:?} is not \"key=value\": write the kubelet flag without the leading --, e.g. \
         \"max-pods=110\""
    )]
    NoValue(String),
    /// The name is not a kubelet flag name.
    #[error(
        "{arg:?}: the key {name:?} must be lowercase letters, digits and '-', a kubelet flag \
         without the leading -- (e.g. \"max-pods\")"
    )]
    BadName {
        /// The argument.
        arg: String,
        /// Its name part.
        name: String,
    },
    /// A flag kiln-cluster sets.
    #[error(
        "{arg:?}: kiln-cluster sets {name} itself (node-ip is the overlay address, \
         node-labels come from the labels and the token); remove it"
    )]
    Reserved {
        /// The argument.
        arg: String,
        /// Its name part.
        name: String,
    },
    /// Control characters in the value (each entry is one argument).
    #[error("{0:?}: the value has control characters; one argument per entry")]
    ControlInValue(String),
    /// kubeadm v1beta3 takes each name once.
    #[error(
        "{0} is given twice; kubeadm_api = \"v1beta3\" takes each name once (use v1beta4 \
         for repeated flags)"
    )]
    Repeated(String),
}

/// Splits a kubelet argument `name=value` (the flag without its dashes) and checks it
/// is one kiln-cluster can pass on.
pub fn parse_kubelet_arg(arg: &str) -> Result<(&str, &str), KubeletArgError> {
    let Some((name, value)) = arg.split_once('=') else {
        return Err(KubeletArgError::NoValue(arg.to_string()));
    };
    let name_ok = !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if !name_ok {
        return Err(KubeletArgError::BadName {
            arg: arg.to_string(),
            name: name.to_string(),
        });
    }
    if RESERVED_KUBELET_ARGS.contains(&name) {
        return Err(KubeletArgError::Reserved {
            arg: arg.to_string(),
            name: name.to_string(),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(KubeletArgError::ControlInValue(arg.to_string()));
    }
    Ok((name, value))
}

/// Checks that no kubelet argument name repeats, as kubeadm's v1beta3 needs: its
/// kubeletExtraArgs is a map, so a repeated name would silently lose values.
pub fn check_unique_kubelet_args<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), KubeletArgError> {
    let mut seen = Vec::new();
    for name in names {
        if seen.contains(&name) {
            return Err(KubeletArgError::Repeated(name.to_string()));
        }
        seen.push(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> SettingsFile {
        SettingsFile {
            schema: Some(SCHEMA),
            channels: Some(vec![Channel::FwCfg, Channel::Cmdline]),
            cluster: Some(ClusterTable {
                kind: ClusterKind::Kubeadm,
                role: Some(ImageRole::Worker),
                labels: Some(BTreeMap::from([
                    ("kiln.dev/pool".to_string(), "edge".to_string()),
                    ("zone".to_string(), String::new()),
                ])),
                kubelet_args: Some(vec!["max-pods=110".into(), "v=2".into()]),
                containerd: Some(Containerd::Image),
                kubeadm_api: Some(KubeadmApi::V1beta3),
                kubernetes: Some(KubeVersion::parse("1.34.2").unwrap()),
            }),
            update: Some(UpdateTable {
                image: "homelab".into(),
                version: "1.4.0~rc1".into(),
                tries: Some(2),
                health_timeout_secs: Some(300),
                health: Some(vec![HealthCheck::Preflight, HealthCheck::Cluster]),
            }),
        }
    }

    #[test]
    fn round_trips_through_toml() {
        for file in [full(), SettingsFile::default()] {
            let text = toml::to_string(&file).unwrap();
            let back: SettingsFile = toml::from_str(&text).unwrap();
            assert_eq!(back, file, "{text}");
        }
        // Unset keys are left out rather than written empty.
        assert_eq!(toml::to_string(&SettingsFile::default()).unwrap(), "");
    }

    #[test]
    fn the_kubernetes_version_is_optional_and_checked() {
        // agent.toml from before the field: still read, no version.
        let old = "schema = 1\n[cluster]\nkind = \"k3s\"\ncontainerd = \"k3s\"\n";
        let file: SettingsFile = toml::from_str(old).unwrap();
        assert_eq!(file.cluster.unwrap().kubernetes, None);
        let file: SettingsFile =
            toml::from_str("[cluster]\nkind = \"k3s\"\nkubernetes = \"1.36.4\"\n").unwrap();
        let v = file.cluster.as_ref().and_then(|c| c.kubernetes).unwrap();
        assert_eq!(v.to_string(), "1.36.4");
        assert!(toml::to_string(&file)
            .unwrap()
            .contains("kubernetes = \"1.36.4\"\n"));
        let e = toml::from_str::<SettingsFile>("[cluster]\nkind = \"k3s\"\nkubernetes = \"1.x\"\n")
            .unwrap_err();
        assert!(
            e.message()
                .starts_with("cluster.kubernetes = \"1.x\" is not a Kubernetes version"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_and_names_are_refused() {
        let e = toml::from_str::<SettingsFile>("chanels = []").unwrap_err();
        assert!(e.message().contains("unknown field `chanels`"), "{e}");
        let e =
            toml::from_str::<SettingsFile>("[cluster]\nkind = \"k3s\"\nflavour = 1\n").unwrap_err();
        assert!(e.message().contains("unknown field `flavour`"), "{e}");
        let e = toml::from_str::<SettingsFile>("[cluster]\nrole = \"any\"\n").unwrap_err();
        assert!(e.message().contains("missing field `kind`"), "{e}");
        let e = toml::from_str::<SettingsFile>("channels = [\"usb\"]").unwrap_err();
        assert_eq!(
            e.message().trim(),
            "channels: unknown channel \"usb\" (known: cmdline, esp, cidata, fw_cfg, cloud)"
        );
        for (text, want) in [
            ("kind = \"k8s\"", "cluster.kind = \"k8s\": must be"),
            (
                "kind = \"k3s\"\nrole = \"master\"",
                "cluster.role = \"master\"",
            ),
            (
                "kind = \"k3s\"\ncontainerd = \"docker\"",
                "cluster.containerd = \"docker\"",
            ),
            (
                "kind = \"kubeadm\"\nkubeadm_api = \"v1\"",
                "cluster.kubeadm_api = \"v1\"",
            ),
        ] {
            let e = toml::from_str::<SettingsFile>(&format!("[cluster]\n{text}\n")).unwrap_err();
            assert!(e.message().contains(want), "{text}: {e}");
        }
    }

    /// Each name parses back to its value, in code and through serde.
    fn names_round_trip<T>(all: &[T])
    where
        T: Copy + PartialEq + fmt::Debug + Into<&'static str> + Serialize,
        T: for<'de> Deserialize<'de> + TryFrom<String>,
    {
        for v in all {
            let name: &'static str = (*v).into();
            assert_eq!(T::try_from(name.to_string()).ok(), Some(*v), "{name}");
            #[derive(Serialize, Deserialize)]
            struct One<T> {
                v: T,
            }
            let text = toml::to_string(&One { v: *v }).unwrap();
            assert_eq!(text, format!("v = \"{name}\"\n"));
            assert_eq!(toml::from_str::<One<T>>(&text).unwrap().v, *v);
        }
        assert!(T::try_from("nope".to_string()).is_err());
    }

    #[test]
    fn every_name_round_trips() {
        names_round_trip(Channel::ALL);
        names_round_trip(ClusterKind::ALL);
        names_round_trip(ImageRole::ALL);
        names_round_trip(Containerd::ALL);
        names_round_trip(KubeadmApi::ALL);
        assert_eq!(ALL_CHANNELS, Channel::ALL);
        assert_eq!(Channel::names(), "cmdline, esp, cidata, fw_cfg, cloud");
        assert_eq!(
            (
                ImageRole::from_name("server"),
                ImageRole::from_name("Server")
            ),
            (Some(ImageRole::Server), None)
        );
        assert_eq!(KubeadmApi::V1beta4.to_string(), "v1beta4");
    }

    #[test]
    fn kubelet_args_are_checked_the_same_everywhere() {
        assert_eq!(parse_kubelet_arg("max-pods=110"), Ok(("max-pods", "110")));
        assert_eq!(
            parse_kubelet_arg("eviction-hard=memory.available<5%"),
            Ok(("eviction-hard", "memory.available<5%"))
        );
        assert_eq!(parse_kubelet_arg("v="), Ok(("v", "")));
        for (arg, needle) in [
            ("max-pods", "\"max-pods\" is not \"key=value\""),
            ("--v=2", "without the leading --"),
            ("Max_Pods=1", "lowercase"),
            ("=1", "the key \"\""),
            ("node-ip=1.2.3.4", "sets node-ip itself"),
            ("node-labels=a=b", "sets node-labels itself"),
            ("v=1\n2", "control characters"),
        ] {
            let e = parse_kubelet_arg(arg).unwrap_err().to_string();
            assert!(e.contains(needle), "{arg:?}: {e}");
        }
        assert!(check_unique_kubelet_args(["v", "max-pods"]).is_ok());
        let e = check_unique_kubelet_args(["v", "max-pods", "v"]).unwrap_err();
        assert!(e.to_string().starts_with("v is given twice"), "{e}");
    }
}
