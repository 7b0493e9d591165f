//! Where the UKI's kernel and stub come from: the kernel image is moved out
//! of the unpacked root (it boots from the UKI, not from `/boot`), and
//! systemd-stub is taken from the boot package, which never enters the root.
//! systemd-boot, which boots the UKIs from the ESP, comes from the same
//! package, so the loader and the stub are always of one systemd release.

use std::sync::Arc;

use crate::arch::Arch;
use crate::lock::LockedPackage;
use crate::tree::{FileTree, Kind, Node, TreeError};
use crate::unpack::Deb;

/// A piece of the UKI is missing from the packages.
#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    /// No `boot/vmlinuz-*` in the root.
    #[error("no kernel image (boot/vmlinuz-*) in the locked kernel packages")]
    NoKernel,
    /// The kernel image comes from a package that is not a kernel package.
    #[error("/{path} comes from {origin}, not from a locked kernel package")]
    ForeignKernel {
        /// Tree path of the kernel image.
        path: String,
        /// Origin of the entry (`pkg:NAME`).
        origin: String,
    },
    /// The boot package lacks a file kiln takes from it (the stub, systemd-boot).
    #[error(
        "the boot package {package} does not ship /{path}; set `boot.stub_package` in the \
         profile to a package with systemd-stub and systemd-boot (Debian's systemd-boot-efi)"
    )]
    NoStub {
        /// The boot package.
        package: String,
        /// The stub path it should have.
        path: &'static str,
    },
    /// Reading or rewriting the tree failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// The kernel the UKI boots, and where it came from.
#[derive(Debug, Clone)]
pub struct KernelImage {
    /// Kernel release (`uname -r`), from the image's file name.
    pub release: String,
    /// The image (`.linux`).
    pub vmlinuz: Arc<[u8]>,
    /// The kernel package that shipped it.
    pub package: String,
    /// That package's version.
    pub version: String,
}

/// Moves `boot/vmlinuz-*` out of the tree and drops the rest of /boot
/// (config, System.map): the root has no use for them. The image must come
/// from one of `kernel_packages`.
pub fn take_kernel(
    tree: &mut FileTree,
    kernel_packages: &[&LockedPackage],
) -> Result<KernelImage, PartsError> {
    let (path, release, origin) = tree
        .descendants("boot")
        .find_map(|(p, n)| {
            p.strip_prefix("boot/vmlinuz-")
                .map(|r| (p.clone(), r.to_string(), n.origin.clone()))
        })
        .ok_or(PartsError::NoKernel)?;
    let package = kernel_packages
        .iter()
        .find(|p| origin == format!("pkg:{}", p.name))
        .ok_or_else(|| PartsError::ForeignKernel {
            path: path.clone(),
            origin: origin.clone(),
        })?;
    let vmlinuz = tree.read(&path)?;
    tree.remove_subtree("boot");
    tree.insert("boot", Node::dir(0o755, tree.epoch(), "kiln:kernel"))?;
    Ok(KernelImage {
        release,
        vmlinuz,
        package: package.name.clone(),
        version: package.version.clone(),
    })
}

/// systemd-stub for `arch` out of the boot package.
pub fn stub(boot_package: &Deb, arch: Arch) -> Result<Arc<[u8]>, PartsError> {
    boot_file(boot_package, arch.efi_stub_path())
}

/// systemd-boot for `arch` out of the boot package.
pub fn systemd_boot(boot_package: &Deb, arch: Arch) -> Result<Arc<[u8]>, PartsError> {
    boot_file(boot_package, arch.systemd_boot_path())
}

/// The regular file at `path` in the boot package.
fn boot_file(boot_package: &Deb, path: &'static str) -> Result<Arc<[u8]>, PartsError> {
    boot_package
        .entries
        .iter()
        .find(|(p, _)| p == path)
        .and_then(|(_, n)| match &n.kind {
            Kind::File(d) => Some(d.clone()),
            _ => None,
        })
        .ok_or_else(|| PartsError::NoStub {
            package: boot_package.package.clone(),
            path,
        })
}
