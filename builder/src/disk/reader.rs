//! Reading a partition back out of the image being written, in place: the
//! verity hash tree is computed over the root exactly as it landed on disk,
//! without a second copy of the filesystem in memory.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::PartitionWindow;

/// Reads the first bytes of a partition with positioned reads (so it shares
/// the image's file handle with nothing else's cursor).
#[derive(Debug)]
pub struct WindowReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> PartitionWindow<'a> {
    /// A reader of the partition's first `len` bytes (at most the partition).
    pub fn reader(&self, len: u64) -> WindowReader<'a> {
        WindowReader {
            file: self.file,
            pos: self.offset(),
            end: self.offset() + len.min(self.len()),
        }
    }
}

impl Read for WindowReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::plan::{plan_disk, PartitionRole, PlanInput};

    #[test]
    fn reads_the_partition_written_and_stops_at_the_length_asked() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_disk(&PlanInput {
            arch: Arch::X86_64,
            disk_size: 160 << 20,
            esp_size: 8 << 20,
            root_size: 8 << 20,
            slot_size: None,
            var_min_size: 0,
            seed: [7; 32],
        })
        .unwrap();
        let image = super::super::create_image(&dir.path().join("d.raw"), &plan).unwrap();
        let window = image.window(PartitionRole::Root).unwrap();
        window.write_at(0, b"root bytes").unwrap();
        let mut got = Vec::new();
        window.reader(4).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"root");
        got.clear();
        window.reader(u64::MAX).read_to_end(&mut got).unwrap();
        assert_eq!(got.len() as u64, window.len());
        assert_eq!(&got[..10], b"root bytes");
    }
}
