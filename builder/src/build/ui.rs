//! Progress display of a build: bars on a terminal, nothing when quiet or piped.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress display: bars on a terminal, nothing when quiet or piped.
#[derive(Debug, Clone)]
pub struct Ui {
    multi: MultiProgress,
    quiet: bool,
}

impl Ui {
    /// A display; `quiet` hides everything.
    pub fn new(quiet: bool) -> Ui {
        let multi = MultiProgress::new();
        if quiet {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Ui { multi, quiet }
    }

    /// A byte-count bar.
    pub fn bytes(&self, msg: &str) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new(0));
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_message(msg.to_string());
        pb
    }

    /// A step counter bar.
    pub fn steps(&self, len: u64, msg: &str) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template("{msg:30!} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_message(msg.to_string());
        pb
    }

    /// A spinner for one step; finish it with [`ProgressBar::finish_and_clear`].
    pub fn spinner(&self, msg: String) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new_spinner());
        pb.set_message(msg);
        if !self.quiet {
            pb.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        pb
    }
}
