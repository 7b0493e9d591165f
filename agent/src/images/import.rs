//! `kiln-agent images import`: every archive of the image list into containerd's `k8s.io`
//! namespace, as `kiln-images.service` runs it at boot.
//!
//! Per archive: read and check it ([`archive::read`]), put its blobs into containerd's
//! content store folder (a temporary file in the same folder, then a rename; a blob
//! already there with the right bytes is left alone), and under a lease commit each into
//! the namespace without sending its bytes ([`Session::commit_shared`]), label the
//! manifest with its config and layers for the garbage collector, and create the image (or
//! point the existing one at this archive's manifest). One line per archive on the
//! console: `kiln-images: imported <ref>`, or `kiln-images: ERROR: <ref>: <reason>`, the
//! other archives still imported and the exit status 1.
//!
//! Nothing is unpacked: containerd's CRI unpacks an image that is not unpacked yet when it
//! creates a container from it (and `ctr run` does too), so a node unpacks the images it
//! runs when it first runs them.

use std::fmt;
use std::io;

use super::archive::{self, ArchiveError, Blob};
use super::containerd::{self, Commit, Failed, Session};
use super::ImagesSys;

/// The folder of containerd's sha256 blobs below its root: its content store (the
/// `io.containerd.content.v1.content` plugin) keeps blob `sha256:<hex>` in the file
/// `blobs/sha256/<hex>` and knows a blob by that file alone (its Info is a stat of it).
pub const CONTENT_BLOBS: &str = "io.containerd.content.v1.content/blobs/sha256";

/// How long the import's lease lives if the import is cut short before it deletes it.
const LEASE_SECONDS: u64 = 3600;

/// How often a blob is put back when containerd's garbage collector removed it before
/// it was committed (a collection that runs in that moment removes every blob the
/// namespaces do not know).
const ATTEMPTS: usize = 3;

/// What the import uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The image list (`<file> <ref>` per line; files relative to its folder).
    pub list: String,
    /// containerd's socket.
    pub socket: String,
    /// containerd's root folder (its `root` setting).
    pub root: String,
    /// The namespace the images go to.
    pub namespace: String,
}

/// Why one archive was not imported.
#[derive(Debug)]
pub enum ImportError {
    /// The archive could not be read.
    Read {
        /// The archive.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The archive is not a valid image layout, or a blob is not what it should be.
    Archive {
        /// The archive.
        path: String,
        /// What is wrong.
        source: ArchiveError,
    },
    /// A blob could not be put into containerd's content store folder.
    Store {
        /// The file or folder.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// A containerd call failed.
    Containerd {
        /// containerd's socket.
        socket: String,
        /// The call.
        failed: Failed,
    },
    /// containerd did not take a blob from its content store.
    NotShared {
        /// The blob's file.
        path: String,
        /// The blob.
        digest: String,
        /// Whether the file was still there (else the garbage collector kept removing it).
        present: bool,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } | Self::Store { path, source } => {
                write!(f, "{path}: {source}")
            }
            Self::Archive { path, source } => write!(f, "{path}: {source}"),
            Self::Containerd { socket, failed } => {
                write!(
                    f,
                    "containerd ({socket}): {}: {}",
                    failed.what, failed.source
                )
            }
            Self::NotShared {
                path,
                digest,
                present: true,
            } => write!(
                f,
                "containerd did not take {digest} from its content store ({path}): is its \
                 content_sharing_policy \"isolated\"? The import needs \"shared\", the default"
            ),
            Self::NotShared {
                path,
                digest,
                present: false,
            } => write!(
                f,
                "{path} ({digest}) was removed {ATTEMPTS} times before containerd took it \
                 (its garbage collector?)"
            ),
        }
    }
}

impl std::error::Error for ImportError {}

/// Imports every archive of `opts.list`; the exit status: 0, or 1 when one failed.
pub fn run(sys: &mut dyn ImagesSys, opts: &Options) -> u8 {
    let list = match sys.read_file(&opts.list) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            sys.say(&format!("kiln-images: ERROR: {}: {e}", opts.list));
            return 1;
        }
    };
    let dir = match opts.list.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((d, _)) => d,
        None => ".",
    };
    let mut status = 0;
    for line in list.lines() {
        // As the shell's `read -r file ref` splits it: the first word, then the rest.
        let line = line.trim();
        let Some(file) = line.split_whitespace().next() else {
            continue;
        };
        let reference = line[file.len()..].trim();
        if reference.is_empty() {
            sys.say(&format!(
                "kiln-images: ERROR: {file}: no reference after the file name in {}",
                opts.list
            ));
            status = 1;
            continue;
        }
        let path = format!("{}/{file}", dir.trim_end_matches('/'));
        match import_one(sys, opts, &path, reference) {
            Ok(()) => sys.say(&format!("kiln-images: imported {reference}")),
            Err(e) => {
                sys.say(&format!("kiln-images: ERROR: {reference}: {e}"));
                status = 1;
            }
        }
    }
    status
}

/// Imports the archive at `path` as `reference`.
pub fn import_one(
    sys: &mut dyn ImagesSys,
    opts: &Options,
    path: &str,
    reference: &str,
) -> Result<(), ImportError> {
    let bytes = sys.read_file(path).map_err(|source| ImportError::Read {
        path: path.to_string(),
        source,
    })?;
    let image = archive::read(&bytes, reference).map_err(|source| ImportError::Archive {
        path: path.to_string(),
        source,
    })?;
    let blobs_dir = format!("{}/{CONTENT_BLOBS}", opts.root.trim_end_matches('/'));
    sys.mkdir(&blobs_dir).map_err(|source| ImportError::Store {
        path: blobs_dir.clone(),
        source,
    })?;
    remove_leftovers(sys, &blobs_dir)?;
    let expires =
        kiln_contract::civil::DateTime::from_unix_u64(sys.now() + LEASE_SECONDS).rfc3339();
    let socket = opts.socket.clone();
    let in_containerd = |failed| ImportError::Containerd {
        socket: socket.clone(),
        failed,
    };
    let mut session = Session::new(sys, &opts.socket, &opts.namespace);
    session.lease(&expires).map_err(in_containerd)?;
    let result = (|| {
        for blob in image.blobs() {
            register(&mut session, &blobs_dir, blob)?;
        }
        let layers: Vec<archive::Descriptor> =
            image.layers.iter().map(|l| l.desc.clone()).collect();
        let labels = containerd::manifest_labels(&image.config.desc, &layers);
        session
            .set_labels(&image.manifest.desc.digest, &labels)
            .map_err(in_containerd)?;
        session
            .put_image(reference, &image.target)
            .map_err(in_containerd)
    })();
    // The lease goes whatever happened: what the image refers to stays (through its
    // manifest's labels), what a failed import left is garbage. A lease that cannot be
    // deleted expires by itself, so it does not fail the import.
    if let Err(e) = session.release() {
        let line = format!(
            "kiln-images: {reference}: {} (it expires at {expires}): {}",
            e.what, e.source
        );
        session.sys().note(&line);
    }
    result
}

/// Whether `name` is a temporary file of the agent's atomic write of a blob
/// (`.<64 hex digits>.tmp`, see `sys::real::write_atomic`).
fn is_leftover(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .is_some_and(|hex| archive::sha256_hex(&format!("sha256:{hex}")).is_ok())
}

/// Removes the temporary files a write cut short (a power loss) left in the blobs
/// folder: containerd's content store would take one for a blob with an invalid digest,
/// at which its garbage collector's sweep of the folder stops.
fn remove_leftovers(sys: &mut dyn ImagesSys, blobs_dir: &str) -> Result<(), ImportError> {
    let names = sys
        .list_dir(blobs_dir)
        .map_err(|source| ImportError::Store {
            path: blobs_dir.to_string(),
            source,
        })?;
    for name in names.iter().filter(|n| is_leftover(n)) {
        let path = format!("{blobs_dir}/{name}");
        sys.remove_file(&path)
            .map_err(|source| ImportError::Store { path, source })?;
    }
    Ok(())
}

/// Whether the file at `path` holds exactly `blob`.
fn holds(sys: &mut dyn ImagesSys, path: &str, blob: &Blob<'_>) -> bool {
    sys.read_file(path).is_ok_and(|have| {
        have.len() as u64 == blob.desc.size && archive::sha256(&have) == blob.desc.digest
    })
}

/// Puts `blob` into containerd's content store folder (unless it is there) and commits
/// it into the namespace.
fn register(
    session: &mut Session<'_>,
    blobs_dir: &str,
    blob: &Blob<'_>,
) -> Result<(), ImportError> {
    let hex = blob.desc.hex().map_err(|source| ImportError::Archive {
        path: blobs_dir.to_string(),
        source,
    })?;
    let path = format!("{blobs_dir}/{hex}");
    for _ in 0..ATTEMPTS {
        if !holds(session.sys(), &path, blob) {
            // containerd's own blobs are read-only (its local store's commit).
            session
                .sys()
                .write_atomic(&path, blob.data, 0o444)
                .map_err(|source| ImportError::Store {
                    path: path.clone(),
                    source,
                })?;
        }
        match session.commit_shared(&blob.desc) {
            Ok(Commit::Committed | Commit::AlreadyThere) => return Ok(()),
            Ok(Commit::NotShared) => {
                if holds(session.sys(), &path, blob) {
                    return Err(ImportError::NotShared {
                        path,
                        digest: blob.desc.digest.clone(),
                        present: true,
                    });
                }
            }
            Err(failed) => {
                return Err(ImportError::Containerd {
                    socket: session.socket().to_string(),
                    failed,
                })
            }
        }
    }
    Err(ImportError::NotShared {
        path,
        digest: blob.desc.digest.clone(),
        present: false,
    })
}
