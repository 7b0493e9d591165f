//! The QEMU fw_cfg channel: the item `opt/kiln/config`, given to QEMU with
//! `-fw_cfg name=opt/kiln/config,file=kiln.toml` (or `string=...`), read through the
//! `qemu_fw_cfg` module's sysfs view.

use std::io;
use std::time::Duration;

use super::{ConfigSys, Finding, READ_LIMIT};
use crate::sys::{Cmd, CommandResult};

/// The fw_cfg sysfs folder; its absence means the module is not loaded (or there is no
/// fw_cfg device).
pub const FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg";
/// The item's contents.
pub const FW_CFG_RAW: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/kiln/config/raw";
/// The item's name, as the user passes it to QEMU (the place printed on the console).
pub const FW_CFG_NAME: &str = "opt/kiln/config";
/// The kernel module that provides the sysfs view.
pub const FW_CFG_MODULE: &str = "qemu_fw_cfg";
/// How long `modprobe` may take.
const MODPROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads a kernel module by name.
fn modprobe(sys: &mut dyn ConfigSys, module: &str) -> Result<(), String> {
    match sys.run(&Cmd::new("modprobe", &["-q", module]).timeout(MODPROBE_TIMEOUT)) {
        CommandResult::Exited { code: Some(0), .. } => Ok(()),
        CommandResult::Exited { .. } => Err(format!("modprobe {module} failed")),
        CommandResult::TimedOut => Err(format!(
            "modprobe {module} did not finish within {} s",
            MODPROBE_TIMEOUT.as_secs()
        )),
        CommandResult::Failed(why) => Err(why),
    }
}

/// Reads the channel. Off QEMU, or without the item, it gives nothing.
pub fn gather(sys: &mut dyn ConfigSys) -> Option<Finding> {
    if !sys.exists(FW_CFG_DIR) {
        // modules-load.d normally loads it; loading it here covers images and boots where
        // that has not happened yet. On machines without fw_cfg it loads and finds nothing.
        if let Err(e) = modprobe(sys, FW_CFG_MODULE) {
            sys.say(&format!(
                "kiln-config: note: fw_cfg: modprobe {FW_CFG_MODULE}: {e}"
            ));
        }
        if !sys.exists(FW_CFG_DIR) {
            return None;
        }
    }
    match sys.read_prefix(FW_CFG_RAW, READ_LIMIT) {
        Ok(bytes) => Some(Finding::parse("fw_cfg", FW_CFG_NAME, &bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some(Finding::error(
            "fw_cfg",
            FW_CFG_NAME,
            format!("reading {FW_CFG_RAW}: {e}"),
        )),
    }
}
