//! Reading the mount table (`/proc/self/mountinfo`, or `/proc/mounts` as a fallback).

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: String,
    /// The mount source (a device path, or e.g. `tmpfs`).
    pub source: String,
    /// Filesystem type.
    pub fstype: String,
    /// Per-mount options (`ro`/`rw`, `nosuid`, ...).
    pub options: Vec<String>,
    /// Superblock options (empty when read from /proc/mounts).
    pub super_options: Vec<String>,
}

impl Mount {
    /// Read-only through the mount or the superblock.
    pub fn read_only(&self) -> bool {
        self.options
            .iter()
            .chain(&self.super_options)
            .any(|o| o == "ro")
    }
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash (`\040`).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits.iter().fold(0u32, |a, d| a * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn split_opts(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|o| !o.is_empty())
        .map(unescape)
        .collect()
}

/// Parses `/proc/self/mountinfo`. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            // id parent maj:min root mount-point options [optional...] - type source super
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 || fields.len() < sep + 3 {
                return None;
            }
            Some(Mount {
                mount_point: unescape(fields[4]),
                options: split_opts(fields[5]),
                fstype: unescape(fields[sep + 1]),
                source: unescape(fields[sep + 2]),
                super_options: fields
                    .get(sep + 3)
                    .map(|s| split_opts(s))
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses `/proc/mounts` (fstab format). Malformed lines are skipped.
pub fn parse_proc_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Mount {
                source: unescape(f[0]),
                mount_point: unescape(f[1]),
                fstype: unescape(f[2]),
                options: split_opts(f[3]),
                super_options: Vec::new(),
            })
        })
        .collect()
}

/// The mount visible at `path`: the last one listed there (later mounts cover earlier).
pub fn mounted_on<'a>(mounts: &'a [Mount], path: &str) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:5 / / rw,relatime - rootfs rootfs rw
25 22 254:2 / / ro,relatime shared:1 - ext4 /dev/vda2 ro
26 25 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=4096k,mode=755
31 25 0:27 / /var rw,relatime shared:9 master:3 - tmpfs tmpfs rw,mode=755
32 25 0:28 / /tmp rw,nosuid,nodev shared:10 - tmpfs tmpfs rw
40 31 254:4 / /var/lib/my\\040data rw - ext4 /dev/vda4 rw,errors=remount-ro
garbage line
";

    #[test]
    fn parses_mountinfo_with_optional_fields_and_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 6);
        let root = mounted_on(&m, "/").unwrap();
        assert_eq!(root.source, "/dev/vda2");
        assert_eq!(root.fstype, "ext4");
        assert!(root.read_only());
        let var = mounted_on(&m, "/var").unwrap();
        assert_eq!(
            (var.fstype.as_str(), var.source.as_str()),
            ("tmpfs", "tmpfs")
        );
        assert!(!var.read_only());
        assert_eq!(m[1].super_options, ["ro"]);
        assert_eq!(m[5].mount_point, "/var/lib/my data");
        assert!(mounted_on(&m, "/srv").is_none());
    }

    #[test]
    fn read_only_superblock_counts() {
        let m = parse_mountinfo("25 1 254:2 / / rw - ext4 /dev/vda2 ro\n");
        assert!(m[0].read_only());
        let m = parse_mountinfo("25 1 254:2 / / rw,noatime - ext4 /dev/vda2 rw\n");
        assert!(!m[0].read_only());
    }

    #[test]
    fn parses_proc_mounts() {
        let m = parse_proc_mounts(
            "rootfs / rootfs rw 0 0\n/dev/vda2 / ext4 ro,relatime 0 0\ntmpfs /var tmpfs rw 0 0\n",
        );
        let root = mounted_on(&m, "/").unwrap();
        assert_eq!(root.source, "/dev/vda2");
        assert!(root.read_only());
    }

    #[test]
    fn unescape_handles_edge_cases() {
        assert_eq!(unescape("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("\\999"), "\\999");
        assert_eq!(unescape("\\777"), "\\777");
    }
}
