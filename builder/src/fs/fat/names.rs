//! FAT names: checking paths and the label, 8.3 short names, the aliases
//! of long names and their long-name checksum.

use std::collections::BTreeSet;

use super::FatError;

/// Longest long file name, in UTF-16 units.
const LFN_MAX_UNITS: usize = 255;
/// Characters allowed in 8.3 names (besides A-Z and 0-9).
const SHORT_SPECIALS: &[u8] = b"!#$%&'()-@^_`{}~";

fn is_short_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_SPECIALS.contains(&b)
}

/// The 11-byte short name if `name` already is an upper-case 8.3 name.
pub(super) fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.split_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    let ok = |s: &str, max: usize| s.len() <= max && s.bytes().all(is_short_char);
    if base.is_empty() || !ok(base, 8) || !ok(ext, 3) || (name.contains('.') && ext.is_empty()) {
        return None;
    }
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base.as_bytes());
    out[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(out)
}

/// A `NAME~N.EXT` alias for a long name, unique among `used`.
pub(super) fn alias_short_name(name: &str, used: &BTreeSet<[u8; 11]>) -> [u8; 11] {
    let clean = |s: &str| -> Vec<u8> {
        s.chars()
            .filter(|&c| c != ' ' && c != '.')
            .map(|c| {
                let u = c.to_ascii_uppercase();
                if u.is_ascii() && is_short_char(u as u8) {
                    u as u8
                } else {
                    b'_'
                }
            })
            .collect()
    };
    let trimmed = name.trim_start_matches('.');
    let (base, ext) = match trimmed.rfind('.') {
        Some(i) => (clean(&trimmed[..i]), clean(&trimmed[i + 1..])),
        None => (clean(trimmed), Vec::new()),
    };
    let base = if base.is_empty() { b"_".to_vec() } else { base };
    for n in 1u32.. {
        let tail = format!("~{n}");
        let keep = base.len().min(8usize.saturating_sub(tail.len()));
        if keep + tail.len() > 8 {
            break;
        }
        let mut out = [b' '; 11];
        out[..keep].copy_from_slice(&base[..keep]);
        out[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        let e = ext.len().min(3);
        out[8..8 + e].copy_from_slice(&ext[..e]);
        if !used.contains(&out) {
            return out;
        }
    }
    // Unreachable in practice: a directory holds at most 65,536 entries.
    [b'_'; 11]
}

/// The checksum of a short name that its long-name entries carry.
pub(super) fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| {
        ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(b)
    })
}

/// Checks one component `c` of `path` can be a FAT name.
pub(super) fn check_component(path: &str, c: &str) -> Result<(), FatError> {
    let bad = |why: String| {
        Err(FatError::BadPath {
            path: path.to_string(),
            why,
        })
    };
    if c.is_empty() || c == "." || c == ".." {
        return bad(
            "use relative paths like EFI/BOOT/BOOTX64.EFI without empty, . or .. parts".into(),
        );
    }
    if let Some(ch) = c
        .chars()
        .find(|&ch| (ch as u32) < 0x20 || "\"*:<>?\\|".contains(ch))
    {
        return bad(format!("{ch:?} is not allowed in FAT names"));
    }
    if c.ends_with(' ') || c.ends_with('.') {
        return bad(format!("{c:?} ends with a space or dot, which FAT drops"));
    }
    if c.encode_utf16().count() > LFN_MAX_UNITS {
        return bad(format!("{c:?} is longer than FAT's 255 characters"));
    }
    Ok(())
}

/// The 11-byte label field, space-padded, if `label` can be one.
pub(super) fn check_label(label: &str) -> Result<[u8; 11], FatError> {
    let bad = |why: &str| {
        Err(FatError::BadLabel {
            label: label.to_string(),
            why: why.into(),
        })
    };
    if label.len() > 11 {
        return bad("longer than 11 characters");
    }
    if label.starts_with(' ') {
        return bad("starts with a space");
    }
    if !label.bytes().all(|b| b == b' ' || is_short_char(b)) {
        return bad("use upper-case letters, digits, spaces and !#$%&'()-@^_`{}~ only");
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}
