//! The two target architectures and every per-arch name the pipeline needs.

use std::fmt;
use std::str::FromStr;

use kiln_contract::gpt::{types, Guid};
use serde::{Deserialize, Serialize};

/// A target architecture of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// 64-bit x86 (Debian `amd64`).
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM (Debian `arm64`, `aarch64`).
    Arm64,
}

impl Arch {
    /// Both arches, in a fixed order.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// The name kiln uses in file names and profiles.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Debian's architecture name.
    pub fn deb_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// What `uname -m` prints on this arch.
    pub fn uname_machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// Rust target triple of the static agent.
    pub fn musl_triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// File name of the removable-media boot path the firmware looks for in
    /// `EFI/BOOT/` on the ESP: kiln puts systemd-boot there.
    pub fn efi_boot_file(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Arm64 => "BOOTAA64.EFI",
        }
    }

    /// Where on the ESP the firmware finds the boot loader without any boot
    /// entry of its own (`EFI/BOOT/BOOTX64.EFI`): systemd-boot.
    pub fn efi_boot_path(self) -> String {
        format!("EFI/BOOT/{}", self.efi_boot_file())
    }

    /// systemd-boot inside Debian's `systemd-boot-efi` package (the package the
    /// stub comes from).
    pub fn systemd_boot_path(self) -> &'static str {
        match self {
            Arch::X86_64 => "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            Arch::Arm64 => "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
        }
    }

    /// The systemd-stub file inside Debian's `systemd-boot-efi` package.
    pub fn efi_stub_path(self) -> &'static str {
        match self {
            Arch::X86_64 => "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
            Arch::Arm64 => "usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
        }
    }

    /// The serial console device of QEMU's default machine for this arch.
    pub fn serial_console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// Discoverable Partitions Spec type GUID of the root partition.
    pub fn root_type_guid(self) -> Guid {
        match self {
            Arch::X86_64 => types::ROOT_X86_64,
            Arch::Arm64 => types::ROOT_ARM64,
        }
    }

    /// Discoverable Partitions Spec type GUID of the root verity partition.
    pub fn root_verity_type_guid(self) -> Guid {
        match self {
            Arch::X86_64 => types::ROOT_VERITY_X86_64,
            Arch::Arm64 => types::ROOT_VERITY_ARM64,
        }
    }

    /// The arch of the machine kiln runs on, if it is one kiln targets.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An arch name that kiln does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown arch {0:?}: expected x86_64 or arm64 (aliases: amd64, aarch64)")]
pub struct UnknownArch(pub String);

impl FromStr for Arch {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            other => Err(UnknownArch(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_parse_to_the_same_arch() {
        assert_eq!("amd64".parse::<Arch>().unwrap(), Arch::X86_64);
        assert_eq!("aarch64".parse::<Arch>().unwrap(), Arch::Arm64);
        assert!("riscv64".parse::<Arch>().is_err());
    }
}
