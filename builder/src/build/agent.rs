//! Where the in-image agent binary of each arch is found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::BuildError;
use crate::arch::Arch;

/// Where the in-image agent binary for each arch comes from.
#[derive(Debug, Clone, Default)]
pub struct AgentSource {
    /// Explicit paths per arch (`KILN_AGENT_X86_64`, `KILN_AGENT_ARM64`).
    pub explicit: BTreeMap<Arch, PathBuf>,
}

impl AgentSource {
    /// Paths from the environment; the rest is searched next to the running binary.
    pub fn from_env() -> AgentSource {
        let mut explicit = BTreeMap::new();
        for arch in Arch::ALL {
            let var = format!("KILN_AGENT_{}", arch.name().to_uppercase());
            if let Some(p) = std::env::var_os(&var) {
                explicit.insert(arch, PathBuf::from(p));
            }
        }
        AgentSource { explicit }
    }

    /// Finds the agent for `arch`: the explicit path, else
    /// `<cargo target dir>/<musl triple>/agent/kiln-agent` above the running binary.
    pub fn locate(&self, arch: Arch) -> Result<PathBuf, BuildError> {
        if let Some(p) = self.explicit.get(&arch) {
            return if p.is_file() {
                Ok(p.clone())
            } else {
                Err(BuildError::Missing(format!(
                    "KILN_AGENT_{}={}: no such file",
                    arch.name().to_uppercase(),
                    p.display()
                )))
            };
        }
        let rel = Path::new(arch.musl_triple())
            .join("agent")
            .join("kiln-agent");
        let exe = std::env::current_exe().unwrap_or_default();
        let mut looked = Vec::new();
        for dir in exe.ancestors().skip(1) {
            let cand = dir.join(&rel);
            if cand.is_file() {
                return Ok(cand);
            }
            looked.push(cand);
            if looked.len() >= 4 {
                break;
            }
        }
        Err(BuildError::Missing(format!(
            "kiln-agent for {arch} not found (looked at {}); build it with `make agent` \
             (cargo build -p kiln-agent --profile agent --target {}) or set KILN_AGENT_{}",
            looked
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            arch.musl_triple(),
            arch.name().to_uppercase()
        )))
    }
}
