//! Directory entries: 8.3 entries with their timestamps, VFAT long-name
//! entries, and a directory's clusters of them.

use kiln_contract::le::{put_u16, put_u32};

use super::names::lfn_checksum;
use super::tree::{Dir, Node};

const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LONG_NAME: u8 = 0x0F;

/// A FAT timestamp: (date, time, 10 ms units for the odd second).
pub(super) fn fat_datetime(ts: i64) -> (u16, u16, u8) {
    let t = kiln_contract::civil::DateTime::from_unix(ts);
    // FAT dates only span 1980..=2107; times outside clamp to the nearest end.
    let (y, m, d, h, min, s) = if t.year < 1980 {
        (1980, 1, 1, 0, 0, 0)
    } else if t.year > 2107 {
        (2107, 12, 31, 23, 59, 59)
    } else {
        (t.year, t.month, t.day, t.hour, t.minute, t.second)
    };
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time = ((h as u16) << 11) | ((min as u16) << 5) | (s / 2) as u16;
    (date, time, ((s % 2) * 100) as u8)
}

/// The one timestamp every entry carries, in FAT's encoding.
pub(super) struct Stamp {
    pub(super) date: u16,
    pub(super) time: u16,
    pub(super) tenth: u8,
}

fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, st: &Stamp) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0..11].copy_from_slice(name);
    e[11] = attr;
    e[13] = st.tenth;
    put_u16(&mut e, 14, st.time);
    put_u16(&mut e, 16, st.date);
    put_u16(&mut e, 18, st.date);
    put_u16(&mut e, 20, (cluster >> 16) as u16);
    put_u16(&mut e, 22, st.time);
    put_u16(&mut e, 24, st.date);
    put_u16(&mut e, 26, cluster as u16);
    put_u32(&mut e, 28, size);
    e
}

/// The long-name entries of `name`, in on-disk order (last part first).
fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    let n = units.len().div_ceil(13);
    if units.len() % 13 != 0 {
        units.push(0);
    }
    units.resize(n * 13, 0xFFFF);
    let sum = lfn_checksum(short);
    (0..n)
        .rev()
        .map(|i| {
            let mut e = [0u8; 32];
            e[0] = (i as u8 + 1) | if i + 1 == n { 0x40 } else { 0 };
            e[11] = ATTR_LONG_NAME;
            e[13] = sum;
            let part = &units[i * 13..i * 13 + 13];
            let slots = (1..11)
                .step_by(2)
                .chain((14..26).step_by(2))
                .chain((28..32).step_by(2));
            for (u, at) in part.iter().zip(slots) {
                put_u16(&mut e, at, *u);
            }
            e
        })
        .collect()
}

/// The entries of directory `idx` (the root starts with the volume label if
/// there is one, the others with `.` and `..`), zero-padded to `capacity`
/// bytes.
pub(super) fn encode_dir(
    dirs: &[Dir<'_>],
    idx: usize,
    label: Option<&[u8; 11]>,
    st: &Stamp,
    capacity: usize,
) -> Vec<u8> {
    let d = &dirs[idx];
    let mut out = Vec::with_capacity(capacity);
    if idx == 0 {
        if let Some(l) = label {
            out.extend_from_slice(&short_entry(l, ATTR_VOLUME_ID, 0, 0, st));
        }
    } else {
        let parent = if d.parent == 0 {
            0
        } else {
            dirs[d.parent].first_cluster
        };
        out.extend_from_slice(&short_entry(
            b".          ",
            ATTR_DIRECTORY,
            d.first_cluster,
            0,
            st,
        ));
        out.extend_from_slice(&short_entry(b"..         ", ATTR_DIRECTORY, parent, 0, st));
    }
    for c in d.children.values() {
        if c.long {
            for e in lfn_entries(c.name, &c.short) {
                out.extend_from_slice(&e);
            }
        }
        let (attr, cluster, size) = match c.node {
            Node::Dir(sub) => (ATTR_DIRECTORY, dirs[sub].first_cluster, 0),
            Node::File { data, .. } => (ATTR_ARCHIVE, c.first_cluster, data.len() as u32),
        };
        out.extend_from_slice(&short_entry(&c.short, attr, cluster, size, st));
    }
    out.resize(capacity.max(out.len()), 0);
    out
}
