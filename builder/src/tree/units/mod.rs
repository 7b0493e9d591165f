//! systemd unit enablement at build time: what `systemctl enable`, `mask`
//! and `set-default` would leave in `/etc/systemd/system`.
//!
//! Debian's postinsts enable units with `deb-systemd-helper`; kiln runs no
//! maintainer scripts, so the profile lists every unit to enable, explicitly.
//! [`debian_postinst_units`] says which units those postinsts would have
//! enabled for the packages in the tree, so a profile author can compare.
//! The host's `systemctl --root` (systemd 252) is the referee in the tests.

use std::collections::BTreeSet;

use super::{file_name, FileTree, Kind, Node, TreeError};

/// Unit directories in systemd's lookup order. `usr/lib` comes before `lib`
/// so that with merged /usr links point to `/usr/lib/systemd/system`.
const UNIT_DIRS: [&str; 5] = [
    "etc/systemd/system",
    "run/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

const ETC_UNITS: &str = "etc/systemd/system";
const ORIGIN: &str = "kiln:units";

/// What Debian's postinsts enable on a fresh install (bookworm), by package.
/// Read from the packages' maintainer scripts; kiln only reports these.
const DEBIAN_POSTINST_ENABLES: &[(&str, &[&str])] = &[
    ("containerd", &["containerd.service"]),
    ("cron", &["cron.service"]),
    ("e2fsprogs", &["e2scrub_all.timer", "e2scrub_reap.service"]),
    ("nftables", &["nftables.service"]),
    ("openssh-server", &["ssh.service"]),
    (
        "systemd",
        &[
            "getty@tty1.service",
            "remote-fs.target",
            "systemd-pstore.service",
        ],
    ),
    ("systemd-resolved", &["systemd-resolved.service"]),
    ("systemd-timesyncd", &["systemd-timesyncd.service"]),
    ("util-linux", &["fstrim.timer"]),
];

/// Unit types `systemctl` knows.
const UNIT_SUFFIXES: [&str; 11] = [
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// Errors while enabling, masking or setting the default target.
#[derive(Debug, thiserror::Error)]
pub enum UnitsError {
    /// No unit file of that name (nor a template for it).
    #[error("unit {unit:?} not found; looked in {}", looked_in.iter().map(|d| format!("/{d}")).collect::<Vec<_>>().join(", "))]
    UnknownUnit {
        /// The unit name.
        unit: String,
        /// The directories searched.
        looked_in: Vec<String>,
    },
    /// Not a valid unit name.
    #[error("{unit:?} is not a unit name (expected NAME.service, NAME@INSTANCE.timer, ...)")]
    BadName {
        /// The name as given.
        unit: String,
    },
    /// A unit file line kiln cannot parse.
    #[error("/{path}:{line}: {message}")]
    Syntax {
        /// Tree path of the unit file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Enabling would do nothing: the unit has no `[Install]` section.
    #[error(
        "unit {unit:?} (/{path}) has no [Install] section (WantedBy=, RequiredBy=, Alias=, Also=): \
         enabling it does nothing; pull it in from another unit or remove it from [systemd] enable"
    )]
    NotInstallable {
        /// The unit name.
        unit: String,
        /// Where its file is.
        path: String,
    },
    /// A template enabled without an instance and without `DefaultInstance=`.
    #[error("unit {unit:?} (/{path}) is a template without DefaultInstance=: enable an instance like {example:?}")]
    TemplateWithoutInstance {
        /// The template name.
        unit: String,
        /// Where its file is.
        path: String,
        /// An example instance name.
        example: String,
    },
    /// The name given is an alias (a symlink) of another unit.
    #[error("{unit:?} is an alias of {real:?} (/{path}); enable {real:?} instead")]
    Alias {
        /// The alias given.
        unit: String,
        /// The unit it points to.
        real: String,
        /// The symlink.
        path: String,
    },
    /// Asked to enable a masked unit, or to mask an enabled one.
    #[error("unit {unit:?} is both enabled and masked; {hint}")]
    Masked {
        /// The unit name.
        unit: String,
        /// What to change.
        hint: String,
    },
    /// A link kiln must create exists with other content.
    #[error("/{path}: kiln needs it as a symlink to {want:?} for {unit:?}, but it is {found}")]
    Occupied {
        /// The path.
        path: String,
        /// What kiln wanted there.
        want: String,
        /// The unit being enabled or masked.
        unit: String,
        /// What is there and who put it there.
        found: String,
    },
    /// A `%` specifier kiln cannot expand at build time.
    #[error("/{path}: [Install] value {value:?}: {message}")]
    Specifier {
        /// Tree path of the unit file.
        path: String,
        /// The value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// The default target is not a target.
    #[error("default target {0:?} must be a .target unit other than default.target")]
    BadDefaultTarget(String),
    /// Reading or writing the tree failed.
    #[error("units: {0}")]
    Tree(#[from] TreeError),
}

/// Enables `enable` (recursively through `Also=`), masks `mask`, and points
/// `default.target` at `default_target`, as systemctl would.
pub fn apply(
    tree: &mut FileTree,
    enable: &[String],
    mask: &[String],
    default_target: &str,
) -> Result<(), UnitsError> {
    for m in mask {
        check_name(m)?;
        if enable.contains(m) {
            return Err(UnitsError::Masked {
                unit: m.clone(),
                hint: "remove it from [systemd] enable or from [systemd] mask".into(),
            });
        }
    }
    report_postinst_units(tree, enable);
    let mut done = BTreeSet::new();
    for unit in enable {
        enable_unit(tree, unit, &mut done)?;
    }
    for m in mask {
        mask_unit(tree, m)?;
    }
    set_default(tree, default_target)?;
    Ok(())
}

/// Units Debian's postinsts would enable for the packages present in the
/// tree (judged by the origin `pkg:NAME` of any entry), as `(package, unit)`.
pub fn debian_postinst_units(tree: &FileTree) -> Vec<(String, String)> {
    let present: BTreeSet<&str> = tree
        .iter()
        .filter_map(|(_, n)| n.origin.strip_prefix("pkg:"))
        .collect();
    let mut out = Vec::new();
    for (pkg, units) in DEBIAN_POSTINST_ENABLES {
        if present.contains(pkg) {
            out.extend(units.iter().map(|u| (pkg.to_string(), u.to_string())));
        }
    }
    out
}

fn report_postinst_units(tree: &FileTree, enable: &[String]) {
    for (pkg, unit) in debian_postinst_units(tree) {
        if !enable.contains(&unit) {
            tracing::debug!(
                package = %pkg, unit = %unit,
                "Debian's postinst would enable this unit; it stays disabled because [systemd] enable does not list it"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Names

/// A unit name split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnitName {
    /// Before `@` (or the whole stem).
    prefix: String,
    /// `Some("")` for a template, `Some(x)` for an instance, `None` otherwise.
    instance: Option<String>,
    suffix: String,
}

impl UnitName {
    fn parse(s: &str) -> Option<UnitName> {
        let (stem, suffix) = s.rsplit_once('.')?;
        if !UNIT_SUFFIXES.contains(&suffix) || stem.is_empty() || s.contains('/') || s.len() > 255 {
            return None;
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || ":-_.\\".contains(c);
        let (prefix, instance) = match stem.split_once('@') {
            Some((p, i)) => (p, Some(i)),
            None => (stem, None),
        };
        if prefix.is_empty()
            || !prefix.chars().all(ok)
            || !instance.unwrap_or("").chars().all(|c| ok(c) || c == '@')
        {
            return None;
        }
        Some(UnitName {
            prefix: prefix.into(),
            instance: instance.map(String::from),
            suffix: suffix.into(),
        })
    }

    fn is_template(&self) -> bool {
        self.instance.as_deref() == Some("")
    }

    fn template(&self) -> String {
        format!("{}@.{}", self.prefix, self.suffix)
    }

    fn with_instance(&self, inst: &str) -> String {
        format!("{}@{inst}.{}", self.prefix, self.suffix)
    }

    fn full(&self) -> String {
        match &self.instance {
            Some(i) => self.with_instance(i),
            None => format!("{}.{}", self.prefix, self.suffix),
        }
    }
}

fn check_name(unit: &str) -> Result<UnitName, UnitsError> {
    UnitName::parse(unit).ok_or_else(|| UnitsError::BadName {
        unit: unit.to_string(),
    })
}

// ---------------------------------------------------------------------------
// Finding and reading unit files

/// A unit file found in the tree.
#[derive(Debug, Clone)]
struct Found {
    /// Path where it was found (in its unit directory, not resolved).
    path: String,
    /// Resolved path of its content.
    real: String,
}

fn looked_in() -> Vec<String> {
    UNIT_DIRS.iter().map(|d| d.to_string()).collect()
}

/// Finds `name` in the unit directories. A symlink whose target has another
/// name is an alias; one to /dev/null is a mask.
fn find_file(tree: &FileTree, name: &str) -> Result<Option<Found>, UnitsError> {
    for dir in UNIT_DIRS {
        let path = format!("{dir}/{name}");
        // A lookup through a symlinked directory (lib → usr/lib) must land
        // on the same entry.
        let here = match tree.resolve(dir) {
            Ok(d) => format!("{d}/{name}"),
            Err(TreeError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(node) = tree.get(&here) else {
            continue;
        };
        if let Kind::Symlink(target) = &node.kind {
            if target == "/dev/null" {
                return Err(UnitsError::Masked {
                    unit: name.to_string(),
                    hint: format!("/{path} masks it; remove it from [systemd] enable"),
                });
            }
            let real = tree.resolve(&here)?;
            let real_name = file_name(&real);
            if real_name != name {
                return Err(UnitsError::Alias {
                    unit: name.into(),
                    real: real_name.into(),
                    path,
                });
            }
            return Ok(Some(Found { path, real }));
        }
        if matches!(node.kind, Kind::File(_) | Kind::Hardlink(_)) {
            return Ok(Some(Found { path, real: here }));
        }
    }
    Ok(None)
}

/// The `[Install]` section of a unit file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Install {
    wanted_by: Vec<String>,
    required_by: Vec<String>,
    alias: Vec<String>,
    also: Vec<String>,
    default_instance: Option<String>,
}

impl Install {
    fn is_empty(&self) -> bool {
        self.wanted_by.is_empty()
            && self.required_by.is_empty()
            && self.alias.is_empty()
            && self.also.is_empty()
    }
}

fn parse_install(path: &str, text: &str) -> Result<Install, UnitsError> {
    let mut inst = Install::default();
    let mut section = String::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, raw)) = lines.next() {
        let mut line = raw.trim().to_string();
        // Continuation lines end with a backslash.
        while line.ends_with('\\') {
            line.pop();
            line.push(' ');
            match lines.next() {
                Some((_, next)) => line.push_str(next.trim()),
                None => break,
            }
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            if !line.ends_with(']') {
                return Err(UnitsError::Syntax {
                    path: path.into(),
                    line: i + 1,
                    message: format!("bad section header {line:?}"),
                });
            }
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        if section != "Install" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(UnitsError::Syntax {
                path: path.into(),
                line: i + 1,
                message: format!("expected KEY=VALUE in [Install], found {line:?}"),
            });
        };
        let value = value.trim();
        let list = match key.trim() {
            "WantedBy" => &mut inst.wanted_by,
            "RequiredBy" => &mut inst.required_by,
            "UpheldBy" => {
                // systemd 252's systemctl does not know it either ("Unknown key").
                tracing::warn!(file = %path, "UpheldBy= in [Install] is not supported by systemd 252: ignored");
                continue;
            }
            "Alias" => &mut inst.alias,
            "Also" => &mut inst.also,
            "DefaultInstance" => {
                inst.default_instance = if value.is_empty() {
                    None
                } else {
                    Some(value.to_string())
                };
                continue;
            }
            other => {
                tracing::debug!(file = %path, key = other, "unknown [Install] key ignored");
                continue;
            }
        };
        // An empty assignment resets the list, as in systemd.
        if value.is_empty() {
            list.clear();
        } else {
            list.extend(value.split_whitespace().map(String::from));
        }
    }
    Ok(inst)
}

/// Expands the specifiers systemctl expands in `[Install]` values.
fn expand(path: &str, value: &str, unit: &UnitName) -> Result<String, UnitsError> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(&unit.full()),
            Some('N') => out.push_str(unit.full().rsplit_once('.').map(|(s, _)| s).unwrap_or("")),
            Some('p') => out.push_str(&unit.prefix),
            Some('i') => out.push_str(unit.instance.as_deref().unwrap_or("")),
            Some('j') => out.push_str(unit.prefix.rsplit('-').next().unwrap_or("")),
            Some('%') => out.push('%'),
            other => {
                return Err(UnitsError::Specifier {
                    path: path.into(),
                    value: value.into(),
                    message: format!(
                    "specifier %{} is not supported at build time (supported: %n %N %p %i %j %%)",
                    other.map(String::from).unwrap_or_default()
                ),
                })
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Doing it

/// Creates `path` → `target`, accepting an identical existing link.
fn link(tree: &mut FileTree, path: &str, target: &str, unit: &str) -> Result<(), UnitsError> {
    if let Some(n) = tree.get(path) {
        match &n.kind {
            Kind::Symlink(t) if t == target => return Ok(()),
            other => {
                let pointing = match other {
                    Kind::Symlink(t) => format!(" pointing to {t:?}"),
                    _ => String::new(),
                };
                return Err(UnitsError::Occupied {
                    path: path.into(),
                    want: target.into(),
                    unit: unit.into(),
                    found: format!("a {} from {}{pointing}", other.label(), n.origin),
                });
            }
        }
    }
    tracing::debug!(link = %path, target, "systemd link");
    let epoch = tree.epoch();
    tree.insert(path, Node::symlink(target, epoch, ORIGIN))?;
    Ok(())
}

fn enable_unit(
    tree: &mut FileTree,
    unit: &str,
    done: &mut BTreeSet<String>,
) -> Result<(), UnitsError> {
    if !done.insert(unit.to_string()) {
        return Ok(());
    }
    let name = check_name(unit)?;
    let found = match find_file(tree, unit)? {
        Some(f) => f,
        None if name.instance.as_deref().is_some_and(|i| !i.is_empty()) => {
            find_file(tree, &name.template())?.ok_or_else(|| UnitsError::UnknownUnit {
                unit: unit.into(),
                looked_in: looked_in(),
            })?
        }
        None => {
            return Err(UnitsError::UnknownUnit {
                unit: unit.into(),
                looked_in: looked_in(),
            })
        }
    };
    let text = tree.read(&found.real)?;
    let install = parse_install(&found.path, &String::from_utf8_lossy(&text))?;
    if install.is_empty() {
        return Err(UnitsError::NotInstallable {
            unit: unit.into(),
            path: found.path,
        });
    }
    // The name the links carry: an instance, a template's default instance,
    // or the unit itself.
    let effective =
        if name.is_template() {
            match &install.default_instance {
                Some(i) => Some(UnitName::parse(&name.with_instance(i)).ok_or_else(|| {
                    UnitsError::Syntax {
                        path: found.path.clone(),
                        line: 0,
                        message: format!("DefaultInstance={i:?} does not make a valid unit name"),
                    }
                })?),
                None => None,
            }
        } else {
            Some(name.clone())
        };
    let target = format!("/{}", found.path);
    let by = [
        (&install.wanted_by, "wants"),
        (&install.required_by, "requires"),
    ];
    if by.iter().any(|(l, _)| !l.is_empty()) {
        let Some(eff) = &effective else {
            return Err(UnitsError::TemplateWithoutInstance {
                unit: unit.into(),
                path: found.path,
                example: name.with_instance("NAME"),
            });
        };
        for (list, dir) in by {
            for t in list {
                let t = expand(&found.path, t, eff)?;
                let t_name = UnitName::parse(&t).ok_or_else(|| UnitsError::Syntax {
                    path: found.path.clone(),
                    line: 0,
                    message: format!("[Install] names {t:?}, which is not a unit name"),
                })?;
                // A template target takes the instance of the unit.
                let t = match (&t_name.instance, &eff.instance) {
                    (Some(ti), Some(ui)) if ti.is_empty() => t_name.with_instance(ui),
                    _ => t,
                };
                link(
                    tree,
                    &format!("{ETC_UNITS}/{t}.{dir}/{}", eff.full()),
                    &target,
                    unit,
                )?;
            }
        }
    }
    for a in &install.alias {
        let subject = effective.as_ref().unwrap_or(&name);
        let a = expand(&found.path, a, subject)?;
        let a_name = UnitName::parse(&a).ok_or_else(|| UnitsError::Syntax {
            path: found.path.clone(),
            line: 0,
            message: format!("Alias={a:?} is not a unit name"),
        })?;
        if a_name.suffix != name.suffix {
            return Err(UnitsError::Syntax {
                path: found.path.clone(),
                line: 0,
                message: format!(
                    "Alias={a:?} must have the same type (.{}) as the unit",
                    name.suffix
                ),
            });
        }
        let a = match (&a_name.instance, &subject.instance) {
            (Some(ai), Some(ui)) if ai.is_empty() && !ui.is_empty() => a_name.with_instance(ui),
            _ => a,
        };
        link(tree, &format!("{ETC_UNITS}/{a}"), &target, unit)?;
    }
    let also: Vec<String> = install.also.clone();
    for a in also {
        let subject = effective.clone().unwrap_or(name.clone());
        let a = expand(&found.path, &a, &subject)?;
        enable_unit(tree, &a, done)?;
    }
    Ok(())
}

fn mask_unit(tree: &mut FileTree, unit: &str) -> Result<(), UnitsError> {
    let name = check_name(unit)?;
    let exists = UNIT_DIRS.iter().any(|d| {
        [unit.to_string(), name.template()].iter().any(|n| {
            tree.resolve(&format!("{d}/{n}"))
                .is_ok_and(|p| tree.get(&p).is_some())
        })
    });
    if !exists {
        tracing::warn!(
            unit,
            "masking a unit that no unit directory of the image has (a generated unit?)"
        );
    }
    link(tree, &format!("{ETC_UNITS}/{unit}"), "/dev/null", unit)
}

fn set_default(tree: &mut FileTree, target: &str) -> Result<(), UnitsError> {
    let name = check_name(target)?;
    if name.suffix != "target" || target == "default.target" {
        return Err(UnitsError::BadDefaultTarget(target.into()));
    }
    // An earlier default.target link of kiln's is replaced, not an error.
    let dest = format!("{ETC_UNITS}/default.target");
    if tree.get(&dest).is_some_and(|n| n.origin == ORIGIN) {
        tree.remove_subtree(&dest);
    }
    let found = find_file(tree, target)?.ok_or_else(|| UnitsError::UnknownUnit {
        unit: target.into(),
        looked_in: looked_in(),
    })?;
    link(tree, &dest, &format!("/{}", found.path), target)
}

#[cfg(test)]
mod tests;
