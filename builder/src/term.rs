//! The terminal side of the command line: colour only for a person at a
//! terminal, and printing that ends quietly when its reader went away
//! (`kiln inspect --packages IMG | head -3`).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why printing a result failed.
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    /// The reader of standard output went away (a closed pipe). Not a
    /// failure of kiln's work: the binary ends quietly with status 141, the
    /// status a shell reports for a program ended by SIGPIPE.
    #[error("standard output was closed")]
    Closed,
    /// Any other write error (a full disk behind `> file`).
    #[error("writing to standard output: {0}")]
    Io(#[source] std::io::Error),
}

/// The exit status after [`PrintError::Closed`]: 128 + SIGPIPE.
pub const CLOSED_PIPE_STATUS: u8 = 141;

/// Writes `args` to standard output and flushes it, so a closed pipe is
/// reported here as [`PrintError::Closed`] instead of a panic in `println!`.
pub fn print(args: fmt::Arguments<'_>) -> Result<(), PrintError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => PrintError::Closed,
            _ => PrintError::Io(e),
        })
}

/// Whether output to a stream should carry ANSI colour: only when the stream
/// is a terminal, `NO_COLOR` is unset or empty (<https://no-color.org>) and
/// `TERM` is not `dumb` (a terminal that cannot show it, like Emacs' shell).
pub fn colour(is_terminal: bool) -> bool {
    colour_with(is_terminal, |k| std::env::var_os(k))
}

fn colour_with(is_terminal: bool, var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    is_terminal
        && var("NO_COLOR").is_none_or(|v| v.is_empty())
        && var("TERM").is_none_or(|v| v != "dumb")
}

/// The manual page of `cmd` in roff (`man -l` reads it), from the same clap
/// definitions as `--help`, so the two never disagree.
pub fn man_page(cmd: &clap::Command, w: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(cmd.clone()).render(w)
}

/// Why the manual pages could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: writing the manual pages: {source}", dir.display())]
pub struct ManError {
    /// The folder they were to go to.
    pub dir: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Writes `<name>.1` for `cmd` and `<name>-<command>.1` for each of its
/// commands (recursively) into `dir`, creating it; returns the files, sorted.
pub fn write_man_pages(cmd: &clap::Command, dir: &Path) -> Result<Vec<PathBuf>, ManError> {
    let err = |source| ManError {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut cmd = cmd.clone();
    // Subcommand pages are named after their parent (`kiln-build`) only once built.
    cmd.build();
    let mut files = Vec::new();
    write_pages(&cmd, dir, &mut files).map_err(err)?;
    files.sort();
    Ok(files)
}

fn write_pages(cmd: &clap::Command, dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let path = dir.join(format!(
        "{}.1",
        cmd.get_display_name().unwrap_or(cmd.get_name())
    ));
    let mut text = Vec::new();
    man_page(cmd, &mut text)?;
    std::fs::write(&path, text)?;
    files.push(path);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, dir, files)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_needs_a_terminal_and_no_opt_out() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert!(colour_with(true, env(&[("TERM", "xterm")])));
        assert!(colour_with(true, env(&[("NO_COLOR", "")])));
        assert!(!colour_with(false, env(&[])));
        assert!(!colour_with(true, env(&[("NO_COLOR", "1")])));
        assert!(!colour_with(true, env(&[("TERM", "dumb")])));
    }
}
