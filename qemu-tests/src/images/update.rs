//! The update tests' versions of profiles/qemu.toml: what each changes, the test
//! signing key they trust, and the overlays only they carry.

use std::path::PathBuf;

use kiln::arch::Arch;

use super::{build_once, Built, Spec};
use crate::repo_root;

/// The overlays the update tests' versions may add, relative to the repository root
/// (their bytes are part of those images' cache key).
pub(crate) const TEST_OVERLAYS: &str = "qemu-tests/fixtures/overlays";

/// The versions of profiles/qemu.toml the update tests boot and apply. Each trusts the
/// test key in qemu-tests/fixtures (and only it); every one but [`UpdateBuild::V1`] is
/// built as a signed bundle (`--format update`) for the running node to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpdateBuild {
    /// 1.0.0 with the debug shell: the image the node is flashed with (raw and
    /// qcow2).
    V1,
    /// 2.0.0: another motd (an overlay template's output changes).
    V2,
    /// 3.0.0: containerd is masked (a release with a broken runtime), so preflight's
    /// containerd check fails and with it the health check (30 s limit).
    V3Unhealthy,
    /// 3.0.1: its module sets lack `virtio`, so init never finds the root disk.
    V3NoRoot,
    /// 3.0.2: the kernel cannot run the initramfs's init and panics.
    V3Panic,
    /// 3.0.3: a unit starves userspace once the watchdog is armed (and the watchdog
    /// is cut to 20 s): only the watchdog resets the machine.
    V3Hang,
}

impl UpdateBuild {
    /// The image version it carries.
    pub fn version(self) -> &'static str {
        match self {
            UpdateBuild::V1 => "1.0.0",
            UpdateBuild::V2 => "2.0.0",
            UpdateBuild::V3Unhealthy => "3.0.0",
            UpdateBuild::V3NoRoot => "3.0.1",
            UpdateBuild::V3Panic => "3.0.2",
            UpdateBuild::V3Hang => "3.0.3",
        }
    }

    /// The motd line the image shows (`[vars] motd`).
    pub fn motd(self) -> String {
        format!("kiln node {}", self.version())
    }

    pub(super) fn change(self, profile: &mut kiln::profile::Profile) -> anyhow::Result<()> {
        profile.version = kiln_contract::version::ImageVersion::parse(self.version())?;
        let key = std::fs::read_to_string(update_test_key_pub())?;
        profile.update.keys = vec![kiln_contract::signing::PublicKey::parse_text(&key)?];
        profile
            .vars
            .insert("motd".into(), serde_json::Value::String(self.motd()));
        match self {
            UpdateBuild::V1 | UpdateBuild::V2 => {}
            UpdateBuild::V3Unhealthy => {
                profile.systemd.enable.retain(|u| u != "containerd.service");
                profile.systemd.mask.push("containerd.service".into());
                profile.update.health_timeout_secs = 30;
            }
            UpdateBuild::V3NoRoot => {
                profile.kernel.module_sets.retain(|s| s != "virtio");
                profile.append_cmdline(&["kiln.rootwait=5".to_string()])?;
            }
            UpdateBuild::V3Panic => {
                profile.append_cmdline(&["rdinit=/kiln-no-such-init".to_string()])?;
            }
            UpdateBuild::V3Hang => {
                profile.overlays.push(kiln::profile::OverlayRef {
                    name: "hang".into(),
                    dir: repo_root().join(TEST_OVERLAYS).join("hang"),
                });
                profile.systemd.enable.push("kiln-test-hang.service".into());
            }
        }
        Ok(())
    }
}

/// The update tests' signing key (a test key: its secret half is in the repository,
/// so no real profile may trust it).
pub fn update_test_key() -> PathBuf {
    repo_root().join("qemu-tests/fixtures/update-test.key")
}

/// The public half of [`update_test_key`].
pub fn update_test_key_pub() -> PathBuf {
    repo_root().join("qemu-tests/fixtures/update-test.key.pub")
}

/// The hostname on the command line of the update tests' images.
pub fn update_hostname(arch: Arch) -> String {
    format!("update-{}", arch.name().replace('_', "-"))
}

/// profiles/qemu.toml as `which` of the update tests, with the debug shell and
/// `kiln.hostname=<hostname>`: V1 as a raw and a qcow2 image, the others as a signed
/// bundle ([`Built::output`]`(".update")`).
pub fn update_image(arch: Arch, which: UpdateBuild) -> anyhow::Result<Built> {
    build_once(Spec {
        profile: "profiles/qemu.toml".into(),
        arch,
        all_formats: false,
        debug_shell: true,
        append_cmdline: vec![format!("kiln.hostname={}", update_hostname(arch))],
        artifact: None,
        update: Some(which),
    })
}
