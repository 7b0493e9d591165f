//! Module files as kernels ship them: plain `.ko`, or compressed whole with xz, zstd or
//! gzip (Debian 13's kernels ship `.ko.xz`). The root keeps each file as shipped, since
//! kmod reads all four; the builder reads the ELF inside, and the initramfs gets the
//! plain module, because the init loads files with `finit_module` as they are.

use std::borrow::Cow;
use std::io::Read;

use super::KmodError;

/// Suffixes of module files, plain first.
const SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// Whether `path` names a module file (plain or compressed).
pub(crate) fn is_module_path(path: &str) -> bool {
    SUFFIXES.iter().any(|s| path.ends_with(s))
}

/// `path` without its compression suffix (`ext4.ko.xz` → `ext4.ko`): the name kmod
/// matches against modules.order and the initramfs's file name.
pub(crate) fn plain_module_path(path: &str) -> &str {
    for s in [".xz", ".zst", ".gz"] {
        if let Some(p) = path.strip_suffix(s) {
            if p.ends_with(".ko") {
                return p;
            }
        }
    }
    path
}

/// The ELF bytes of the module file at `path` (its content `data`), decompressed when the
/// name says it is compressed.
pub(crate) fn module_bytes<'a>(path: &str, data: &'a [u8]) -> Result<Cow<'a, [u8]>, KmodError> {
    let bad = |message: String| KmodError::BadModule {
        path: path.to_string(),
        message,
    };
    let mut out = Vec::with_capacity(data.len() * 4);
    if path.ends_with(".ko.xz") {
        liblzma::read::XzDecoder::new_multi_decoder(data)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("xz: {e}")))?;
    } else if path.ends_with(".ko.zst") {
        ruzstd::decoding::StreamingDecoder::new(data)
            .map_err(|e| bad(format!("zstd: {e}")))?
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("zstd: {e}")))?;
    } else if path.ends_with(".ko.gz") {
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("gzip: {e}")))?;
    } else {
        return Ok(Cow::Borrowed(data));
    }
    Ok(Cow::Owned(out))
}
