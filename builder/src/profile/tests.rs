use super::*;

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
    assert_eq!(p.agent.channels, AGENT_CHANNELS.to_vec());
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
    assert_eq!(p.agent.channels, ["esp", "cmdline"]);
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
