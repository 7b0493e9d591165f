//! The contracts between kiln's three programs, in one place.
//!
//! The builder writes disks that the in-image agent reads (and, to grow `var` or to
//! update, rewrites); `kiln inspect` reads them back. Each of them once carried its own
//! copy of the GPT and dm-verity formats, and the copies drifted. This crate owns those
//! formats: it does no I/O (callers read and write; everything here takes and returns
//! bytes), so the builder, the static agent and the server can all use it.
//!
//! - [`base64`]: standard base64: strict for WireGuard keys and the agent's identity
//!   file (kiln-enroll-proto re-exports it), lenient for cloud user-data.
//! - [`civil`]: UTC calendar dates and times of Unix seconds (the builder's FAT and
//!   OCI timestamps, kiln-enroll's listings).
//! - [`le`]: little-endian fields at byte offsets (every on-disk format here is
//!   little-endian).
//! - [`crc32`]: the CRC-32 that GPT headers and entry arrays carry.
//! - [`gpt`]: GUIDs, the partition type GUIDs kiln uses (UEFI and the Discoverable
//!   Partitions Specification), headers, entries and the protective MBR.
//! - [`verity`]: the dm-verity superblock, the hash tree's geometry and its check.
//! - [`names`]: host names (RFC 1123, the kernel's 64-byte limit, the machine-id
//!   fallback), node names (one DNS label: the agent's request and the server's check
//!   and sanitising) and Kubernetes node labels.
//! - [`agent_config`]: `/usr/lib/kiln/agent.toml`, the image's settings (serde types,
//!   names, kubelet argument checks).
//! - [`cmdline`]: the kernel command line's `kiln.*` keys, its word splitting and the
//!   values the builder puts there for init.
//! - [`version`]: image versions (a profile's `version`, os-release's `IMAGE_VERSION`)
//!   and their order, which is systemd-boot's.
//! - [`boot`]: the A/B layout: slots and their GPT names, the ESP's boot loader files
//!   and UKI names with boot counters, the update keys' and state's places.
//! - [`kubernetes`]: the cluster's Kubernetes version (the builder derives it, agent.toml
//!   carries it) and containerd's support matrix that `kiln-agent preflight` checks the
//!   runtime against.
//! - [`signing`]: the ed25519 keys that sign update bundles, their one-line text forms
//!   and key ids.
//! - [`bundle`]: the signed update bundle: its header, manifest and part layout, and
//!   the checks a node makes before it trusts one.
//! - [`channel`]: the signed "latest" document of an update channel, which nodes
//!   following the channel check on a schedule; durations as kiln writes them.

pub mod agent_config;
pub mod base64;
pub mod boot;
pub mod bundle;
pub mod channel;
pub mod civil;
pub mod cmdline;
pub mod crc32;
pub mod gpt;
pub mod kubernetes;
pub mod le;
pub mod names;
pub mod signing;
pub mod ssh_key;
pub mod verity;
pub mod version;
