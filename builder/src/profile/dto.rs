//! The profile file as written: serde types that mirror the TOML one to one.
//! Unknown fields are rejected so a typo never silently changes an image.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Parses a profile's text. A value of the wrong type or an unknown key is
/// named by its key path and position (`disk.size: invalid type: integer
/// `512`, expected a string (line 96, column 8)`); a syntax error keeps the
/// TOML parser's own one-line message.
pub fn from_toml(text: &str) -> Result<ProfileFile, String> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let at = inner.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" (line {line}, column {column})")
        });
        if key.is_empty() || key == "." || key == "?" {
            super::one_line(&inner.to_string())
        } else {
            format!(
                "{key}: {}{}",
                inner.message().trim(),
                at.unwrap_or_default()
            )
        }
    })
}

/// A whole profile file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// Schema version (must be [`super::SCHEMA`]).
    pub schema: u32,
    /// Image name.
    pub name: String,
    /// Image version, e.g. "1.4.0" (absent: "0"). Read as any TOML value so that
    /// `version = 1.4`, a number to TOML, gets kiln's message asking for quotes.
    pub version: Option<toml::Value>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Arches to build.
    pub arches: Vec<String>,
    /// `[debian]`
    pub debian: DebianFile,
    /// `[packages]`
    #[serde(default)]
    pub packages: PackagesFile,
    /// `[kernel]`
    pub kernel: KernelFile,
    /// `[boot]`
    #[serde(default)]
    pub boot: BootFile,
    /// `[systemd]`
    #[serde(default)]
    pub systemd: SystemdFile,
    /// Overlay folder names, applied in order.
    #[serde(default)]
    pub overlays: Vec<String>,
    /// Template variables.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
    /// `[disk]`
    pub disk: DiskFile,
    /// `[output]`
    #[serde(default)]
    pub output: OutputFile,
    /// `[agent]`
    #[serde(default)]
    pub agent: AgentFile,
    /// `[ssh]`: an SSH server for operators.
    #[serde(default)]
    pub ssh: SshFile,
    /// `[[container_image]]`: OCI images built from packages of the lock.
    #[serde(default)]
    pub container_image: Vec<ContainerImageFile>,
    /// `[[artifact]]`: files pinned by sha256 and placed in the root.
    #[serde(default)]
    pub artifact: Vec<ArtifactFile>,
    /// `[cluster]`: how the node joins Kubernetes (absent: it does not).
    #[serde(default)]
    pub cluster: Option<ClusterFile>,
    /// `[update]`: A/B update settings (absent: the defaults, no trusted keys).
    #[serde(default)]
    pub update: UpdateFile,
}

/// `[update]`: how images built from the profile take A/B updates.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateFile {
    /// Public key files (relative to the profile's folder) that update bundles
    /// must be signed with.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Size of each root slot, e.g. "1GiB" (absent: sized from the root).
    pub slot_size: Option<String>,
    /// Boot attempts of a new version before systemd-boot falls back. Read as any
    /// TOML value so a wrong one gets kiln's message with the range.
    pub tries: Option<toml::Value>,
    /// How long a new version has to become healthy, e.g. "10min" or "90s". Read as
    /// any TOML value so that a bare number gets kiln's message asking for a unit.
    pub health_timeout: Option<toml::Value>,
    /// What "healthy" means: "preflight", "overlay", "cluster".
    pub health: Option<Vec<String>>,
}

/// `[[artifact]]`: one file from a URL or a local path, pinned by sha256.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactFile {
    /// Name used in messages, e.g. "k3s".
    pub name: String,
    /// http(s) URL to download it from (exclusive with `path`).
    pub url: Option<String>,
    /// Local file, relative to the profile's folder or absolute (exclusive with `url`).
    pub path: Option<String>,
    /// SHA-256 of the file, 64 lowercase hex digits.
    pub sha256: String,
    /// Absolute path in the image.
    pub dest: String,
    /// Octal permission bits, e.g. "0755".
    pub mode: String,
    /// Only for this arch (default: every arch of the profile).
    pub arch: Option<String>,
}

/// `[cluster]`: the Kubernetes join settings copied into the agent's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// "k3s" or "kubeadm".
    pub kind: String,
    /// "any" (the token decides), "worker" or "server".
    pub role: Option<String>,
    /// Node labels, merged with the token's.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Extra kubelet arguments, each "key=value".
    #[serde(default)]
    pub kubelet_args: Vec<String>,
    /// k3s only: "image" (the image's containerd) or "k3s" (k3s's embedded one).
    pub containerd: Option<String>,
    /// kubeadm only: "v1beta3" or "v1beta4".
    pub kubeadm_api: Option<String>,
    /// The cluster's Kubernetes version, "1.36" or "1.36.4"; needed when no k3s, kubelet
    /// or kubeadm artifact comes from a release URL it can be read from.
    pub kubernetes: Option<String>,
}

/// `[[container_image]]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerImageFile {
    /// Reference it is imported under, `DOMAIN/PATH:TAG`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Packages (from the lock) whose files make the layer.
    pub packages: Vec<String>,
    /// Default arguments.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub workdir: Option<String>,
}

/// `[debian]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianFile {
    /// Suites.
    pub suites: Vec<String>,
    /// Components (default `main`).
    #[serde(default)]
    pub components: Vec<String>,
    /// Include every Essential package.
    #[serde(default)]
    pub essential: bool,
    /// Suites that serve only the packages `[packages.from]` names (and what
    /// those need that `suites` cannot satisfy).
    #[serde(default)]
    pub extra_suites: Vec<String>,
}

/// `[packages]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesFile {
    /// Packages for all arches.
    #[serde(default)]
    pub include: Vec<String>,
    /// `[packages.arch.<arch>]`
    #[serde(default)]
    pub arch: BTreeMap<String, ArchPackagesFile>,
    /// Path → winning package.
    #[serde(default)]
    pub prefer: BTreeMap<String, String>,
    /// Globs of paths left out.
    #[serde(default)]
    pub exclude_paths: Vec<String>,
    /// `[packages.from]`: package → the extra suite it is taken from.
    #[serde(default)]
    pub from: BTreeMap<String, String>,
}

/// `[packages.arch.<arch>]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchPackagesFile {
    /// Extra packages for that arch.
    #[serde(default)]
    pub include: Vec<String>,
}

/// `[kernel]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelFile {
    /// `[kernel.package]`: arch → package.
    pub package: BTreeMap<String, String>,
    /// Module set names.
    #[serde(default)]
    pub modules: Vec<String>,
    /// `[kernel.sets]`: profile-defined module sets.
    #[serde(default)]
    pub sets: BTreeMap<String, Vec<String>>,
    /// Extra command line words.
    #[serde(default)]
    pub cmdline: Vec<String>,
}

/// `[boot]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFile {
    /// Package shipping systemd-stub.
    pub stub_package: Option<String>,
}

/// `[systemd]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdFile {
    /// Units to enable.
    #[serde(default)]
    pub enable: Vec<String>,
    /// Units to mask.
    #[serde(default)]
    pub mask: Vec<String>,
    /// Default target.
    pub default_target: Option<String>,
}

/// `[disk]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    /// Image size, e.g. "2GiB".
    pub size: String,
    /// ESP size, e.g. "128MiB".
    pub esp_size: Option<String>,
    /// Smallest `var` partition the node creates on first boot, e.g. "1GiB".
    pub var_min_size: Option<String>,
    /// "halt" (default) or "tmpfs": what the node does without room for `var`.
    pub var_fallback: Option<String>,
    /// "full" (default) or "on-read": how much of the root is verified at boot.
    pub verity_check: Option<String>,
}

/// `[output]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    /// Format names.
    #[serde(default)]
    pub formats: Vec<String>,
    /// zstd level of `raw.zst` (1 to 19). Read as any TOML value so that a
    /// wrong one gets kiln's message with the range, not a bare type error.
    pub zstd_level: Option<toml::Value>,
}

/// `[agent]`: settings of the in-image agent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Config channels the node reads, highest precedence first (default: all).
    pub channels: Option<Vec<String>>,
}

/// `[ssh]`: whether the image runs an SSH server (see `super::ssh`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshFile {
    /// Adds OpenSSH's server, the `ssh` overlay and its units (default: off).
    #[serde(default)]
    pub enable: bool,
}
