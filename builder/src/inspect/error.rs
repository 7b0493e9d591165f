//! Why an image could not be inspected at all.

use std::io;
use std::path::PathBuf;

use crate::runner::RunError;

/// Why an image could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A file could not be read.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What kiln was doing.
        action: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not a disk image kiln can read.
    #[error("{}: not a disk image: {what}", path.display())]
    NotAnImage {
        /// The file.
        path: PathBuf,
        /// Why not.
        what: String,
    },
    /// The file is shorter than its own structures say.
    #[error("{}: truncated image: {what}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A structure's checksum or layout is wrong.
    #[error(
        "{}: corrupt image: {what}; `kiln inspect --verify {}` lists every check",
        path.display(),
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The first failed check.
        what: String,
    },
    /// A kind of image kiln does not read.
    #[error("{}: unsupported image: {what}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What and why.
        what: String,
    },
    /// `qemu-img` could not convert a qcow2 image.
    #[error("{}: converting the qcow2 image to raw: {source}", path.display())]
    Convert {
        /// The image.
        path: PathBuf,
        /// The command's failure.
        source: RunError,
    },
    /// A compressed image could not be unpacked.
    #[error("{}: unpacking the {format} image: {what}", path.display())]
    Decompress {
        /// The image.
        path: PathBuf,
        /// `raw.zst` or `gce`.
        format: &'static str,
        /// What went wrong.
        what: String,
    },
    /// The manifest is missing (when named), unreadable or not a manifest.
    #[error("{}: {what}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong and what to do.
        what: String,
    },
}
