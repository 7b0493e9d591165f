//! `kiln-agent update`: A/B updates of the node's image.
//!
//! - [`apply`]: `update apply SOURCE`: check a signed bundle, write it into the slot
//!   that is not running, install its UKI on trial (with systemd-boot's boot counter).
//! - [`fetch`]: where a bundle comes from: a local file or an http/https URL, read as a
//!   stream that resumes a broken download with a range request.
//! - [`slot`]: which slot runs, and rewriting the other slot's GPT entries.
//! - [`esp`]: the ESP mounted at `/efi`, the UKIs there, which slot and version each boots.
//! - [`efivars`]: the EFI variables systemd-boot sets (is this boot on trial?).
//! - [`state`]: what the node remembers under `/var/lib/kiln/update`: versions it rolled
//!   back from (never applied again by itself), failed health checks, the last apply.
//! - [`status`]: `update status [--json]`.
//! - [`health`]: `update boot` (kiln-update.service): after every boot, notice a rollback
//!   and say so on the console; when the boot is on trial, wait until the node is healthy
//!   (or fail, which reboots it).

pub mod apply;
pub mod efivars;
pub mod esp;
pub mod fetch;
pub mod health;
pub mod slot;
pub mod state;
pub mod status;
