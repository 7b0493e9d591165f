//! The cluster's Kubernetes version (derived from the artifacts' release URLs, stated,
//! or both) and the runtime checks, through `Profile::parse` as a user meets them.

use std::path::{Path, PathBuf};

use super::super::{Profile, ProfileError};
use super::*;

fn overlays_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays")
}

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles")
}

/// A profile for both arches with the image's containerd installed and enabled, then
/// `rest` (artifacts, `[cluster]`, more tables).
fn profile(rest: &str) -> String {
    format!(
        r#"
schema = 1
name = "t"
arches = ["x86_64", "arm64"]
[debian]
suites = ["trixie"]
[packages]
include = ["containerd", "runc"]
[kernel]
modules = ["virtio"]
[kernel.package]
x86_64 = "linux-image-amd64"
arm64 = "linux-image-arm64"
[systemd]
enable = ["containerd.service", "kiln-images.service"]
[disk]
size = "1GiB"
{rest}
"#
    )
}

fn parse(text: &str) -> Result<Profile, ProfileError> {
    Profile::parse(Path::new("test.toml"), text, &overlays_dir())
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

fn artifact(name: &str, arch: &str, source: &str, dest: &str) -> String {
    format!(
        "[[artifact]]\nname = \"{name}\"\narch = \"{arch}\"\n{source}\nsha256 = \"{}\"\n\
         dest = \"{dest}\"\nmode = \"0755\"\n",
        "ab".repeat(32)
    )
}

const K3S_AMD64: &str =
    "url = \"https://github.com/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1/k3s\"";
const K3S_ARM64: &str =
    "url = \"https://github.com/k3s-io/k3s/releases/download/v1.36.4+k3s1/k3s-arm64\"";

fn k3s(amd64: &str, arm64: &str, cluster: &str) -> String {
    profile(&format!(
        "{}{}[cluster]\nkind = \"k3s\"\n{cluster}\n",
        artifact("k3s", "x86_64", amd64, "/usr/bin/k3s"),
        artifact("k3s", "arm64", arm64, "/usr/bin/k3s"),
    ))
}

fn version(p: &Profile) -> String {
    p.agent.cluster.as_ref().unwrap().kubernetes.to_string()
}

#[test]
fn release_urls_name_the_kubernetes_release() {
    for (url, want) in [
        (
            "https://github.com/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1/k3s",
            Some("1.36.4"),
        ),
        (
            "https://github.com/k3s-io/k3s/releases/download/v1.36.4%2bk3s1/k3s-arm64",
            Some("1.36.4"),
        ),
        (
            "https://dl.k8s.io/release/v1.35.0/bin/linux/amd64/kubelet",
            Some("1.35.0"),
        ),
        (
            "https://dl.k8s.io/release/v1.34.2/bin/linux/arm64/kubeadm?x=v1.1.1#v2.0.0",
            Some("1.34.2"),
        ),
        // A mirror without the release in its path, or only a minor: nothing to read.
        ("https://mirror.example/k8s/kubelet", None),
        ("https://mirror.example/v1.34/kubelet", None),
        // The host is not a path segment.
        ("https://v1.2.3.example/kubelet", None),
    ] {
        let got = release_in_url(url).unwrap().map(|v| v.to_string());
        assert_eq!(got.as_deref(), want, "{url}");
    }
    let e = release_in_url("https://m.example/v1.34.2/v1.35.0/kubelet").unwrap_err();
    assert!(e.contains("two releases, v1.34.2 and v1.35.0"), "{e}");
}

#[test]
fn the_version_comes_from_the_artifacts_urls_and_goes_into_agent_toml() {
    let p = parse(&k3s(K3S_AMD64, K3S_ARM64, "")).unwrap();
    assert_eq!(version(&p), "1.36.4");
    let v: toml::Value = toml::from_str(&p.agent.to_toml()).unwrap();
    assert_eq!(v["cluster"]["kubernetes"].as_str(), Some("1.36.4"));
    // A stated minor or the same release agrees, and the artifacts' is the more precise.
    for stated in ["1.36", "v1.36", "1.36.4", "v1.36.4+k3s1"] {
        let p = parse(&k3s(
            K3S_AMD64,
            K3S_ARM64,
            &format!("kubernetes = \"{stated}\""),
        ))
        .unwrap();
        assert_eq!(version(&p), "1.36.4", "{stated}");
    }
    // One arch from a local file still gets the other's release.
    let p = parse(&k3s(K3S_AMD64, "path = \"k3s-arm64\"", "")).unwrap();
    assert_eq!(version(&p), "1.36.4");
}

#[test]
fn a_stated_version_that_disagrees_is_refused_with_both_values_and_the_source() {
    let e = err(&k3s(K3S_AMD64, K3S_ARM64, "kubernetes = \"1.35\""));
    assert_eq!(
        e,
        "test.toml: field `cluster.kubernetes`: \"1.35\" disagrees with Kubernetes 1.36.4, \
         which artifact[0] (k3s, x86_64) pins by its URL \
         https://github.com/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1/k3s; state \"1.36.4\" \
         (or a prefix of it, \"1.36\"), or drop `kubernetes` and let the artifacts decide"
    );
    let e = err(&k3s(K3S_AMD64, K3S_ARM64, "kubernetes = \"1.36.2\""));
    assert!(
        e.contains("\"1.36.2\" disagrees with Kubernetes 1.36.4"),
        "{e}"
    );
    let e = err(&k3s(K3S_AMD64, K3S_ARM64, "kubernetes = \"1.x\""));
    assert!(
        e.starts_with("test.toml: field `cluster.kubernetes`: \"1.x\" is not a Kubernetes version"),
        "{e}"
    );
}

#[test]
fn path_artifacts_need_the_version_stated() {
    let p = parse(&k3s(
        "path = \"k3s\"",
        "path = \"k3s-arm64\"",
        "kubernetes = \"1.36\"",
    ))
    .unwrap();
    assert_eq!(version(&p), "1.36");
    let e = err(&k3s("path = \"k3s\"", "path = \"k3s-arm64\"", ""));
    assert_eq!(
        e,
        "test.toml: field `cluster.kubernetes`: not set, and no [[artifact]] for /usr/bin/k3s \
         comes from a release URL it could be read from (a `path` artifact carries no version): \
         state the cluster's version, e.g. kubernetes = \"1.36\"; preflight checks containerd \
         against it"
    );
    // Another artifact's release (a CNI plugin) is not the cluster's.
    let cni = artifact(
        "cni",
        "x86_64",
        "url = \"https://github.com/containernetworking/plugins/releases/download/v1.8.0/bridge\"",
        "/usr/lib/cni/bridge",
    );
    let text = format!(
        "{}{cni}[cluster]\nkind = \"kubeadm\"\n",
        artifact(
            "kubelet",
            "x86_64",
            "path = \"kubelet\"",
            "/usr/bin/kubelet"
        )
    );
    let e = err(&profile(&text));
    assert!(
        e.contains("no [[artifact]] for /usr/bin/kubeadm or /usr/bin/kubelet"),
        "{e}"
    );
}

#[test]
fn artifacts_of_two_releases_are_refused() {
    let e = err(&k3s(
        K3S_AMD64,
        "url = \"https://github.com/k3s-io/k3s/releases/download/v1.36.3%2Bk3s1/k3s-arm64\"",
        "",
    ));
    assert_eq!(
        e,
        "test.toml: artifact[1] (k3s) url: names Kubernetes 1.36.3, but artifact[0] \
         (k3s, x86_64) names 1.36.4: pin every /usr/bin/k3s artifact to one Kubernetes release"
    );
    // kubelet and kubeadm of one node.
    let text = format!(
        "{}{}[cluster]\nkind = \"kubeadm\"\n",
        artifact(
            "kubelet",
            "x86_64",
            "url = \"https://dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet\"",
            "/usr/bin/kubelet"
        ),
        artifact(
            "kubeadm",
            "x86_64",
            "url = \"https://dl.k8s.io/release/v1.34.1/bin/linux/amd64/kubeadm\"",
            "/usr/bin/kubeadm"
        ),
    );
    let e = err(&profile(&text));
    assert!(
        e.starts_with("test.toml: artifact[1] (kubeadm) url: names Kubernetes 1.34.1")
            && e.contains("pin every /usr/bin/kubeadm and /usr/bin/kubelet artifact"),
        "{e}"
    );
    let e = err(&k3s(
        "url = \"https://m.example/v1.36.4/v1.36.5/k3s\"",
        K3S_ARM64,
        "",
    ));
    assert!(
        e.starts_with("test.toml: artifact[0] (k3s) url: ") && e.contains("two releases"),
        "{e}"
    );
}

#[test]
fn the_shipped_cluster_profiles_pin_the_versions_their_comments_name() {
    let k3s = Profile::load(&profiles_dir().join("k3s.toml")).unwrap();
    assert_eq!(version(&k3s), "1.36.4");
    let kubeadm = Profile::load(&profiles_dir().join("kubeadm.toml")).unwrap();
    assert_eq!(version(&kubeadm), "1.34.2");
    let c = kubeadm.agent.cluster.as_ref().unwrap();
    assert_eq!(c.kind(), ClusterKind::Kubeadm);
    assert!(c.uses_image_containerd());
    // One kubelet and one kubeadm per arch, from dl.k8s.io's v1.34.2 release.
    for arch in [Arch::X86_64, Arch::Arm64] {
        let mut dests: Vec<&str> = kubeadm
            .artifacts_for(arch)
            .map(|a| {
                let ArtifactSource::Url(url) = &a.source else {
                    panic!("{}: not a URL", a.name)
                };
                let file = a.dest.rsplit('/').next().unwrap();
                assert_eq!(
                    url,
                    &format!(
                        "https://dl.k8s.io/release/v1.34.2/bin/linux/{}/{file}",
                        arch.deb_arch()
                    )
                );
                a.dest.as_str()
            })
            .collect();
        dests.sort();
        assert_eq!(dests, ["usr/bin/kubeadm", "usr/bin/kubelet"], "{arch}");
    }
    // containerd 2.x from forky, which supports Kubernetes 1.34 (2.1.3+).
    assert_eq!(
        kubeadm.packages.from.get("containerd").map(String::as_str),
        Some("forky")
    );
}

fn k3s_embedded(packages: &str, enable: &str) -> String {
    let text = profile(&format!(
        "{}{}[cluster]\nkind = \"k3s\"\ncontainerd = \"k3s\"\n",
        artifact("k3s", "x86_64", K3S_AMD64, "/usr/bin/k3s"),
        artifact("k3s", "arm64", K3S_ARM64, "/usr/bin/k3s"),
    ));
    text.replace(
        "include = [\"containerd\", \"runc\"]",
        &format!("include = [{packages}]"),
    )
    .replace(
        "enable = [\"containerd.service\", \"kiln-images.service\"]",
        &format!("enable = [{enable}]"),
    )
}

#[test]
fn k3s_on_its_embedded_containerd_refuses_debians() {
    assert!(parse(&k3s_embedded("\"bash\"", "\"kiln-cluster.service\"")).is_ok());
    let e = err(&k3s_embedded("\"bash\", \"containerd\"", ""));
    assert!(
        e.starts_with("test.toml: field `packages.include[1]`: \"containerd\": [cluster] containerd = \"k3s\" runs k3s's embedded containerd")
            && e.contains("or set containerd = \"image\""),
        "{e}"
    );
    let e = err(&k3s_embedded(
        "\"bash\"",
        "\"kiln-cluster.service\", \"containerd.service\"",
    ));
    assert!(
        e.starts_with("test.toml: field `systemd.enable[1]`: \"containerd.service\" is enabled")
            && e.contains("k3s starts its own containerd"),
        "{e}"
    );
    let e = err(&k3s_embedded("\"bash\"", "\"kiln-images.service\""));
    assert!(
        e.starts_with("test.toml: field `systemd.enable[0]`: \"kiln-images.service\" imports")
            && e.contains("/var/lib/rancher/k3s/agent/images"),
        "{e}"
    );
    // Named for one arch only still counts.
    let text = format!(
        "{}\n[packages.arch.arm64]\ninclude = [\"containerd\"]\n",
        k3s_embedded("\"bash\"", "")
    );
    assert!(err(&text).contains("field `packages.arch.arm64.include[0]`"));
}

#[test]
fn the_image_containerd_must_be_installed_and_enabled() {
    let image = |packages: &str, enable: &str, cluster: &str| {
        profile(&format!("[cluster]\n{cluster}\nkubernetes = \"1.34\"\n"))
            .replace(
                "include = [\"containerd\", \"runc\"]",
                &format!("include = [{packages}]"),
            )
            .replace(
                "enable = [\"containerd.service\", \"kiln-images.service\"]",
                &format!("enable = [{enable}]"),
            )
    };
    assert!(parse(&image(
        "\"containerd\"",
        "\"containerd.service\"",
        "kind = \"kubeadm\""
    ))
    .is_ok());
    let e = err(&image("\"bash\"", "", "kind = \"kubeadm\""));
    assert!(
        e.starts_with("test.toml: field `cluster.kind`: [cluster] kind = \"kubeadm\" runs the kubelet on the image's containerd, but no [packages] include names \"containerd\"")
            && !e.contains("containerd = \"k3s\""),
        "{e}"
    );
    let e = err(&image("\"bash\"", "", "kind = \"k3s\""));
    assert!(
        e.starts_with(
            "test.toml: field `cluster.containerd`: [cluster] containerd = \"image\" (the default)"
        ) && e.contains("or set containerd = \"k3s\""),
        "{e}"
    );
    let e = err(&image("\"containerd\"", "", "kind = \"kubeadm\""));
    assert!(
        e.starts_with("test.toml: field `systemd.enable`: [cluster] runs the kubelet on the image's containerd, but \"containerd.service\" is not enabled"),
        "{e}"
    );
    // Without [cluster]: a unit without its package is refused, nothing else is asked.
    let no_cluster = |packages: &str, enable: &str| {
        profile("")
            .replace(
                "include = [\"containerd\", \"runc\"]",
                &format!("include = [{packages}]"),
            )
            .replace(
                "enable = [\"containerd.service\", \"kiln-images.service\"]",
                &format!("enable = [{enable}]"),
            )
    };
    assert!(parse(&no_cluster("\"bash\"", "")).is_ok());
    assert!(parse(&no_cluster("\"containerd\"", "")).is_ok());
    let e = err(&no_cluster("\"bash\"", "\"containerd.service\""));
    assert!(
        e.contains("field `systemd.enable[0]`") && e.contains("add \"containerd\" (and \"runc\")"),
        "{e}"
    );
    // containerd for every arch, one list each, counts.
    let text = format!(
        "{}\n[packages.arch.x86_64]\ninclude = [\"containerd\"]\n[packages.arch.arm64]\ninclude = [\"containerd\"]\n",
        no_cluster("\"bash\"", "\"containerd.service\"")
    );
    assert!(parse(&text).is_ok(), "{:?}", parse(&text).err());
}
