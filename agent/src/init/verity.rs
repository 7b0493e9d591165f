//! dm-verity for the root partition (scaffold: passes the partition through until the
//! verity helper lands).

use super::root::RootPartition;
use super::{Fatal, InitSys};
use crate::cmdline::InitOptions;

/// Returns the device to mount as the root.
pub(super) fn open_root(
    _sys: &mut dyn InitSys,
    _opts: &InitOptions,
    root: &RootPartition,
) -> Result<String, Fatal> {
    Ok(format!("/dev/{}", root.device))
}
