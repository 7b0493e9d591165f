//! `<stem>.qcow2`, written by `qemu-img convert` (no Rust crate writes
//! qcow2). Its output depends only on the raw bytes: writes are in order
//! (no `-W`) and zero clusters are left unallocated whether the raw file has
//! holes there or written zeros, so the file is reproducible.

use std::path::Path;

use super::{io_at, FormatError};
use crate::output::digest::sha256_file;
use crate::output::manifest::FileDigest;
use crate::profile::Format;
use crate::runner::{Cmd, Runner};

/// Converts `raw` into `out`; returns its digest.
pub(crate) fn write(
    runner: &dyn Runner,
    raw: &Path,
    out: &Path,
) -> Result<FileDigest, FormatError> {
    let cmd = Cmd::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"])
        .arg(raw)
        .arg(out);
    runner.run(&cmd).map_err(|source| FormatError::Run {
        format: Format::Qcow2,
        source,
    })?;
    let size = std::fs::metadata(out)
        .map_err(io_at(out, "reading the size of"))?
        .len();
    let sha256 = sha256_file(out).map_err(io_at(out, "hashing"))?;
    Ok(FileDigest {
        file: super::file_name(out),
        size,
        sha256,
    })
}
