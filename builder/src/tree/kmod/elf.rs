//! What one module file says: its `.modinfo` strings and, for indexing, the
//! symbols it exports and imports, read from the ELF without loading it.

use std::collections::BTreeSet;

use object::read::elf::{ElfFile64, FileHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, SymbolSection};

use super::names::normalize_name;
use super::KmodError;
use crate::arch::Arch;

/// What a module's `.modinfo` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `depends=`: modules it needs symbols from (normalised names).
    pub depends: Vec<String>,
    /// `softdep=` values, as written (`pre: a b post: c`).
    pub softdeps: Vec<String>,
    /// `alias=` values, as written.
    pub aliases: Vec<String>,
}

impl ModInfo {
    /// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
    pub fn parse(data: &[u8]) -> ModInfo {
        let mut info = ModInfo::default();
        for (k, v) in modinfo_pairs(data) {
            match k {
                "depends" => info
                    .depends
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(normalize_name)),
                "softdep" => info.softdeps.push(v.to_string()),
                "alias" => info.aliases.push(v.to_string()),
                _ => {}
            }
        }
        info
    }

    /// Names after `pre:` in the softdeps (the modules to load first).
    pub fn softdep_pre(&self) -> Vec<String> {
        self.softdep_list("pre:")
    }

    /// Names after `post:` in the softdeps.
    pub fn softdep_post(&self) -> Vec<String> {
        self.softdep_list("post:")
    }

    fn softdep_list(&self, which: &str) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.softdeps {
            let mut mode = "";
            for w in s.split_whitespace() {
                match w {
                    "pre:" | "post:" => mode = if w == "pre:" { "pre:" } else { "post:" },
                    name if mode == which => out.push(name.to_string()),
                    _ => {}
                }
            }
        }
        out
    }
}

/// The `key=value` strings of a `.modinfo` section, in order.
pub(super) fn modinfo_pairs(data: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter_map(|s| s.split_once('='))
}

/// The parts of a module ELF that selection and indexing read.
#[derive(Debug, Clone, Default)]
pub(super) struct ElfModule {
    pub(super) machine: u16,
    pub(super) modinfo: Vec<u8>,
    /// Exported symbols, in the order libkmod lists them.
    pub(super) exports: Vec<String>,
    /// Undefined symbols in .symtab order, then unreferenced __versions names.
    pub(super) imports: Vec<String>,
}

/// Reads the module ELF at `path` (for messages): always its `.modinfo`,
/// with `symbols` also its exports and imports.
pub(super) fn read_elf(path: &str, data: &[u8], symbols: bool) -> Result<ElfModule, KmodError> {
    let bad = |m: String| KmodError::BadModule {
        path: path.to_string(),
        message: m,
    };
    let elf = ElfFile64::<Endianness>::parse(data).map_err(|e| bad(format!("ELF: {e}")))?;
    let machine = elf.elf_header().e_machine(elf.endian());
    let section = |name: &str| -> Result<Option<&[u8]>, KmodError> {
        match elf.section_by_name(name) {
            Some(s) => s
                .data()
                .map(Some)
                .map_err(|e| bad(format!("section {name}: {e}"))),
            None => Ok(None),
        }
    };
    let modinfo = section(".modinfo")?
        .ok_or_else(|| bad("no .modinfo section".into()))?
        .to_vec();
    let mut m = ElfModule {
        machine,
        modinfo,
        ..ElfModule::default()
    };
    if !symbols {
        return Ok(m);
    }
    let mut crc_exports = Vec::new();
    let mut undefined = Vec::new();
    for sym in elf.symbols() {
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() {
            continue;
        }
        if let Some(exported) = name.strip_prefix("__crc_") {
            crc_exports.push(exported.to_string());
        }
        if sym.section() == SymbolSection::Undefined {
            undefined.push(name.to_string());
        }
    }
    m.exports = if crc_exports.is_empty() {
        // Without modversions the export names are in __ksymtab_strings.
        section("__ksymtab_strings")?
            .map(|d| {
                d.split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        crc_exports
    };
    // __versions entries (8-byte CRC + 56-byte name) not referenced from
    // .symtab (module_layout) come last, as libkmod lists them.
    if let Some(v) = section("__versions")? {
        let seen: BTreeSet<&str> = undefined.iter().map(String::as_str).collect();
        let mut extra = Vec::new();
        for entry in v.chunks_exact(64) {
            let raw = &entry[8..];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let name = String::from_utf8_lossy(&raw[..end]).into_owned();
            let name = name.strip_prefix('.').map(String::from).unwrap_or(name);
            if !seen.contains(name.as_str()) {
                extra.push(name);
            }
        }
        undefined.extend(extra);
    }
    m.imports = undefined;
    Ok(m)
}

/// The ELF `e_machine` of modules built for `arch`.
pub(super) fn elf_machine(arch: Arch) -> u16 {
    match arch {
        Arch::X86_64 => object::elf::EM_X86_64,
        Arch::Arm64 => object::elf::EM_AARCH64,
    }
}
