//! The verity superblock and the root filesystem's ext4 superblock.

use kiln_contract::le::{u16_at, u32_at};
use kiln_contract::verity::Superblock;

use super::{text, Ext4Superblock, VeritySuperblock};
use crate::plan::Guid;

/// Reads the superblock at the start of a verity hash device (the first 512
/// bytes) as it is, for the report: values kiln does not write are shown, and
/// judged by `--verify`.
pub fn parse_verity_superblock(partition: u32, sb: &[u8]) -> Result<VeritySuperblock, String> {
    let sb = Superblock::decode(sb).map_err(|e| e.to_string())?;
    Ok(VeritySuperblock {
        partition,
        version: sb.version,
        hash_type: sb.hash_type,
        uuid: Guid::from_bytes(sb.uuid),
        algorithm: sb.algorithm,
        data_block_size: sb.data_block_size,
        hash_block_size: sb.hash_block_size,
        data_blocks: sb.data_blocks,
        salt: hex::encode(&sb.salt),
    })
}

const EXT4_MAGIC: u16 = 0xEF53;
const EXT4_INCOMPAT_64BIT: u32 = 0x80;

/// Parses an ext4 superblock (the 1024 bytes at byte 1024 of the filesystem).
pub fn parse_ext4_superblock(partition: u32, sb: &[u8]) -> Result<Ext4Superblock, String> {
    if sb.len() < 1024 {
        return Err(format!(
            "{} bytes, too short for an ext4 superblock",
            sb.len()
        ));
    }
    let magic = u16_at(sb, 0x38);
    if magic != EXT4_MAGIC {
        return Err(format!(
            "no ext4 superblock (magic {magic:#06x} at byte 1080, expected 0xef53)"
        ));
    }
    let log = u32_at(sb, 0x18);
    if log > 6 {
        return Err(format!("block size 1024 << {log} is out of range"));
    }
    let block_size = 1024u64 << log;
    let wide = u32_at(sb, 0x60) & EXT4_INCOMPAT_64BIT != 0;
    let hi = |at| {
        if wide {
            u64::from(u32_at(sb, at)) << 32
        } else {
            0
        }
    };
    let blocks = u64::from(u32_at(sb, 0x04)) | hi(0x150);
    let free_blocks = u64::from(u32_at(sb, 0x0C)) | hi(0x158);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&sb[0x68..0x78]);
    Ok(Ext4Superblock {
        partition,
        label: text(&sb[0x78..0x88]),
        uuid: Guid::from_bytes(uuid),
        block_size,
        blocks,
        free_blocks,
        size: blocks.saturating_mul(block_size),
        inodes: u32_at(sb, 0x00),
        free_inodes: u32_at(sb, 0x10),
    })
}
