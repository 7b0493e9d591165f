//! kiln: bakes immutable node images from a declarative profile.
//!
//! The modules follow the data flow of a build:
//! [`profile`] → [`lock`] → [`fetch`] → [`unpack`] → [`tree`] (with [`oci`])
//! → [`plan`] → [`fs`] / [`uki`] → [`disk`] → [`output`]. Each imports only
//! modules before it (a test keeps it so), and [`build`] runs them as a
//! recipe of named stages; [`qemu`] boots the result and [`flash`] writes it
//! to a disk.

pub mod arch;
pub mod build;
pub mod channel;
pub mod disk;
pub mod fetch;
pub mod flash;
pub mod fs;
pub mod image_path;
pub mod inspect;
pub mod keygen;
pub mod lock;
pub mod oci;
pub mod output;
pub mod plan;
pub mod profile;
pub mod qemu;
pub mod runner;
pub mod term;
pub mod tree;
pub mod uki;
pub mod unpack;

#[cfg(test)]
mod module_graph;

pub use arch::Arch;

/// `kiln --version`: the package version and the git commit it was built
/// from (`unknown commit` outside a git checkout; `KILN_COMMIT` overrides).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KILN_COMMIT"), ")");
