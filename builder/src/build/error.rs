//! The build's error: every stage's typed error, passed through unchanged
//! so the message says which step failed and why.

use std::path::{Path, PathBuf};

use crate::fs::{ext4, fat, verity};
use crate::lock;
use crate::tree;
use crate::unpack;

/// A build step failed; the message says which and why.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Lock problems (stale, unreadable, resolution).
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// Apt sources problems.
    #[error(transparent)]
    Sources(#[from] lock::SourcesError),
    /// Download or cache problems.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    /// A package could not be read or clashes.
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    /// Tree operations.
    #[error(transparent)]
    Tree(#[from] tree::TreeError),
    /// Overlays.
    #[error(transparent)]
    Overlay(#[from] tree::overlay::OverlayError),
    /// Users and groups.
    #[error(transparent)]
    Sysusers(#[from] tree::sysusers::SysusersError),
    /// Unit enablement.
    #[error(transparent)]
    Units(#[from] tree::units::UnitsError),
    /// Kernel modules.
    #[error(transparent)]
    Kmod(#[from] tree::kmod::KmodError),
    /// Disk layout.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// Disk writing.
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    /// Root filesystem.
    #[error(transparent)]
    Ext4(#[from] ext4::Ext4Error),
    /// ESP filesystem.
    #[error(transparent)]
    Fat(#[from] fat::FatError),
    /// Verity hash tree.
    #[error(transparent)]
    Verity(#[from] verity::VerityError),
    /// Output formats.
    #[error(transparent)]
    Format(#[from] crate::output::formats::FormatError),
    /// UKI assembly.
    #[error(transparent)]
    Uki(#[from] crate::uki::UkiError),
    /// The kernel or the stub the UKI needs.
    #[error(transparent)]
    UkiParts(#[from] crate::uki::parts::PartsError),
    /// The initramfs.
    #[error(transparent)]
    Initramfs(#[from] crate::uki::initramfs::InitramfsError),
    /// Output staging.
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// Container images from `[[container_image]]`.
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    /// Fetching an `[[artifact]]`.
    #[error(transparent)]
    Artifact(#[from] crate::fetch::artifact::ArtifactError),
    /// Placing an `[[artifact]]` in the root.
    #[error(transparent)]
    Place(#[from] tree::artifact::PlaceError),
    /// `[cluster]` needs something the root lacks.
    #[error(transparent)]
    Cluster(#[from] tree::cluster::ClusterError),
    /// The agent binary does not say which compiler built it.
    #[error("{path}: {source}")]
    AgentToolchain {
        /// The agent binary.
        path: PathBuf,
        /// What was wrong with it.
        source: super::agent::ToolchainError,
    },
    /// Something the packages should have provided is missing.
    #[error("{0}")]
    Missing(String),
    /// Any other I/O, with its path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Wraps an I/O error with the path it happened at.
pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A whole file's bytes.
pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(io_err(path))
}
