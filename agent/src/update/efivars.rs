//! The EFI variables systemd-boot sets for the system it boots, read from efivarfs
//! (`/sys/firmware/efi/efivars`): whether this boot is on trial, and which entry and
//! which ESP it came from.
//!
//! Each variable is a file named `<Name>-<vendor GUID>` holding 4 bytes of attributes
//! and then the value; systemd-boot's values are UTF-16LE strings ending in a NUL.
//! `LoaderBootCountPath` is set only when the booted entry carries a boot counter
//! (`\EFI\Linux\kiln-b+2-1.efi`, as named after systemd-boot counted this attempt):
//! that is what "this boot is on trial" means, for init's failure path and for
//! `update boot`.
//!
//! systemd mounts efivarfs in the running system; the initramfs's init mounts it itself
//! (it needs `efivarfs.ko` in the initramfs where the kernel builds it as a module).

use std::fmt;
use std::io;

use kiln_contract::boot::UkiName;
use nix::errno::Errno;

use crate::sys::Files;

/// systemd-boot's vendor GUID (the "Loader" namespace of the Boot Loader Interface).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// The UKI file systemd-boot booted, when it has a boot counter.
pub const BOOT_COUNT_PATH: &str = "LoaderBootCountPath";
/// The id of the entry systemd-boot booted (a UKI's file name, counter removed).
pub const ENTRY_SELECTED: &str = "LoaderEntrySelected";
/// The PARTUUID of the ESP systemd-boot was loaded from.
pub const DEVICE_PART_UUID: &str = "LoaderDevicePartUUID";
/// sysfs's EFI folder below the sysfs mount point: present only on an EFI boot.
pub const FIRMWARE_EFI: &str = "firmware/efi";
/// efivarfs's mount point below the sysfs mount point.
pub const EFIVARS: &str = "firmware/efi/efivars";
/// Longest variable read (systemd-boot's are short paths and ids).
const MAX_VAR_BYTES: usize = 4096;

/// systemd-boot's variables for this boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoaderVars {
    /// Whether the machine booted through UEFI at all (sysfs has `firmware/efi`).
    pub efi: bool,
    /// `LoaderBootCountPath`: set when the booted UKI is on trial.
    pub boot_count_path: Option<String>,
    /// `LoaderEntrySelected`.
    pub entry_selected: Option<String>,
    /// `LoaderDevicePartUUID` (upper case, as systemd-boot writes it).
    pub device_part_uuid: Option<String>,
}

/// A boot on trial: the UKI systemd-boot booted with its counter, as it is named now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialBoot {
    /// The UKI's name (its counter already counts this attempt).
    pub uki: UkiName,
}

impl TrialBoot {
    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.uki.tries.map_or(1, |t| t.done.max(1))
    }

    /// Attempts the version gets in all.
    pub fn attempts(&self) -> u32 {
        self.uki
            .tries
            .map_or(1, |t| t.left.saturating_add(t.done).max(1))
    }

    /// Whether this is the last attempt: failing it makes systemd-boot fall back.
    pub fn last(&self) -> bool {
        self.uki.tries.is_none_or(|t| t.left == 0)
    }
}

impl LoaderVars {
    /// The booted UKI when this boot is on trial: `LoaderBootCountPath` is set and its
    /// file name is one of kiln's UKI names with a counter.
    pub fn trial(&self) -> Option<TrialBoot> {
        let path = self.boot_count_path.as_deref()?;
        let name = path.rsplit(['\\', '/']).next().unwrap_or(path);
        let uki = UkiName::parse(name)?;
        uki.tries.is_some().then_some(TrialBoot { uki })
    }

    /// The booted UKI's file name as `LoaderBootCountPath` spells it (without folders).
    pub fn booted_file(&self) -> Option<&str> {
        let path = self.boot_count_path.as_deref()?;
        path.rsplit(['\\', '/']).next()
    }

    /// The slot of the entry systemd-boot says it booted (`LoaderEntrySelected`, else
    /// `LoaderBootCountPath`), from its file name.
    pub fn selected_uki(&self) -> Option<UkiName> {
        if let Some(t) = self.trial() {
            return Some(t.uki);
        }
        let id = self.entry_selected.as_deref()?;
        UkiName::parse(id.rsplit(['\\', '/']).next().unwrap_or(id))
    }
}

/// Why the variables could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EfiVarsError {
    /// efivarfs is not mounted and mounting it failed.
    Mount {
        /// Where it was mounted.
        target: String,
        /// mount(2)'s error.
        errno: Errno,
    },
    /// A variable's file could not be read or is not a UTF-16 string.
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
}

impl fmt::Display for EfiVarsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EfiVarsError::Mount {
                target,
                errno: Errno::ENODEV,
            } => write!(
                f,
                "cannot mount efivarfs on {target}: the kernel has no efivarfs driver \
                 (efivarfs.ko must be loaded: add the `efi` module set to the image, and \
                 to the initramfs for init)"
            ),
            EfiVarsError::Mount { target, errno } => {
                write!(f, "cannot mount efivarfs on {target}: {errno}")
            }
            EfiVarsError::Read { path, why } => write!(f, "{path}: {why}"),
        }
    }
}

/// Decodes a variable file: 4 bytes of attributes, then UTF-16LE up to the first NUL
/// (or the end). None when it is too short or not UTF-16.
pub fn decode(file: &[u8]) -> Option<String> {
    let value = file.get(4..)?;
    if value.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = value
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// Encodes a value as systemd-boot writes it (attributes: non-volatile, boot service and
/// runtime access), for tests and fakes.
#[cfg(test)]
pub fn encode(value: &str) -> Vec<u8> {
    let mut out = 7u32.to_le_bytes().to_vec();
    for u in value.encode_utf16().chain([0]) {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out
}

/// The file of variable `name` of systemd-boot under efivarfs mounted below `sysfs`.
pub fn var_path(sysfs: &str, name: &str) -> String {
    format!(
        "{}/{EFIVARS}/{name}-{LOADER_GUID}",
        sysfs.trim_end_matches('/')
    )
}

fn read_var<S: Files + ?Sized>(
    sys: &mut S,
    sysfs: &str,
    name: &str,
) -> Result<Option<String>, EfiVarsError> {
    let path = var_path(sysfs, name);
    match sys.read_prefix(&path, MAX_VAR_BYTES) {
        Ok(bytes) => decode(&bytes).map(Some).ok_or(EfiVarsError::Read {
            path,
            why: "not a NUL-terminated UTF-16 string after the 4 attribute bytes".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EfiVarsError::Read {
            path,
            why: e.to_string(),
        }),
    }
}

/// Reads systemd-boot's variables under `sysfs` (`/sys`), mounting efivarfs first
/// through `mount(sys, target)` when its folder is empty or missing (EBUSY from it means
/// mounted already). Off UEFI (no `firmware/efi`), every variable is unset.
pub fn read<S: Files + ?Sized>(
    sys: &mut S,
    sysfs: &str,
    mount: impl FnOnce(&mut S, &str) -> Result<(), Errno>,
) -> Result<LoaderVars, EfiVarsError> {
    let base = sysfs.trim_end_matches('/');
    if !sys.exists(&format!("{base}/{FIRMWARE_EFI}")) {
        return Ok(LoaderVars::default());
    }
    let target = format!("{base}/{EFIVARS}");
    let mounted = sys.list_dir(&target).is_ok_and(|names| !names.is_empty());
    if !mounted {
        match mount(sys, &target) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(errno) => return Err(EfiVarsError::Mount { target, errno }),
        }
    }
    Ok(LoaderVars {
        efi: true,
        boot_count_path: read_var(sys, base, BOOT_COUNT_PATH)?,
        entry_selected: read_var(sys, base, ENTRY_SELECTED)?,
        device_part_uuid: read_var(sys, base, DEVICE_PART_UUID)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    fn with_vars(vars: &[(&str, &str)]) -> FakeSys {
        let mut f = FakeSys::default();
        f.dirs.insert("/sys/firmware/efi".into());
        for (name, value) in vars {
            f.files.insert(var_path("/sys", name), encode(value));
        }
        f
    }

    #[test]
    fn decodes_what_systemd_boot_writes() {
        let mut raw = 6u32.to_le_bytes().to_vec();
        for u in "\\EFI\\Linux\\kiln-b+2-1.efi".encode_utf16() {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        // Without the NUL, and with it plus junk after it.
        assert_eq!(decode(&raw).unwrap(), "\\EFI\\Linux\\kiln-b+2-1.efi");
        raw.extend_from_slice(&[0, 0, b'x', 0]);
        assert_eq!(decode(&raw).unwrap(), "\\EFI\\Linux\\kiln-b+2-1.efi");
        assert_eq!(decode(&encode("kiln-a.efi")).unwrap(), "kiln-a.efi");
        assert_eq!(decode(&[7, 0, 0]), None);
        assert_eq!(decode(&[7, 0, 0, 0, b'a']), None, "odd length");
        assert_eq!(decode(&[7, 0, 0, 0, 0x00, 0xd8]), None, "lone surrogate");
    }

    #[test]
    fn a_counted_entry_is_a_trial_and_says_which_attempt() {
        let mut f = with_vars(&[
            (BOOT_COUNT_PATH, "\\EFI\\Linux\\kiln-b+2-1.efi"),
            (ENTRY_SELECTED, "kiln-b.efi"),
            (DEVICE_PART_UUID, "A0B1C2D3-0000-4000-8000-000000000001"),
        ]);
        let vars = read(&mut f, "/sys", |_, _| panic!("mounted already")).unwrap();
        let t = vars.trial().unwrap();
        assert_eq!(t.uki.slot, kiln_contract::boot::Slot::B);
        assert_eq!((t.attempt(), t.attempts(), t.last()), (1, 3, false));
        assert_eq!(vars.booted_file(), Some("kiln-b+2-1.efi"));
        assert_eq!(vars.selected_uki(), Some(t.uki));
        assert_eq!(
            vars.device_part_uuid.as_deref(),
            Some("A0B1C2D3-0000-4000-8000-000000000001")
        );

        let last = LoaderVars {
            boot_count_path: Some("\\EFI\\Linux\\kiln-b+0-3.efi".into()),
            ..vars.clone()
        };
        let t = last.trial().unwrap();
        assert_eq!((t.attempt(), t.attempts(), t.last()), (3, 3, true));
    }

    #[test]
    fn no_counter_means_no_trial() {
        let mut f = with_vars(&[(ENTRY_SELECTED, "kiln-a.efi")]);
        let vars = read(&mut f, "/sys", |_, _| Ok(())).unwrap();
        assert!(vars.efi);
        assert_eq!(vars.trial(), None);
        assert_eq!(
            vars.selected_uki().map(|u| u.slot),
            Some(kiln_contract::boot::Slot::A)
        );
        // A counter path that is not a kiln UKI (someone else's entry) is no trial either.
        let other = LoaderVars {
            boot_count_path: Some("\\EFI\\Linux\\debian+3.efi".into()),
            ..vars
        };
        assert_eq!(other.trial(), None);
    }

    #[test]
    fn mounts_efivarfs_when_its_folder_is_empty_and_not_off_uefi() {
        let mut f = FakeSys::default();
        f.dirs.insert("/sys/firmware/efi".into());
        let mut mounted = Vec::new();
        let vars = read(&mut f, "/sys", |_, t| {
            mounted.push(t.to_string());
            Err(Errno::EBUSY)
        })
        .unwrap();
        assert_eq!(mounted, ["/sys/firmware/efi/efivars"]);
        assert_eq!(vars.trial(), None);

        let e = read(&mut f, "/sys", |_, _| Err(Errno::ENODEV)).unwrap_err();
        assert!(e.to_string().contains("efivarfs.ko"), "{e}");

        let mut bios = FakeSys::default();
        let vars = read(&mut bios, "/sys", |_, _| panic!("no EFI, no mount")).unwrap();
        assert_eq!(vars, LoaderVars::default());
    }

    #[test]
    fn a_garbled_variable_names_its_file() {
        let mut f = with_vars(&[]);
        f.files
            .insert(var_path("/sys", BOOT_COUNT_PATH), vec![7, 0, 0, 0, 1]);
        let e = read(&mut f, "/sys", |_, _| Ok(())).unwrap_err();
        assert!(
            e.to_string()
                .contains("/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082"),
            "{e}"
        );
    }
}
