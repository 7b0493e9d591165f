//! Kernel modules: which ones the image carries, in which order they load,
//! and the index files `modprobe` reads at run time.
//!
//! Debian's kernel package ships ~4000 plain `.ko` files and no
//! `modules.dep` (its postinst runs depmod). kiln reads each module's
//! `.modinfo` ELF section (never loading anything), selects the closure of
//! the profile's module sets over `depends=`, `softdep= pre:` and the
//! crypto-API needs listed in `module_sets.toml`, prunes the rest, and
//! writes the `modules.*` indexes itself, in the same format and order as
//! kmod 30's depmod (which the tests use as the referee).
//!
//! One job per file: `sets` holds the built-in module sets, `names` module
//! and alias names, `elf` what one `.ko` says, `db` every module of the
//! tree's kernel, `select` the closure and load order, `prune` drops the
//! rest, `depmod` computes the index files and `index` encodes libkmod's
//! binary trie.

mod db;
mod depmod;
mod elf;
mod file;
mod index;
mod names;
mod prune;
mod select;
mod sets;

pub use depmod::write_index;
pub use elf::ModInfo;
pub(crate) use file::{is_module_path, module_bytes, plain_module_path};
pub use names::normalize_name;
pub use prune::{prune, Pruned};
pub use select::{select, Module, ModuleSelection};
pub use sets::{builtin_set_names, builtin_sets, ModuleSet};

use super::TreeError;
use crate::arch::Arch;

/// Errors of module selection and indexing.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// No `lib/modules/<kver>` in the tree.
    #[error("no kernel modules in the image: /usr/lib/modules/<version>/ is missing; add the kernel package to the profile's [kernel.package]")]
    NoKernel,
    /// More than one kernel version installed.
    #[error("/{dir}: several kernel versions ({}); the profile must install exactly one kernel", kvers.join(", "))]
    SeveralKernels {
        /// The modules directory.
        dir: String,
        /// The versions found.
        kvers: Vec<String>,
    },
    /// A set name that is neither built in nor defined by the profile.
    #[error("unknown module set {name:?}; built-in sets: {}; or define it under [kernel.sets]", known.join(", "))]
    UnknownSet {
        /// The name.
        name: String,
        /// The built-in set names.
        known: Vec<String>,
    },
    /// A set names a module the kernel has neither as a module nor built in.
    #[error("module set {set:?} names {module:?}, which kernel {kver} for {arch} has neither as a module nor built in")]
    UnknownModule {
        /// The module name as written.
        module: String,
        /// The set naming it.
        set: String,
        /// The target arch.
        arch: Arch,
        /// The kernel version.
        kver: String,
    },
    /// A module depends on one that is not in the tree.
    #[error("/{path}: {module} depends on {needs}, which is not in /{dir} (neither a module nor built in)")]
    MissingDependency {
        /// The module.
        module: String,
        /// Its tree path.
        path: String,
        /// The missing dependency.
        needs: String,
        /// The modules directory.
        dir: String,
    },
    /// A module file that is not a readable ELF kernel module.
    #[error("/{path}: not a kernel module kiln can read: {message}")]
    BadModule {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The modules are built for another machine.
    #[error("/{path}: module is for ELF machine {machine}, but the image is {arch}; check [kernel.package] for {arch}")]
    WrongArch {
        /// A module file.
        path: String,
        /// Its e_machine.
        machine: u16,
        /// The target arch.
        arch: Arch,
    },
    /// Dependencies loop, so no load order exists.
    #[error("kernel modules depend on each other in a loop: {}", .0.join(", "))]
    Cycle(Vec<String>),
    /// A key or value that the index format cannot hold.
    #[error("module index: {0:?} is not 7-bit ASCII")]
    NotAscii(String),
    /// kiln's built-in set data is invalid (a kiln bug).
    #[error("built-in module_sets.toml: {0}")]
    SetData(String),
    /// Reading or writing the tree failed.
    #[error("kernel modules: {0}")]
    Tree(#[from] TreeError),
}

#[cfg(test)]
mod tests;
