//! Debian `Packages` indexes: decompression and deb822 stanza parsing into
//! the few fields a lock needs.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::version::Op;

/// A problem with an index file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The file could not be read or decompressed.
    #[error("{path}: cannot read package index: {source} (run `kiln lock --update` to refetch the indexes)")]
    Read {
        /// The index file.
        path: PathBuf,
        /// The I/O or decompression error.
        source: std::io::Error,
    },
    /// A stanza lacks a field or has a malformed one.
    #[error("{path}: stanza at line {line}: {message}")]
    Stanza {
        /// The index file.
        path: PathBuf,
        /// First line of the stanza (1-based).
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// One alternative of a dependency: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Package (or virtual package) name.
    pub name: String,
    /// Arch qualifier after `:` (`any`, `native` or an arch name).
    pub arch_qual: Option<String>,
    /// Version constraint.
    pub constraint: Option<(Op, String)>,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(q) = &self.arch_qual {
            write!(f, ":{q}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({} {v})", op.as_str())?;
        }
        Ok(())
    }
}

/// A dependency: one or more alternatives separated by `|`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternatives(pub Vec<Relation>);

impl fmt::Display for Alternatives {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A `Provides` entry: a virtual name, optionally with an exact version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provide {
    /// The provided name.
    pub name: String,
    /// The provided version (`Provides: foo (= 1.0)`).
    pub version: Option<String>,
}

/// One binary package stanza of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPackage {
    /// `Package`.
    pub name: String,
    /// `Version`.
    pub version: String,
    /// `Architecture` (a Debian arch or `all`).
    pub arch: String,
    /// `Depends`, as written (continuation lines joined). Parsed on demand
    /// by [`IndexPackage::relations`]: an index has ~64,000 stanzas and a
    /// closure visits a few hundred, so parsing them all up front would
    /// dominate `kiln lock`.
    pub depends: String,
    /// `Pre-Depends`, as written.
    pub pre_depends: String,
    /// `Provides`.
    pub provides: Vec<Provide>,
    /// `Essential: yes`.
    pub essential: bool,
    /// `Priority` (empty when absent).
    pub priority: String,
    /// `Filename`: path of the .deb under the archive root.
    pub filename: String,
    /// `Size` in bytes.
    pub size: u64,
    /// `SHA256`, lowercase hex.
    pub sha256: String,
    /// The suite whose index listed this stanza.
    pub suite: String,
}

impl IndexPackage {
    /// Pre-Depends then Depends, parsed. The error names the field.
    pub fn relations(&self) -> Result<Vec<Alternatives>, String> {
        let mut out = parse_depends(&self.pre_depends).map_err(|m| format!("Pre-Depends: {m}"))?;
        out.extend(parse_depends(&self.depends).map_err(|m| format!("Depends: {m}"))?);
        Ok(out)
    }
}

/// Reads an index file, decompressing by content (lz4 frame, gzip, xz,
/// zstd, or plain text), and parses it.
pub fn read_index(path: &Path, suite: &str) -> Result<Vec<IndexPackage>, IndexError> {
    let text = read_decompressed(path)?;
    parse_packages(&text, suite, path)
}

/// Reads a possibly compressed text file into a string.
pub fn read_decompressed(path: &Path) -> Result<String, IndexError> {
    let err = |source| IndexError::Read {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(err)?;
    let mut out = Vec::with_capacity(raw.len() * 4);
    if raw.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        lz4_flex::frame::FrameDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(err)?;
    } else if raw.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(err)?;
    } else if raw.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        liblzma::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(err)?;
    } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut dec = ruzstd::decoding::StreamingDecoder::new(&raw[..]).map_err(|e| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.to_string(),
            ))
        })?;
        dec.read_to_end(&mut out).map_err(err)?;
    } else {
        out = raw;
    }
    String::from_utf8(out).map_err(|e| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        ))
    })
}

/// Parses a dependency field (`Depends`, `Pre-Depends`).
pub fn parse_depends(field: &str) -> Result<Vec<Alternatives>, String> {
    let mut out = Vec::new();
    for group in field.split(',') {
        let group = group.trim();
        if group.is_empty() {
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            alts.push(parse_relation(alt)?);
        }
        out.push(Alternatives(alts));
    }
    Ok(out)
}

/// Parses one relation: `name[:arch] [(op version)] [arch list] [<profiles>]`.
pub fn parse_relation(text: &str) -> Result<Relation, String> {
    let mut s = text.trim();
    // Architecture restrictions and build profiles only occur in source
    // packages; drop them so a stray one does not break parsing. (Anything
    // after a version constraint's ')' is ignored below.)
    if !s.contains('(') {
        if let Some(i) = s.find(['[', '<']) {
            s = s[..i].trim();
        }
    }
    let (head, constraint) = match s.find('(') {
        Some(open) => {
            let close = s[open..]
                .find(')')
                .map(|c| open + c)
                .ok_or_else(|| format!("unclosed '(' in {text:?}"))?;
            let inner = s[open + 1..close].trim();
            let split = inner
                .find(|c: char| !"<>=".contains(c))
                .unwrap_or(inner.len());
            let op = Op::parse(&inner[..split])
                .ok_or_else(|| format!("bad version operator in {text:?}"))?;
            let ver = inner[split..].trim();
            if ver.is_empty() {
                return Err(format!("missing version in {text:?}"));
            }
            (s[..open].trim(), Some((op, ver.to_string())))
        }
        None => (s, None),
    };
    let (name, arch_qual) = match head.split_once(':') {
        Some((n, q)) => (n.trim(), Some(q.trim().to_string())),
        None => (head, None),
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("bad package name in {text:?}"));
    }
    Ok(Relation {
        name: name.to_string(),
        arch_qual,
        constraint,
    })
}

/// Parses a `Provides` field.
pub fn parse_provides(field: &str) -> Result<Vec<Provide>, String> {
    let mut out = Vec::new();
    for item in field.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let r = parse_relation(item)?;
        let version = match r.constraint {
            None => None,
            Some((Op::Eq, v)) => Some(v),
            Some((op, _)) => {
                return Err(format!(
                    "Provides allows only '=', got '{}' in {item:?}",
                    op.as_str()
                ))
            }
        };
        out.push(Provide {
            name: r.name,
            version,
        });
    }
    Ok(out)
}

/// Fields of one stanza as they are collected (continuation lines joined).
#[derive(Default)]
struct Fields<'a> {
    package: Option<&'a str>,
    version: Option<&'a str>,
    arch: Option<&'a str>,
    depends: Option<String>,
    pre_depends: Option<String>,
    provides: Option<String>,
    essential: Option<&'a str>,
    priority: Option<&'a str>,
    filename: Option<&'a str>,
    size: Option<&'a str>,
    sha256: Option<&'a str>,
}

/// Which multi-line-capable field the previous line started.
#[derive(Clone, Copy, PartialEq)]
enum Open {
    Other,
    Depends,
    PreDepends,
    Provides,
}

/// Parses the text of a `Packages` index (`path` is used in messages).
pub fn parse_packages(
    text: &str,
    suite: &str,
    path: &Path,
) -> Result<Vec<IndexPackage>, IndexError> {
    let mut out = Vec::new();
    let mut fields = Fields::default();
    let mut start = 0usize;
    let mut open = Open::Other;
    let mut in_stanza = false;
    // Byte-level checks first: most lines are Description continuations,
    // and this loop runs over ~1.5 million lines per arch.
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let blank = match line.as_bytes().first() {
            None => true,
            Some(b' ' | b'\t') => line.bytes().all(|b| b == b' ' || b == b'\t'),
            Some(_) => false,
        };
        if blank {
            if in_stanza {
                out.push(finish(std::mem::take(&mut fields), suite, path, start)?);
                in_stanza = false;
            }
            continue;
        }
        if !in_stanza {
            in_stanza = true;
            start = n + 1;
        }
        match line.as_bytes()[0] {
            b' ' | b'\t' => {
                let slot = match open {
                    Open::Depends => &mut fields.depends,
                    Open::PreDepends => &mut fields.pre_depends,
                    Open::Provides => &mut fields.provides,
                    Open::Other => continue,
                };
                if let Some(v) = slot {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            b'#' => continue,
            _ => {}
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(IndexError::Stanza {
                path: path.to_path_buf(),
                line: n + 1,
                message: format!("not a field: {line:?}"),
            });
        };
        let value = value.trim();
        open = Open::Other;
        match key {
            "Package" => fields.package = Some(value),
            "Version" => fields.version = Some(value),
            "Architecture" => fields.arch = Some(value),
            "Depends" => {
                fields.depends = Some(value.to_string());
                open = Open::Depends;
            }
            "Pre-Depends" => {
                fields.pre_depends = Some(value.to_string());
                open = Open::PreDepends;
            }
            "Provides" => {
                fields.provides = Some(value.to_string());
                open = Open::Provides;
            }
            "Essential" => fields.essential = Some(value),
            "Priority" => fields.priority = Some(value),
            "Filename" => fields.filename = Some(value),
            "Size" => fields.size = Some(value),
            "SHA256" => fields.sha256 = Some(value),
            _ => {}
        }
    }
    if in_stanza {
        out.push(finish(fields, suite, path, start)?);
    }
    Ok(out)
}

fn finish(
    f: Fields<'_>,
    suite: &str,
    path: &Path,
    line: usize,
) -> Result<IndexPackage, IndexError> {
    let bad = |message: String| IndexError::Stanza {
        path: path.to_path_buf(),
        line,
        message,
    };
    let name = f.package.ok_or_else(|| bad("no Package field".into()))?;
    let need = |v: Option<&str>, field: &str| {
        v.map(str::to_string)
            .ok_or_else(|| bad(format!("package {name}: no {field} field")))
    };
    let version = need(f.version, "Version")?;
    let arch = need(f.arch, "Architecture")?;
    let filename = need(f.filename, "Filename")?;
    let size_text = need(f.size, "Size")?;
    let size = size_text.parse().map_err(|_| {
        bad(format!(
            "package {name}: Size {size_text:?} is not a number"
        ))
    })?;
    let sha256 = need(f.sha256, "SHA256")?.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!(
            "package {name}: SHA256 {sha256:?} is not 64 hex digits"
        )));
    }
    let provides = match &f.provides {
        Some(v) => parse_provides(v).map_err(|m| bad(format!("package {name}: Provides: {m}")))?,
        None => Vec::new(),
    };
    Ok(IndexPackage {
        name: name.to_string(),
        version,
        arch,
        depends: f.depends.unwrap_or_default(),
        pre_depends: f.pre_depends.unwrap_or_default(),
        provides,
        essential: f.essential.is_some_and(|e| e.eq_ignore_ascii_case("yes")),
        priority: f.priority.unwrap_or_default().to_string(),
        filename,
        size,
        sha256,
        suite: suite.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Cmd, HostRunner, Runner};

    const SAMPLE: &str = "\
Package: bash
Version: 5.2.15-2+b7
Architecture: arm64
Essential: yes
Priority: required
Pre-Depends: libc6 (>= 2.36), libtinfo6 (>= 6)
Depends: base-files (>= 2.1.12), debianutils (>= 5.6-0.1)
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.
 .
 More text: with colons.
Filename: pool/main/b/bash/bash_5.2.15-2+b7_arm64.deb
Size: 1418724
SHA256: 0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef

Package: mawk
Version: 1.3.4.20200120-3.1
Architecture: arm64
Priority: required
Provides: awk
Depends: libc6 (>= 2.34),
 libfoo:any | libbar (<< 2~)
Filename: pool/main/m/mawk/mawk_1.3.4.20200120-3.1_arm64.deb
Size: 100
SHA256: 1111111111111111111111111111111111111111111111111111111111111111
";

    #[test]
    fn parses_fields_and_continuations() {
        let pkgs = parse_packages(SAMPLE, "bookworm", Path::new("test")).unwrap();
        assert_eq!(pkgs.len(), 2);
        let bash = &pkgs[0];
        assert_eq!(bash.name, "bash");
        assert!(bash.essential);
        assert_eq!(bash.priority, "required");
        assert_eq!(bash.size, 1418724);
        assert_eq!(
            bash.sha256,
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
        let rel = bash.relations().unwrap();
        assert_eq!(rel.len(), 4);
        assert_eq!(rel[0].to_string(), "libc6 (>= 2.36)");
        assert_eq!(rel[3].to_string(), "debianutils (>= 5.6-0.1)");
        assert_eq!(bash.suite, "bookworm");
        let mawk = &pkgs[1];
        assert_eq!(
            mawk.provides,
            vec![Provide {
                name: "awk".into(),
                version: None
            }]
        );
        let rel = mawk.relations().unwrap();
        assert_eq!(rel.len(), 2);
        assert_eq!(rel[1].to_string(), "libfoo:any | libbar (<< 2~)");
        assert_eq!(rel[1].0[0].arch_qual.as_deref(), Some("any"));
        let broken = IndexPackage {
            depends: "foo (>= )".into(),
            ..mawk.clone()
        };
        assert!(broken
            .relations()
            .unwrap_err()
            .starts_with("Depends: missing version"));
    }

    #[test]
    fn relations_parse_all_forms() {
        let r = parse_relation(" libc6 (>=2.36) ").unwrap();
        assert_eq!(r.constraint, Some((Op::Ge, "2.36".into())));
        let r = parse_relation("foo:native (= 1:2.0-1)").unwrap();
        assert_eq!(
            (r.name.as_str(), r.arch_qual.as_deref()),
            ("foo", Some("native"))
        );
        assert_eq!(r.constraint, Some((Op::Eq, "1:2.0-1".into())));
        let r = parse_relation("foo [amd64] <!nocheck>").unwrap();
        assert_eq!(r.name, "foo");
        assert!(parse_relation("foo (>= )").is_err());
        assert!(parse_relation("foo (~ 1)").is_err());
        let p = parse_provides("awk, libfoo-abi (= 3)").unwrap();
        assert_eq!(p[1].version.as_deref(), Some("3"));
        assert!(parse_provides("x (>= 1)").is_err());
    }

    #[test]
    fn missing_field_names_the_file_and_package() {
        let text = "Package: x\nVersion: 1\nArchitecture: all\nFilename: a.deb\nSize: 1\n";
        let err = parse_packages(text, "s", Path::new("/idx/Packages"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/idx/Packages") && err.contains("package x") && err.contains("SHA256"),
            "{err}"
        );
    }

    /// Compresses SAMPLE with the real command-line tools and checks that
    /// every format decodes to the same stanzas.
    #[test]
    fn reads_lz4_gzip_xz_zstd_and_plain_indexes_made_by_real_tools() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("Packages");
        std::fs::write(&plain, SAMPLE).unwrap();
        let expected = read_index(&plain, "bookworm").unwrap();
        for (tool, ext) in [
            ("lz4", "lz4"),
            ("gzip", "gz"),
            ("xz", "xz"),
            ("zstd", "zst"),
        ] {
            let compressed = dir.path().join(format!("Packages.{ext}"));
            // Every tool here accepts `-c FILE` and writes the stream to stdout.
            let out = HostRunner
                .run(&Cmd::new(tool).arg("-c").arg(plain.as_os_str()))
                .unwrap();
            std::fs::write(&compressed, out.stdout).unwrap();
            assert_ne!(
                std::fs::read(&compressed).unwrap(),
                SAMPLE.as_bytes(),
                "{tool} did not compress"
            );
            assert_eq!(
                read_index(&compressed, "bookworm").unwrap(),
                expected,
                "{tool}"
            );
        }
    }
}
