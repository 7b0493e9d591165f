//! The QEMU fw_cfg channel: the item `opt/kiln/config`, given to QEMU with
//! `-fw_cfg name=opt/kiln/config,file=kiln.toml` (or `string=...`), read through the
//! `qemu_fw_cfg` module's sysfs view.

use std::io;

use super::{ConfigSys, Finding};

/// The fw_cfg sysfs folder; its absence means the module is not loaded (or there is no
/// fw_cfg device).
pub const FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg";
/// The item's contents.
pub const FW_CFG_RAW: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/kiln/config/raw";
/// The item's name, as the user passes it to QEMU (the place printed on the console).
pub const FW_CFG_NAME: &str = "opt/kiln/config";
/// The kernel module that provides the sysfs view.
pub const FW_CFG_MODULE: &str = "qemu_fw_cfg";

/// Reads the channel. Off QEMU, or without the item, it gives nothing.
pub fn gather(sys: &mut dyn ConfigSys) -> Option<Finding> {
    if !sys.exists(FW_CFG_DIR) {
        // modules-load.d normally loads it; loading it here covers images and boots where
        // that has not happened yet. On machines without fw_cfg it loads and finds nothing.
        if let Err(e) = sys.modprobe(FW_CFG_MODULE) {
            sys.say(&format!(
                "kiln-config: note: fw_cfg: modprobe {FW_CFG_MODULE}: {e}"
            ));
        }
        if !sys.exists(FW_CFG_DIR) {
            return None;
        }
    }
    match sys.read_file(FW_CFG_RAW) {
        Ok(bytes) => Some(Finding::parse("fw_cfg", FW_CFG_NAME, &bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some(Finding::error(
            "fw_cfg",
            FW_CFG_NAME,
            format!("reading {FW_CFG_RAW}: {e}"),
        )),
    }
}
