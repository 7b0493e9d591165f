//! Little-endian fields at byte offsets.
//!
//! GPT, the protective MBR and the dm-verity superblock store every integer
//! little-endian at fixed offsets. Readers check a buffer's length once, against the
//! format's size, before reading fields: these functions panic when `at` is past the
//! end, as indexing does.

/// The `u16` at byte `at`.
pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The `u32` at byte `at`.
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The `u64` at byte `at`.
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Writes `v` at byte `at`.
pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes `v` at byte `at`.
pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes `v` at byte `at`.
pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_at_their_offsets_in_little_endian() {
        let mut b = [0u8; 16];
        put_u16(&mut b, 1, 0x0102);
        put_u32(&mut b, 3, 0x0304_0506);
        put_u64(&mut b, 7, 0x0708_090a_0b0c_0d0e);
        assert_eq!(
            b,
            [0, 2, 1, 6, 5, 4, 3, 0x0e, 0x0d, 0x0c, 0x0b, 0x0a, 9, 8, 7, 0]
        );
        assert_eq!(u16_at(&b, 1), 0x0102);
        assert_eq!(u32_at(&b, 3), 0x0304_0506);
        assert_eq!(u64_at(&b, 7), 0x0708_090a_0b0c_0d0e);
    }

    #[test]
    #[should_panic]
    fn a_field_past_the_end_panics_like_indexing() {
        u32_at(&[0u8; 3], 0);
    }
}
