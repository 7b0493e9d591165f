//! The node's configuration: gathered from every channel, merged by precedence, applied.

use std::process::ExitCode;

/// `kiln-agent config`.
pub fn main(_args: &[String]) -> ExitCode {
    ExitCode::FAILURE
}
