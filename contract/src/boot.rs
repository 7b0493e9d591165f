//! The A/B boot layout between the builder, init and the agent's updater: the two
//! root slots and their GPT names, the ESP's files (systemd-boot, its `loader.conf`,
//! one Type #2 UKI per slot with systemd-boot's boot counter in its name) and where
//! the node keeps update keys and update state.
//!
//! Which slot a UKI boots is decided by the root hash on its command line (init finds
//! the root and verity partitions whose unique GUIDs are that hash's halves); the file
//! name's slot letter only tells the updater which UKI belongs to the slot it is about
//! to overwrite, so that UKI is removed before a byte of the slot changes.

use std::fmt;

/// A root slot: a root partition and its verity partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// The slot a fresh image boots.
    A,
    /// The slot a fresh image leaves empty for the first update.
    B,
}

impl Slot {
    /// Both slots, A first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// `a` or `b`.
    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }

    /// The slot an update writes while this one runs.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The root partition's GPT name in this slot: `root-x86_64-a`. `arch` is kiln's
    /// arch name (`x86_64`, `arm64`).
    pub fn root_label(self, arch: &str) -> String {
        format!("root-{arch}-{}", self.letter())
    }

    /// The verity partition's GPT name in this slot: `root-x86_64-a-verity`.
    pub fn verity_label(self, arch: &str) -> String {
        format!("root-{arch}-{}-verity", self.letter())
    }

    /// The slot a GPT partition name belongs to, if it is one of kiln's root or
    /// verity names for `arch`.
    pub fn from_label(label: &str, arch: &str) -> Option<Slot> {
        Slot::ALL
            .into_iter()
            .find(|s| label == s.root_label(arch) || label == s.verity_label(arch))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// The GPT name of a slot partition that holds nothing bootable (systemd-sysupdate's
/// convention): the second slot of a fresh image, and a slot while an update writes it.
pub const EMPTY_LABEL: &str = "_empty";

/// Where systemd-boot looks for Type #2 UKIs on the ESP.
pub const UKI_DIR: &str = "EFI/Linux";
/// systemd-boot's configuration file on the ESP.
pub const LOADER_CONF: &str = "loader/loader.conf";
/// What kiln puts in [`LOADER_CONF`]: no menu unless a key is held, no editing of
/// the command line (it carries the root hash), no entries kiln did not install.
pub const LOADER_CONF_TEXT: &str = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n";
/// Boot attempts a freshly installed UKI gets before systemd-boot falls back.
pub const DEFAULT_TRIES: u32 = 3;
/// Where the node mounts the ESP (systemd-bless-boot and the updater find it there).
pub const ESP_MOUNT: &str = "/efi";
/// The folder in the (verified) root with the public keys update bundles must be
/// signed with: one `<key id>.pub` file per key.
pub const KEYS_DIR: &str = "/usr/lib/kiln/update-keys";
/// The updater's state on the node: rollbacks, the last apply, failed health checks.
pub const STATE_DIR: &str = "/var/lib/kiln/update";

/// systemd-boot's boot counter in a file name: `+LEFT` or `+LEFT-DONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tries {
    /// Attempts left before the entry counts as bad.
    pub left: u32,
    /// Attempts made so far.
    pub done: u32,
}

/// The file name of a slot's UKI under [`UKI_DIR`], with its boot counter while the
/// version is on trial: `kiln-a.efi` (blessed, or a fresh image), `kiln-b+3.efi`
/// (just installed), `kiln-b+1-2.efi` (two failed attempts), `kiln-b+0-3.efi` (bad).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UkiName {
    /// The slot whose root the UKI boots.
    pub slot: Slot,
    /// The counter; `None` once blessed.
    pub tries: Option<Tries>,
}

impl UkiName {
    /// A new UKI on trial with `tries` attempts.
    pub fn on_trial(slot: Slot, tries: u32) -> UkiName {
        UkiName {
            slot,
            tries: Some(Tries {
                left: tries,
                done: 0,
            }),
        }
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        let counter = match self.tries {
            None => String::new(),
            // `+0` alone would read as "no tries left, none made"; spell that `+0-0`.
            Some(Tries { left, done: 0 }) if left > 0 => format!("+{left}"),
            Some(Tries { left, done }) => format!("+{left}-{done}"),
        };
        format!("kiln-{}{counter}.efi", self.slot.letter())
    }

    /// Reads a file name under [`UKI_DIR`]; FAT is case-insensitive, so is this.
    /// `None` for files kiln did not name.
    pub fn parse(name: &str) -> Option<UkiName> {
        let lower = name.to_ascii_lowercase();
        let stem = lower.strip_prefix("kiln-")?.strip_suffix(".efi")?;
        let mut chars = stem.chars();
        let slot = match chars.next()? {
            'a' => Slot::A,
            'b' => Slot::B,
            _ => return None,
        };
        let rest = chars.as_str();
        if rest.is_empty() {
            return Some(UkiName { slot, tries: None });
        }
        let counter = rest.strip_prefix('+')?;
        let (left, done) = match counter.split_once('-') {
            Some((l, d)) => (l, d),
            None => (counter, "0"),
        };
        let num = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        Some(UkiName {
            slot,
            tries: Some(Tries {
                left: num(left)?,
                done: num(done)?,
            }),
        })
    }

    /// True when systemd-boot has given up on it (no tries left).
    pub fn is_bad(&self) -> bool {
        matches!(self.tries, Some(Tries { left: 0, .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uki_names_round_trip_and_read_systemd_boots_renames() {
        let cases = [
            ("kiln-a.efi", Slot::A, None),
            ("kiln-b+3.efi", Slot::B, Some((3, 0))),
            ("kiln-b+2-1.efi", Slot::B, Some((2, 1))),
            ("kiln-a+0-3.efi", Slot::A, Some((0, 3))),
            ("kiln-b+0-0.efi", Slot::B, Some((0, 0))),
        ];
        for (name, slot, tries) in cases {
            let parsed = UkiName::parse(name).unwrap();
            assert_eq!(parsed.slot, slot);
            assert_eq!(parsed.tries.map(|t| (t.left, t.done)), tries);
            assert_eq!(parsed.file_name(), name);
        }
        assert_eq!(UkiName::on_trial(Slot::B, 3).file_name(), "kiln-b+3.efi");
        assert!(UkiName::parse("KILN-B+0-3.EFI").unwrap().is_bad());
        for other in [
            "kiln-c.efi",
            "kiln-a+.efi",
            "kiln-a+x.efi",
            "debian.efi",
            "kiln-a.efi.tmp",
        ] {
            assert_eq!(UkiName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn labels_name_the_slot() {
        assert_eq!(Slot::B.root_label("x86_64"), "root-x86_64-b");
        assert_eq!(Slot::A.verity_label("arm64"), "root-arm64-a-verity");
        assert_eq!(
            Slot::from_label("root-arm64-b-verity", "arm64"),
            Some(Slot::B)
        );
        assert_eq!(Slot::from_label("root-arm64-b", "x86_64"), None);
        assert_eq!(Slot::from_label(EMPTY_LABEL, "x86_64"), None);
        assert_eq!(Slot::A.other(), Slot::B);
    }
}
