//! Where each Debian suite is served from, read from the host's apt sources
//! so that kiln never hard-codes a mirror.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Environment variable naming a deb822 sources file that replaces the
/// host's apt sources.
pub const SOURCES_ENV: &str = "KILN_APT_SOURCES";

/// A problem with the apt sources.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// A sources file could not be read.
    #[error("{path}: cannot read apt sources: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A sources file is malformed.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A suite the profile needs is in none of the files.
    #[error("suite {suite:?} is not in the apt sources ({files}); add it there, or point {SOURCES_ENV} at a deb822 file that lists it")]
    MissingSuite {
        /// The suite.
        suite: String,
        /// The files that were read, comma separated.
        files: String,
    },
}

/// Where one suite comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// Archive root URI without a trailing `/`.
    pub uri: String,
    /// Components the host lists for the suite (kiln uses the profile's).
    pub components: Vec<String>,
    /// `Signed-By`: a keyring path or an inline armored key block.
    pub signed_by: Option<String>,
    /// The file the entry came from.
    pub file: PathBuf,
}

/// Suite → source, from the host's apt configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Suites; the first file (in reading order) that lists a suite wins.
    pub suites: BTreeMap<String, SourceEntry>,
    /// The files read, in order (for messages).
    pub files: Vec<PathBuf>,
    /// The host's apt accepts Release files past their `Valid-Until`
    /// (`Acquire::Check-Valid-Until "false"`), as a caching proxy or a
    /// snapshot mirror needs; kiln's private apt then does too, since it
    /// uses the same mirrors. Signatures are checked either way.
    pub allow_expired_release: bool,
}

impl Sources {
    /// Reads `$KILN_APT_SOURCES` (one deb822 file) if set, else the host's
    /// `/etc/apt/sources.list.d/*.sources`, `*.list` and `/etc/apt/sources.list`.
    /// Also takes over the host's `Acquire::Check-Valid-Until` setting
    /// ([`Sources::allow_expired_release`]).
    pub fn from_host() -> Result<Sources, SourcesError> {
        let mut s = match std::env::var_os(SOURCES_ENV) {
            Some(p) if !p.is_empty() => Sources::from_deb822_file(Path::new(&p))?,
            _ => Sources::from_etc_apt(Path::new("/etc/apt"))?,
        };
        s.allow_expired_release = host_allows_expired_release();
        Ok(s)
    }

    /// Reads the sources under an apt configuration directory (normally `/etc/apt`).
    pub fn from_etc_apt(dir: &Path) -> Result<Sources, SourcesError> {
        let mut s = Sources::default();
        let parts = dir.join("sources.list.d");
        let mut names = Vec::new();
        match std::fs::read_dir(&parts) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(|source| SourcesError::Read {
                        path: parts.clone(),
                        source,
                    })?;
                    names.push(e.path());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SourcesError::Read {
                    path: parts,
                    source,
                })
            }
        }
        names.sort();
        for p in names {
            match p.extension().and_then(|e| e.to_str()) {
                Some("sources") => s.add_deb822(&p)?,
                Some("list") => s.add_one_line(&p)?,
                _ => {}
            }
        }
        let main = dir.join("sources.list");
        if main.exists() {
            s.add_one_line(&main)?;
        }
        Ok(s)
    }

    /// Reads one deb822 `.sources` file.
    pub fn from_deb822_file(path: &Path) -> Result<Sources, SourcesError> {
        let mut s = Sources::default();
        s.add_deb822(path)?;
        Ok(s)
    }

    /// The source of `suite`, or an error naming the suite and the files read.
    ///
    /// A suite the sources do not list comes from the archive that serves the listed
    /// suites of its kind: Debian's archives serve every release, the security archive
    /// the `-security` suites and the main archive the others (`trixie`,
    /// `trixie-updates`, `trixie-backports`). So a host that lists bookworm builds
    /// trixie images, from the mirror it already uses and with the keyring it names.
    pub fn get(&self, suite: &str) -> Result<&SourceEntry, SourcesError> {
        if let Some(entry) = self.suites.get(suite) {
            return Ok(entry);
        }
        let security = is_security_suite(suite);
        if let Some((sibling, entry)) = self
            .suites
            .iter()
            .find(|(s, _)| is_security_suite(s) == security)
        {
            tracing::debug!(suite, sibling, uri = %entry.uri, "suite served by its sibling's archive");
            return Ok(entry);
        }
        self.suites
            .get(suite)
            .ok_or_else(|| SourcesError::MissingSuite {
                suite: suite.to_string(),
                files: if self.files.is_empty() {
                    "no sources files found".to_string()
                } else {
                    self.files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    fn read(path: &Path) -> Result<String, SourcesError> {
        std::fs::read_to_string(path).map_err(|source| SourcesError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    fn insert(&mut self, suite: &str, entry: SourceEntry) {
        self.suites.entry(suite.to_string()).or_insert(entry);
    }

    fn add_deb822(&mut self, path: &Path) -> Result<(), SourcesError> {
        let text = Sources::read(path)?;
        self.parse_deb822(&text, path)
    }

    fn add_one_line(&mut self, path: &Path) -> Result<(), SourcesError> {
        let text = Sources::read(path)?;
        self.parse_one_line(&text, path)
    }

    /// Adds the stanzas of deb822 text (`path` is used in messages).
    pub fn parse_deb822(&mut self, text: &str, path: &Path) -> Result<(), SourcesError> {
        if !self.files.iter().any(|f| f == path) {
            self.files.push(path.to_path_buf());
        }
        for (line, stanza) in deb822_stanzas(text, path)? {
            let get = |k: &str| {
                stanza
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.as_str())
            };
            let words = |k: &str| {
                get(k)
                    .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            if get("Enabled").is_some_and(|v| v.trim().eq_ignore_ascii_case("no")) {
                continue;
            }
            if !words("Types").iter().any(|t| t == "deb") {
                continue;
            }
            let bad = |message: String| SourcesError::Parse {
                path: path.to_path_buf(),
                line,
                message,
            };
            let uri = words("URIs")
                .into_iter()
                .next()
                .ok_or_else(|| bad("stanza has no URIs field".into()))?;
            let suites = words("Suites");
            if suites.is_empty() {
                return Err(bad("stanza has no Suites field".into()));
            }
            let entry = SourceEntry {
                uri: uri.trim_end_matches('/').to_string(),
                components: words("Components"),
                signed_by: get("Signed-By")
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty()),
                file: path.to_path_buf(),
            };
            for suite in suites {
                self.insert(&suite, entry.clone());
            }
        }
        Ok(())
    }

    /// Adds the `deb` lines of one-line-format text (`path` is used in messages).
    pub fn parse_one_line(&mut self, text: &str, path: &Path) -> Result<(), SourcesError> {
        if !self.files.iter().any(|f| f == path) {
            self.files.push(path.to_path_buf());
        }
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |message: String| SourcesError::Parse {
                path: path.to_path_buf(),
                line: n + 1,
                message,
            };
            let (kind, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            if kind != "deb" {
                continue;
            }
            let mut rest = rest.trim_start();
            let mut signed_by = None;
            if let Some(opts) = rest.strip_prefix('[') {
                let end = opts
                    .find(']')
                    .ok_or_else(|| bad("unclosed '[' in options".into()))?;
                for opt in opts[..end].split_whitespace() {
                    if let Some(v) = opt.strip_prefix("signed-by=") {
                        signed_by = Some(v.to_string());
                    }
                }
                rest = opts[end + 1..].trim_start();
            }
            let mut words = rest.split_whitespace();
            let uri = words.next().ok_or_else(|| bad("no URI".into()))?;
            let suite = words.next().ok_or_else(|| bad("no suite".into()))?;
            let entry = SourceEntry {
                uri: uri.trim_end_matches('/').to_string(),
                components: words.map(str::to_string).collect(),
                signed_by,
                file: path.to_path_buf(),
            };
            self.insert(suite, entry);
        }
        Ok(())
    }
}

/// A deb822 stanza: its first line (1-based) and its fields in order.
pub(crate) type Stanza = (usize, Vec<(String, String)>);

/// Splits deb822 text into stanzas of (field, value) with the stanza's first
/// line number. Continuation lines are joined with `\n` (a `.` line is an
/// empty line), so an inline key block survives intact.
pub(crate) fn deb822_stanzas(text: &str, path: &Path) -> Result<Vec<Stanza>, SourcesError> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    let mut start = 0;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push((start, std::mem::take(&mut cur)));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some((_, v)) = cur.last_mut() else {
                return Err(SourcesError::Parse {
                    path: path.to_path_buf(),
                    line: n + 1,
                    message: "continuation line outside a field".into(),
                });
            };
            let t = line.trim();
            v.push('\n');
            if t != "." {
                v.push_str(t);
            }
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(SourcesError::Parse {
                path: path.to_path_buf(),
                line: n + 1,
                message: format!("expected `Field: value`, got {line:?}"),
            });
        };
        if cur.is_empty() {
            start = n + 1;
        }
        cur.push((k.trim().to_string(), v.trim().to_string()));
    }
    if !cur.is_empty() {
        out.push((start, cur));
    }
    Ok(out)
}

/// Whether the host's apt configuration turns `Acquire::Check-Valid-Until`
/// off. apt itself reads its configuration (`apt-config`), so every file and
/// syntax it accepts counts; no apt, or no such setting, means apt's default
/// (check).
fn host_allows_expired_release() -> bool {
    use crate::runner::{Cmd, HostRunner, Runner};
    // An empty APT_CONFIG is apt's default configuration, as when unset.
    let cmd = Cmd::new("apt-config")
        .args(["shell", "V", "Acquire::Check-Valid-Until"])
        .env("APT_CONFIG", "");
    match HostRunner.run(&cmd) {
        Ok(o) => apt_false(&String::from_utf8_lossy(&o.stdout)),
        Err(e) => {
            tracing::debug!(error = %e, "apt-config: taking apt's default (check Valid-Until)");
            false
        }
    }
}

/// Whether `apt-config shell V KEY` output (`V='false'`) sets a false boolean.
fn apt_false(shell: &str) -> bool {
    let value = shell
        .trim()
        .strip_prefix("V=")
        .unwrap_or_default()
        .trim_matches('\'');
    ["false", "no", "off", "0", "without", "disable"]
        .iter()
        .any(|f| value.eq_ignore_ascii_case(f))
}

/// Whether a suite is served by Debian's security archive (`<release>-security`).
fn is_security_suite(suite: &str) -> bool {
    suite.ends_with("-security")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# a comment
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example/debian
Suites: trixie
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main contrib
Enabled: yes
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 AAAA
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://disabled.example/
Suites: sid
Enabled: no
";

    #[test]
    fn deb822_maps_suites_to_uri_and_keyring() {
        let mut s = Sources::default();
        s.parse_deb822(DEB822, Path::new("x.sources")).unwrap();
        assert_eq!(
            s.suites.keys().collect::<Vec<_>>(),
            ["bookworm", "bookworm-security", "bookworm-updates"]
        );
        let b = s.get("bookworm-updates").unwrap();
        assert_eq!(b.uri, "http://mirror.example/debian");
        assert_eq!(
            b.signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        let sec = s.get("bookworm-security").unwrap();
        assert_eq!(sec.components, ["main", "contrib"]);
        assert_eq!(
            sec.signed_by.as_deref(),
            Some(
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----"
            )
        );
    }

    #[test]
    fn other_releases_come_from_the_archive_serving_their_kind() {
        let mut s = Sources::default();
        s.parse_deb822(DEB822, Path::new("x.sources")).unwrap();
        for suite in ["trixie", "trixie-updates", "trixie-backports", "forky"] {
            assert_eq!(
                s.get(suite).unwrap().uri,
                "http://mirror.example/debian",
                "{suite}"
            );
        }
        let sec = s.get("trixie-security").unwrap();
        assert_eq!(sec.uri, "http://security.example/debian-security");
        assert!(sec.signed_by.as_deref().unwrap().contains("AAAA"));
    }

    #[test]
    fn one_line_format_and_first_entry_wins() {
        let mut s = Sources::default();
        s.parse_one_line(
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main\ndeb-src http://b.example bookworm main\ndeb http://c.example/debian bookworm main\n",
            Path::new("sources.list"),
        )
        .unwrap();
        let b = s.get("bookworm").unwrap();
        assert_eq!(
            (b.uri.as_str(), b.signed_by.as_deref()),
            ("http://a.example/debian", Some("/k.gpg"))
        );
    }

    #[test]
    fn missing_suite_names_the_suite_and_the_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(dir.path().join("sources.list.d/debian.sources"), DEB822).unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/other.sources.disabled"),
            "garbage",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sources.list"),
            "deb http://x.example/debian bookworm-backports main\n",
        )
        .unwrap();
        let s = Sources::from_etc_apt(dir.path()).unwrap();
        assert!(s.get("bookworm-backports").is_ok());
        // Every suite has a sibling of its kind here; a host without a security suite
        // cannot serve one.
        assert!(s.get("trixie-security").is_ok());
        let mut plain = Sources::default();
        plain
            .parse_one_line(
                "deb http://x.example/debian bookworm main\n",
                Path::new("sources.list"),
            )
            .unwrap();
        plain.files = s.files.clone();
        let err = plain.get("trixie-security").unwrap_err().to_string();
        assert!(err.contains("\"trixie-security\""), "{err}");
        assert!(
            err.contains("debian.sources") && err.contains("sources.list"),
            "{err}"
        );
        assert!(!err.contains("disabled"), "{err}");
    }

    #[test]
    fn the_hosts_check_valid_until_setting_is_read_as_apt_reads_booleans() {
        for (out, off) in [
            ("V='false'\n", true),
            ("V='no'", true),
            ("V='0'", true),
            ("V='true'\n", false),
            ("V='yes'", false),
            ("", false),
        ] {
            assert_eq!(apt_false(out), off, "{out:?}");
        }
        assert!(!Sources::default().allow_expired_release);
    }

    #[test]
    fn malformed_stanza_names_file_and_line() {
        let mut s = Sources::default();
        let err = s
            .parse_deb822("Types: deb\nSuites: x\n", Path::new("bad.sources"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.sources:1:") && err.contains("URIs"),
            "{err}"
        );
    }
}
