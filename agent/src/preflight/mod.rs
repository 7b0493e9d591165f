//! `kiln-agent preflight`: a kubeadm-style check of the node's Kubernetes prerequisites.

use std::process::ExitCode;

/// `kiln-agent preflight`.
pub fn main(_args: &[String]) -> ExitCode {
    ExitCode::FAILURE
}
