//! The static agent's size budget.
//!
//! The agent is in every image's initramfs and root, and the init runs it before
//! anything else: its size is paid on every node and every boot. The budget is the size
//! measured when it was set (2026-12-07: x86_64 2,648,904 bytes, arm64 2,200,632 bytes,
//! `--profile agent`, musl) plus 20 %. A change that needs more raises it here, with the
//! measured sizes and the reason in its commit message. `make test` checks it
//! (`image_checks::the_static_agent_stays_within_its_size_budget`) and `make bench`
//! records the sizes in BENCHMARKS.md.

use anyhow::Context;
use kiln::arch::Arch;

/// The most bytes the static agent may have, per arch.
pub fn budget(arch: Arch) -> u64 {
    match arch {
        Arch::X86_64 => 3_178_700,
        Arch::Arm64 => 2_640_800,
    }
}

/// The size of the agent binary kiln would put into an image for `arch` (found the way
/// a build finds it: `KILN_AGENT_<ARCH>`, else the cargo target folder).
pub fn size(arch: Arch) -> anyhow::Result<u64> {
    let path = kiln::build::AgentSource::from_env().locate(arch)?;
    let meta = std::fs::metadata(&path).with_context(|| path.display().to_string())?;
    Ok(meta.len())
}
