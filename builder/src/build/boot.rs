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

/// Seconds after a kernel panic until the kernel reboots ([`PANIC_WORD`]).
const PANIC_REBOOT_SECS: u32 = 10;
/// `panic=10`: a panicking kernel (an init that exits, a version that cannot mount
/// its root) reboots instead of hanging, so a bad new version uses up its boot
/// tries and systemd-boot falls back to the previous one.
const PANIC_WORD: &str = "panic=";

/// The UKI's command line: consoles, `panic=10` unless the profile sets its own,
/// the verity root hash and the node's boot policy from the profile, then the
/// profile's own words.
fn kernel_cmdline(profile: &Profile, arch: Arch, root_hash: &[u8; 32]) -> String {
    let mut words: Vec<String> = match arch {
        Arch::X86_64 => vec!["console=tty0".into(), "console=ttyS0,115200".into()],
        Arch::Arm64 => vec!["console=tty0".into(), "console=ttyAMA0,115200".into()],
    };
    let extra = profile.extra_cmdline();
    // The kernel takes the last panic= it sees, but one word is clearer to read.
    if !extra.iter().any(|w| w.starts_with(PANIC_WORD)) {
        words.push(format!("{PANIC_WORD}{PANIC_REBOOT_SECS}"));
    }
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
    words.extend(extra);
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn profile(cmdline: &str) -> Profile {
        let text = format!(
            "schema = 1\nname = \"t\"\narches = [\"x86_64\"]\n[debian]\nsuites = [\"trixie\"]\n\
             [kernel]\ncmdline = [{cmdline}]\n[kernel.package]\nx86_64 = \"linux-image-amd64\"\n\
             [disk]\nsize = \"1GiB\"\n"
        );
        Profile::parse(Path::new("t.toml"), &text, Path::new("overlays")).unwrap()
    }

    #[test]
    fn the_command_line_reboots_on_panic_unless_the_profile_says_otherwise() {
        let hash = [0xab; 32];
        let line = kernel_cmdline(&profile("\"quiet\""), Arch::X86_64, &hash);
        assert_eq!(
            line,
            format!(
                "console=tty0 console=ttyS0,115200 panic=10 kiln.roothash={} \
                 kiln.var_min={} quiet",
                hex::encode(hash),
                kiln_contract::cmdline::DEFAULT_VAR_MIN
            )
        );
        let line = kernel_cmdline(&profile("\"panic=0\""), Arch::Arm64, &hash);
        assert!(
            line.starts_with("console=tty0 console=ttyAMA0,115200 kiln.roothash="),
            "{line}"
        );
        assert!(line.ends_with(" panic=0"), "{line}");
        // --append-cmdline words count as the profile's.
        let mut p = profile("");
        p.append_cmdline(&["panic=-1".into()]).unwrap();
        let line = kernel_cmdline(&p, Arch::X86_64, &hash);
        assert_eq!(line.matches("panic=").count(), 1, "{line}");
    }
}
