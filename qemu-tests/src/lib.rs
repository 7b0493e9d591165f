//! Helpers for booting kiln images in QEMU tests.
