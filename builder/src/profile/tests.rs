use super::*;
use kiln_contract::agent_config::{self, SettingsFile, UpdateTable};

/// `[debian] extra_suites` and `[packages.from]`.
mod pins;
/// `version` and `[update]`.
mod update;

fn overlays_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays")
}

fn parse(text: &str) -> Result<Profile, ProfileError> {
    Profile::parse(Path::new("test.toml"), text, &overlays_dir())
}

const MINIMAL: &str = r#"
schema = 1
name = "t"
arches = ["amd64"]
[debian]
suites = ["bookworm"]
[kernel]
modules = ["virtio"]
[kernel.package]
x86_64 = "linux-image-amd64"
[disk]
size = "1GiB"
"#;

#[test]
fn default_profile_validates() {
    let p = Profile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/qemu.toml"))
        .unwrap();
    assert_eq!(p.name, "qemu");
    assert_eq!(p.arches, vec![Arch::X86_64, Arch::Arm64]);
    assert!(p.packages_for(Arch::Arm64).contains(&"systemd".to_string()));
    assert_eq!(p.overlays[0].name, "base");
}

#[test]
fn minimal_profile_gets_defaults() {
    let p = parse(MINIMAL).unwrap();
    assert_eq!(p.debian.components, vec!["main"]);
    assert_eq!(p.disk.esp_size, 128 << 20);
    assert_eq!(p.formats, vec![Format::Raw]);
    assert_eq!(p.boot.stub_package, "systemd-boot-efi");
}

#[test]
fn unknown_field_is_named() {
    let e = parse(&MINIMAL.replace("[disk]", "[disk]\nsizee = 3"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("test.toml") && e.contains("sizee"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn bad_toml_is_named_with_its_file() {
    let e = parse("schema = = 1").unwrap_err().to_string();
    assert!(e.starts_with("test.toml:"), "{e}");
}

#[test]
fn wrong_schema_is_refused() {
    let e = parse(&MINIMAL.replace("schema = 1", "schema = 9"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("schema") && e.contains('9'), "{e}");
}

#[test]
fn unknown_module_set_lists_the_known_ones() {
    let e = parse(&MINIMAL.replace("[\"virtio\"]", "[\"virtio\", \"warp-drive\"]"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("kernel.modules[1]") && e.contains("warp-drive") && e.contains("virtio"),
        "{e}"
    );
}

#[test]
fn custom_module_set_is_accepted() {
    let p = parse(&MINIMAL.replace("[\"virtio\"]", "[\"mine\"]\nsets = { mine = [\"e1000\"] }"))
        .unwrap();
    assert_eq!(p.kernel.custom_sets["mine"], vec!["e1000"]);
}

#[test]
fn missing_kernel_for_an_arch_is_refused() {
    let e = parse(&MINIMAL.replace("[\"amd64\"]", "[\"amd64\", \"arm64\"]"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("kernel.package") && e.contains("arm64"), "{e}");
}

#[test]
fn bad_sizes_and_formats_are_named() {
    let e = parse(&MINIMAL.replace("\"1GiB\"", "\"1 furlong\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("disk.size"), "{e}");
    let e = parse(&MINIMAL.replace("\"1GiB\"", "\"100MiB\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("disk.size") && e.contains("no room"), "{e}");
    let e = parse(&format!("{MINIMAL}[output]\nformats = [\"floppy\"]\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("output.formats[0]") && e.contains("floppy"),
        "{e}"
    );
}

#[test]
fn zstd_level_defaults_and_is_checked_against_its_range() {
    assert_eq!(parse(MINIMAL).unwrap().zstd_level, ZstdLevel::DEFAULT);
    let p = parse(&format!("{MINIMAL}[output]\nzstd_level = 19\n")).unwrap();
    assert_eq!(p.zstd_level.get(), 19);
    for bad in ["0", "20", "-3", "4294967297", "\"max\"", "6.5"] {
        let e = parse(&format!("{MINIMAL}[output]\nzstd_level = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml: field `output.zstd_level`: ")
                && e.contains(bad)
                && e.contains("use 1 (fastest) to 19 (smallest file)"),
            "{e}"
        );
    }
}

#[test]
fn bad_package_and_overlay_names_are_refused() {
    let e = parse(&MINIMAL.replace("[debian]", "[packages]\ninclude = [\"Bad Name\"]\n[debian]"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("packages.include[0]"), "{e}");
    let e = parse(&MINIMAL.replace("arches =", "overlays = [\"nope\"]\narches ="))
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlays[0]") && e.contains("nope"), "{e}");
}

#[test]
fn agent_channels_default_to_all_five_and_render_as_toml() {
    let p = parse(MINIMAL).unwrap();
    assert_eq!(p.agent.channels, ALL_CHANNELS.to_vec());
    let text = p.agent.to_toml();
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(v["schema"].as_integer(), Some(1));
    let ch: Vec<&str> = v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(ch, ["cmdline", "esp", "cidata", "fw_cfg", "cloud"]);
    let p = parse(&format!(
        "{MINIMAL}[agent]\nchannels = [\"esp\", \"cmdline\"]\n"
    ))
    .unwrap();
    assert_eq!(p.agent.channels, [Channel::Esp, Channel::Cmdline]);
    assert!(!p.agent.uses_cloud());
}

#[test]
fn bad_agent_channels_are_named() {
    for (list, field, needle) in [
        ("[]", "agent.channels", "empty"),
        (
            "[\"esp\", \"carrier-pigeon\"]",
            "agent.channels[1]",
            "carrier-pigeon",
        ),
        (
            "[\"esp\", \"cmdline\", \"esp\"]",
            "agent.channels[2]",
            "twice",
        ),
    ] {
        let e = parse(&format!("{MINIMAL}[agent]\nchannels = {list}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml") && e.contains(field) && e.contains(needle),
            "{e}"
        );
    }
    let e = parse(&format!("{MINIMAL}[agent]\nchanels = []\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("chanels"), "{e}");
}

#[test]
fn debug_shell_is_refused_with_the_cloud_channel() {
    let mut p = parse(MINIMAL).unwrap();
    let e = p.enable_debug_shell().unwrap_err().to_string();
    assert!(
        e.contains("test.toml") && e.contains("--debug-shell") && e.contains("cloud"),
        "{e}"
    );
    assert!(!p.extras.debug_shell);
    let mut p = parse(&format!(
        "{MINIMAL}[agent]\nchannels = [\"cmdline\", \"esp\"]\n"
    ))
    .unwrap();
    p.enable_debug_shell().unwrap();
    assert!(p.extras.debug_shell);
}

#[test]
fn appended_cmdline_words_follow_the_profile_ones() {
    let mut p = parse(&MINIMAL.replace("[kernel]", "[kernel]\ncmdline = [\"quiet\"]")).unwrap();
    p.append_cmdline(&["kiln.hostname=a".into(), "kiln.debug  x=1".into()])
        .unwrap();
    assert_eq!(
        p.extra_cmdline(),
        ["quiet", "kiln.hostname=a", "kiln.debug", "x=1"]
    );
    let e = p
        .append_cmdline(&["kiln.roothash=00".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--append-cmdline") && e.contains("kiln.roothash"),
        "{e}"
    );
    assert!(p.append_cmdline(&[" ".into()]).is_err());
}

const SHA: &str = "835873f37245fc615f547a2fe2af9402a347875f13fa64a1f136de644955ea3f";

/// MINIMAL (x86_64 only) plus one `[[artifact]]` with `fields` (TOML lines).
fn with_artifact(fields: &str) -> String {
    format!("{MINIMAL}\n[[artifact]]\n{fields}\n")
}

const K3S_FIELDS: &str = r#"name = "k3s"
url = "https://example.test/k3s"
sha256 = "835873f37245fc615f547a2fe2af9402a347875f13fa64a1f136de644955ea3f"
dest = "/usr/bin/k3s"
mode = "0755""#;

fn artifact_err(fields: &str) -> String {
    parse(&with_artifact(fields)).unwrap_err().to_string()
}

#[test]
fn artifact_validates_into_the_domain_type() {
    let p = parse(&with_artifact(K3S_FIELDS)).unwrap();
    assert_eq!(
        p.artifacts,
        vec![Artifact {
            name: "k3s".into(),
            source: ArtifactSource::Url("https://example.test/k3s".into()),
            sha256: SHA.into(),
            dest: "usr/bin/k3s".into(),
            mode: 0o755,
            arch: None,
        }]
    );
    assert_eq!(p.artifacts_for(Arch::X86_64).count(), 1);
    // A local path is taken from the profile's folder.
    let text = with_artifact(
        &K3S_FIELDS.replace("url = \"https://example.test/k3s\"", "path = \"bin/k3s\""),
    );
    let p = Profile::parse(Path::new("profiles/k.toml"), &text, &overlays_dir()).unwrap();
    assert_eq!(
        p.artifacts[0].source,
        ArtifactSource::Path(PathBuf::from("profiles/bin/k3s"))
    );
    let text = with_artifact(
        &K3S_FIELDS.replace("url = \"https://example.test/k3s\"", "path = \"/opt/k3s\""),
    );
    let p = Profile::parse(Path::new("profiles/k.toml"), &text, &overlays_dir()).unwrap();
    assert_eq!(
        p.artifacts[0].source,
        ArtifactSource::Path(PathBuf::from("/opt/k3s"))
    );
}

#[test]
fn artifact_sha256_error_names_file_index_name_and_field() {
    let e = artifact_err(&K3S_FIELDS.replace(SHA, "abc"));
    assert_eq!(
        e.split(';').next().unwrap(),
        "test.toml: artifact[0] (k3s) sha256: \"abc\" is not 64 hex digits (lowercase)"
    );
    let e = artifact_err(&K3S_FIELDS.replace(SHA, &SHA.to_uppercase()));
    assert!(e.contains("artifact[0] (k3s) sha256"), "{e}");
}

#[test]
fn artifact_source_must_be_one_http_url_or_one_path() {
    let url = "url = \"https://example.test/k3s\"";
    let e = artifact_err(&K3S_FIELDS.replace(url, ""));
    assert!(
        e.contains("artifact[0] (k3s) url") && e.contains("neither"),
        "{e}"
    );
    let e = artifact_err(&K3S_FIELDS.replace(url, &format!("{url}\npath = \"k3s\"")));
    assert!(
        e.contains("artifact[0] (k3s) url") && e.contains("both"),
        "{e}"
    );
    let e = artifact_err(&K3S_FIELDS.replace(url, "url = \"ftp://example.test/k3s\""));
    assert!(e.contains("(k3s) url") && e.contains("ftp://"), "{e}");
    let e = artifact_err(&K3S_FIELDS.replace(url, "url = \"https:///k3s\""));
    assert!(e.contains("(k3s) url") && e.contains("no host"), "{e}");
    let e = artifact_err(&K3S_FIELDS.replace(url, "path = \"\""));
    assert!(e.contains("(k3s) path"), "{e}");
}

#[test]
fn artifact_dest_must_be_absolute_plain_and_outside_mounted_folders() {
    for (dest, needle) in [
        ("usr/bin/k3s", "absolute"),
        ("/usr/../etc/k3s", "plainly"),
        ("/usr//bin/k3s", "plainly"),
        ("/usr/bin/", "plainly"),
        ("/", "plainly"),
        ("/var/lib/k3s", "/var"),
        ("/run/k3s", "/run"),
        ("/tmp/k3s", "/tmp"),
        ("/boot/k3s", "/boot"),
        ("/proc/k3s", "/proc"),
        ("/sys/k3s", "/sys"),
        ("/dev/k3s", "/dev"),
    ] {
        let e = artifact_err(&K3S_FIELDS.replace("/usr/bin/k3s", dest));
        assert!(
            e.contains("artifact[0] (k3s) dest") && e.contains(needle),
            "{dest}: {e}"
        );
    }
    // Folders that merely start like a forbidden one are fine.
    parse(&with_artifact(
        &K3S_FIELDS.replace("/usr/bin/k3s", "/variant/k3s"),
    ))
    .unwrap();
}

#[test]
fn artifact_mode_name_and_arch_are_checked() {
    for mode in ["755x", "", "17777", "0o755", "rwx"] {
        let e = artifact_err(&K3S_FIELDS.replace("\"0755\"", &format!("{mode:?}")));
        assert!(e.contains("artifact[0] (k3s) mode"), "{mode}: {e}");
    }
    let p = parse(&with_artifact(&K3S_FIELDS.replace("\"0755\"", "\"4750\""))).unwrap();
    assert_eq!(p.artifacts[0].mode, 0o4750);
    let e = artifact_err(&K3S_FIELDS.replace("name = \"k3s\"", "name = \"\""));
    assert!(e.contains("artifact[0] () name"), "{e}");
    let e = artifact_err(&format!("{K3S_FIELDS}\narch = \"riscv64\""));
    assert!(
        e.contains("artifact[0] (k3s) arch") && e.contains("riscv64"),
        "{e}"
    );
    // MINIMAL builds x86_64 only.
    let e = artifact_err(&format!("{K3S_FIELDS}\narch = \"arm64\""));
    assert!(
        e.contains("artifact[0] (k3s) arch") && e.contains("does not build for arm64"),
        "{e}"
    );
    let e = artifact_err(&format!("{K3S_FIELDS}\nsize = 3"));
    assert!(e.contains("test.toml") && e.contains("size"), "{e}");
}

#[test]
fn two_artifacts_at_one_dest_for_one_arch_are_refused() {
    let two = |a: &str, b: &str| {
        format!(
            "{}\n[[artifact]]\n{}\n{b}\n",
            with_artifact(&format!("{K3S_FIELDS}\n{a}")),
            K3S_FIELDS.replace("name = \"k3s\"", "name = \"k3s-b\"")
        )
    };
    let e = parse(&two("", "")).unwrap_err().to_string();
    assert!(
        e.contains("artifact[1] (k3s-b) dest") && e.contains("artifact[0] (k3s)"),
        "{e}"
    );
    let e = parse(&two("arch = \"x86_64\"", ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("artifact[1] (k3s-b) dest"), "{e}");
    let both = MINIMAL
        .replace("[\"amd64\"]", "[\"x86_64\", \"arm64\"]")
        .replace(
            "[kernel.package]\n",
            "[kernel.package]\narm64 = \"linux-image-arm64\"\n",
        );
    let text = format!(
        "{both}\n[[artifact]]\n{K3S_FIELDS}\narch = \"x86_64\"\n[[artifact]]\n{K3S_FIELDS}\narch = \"arm64\"\n"
    );
    let p = parse(&text).unwrap();
    assert_eq!(p.artifacts_for(Arch::X86_64).count(), 1);
    assert_eq!(p.artifacts_for(Arch::Arm64).count(), 1);
    // Same name for the same arch would make the manifest ambiguous.
    let e = parse(
        &two("", "")
            .replace(
                "dest = \"/usr/bin/k3s\"\nmode = \"0755\"\n\n",
                "dest = \"/usr/bin/k3s-other\"\nmode = \"0755\"\n\n",
            )
            .replace("k3s-b", "k3s"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("artifact[1] (k3s)"), "{e}");
}

/// What a cluster on the image's containerd needs next to MINIMAL.
const RUNTIME: &str =
    "[packages]\ninclude = [\"containerd\"]\n[systemd]\nenable = [\"containerd.service\"]\n";

fn cluster_err(table: &str) -> String {
    parse(&format!("{MINIMAL}\n[cluster]\n{table}\n"))
        .unwrap_err()
        .to_string()
}

#[test]
fn cluster_fields_are_checked() {
    for (table, field, needle) in [
        ("kind = \"nomad\"", "cluster.kind", "nomad"),
        ("kind = \"k3s\"\nrole = \"boss\"", "cluster.role", "boss"),
        (
            "kind = \"k3s\"\ncontainerd = \"docker\"",
            "cluster.containerd",
            "docker",
        ),
        (
            "kind = \"kubeadm\"\ncontainerd = \"image\"",
            "cluster.containerd",
            "only applies",
        ),
        (
            "kind = \"k3s\"\nkubeadm_api = \"v1beta4\"",
            "cluster.kubeadm_api",
            "only applies",
        ),
        (
            "kind = \"kubeadm\"\nkubeadm_api = \"v1\"",
            "cluster.kubeadm_api",
            "v1beta3",
        ),
        (
            "kind = \"k3s\"\nlabels = { \"Kiln.dev/pool\" = \"edge\" }",
            "cluster.labels",
            "prefix",
        ),
        (
            "kind = \"k3s\"\nlabels = { \"kiln.dev/-pool\" = \"edge\" }",
            "cluster.labels",
            "name",
        ),
        (
            "kind = \"k3s\"\nlabels = { \"pool\" = \"bad value\" }",
            "cluster.labels",
            "value",
        ),
        (
            "kind = \"k3s\"\nlabels = { \"pool\" = \"x-\" }",
            "cluster.labels",
            "value",
        ),
        (
            "kind = \"k3s\"\nkubelet_args = [\"max-pods\"]",
            "cluster.kubelet_args[0]",
            "key=value",
        ),
        (
            "kind = \"k3s\"\nkubelet_args = [\"--max-pods=1\"]",
            "cluster.kubelet_args[0]",
            "--",
        ),
        (
            "kind = \"k3s\"\nkubelet_args = [\"Max_Pods=1\"]",
            "cluster.kubelet_args[0]",
            "lowercase",
        ),
        ("kind = \"k3s\"\nflavour = 1", "flavour", "unknown"),
        (
            "kind = \"kubeadm\"\nkubeadm_api = \"v1beta3\"\nkubelet_args = [\"v=2\", \"v=3\"]",
            "cluster.kubelet_args",
            "given twice",
        ),
        (
            "kind = \"k3s\"\nkubelet_args = [\"node-ip=10.0.0.1\"]",
            "cluster.kubelet_args[0]",
            "kiln-cluster sets node-ip",
        ),
    ] {
        let e = cluster_err(table);
        assert!(
            e.starts_with("test.toml:") && e.contains(field) && e.contains(needle),
            "{table}: {e}"
        );
    }
    let long = format!(
        "kind = \"k3s\"\nlabels = {{ \"{}\" = \"x\" }}",
        "a".repeat(64)
    );
    assert!(cluster_err(&long).contains("1-63"));
    // v1beta4 passes a list, so a repeated name is fine there (as the agent reads it).
    let repeats = format!(
        "{MINIMAL}{RUNTIME}\n[cluster]\nkind = \"kubeadm\"\nkubernetes = \"1.34\"\nkubelet_args = [\"v=2\", \"v=3\"]\n"
    );
    assert!(parse(&repeats).is_ok());
}

#[test]
fn cluster_is_written_into_agent_toml_with_defaults_spelled_out() {
    let p = parse(&format!(
        "{MINIMAL}{RUNTIME}\n[cluster]\nkind = \"k3s\"\nkubernetes = \"1.36\"\nlabels = {{ \"kiln.dev/pool\" = \"edge\", zone = \"\" }}\nkubelet_args = [\"max-pods=110\", \"eviction-hard=memory.available<5%\"]\n"
    ))
    .unwrap();
    let c = p.agent.cluster.clone().unwrap();
    assert_eq!(c.kind(), ClusterKind::K3s);
    assert_eq!(c.role, ImageRole::Any);
    assert_eq!(
        c.flavor,
        ClusterFlavor::K3s {
            containerd: Containerd::Image
        }
    );
    let v: toml::Value = toml::from_str(&p.agent.to_toml()).unwrap();
    let t = &v["cluster"];
    assert_eq!(t["kind"].as_str(), Some("k3s"));
    assert_eq!(t["role"].as_str(), Some("any"));
    assert_eq!(t["containerd"].as_str(), Some("image"));
    assert_eq!(t["kubernetes"].as_str(), Some("1.36"));
    assert!(t.get("kubeadm_api").is_none());
    assert_eq!(t["labels"]["kiln.dev/pool"].as_str(), Some("edge"));
    assert_eq!(t["labels"]["zone"].as_str(), Some(""));
    assert_eq!(
        t["kubelet_args"].as_array().unwrap().len(),
        2,
        "{}",
        p.agent.to_toml()
    );
    assert_eq!(v["channels"].as_array().unwrap().len(), 5);

    let p = parse(&format!(
        "{MINIMAL}{RUNTIME}\n[cluster]\nkind = \"kubeadm\"\nrole = \"worker\"\nkubernetes = \"1.34.2\"\n"
    ))
    .unwrap();
    let v: toml::Value = toml::from_str(&p.agent.to_toml()).unwrap();
    assert_eq!(v["cluster"]["kind"].as_str(), Some("kubeadm"));
    assert_eq!(v["cluster"]["role"].as_str(), Some("worker"));
    assert_eq!(v["cluster"]["kubeadm_api"].as_str(), Some("v1beta4"));
    assert!(v["cluster"].get("containerd").is_none());

    // No [cluster], no table.
    let v: toml::Value = toml::from_str(&parse(MINIMAL).unwrap().agent.to_toml()).unwrap();
    assert!(v.get("cluster").is_none());
}

#[test]
fn k3s_profile_validates_with_one_k3s_per_arch() {
    let p =
        Profile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/k3s.toml")).unwrap();
    assert_eq!(p.arches, vec![Arch::X86_64, Arch::Arm64]);
    let mut shas = Vec::new();
    for arch in [Arch::X86_64, Arch::Arm64] {
        let list: Vec<&Artifact> = p.artifacts_for(arch).collect();
        assert_eq!(list.len(), 1, "{arch}");
        assert_eq!(list[0].dest, "usr/bin/k3s");
        assert_eq!(list[0].mode, 0o755);
        assert_eq!(list[0].arch, Some(arch));
        let ArtifactSource::Url(url) = &list[0].source else {
            panic!("{arch}: not a URL");
        };
        assert!(url.contains("v1.36.4%2Bk3s1"), "{url}");
        shas.push(list[0].sha256.clone());
    }
    assert_eq!(
        shas,
        [
            SHA,
            "c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb"
        ]
    );
    let c = p.agent.cluster.unwrap();
    assert_eq!(c.kind(), ClusterKind::K3s);
    assert_eq!(c.role, ImageRole::Any);
    assert_eq!(
        c.flavor,
        ClusterFlavor::K3s {
            containerd: Containerd::K3s
        }
    );
    let names: Vec<&str> = p.overlays.iter().map(|o| o.name.as_str()).collect();
    assert!(names.contains(&"k3s"), "{names:?}");
    assert!(p.systemd.enable.iter().any(|u| u == "kiln-cluster.service"));
    assert!(p.disk.size >= 1 << 30);
}

/// agent.toml as kiln wrote it with `format!` before the contract owned the schema: the
/// reference the serialized file must parse equal to.
fn agent_toml_as_formatted_before(agent: &Agent) -> String {
    let s = |v: &str| toml::Value::String(v.to_string()).to_string();
    let list: Vec<String> = agent.channels.iter().map(|c| s(c.name())).collect();
    let mut text = format!("schema = 1\nchannels = [{}]\n", list.join(", "));
    if let Some(c) = &agent.cluster {
        let labels: Vec<String> = c
            .labels
            .iter()
            .map(|(k, v)| format!("{} = {}", s(k), s(v)))
            .collect();
        let args: Vec<String> = c.kubelet_args.iter().map(|a| s(a)).collect();
        text.push_str(&format!(
            "[cluster]\nkind = {}\nrole = {}\nlabels = {{ {} }}\nkubelet_args = [{}]\n",
            s(c.kind().name()),
            s(c.role.name()),
            labels.join(", "),
            args.join(", ")
        ));
        match c.flavor {
            ClusterFlavor::K3s { containerd } => {
                text.push_str(&format!("containerd = {}\n", s(containerd.name())));
            }
            ClusterFlavor::Kubeadm { api } => {
                text.push_str(&format!("kubeadm_api = {}\n", s(api.name())));
            }
        }
        text.push_str(&format!("kubernetes = {}\n", s(&c.kubernetes.to_string())));
    }
    text
}

fn shipped_profiles() -> Vec<Profile> {
    ["qemu", "homelab", "cloud", "k3s"]
        .iter()
        .map(|name| {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../profiles/{name}.toml"));
            Profile::load(&path).unwrap()
        })
        .collect()
}

/// The `[update]` table a shipped profile's agent.toml carries: version 1.0.0, no
/// `[update]` section, so the defaults spelled out.
fn shipped_update_table(name: &str) -> UpdateTable {
    UpdateTable {
        image: name.to_string(),
        version: "1.0.0".into(),
        tries: Some(kiln_contract::boot::DEFAULT_TRIES),
        health_timeout_secs: Some(agent_config::DEFAULT_HEALTH_TIMEOUT_SECS),
        health: None,
    }
}

#[test]
fn agent_toml_of_every_shipped_profile_reads_as_before_plus_its_update_table() {
    let read = |text: &str| toml::from_str::<SettingsFile>(text).unwrap();
    for p in shipped_profiles() {
        let text = p.agent_toml();
        assert!(text.starts_with("# Written by kiln"), "{text}");
        assert_eq!(
            read(&text),
            SettingsFile {
                update: Some(shipped_update_table(&p.name)),
                ..read(&agent_toml_as_formatted_before(&p.agent))
            },
            "{}:\n{text}",
            p.name
        );
        // The agent's part alone is the file as before.
        assert_eq!(
            read(&p.agent.to_toml()),
            read(&agent_toml_as_formatted_before(&p.agent))
        );
    }
    // Spelled out for k3s, the one with a [cluster].
    let k3s = shipped_profiles().pop().unwrap();
    assert_eq!(
        read(&k3s.agent_toml()),
        SettingsFile {
            schema: Some(1),
            channels: Some(vec![
                Channel::Cmdline,
                Channel::Esp,
                Channel::Cidata,
                Channel::FwCfg
            ]),
            cluster: Some(agent_config::ClusterTable {
                kind: ClusterKind::K3s,
                role: Some(ImageRole::Any),
                labels: Some(BTreeMap::new()),
                kubelet_args: Some(Vec::new()),
                containerd: Some(Containerd::K3s),
                kubeadm_api: None,
                kubernetes: Some("1.36.4".parse().unwrap()),
            }),
            update: Some(shipped_update_table("k3s")),
        }
    );
}

#[test]
fn kernel_words_of_every_shipped_profile_are_as_before() {
    let hash: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
    let mut disks = Vec::new();
    for p in shipped_profiles() {
        disks.push(p.disk);
    }
    // And the values no shipped profile uses.
    disks.push(Disk {
        verity_check: VerityCheck::OnRead,
        var_fallback: VarFallback::Tmpfs,
        var_min_size: 1536 << 20,
        ..disks[0]
    });
    for disk in disks {
        let mut before = vec![format!("kiln.roothash={}", hex::encode(hash))];
        if disk.verity_check == VerityCheck::OnRead {
            before.push("kiln.verity_check=on-read".into());
        }
        before.push(format!("kiln.var_min={}", disk.var_min_size));
        if disk.var_fallback == VarFallback::Tmpfs {
            before.push("kiln.var_fallback=tmpfs".into());
        }
        let now = kiln_contract::cmdline::InitArgs {
            root_hash: Some(hash),
            verity_check: disk.verity_check,
            var_min: disk.var_min_size,
            var_fallback: disk.var_fallback,
        }
        .to_words();
        assert_eq!(now, before, "{disk:?}");
    }
}
