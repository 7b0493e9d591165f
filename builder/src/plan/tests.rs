#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use super::*;

const MIB: u64 = 1 << 20;

fn input(arch: Arch) -> PlanInput {
    PlanInput {
        arch,
        disk_size: 3072 * MIB,
        esp_size: 128 * MIB,
        root_size: 600 * MIB + 4096,
        slot_size: None,
        var_min_size: 256 * MIB,
        seed: [7; 32],
    }
}

fn assert_aligned_and_disjoint(plan: &DiskPlan) {
    let mut prev_end = plan.first_usable_lba - 1;
    for p in &plan.partitions {
        assert_eq!(
            p.first_lba * SECTOR_SIZE % PARTITION_ALIGNMENT,
            0,
            "{p:?} not aligned"
        );
        assert_eq!(p.size() % PARTITION_ALIGNMENT, 0, "{p:?} not whole MiB");
        assert!(
            p.first_lba > prev_end,
            "{p:?} overlaps the previous partition"
        );
        assert!(p.last_lba >= p.first_lba);
        assert!(p.last_lba <= plan.last_usable_lba);
        prev_end = p.last_lba;
    }
}

/// The contract's `Guid` and `Slot` have no serde impls: the plan's GUID
/// fields go through `guid_text`, as the text `kiln` has always written, and
/// the slot through `slot_text`, as its letter.
#[test]
fn plan_guids_and_slots_serialize_as_text_and_read_back() {
    let plan = plan_disk(&input(Arch::X86_64)).unwrap();
    let mut json = serde_json::to_value(&plan).unwrap();
    assert_eq!(
        json["partitions"][0]["type_guid"],
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    );
    assert!(json["partitions"][0].get("slot").is_none(), "{json}");
    assert_eq!(json["partitions"][1]["slot"], "a");
    assert_eq!(json["partitions"][4]["slot"], "b");
    assert_eq!(json["disk_guid"], plan.disk_guid.to_string());
    assert_eq!(
        serde_json::from_value::<DiskPlan>(json.clone()).unwrap(),
        plan
    );
    json["disk_guid"] = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".into();
    let upper: DiskPlan = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(upper.disk_guid, types::ESP);
    json["partitions"][1]["slot"] = "c".into();
    let e = serde_json::from_value::<DiskPlan>(json.clone()).unwrap_err();
    assert!(e.to_string().contains("neither \"a\" nor \"b\""), "{e}");
    json["partitions"][1]["slot"] = "a".into();
    json["disk_guid"] = "c12a7328f81f11d2ba4b00a0c93ec93b".into();
    let e = serde_json::from_value::<DiskPlan>(json).unwrap_err();
    assert!(e.to_string().contains("8-4-4-4-12"), "{e}");
}

#[test]
fn plan_has_the_esp_and_two_slots() {
    for arch in Arch::ALL {
        let plan = plan_disk(&input(arch)).unwrap();
        assert_eq!(plan.sector_size, 512);
        assert_eq!(plan.total_size, 3072 * MIB);
        assert_eq!(plan.first_usable_lba, 2048);
        assert_eq!(plan.last_usable_lba, plan.total_sectors() - 34);
        assert_eq!(plan.backup_header_lba(), plan.total_sectors() - 1);
        assert_eq!(plan.backup_entries_lba(), plan.total_sectors() - 33);
        assert_eq!((plan.entry_count, plan.entry_size), (128, 128));
        let shape: Vec<_> = plan.partitions.iter().map(|p| (p.role, p.slot)).collect();
        assert_eq!(
            shape,
            [
                (PartitionRole::Esp, None),
                (PartitionRole::Root, Some(Slot::A)),
                (PartitionRole::RootVerity, Some(Slot::A)),
                (PartitionRole::Root, Some(Slot::B)),
                (PartitionRole::RootVerity, Some(Slot::B)),
            ]
        );
        let names: Vec<&str> = plan.partitions.iter().map(|p| p.name.as_str()).collect();
        let a = arch.name();
        assert_eq!(
            names,
            [
                "esp",
                &format!("root-{a}-a"),
                &format!("root-{a}-a-verity"),
                "_empty",
                "_empty"
            ]
        );
        let esp = &plan.partitions[0];
        assert_eq!(esp.type_guid, types::ESP);
        assert_eq!(
            (esp.first_lba, esp.size(), esp.attributes),
            (2048, 128 * MIB, 0)
        );

        // Root of 600 MiB + 4 KiB: slots of 1.5 times that, rounded up to 64 MiB.
        assert_eq!(plan.slot_size, 960 * MIB);
        // A full 960 MiB slot has 245760 data blocks: 1920 + 15 + 1 hash blocks
        // and the superblock, 7.57 MiB, so an 8 MiB partition.
        assert_eq!(verity_size_for(960 * MIB), (1 + 1920 + 15 + 1) * 4096);
        for slot in Slot::ALL {
            let root = plan.slot_partition(PartitionRole::Root, slot).unwrap();
            let verity = plan
                .slot_partition(PartitionRole::RootVerity, slot)
                .unwrap();
            assert_eq!(root.type_guid, arch.root_type_guid());
            assert_eq!(verity.type_guid, arch.root_verity_type_guid());
            assert_eq!(root.size(), 960 * MIB);
            assert_eq!(verity.size(), 8 * MIB);
            assert_eq!(verity.offset(), root.offset() + 960 * MIB);
            let want = match slot {
                Slot::A => attr::READ_ONLY,
                Slot::B => attr::READ_ONLY | attr::NO_AUTO,
            };
            assert_eq!((root.attributes, verity.attributes), (want, want));
        }
        assert_eq!(plan.partition(PartitionRole::Root), plan.partitions.get(1));
        assert_aligned_and_disjoint(&plan);
        // Nothing between the partitions; var goes after the last.
        assert_eq!(
            plan.partitions[3].offset(),
            plan.partitions[2].offset() + 8 * MIB
        );
        let free = plan.free_range().unwrap();
        let last = plan.partitions.last().unwrap();
        assert_eq!(free.offset(), last.offset() + last.size());
        assert_eq!(free.offset(), (1 + 128 + 2 * (960 + 8)) * MIB);
        assert_eq!(free.last, plan.last_usable_lba);
    }
}

#[test]
fn default_slots_round_up_to_64_mib_with_half_again_the_root() {
    assert_eq!(default_slot_size(1), 64 * MIB);
    assert_eq!(default_slot_size(128 * MIB), 192 * MIB);
    assert_eq!(default_slot_size(128 * MIB + 1), 256 * MIB);
    assert_eq!(default_slot_size(230 * MIB), 384 * MIB);
    assert_eq!(verity_size_for(4096), 4096);
}

#[test]
fn an_explicit_slot_size_is_used_in_whole_mib_and_must_hold_the_root() {
    let mut inp = input(Arch::Arm64);
    inp.slot_size = Some(700 * MIB + 1);
    let plan = plan_disk(&inp).unwrap();
    assert_eq!(plan.slot_size, 701 * MIB);
    for slot in Slot::ALL {
        let root = plan.slot_partition(PartitionRole::Root, slot).unwrap();
        assert_eq!(root.size(), 701 * MIB);
    }
    assert_aligned_and_disjoint(&plan);

    inp.slot_size = Some(600 * MIB);
    let e = plan_disk(&inp).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, PlanError::SlotTooSmall { slot_size, root_size }
            if slot_size == 600 * MIB && root_size == 600 * MIB + 4096),
        "{msg}"
    );
    assert!(msg.contains("`[update] slot_size`"), "{msg}");
    assert!(msg.contains("at least 601 MiB"), "{msg}");
    inp.slot_size = Some(0);
    let msg = plan_disk(&inp).unwrap_err().to_string();
    assert!(msg.contains("`[update] slot_size`"), "{msg}");
}

#[test]
fn guids_are_deterministic_and_seeded() {
    let a = plan_disk(&input(Arch::Arm64)).unwrap();
    let b = plan_disk(&input(Arch::Arm64)).unwrap();
    assert_eq!(a, b);
    let mut other = input(Arch::Arm64);
    other.seed[31] ^= 1;
    let c = plan_disk(&other).unwrap();
    assert_ne!(a.disk_guid, c.disk_guid);
    for (pa, pc) in a.partitions.iter().zip(&c.partitions) {
        assert_ne!(pa.unique_guid, pc.unique_guid);
        assert_eq!(pa.first_lba, pc.first_lba);
    }
    // Slot B's two `_empty` partitions included, every GUID is its own.
    let mut all: Vec<Guid> = a.partitions.iter().map(|p| p.unique_guid).collect();
    all.push(a.disk_guid);
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "GUIDs within one plan must be unique");
}

#[test]
fn too_small_disk_names_the_field_and_sizes() {
    let mut inp = input(Arch::X86_64);
    inp.disk_size = 1024 * MIB;
    let err = plan_disk(&inp).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, PlanError::DiskTooSmall { given, .. } if given == 1024 * MIB),
        "{msg}"
    );
    assert!(msg.contains("disk.size"), "{msg}");
    assert!(msg.contains(&(1024 * MIB).to_string()), "{msg}");
    // 1 MiB of GPT, the ESP, two slots of 960 MiB and their 8 MiB trees, and
    // the backup GPT; then 256 MiB more for var.
    assert!(msg.contains("at least 2066 MiB"), "{msg}");
    assert!(msg.contains("(2322 MiB so that"), "{msg}");
    assert!(msg.contains("disk.var_min_size"), "{msg}");
    assert!(msg.contains("2 root slots of 960 MiB"), "{msg}");

    // Exactly the needed size fits; one sector less does not.
    let PlanError::DiskTooSmall { needed, .. } = err else {
        unreachable!()
    };
    inp.disk_size = needed;
    let plan = plan_disk(&inp).unwrap();
    assert_eq!(
        plan.partitions.last().unwrap().last_lba,
        plan.last_usable_lba
    );
    assert_eq!(plan.free_range(), None);
    inp.disk_size = needed - 512;
    assert!(matches!(
        plan_disk(&inp),
        Err(PlanError::DiskTooSmall { .. })
    ));
}

#[test]
fn bad_sizes_are_rejected() {
    let mut inp = input(Arch::X86_64);
    inp.disk_size += 1;
    assert!(matches!(
        plan_disk(&inp),
        Err(PlanError::UnalignedDiskSize(_))
    ));
    let mut inp = input(Arch::X86_64);
    inp.esp_size = 0;
    assert!(plan_disk(&inp)
        .unwrap_err()
        .to_string()
        .contains("disk.esp_size"));
    let mut inp = input(Arch::X86_64);
    inp.root_size = 0;
    assert!(plan_disk(&inp).is_err());
}

#[test]
fn root_hash_sets_slot_a_partition_uuids_only() {
    let mut plan = plan_disk(&input(Arch::X86_64)).unwrap();
    let before = plan.clone();
    let hash: [u8; 32] = std::array::from_fn(|i| i as u8);
    plan.apply_root_hash(&hash);
    assert_eq!(
        plan.partitions[0].unique_guid,
        before.partitions[0].unique_guid
    );
    assert_eq!(
        plan.partitions[1].unique_guid.to_string(),
        "00010203-0405-0607-0809-0a0b0c0d0e0f"
    );
    assert_eq!(
        plan.partitions[2].unique_guid.to_string(),
        "10111213-1415-1617-1819-1a1b1c1d1e1f"
    );
    assert_eq!(plan.partitions[3..], before.partitions[3..]);
}
