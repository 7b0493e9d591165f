//! kiln: bakes immutable node images from a declarative profile.
//!
//! The modules follow the data flow of a build:
//! [`profile`] → [`lock`] → [`fetch`] → [`unpack`] → [`tree`] → [`plan`] →
//! [`fs`] / [`uki`] → [`disk`] → [`output`]. [`build`] drives them in that
//! order; [`qemu`] boots the result.

pub mod arch;
pub mod build;
pub mod disk;
pub mod fetch;
pub mod fs;
pub mod inspect;
pub mod lock;
pub mod oci;
pub mod output;
pub mod plan;
pub mod profile;
pub mod qemu;
pub mod runner;
pub mod tree;
pub mod uki;
pub mod unpack;

pub use arch::Arch;
