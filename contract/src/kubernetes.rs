//! The cluster's Kubernetes version, and which containerd versions support it.
//!
//! The builder derives the version from the pinned k3s/kubelet/kubeadm artifacts (or the
//! profile states it) and writes it into agent.toml; `kiln-agent preflight` reads it back
//! and checks the version containerd reports over its socket against [`SUPPORT`]. Both
//! sides parse with the functions here, so the table and its reading exist once.
//!
//! [`SUPPORT`] is containerd's own matrix: RELEASES.md of containerd/containerd, section
//! "Kubernetes Support" ([`SOURCE`]). Each row names, for one Kubernetes minor, the
//! containerd release lines that support it and the first patch of each, e.g. `2.1.5+`.
//! kiln reads a row strictly for the lines it lists (a listed line below its first
//! supported patch, and an older line the row leaves out, are unsupported: containerd
//! drops a line from a row on purpose, as it dropped 2.0 from 1.35), and leniently for a
//! line newer than every listed one (released after the row was written: supported but
//! not what upstream tested, see [`Support::Untested`]). A Kubernetes minor newer than the
//! table is unknown: kiln must be updated with containerd's newer rows.

use std::fmt;

/// Where [`SUPPORT`] comes from, for messages and docs.
pub const SOURCE: &str = "containerd's RELEASES.md, \"Kubernetes Support\" \
     (https://github.com/containerd/containerd/blob/main/RELEASES.md#kubernetes-support)";

/// A containerd release line (`major.minor`) and its first patch that supports a
/// Kubernetes minor: `2.1.5+` is `Min { major: 2, minor: 1, patch: 5 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Min {
    /// containerd's major version.
    pub major: u32,
    /// containerd's minor version (the release line).
    pub minor: u32,
    /// The first patch of the line that supports the row's Kubernetes minor.
    pub patch: u32,
}

impl fmt::Display for Min {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}+", self.major, self.minor, self.patch)
    }
}

/// One row of containerd's matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The Kubernetes minor, `(major, minor)`.
    pub kubernetes: (u32, u32),
    /// The supporting containerd lines, newest first, as the table lists them.
    pub containerd: &'static [Min],
}

impl Row {
    /// The containerd ranges as the table writes them: `2.1.3+, 2.0.6+, 1.7.28+`.
    pub fn ranges(&self) -> String {
        self.containerd
            .iter()
            .map(Min::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

const fn min(major: u32, minor: u32, patch: u32) -> Min {
    Min {
        major,
        minor,
        patch,
    }
}

/// containerd's Kubernetes support matrix from Kubernetes 1.30 on ([`SOURCE`]).
///
/// Rows 1.30 and 1.31 are from the table as it stood in 2025 (containerd drops the rows
/// of Kubernetes releases past their end of life); rows 1.32 to 1.36 from the table as
/// containerd 2.3 published it (2026), which also corrected 1.34 and 1.35 upwards
/// (1.7.28+, 2.0.6+, 2.1.3+ and 2.1.5+). Add a row here when containerd adds one.
pub const SUPPORT: &[Row] = &[
    Row {
        kubernetes: (1, 30),
        containerd: &[min(2, 1, 0), min(2, 0, 0), min(1, 7, 13), min(1, 6, 28)],
    },
    Row {
        kubernetes: (1, 31),
        containerd: &[min(2, 1, 0), min(2, 0, 0), min(1, 7, 20), min(1, 6, 34)],
    },
    Row {
        kubernetes: (1, 32),
        containerd: &[min(2, 1, 0), min(2, 0, 1), min(1, 7, 24), min(1, 6, 36)],
    },
    Row {
        kubernetes: (1, 33),
        containerd: &[min(2, 1, 0), min(2, 0, 4), min(1, 7, 24), min(1, 6, 36)],
    },
    Row {
        kubernetes: (1, 34),
        containerd: &[min(2, 1, 3), min(2, 0, 6), min(1, 7, 28), min(1, 6, 39)],
    },
    Row {
        kubernetes: (1, 35),
        containerd: &[min(2, 2, 0), min(2, 1, 5), min(1, 7, 28)],
    },
    Row {
        kubernetes: (1, 36),
        containerd: &[min(2, 3, 0), min(2, 2, 0)],
    },
];

/// A version string that is not a version kiln can read. Each message starts with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Not a Kubernetes version.
    #[error(
        "{0:?} is not a Kubernetes version: write MAJOR.MINOR or MAJOR.MINOR.PATCH, e.g. \
         \"1.35\" or \"1.35.2\" (a leading v and a suffix like +k3s1 are allowed)"
    )]
    Kubernetes(String),
    /// Not a containerd version.
    #[error("{0:?} is not a containerd version (expected MAJOR.MINOR.PATCH, e.g. 2.1.4)")]
    Containerd(String),
}

/// Splits `N.N[.N]` (no leading v, no suffix) into numbers; `None` when it is not that.
fn numbers(s: &str) -> Option<Vec<u32>> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 3 {
        return None;
    }
    parts
        .iter()
        .map(|p| {
            // Digits only: u32's parser would take a sign.
            (!p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect()
}

/// A Kubernetes version: a minor (`1.36`, as a profile may state it) or a release
/// (`1.36.4`). A k3s suffix or a pre-release tag is read and dropped: containerd's
/// support depends on the minor only, and a node shows the version it checks.
///
/// It serializes as its text (`"1.36.4"`); agent.toml's reader parses it back with
/// [`KubeVersion::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(into = "String")]
pub struct KubeVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version, when known.
    pub patch: Option<u32>,
}

impl KubeVersion {
    /// Parses `1.35`, `1.35.2`, `v1.36.4+k3s1` or `v1.36.0-rc.1`.
    pub fn parse(s: &str) -> Result<KubeVersion, VersionError> {
        let bad = || VersionError::Kubernetes(s.to_string());
        let body = s.strip_prefix('v').unwrap_or(s);
        let (core, suffix) = match body.find(['+', '-']) {
            Some(i) => (&body[..i], Some(&body[i + 1..])),
            None => (body, None),
        };
        // A suffix is a build (+k3s1) or pre-release (-rc.1) tag of a full release.
        if let Some(suffix) = suffix {
            let ok = !suffix.is_empty()
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
            if !ok || core.split('.').count() != 3 {
                return Err(bad());
            }
        }
        match numbers(core).as_deref() {
            Some(&[major, minor]) => Ok(KubeVersion {
                major,
                minor,
                patch: None,
            }),
            Some(&[major, minor, patch]) => Ok(KubeVersion {
                major,
                minor,
                patch: Some(patch),
            }),
            _ => Err(bad()),
        }
    }

    /// Whether the two name the same release where both say something: `1.36` agrees
    /// with `1.36.4`, `1.36.2` does not.
    pub fn agrees_with(&self, other: &KubeVersion) -> bool {
        (self.major, self.minor) == (other.major, other.minor)
            && match (self.patch, other.patch) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The row of [`SUPPORT`] for this version's minor.
    pub fn row(&self) -> Option<&'static Row> {
        SUPPORT
            .iter()
            .find(|r| r.kubernetes == (self.major, self.minor))
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.patch {
            Some(p) => write!(f, "{}.{}.{p}", self.major, self.minor),
            None => write!(f, "{}.{}", self.major, self.minor),
        }
    }
}

impl std::str::FromStr for KubeVersion {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<KubeVersion, VersionError> {
        KubeVersion::parse(s)
    }
}

// agent.toml carries the version as a string ("1.36.4"), read with the same parser.
impl TryFrom<String> for KubeVersion {
    type Error = VersionError;
    fn try_from(s: String) -> Result<KubeVersion, VersionError> {
        KubeVersion::parse(&s)
    }
}

impl From<KubeVersion> for String {
    fn from(v: KubeVersion) -> String {
        v.to_string()
    }
}

/// A containerd version as containerd reports it (the CRI `Version` call's
/// `runtime_version`): upstream `v2.0.4`, Debian's `1.6.20~ds1` or `2.1.9+ds1`, k3s's
/// `v2.1.5-k3s1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerdVersion {
    /// Major version.
    pub major: u32,
    /// Minor version (the release line).
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
    /// An alpha, beta or release candidate (`2.2.0-rc.1`, Debian's `2.2.0~rc1`): it comes
    /// before the release of its number.
    pub pre_release: bool,
}

impl ContainerdVersion {
    /// Parses a version containerd reports. A Debian epoch (`1:`) and repack or build
    /// suffixes (`~ds1`, `+ds1-2`, `-k3s1`) are read and dropped; `-rc.1`, `~beta2` and
    /// the like mark a pre-release.
    pub fn parse(s: &str) -> Result<ContainerdVersion, VersionError> {
        let bad = || VersionError::Containerd(s.to_string());
        let mut body = s.trim();
        if let Some((epoch, rest)) = body.split_once(':') {
            if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            body = rest;
        }
        let body = body.strip_prefix('v').unwrap_or(body);
        let end = body
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(body.len());
        let (core, suffix) = body.split_at(end);
        let Some(&[major, minor, patch]) = numbers(core).as_deref() else {
            return Err(bad());
        };
        let mut rest = suffix.chars();
        let pre_release = match rest.next() {
            None => false,
            Some('~' | '-' | '+') => {
                let tag = rest.as_str().to_ascii_lowercase();
                ["alpha", "beta", "rc"].iter().any(|p| tag.starts_with(p))
                    && !suffix.starts_with('+')
            }
            Some(_) => return Err(bad()),
        };
        Ok(ContainerdVersion {
            major,
            minor,
            patch,
            pre_release,
        })
    }

    fn line(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    /// Whether this version is at least `m` on `m`'s line (a pre-release of `m`'s own
    /// number is not).
    fn reaches(&self, m: &Min) -> bool {
        self.line() == (m.major, m.minor)
            && (self.patch > m.patch || (self.patch == m.patch && !self.pre_release))
    }
}

impl fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if self.pre_release {
            f.write_str(" (pre-release)")?;
        }
        Ok(())
    }
}

/// How a containerd version supports a Kubernetes version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// In one of the row's ranges.
    Listed(&'static Row),
    /// On a release line newer than every line the row lists (containerd released it
    /// after writing the row): it speaks the same CRI, but upstream did not test it for
    /// this Kubernetes minor.
    Untested(&'static Row),
}

/// Why a containerd version does not support a Kubernetes version. The messages name the
/// supported ranges, [`SOURCE`] and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// Outside every range of the row.
    #[error(
        "containerd {containerd} does not support Kubernetes {kubernetes}: {source_} lists \
         {ranges} for Kubernetes {minor}; use a containerd in one of those ranges{or_other}",
        source_ = SOURCE,
        ranges = row.ranges(),
        minor = format_args!("{}.{}", row.kubernetes.0, row.kubernetes.1),
        or_other = other_kubernetes(*containerd),
    )]
    OutOfRange {
        /// The cluster's version.
        kubernetes: KubeVersion,
        /// The runtime's version.
        containerd: ContainerdVersion,
        /// The row it was checked against.
        row: &'static Row,
    },
    /// A Kubernetes minor newer than kiln's copy of the table.
    #[error(
        "Kubernetes {kubernetes} is newer than kiln's copy of containerd's support matrix \
         (it ends at Kubernetes {newest}), so kiln cannot tell which containerd supports it: \
         update kiln (its copy of {SOURCE} is in kiln-contract's kubernetes module), or \
         build the image for Kubernetes {newest} or older",
        newest = newest_row()
    )]
    NewerThanTable {
        /// The cluster's version.
        kubernetes: KubeVersion,
    },
    /// A Kubernetes minor older than the table (past its end of life).
    #[error(
        "Kubernetes {kubernetes} is older than kiln's copy of containerd's support matrix \
         (it starts at Kubernetes {oldest}; containerd drops the rows of Kubernetes releases \
         past their end of life, see {SOURCE}): use Kubernetes {oldest} or newer",
        oldest = oldest_row()
    )]
    OlderThanTable {
        /// The cluster's version.
        kubernetes: KubeVersion,
    },
}

fn minor_name((major, minor): (u32, u32)) -> String {
    format!("{major}.{minor}")
}

fn newest_row() -> String {
    SUPPORT
        .last()
        .map(|r| minor_name(r.kubernetes))
        .unwrap_or_default()
}

fn oldest_row() -> String {
    SUPPORT
        .first()
        .map(|r| minor_name(r.kubernetes))
        .unwrap_or_default()
}

/// ", or a Kubernetes version containerd X supports: 1.32, 1.33", or nothing when the
/// table has none for it.
fn other_kubernetes(containerd: ContainerdVersion) -> String {
    let fits = supported_kubernetes(containerd);
    if fits.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = fits.into_iter().map(minor_name).collect();
        format!(
            ", or a Kubernetes version containerd {containerd} supports: {}",
            list.join(", ")
        )
    }
}

/// The Kubernetes minors whose row lists a range `containerd` is in, oldest first.
pub fn supported_kubernetes(containerd: ContainerdVersion) -> Vec<(u32, u32)> {
    SUPPORT
        .iter()
        .filter(|r| r.containerd.iter().any(|m| containerd.reaches(m)))
        .map(|r| r.kubernetes)
        .collect()
}

/// Whether containerd `containerd` supports Kubernetes `kubernetes`, by [`SUPPORT`].
pub fn check(
    kubernetes: KubeVersion,
    containerd: ContainerdVersion,
) -> Result<Support, Unsupported> {
    let Some(row) = kubernetes.row() else {
        let newer = SUPPORT
            .last()
            .is_some_and(|r| (kubernetes.major, kubernetes.minor) > r.kubernetes);
        return Err(if newer {
            Unsupported::NewerThanTable { kubernetes }
        } else {
            Unsupported::OlderThanTable { kubernetes }
        });
    };
    if row.containerd.iter().any(|m| containerd.reaches(m)) {
        return Ok(Support::Listed(row));
    }
    let newest = row.containerd.iter().map(|m| (m.major, m.minor)).max();
    if newest.is_some_and(|n| containerd.line() > n) {
        return Ok(Support::Untested(row));
    }
    Err(Unsupported::OutOfRange {
        kubernetes,
        containerd,
        row,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> KubeVersion {
        KubeVersion::parse(s).unwrap()
    }

    fn c(s: &str) -> ContainerdVersion {
        ContainerdVersion::parse(s).unwrap()
    }

    #[test]
    fn kubernetes_versions_parse_from_profiles_urls_and_agent_toml() {
        for (text, want) in [
            ("1.35", (1, 35, None)),
            ("v1.35", (1, 35, None)),
            ("1.35.2", (1, 35, Some(2))),
            ("v1.36.4+k3s1", (1, 36, Some(4))),
            ("v1.36.0-rc.1", (1, 36, Some(0))),
            ("1.34.2+rke2r1", (1, 34, Some(2))),
        ] {
            let v = k(text);
            assert_eq!((v.major, v.minor, v.patch), want, "{text}");
        }
        assert_eq!(k("v1.36.4+k3s1").to_string(), "1.36.4");
        assert_eq!(k("1.35").to_string(), "1.35");
        for bad in [
            "",
            "1",
            "v",
            "1.",
            "1.x",
            "1..2",
            "1.35.2.1",
            "+1.35",
            "1.35+k3s1",
            "1.35.2+",
            "1.35.2+k 3s",
            "v-1.35",
            "1.-35",
            "1.35.2 ",
            "１.35",
        ] {
            let e = KubeVersion::parse(bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("{bad:?} is not a Kubernetes")),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn stated_and_derived_versions_agree_when_they_name_one_release() {
        assert!(k("1.36").agrees_with(&k("v1.36.4+k3s1")));
        assert!(k("1.36.4").agrees_with(&k("1.36")));
        assert!(k("1.36.4").agrees_with(&k("v1.36.4+k3s2")));
        assert!(!k("1.36.2").agrees_with(&k("1.36.4")));
        assert!(!k("1.35").agrees_with(&k("1.36.4")));
        assert!(!k("2.36").agrees_with(&k("1.36")));
    }

    #[test]
    fn containerd_versions_parse_as_debian_upstream_and_k3s_report_them() {
        for (text, want) in [
            ("1.6.20~ds1", (1, 6, 20, false)),
            ("1.7.24~ds1", (1, 7, 24, false)),
            ("2.1.9+ds1", (2, 1, 9, false)),
            ("2.1.4~ds1-2", (2, 1, 4, false)),
            ("1:2.1.4~ds1-2", (2, 1, 4, false)),
            ("v2.0.4", (2, 0, 4, false)),
            ("v2.1.5-k3s1", (2, 1, 5, false)),
            ("2.2.0-rc.1", (2, 2, 0, true)),
            ("2.2.0~rc1", (2, 2, 0, true)),
            ("v2.3.0-beta.0", (2, 3, 0, true)),
        ] {
            let v = c(text);
            assert_eq!((v.major, v.minor, v.patch, v.pre_release), want, "{text}");
        }
        assert_eq!(c("v2.1.5-k3s1").to_string(), "2.1.5");
        for bad in ["", "2.1", "2", "x.1.2", "2.1.4a", "a:2.1.4", "2.1.4.5", "v"] {
            let e = ContainerdVersion::parse(bad).unwrap_err();
            assert!(
                e.to_string().contains("is not a containerd version"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_table_has_every_minor_from_1_30_in_order_with_its_lines_newest_first() {
        let minors: Vec<(u32, u32)> = SUPPORT.iter().map(|r| r.kubernetes).collect();
        assert_eq!(minors, (30..=36).map(|m| (1, m)).collect::<Vec<_>>());
        for r in SUPPORT {
            let lines: Vec<(u32, u32)> = r.containerd.iter().map(|m| (m.major, m.minor)).collect();
            let mut sorted = lines.clone();
            sorted.sort_by(|a, b| b.cmp(a));
            sorted.dedup();
            assert_eq!(lines, sorted, "{:?}", r.kubernetes);
        }
        // As the issue summarises containerd's table: 1.33 takes 1.7.24+ or 2.0.4+, and 1.36
        // takes 2.x only.
        assert_eq!(
            k("1.33").row().unwrap().ranges(),
            "2.1.0+, 2.0.4+, 1.7.24+, 1.6.36+"
        );
        assert_eq!(k("1.36.4").row().unwrap().ranges(), "2.3.0+, 2.2.0+");
    }

    #[test]
    fn supported_listed_untested_and_unsupported() {
        // Debian: bookworm 1.6.20, trixie 1.7.24, forky 2.1.9.
        assert!(matches!(
            check(k("1.33"), c("1.7.24~ds1")),
            Ok(Support::Listed(_))
        ));
        assert!(matches!(
            check(k("1.34.2"), c("2.1.9+ds1")),
            Ok(Support::Listed(_))
        ));
        assert!(matches!(
            check(k("1.35"), c("2.1.9+ds1")),
            Ok(Support::Listed(_))
        ));
        assert!(matches!(
            check(k("1.36.4"), c("v2.2.1-k3s1")),
            Ok(Support::Listed(_))
        ));
        // A line newer than the row's newest: untested, not refused.
        assert!(matches!(
            check(k("1.33.1"), c("2.2.0")),
            Ok(Support::Untested(_))
        ));
        assert!(matches!(
            check(k("1.36"), c("2.4.0")),
            Ok(Support::Untested(_))
        ));
        for (kube, ctrd) in [
            ("1.36.4", "2.1.9+ds1"),  // 2.x, but not 2.2 or 2.3
            ("1.36", "1.7.24~ds1"),   // 1.x
            ("1.34", "1.7.24~ds1"),   // below the line's first patch
            ("1.35", "2.0.6"),        // a line the row dropped
            ("1.33", "1.6.20~ds1"),   // bookworm's
            ("1.35.0", "2.2.0-rc.1"), // a pre-release of the first supported patch
        ] {
            assert!(
                matches!(check(k(kube), c(ctrd)), Err(Unsupported::OutOfRange { .. })),
                "{kube} {ctrd}"
            );
        }
    }

    #[test]
    fn messages_name_the_ranges_the_source_and_what_to_change() {
        let e = check(k("1.34.2"), c("1.7.24~ds1")).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "containerd 1.7.24 does not support Kubernetes 1.34.2: {SOURCE} lists 2.1.3+, \
                 2.0.6+, 1.7.28+, 1.6.39+ for Kubernetes 1.34; use a containerd in one of those \
                 ranges, or a Kubernetes version containerd 1.7.24 supports: 1.30, 1.31, 1.32, \
                 1.33"
            )
        );
        let e = check(k("1.36"), c("1.6.36")).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "or a Kubernetes version containerd 1.6.36 supports: 1.30, 1.31, 1.32, 1.33"
            ),
            "{e}"
        );
        // bookworm's containerd supports no Kubernetes in the table: nothing to suggest.
        let e = check(k("1.36"), c("1.6.20~ds1")).unwrap_err().to_string();
        assert!(
            e.ends_with("use a containerd in one of those ranges"),
            "{e}"
        );
        let e = check(k("1.37.0"), c("2.3.0")).unwrap_err().to_string();
        assert!(
            e.starts_with("Kubernetes 1.37.0 is newer than kiln's copy")
                && e.contains("ends at Kubernetes 1.36")
                && e.contains("update kiln")
                && e.contains(SOURCE),
            "{e}"
        );
        let e = check(k("1.29"), c("1.7.24")).unwrap_err().to_string();
        assert!(
            e.starts_with("Kubernetes 1.29 is older") && e.contains("use Kubernetes 1.30 or newer"),
            "{e}"
        );
    }

    #[test]
    fn which_kubernetes_each_debian_containerd_supports() {
        assert_eq!(supported_kubernetes(c("1.6.20~ds1")), []);
        assert_eq!(
            supported_kubernetes(c("1.7.24~ds1")),
            [(1, 30), (1, 31), (1, 32), (1, 33)]
        );
        assert_eq!(
            supported_kubernetes(c("2.1.9+ds1")),
            [(1, 30), (1, 31), (1, 32), (1, 33), (1, 34), (1, 35)]
        );
    }
}
