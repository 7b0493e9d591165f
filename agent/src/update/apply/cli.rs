//! The command itself: its help, its arguments, and the exit status and lines it ends
//! with. What it does is [`super::apply`].

use std::process::ExitCode;

use super::{apply, real, say, ApplySys, Paths};
use crate::flags::Flags;
use crate::sys::{Cmd, CommandResult};

/// The command's help.
pub const USAGE: &str = "\
kiln-agent update apply SOURCE [--reboot] [--allow-downgrade] [--force] [--tries N]
  Check the signed update bundle SOURCE (a file, or an http:// or https:// URL; a broken
  download resumes) and write it into the slot that is not running; its UKI is installed
  on trial with N boot attempts (default: agent.toml's [update] tries, else 3). The
  running slot is never written; a power loss at any point leaves the node booting the
  version it runs now.
  --reboot            reboot into the new version when done
  --allow-downgrade   accept a version older than the running one (it is tried first;
                      the running one stays the fallback)
  --force             accept a version this node rolled back from, and apply while the
                      running version is still on trial
  Exit 0 when the slot is written, 1 when the bundle is refused or writing failed, 2 on
  bad arguments.
";

/// The command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Path or URL of the bundle.
    pub source: String,
    /// Reboot when done.
    pub reboot: bool,
    /// Accept an older version.
    pub allow_downgrade: bool,
    /// Accept a rejected version, and a running version on trial.
    pub force: bool,
    /// Boot attempts of the new version.
    pub tries: Option<u32>,
}

/// Reads the arguments after `apply`.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut source = None;
    let mut opts = Options {
        source: String::new(),
        reboot: false,
        allow_downgrade: false,
        force: false,
        tries: None,
    };
    let mut flags = Flags::new(args);
    while let Some((flag, inline)) = flags.next_flag() {
        match flag {
            "--reboot" => opts.reboot = true,
            "--allow-downgrade" => opts.allow_downgrade = true,
            "--force" => opts.force = true,
            "--tries" => {
                let v = flags.value(flag, inline)?;
                match v.parse::<u32>() {
                    Ok(n) if (1..=100).contains(&n) => opts.tries = Some(n),
                    _ => return Err(format!("--tries needs a number from 1 to 100, not {v:?}")),
                }
            }
            f if f.starts_with('-') && f.len() > 1 => {
                return Err(format!("unknown option {f:?}"));
            }
            s if source.is_none() => source = Some(s.to_string()),
            s => return Err(format!("one SOURCE only; {s:?} is a second one")),
        }
    }
    opts.source = source.ok_or("no SOURCE given (a bundle file or URL)")?;
    Ok(opts)
}

/// `update apply`: parses the arguments, applies, prints one line per failure.
pub fn main(args: &[String]) -> ExitCode {
    let opts = match crate::update::parse_or_usage("apply", USAGE, args, parse_args) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let mut sys = real::RealApply::new();
    ExitCode::from(run(&mut sys, &Paths::default(), &opts))
}

/// Applies and reports: 0 when applied, 1 otherwise (with one `ERROR:` line).
pub fn run(sys: &mut dyn ApplySys, paths: &Paths, opts: &Options) -> u8 {
    match apply(sys, paths, opts) {
        Ok(done) => {
            say(sys, &done.summary());
            if opts.reboot {
                say(sys, "rebooting");
                let r = sys.run(&Cmd::new("systemctl", &["reboot"]));
                if !matches!(r, CommandResult::Exited { code: Some(0), .. }) {
                    say(
                        sys,
                        &format!(
                            "ERROR: systemctl reboot failed ({r:?}): reboot by hand to start \
                             version {}",
                            done.version
                        ),
                    );
                    return 1;
                }
            }
            0
        }
        Err(e) => {
            say(sys, &format!("ERROR: {e}"));
            1
        }
    }
}
