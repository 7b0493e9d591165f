//! Filesystem writers: the FAT ESP, the initramfs archive and the ext4 root.
//!
//! Each writer turns a list of files (or a [`crate::tree::FileTree`]) into
//! the exact bytes of one partition or archive, deterministically.

pub mod cpio;
pub mod ext4;
pub mod fat;
pub mod verity;
