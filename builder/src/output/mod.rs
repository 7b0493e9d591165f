//! Outputs land atomically: everything is written into a staging folder
//! inside the output folder and renamed into place only when the whole
//! build succeeded. On an error, a panic or Ctrl-C the staging folder is
//! removed, so nothing half-written is ever left at an output path.

pub mod digest;
pub mod formats;
pub mod manifest;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Errors while staging or publishing outputs.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `--out` names something that is not a folder.
    #[error("{}: --out names an existing file, not a folder; give a folder (it is created if missing)", path.display())]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A staging folder alive right now, and the output folders its build created.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Live {
    /// The staging folder.
    dir: PathBuf,
    /// The folders `Staging::new` created for the output folder, innermost
    /// first: removed again, when still empty, if nothing is published.
    created: Vec<PathBuf>,
}

/// Staging folders alive right now; the Ctrl-C handler removes them.
static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());

/// Removes the folders in `created` (innermost first) that are empty: an
/// output folder kiln made for a build that published nothing.
fn remove_if_empty(created: &[PathBuf]) {
    for dir in created {
        // remove_dir refuses a folder with anything in it: another arch's image stays.
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
}

/// Creates `out` and its missing parents; returns the ones it created,
/// innermost first.
fn create_out(out: &Path) -> Result<Vec<PathBuf>, OutputError> {
    let mut missing = Vec::new();
    for dir in out.ancestors().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() || dir.is_dir() => break,
            Ok(_) => {
                return Err(OutputError::NotAFolder {
                    path: dir.to_path_buf(),
                })
            }
            Err(_) => missing.push(dir.to_path_buf()),
        }
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    Ok(missing)
}

/// Installs a Ctrl-C / SIGTERM handler that removes every live staging
/// folder and exits with status 130. Call once from the binary.
pub fn install_interrupt_cleanup() {
    let _ = ctrlc::set_handler(|| {
        if let Ok(live) = LIVE.lock() {
            for l in live.iter() {
                // The build thread may still be adding files while we delete: retry.
                for _ in 0..5 {
                    if std::fs::remove_dir_all(&l.dir).is_ok() || !l.dir.exists() {
                        break;
                    }
                }
                remove_if_empty(&l.created);
            }
        }
        // stderr may be a closed pipe: never panic in the handler.
        let _ = writeln!(
            std::io::stderr(),
            "kiln: interrupted; no output was written"
        );
        std::process::exit(130);
    });
}

/// A staging folder whose files are published together.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    out: PathBuf,
    created: Vec<PathBuf>,
    published: bool,
}

impl Staging {
    /// Creates `<out>/.kiln-staging-<tag>-<pid>/`. The output folder is
    /// created if needed, and removed again if the build publishes nothing.
    pub fn new(out: &Path, tag: &str) -> Result<Staging, OutputError> {
        let created = create_out(out)?;
        let dir = out.join(format!(".kiln-staging-{tag}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        if let Ok(mut live) = LIVE.lock() {
            live.push(Live {
                dir: dir.clone(),
                created: created.clone(),
            });
        }
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
            created,
            published: false,
        })
    }

    /// Where to write a file that will be published as `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The staging folder (for scratch files that are not published).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Renames the named files into the output folder, then removes the
    /// staging folder. Files are fsynced first so a crash after publishing
    /// never leaves a truncated image under the final name.
    pub fn publish(mut self, names: &[&str]) -> Result<Vec<PathBuf>, OutputError> {
        let mut done = Vec::new();
        for name in names {
            let from = self.dir.join(name);
            let f = std::fs::File::open(&from).map_err(io(&from))?;
            f.sync_all().map_err(io(&from))?;
        }
        for name in names {
            let from = self.dir.join(name);
            let to = self.out.join(name);
            std::fs::rename(&from, &to).map_err(io(&to))?;
            done.push(to);
        }
        self.published = true;
        self.cleanup();
        Ok(done)
    }

    fn cleanup(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if !self.published {
            remove_if_empty(&self.created);
        }
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|l| l.dir != self.dir);
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            tracing::debug!(dir = %self.dir.display(), "removing unpublished staging folder");
        }
        self.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpublished_staging_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Staging::new(d.path(), "t").unwrap();
            std::fs::write(s.path("img.raw"), b"half").unwrap();
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // An output folder (and parents) made for it goes too; one that was there stays.
        let out = d.path().join("a/b");
        drop(Staging::new(&out, "t").unwrap());
        assert!(!d.path().join("a").exists());
        assert!(d.path().exists());
    }

    #[test]
    fn out_naming_a_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let e = Staging::new(&file, "t").unwrap_err().to_string();
        assert!(e.contains("existing file, not a folder"), "{e}");
        let e = Staging::new(&file.join("sub"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f: --out names an existing file"), "{e}");
    }

    #[test]
    fn publish_moves_files_and_removes_staging() {
        let d = tempfile::tempdir().unwrap();
        let s = Staging::new(d.path(), "t").unwrap();
        std::fs::write(s.path("a"), b"1").unwrap();
        std::fs::write(s.path("scratch"), b"x").unwrap();
        let out = s.publish(&["a"]).unwrap();
        assert_eq!(out, vec![d.path().join("a")]);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a")]);
    }
}
