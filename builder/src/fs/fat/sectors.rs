//! The boot sector (with its BIOS parameter block) and FAT32's FSInfo
//! sector.

use kiln_contract::le::{put_u16, put_u32};

use super::{
    FatGeometry, FatOptions, FatType, FAT32_BACKUP_BOOT_SECTOR, FAT32_FSINFO_SECTOR, MEDIA_FIXED,
    SECTOR,
};

/// The boot sector: BPB, extended BPB with `label`, and a halt loop as
/// boot code.
pub(super) fn boot_sector(g: &FatGeometry, opts: &FatOptions, label: &[u8; 11]) -> [u8; 512] {
    let mut b = [0u8; 512];
    let fat32 = g.fat_type == FatType::Fat32;
    let boot_code_at: usize = if fat32 { 0x5A } else { 0x3E };
    b[0..3].copy_from_slice(&[0xEB, (boot_code_at - 2) as u8, 0x90]);
    b[3..11].copy_from_slice(b"MSWIN4.1");
    put_u16(&mut b, 11, SECTOR as u16);
    b[13] = g.sectors_per_cluster as u8;
    put_u16(&mut b, 14, g.reserved_sectors as u16);
    b[16] = 2;
    put_u16(&mut b, 17, g.root_entries as u16);
    let small_total = if !fat32 && g.total_sectors < 0x10000 {
        g.total_sectors as u16
    } else {
        0
    };
    put_u16(&mut b, 19, small_total);
    b[21] = MEDIA_FIXED;
    let fat16_len = if fat32 { 0 } else { g.fat_sectors as u16 };
    put_u16(&mut b, 22, fat16_len);
    // CHS geometry is meaningless on GPT disks; 32 × 64 divides every
    // MiB-multiple size, which keeps mtools' geometry check quiet.
    put_u16(&mut b, 24, 32);
    put_u16(&mut b, 26, 64);
    put_u32(&mut b, 28, opts.hidden_sectors);
    let big_total = if small_total == 0 { g.total_sectors } else { 0 };
    put_u32(&mut b, 32, big_total);
    let ext = if fat32 {
        put_u32(&mut b, 36, g.fat_sectors);
        // 40..42 flags 0: both FATs mirrored; 42..44 version 0.0.
        put_u32(&mut b, 44, 2);
        put_u16(&mut b, 48, FAT32_FSINFO_SECTOR);
        put_u16(&mut b, 50, FAT32_BACKUP_BOOT_SECTOR);
        64
    } else {
        36
    };
    b[ext] = 0x80; // drive number
    b[ext + 2] = 0x29; // extended boot signature: the next three fields exist
    put_u32(&mut b, ext + 3, opts.serial);
    b[ext + 7..ext + 18].copy_from_slice(label);
    b[ext + 18..ext + 26].copy_from_slice(if fat32 { b"FAT32   " } else { b"FAT16   " });
    // Not bootable from BIOS: halt forever if something jumps here.
    b[boot_code_at..boot_code_at + 4].copy_from_slice(&[0xFA, 0xF4, 0xEB, 0xFD]);
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// FAT32's FSInfo sector: the free-cluster count and the next free
/// cluster hint.
pub(super) fn fsinfo_sector(free: u32, next_free: u32) -> [u8; 512] {
    let mut s = [0u8; 512];
    put_u32(&mut s, 0, 0x4161_5252);
    put_u32(&mut s, 484, 0x6141_7272);
    put_u32(&mut s, 488, free);
    put_u32(&mut s, 492, next_free);
    put_u32(&mut s, 508, 0xAA55_0000);
    s
}
