//! The seed of an image: one digest of everything that decides its content,
//! from which every identifier inside the image is derived (partition and
//! disk GUIDs, the root filesystem's UUID, the ESP's serial, the verity salt).
//!
//! Deriving them instead of drawing them at random is what makes two builds
//! of the same profile and lock byte-identical, while two different images
//! still never share an identifier.

use kiln_contract::le;
use sha2::{Digest, Sha256};

use super::Guid;
use crate::arch::Arch;
use crate::lock::Lockfile;
use crate::profile::BuildExtras;

/// The seed of one arch's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSeed([u8; 32]);

impl ImageSeed {
    /// The seed of the image built from a profile file's bytes, the build's
    /// command line settings and the lock, for `arch`.
    pub fn derive(
        profile_bytes: &[u8],
        extras: &BuildExtras,
        lock: &Lockfile,
        arch: Arch,
    ) -> ImageSeed {
        let mut h = Sha256::new();
        h.update(b"kiln-disk-seed-v1\0");
        h.update(Sha256::digest(seed_input(profile_bytes, extras)));
        h.update(lock.inputs.as_bytes());
        for p in lock.packages_for(arch, None) {
            h.update(p.sha256.as_bytes());
        }
        h.update(arch.name().as_bytes());
        ImageSeed(h.finalize().into())
    }

    /// The raw seed, for [`crate::plan::PlanInput::seed`] and the output formats.
    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// UUID of the root's ext4 filesystem.
    pub fn root_fs_uuid(&self) -> [u8; 16] {
        Guid::derive(&self.0, "root-filesystem").to_gpt_bytes()
    }

    /// Volume serial of the ESP's FAT filesystem.
    pub fn esp_serial(&self) -> u32 {
        le::u32_at(&Guid::derive(&self.0, "esp-serial").to_gpt_bytes(), 0)
    }

    /// Salt of the root's hash tree. The seed already is a digest of
    /// everything that decides the root's content (profile, lock and every
    /// package's sha256), so the salt is fixed by the content and differs
    /// between images.
    pub fn verity_salt(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"kiln-verity-salt-v1\0");
        h.update(self.0);
        h.finalize().into()
    }

    /// UUID in the superblock of the root's hash tree.
    pub fn verity_uuid(&self) -> [u8; 16] {
        Guid::derive(&self.0, "root-verity-superblock").to_gpt_bytes()
    }
}

/// The profile's bytes plus the build's command line settings, so an image
/// built with `--debug-shell` or `--append-cmdline` gets its own GUIDs.
fn seed_input(profile_bytes: &[u8], extras: &BuildExtras) -> Vec<u8> {
    let mut v = profile_bytes.to_vec();
    if extras.debug_shell || !extras.append_cmdline.is_empty() {
        v.extend_from_slice(b"\0kiln-build-extras\0");
        v.extend_from_slice(
            format!("{}\0{:?}", extras.debug_shell, extras.append_cmdline).as_bytes(),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_extras_change_the_seed_input_only_when_set() {
        let plain = BuildExtras::default();
        assert_eq!(seed_input(b"name = \"x\"\n", &plain), b"name = \"x\"\n");
        let debug = BuildExtras {
            debug_shell: true,
            append_cmdline: Vec::new(),
        };
        let appended = BuildExtras {
            debug_shell: false,
            append_cmdline: vec!["kiln.hostname=a".into()],
        };
        let inputs = [
            seed_input(b"p", &plain),
            seed_input(b"p", &debug),
            seed_input(b"p", &appended),
        ];
        assert_ne!(inputs[0], inputs[1]);
        assert_ne!(inputs[0], inputs[2]);
        assert_ne!(inputs[1], inputs[2]);
    }

    #[test]
    fn derived_identifiers_differ_by_role_and_by_seed() {
        let a = ImageSeed([1; 32]);
        let b = ImageSeed([2; 32]);
        assert_ne!(a.root_fs_uuid(), a.verity_uuid());
        assert_ne!(a.root_fs_uuid(), b.root_fs_uuid());
        assert_ne!(a.verity_salt(), b.verity_salt());
        assert_ne!(a.esp_serial(), b.esp_serial());
    }
}
