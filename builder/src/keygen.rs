//! `kiln keygen`: a new ed25519 key for signing update bundles, as two one-line
//! files (the contract's text forms, [`kiln_contract::signing`]): the secret key
//! (mode 0600) and `<file>.pub` (0644), which the profile's `[update] keys` names.
//! Also reads those files back for `kiln build --update-key`.
//!
//! The files appear whole or not at all: each is written to a temporary file in
//! the same folder, synced, then renamed into place.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_contract::signing::{KeyError, KeyId, PublicKey, SecretKey};

/// Where new keys' randomness comes from. Since Linux 5.6 `/dev/random` blocks
/// only until the kernel's generator is seeded and never after (getrandom(2)'s
/// behaviour), while `/dev/urandom` on kernels before 5.18 would hand out bytes
/// from an unseeded generator on a freshly booted VM.
const RANDOM: &str = "/dev/random";

/// Why a key could not be made, written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// A file system operation failed.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What kiln was doing.
        action: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file is there already.
    #[error(
        "{} already exists; kiln keygen does not overwrite keys (the old key would be lost, \
         and nodes that trust only it would refuse bundles signed with a new one): choose \
         another file name, or pass --force",
        path.display()
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A key file does not hold a key of the expected kind.
    #[error("{}: {problem}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with its text (in the message, so not a `source`).
        problem: KeyError,
    },
}

fn io_at<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> KeygenError + 'a {
    move |source| KeygenError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// A secret key read from a file, with the file's path for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateKey {
    /// The secret key file.
    pub path: PathBuf,
    /// The key.
    pub secret: SecretKey,
}

impl UpdateKey {
    /// Reads a secret key file `kiln keygen` wrote. Warns when others may read it.
    pub fn load(path: &Path) -> Result<UpdateKey, KeygenError> {
        let text = std::fs::read_to_string(path).map_err(io_at(path, "reading the update key"))?;
        let secret = SecretKey::parse_text(&text).map_err(|problem| KeygenError::Parse {
            path: path.to_path_buf(),
            problem,
        })?;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "{}: the update signing key can be read by other users (mode {:o}); \
                     `chmod 600 {}`",
                    path.display(),
                    meta.permissions().mode() & 0o777,
                    path.display()
                );
            }
        }
        Ok(UpdateKey {
            path: path.to_path_buf(),
            secret,
        })
    }
}

/// Reads a public key file (`<file>.pub`).
pub fn read_public(path: &Path) -> Result<PublicKey, KeygenError> {
    let text = std::fs::read_to_string(path).map_err(io_at(path, "reading the public key"))?;
    PublicKey::parse_text(&text).map_err(|problem| KeygenError::Parse {
        path: path.to_path_buf(),
        problem,
    })
}

/// The public key file that goes with the secret key file `path`: `path` + `.pub`.
pub fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// A new secret key from the kernel's random generator.
pub fn generate() -> Result<SecretKey, KeygenError> {
    let path = Path::new(RANDOM);
    let mut seed = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io_at(path, "reading randomness for a new key"))?;
    Ok(SecretKey::from_seed(seed))
}

/// What [`write_key_files`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// The secret key file.
    pub secret: PathBuf,
    /// The public key file.
    pub public: PathBuf,
    /// The key's id.
    pub id: KeyId,
}

/// `kiln keygen PATH`: a new key in `path` and `path.pub`.
pub fn keygen(path: &Path, force: bool) -> Result<KeyFiles, KeygenError> {
    write_key_files(path, &generate()?, force)
}

/// Writes `key` to `path` (secret, 0600) and `path.pub` (public, 0644). Without
/// `force`, refuses when either exists, before writing anything.
pub fn write_key_files(path: &Path, key: &SecretKey, force: bool) -> Result<KeyFiles, KeygenError> {
    let public = public_path(path);
    if !force {
        for p in [path, public.as_path()] {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(KeygenError::Exists {
                    path: p.to_path_buf(),
                });
            }
        }
    }
    let secret_tmp = staged(path, key.to_text().as_bytes(), 0o600)?;
    let public_tmp = staged(&public, key.public().to_text().as_bytes(), 0o644)?;
    place(secret_tmp, path, force)?;
    if let Err(e) = place(public_tmp, &public, force) {
        // Without its public half the secret key is no use to a profile: take it back
        // rather than leave half a pair.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(KeyFiles {
        secret: path.to_path_buf(),
        public,
        id: key.public().id(),
    })
}

/// A synced temporary file holding `bytes` with `mode`, in `path`'s folder.
fn staged(path: &Path, bytes: &[u8], mode: u32) -> Result<tempfile::NamedTempFile, KeygenError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-key-")
        .tempfile_in(dir)
        .map_err(io_at(dir, "creating a temporary key file in"))?;
    // The temporary file starts as 0600, so the secret is never readable by others.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
        .map_err(io_at(path, "setting the mode of"))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_at(path, "writing"))?;
    Ok(tmp)
}

/// Renames a staged file to `path`; without `force`, never over an existing file
/// (even one that appeared after the first check).
fn place(tmp: tempfile::NamedTempFile, path: &Path, force: bool) -> Result<(), KeygenError> {
    let placed = if force {
        tmp.persist(path)
    } else {
        tmp.persist_noclobber(path)
    };
    placed.map(drop).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            KeygenError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            KeygenError::Io {
                path: path.to_path_buf(),
                action: "renaming the new key file into place",
                source: e.error,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_both_files_with_their_modes_and_reads_them_back() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("signing.key");
        let key = SecretKey::from_seed([3; 32]);
        let files = write_key_files(&path, &key, false).unwrap();
        assert_eq!(files.public, d.path().join("signing.key.pub"));
        assert_eq!(files.id, key.public().id());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&files.public), 0o644);
        assert_eq!(UpdateKey::load(&path).unwrap().secret, key);
        assert_eq!(read_public(&files.public).unwrap(), key.public());
        // Nothing else is left in the folder (no temporary files).
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["signing.key", "signing.key.pub"]);
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("k");
        let first = SecretKey::from_seed([1; 32]);
        write_key_files(&path, &first, false).unwrap();
        let second = SecretKey::from_seed([2; 32]);
        let err = write_key_files(&path, &second, false).unwrap_err();
        assert!(matches!(err, KeygenError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(UpdateKey::load(&path).unwrap().secret, first);
        // Only the .pub there: still refused, and the secret is not written.
        std::fs::remove_file(&path).unwrap();
        let err = write_key_files(&path, &second, false).unwrap_err();
        assert!(err.to_string().contains("k.pub"), "{err}");
        assert!(!path.exists());
        write_key_files(&path, &second, true).unwrap();
        assert_eq!(UpdateKey::load(&path).unwrap().secret, second);
        assert_eq!(read_public(&public_path(&path)).unwrap(), second.public());
    }

    #[test]
    fn a_missing_folder_is_named_and_nothing_is_written() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("no-such-dir/k");
        let err = write_key_files(&path, &SecretKey::from_seed([1; 32]), false).unwrap_err();
        assert!(err.to_string().contains("no-such-dir"), "{err}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn generated_keys_differ_and_sign() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.seed(), b.seed());
        let sig = a.sign(b"x");
        assert!(a.public().verify(b"x", &sig));
    }

    #[test]
    fn the_wrong_file_is_named_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("k");
        write_key_files(&path, &SecretKey::from_seed([5; 32]), false).unwrap();
        let err = UpdateKey::load(&public_path(&path))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("k.pub") && err.contains("secret key file"),
            "{err}"
        );
        let err = read_public(&path).unwrap_err().to_string();
        assert!(err.contains(".pub file"), "{err}");
    }
}
