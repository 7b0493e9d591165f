//! Unified Kernel Images: Debian's systemd-stub with the kernel, initramfs,
//! command line and os-release appended as PE/COFF sections.
//!
//! Bookworm ships systemd 252, which has no `ukify`, so kiln writes the
//! PE/COFF itself. [`plan`] is pure: it reads the stub's headers, places the
//! new sections and produces the patched stub headers plus the checksum.
//! [`write_uki`] streams the result, so the 33 MB arm64 kernel is never copied
//! into a second buffer. [`inspect`] and [`section_data`] read a UKI back
//! (tests, `kiln inspect`) through the `object` crate, an independent parser.
//! Where the pieces come from is in [`parts`] (kernel and stub) and
//! [`initramfs`].

pub mod initramfs;
pub mod parts;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_contract::le;
use object::pe;
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};
use object::LittleEndian as LE;

use crate::arch::Arch;

#[cfg(test)]
mod tests;

/// The pieces a UKI is made of, borrowed so the kernel is not copied.
#[derive(Debug, Clone, Copy)]
pub struct UkiParts<'a> {
    /// Target arch: picks the section order and the stub's expected machine.
    pub arch: Arch,
    /// `/etc/os-release` of the image (`.osrel`); empty leaves the section out.
    pub osrel: &'a [u8],
    /// Kernel command line (`.cmdline`); empty leaves the section out.
    pub cmdline: &'a [u8],
    /// Kernel release, as `uname -r` prints it (`.uname`); empty leaves it out.
    pub uname: &'a [u8],
    /// The initramfs (`.initrd`); empty leaves the section out.
    pub initrd: &'a [u8],
    /// The kernel image (`.linux`): a bzImage on x86_64, an `Image` on arm64.
    pub linux: &'a [u8],
}

/// Errors of UKI assembly and inspection.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// The stub is not a usable PE32+ image.
    #[error(
        "systemd-stub: {0}; use {x86} or {arm} from Debian's systemd-boot-efi package",
        x86 = Arch::X86_64.efi_stub_path(),
        arm = Arch::Arm64.efi_stub_path()
    )]
    BadStub(String),
    /// The stub is built for another CPU than the image.
    #[error(
        "systemd-stub is for PE machine {found:#06x}, but the image is {arch} (machine {expected:#06x}); \
         use the {arch} stub {path}",
        path = .arch.efi_stub_path()
    )]
    WrongMachine {
        /// The image's arch.
        arch: Arch,
        /// The machine value the arch needs.
        expected: u16,
        /// The machine value in the stub.
        found: u16,
    },
    /// The stub's headers have no room for the new section headers.
    #[error(
        "systemd-stub: the section table needs {needed} bytes of headers for {sections} sections, \
         but SizeOfHeaders is {available}; this stub cannot take the UKI sections (use Debian's stub, \
         whose headers have room)"
    )]
    NoHeaderRoom {
        /// Sections the UKI would have.
        sections: usize,
        /// Header bytes that would need.
        needed: u32,
        /// SizeOfHeaders of the stub.
        available: u32,
    },
    /// The space after the stub's section table holds data a directory points to.
    #[error(
        "systemd-stub: data directory {index} lives in the header bytes the new section headers \
         need (RVA {rva:#x}); this stub cannot be extended"
    )]
    HeaderRoomInUse {
        /// Index of the data directory.
        index: usize,
        /// Its RVA.
        rva: u32,
    },
    /// A part would push the image past what PE/COFF's 32-bit fields can say.
    #[error("UKI too large: {0} does not fit PE/COFF's 32-bit sizes (4 GiB); shrink the initramfs or kernel")]
    TooLarge(&'static str),
    /// No kernel given.
    #[error("UKI: the kernel (.linux) is empty; the build must pass the kernel image from the kernel package")]
    EmptyKernel,
    /// Writing the UKI to a stream failed.
    #[error("writing the UKI: {0}")]
    Write(#[source] io::Error),
    /// Writing the UKI to a file failed.
    #[error("{path}: writing the UKI: {source}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bytes given to [`inspect`] are not a PE32+ image.
    #[error("not a UKI (PE32+ image): {0}")]
    NotPe(String),
}

/// One section of a PE image, as [`inspect`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiSection {
    /// Section name (`.linux`, `.initrd`, ...), NULs trimmed.
    pub name: String,
    /// RVA of the section in memory.
    pub virtual_address: u32,
    /// Size in memory.
    pub virtual_size: u32,
    /// Offset of the raw data in the file.
    pub file_offset: u32,
    /// Size of the raw data in the file (padded to FileAlignment).
    pub size: u32,
}

/// Where one added section goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSection {
    /// Section name.
    pub name: &'static str,
    /// RVA, a multiple of the stub's SectionAlignment.
    pub virtual_address: u32,
    /// Size in memory: the exact length of the part.
    pub virtual_size: u32,
    /// Offset in the file, a multiple of FileAlignment.
    pub file_offset: u32,
    /// Size in the file: the length rounded up to FileAlignment.
    pub raw_size: u32,
}

/// The layout of a UKI: the stub's patched headers and where each part goes.
#[derive(Debug, Clone)]
pub struct UkiPlan {
    /// The stub as it starts the UKI: symbol table and trailing bytes cut,
    /// headers patched, new section headers in place.
    head: Vec<u8>,
    /// The added sections, in file and memory order.
    pub sections: Vec<PlannedSection>,
    /// SizeOfImage of the result.
    pub size_of_image: u32,
    /// The PE checksum stored in the result.
    pub checksum: u32,
    /// Length of the whole file.
    pub file_size: u64,
}

// PE/COFF constants the writer needs (PE format specification).
const DOS_MAGIC: &[u8; 2] = b"MZ";
const PE_SIGNATURE: &[u8; 4] = b"PE\0\0";
const COFF_HEADER_SIZE: usize = 20;
const SECTION_HEADER_SIZE: usize = 40;
const PE32_PLUS_MAGIC: u16 = 0x20b;
// Offsets inside the optional header (PE32+).
const OPT_SIZE_OF_INITIALIZED_DATA: usize = 8;
const OPT_SECTION_ALIGNMENT: usize = 32;
const OPT_FILE_ALIGNMENT: usize = 36;
const OPT_SIZE_OF_IMAGE: usize = 56;
const OPT_SIZE_OF_HEADERS: usize = 60;
const OPT_CHECKSUM: usize = 64;
const OPT_NUMBER_OF_RVA_AND_SIZES: usize = 108;
const OPT_DATA_DIRECTORIES: usize = 112;
/// Data directory 4: its "RVA" is a file offset to the Authenticode signature.
const DIR_SECURITY: usize = 4;
/// Initialized data, readable, nothing else: what systemd's ukify uses.
const UKI_SECTION_FLAGS: u32 = pe::IMAGE_SCN_CNT_INITIALIZED_DATA | pe::IMAGE_SCN_MEM_READ;

/// The order of the added sections, per arch.
///
/// `.linux` is last on x86_64, as ukify does: the 252 stub starts the
/// bzImage in place through the EFI handover entry, and its decompressor
/// needs `init_size` bytes from its start, more than the section. 6.1 kernels
/// move themselves out of the way when started that way, but with nothing
/// after `.linux` in memory the UKI does not depend on it. Booted under OVMF.
///
/// On arm64 the `.initrd` follows the 33 MB uncompressed `Image`. Booting
/// Debian's 252 stub with the 6.1 arm64 kernel under AAVMF (TCG, cortex-a57
/// and max, 512 MB and 2 GB, 2 MB and 31 MB initramfs) worked with both
/// orders, because this stub copies the kernel into a fresh buffer of the
/// kernel's own SizeOfImage (BSS included) before starting it; we keep the
/// order the environment notes recorded as required. `.linux` keeps its
/// exact length as VirtualSize on both arches: the 252 stub asserts that the
/// kernel's SizeOfImage is at least the section size, so a larger
/// VirtualSize could only hurt.
fn section_order(arch: Arch) -> [&'static str; 5] {
    match arch {
        Arch::X86_64 => [".osrel", ".cmdline", ".uname", ".initrd", ".linux"],
        Arch::Arm64 => [".osrel", ".cmdline", ".uname", ".linux", ".initrd"],
    }
}

fn part<'a>(parts: &UkiParts<'a>, name: &str) -> &'a [u8] {
    match name {
        ".osrel" => parts.osrel,
        ".cmdline" => parts.cmdline,
        ".uname" => parts.uname,
        ".initrd" => parts.initrd,
        _ => parts.linux,
    }
}

/// The PE machine value of an arch.
fn machine(arch: Arch) -> u16 {
    match arch {
        Arch::X86_64 => pe::IMAGE_FILE_MACHINE_AMD64,
        Arch::Arm64 => pe::IMAGE_FILE_MACHINE_ARM64,
    }
}

// The stub is untrusted input, so reads check the length first and fail
// with an error instead of the contract helpers' panic.
fn rd16(b: &[u8], at: usize) -> Result<u16, UkiError> {
    b.get(at..at + 2)
        .map(|s| le::u16_at(s, 0))
        .ok_or_else(|| UkiError::BadStub(format!("truncated at byte {at:#x}")))
}

fn rd32(b: &[u8], at: usize) -> Result<u32, UkiError> {
    b.get(at..at + 4)
        .map(|s| le::u32_at(s, 0))
        .ok_or_else(|| UkiError::BadStub(format!("truncated at byte {at:#x}")))
}

/// Rounds up to a multiple of `align` (a power of two), or `None` on overflow.
fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

fn to_u32(v: u64, what: &'static str) -> Result<u32, UkiError> {
    u32::try_from(v).map_err(|_| UkiError::TooLarge(what))
}

/// One section header of the stub, the fields the planner needs.
struct StubSection {
    virtual_size: u32,
    virtual_address: u32,
    raw_size: u32,
    raw_pointer: u32,
}

/// Computes the layout of a UKI from a stub and the parts. Pure: no I/O.
///
/// The stub's trailing COFF symbol table (systemd 252 ships one on x86_64)
/// and any bytes after its last section are dropped: nothing in a loaded
/// image refers to them, and new sections go right after the stub's data.
/// (Debian's arm64 stub has no symbol table but carries unmapped `.sbat` and
/// `.sdmagic` bytes past its last section; they go too.)
/// An Authenticode signature on the stub would be invalid once sections are
/// added, so its directory entry is cleared too (the UKI as a whole is what
/// gets signed).
pub fn plan(stub: &[u8], parts: &UkiParts<'_>) -> Result<UkiPlan, UkiError> {
    if parts.linux.is_empty() {
        return Err(UkiError::EmptyKernel);
    }
    // Let an independent parser reject garbage first, with its own words.
    PeFile64::parse(stub).map_err(|e| UkiError::BadStub(format!("not a PE32+ image ({e})")))?;
    if stub.get(0..2) != Some(&DOS_MAGIC[..]) {
        return Err(UkiError::BadStub("no MZ header".into()));
    }
    let pe_at = rd32(stub, 0x3c)? as usize;
    if stub.get(pe_at..pe_at + 4) != Some(&PE_SIGNATURE[..]) {
        return Err(UkiError::BadStub("no PE signature".into()));
    }
    let coff = pe_at + 4;
    let found = rd16(stub, coff)?;
    if found != machine(parts.arch) {
        return Err(UkiError::WrongMachine {
            arch: parts.arch,
            expected: machine(parts.arch),
            found,
        });
    }
    let nsections = rd16(stub, coff + 2)? as usize;
    let symbols_at = rd32(stub, coff + 8)?;
    let opt_size = rd16(stub, coff + 16)? as usize;
    let opt = coff + COFF_HEADER_SIZE;
    if rd16(stub, opt)? != PE32_PLUS_MAGIC {
        return Err(UkiError::BadStub("optional header is not PE32+".into()));
    }
    let section_alignment = rd32(stub, opt + OPT_SECTION_ALIGNMENT)?;
    let file_alignment = rd32(stub, opt + OPT_FILE_ALIGNMENT)?;
    // FileAlignment ≥ 2 keeps every part at an even offset, which the
    // piecewise checksum below relies on (the spec asks for ≥ 512).
    if !section_alignment.is_power_of_two()
        || !file_alignment.is_power_of_two()
        || file_alignment < 2
    {
        return Err(UkiError::BadStub(format!(
            "SectionAlignment {section_alignment:#x} / FileAlignment {file_alignment:#x} must be powers of two (FileAlignment ≥ 2)"
        )));
    }
    let size_of_headers = rd32(stub, opt + OPT_SIZE_OF_HEADERS)?;
    let old_size_of_image = rd32(stub, opt + OPT_SIZE_OF_IMAGE)?;
    let table = opt + opt_size;

    let mut sections = Vec::with_capacity(nsections);
    for i in 0..nsections {
        let at = table + i * SECTION_HEADER_SIZE;
        let mut name = [0u8; 8];
        name.copy_from_slice(
            stub.get(at..at + 8)
                .ok_or_else(|| UkiError::BadStub("section table truncated".into()))?,
        );
        if name[0] == b'/' {
            // A long name lives in the string table we are about to drop.
            return Err(UkiError::BadStub(format!(
                "section {i} has a long name in the COFF string table ({}), which stripping would break",
                String::from_utf8_lossy(&name)
            )));
        }
        sections.push(StubSection {
            virtual_size: rd32(stub, at + 8)?,
            virtual_address: rd32(stub, at + 12)?,
            raw_size: rd32(stub, at + 16)?,
            raw_pointer: rd32(stub, at + 20)?,
        });
    }

    // The kept part of the stub ends with its last section's file data.
    let mut stub_end = u64::from(size_of_headers);
    let mut memory_end = u64::from(old_size_of_image);
    for s in &sections {
        if s.raw_pointer != 0 && s.raw_size != 0 {
            stub_end = stub_end.max(u64::from(s.raw_pointer) + u64::from(s.raw_size));
        }
        let vsize = if s.virtual_size == 0 {
            s.raw_size
        } else {
            s.virtual_size
        };
        memory_end = memory_end.max(u64::from(s.virtual_address) + u64::from(vsize));
    }
    if stub_end > stub.len() as u64 {
        return Err(UkiError::BadStub(format!(
            "sections end at byte {stub_end:#x}, past the end of the file ({:#x})",
            stub.len()
        )));
    }
    if symbols_at != 0 && u64::from(symbols_at) < stub_end {
        return Err(UkiError::BadStub(format!(
            "COFF symbol table at {symbols_at:#x} lies inside the section data (ends at {stub_end:#x})"
        )));
    }
    let stub_end = stub_end as usize;

    // Room for the new section headers inside SizeOfHeaders.
    let names = section_order(parts.arch);
    let added: Vec<(&'static str, &[u8])> = names
        .iter()
        .map(|n| (*n, part(parts, n)))
        .filter(|(_, data)| !data.is_empty())
        .collect();
    let total = nsections + added.len();
    let table_end = table + nsections * SECTION_HEADER_SIZE;
    let new_table_end = table + total * SECTION_HEADER_SIZE;
    let first_raw = sections
        .iter()
        .filter(|s| s.raw_size != 0)
        .map(|s| s.raw_pointer as usize)
        .min();
    let limit = first_raw.map_or(size_of_headers as usize, |f| {
        f.min(size_of_headers as usize)
    });
    if new_table_end > limit {
        return Err(UkiError::NoHeaderRoom {
            sections: total,
            needed: to_u32(new_table_end as u64, "section table")?,
            available: size_of_headers,
        });
    }
    let ndirs = (rd32(stub, opt + OPT_NUMBER_OF_RVA_AND_SIZES)? as usize)
        .min((opt_size.saturating_sub(112)) / 8);
    for index in 0..ndirs {
        let at = opt + OPT_DATA_DIRECTORIES + index * 8;
        let (rva, size) = (rd32(stub, at)?, rd32(stub, at + 4)?);
        if index != DIR_SECURITY
            && size != 0
            && (rva as usize) < new_table_end
            && (rva as usize).saturating_add(size as usize) > table_end
        {
            return Err(UkiError::HeaderRoomInUse { index, rva });
        }
    }

    // Place the new sections.
    let fa = u64::from(file_alignment);
    let sa = u64::from(section_alignment);
    let mut file_at = align_up(stub_end as u64, fa).ok_or(UkiError::TooLarge("stub"))?;
    let mut va = align_up(memory_end, sa).ok_or(UkiError::TooLarge("stub"))?;
    let mut planned = Vec::with_capacity(added.len());
    let mut added_init: u64 = 0;
    for (name, data) in &added {
        let len = data.len() as u64;
        let raw = align_up(len, fa).ok_or(UkiError::TooLarge(name))?;
        planned.push(PlannedSection {
            name,
            virtual_address: to_u32(va, name)?,
            virtual_size: to_u32(len, name)?,
            file_offset: to_u32(file_at, name)?,
            raw_size: to_u32(raw, name)?,
        });
        added_init += raw;
        file_at += raw;
        va = align_up(va + len, sa).ok_or(UkiError::TooLarge(name))?;
    }
    let size_of_image = to_u32(va, "SizeOfImage")?;
    let file_size = file_at;
    to_u32(file_size, "file size")?;

    // Patch the headers.
    let mut head = stub[..stub_end].to_vec();
    let count = u16::try_from(total)
        .map_err(|_| UkiError::BadStub(format!("{total} sections are too many")))?;
    le::put_u16(&mut head, coff + 2, count);
    le::put_u32(&mut head, coff + 8, 0); // PointerToSymbolTable: table stripped
    le::put_u32(&mut head, coff + 12, 0); // NumberOfSymbols
    let init = u64::from(rd32(&head, opt + OPT_SIZE_OF_INITIALIZED_DATA)?) + added_init;
    le::put_u32(
        &mut head,
        opt + OPT_SIZE_OF_INITIALIZED_DATA,
        to_u32(init, "SizeOfInitializedData")?,
    );
    le::put_u32(&mut head, opt + OPT_SIZE_OF_IMAGE, size_of_image);
    le::put_u32(&mut head, opt + OPT_CHECKSUM, 0);
    if ndirs > DIR_SECURITY {
        let at = opt + OPT_DATA_DIRECTORIES + DIR_SECURITY * 8;
        le::put_u32(&mut head, at, 0);
        le::put_u32(&mut head, at + 4, 0);
    }
    for (i, s) in planned.iter().enumerate() {
        let at = table_end + i * SECTION_HEADER_SIZE;
        let hdr = &mut head[at..at + SECTION_HEADER_SIZE];
        hdr.fill(0);
        hdr[..s.name.len()].copy_from_slice(s.name.as_bytes());
        le::put_u32(hdr, 8, s.virtual_size);
        le::put_u32(hdr, 12, s.virtual_address);
        le::put_u32(hdr, 16, s.raw_size);
        le::put_u32(hdr, 20, s.file_offset);
        le::put_u32(hdr, 36, UKI_SECTION_FLAGS);
    }

    // PE checksum over the whole file as it will be written: every part
    // starts at an even (FileAlignment) offset and padding is zero, so each
    // piece can be summed on its own.
    let mut sum = word_sum(&head);
    for (_, data) in &added {
        sum += word_sum(data);
    }
    let checksum = fold(sum).wrapping_add(file_size as u32);
    le::put_u32(&mut head, opt + OPT_CHECKSUM, checksum);

    Ok(UkiPlan {
        head,
        sections: planned,
        size_of_image,
        checksum,
        file_size,
    })
}

/// Sum of the little-endian 16-bit words of `data` (odd last byte padded
/// with zero), not yet folded.
fn word_sum(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks.by_ref().map(|w| u64::from(le::u16_at(w, 0))).sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last);
    }
    sum
}

/// Folds carries into 16 bits, as the PE checksum does after every add.
fn fold(mut sum: u64) -> u32 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u32
}

/// The PE checksum of a whole image file, as Windows' `CheckSumMappedFile`
/// defines it (the CheckSum field itself counts as zero). For tests and
/// `kiln inspect`.
pub fn pe_checksum(image: &[u8]) -> Result<u32, UkiError> {
    let pe_at = rd32(image, 0x3c).map_err(|e| UkiError::NotPe(e.to_string()))? as usize;
    let field = pe_at + 4 + COFF_HEADER_SIZE + OPT_CHECKSUM;
    if image.len() < field + 4 {
        return Err(UkiError::NotPe("too short for a PE optional header".into()));
    }
    let sum = word_sum(&image[..field]) + word_sum(&image[field + 4..]);
    Ok(fold(sum).wrapping_add(image.len() as u32))
}

/// Streams a UKI to `out`. Returns the number of bytes written.
pub fn write_uki(stub: &[u8], parts: &UkiParts<'_>, mut out: impl Write) -> Result<u64, UkiError> {
    let plan = plan(stub, parts)?;
    write_planned(&plan, parts, &mut out).map_err(UkiError::Write)?;
    out.flush().map_err(UkiError::Write)?;
    Ok(plan.file_size)
}

/// Writes a UKI to a file (created or truncated). Returns its size.
pub fn write_uki_file(stub: &[u8], parts: &UkiParts<'_>, path: &Path) -> Result<u64, UkiError> {
    let plan = plan(stub, parts)?;
    let wrap = |source| UkiError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(wrap)?;
    let mut out = BufWriter::new(file);
    write_planned(&plan, parts, &mut out).map_err(wrap)?;
    out.into_inner()
        .map_err(|e| wrap(e.into_error()))?
        .sync_all()
        .map_err(wrap)?;
    Ok(plan.file_size)
}

/// Assembles a UKI in memory.
pub fn assemble(stub: &[u8], parts: &UkiParts<'_>) -> Result<Vec<u8>, UkiError> {
    let plan = plan(stub, parts)?;
    let mut out = Vec::with_capacity(plan.file_size as usize);
    write_planned(&plan, parts, &mut out).map_err(UkiError::Write)?;
    Ok(out)
}

fn write_planned(plan: &UkiPlan, parts: &UkiParts<'_>, out: &mut impl Write) -> io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    fn pad(out: &mut impl Write, mut n: u64) -> io::Result<()> {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            out.write_all(&ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
    out.write_all(&plan.head)?;
    let mut at = plan.head.len() as u64;
    for s in &plan.sections {
        pad(out, u64::from(s.file_offset) - at)?;
        let data = part(parts, s.name);
        out.write_all(data)?;
        pad(out, u64::from(s.raw_size) - data.len() as u64)?;
        at = u64::from(s.file_offset) + u64::from(s.raw_size);
    }
    Ok(())
}

fn parse_pe(bytes: &[u8]) -> Result<PeFile64<'_>, UkiError> {
    PeFile64::parse(bytes).map_err(|e| UkiError::NotPe(e.to_string()))
}

/// Lists the sections of a PE32+ image (a UKI or a stub) in header order.
pub fn inspect(bytes: &[u8]) -> Result<Vec<UkiSection>, UkiError> {
    let file = parse_pe(bytes)?;
    Ok(file
        .section_table()
        .iter()
        .map(|s| UkiSection {
            name: String::from_utf8_lossy(&s.name)
                .trim_end_matches('\0')
                .to_string(),
            virtual_address: s.virtual_address.get(LE),
            virtual_size: s.virtual_size.get(LE),
            file_offset: s.pointer_to_raw_data.get(LE),
            size: s.size_of_raw_data.get(LE),
        })
        .collect())
}

/// The bytes of the named section (without FileAlignment padding: the
/// smaller of its virtual and raw size), or `None` if there is no such section.
pub fn section_data<'a>(bytes: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, UkiError> {
    let file = parse_pe(bytes)?;
    for s in file.section_table().iter() {
        if String::from_utf8_lossy(&s.name).trim_end_matches('\0') == name {
            return s
                .pe_data(bytes)
                .map(Some)
                .map_err(|e| UkiError::NotPe(format!("section {name}: {e}")));
        }
    }
    Ok(None)
}

/// SizeOfImage, CheckSum and the symbol table fields of a PE32+ image, for
/// checks and `kiln inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeSummary {
    /// PE machine value.
    pub machine: u16,
    /// SizeOfImage.
    pub size_of_image: u32,
    /// SizeOfHeaders.
    pub size_of_headers: u32,
    /// SectionAlignment.
    pub section_alignment: u32,
    /// FileAlignment.
    pub file_alignment: u32,
    /// CheckSum as stored.
    pub checksum: u32,
    /// PointerToSymbolTable.
    pub symbol_table: u32,
    /// NumberOfSymbols.
    pub symbols: u32,
    /// SizeOfInitializedData.
    pub size_of_initialized_data: u32,
}

/// Reads the header fields of a PE32+ image.
pub fn summary(bytes: &[u8]) -> Result<PeSummary, UkiError> {
    let file = parse_pe(bytes)?;
    let nt = file.nt_headers();
    let fh = nt.file_header();
    let oh = nt.optional_header();
    Ok(PeSummary {
        machine: fh.machine.get(LE),
        size_of_image: oh.size_of_image(),
        size_of_headers: oh.size_of_headers(),
        section_alignment: oh.section_alignment(),
        file_alignment: oh.file_alignment(),
        checksum: oh.check_sum(),
        symbol_table: fh.pointer_to_symbol_table.get(LE),
        symbols: fh.number_of_symbols.get(LE),
        size_of_initialized_data: oh.size_of_initialized_data(),
    })
}
