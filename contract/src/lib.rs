//! The contracts between kiln's three programs, in one place.
//!
//! The builder writes disks that the in-image agent reads (and, to grow `var` or to
//! update, rewrites); `kiln inspect` reads them back. Each of them once carried its own
//! copy of the GPT and dm-verity formats, and the copies drifted. This crate owns those
//! formats: it does no I/O (callers read and write; everything here takes and returns
//! bytes), so the builder, the static agent and the server can all use it.
//!
//! - [`le`]: little-endian fields at byte offsets (every on-disk format here is
//!   little-endian).
//! - [`crc32`]: the CRC-32 that GPT headers and entry arrays carry.
//! - [`gpt`]: GUIDs, the partition type GUIDs kiln uses (UEFI and the Discoverable
//!   Partitions Specification), headers, entries and the protective MBR.
//! - [`verity`]: the dm-verity superblock, the hash tree's geometry and its check.
//! - [`names`]: the rules for Kubernetes node labels.

pub mod crc32;
pub mod gpt;
pub mod le;
pub mod names;
pub mod verity;
