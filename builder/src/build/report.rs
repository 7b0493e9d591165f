//! What one arch's build reports, and the clock that times its stages.

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use crate::arch::Arch;
use crate::fs::ext4;
use crate::profile::format_size;

/// What one arch's build produced, with timings for benchmarks.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// Arch.
    pub arch: Arch,
    /// The image.
    pub image: PathBuf,
    /// Its manifest.
    pub manifest: PathBuf,
    /// Image file size.
    pub image_size: u64,
    /// Root filesystem size and data bytes.
    pub root: ext4::Ext4Summary,
    /// Seconds per step, in order.
    pub timings: Vec<(String, f64)>,
    /// The locked .debs the image is made of for this arch: the root's, the
    /// kernel's and the boot stub's. The manifest lists the same packages and
    /// `kiln inspect` counts them the same way.
    pub packages: usize,
    /// Every file the build published, the manifest last, with its size.
    pub files: Vec<(PathBuf, u64)>,
}

impl BuildReport {
    /// Total seconds.
    pub fn total_secs(&self) -> f64 {
        self.timings.iter().map(|(_, s)| s).sum()
    }
}

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({}, root {} of files in a {} ext4, {} packages) in {:.1} s; wrote:",
            self.arch,
            self.image.display(),
            format_size(self.image_size),
            format_size(self.root.data_bytes),
            format_size(self.root.size),
            self.packages,
            self.total_secs()
        )?;
        for (path, size) in &self.files {
            write!(f, "\n  {} ({})", path.display(), format_size(*size))?;
        }
        Ok(())
    }
}

/// Times the named stages for the report and logs each one.
///
/// A stage's time runs from the end of the one before, so the glue between
/// two stages (opening the staging folder, planning the disk) counts
/// towards the next one and the steps add up to the whole build.
#[derive(Debug)]
pub(super) struct Clock {
    arch: Arch,
    last: Instant,
    steps: Vec<(String, f64)>,
}

impl Clock {
    /// Starts timing `arch`'s build.
    pub(super) fn new(arch: Arch) -> Clock {
        Clock {
            arch,
            last: Instant::now(),
            steps: Vec::new(),
        }
    }

    /// Runs the stage named `step`, then logs and records its time.
    pub(super) fn step<T, E>(
        &mut self,
        step: &str,
        stage: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let artifact = stage()?;
        let secs = self.last.elapsed().as_secs_f64();
        tracing::info!(arch = %self.arch, step, secs = format!("{secs:.2}"), "done");
        self.steps.push((step.to_string(), secs));
        self.last = Instant::now();
        Ok(artifact)
    }

    /// Seconds per step, in order.
    pub(super) fn into_timings(self) -> Vec<(String, f64)> {
        self.steps
    }
}
