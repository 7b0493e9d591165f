//! Kernel module selection (placeholder until the module step lands).

/// Names of the module sets kiln knows.
pub fn builtin_set_names() -> Vec<&'static str> {
    vec!["virtio", "ext4", "vfat", "dm-verity", "netfilter", "wireguard", "overlay"]
}
