//! The `var` partition (scaffold: /var on a tmpfs until the var helper lands).

use nix::mount::MsFlags;

use super::root::RootPartition;
use super::{fatal, say, Fatal, InitSys, Stage, SYSROOT};
use crate::cmdline::InitOptions;

/// What [`mount`] will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum VarPlan {
    /// A tmpfs on /var.
    Tmpfs,
}

/// Decides (and, on first boot, creates) the `var` partition before anything on the
/// disk is opened.
pub(super) fn prepare(
    _sys: &mut dyn InitSys,
    _opts: &InitOptions,
    _root: &RootPartition,
) -> Result<VarPlan, Fatal> {
    Ok(VarPlan::Tmpfs)
}

/// Mounts /var under [`SYSROOT`] as planned.
pub(super) fn mount(
    sys: &mut dyn InitSys,
    _opts: &InitOptions,
    plan: VarPlan,
) -> Result<(), Fatal> {
    let VarPlan::Tmpfs = plan;
    let target = format!("{SYSROOT}/var");
    if !sys.is_dir(&target) {
        say(
            sys,
            "warning: no /var in the root filesystem; not mounting a tmpfs",
        );
        return Ok(());
    }
    sys.mount(
        "tmpfs",
        &target,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| fatal(Stage::BeforeRoot, format!("mounting tmpfs on {target}: {e}")))?;
    say(sys, "mounted tmpfs on /var (mode=0755)");
    Ok(())
}

/// Extra arguments for the system's init (`--machine-id=`), from /var.
pub(super) fn machine_id(_sys: &mut dyn InitSys) -> Result<Vec<String>, Fatal> {
    Ok(Vec::new())
}
