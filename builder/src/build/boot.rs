//! Stages "initramfs" and "uki": the boot image. The UKI is assembled last
//! of the boot pieces because its command line carries the root's verity
//! hash, which exists only once the root filesystem is written.

use super::image::RootVerity;
use super::inputs::{BootParts, Inputs};
use super::recipe::Job;
use super::tree::RootTree;
use super::BuildError;
use crate::arch::Arch;
use crate::profile::{Profile, VarFallback, VerityCheck};
use crate::uki::initramfs::{self, Initramfs};
use crate::uki::UkiParts;

/// Stage "uki": the Unified Kernel Image and the command line inside it.
#[derive(Debug)]
pub(super) struct Uki {
    /// The UKI file's bytes.
    pub image: Vec<u8>,
    /// Its `.cmdline`.
    pub cmdline: String,
}

/// Stage "initramfs": the agent as /init with the root's boot modules.
pub(super) fn initramfs(inputs: &Inputs, root: &RootTree) -> Result<Initramfs, BuildError> {
    Ok(initramfs::build(
        &root.tree,
        &inputs.agent,
        &root.modules,
        root.tree.epoch(),
    )?)
}

/// Stage "uki": stub, kernel, initramfs, os-release and the command line
/// that pins the root's hash.
pub(super) fn uki(
    job: &Job<'_>,
    parts: &BootParts,
    root: &RootTree,
    initramfs: &Initramfs,
    verity: &RootVerity,
) -> Result<Uki, BuildError> {
    let cmdline = kernel_cmdline(job.profile, job.arch, &verity.tree.root_hash);
    let image = crate::uki::assemble(
        &parts.stub,
        &UkiParts {
            arch: job.arch,
            osrel: &root.os_release,
            cmdline: cmdline.as_bytes(),
            uname: parts.kernel.release.as_bytes(),
            initrd: &initramfs.cpio,
            linux: &parts.kernel.vmlinuz,
        },
    )?;
    Ok(Uki { image, cmdline })
}

/// The UKI's command line: consoles, the verity root hash and the node's
/// boot policy from the profile, then the profile's own words.
fn kernel_cmdline(profile: &Profile, arch: Arch, root_hash: &[u8; 32]) -> String {
    let mut words: Vec<String> = match arch {
        Arch::X86_64 => vec!["console=tty0".into(), "console=ttyS0,115200".into()],
        Arch::Arm64 => vec!["console=tty0".into(), "console=ttyAMA0,115200".into()],
    };
    // The contract spells init's words, so the agent reads back exactly these values.
    let (verity_check, var_fallback): (VerityCheck, VarFallback) =
        (profile.disk.verity_check, profile.disk.var_fallback);
    let init = kiln_contract::cmdline::InitArgs {
        root_hash: Some(*root_hash),
        verity_check,
        var_min: profile.disk.var_min_size,
        var_fallback,
    };
    words.extend(init.to_words());
    words.extend(profile.extra_cmdline());
    words.join(" ")
}
