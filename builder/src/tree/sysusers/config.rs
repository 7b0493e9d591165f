//! The sysusers.d files: which apply (`/etc` hides `/usr/lib`, a
//! `/dev/null` link masks) and what their `u`, `g`, `m` and `r` lines say.

use std::collections::BTreeMap;

use super::db::first_existing;
use super::SysusersError;
use crate::tree::{FileTree, Kind, Node, TreeError};

/// Where the sysusers.d files live, highest priority first (a file name in
/// an earlier directory hides the same name in later ones).
const CONF_DIRS: [&str; 4] = [
    "etc/sysusers.d",
    "run/sysusers.d",
    "usr/local/lib/sysusers.d",
    "usr/lib/sysusers.d",
];

/// How an ID was given in a `u` or `g` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IdSpec {
    /// `-`: allocate one.
    Auto,
    /// A number.
    Number(u32),
    /// An absolute path: use the owner of that file.
    Path(String),
}

/// A `u` line (or a user an `m` line implies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UserItem {
    pub(super) name: String,
    pub(super) uid: IdSpec,
    /// From `uid:gid`: a GID number (must exist) or a group name.
    pub(super) group: Option<GroupRef>,
    pub(super) gecos: String,
    pub(super) home: String,
    pub(super) shell: String,
    pub(super) source: String,
}

/// The group half of a `uid:gid` ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum GroupRef {
    Gid(u32),
    Name(String),
}

/// A `g` line (or a group an `m` line implies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupItem {
    pub(super) name: String,
    pub(super) gid: IdSpec,
    pub(super) source: String,
}

/// Every applicable sysusers.d line, deduplicated by name.
#[derive(Debug, Default)]
pub(super) struct Config {
    pub(super) users: Vec<UserItem>,
    pub(super) groups: Vec<GroupItem>,
    /// group → users, in first-seen order.
    pub(super) members: Vec<(String, Vec<String>, String)>,
    pub(super) ranges: Vec<(u32, u32)>,
    pub(super) files: Vec<String>,
    /// login.defs bounds for the default range.
    pub(super) default_range: (u32, u32),
}

impl Config {
    /// Reads and parses the sysusers.d files of the tree.
    pub(super) fn load(tree: &FileTree) -> Result<Config, SysusersError> {
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        for dir in CONF_DIRS {
            let real = match tree.resolve(dir) {
                Ok(r) => r,
                Err(TreeError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if tree.get(&real).map(|n| &n.kind) != Some(&Kind::Dir) {
                continue;
            }
            for name in tree.children(&real) {
                if name.ends_with(".conf") && !by_name.contains_key(&name) {
                    by_name.insert(name.clone(), format!("{dir}/{name}"));
                }
            }
        }
        let mut cfg = Config {
            default_range: login_defs_range(tree)?,
            ..Config::default()
        };
        for path in by_name.values() {
            // A symlink to /dev/null masks a file of the same name.
            if let Some(Node {
                kind: Kind::Symlink(t),
                ..
            }) = tree.get(path)
            {
                if t == "/dev/null" {
                    tracing::debug!(file = %path, "masked");
                    continue;
                }
            }
            let data = tree.read(path)?;
            let text = String::from_utf8_lossy(&data).into_owned();
            cfg.files.push(path.clone());
            cfg.parse(path, &text)?;
        }
        Ok(cfg)
    }

    fn parse(&mut self, file: &str, text: &str) -> Result<(), SysusersError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |message: String| SysusersError::Syntax {
                file: file.to_string(),
                line: i + 1,
                message,
            };
            let words = split_words(line).map_err(syntax)?;
            if words.len() > 6 {
                return Err(syntax(format!(
                    "{} fields, at most 6 are allowed (type name id gecos home shell)",
                    words.len()
                )));
            }
            let mut words = words.into_iter();
            let kind = words.next().unwrap_or_default();
            let field = |w: Option<String>| -> Result<Option<String>, SysusersError> {
                match w {
                    None => Ok(None),
                    Some(w) if w == "-" || w.is_empty() => Ok(None),
                    Some(w) => expand_specifiers(&w)
                        .map(Some)
                        .map_err(|m| SysusersError::Syntax {
                            file: file.to_string(),
                            line: i + 1,
                            message: m,
                        }),
                }
            };
            let name = field(words.next())?;
            let id = field(words.next())?;
            let gecos = field(words.next())?;
            let home = field(words.next())?;
            let shell = field(words.next())?;
            let source = format!("/{file}:{}", i + 1);
            match kind.as_str() {
                "u" | "u!" => {
                    let name = name.ok_or_else(|| syntax("`u` needs a user name".into()))?;
                    check_name(&name).map_err(syntax)?;
                    let (uid, group) = parse_user_id(id.as_deref()).map_err(syntax)?;
                    let item = UserItem {
                        name,
                        uid,
                        group,
                        gecos: gecos.unwrap_or_default(),
                        home: home.unwrap_or_else(|| "/".into()),
                        shell: shell.unwrap_or_default(),
                        source,
                    };
                    match self.users.iter().find(|u| u.name == item.name) {
                        Some(old) if !same_user(old, &item) => tracing::warn!(
                            user = %item.name, first = %old.source, ignored = %item.source,
                            "two different sysusers lines for one user: the first wins"
                        ),
                        Some(_) => {}
                        None => self.users.push(item),
                    }
                }
                "g" => {
                    let name = name.ok_or_else(|| syntax("`g` needs a group name".into()))?;
                    check_name(&name).map_err(syntax)?;
                    if gecos.is_some() || home.is_some() || shell.is_some() {
                        return Err(syntax("`g` takes only a name and an ID".into()));
                    }
                    let gid = match id {
                        None => IdSpec::Auto,
                        Some(p) if p.starts_with('/') => IdSpec::Path(p),
                        Some(n) => {
                            IdSpec::Number(n.parse().map_err(|_| syntax(format!("bad GID {n:?}")))?)
                        }
                    };
                    let item = GroupItem { name, gid, source };
                    match self.groups.iter().find(|g| g.name == item.name) {
                        Some(old) if old.gid != item.gid => tracing::warn!(
                            group = %item.name, first = %old.source, ignored = %item.source,
                            "two different sysusers lines for one group: the first wins"
                        ),
                        Some(_) => {}
                        None => self.groups.push(item),
                    }
                }
                "m" => {
                    let user = name.ok_or_else(|| syntax("`m` needs a user name".into()))?;
                    let group = id.ok_or_else(|| syntax("`m` needs a group name".into()))?;
                    check_name(&user).map_err(syntax)?;
                    check_name(&group).map_err(syntax)?;
                    if gecos.is_some() || home.is_some() || shell.is_some() {
                        return Err(syntax("`m` takes only a user and a group".into()));
                    }
                    match self.members.iter_mut().find(|(g, _, _)| *g == group) {
                        Some((_, users, _)) => {
                            if !users.contains(&user) {
                                users.push(user)
                            }
                        }
                        None => self.members.push((group, vec![user], source)),
                    }
                }
                "r" => {
                    if name.is_some() {
                        return Err(syntax("`r` takes `-` as its name".into()));
                    }
                    let range =
                        id.ok_or_else(|| syntax("`r` needs a range like 500-900".into()))?;
                    let parse = |s: &str| {
                        s.parse::<u32>()
                            .map_err(|_| syntax(format!("bad range {range:?}")))
                    };
                    let (lo, hi) = match range.split_once('-') {
                        Some((a, b)) => (parse(a)?, parse(b)?),
                        None => (parse(&range)?, parse(&range)?),
                    };
                    if lo > hi || lo == 0 {
                        return Err(syntax(format!(
                            "bad range {range:?}: expected LOW-HIGH with 0 < LOW <= HIGH"
                        )));
                    }
                    self.ranges.push((lo, hi));
                }
                other => {
                    return Err(syntax(format!(
                        "unknown line type {other:?}: expected u, g, m or r"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Allocation ranges, sorted and merged.
    pub(super) fn allocation_ranges(&self) -> Vec<(u32, u32)> {
        let mut r = if self.ranges.is_empty() {
            vec![self.default_range]
        } else {
            self.ranges.clone()
        };
        r.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::new();
        for (lo, hi) in r {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
    }
}

fn same_user(a: &UserItem, b: &UserItem) -> bool {
    a.uid == b.uid
        && a.group == b.group
        && a.gecos == b.gecos
        && a.home == b.home
        && a.shell == b.shell
}

/// The default system ID range: sysusers' compiled-in 1..999, narrowed by
/// `SYS_UID_MIN`/`SYS_UID_MAX`/`SYS_GID_MAX` if the image's login.defs sets them.
fn login_defs_range(tree: &FileTree) -> Result<(u32, u32), SysusersError> {
    let (mut lo, mut hi) = (1u32, 999u32);
    if let Some((_, text)) = first_existing(tree, &["etc/login.defs"])? {
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some(k), Some(v)) = (w.next(), w.next()) else {
                continue;
            };
            let Ok(v) = v.parse::<u32>() else { continue };
            match k {
                "SYS_UID_MIN" => lo = lo.max(v),
                "SYS_UID_MAX" | "SYS_GID_MAX" => hi = hi.min(v),
                _ => {}
            }
        }
    }
    Ok((lo, hi.max(lo)))
}

/// Splits a line into words: whitespace separates, `"..."` and `'...'`
/// quote, a backslash takes the next character literally.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                let n = chars.next().ok_or("line ends with a backslash")?;
                cur.push(n);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unterminated {q} quote"));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// kiln supports only the `%%` specifier: the others depend on the running
/// machine (host name, boot ID...), which a build does not have.
fn expand_specifiers(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('%') => out.push('%'),
                Some(x) => {
                    return Err(format!(
                    "specifier %{x} in {s:?} is not supported at build time; write the value out"
                ))
                }
                None => return Err(format!("{s:?} ends with a lone %")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// systemd's strict user/group name rule.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if first_ok && rest_ok && name.len() <= 31 {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid user or group name (letters, digits, _ - ., at most 31, not starting with a digit)"))
    }
}

fn parse_user_id(id: Option<&str>) -> Result<(IdSpec, Option<GroupRef>), String> {
    let Some(id) = id else {
        return Ok((IdSpec::Auto, None));
    };
    if id.starts_with('/') {
        return Ok((IdSpec::Path(id.to_string()), None));
    }
    let (uid, group) = match id.split_once(':') {
        Some((u, g)) => {
            let group = match g.parse::<u32>() {
                Ok(n) => GroupRef::Gid(n),
                Err(_) => {
                    check_name(g)?;
                    GroupRef::Name(g.to_string())
                }
            };
            (u, Some(group))
        }
        None => (id, None),
    };
    let uid = if uid == "-" {
        IdSpec::Auto
    } else {
        IdSpec::Number(uid.parse().map_err(|_| format!("bad UID {uid:?}"))?)
    };
    Ok((uid, group))
}
