//! Where the in-image agent binary of each arch is found, and which compiler
//! built it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSection};

use super::error::read_file;
use super::BuildError;
use crate::arch::Arch;
use crate::output::manifest::Toolchain;

/// Where the in-image agent binary for each arch comes from.
#[derive(Debug, Clone, Default)]
pub struct AgentSource {
    /// Explicit paths per arch (`KILN_AGENT_X86_64`, `KILN_AGENT_ARM64`).
    pub explicit: BTreeMap<Arch, PathBuf>,
}

/// One arch's agent binary and the compilers that built it.
#[derive(Debug)]
pub(super) struct AgentBinary {
    /// The file's bytes.
    pub bytes: Arc<[u8]>,
    /// From its `.comment` section.
    pub toolchain: Toolchain,
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

    /// Reads the agent for `arch` (see [`AgentSource::locate`]) and the compilers
    /// that built it (see [`toolchain_of`]).
    pub(super) fn read(&self, arch: Arch) -> Result<AgentBinary, BuildError> {
        let path = self.locate(arch)?;
        let bytes: Arc<[u8]> = read_file(&path)?.into();
        let toolchain =
            toolchain_of(&bytes).map_err(|source| BuildError::AgentToolchain { path, source })?;
        Ok(AgentBinary { bytes, toolchain })
    }

    /// Finds the agent for `arch`: the explicit path, else
    /// `<prefix>/lib/kiln/<musl triple>/kiln-agent` for a kiln installed in
    /// `<prefix>/bin` (`make install`), else
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
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            let installed = prefix
                .join("lib/kiln")
                .join(arch.musl_triple())
                .join("kiln-agent");
            if installed.is_file() {
                return Ok(installed);
            }
            looked.push(installed);
        }
        for dir in exe.ancestors().skip(1) {
            let cand = dir.join(&rel);
            if cand.is_file() {
                return Ok(cand);
            }
            looked.push(cand);
            if looked.len() >= 5 {
                break;
            }
        }
        Err(BuildError::Missing(format!(
            "kiln-agent for {arch} not found (looked at {}); build it with `make agent` \
             (scripts/agent.sh: cargo build -p kiln-agent --profile agent --target {} with \
             the build paths remapped) or set KILN_AGENT_{}",
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

/// Why the compiler that built an agent binary could not be read from it.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    /// The file is not a 64-bit ELF file (both agent targets are).
    #[error("not a 64-bit ELF file: {0}")]
    NotElf(#[source] object::Error),
    /// The `.comment` section could not be read.
    #[error("its .comment section cannot be read: {0}")]
    Comment(#[source] object::Error),
    /// No `rustc version` line: not built by rustc, or the section was stripped.
    #[error(
        "no `rustc version` line in its .comment section (found: {found}); the manifest \
         records the compiler that built the agent, so give kiln the binary cargo built \
         (`make agent`)"
    )]
    NoRustc {
        /// The lines that were there, or `none`.
        found: String,
    },
}

/// The prefix rustc gives its line in every ELF file it links.
const RUSTC_LINE: &str = "rustc version ";

/// The compilers recorded in an agent binary's ELF `.comment` section.
///
/// rustc adds `rustc version 1.95.0 (59807616e 2026-04-14)` to every ELF file it
/// links, and gcc and lld add their own lines (`GCC: (Debian 12.2.0-14) 12.2.0`,
/// `Linker: LLD 22.1.2`). The agent is the only code in the image compiled from this
/// repository, so these lines name the toolchain whose output the image carries;
/// reading them from the binary (not from whatever `rustc` is on the PATH now) keeps
/// the record true for an agent built earlier or elsewhere.
pub fn toolchain_of(elf: &[u8]) -> Result<Toolchain, ToolchainError> {
    let file = ElfFile64::<Endianness>::parse(elf).map_err(ToolchainError::NotElf)?;
    let comment = match file.section_by_name(".comment") {
        Some(section) => section.data().map_err(ToolchainError::Comment)?,
        None => &[],
    };
    // The section is a run of NUL-terminated strings; lld merges equal ones.
    let lines: Vec<String> = comment
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let rustc = lines
        .iter()
        .find_map(|l| l.strip_prefix(RUSTC_LINE))
        .map(str::to_string)
        .ok_or_else(|| ToolchainError::NoRustc {
            found: if lines.is_empty() {
                "none".into()
            } else {
                lines.join("; ")
            },
        })?;
    Ok(Toolchain {
        rustc,
        comment: lines,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

    use super::*;

    /// A minimal 64-bit little-endian x86_64 ELF file: a `.comment` section holding
    /// `comment` (none when `None`) and the section-name table.
    fn elf(comment: Option<&[u8]>) -> Vec<u8> {
        const EHDR: usize = 64;
        const SHDR: usize = 64;
        let mut names = b"\0.shstrtab\0".to_vec();
        let comment_name = names.len() as u32;
        names.extend_from_slice(b".comment\0");
        let data_at = EHDR;
        let comment = comment.unwrap_or_default();
        let names_at = data_at + comment.len();
        let headers_at = (names_at + names.len()).next_multiple_of(8);
        let sections: u16 = if comment.is_empty() { 2 } else { 3 };

        let mut f = Vec::new();
        f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        f.resize(16, 0);
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
        f.extend_from_slice(&0u64.to_le_bytes()); // entry
        f.extend_from_slice(&0u64.to_le_bytes()); // no program headers
        f.extend_from_slice(&(headers_at as u64).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes()); // flags
        f.extend_from_slice(&(EHDR as u16).to_le_bytes());
        f.extend_from_slice(&56u16.to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(&(SHDR as u16).to_le_bytes());
        f.extend_from_slice(&sections.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes()); // .shstrtab is section 1
        assert_eq!(f.len(), EHDR);
        f.extend_from_slice(comment);
        f.extend_from_slice(&names);
        f.resize(headers_at, 0);

        // name, type, flags, offset, size, entry size
        let mut header = |name: u32, kind: u32, flags: u64, at: usize, len: usize, entry: u64| {
            f.extend_from_slice(&name.to_le_bytes());
            f.extend_from_slice(&kind.to_le_bytes());
            f.extend_from_slice(&flags.to_le_bytes());
            f.extend_from_slice(&0u64.to_le_bytes()); // address
            f.extend_from_slice(&(at as u64).to_le_bytes());
            f.extend_from_slice(&(len as u64).to_le_bytes());
            f.extend_from_slice(&0u32.to_le_bytes()); // link
            f.extend_from_slice(&0u32.to_le_bytes()); // info
            f.extend_from_slice(&1u64.to_le_bytes()); // alignment
            f.extend_from_slice(&entry.to_le_bytes());
        };
        header(0, 0, 0, 0, 0, 0);
        header(1, 3, 0, names_at, names.len(), 0); // SHT_STRTAB
        if !comment.is_empty() {
            // SHT_PROGBITS, SHF_MERGE | SHF_STRINGS, as linkers write it.
            header(comment_name, 1, 0x30, data_at, comment.len(), 1);
        }
        f
    }

    #[test]
    fn the_rust_compiler_is_read_from_the_comment_section() {
        let t = toolchain_of(&elf(Some(
            b"Linker: LLD 22.1.2\0rustc version 1.95.0 (59807616e 2026-04-14)\0\
              GCC: (Debian 12.2.0-14+deb12u1) 12.2.0\0",
        )))
        .unwrap();
        assert_eq!(t.rustc, "1.95.0 (59807616e 2026-04-14)");
        assert_eq!(
            t.comment,
            [
                "Linker: LLD 22.1.2",
                "rustc version 1.95.0 (59807616e 2026-04-14)",
                "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0"
            ]
        );
    }

    #[test]
    fn a_binary_that_does_not_name_rustc_is_refused() {
        let found = |e: ToolchainError| match e {
            ToolchainError::NoRustc { found } => found,
            other => panic!("expected NoRustc: {other}"),
        };
        let gcc = "GCC: (Debian 12.2.0-14) 12.2.0";
        let gcc_only = toolchain_of(&elf(Some(format!("{gcc}\0").as_bytes()))).unwrap_err();
        assert!(gcc_only.to_string().contains(gcc), "{gcc_only}");
        assert_eq!(found(gcc_only), gcc);
        // No .comment at all (`strip -R .comment`): said so.
        assert_eq!(found(toolchain_of(&elf(None)).unwrap_err()), "none");
        let script = toolchain_of(b"#!/bin/sh\necho agent\n").unwrap_err();
        assert!(matches!(script, ToolchainError::NotElf(_)), "{script}");
    }

    #[test]
    fn rustcs_own_line_in_a_binary_it_linked_is_read() {
        // This test binary was linked by the rustc that builds the agent (one
        // toolchain per machine), so it carries the same kind of line.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let t = toolchain_of(&me).unwrap();
        assert!(
            t.rustc.starts_with(|c: char| c.is_ascii_digit()) && t.rustc.contains(" ("),
            "{t:?}"
        );
        assert!(t.comment.contains(&format!("{RUSTC_LINE}{}", t.rustc)));
    }

    #[test]
    fn an_agent_without_the_line_fails_the_build_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("kiln-agent");
        std::fs::write(&fake, elf(None)).unwrap();
        let source = AgentSource {
            explicit: BTreeMap::from([(Arch::X86_64, fake.clone())]),
        };
        let e = source.read(Arch::X86_64).unwrap_err();
        assert!(matches!(e, BuildError::AgentToolchain { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&fake.display().to_string()) && msg.contains("no `rustc version` line"),
            "{msg}"
        );
    }
}
