//! The two root slots of an image as its GPT has them: which partitions make
//! each slot, whether it holds a root or is empty, and which UKI boots it.
//!
//! A slot is found by position, not by name: the first root partition of the
//! arch and the first verity partition are slot A, the second ones slot B.
//! Names change as updates fill and empty slots (`root-x86_64-b` becomes
//! `_empty` while it is written), positions never do. Which UKI boots a slot is
//! decided the way the node's init decides it: the UKI's root hash halves are
//! the slot's root and verity PARTUUIDs.

use kiln_contract::boot::{Slot, EMPTY_LABEL};
use serde::{Serialize, Serializer};

use super::{part_label, GptReport, Kind, PartitionInfo, Report, UkiReport};
use crate::arch::Arch;
use crate::plan::Guid;

/// What a slot holds, by its partitions' GPT names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotState {
    /// Named as its slot's root and verity (`root-x86_64-a`, `root-x86_64-a-verity`).
    Filled,
    /// Both named `_empty`: nothing bootable (a fresh image's slot B).
    Empty,
    /// Any other names (a half-renamed slot, or a disk kiln did not write).
    Unexpected,
}

/// One root slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotReport {
    /// Which slot.
    #[serde(serialize_with = "letter")]
    pub slot: Slot,
    /// GPT entry number of its root partition.
    pub root: Option<u32>,
    /// GPT entry number of its verity partition.
    pub verity: Option<u32>,
    /// Bytes of its root partition.
    pub size: u64,
    /// What its names say it holds.
    pub state: SlotState,
    /// The root hash its PARTUUIDs spell (the first and second halves), for a
    /// filled slot.
    pub root_hash: Option<String>,
    /// The UKI on the ESP whose root hash selects this slot.
    pub uki: Option<String>,
}

/// Serialises a slot as its letter.
pub(super) fn letter<S: Serializer>(slot: &Slot, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(slot)
}

/// Serialises an optional slot as its letter or `null`.
pub(super) fn letter_opt<S: Serializer>(slot: &Option<Slot>, s: S) -> Result<S::Ok, S::Error> {
    match slot {
        Some(slot) => s.collect_str(slot),
        None => s.serialize_none(),
    }
}

/// The root hash a pair of PARTUUIDs spells.
fn hash_of(root: &PartitionInfo, verity: &PartitionInfo) -> String {
    format!(
        "{}{}",
        hex::encode(root.partuuid.as_bytes()),
        hex::encode(verity.partuuid.as_bytes())
    )
}

/// The PARTUUIDs (root, verity) a root hash selects, if it is one.
pub(super) fn partuuids_of(root_hash: &str) -> Option<(Guid, Guid)> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(root_hash.trim(), &mut h).ok()?;
    let mut first = [0u8; 16];
    let mut last = [0u8; 16];
    first.copy_from_slice(&h[..16]);
    last.copy_from_slice(&h[16..]);
    Some((Guid::from_bytes(first), Guid::from_bytes(last)))
}

/// The slots of `gpt` for `arch`, each matched to the UKI that boots it.
/// Partitions that fit no slot, and names that fit neither a filled nor an
/// empty slot, are pushed to `problems`.
pub(super) fn read(
    gpt: &GptReport,
    arch: Option<Arch>,
    ukis: &[&UkiReport],
    problems: &mut Vec<String>,
) -> Vec<SlotReport> {
    let Some(arch) = arch else {
        return Vec::new();
    };
    let of_kind = |k: Kind| -> Vec<&PartitionInfo> {
        gpt.partitions.iter().filter(|p| p.kind == k).collect()
    };
    let roots = of_kind(Kind::Root(arch));
    let verities = of_kind(Kind::RootVerity(arch));
    for extra in roots.iter().skip(2).chain(verities.iter().skip(2)) {
        problems.push(format!(
            "{}: a third {} partition; kiln images have two slots",
            part_label(extra),
            extra.type_name
        ));
    }
    let mut out = Vec::new();
    for (i, slot) in Slot::ALL.into_iter().enumerate() {
        let (root, verity) = (roots.get(i).copied(), verities.get(i).copied());
        if root.is_none() && verity.is_none() {
            continue;
        }
        let names = (
            root.map(|p| p.name.as_str()),
            verity.map(|p| p.name.as_str()),
        );
        let (root_label, verity_label) =
            (slot.root_label(arch.name()), slot.verity_label(arch.name()));
        let state = if names == (Some(&root_label), Some(&verity_label)) {
            SlotState::Filled
        } else if names == (Some(EMPTY_LABEL), Some(EMPTY_LABEL)) {
            SlotState::Empty
        } else {
            problems.push(format!(
                "slot {slot} (partitions {}): named {} and {}, neither {root_label} and \
                 {verity_label} nor {EMPTY_LABEL}; images of kilns before A/B updates have a \
                 single root and need a reflash",
                [root, verity]
                    .iter()
                    .flatten()
                    .map(|p| p.number.to_string())
                    .collect::<Vec<_>>()
                    .join(" and "),
                names.0.unwrap_or("(missing)"),
                names.1.unwrap_or("(missing)"),
            ));
            SlotState::Unexpected
        };
        let root_hash = match (root, verity, state) {
            (Some(r), Some(v), SlotState::Filled | SlotState::Unexpected) => Some(hash_of(r, v)),
            _ => None,
        };
        let uki = match (root, verity) {
            (Some(r), Some(v)) => ukis
                .iter()
                .find(|u| {
                    u.roothash.as_deref().and_then(partuuids_of) == Some((r.partuuid, v.partuuid))
                })
                .map(|u| u.path.clone()),
            _ => None,
        };
        out.push(SlotReport {
            slot,
            root: root.map(|p| p.number),
            verity: verity.map(|p| p.number),
            size: root.map_or(0, |p| p.size),
            state,
            root_hash,
            uki,
        });
    }
    out
}

/// The slot to show and verify: the one the first UKI's root hash selects,
/// else the first that holds a root, else the first.
pub(super) fn active(slots: &[SlotReport], uki: Option<&UkiReport>) -> Option<Slot> {
    let by_uki = uki.and_then(|u| {
        slots
            .iter()
            .find(|s| s.uki.as_deref() == Some(u.path.as_str()))
    });
    by_uki
        .or_else(|| slots.iter().find(|s| s.state == SlotState::Filled))
        .or(slots.first())
        .map(|s| s.slot)
}

/// The `active` slot's root and verity partitions; without slots (no root
/// partition of a known arch), the first root and verity partitions.
pub(super) fn active_partitions<'a>(
    gpt: &'a GptReport,
    slots: &[SlotReport],
    active: Option<Slot>,
) -> (Option<&'a PartitionInfo>, Option<&'a PartitionInfo>) {
    let number = |n: Option<u32>| n.and_then(|n| gpt.partitions.iter().find(|p| p.number == n));
    match active.and_then(|a| slots.iter().find(|s| s.slot == a)) {
        Some(s) => (number(s.root), number(s.verity)),
        None => (
            gpt.find(|k| matches!(k, Kind::Root(_))),
            gpt.find(|k| matches!(k, Kind::RootVerity(_))),
        ),
    }
}

impl Report {
    /// The active slot's root and verity partitions (see [`Report::active_slot`]).
    pub fn active_partitions(&self) -> (Option<&PartitionInfo>, Option<&PartitionInfo>) {
        active_partitions(&self.gpt, &self.slots, self.active_slot)
    }
}
