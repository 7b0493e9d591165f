#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use super::*;

const MIB: u64 = 1 << 20;

fn input(arch: Arch) -> PlanInput {
    PlanInput {
        arch,
        disk_size: 2048 * MIB,
        esp_size: 128 * MIB,
        root_size: 600 * MIB + 4096,
        root_verity_size: 0,
        seed: [7; 32],
        reserve_ab: false,
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
        assert!(
            p.first_lba > prev_end,
            "{p:?} overlaps the previous partition"
        );
        assert!(p.last_lba >= p.first_lba);
        assert!(p.last_lba <= plan.last_usable_lba);
        prev_end = p.last_lba;
    }
    if let Some(r) = plan.ab_reserve {
        assert!(r.first > prev_end);
        assert_eq!(r.offset() % PARTITION_ALIGNMENT, 0);
        assert!(r.last <= plan.last_usable_lba);
    }
}

/// The contract's `Guid` has no serde impls: the plan's GUID fields go
/// through `guid_text`, as the text `kiln` has always written.
#[test]
fn plan_guids_serialize_as_text_and_read_back() {
    let plan = plan_disk(&input(Arch::X86_64)).unwrap();
    let mut json = serde_json::to_value(&plan).unwrap();
    assert_eq!(
        json["partitions"][0]["type_guid"],
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    );
    assert_eq!(json["disk_guid"], plan.disk_guid.to_string());
    assert_eq!(
        serde_json::from_value::<DiskPlan>(json.clone()).unwrap(),
        plan
    );
    json["disk_guid"] = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".into();
    let upper: DiskPlan = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(upper.disk_guid, types::ESP);
    json["disk_guid"] = "c12a7328f81f11d2ba4b00a0c93ec93b".into();
    let e = serde_json::from_value::<DiskPlan>(json).unwrap_err();
    assert!(e.to_string().contains("8-4-4-4-12"), "{e}");
}

#[test]
fn plan_has_the_expected_partitions() {
    for arch in Arch::ALL {
        let mut inp = input(arch);
        inp.root_verity_size = 5 * MIB + 4096;
        let plan = plan_disk(&inp).unwrap();
        assert_eq!(plan.sector_size, 512);
        assert_eq!(plan.total_size, 2048 * MIB);
        assert_eq!(plan.first_usable_lba, 2048);
        assert_eq!(plan.last_usable_lba, plan.total_sectors() - 34);
        assert_eq!(plan.backup_header_lba(), plan.total_sectors() - 1);
        assert_eq!(plan.backup_entries_lba(), plan.total_sectors() - 33);
        assert_eq!((plan.entry_count, plan.entry_size), (128, 128));
        let roles: Vec<_> = plan.partitions.iter().map(|p| p.role).collect();
        assert_eq!(
            roles,
            [
                PartitionRole::Esp,
                PartitionRole::Root,
                PartitionRole::RootVerity
            ]
        );
        let esp = &plan.partitions[0];
        assert_eq!(esp.name, "esp");
        assert_eq!(esp.type_guid, types::ESP);
        assert_eq!((esp.first_lba, esp.size()), (2048, 128 * MIB));
        let root = &plan.partitions[1];
        assert_eq!(root.name, format!("root-{}", arch.name()));
        assert_eq!(root.type_guid, arch.root_type_guid());
        // Content of 600 MiB + 4 KiB gets a whole-MiB partition.
        assert_eq!(root.size(), 601 * MIB);
        assert!(attr::has(root.attributes, attr::READ_ONLY));
        let verity = &plan.partitions[2];
        assert_eq!(verity.name, format!("root-{}-verity", arch.name()));
        assert_eq!(verity.type_guid, arch.root_verity_type_guid());
        assert_eq!(verity.size(), 6 * MIB);
        assert_eq!(verity.offset(), root.offset() + 601 * MIB);
        assert_aligned_and_disjoint(&plan);
        let free = plan.free_range().unwrap();
        assert_eq!(free.offset(), verity.offset() + 6 * MIB);
        assert_eq!(free.last, plan.last_usable_lba);
    }
}

#[test]
fn no_verity_partition_when_size_is_zero() {
    let plan = plan_disk(&input(Arch::X86_64)).unwrap();
    assert_eq!(plan.partitions.len(), 2);
    assert!(plan.partition(PartitionRole::RootVerity).is_none());
    assert_aligned_and_disjoint(&plan);
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
    let mut all: Vec<Guid> = a.partitions.iter().map(|p| p.unique_guid).collect();
    all.push(a.disk_guid);
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "GUIDs within one plan must be unique");
}

#[test]
fn ab_reserve_is_as_large_as_the_first_pair() {
    let mut inp = input(Arch::X86_64);
    inp.root_verity_size = 5 * MIB + 4096;
    inp.reserve_ab = true;
    let plan = plan_disk(&inp).unwrap();
    let root = plan.partition(PartitionRole::Root).unwrap();
    let verity = plan.partition(PartitionRole::RootVerity).unwrap();
    let r = plan.ab_reserve.unwrap();
    assert_eq!(r.sectors(), verity.last_lba + 1 - root.first_lba);
    assert!(r.first > verity.last_lba);
    assert_aligned_and_disjoint(&plan);
    assert!(plan.free_range().unwrap().first > r.last);

    // Without verity the reserve is one root's worth.
    inp.root_verity_size = 0;
    let plan = plan_disk(&inp).unwrap();
    let root = plan.partition(PartitionRole::Root).unwrap();
    assert_eq!(plan.ab_reserve.unwrap().size(), root.size());
}

#[test]
fn too_small_disk_names_the_field_and_sizes() {
    let mut inp = input(Arch::X86_64);
    inp.disk_size = 512 * MIB;
    let err = plan_disk(&inp).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, PlanError::DiskTooSmall { given, .. } if given == 512 * MIB),
        "{msg}"
    );
    assert!(msg.contains("disk.size"), "{msg}");
    assert!(msg.contains(&(512 * MIB).to_string()), "{msg}");
    assert!(msg.contains("at least 731 MiB"), "{msg}");

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
    inp.disk_size = needed - 512;
    assert!(matches!(
        plan_disk(&inp),
        Err(PlanError::DiskTooSmall { .. })
    ));

    // The A/B reserve counts.
    let mut inp = input(Arch::X86_64);
    inp.disk_size = 1024 * MIB;
    assert!(plan_disk(&inp).is_ok());
    inp.reserve_ab = true;
    let msg = plan_disk(&inp).unwrap_err().to_string();
    assert!(msg.contains("A/B reserve"), "{msg}");
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
fn root_hash_sets_partition_uuids() {
    let mut inp = input(Arch::X86_64);
    inp.root_verity_size = MIB;
    let mut plan = plan_disk(&inp).unwrap();
    let esp_before = plan.partitions[0].unique_guid;
    let hash: [u8; 32] = std::array::from_fn(|i| i as u8);
    plan.apply_root_hash(&hash);
    assert_eq!(plan.partitions[0].unique_guid, esp_before);
    assert_eq!(
        plan.partitions[1].unique_guid.to_string(),
        "00010203-0405-0607-0809-0a0b0c0d0e0f"
    );
    assert_eq!(
        plan.partitions[2].unique_guid.to_string(),
        "10111213-1415-1617-1819-1a1b1c1d1e1f"
    );
}
