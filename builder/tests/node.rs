//! The Kubernetes-ready node: the real binary builds profiles/homelab.toml
//! and profiles/cloud.toml for both arches, and independent tools check the
//! root it wrote: debugfs reads files and links, e2fsck checks the ext4,
//! systemd-analyze verifies the units against the image's own systemd, and
//! the real containerd from the locked package parses the containerd config.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;
use support::{repo, run};

/// `kiln build` of a repository profile, raw only, into `out`.
fn build(profile: &str, arch: &str, out: &Path, extra: &[&str]) {
    let start = std::time::Instant::now();
    run(Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["-q", "build"])
        .arg(repo().join("profiles").join(format!("{profile}.toml")))
        .args(["--arch", arch, "--format", "raw", "--out"])
        .arg(out)
        .args(extra));
    eprintln!(
        "built {profile} ({arch}) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// One built image: its manifest and debugfs access to its root.
struct Image {
    raw: PathBuf,
    manifest: serde_json::Value,
    root_offset: u64,
}

impl Image {
    fn open(out: &Path, name: &str, arch: &str) -> Image {
        let raw = out.join(format!("{name}-{arch}.raw"));
        let text =
            std::fs::read_to_string(out.join(format!("{name}-{arch}.manifest.json"))).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        let root_offset = manifest["disk"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["role"] == "root")
            .unwrap()["offset"]
            .as_u64()
            .unwrap();
        Image {
            raw,
            manifest,
            root_offset,
        }
    }

    /// The root filesystem as an e2fsprogs device name.
    fn dev(&self) -> String {
        format!("{}?offset={}", self.raw.display(), self.root_offset)
    }

    fn debugfs(&self, request: &str) -> String {
        let out = run(Command::new("debugfs").args(["-R", request, &self.dev()]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cat(&self, path: &str) -> String {
        let text = self.debugfs(&format!("cat {path}"));
        assert!(
            !text.is_empty(),
            "{path} is missing or empty in {}",
            self.raw.display()
        );
        text
    }

    /// The target of a symlink (debugfs `stat` prints fast links inline).
    fn link(&self, path: &str) -> String {
        let stat = self.debugfs(&format!("stat {path}"));
        assert!(
            stat.contains("Type: symlink"),
            "{path} is not a symlink:\n{stat}"
        );
        stat.lines()
            .find_map(|l| l.trim().strip_prefix("Fast link dest: "))
            .unwrap_or_else(|| panic!("no link target for {path}:\n{stat}"))
            .trim_matches('"')
            .to_string()
    }

    fn names(&self, dir: &str) -> Vec<String> {
        self.debugfs(&format!("ls -p {dir}"))
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(String::from))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect()
    }

    fn exists(&self, path: &str) -> bool {
        !self.debugfs(&format!("stat {path}")).is_empty()
    }
}

/// What every node image must hold, whatever the profile (`name`, version 1.0.0).
fn check_node_root(img: &Image, name: &str, channels: &[&str]) {
    let fsck = Command::new("e2fsck")
        .args(["-fn", &img.dev()])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    // The agent's settings, from the profile's [agent] section.
    let agent: toml::Value = toml::from_str(&img.cat("/usr/lib/kiln/agent.toml")).unwrap();
    assert_eq!(agent["schema"].as_integer(), Some(1));
    let got: Vec<&str> = agent["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(got, channels);
    // ... and the image's [update] table, with the defaults spelled out.
    let update = &agent["update"];
    assert_eq!(update["image"].as_str(), Some(name));
    assert_eq!(update["version"].as_str(), Some("1.0.0"));
    assert_eq!(update["tries"].as_integer(), Some(3));
    assert_eq!(update["health_timeout_secs"].as_integer(), Some(600));

    // The image's name and version in os-release, once each (the UKI's .osrel and
    // systemd-boot's sorting come from this file).
    assert_eq!(img.link("/etc/os-release"), "../usr/lib/os-release");
    let os_release = img.cat("/usr/lib/os-release");
    for line in [
        format!("IMAGE_ID={name}"),
        "IMAGE_VERSION=1.0.0".to_string(),
    ] {
        assert_eq!(
            os_release.lines().filter(|l| *l == line).count(),
            1,
            "{line}:\n{os_release}"
        );
    }
    assert!(os_release.lines().any(|l| l == "ID=debian"), "{os_release}");
    // Where the node mounts its ESP: an empty folder in the read-only root.
    let efi = img.debugfs("stat /efi");
    assert!(
        efi.contains("Type: directory") && efi.contains("Mode:  0755"),
        "{efi}"
    );
    assert!(img.names("/efi").is_empty());
    // No [update] keys in the shipped profiles: the folder is there, empty.
    assert!(img.exists("/usr/lib/kiln/update-keys"));
    assert!(img.names("/usr/lib/kiln/update-keys").is_empty());

    // Static Kubernetes prerequisites, byte for byte the overlay's files.
    let base = repo().join("overlays/base/root");
    for f in [
        "etc/containerd/config.toml",
        "etc/modules-load.d/kiln-kubernetes.conf",
        "etc/sysctl.d/90-kiln-kubernetes.conf",
        "etc/systemd/network/80-kiln-wired.network",
        "usr/lib/systemd/system/kiln-config.service",
        "usr/lib/systemd/system/kiln-preflight.service",
    ] {
        let want = std::fs::read_to_string(base.join(f)).unwrap();
        assert_eq!(img.cat(&format!("/{f}")), want, "/{f}");
    }
    let modules_load = img.cat("/etc/modules-load.d/kiln-kubernetes.conf");
    for m in ["overlay", "br_netfilter"] {
        assert!(modules_load.lines().any(|l| l == m), "{modules_load}");
    }
    let sysctl = img.cat("/etc/sysctl.d/90-kiln-kubernetes.conf");
    for k in [
        "net.ipv4.ip_forward = 1",
        "net.ipv6.conf.all.forwarding = 1",
        "net.bridge.bridge-nf-call-iptables = 1",
        "net.bridge.bridge-nf-call-ip6tables = 1",
    ] {
        assert!(sysctl.lines().any(|l| l == k), "{k} missing:\n{sysctl}");
    }
    assert_eq!(
        img.link("/etc/resolv.conf"),
        "../run/systemd/resolve/stub-resolv.conf"
    );
    // The link's target is what systemd-resolved writes.
    let resolved = img.cat("/usr/lib/systemd/system/systemd-resolved.service");
    assert!(resolved.contains("ExecStart="), "{resolved}");
    assert_eq!(img.link("/usr/sbin/iptables"), "iptables-nft");
    assert_eq!(img.link("/usr/sbin/iptables-nft"), "xtables-nft-multi");
    assert!(img.exists("/usr/sbin/xtables-nft-multi"));
    assert!(img.exists("/usr/sbin/conntrack"));
    assert_eq!(img.link("/etc/cni/net.d"), "/var/lib/cni/net.d");

    // Enabled units: the links systemctl enable would make.
    let multi_user = img.names("/etc/systemd/system/multi-user.target.wants");
    for u in [
        "containerd.service",
        "kiln-config.service",
        "kiln-preflight.service",
        "kiln-update.service",
        "systemd-networkd.service",
    ] {
        assert!(
            multi_user.iter().any(|n| n == u),
            "{u} not enabled: {multi_user:?}"
        );
    }
    // A boot on trial reaches boot-complete.target (and so is blessed) only once
    // the update health check passed.
    assert_eq!(
        img.names("/etc/systemd/system/boot-complete.target.requires"),
        ["kiln-update.service"]
    );
    assert!(
        img.names("/etc/systemd/system/timers.target.wants")
            .iter()
            .any(|n| n == "kiln-update-check.timer"),
        "kiln-update-check.timer not enabled"
    );
    let sysinit = img.names("/etc/systemd/system/sysinit.target.wants");
    for u in ["systemd-resolved.service", "systemd-timesyncd.service"] {
        assert!(
            sysinit.iter().any(|n| n == u),
            "{u} not enabled: {sysinit:?}"
        );
    }

    // No swap anywhere, cgroup v2 left at systemd's default.
    let fstab = img.cat("/etc/fstab");
    assert!(!fstab.contains("swap"), "{fstab}");
    for dir in [
        "/etc/systemd/system",
        "/usr/lib/systemd/system",
        "/etc/systemd/system/multi-user.target.wants",
        "/etc/systemd/system/sysinit.target.wants",
    ] {
        let swaps: Vec<String> = img
            .names(dir)
            .into_iter()
            .filter(|n| n.ends_with(".swap"))
            .collect();
        assert!(swaps.is_empty(), "swap units in {dir}: {swaps:?}");
    }
    let cmdline = img.manifest["kernel"]["cmdline"].as_str().unwrap();
    assert!(
        !cmdline.contains("unified_cgroup_hierarchy") && !cmdline.contains("cgroup_no_v1"),
        "{cmdline}"
    );
    // A kernel panic reboots, so a bad new version uses up its boot tries.
    assert_eq!(
        cmdline
            .split(' ')
            .filter(|w| w.starts_with("panic="))
            .collect::<Vec<_>>(),
        ["panic=10"],
        "{cmdline}"
    );
    assert_eq!(img.manifest["debug_shell"], false);
    assert!(!img.exists("/etc/systemd/system/serial-getty@.service.d/kiln-debug-shell.conf"));
}

/// Every module of `want` is in the manifest and its .ko is in the root's
/// module tree, listed in the modules.dep kiln wrote.
fn check_modules(img: &Image, want: &[&str]) {
    let kver = img.manifest["kernel"]["release"].as_str().unwrap();
    let dep = img.cat(&format!("/usr/lib/modules/{kver}/modules.dep"));
    let root: Vec<&str> = img.manifest["modules"]["root"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in want {
        let norm = m.replace('-', "_");
        assert!(
            root.iter().any(|r| r.replace('-', "_") == norm),
            "{m} not in the manifest's modules"
        );
        let line = dep
            .lines()
            .find(|l| {
                let path = l.split(':').next().unwrap_or_default();
                let file = path.rsplit('/').next().unwrap_or_default();
                // Plain (bookworm) or compressed as trixie ships them.
                let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                    .iter()
                    .find_map(|s| file.strip_suffix(s))
                    .unwrap_or(file);
                stem.replace('-', "_") == norm
            })
            .unwrap_or_else(|| panic!("{m} not in modules.dep"));
        let path = line.split(':').next().unwrap();
        assert!(
            img.exists(&format!("/usr/lib/modules/{kver}/{path}")),
            "{path} listed but missing"
        );
    }
}

/// systemd-analyze verify with the image's own systemd, over its whole root.
fn verify_units(img: &Image, units: &[&str]) {
    let stage = tempfile::tempdir().unwrap();
    let root = support::dump_root(&img.raw, img.root_offset, &stage.path().join("root"));
    support::verify_units(&root, &root, units);
}

const NODE_MODULES: &[&str] = &[
    "overlay",
    "br_netfilter",
    "veth",
    "bridge",
    "nf_conntrack",
    "nft_compat",
    "xt_conntrack",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_comment",
    "xt_mark",
    "xt_multiport",
    "nf_nat",
    "vxlan",
    "ip_vs",
    "qemu_fw_cfg",
    "isofs",
    "vfat",
    "nls_cp437",
    "efivarfs",
];

#[test]
fn homelab_images_are_kubernetes_ready_on_both_arches() {
    let d = tempfile::tempdir().unwrap();
    build("homelab", "all", d.path(), &[]);
    for arch in ["x86_64", "arm64"] {
        let img = Image::open(d.path(), "homelab", arch);
        check_node_root(&img, "homelab", &["cmdline", "esp", "cidata", "fw_cfg"]);
        check_modules(&img, NODE_MODULES);
        check_modules(
            &img,
            &[
                "i6300esb",
                "e1000e",
                "igb",
                "igc",
                "r8169",
                "r8152",
                "tg3",
                "atlantic",
                "ahci",
                "nvme",
                "usb-storage",
                "uas",
                "xhci-pci",
                "virtio_blk",
            ],
        );
        if arch == "arm64" {
            check_modules(
                &img,
                &[
                    "genet",
                    "dwmac-rk",
                    "sdhci-iproc",
                    "sdhci-of-arasan",
                    "dw_mmc-rockchip",
                ],
            );
        }
        // Storage drivers reach the root, so they are in the initramfs too.
        let initramfs = img.manifest["modules"]["initramfs"].to_string();
        assert!(initramfs.contains("\"ahci\"") && initramfs.contains("\"nvme\""));
        assert!(img.manifest["kernel"]["cmdline"]
            .as_str()
            .unwrap()
            .split(' ')
            .all(|w| w != "kiln.var_fallback=tmpfs"));
    }
    check_ssh(&Image::open(d.path(), "homelab", "x86_64"));
    verify_units(
        &Image::open(d.path(), "homelab", "x86_64"),
        &[
            "kiln-ssh.service",
            "ssh.service",
            "kiln-config.service",
            "kiln-preflight.service",
            "kiln-update.service",
            "kiln-update-check.service",
            "kiln-update-check.timer",
            "systemd-networkd-wait-online.service",
        ],
    );
}

/// `[ssh] enable = true` (homelab): the server, its privilege separation user, kiln's
/// sshd_config, and both units enabled, sshd ordered after kiln-ssh.
fn check_ssh(img: &Image) {
    assert!(img.exists("/usr/sbin/sshd") && img.exists("/usr/bin/ssh-keygen"));
    assert!(img
        .cat("/etc/passwd")
        .lines()
        .any(|l| l.starts_with("sshd:")));
    let config = img.cat("/etc/ssh/sshd_config");
    for line in [
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "AuthorizedKeysFile /run/kiln/ssh/authorized_keys/%u",
        "HostKey /var/lib/kiln/ssh/ssh_host_ed25519_key",
    ] {
        assert!(config.lines().any(|l| l == line), "{line}:\n{config}");
    }
    let wants = img.names("/etc/systemd/system/multi-user.target.wants");
    for unit in ["kiln-ssh.service", "ssh.service"] {
        assert!(
            wants.iter().any(|n| n == unit),
            "{unit} not enabled: {wants:?}"
        );
    }
    let dropin = img.cat("/usr/lib/systemd/system/ssh.service.d/kiln.conf");
    assert!(
        dropin.contains("Requires=kiln-ssh.service") && dropin.contains("After=kiln-ssh.service")
    );
}

/// Bookworm stays a choice for pinned fleets: profiles/bookworm.toml (the
/// homelab node on Debian 12) builds from its lock and its root passes the
/// same checks, with bookworm's own systemd (252) verifying the units.
/// x86_64 only: the arm64 build differs from trixie's in nothing bookworm-
/// specific that the homelab test does not cover.
#[test]
fn bookworm_profile_still_builds_a_node_that_passes_the_image_checks() {
    let d = tempfile::tempdir().unwrap();
    build("bookworm", "x86_64", d.path(), &[]);
    let img = Image::open(d.path(), "bookworm", "x86_64");
    let systemd = img.manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "systemd")
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(systemd.starts_with("252."), "systemd {systemd}");
    assert!(img.manifest["kernel"]["release"]
        .as_str()
        .unwrap()
        .starts_with("6.1."));
    check_node_root(&img, "bookworm", &["cmdline", "esp", "cidata", "fw_cfg"]);
    check_modules(&img, NODE_MODULES);
    verify_units(
        &img,
        &[
            "kiln-config.service",
            "kiln-preflight.service",
            "systemd-networkd-wait-online.service",
        ],
    );
}

#[test]
fn cloud_images_carry_cloud_drivers_on_both_arches() {
    let d = tempfile::tempdir().unwrap();
    build("cloud", "all", d.path(), &[]);
    for arch in ["x86_64", "arm64"] {
        let img = Image::open(d.path(), "cloud", arch);
        check_node_root(
            &img,
            "cloud",
            &["cmdline", "esp", "cidata", "fw_cfg", "cloud"],
        );
        // No `[ssh]`: no server, no key step.
        assert!(!img.exists("/usr/sbin/sshd") && !img.exists("/etc/ssh/sshd_config"));
        check_modules(&img, NODE_MODULES);
        check_modules(
            &img,
            &[
                "ena",
                "gve",
                "hv_vmbus",
                "hv_netvsc",
                "hv_storvsc",
                "hv_utils",
                "nvme",
                "virtio_net",
                "virtio_blk",
                "virtio_scsi",
            ],
        );
        let initramfs = img.manifest["modules"]["initramfs"].to_string();
        assert!(initramfs.contains("\"hv_storvsc\"") && initramfs.contains("\"nvme\""));
    }
}

#[test]
fn debug_shell_and_appended_cmdline_reach_the_image() {
    let d = tempfile::tempdir().unwrap();
    build(
        "homelab",
        "x86_64",
        d.path(),
        &[
            "--debug-shell",
            "--append-cmdline",
            "kiln.hostname=dbg-1",
            "--append-cmdline",
            "kiln.debug",
        ],
    );
    let img = Image::open(d.path(), "homelab", "x86_64");
    assert_eq!(img.manifest["debug_shell"], true);
    let cmdline = img.manifest["kernel"]["cmdline"].as_str().unwrap();
    assert!(
        cmdline.ends_with(" kiln.hostname=dbg-1 kiln.debug"),
        "{cmdline}"
    );
    for unit in ["serial-getty@", "getty@"] {
        let dropin = img.cat(&format!(
            "/etc/systemd/system/{unit}.service.d/kiln-debug-shell.conf"
        ));
        assert!(dropin.contains("--autologin root"), "{dropin}");
    }
    verify_units(&img, &["serial-getty@ttyS0.service", "getty@tty1.service"]);
}

#[test]
fn containerd_reads_the_config_with_the_kubernetes_settings() {
    // The containerd the images ship, from the locked package.
    let lock = kiln::lock::Lockfile::read(&repo().join("profiles/qemu.lock")).unwrap();
    let pkg = lock
        .packages_for(kiln::arch::Arch::X86_64, None)
        .find(|p| p.name == "containerd")
        .unwrap()
        .clone();
    run(Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["-q", "fetch"])
        .arg(repo().join("profiles/qemu.toml"))
        .args(["--arch", "x86_64"]));
    let deb = kiln::fetch::Cache::from_env()
        .unwrap()
        .deb_path(&pkg.sha256);
    let x = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(x.path()));
    let containerd = x.path().join("usr/bin/containerd");
    // It is the version the lock pins (upstream part: without the Debian revision).
    let version = run(Command::new(&containerd).arg("--version"));
    let upstream = pkg
        .version
        .rsplit_once('-')
        .map_or(pkg.version.as_str(), |(u, _)| u);
    let upstream = upstream.split_once(':').map_or(upstream, |(_, u)| u);
    assert!(
        String::from_utf8_lossy(&version.stdout).contains(&format!(" {upstream} ")),
        "{} (locked: {})",
        String::from_utf8_lossy(&version.stdout),
        pkg.version
    );
    let config = repo().join("overlays/base/root/etc/containerd/config.toml");
    let dump = run(Command::new(&containerd)
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"]));
    let eff: toml::Value = toml::from_str(&String::from_utf8_lossy(&dump.stdout)).unwrap();
    assert_eq!(eff["version"].as_integer(), Some(2));
    assert_eq!(eff["root"].as_str(), Some("/var/lib/containerd"));
    assert_eq!(eff["state"].as_str(), Some("/run/containerd"));
    assert_eq!(
        eff["grpc"]["address"].as_str(),
        Some("/run/containerd/containerd.sock")
    );
    let disabled = eff["disabled_plugins"].as_array().unwrap();
    assert!(
        !disabled
            .iter()
            .any(|p| p.as_str().unwrap_or_default().contains("cri")),
        "CRI is disabled: {disabled:?}"
    );
    let cri = &eff["plugins"]["io.containerd.grpc.v1.cri"];
    assert_eq!(cri["containerd"]["snapshotter"].as_str(), Some("overlayfs"));
    assert_eq!(
        cri["containerd"]["default_runtime_name"].as_str(),
        Some("runc")
    );
    let runc = &cri["containerd"]["runtimes"]["runc"];
    assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
    assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/opt/cni/bin"));
    assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/etc/cni/net.d"));

    // The referee notices a wrong value: the same dump of the package's own
    // default config does not have the systemd cgroup driver.
    let default = run(Command::new(&containerd).args(["--config", "/dev/null", "config", "dump"]));
    let eff: toml::Value = toml::from_str(&String::from_utf8_lossy(&default.stdout)).unwrap();
    assert_ne!(
        eff["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["options"]
            ["SystemdCgroup"]
            .as_bool(),
        Some(true)
    );
}
