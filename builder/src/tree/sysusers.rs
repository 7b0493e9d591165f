//! Users and groups at build time, as `systemd-sysusers` and the Debian
//! maintainer scripts would create them on first install.
//!
//! The root is read-only at run time, so `systemd-sysusers.service` cannot
//! do this at boot. The builder starts from what base-passwd's postinst
//! copies (`passwd.master`, `group.master`), applies every `sysusers.d`
//! file with systemd-sysusers' own allocation rules (so the IDs match what
//! a Debian install would get), adds the groups udev's postinst makes, and
//! writes `/etc/{passwd,group,shadow,gshadow}` as `shadowconfig on` leaves
//! them (`x` in passwd, hashes in shadow).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{FileTree, Kind, Node, TreeError};

/// Where the sysusers.d files live, highest priority first (a file name in
/// an earlier directory hides the same name in later ones).
const CONF_DIRS: [&str; 4] = [
    "etc/sysusers.d",
    "run/sysusers.d",
    "usr/local/lib/sysusers.d",
    "usr/lib/sysusers.d",
];

/// Groups udev's postinst creates with `addgroup --system`, in its order.
const UDEV_GROUPS: [&str; 4] = ["input", "sgx", "kvm", "render"];

/// adduser's system GID range (`FIRST_SYSTEM_GID`..`LAST_SYSTEM_GID`).
const ADDUSER_SYSTEM_GIDS: std::ops::RangeInclusive<u32> = 100..=999;

/// Debian's `nologin`, the shell sysusers gives users without one.
const NOLOGIN: &str = "/usr/sbin/nologin";

const ORIGIN: &str = "kiln:sysusers";

/// Errors while creating users and groups.
#[derive(Debug, thiserror::Error)]
pub enum SysusersError {
    /// A sysusers.d line kiln cannot parse.
    #[error("/{file}:{line}: {message}")]
    Syntax {
        /// The configuration file (tree path).
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An existing account database line is malformed.
    #[error(
        "/{file}:{line}: malformed entry {entry:?}: expected {expected} colon-separated fields"
    )]
    Database {
        /// The database file (tree path).
        file: String,
        /// 1-based line number.
        line: usize,
        /// The line.
        entry: String,
        /// How many fields such a line has.
        expected: usize,
    },
    /// An entry cannot be created as configured.
    #[error("{source_line}: cannot create {what} {name:?}: {message}")]
    Create {
        /// `file:line` of the configuration line.
        source_line: String,
        /// `user` or `group`.
        what: &'static str,
        /// The name.
        name: String,
        /// Why, and what to do.
        message: String,
    },
    /// Reading or writing the tree failed.
    #[error("sysusers: {0}")]
    Tree(#[from] TreeError),
}

/// A user kiln created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedUser {
    /// Login name.
    pub name: String,
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// What asked for it (`/usr/lib/sysusers.d/x.conf:3`).
    pub source: String,
}

/// A group kiln created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedGroup {
    /// Group name.
    pub name: String,
    /// Group ID.
    pub gid: u32,
    /// What asked for it.
    pub source: String,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersReport {
    /// Users added, in creation order.
    pub users: Vec<CreatedUser>,
    /// Groups added, in creation order.
    pub groups: Vec<CreatedGroup>,
    /// `(group, user)` memberships added.
    pub members: Vec<(String, String)>,
    /// The sysusers.d files applied, in order (tree paths).
    pub files: Vec<String>,
}

/// Creates users and groups and writes the account databases into the tree.
/// Entries already in the tree's `/etc/passwd` and `/etc/group` (or, when
/// those are absent, in base-passwd's master files) are kept as they are.
pub fn apply(tree: &mut FileTree) -> Result<UsersReport, SysusersError> {
    let mut db = Database::load(tree)?;
    let config = Config::load(tree)?;
    let mut report = UsersReport {
        files: config.files.clone(),
        ..UsersReport::default()
    };
    let mut run = Run::new(&db, &config, tree);
    run.process(&config)?;
    run.finish(&mut db, &config, &mut report);
    add_udev_groups(&mut db, &mut report);
    db.write(tree)?;
    for u in &report.users {
        tracing::debug!(user = %u.name, uid = u.uid, gid = u.gid, source = %u.source, "created user");
    }
    for g in &report.groups {
        tracing::debug!(group = %g.name, gid = g.gid, source = %g.source, "created group");
    }
    Ok(report)
}

// ---------------------------------------------------------------------------
// Account databases

#[derive(Debug, Clone, PartialEq, Eq)]
struct PwEntry {
    name: String,
    passwd: String,
    uid: u32,
    gid: u32,
    gecos: String,
    home: String,
    shell: String,
    /// Whether sysusers created it (its shadow line then has sysusers' form).
    created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GrEntry {
    name: String,
    passwd: String,
    gid: u32,
    members: Vec<String>,
    /// Password kiln gives a new group in gshadow (`None`: pre-existing).
    new_gshadow: Option<&'static str>,
}

#[derive(Debug, Default)]
struct Database {
    users: Vec<PwEntry>,
    groups: Vec<GrEntry>,
    /// Existing shadow lines by user name, kept verbatim.
    shadow: BTreeMap<String, String>,
    /// Existing gshadow lines by group name, kept verbatim.
    gshadow: BTreeMap<String, String>,
}

impl Database {
    fn load(tree: &FileTree) -> Result<Database, SysusersError> {
        let mut db = Database::default();
        if let Some((file, text)) =
            first_existing(tree, &["etc/passwd", "usr/share/base-passwd/passwd.master"])?
        {
            for_each_record(&file, &text, 7, |f| {
                db.users.push(PwEntry {
                    name: f[0].to_string(),
                    passwd: f[1].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    gecos: f[4].to_string(),
                    home: f[5].to_string(),
                    shell: f[6].to_string(),
                    created: false,
                });
                Some(())
            })?;
        } else {
            tracing::debug!("no /etc/passwd and no base-passwd master file: starting from an empty user database");
        }
        if let Some((file, text)) =
            first_existing(tree, &["etc/group", "usr/share/base-passwd/group.master"])?
        {
            for_each_record(&file, &text, 4, |f| {
                db.groups.push(GrEntry {
                    name: f[0].to_string(),
                    passwd: f[1].to_string(),
                    gid: f[2].parse().ok()?,
                    members: f[3]
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                    new_gshadow: None,
                });
                Some(())
            })?;
        }
        for (path, map) in [
            ("etc/shadow", &mut db.shadow),
            ("etc/gshadow", &mut db.gshadow),
        ] {
            if let Some((_, text)) = first_existing(tree, &[path])? {
                for line in text.lines() {
                    if let Some((name, _)) = line.split_once(':') {
                        map.insert(name.to_string(), line.to_string());
                    }
                }
            }
        }
        Ok(db)
    }

    fn group_by_name(&self, name: &str) -> Option<&GrEntry> {
        self.groups.iter().find(|g| g.name == name)
    }

    fn write(&self, tree: &mut FileTree) -> Result<(), SysusersError> {
        let days = tree.epoch().max(0) / 86_400;
        let mut passwd = String::new();
        let mut shadow = String::new();
        for u in &self.users {
            passwd.push_str(&format!(
                "{}:x:{}:{}:{}:{}:{}\n",
                u.name, u.uid, u.gid, u.gecos, u.home, u.shell
            ));
            if let Some(line) = self.shadow.get(&u.name) {
                shadow.push_str(line);
                shadow.push('\n');
            } else if u.created {
                shadow.push_str(&format!("{}:!*:{days}::::::\n", u.name));
            } else {
                // What pwconv writes for a pre-existing entry: its password
                // field moves here, ageing from login.defs' defaults.
                let pw = if u.passwd == "x" {
                    "*"
                } else {
                    u.passwd.as_str()
                };
                shadow.push_str(&format!("{}:{pw}:{days}:0:99999:7:::\n", u.name));
            }
        }
        let mut group = String::new();
        let mut gshadow = String::new();
        for g in &self.groups {
            let members = g.members.join(",");
            group.push_str(&format!("{}:x:{}:{members}\n", g.name, g.gid));
            if let Some(line) = self.gshadow.get(&g.name) {
                gshadow.push_str(line);
                gshadow.push('\n');
            } else {
                let pw = match g.new_gshadow {
                    Some(pw) => pw,
                    None if g.passwd == "x" => "*",
                    None => g.passwd.as_str(),
                };
                gshadow.push_str(&format!("{}:{pw}::{members}\n", g.name));
            }
        }
        let epoch = tree.epoch();
        let shadow_gid = self.group_by_name("shadow").map(|g| g.gid).unwrap_or(0);
        tree.insert(
            "etc/passwd",
            Node::file(passwd.into_bytes(), 0o644, epoch, ORIGIN),
        )?;
        tree.insert(
            "etc/group",
            Node::file(group.into_bytes(), 0o644, epoch, ORIGIN),
        )?;
        for (path, text) in [("etc/shadow", shadow), ("etc/gshadow", gshadow)] {
            let mut node = Node::file(text.into_bytes(), 0o640, epoch, ORIGIN);
            node.gid = shadow_gid;
            tree.insert(path, node)?;
        }
        Ok(())
    }
}

/// The text of the first of `paths` that is a regular file in the tree.
/// Hands the fields of every entry of a colon-separated database file
/// (passwd, group) to `record`. Blank and `#` lines are skipped; a line
/// without exactly `expected` fields, or one `record` rejects (returns
/// `None`, e.g. a non-numeric id), is an error naming the file and line.
fn for_each_record(
    file: &str,
    text: &str,
    expected: usize,
    mut record: impl FnMut(&[&str]) -> Option<()>,
) -> Result<(), SysusersError> {
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() != expected || record(&fields).is_none() {
            return Err(SysusersError::Database {
                file: file.to_string(),
                line: i + 1,
                entry: line.to_string(),
                expected,
            });
        }
    }
    Ok(())
}

fn first_existing(
    tree: &FileTree,
    paths: &[&str],
) -> Result<Option<(String, String)>, SysusersError> {
    for p in paths {
        match tree.read(p) {
            Ok(data) => {
                return Ok(Some((
                    p.to_string(),
                    String::from_utf8_lossy(&data).into_owned(),
                )))
            }
            Err(TreeError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Configuration

/// How an ID was given in a `u` or `g` line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdSpec {
    /// `-`: allocate one.
    Auto,
    /// A number.
    Number(u32),
    /// An absolute path: use the owner of that file.
    Path(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct UserItem {
    name: String,
    uid: IdSpec,
    /// From `uid:gid`: a GID number (must exist) or a group name.
    group: Option<GroupRef>,
    gecos: String,
    home: String,
    shell: String,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GroupRef {
    Gid(u32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupItem {
    name: String,
    gid: IdSpec,
    source: String,
}

#[derive(Debug, Default)]
struct Config {
    users: Vec<UserItem>,
    groups: Vec<GroupItem>,
    /// group → users, in first-seen order.
    members: Vec<(String, Vec<String>, String)>,
    ranges: Vec<(u32, u32)>,
    files: Vec<String>,
    /// login.defs bounds for the default range.
    default_range: (u32, u32),
}

impl Config {
    fn load(tree: &FileTree) -> Result<Config, SysusersError> {
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
    fn allocation_ranges(&self) -> Vec<(u32, u32)> {
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

// ---------------------------------------------------------------------------
// Allocation (systemd-sysusers' rules)

/// One creation in progress.
#[derive(Debug, Clone)]
struct Pending {
    name: String,
    id: u32,
    source: String,
    /// Created for a `g` line (not as a user's own group).
    from_group_line: bool,
}

struct Run<'a> {
    tree: &'a FileTree,
    /// Existing users: name → uid, uid → name.
    user_by_name: HashMap<String, u32>,
    user_by_id: HashMap<u32, String>,
    /// Existing groups: name → gid, gid → name.
    group_by_name: HashMap<String, u32>,
    group_by_id: HashMap<u32, String>,
    todo_users: Vec<(Pending, u32 /* gid */, UserItem)>,
    todo_groups: Vec<Pending>,
    ranges: Vec<(u32, u32)>,
    /// Allocation cursor: the next candidate is strictly below it.
    search: Option<u32>,
}

/// What a `u` or `g` item carries into group creation.
struct GroupRequest<'b> {
    name: &'b str,
    gid: Option<u32>,
    /// The GID was given as a number in `uid:gid`: it must exist already.
    strict: bool,
    uid_hint: Option<u32>,
    path: Option<&'b str>,
    source: &'b str,
    from_group_line: bool,
}

impl<'a> Run<'a> {
    fn new(db: &Database, config: &Config, tree: &'a FileTree) -> Run<'a> {
        Run {
            tree,
            user_by_name: db.users.iter().map(|u| (u.name.clone(), u.uid)).collect(),
            user_by_id: db.users.iter().map(|u| (u.uid, u.name.clone())).collect(),
            group_by_name: db.groups.iter().map(|g| (g.name.clone(), g.gid)).collect(),
            group_by_id: db.groups.iter().map(|g| (g.gid, g.name.clone())).collect(),
            todo_users: Vec::new(),
            todo_groups: Vec::new(),
            ranges: config.allocation_ranges(),
            search: None,
        }
    }

    fn process(&mut self, config: &Config) -> Result<(), SysusersError> {
        let mut users = config.users.clone();
        let mut groups = config.groups.clone();
        // `m` lines create the users and groups they name when no line does.
        for (group, members, source) in &config.members {
            for m in members {
                if !users.iter().any(|u| &u.name == m) {
                    users.push(UserItem {
                        name: m.clone(),
                        uid: IdSpec::Auto,
                        group: None,
                        gecos: String::new(),
                        home: "/".into(),
                        shell: String::new(),
                        source: source.clone(),
                    });
                }
            }
            if !users.iter().any(|u| &u.name == group) && !groups.iter().any(|g| &g.name == group) {
                groups.push(GroupItem {
                    name: group.clone(),
                    gid: IdSpec::Auto,
                    source: source.clone(),
                });
            }
        }
        // Groups first, in line order; a user whose name has a `g` line
        // then joins that group.
        for g in &groups {
            let (gid, path) = match &g.gid {
                IdSpec::Auto => (None, None),
                IdSpec::Number(n) => (Some(*n), None),
                IdSpec::Path(p) => (None, Some(p.as_str())),
            };
            let req = GroupRequest {
                name: &g.name,
                gid,
                strict: false,
                uid_hint: None,
                path,
                source: &g.source,
                from_group_line: true,
            };
            self.add_group(&req)?;
        }
        for u in &users {
            self.add_user_with_group(u)?;
        }
        Ok(())
    }

    fn add_user_with_group(&mut self, u: &UserItem) -> Result<(), SysusersError> {
        let uid_hint = match u.uid {
            IdSpec::Number(n) => Some(n),
            _ => None,
        };
        let path = match &u.uid {
            IdSpec::Path(p) => Some(p.as_str()),
            _ => None,
        };
        let numeric_gid = match u.group {
            Some(GroupRef::Gid(n)) => Some(n),
            _ => None,
        };
        let group_key = match &u.group {
            Some(GroupRef::Name(g)) => g.as_str(),
            _ => u.name.as_str(),
        };
        // As sysusers does: a group being created from a `g` line of that
        // name is the user's group; else a named group must exist; else the
        // user's own group is found or created.
        let pending = self
            .todo_groups
            .iter()
            .find(|g| g.from_group_line && g.name == group_key)
            .map(|g| g.id);
        let gid = if let Some(gid) = pending {
            gid
        } else if let Some(GroupRef::Name(g)) = &u.group {
            match self.group_by_name.get(g) {
                Some(&gid) => gid,
                None => {
                    return Err(SysusersError::Create {
                        source_line: u.source.clone(),
                        what: "user",
                        name: u.name.clone(),
                        message: format!("group {g:?} does not exist; add a `g {g} -` line"),
                    })
                }
            }
        } else {
            let req = GroupRequest {
                name: &u.name,
                gid: numeric_gid,
                strict: numeric_gid.is_some(),
                uid_hint,
                path,
                source: &u.source,
                from_group_line: false,
            };
            self.add_group(&req)?
        };
        // With its group given explicitly, the UID need not avoid GIDs.
        self.add_user(u, gid, path, pending.is_some() || u.group.is_some())
    }

    /// systemd-sysusers' `gid_is_ok`: free in the group database and among
    /// pending groups, and (when `check_uid`) not a UID of another-named user.
    fn gid_is_ok(&self, gid: u32, name: &str, check_uid: bool) -> bool {
        if self.todo_groups.iter().any(|g| g.id == gid) || self.group_by_id.contains_key(&gid) {
            return false;
        }
        if check_uid {
            if self
                .todo_users
                .iter()
                .any(|(p, _, _)| p.id == gid && p.name != name)
            {
                return false;
            }
            if self.user_by_id.get(&gid).is_some_and(|n| n != name) {
                return false;
            }
        }
        true
    }

    /// systemd-sysusers' `uid_is_ok`.
    fn uid_is_ok(&self, uid: u32, name: &str, check_gid: bool) -> bool {
        if self.todo_users.iter().any(|(p, _, _)| p.id == uid) {
            return false;
        }
        if check_gid
            && self
                .todo_groups
                .iter()
                .any(|g| g.id == uid && g.name != name)
        {
            return false;
        }
        if self.user_by_id.contains_key(&uid) {
            return false;
        }
        if check_gid && self.group_by_id.get(&uid).is_some_and(|n| n != name) {
            return false;
        }
        true
    }

    /// The next free ID below the cursor inside the allocation ranges.
    fn next_lower(&mut self) -> Option<u32> {
        let candidate = match self.search {
            None => u32::MAX - 1,
            Some(0) => return None,
            Some(s) => s - 1,
        };
        let mut closest = None;
        for &(lo, hi) in &self.ranges {
            if candidate >= lo && candidate <= hi {
                self.search = Some(candidate);
                return Some(candidate);
            }
            if hi < candidate {
                closest = Some(hi);
            }
        }
        self.search = closest;
        closest
    }

    fn path_owner(&self, path: &str) -> Option<(u32, u32)> {
        let real = self.tree.resolve(path).ok()?;
        self.tree.get(&real).map(|n| (n.uid, n.gid))
    }

    fn add_group(&mut self, req: &GroupRequest<'_>) -> Result<u32, SysusersError> {
        if let Some(&gid) = self.group_by_name.get(req.name) {
            return Ok(gid);
        }
        let mut chosen = None;
        if let Some(gid) = req.gid {
            let ok = self.gid_is_ok(gid, req.name, false);
            if req.strict {
                if ok {
                    return Err(SysusersError::Create {
                        source_line: req.source.to_string(),
                        what: "group",
                        name: req.name.to_string(),
                        message: format!("please create GID {gid} first"),
                    });
                }
                return Ok(gid);
            }
            if ok {
                chosen = Some(gid);
            } else {
                tracing::debug!(group = req.name, gid, "suggested GID already used");
            }
        }
        if chosen.is_none() {
            if let Some(uid) = req.uid_hint {
                if self.gid_is_ok(uid, req.name, true) {
                    chosen = Some(uid);
                }
            }
        }
        if chosen.is_none() {
            if let Some((_, gid)) = req.path.and_then(|p| self.path_owner(p)) {
                if self.gid_is_ok(gid, req.name, true) {
                    chosen = Some(gid);
                }
            }
        }
        let gid = match chosen {
            Some(g) => g,
            None => loop {
                let Some(c) = self.next_lower() else {
                    return Err(SysusersError::Create {
                        source_line: req.source.to_string(),
                        what: "group",
                        name: req.name.to_string(),
                        message: format!("no free group ID left in the ranges {:?}", self.ranges),
                    });
                };
                if self.gid_is_ok(c, req.name, true) {
                    break c;
                }
            },
        };
        self.todo_groups.push(Pending {
            name: req.name.to_string(),
            id: gid,
            source: req.source.to_string(),
            from_group_line: req.from_group_line,
        });
        Ok(gid)
    }

    fn add_user(
        &mut self,
        u: &UserItem,
        gid: u32,
        path: Option<&str>,
        strict: bool,
    ) -> Result<(), SysusersError> {
        if self.user_by_name.contains_key(&u.name) {
            return Ok(());
        }
        let mut chosen = None;
        if let IdSpec::Number(uid) = u.uid {
            if self.uid_is_ok(uid, &u.name, !strict) {
                chosen = Some(uid);
            } else {
                tracing::debug!(user = %u.name, uid, "suggested UID already used");
            }
        }
        if chosen.is_none() {
            if let Some((uid, _)) = path.and_then(|p| self.path_owner(p)) {
                if self.uid_is_ok(uid, &u.name, true) {
                    chosen = Some(uid);
                }
            }
        }
        if chosen.is_none() && self.uid_is_ok(gid, &u.name, true) {
            chosen = Some(gid);
        }
        let uid = match chosen {
            Some(x) => x,
            None => loop {
                let Some(c) = self.next_lower() else {
                    return Err(SysusersError::Create {
                        source_line: u.source.clone(),
                        what: "user",
                        name: u.name.clone(),
                        message: format!("no free user ID left in the ranges {:?}", self.ranges),
                    });
                };
                if self.uid_is_ok(c, &u.name, true) {
                    break c;
                }
            },
        };
        let pending = Pending {
            name: u.name.clone(),
            id: uid,
            source: u.source.clone(),
            from_group_line: false,
        };
        self.todo_users.push((pending, gid, u.clone()));
        Ok(())
    }

    fn finish(self, db: &mut Database, config: &Config, report: &mut UsersReport) {
        for g in &self.todo_groups {
            db.groups.push(GrEntry {
                name: g.name.clone(),
                passwd: "x".into(),
                gid: g.id,
                members: Vec::new(),
                new_gshadow: Some("!*"),
            });
            report.groups.push(CreatedGroup {
                name: g.name.clone(),
                gid: g.id,
                source: g.source.clone(),
            });
        }
        for (p, gid, item) in &self.todo_users {
            let shell = if item.shell.is_empty() {
                if p.id == 0 {
                    "/bin/sh".to_string()
                } else {
                    NOLOGIN.to_string()
                }
            } else {
                item.shell.clone()
            };
            db.users.push(PwEntry {
                name: p.name.clone(),
                passwd: "x".into(),
                uid: p.id,
                gid: *gid,
                gecos: item.gecos.clone(),
                home: item.home.clone(),
                shell,
                created: true,
            });
            report.users.push(CreatedUser {
                name: p.name.clone(),
                uid: p.id,
                gid: *gid,
                source: p.source.clone(),
            });
        }
        for (group, users, _) in &config.members {
            let Some(g) = db.groups.iter_mut().find(|g| &g.name == group) else {
                continue;
            };
            let mut added = false;
            for u in users {
                if !g.members.contains(u) {
                    g.members.push(u.clone());
                    report.members.push((group.clone(), u.clone()));
                    added = true;
                }
            }
            if added {
                // sysusers rewrites a changed member list sorted and unique.
                let set: BTreeSet<String> = g.members.drain(..).collect();
                g.members = set.into_iter().collect();
                if let Some(line) = db.gshadow.remove(group) {
                    // Keep the existing gshadow password but refresh members.
                    let f: Vec<&str> = line.splitn(4, ':').collect();
                    let pw = f.get(1).copied().unwrap_or("!");
                    let admins = f.get(2).copied().unwrap_or("");
                    db.gshadow.insert(
                        group.clone(),
                        format!("{group}:{pw}:{admins}:{}", g.members.join(",")),
                    );
                }
            }
        }
    }
}

/// What udev's postinst does with `addgroup --system`: the lowest free GID
/// from adduser's system range, for each group still missing.
fn add_udev_groups(db: &mut Database, report: &mut UsersReport) {
    for name in UDEV_GROUPS {
        if db.group_by_name(name).is_some() {
            continue;
        }
        let used: BTreeSet<u32> = db.groups.iter().map(|g| g.gid).collect();
        let Some(gid) = ADDUSER_SYSTEM_GIDS.clone().find(|g| !used.contains(g)) else {
            tracing::warn!(
                group = name,
                "no free system GID for udev's group; udev rules naming it will log errors"
            );
            continue;
        };
        db.groups.push(GrEntry {
            name: name.to_string(),
            passwd: "x".into(),
            gid,
            members: Vec::new(),
            new_gshadow: Some("!"),
        });
        report.groups.push(CreatedGroup {
            name: name.to_string(),
            gid,
            source: "udev postinst (addgroup --system)".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_MASTER: &str = "root:*:0:0:root:/root:/bin/bash\n\
        daemon:*:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        sync:*:4:65534:sync:/bin:/bin/sync\n\
        nobody:*:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP_MASTER: &str =
        "root:*:0:\ndaemon:*:1:\nadm:*:4:\nshadow:*:42:\nusers:*:100:\nnogroup:*:65534:\n";

    fn base_tree() -> FileTree {
        let mut t = FileTree::new(86_400 * 20_000 + 5);
        t.insert(
            "usr/share/base-passwd/passwd.master",
            Node::file(
                PASSWD_MASTER.as_bytes().to_vec(),
                0o644,
                0,
                "pkg:base-passwd",
            ),
        )
        .unwrap();
        t.insert(
            "usr/share/base-passwd/group.master",
            Node::file(
                GROUP_MASTER.as_bytes().to_vec(),
                0o644,
                0,
                "pkg:base-passwd",
            ),
        )
        .unwrap();
        t
    }

    fn conf(t: &mut FileTree, path: &str, text: &str) {
        t.insert(
            path,
            Node::file(text.as_bytes().to_vec(), 0o644, 0, "pkg:test"),
        )
        .unwrap();
    }

    fn text(t: &FileTree, p: &str) -> String {
        String::from_utf8(t.read(p).unwrap().to_vec()).unwrap()
    }

    fn line<'a>(t: &'a str, name: &str) -> &'a str {
        t.lines()
            .find(|l| l.split(':').next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{t}"))
    }

    #[test]
    fn dynamic_ids_go_down_from_999_groups_first() {
        let mut t = base_tree();
        conf(
            &mut t,
            "usr/lib/sysusers.d/dbus.conf",
            "u messagebus - \"System Message Bus\"\n",
        );
        conf(
            &mut t,
            "usr/lib/sysusers.d/systemd-journal.conf",
            "g systemd-journal - -\n",
        );
        conf(
            &mut t,
            "usr/lib/sysusers.d/systemd-network.conf",
            "u systemd-network - \"systemd Network Management\"\n",
        );
        let r = apply(&mut t).unwrap();
        let p = text(&t, "etc/passwd");
        let g = text(&t, "etc/group");
        assert_eq!(line(&g, "systemd-journal"), "systemd-journal:x:999:");
        assert_eq!(
            line(&p, "messagebus"),
            "messagebus:x:998:998:System Message Bus:/:/usr/sbin/nologin"
        );
        assert_eq!(
            line(&p, "systemd-network"),
            "systemd-network:x:997:997:systemd Network Management:/:/usr/sbin/nologin"
        );
        // base-passwd entries keep their place and IDs, password moved to shadow.
        assert!(p.starts_with("root:x:0:0:root:/root:/bin/bash\n"), "{p}");
        assert_eq!(r.users.len(), 2);
        assert_eq!(r.files.len(), 3);
        // udev's groups come from adduser's range, lowest free first.
        assert_eq!(line(&g, "input"), "input:x:101:");
        assert_eq!(line(&g, "render"), "render:x:104:");
    }

    #[test]
    fn shadow_files_have_locked_passwords_and_shadow_group() {
        let mut t = base_tree();
        conf(
            &mut t,
            "usr/lib/sysusers.d/a.conf",
            "u svc - \"Service\" /var/lib/svc\n",
        );
        apply(&mut t).unwrap();
        let s = text(&t, "etc/shadow");
        assert_eq!(line(&s, "root"), "root:*:20000:0:99999:7:::");
        assert_eq!(line(&s, "svc"), "svc:!*:20000::::::");
        let gs = text(&t, "etc/gshadow");
        assert_eq!(line(&gs, "svc"), "svc:!*::");
        assert_eq!(line(&gs, "kvm"), "kvm:!::");
        assert_eq!(line(&gs, "adm"), "adm:*::");
        let n = t.get("etc/shadow").unwrap();
        assert_eq!((n.mode, n.uid, n.gid), (0o640, 0, 42));
        assert_eq!(t.get("etc/passwd").unwrap().mode, 0o644);
        assert_eq!(
            line(&text(&t, "etc/passwd"), "svc"),
            "svc:x:999:999:Service:/var/lib/svc:/usr/sbin/nologin"
        );
    }

    #[test]
    fn fixed_ids_uid_gid_pairs_members_and_ranges() {
        let mut t = base_tree();
        conf(
            &mut t,
            "usr/lib/sysusers.d/x.conf",
            "# comment\n\
             r - 500-509\n\
             g grp1 -\n\
             u fixed 321 \"Fixed\" /home/fixed /bin/sh\n\
             u paired 400:100 - /srv\n\
             u named -:adm\n\
             u daemon 7 - -\n\
             m fixed adm\n\
             m extra newgrp\n",
        );
        apply(&mut t).unwrap();
        let p = text(&t, "etc/passwd");
        let g = text(&t, "etc/group");
        assert_eq!(line(&g, "grp1"), "grp1:x:509:");
        assert_eq!(
            line(&p, "fixed"),
            "fixed:x:321:321:Fixed:/home/fixed:/bin/sh"
        );
        assert_eq!(line(&g, "fixed"), "fixed:x:321:");
        assert_eq!(
            line(&p, "paired"),
            "paired:x:400:100::/srv:/usr/sbin/nologin"
        );
        assert!(!g.lines().any(|l| l.starts_with("paired:")), "{g}");
        assert_eq!(line(&p, "named"), "named:x:507:4::/:/usr/sbin/nologin");
        // Existing entries are never duplicated or changed.
        assert_eq!(p.lines().filter(|l| l.starts_with("daemon:")).count(), 1);
        assert_eq!(
            line(&p, "daemon"),
            "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin"
        );
        assert_eq!(line(&g, "adm"), "adm:x:4:fixed");
        // `m` with unknown user and group creates both.
        assert_eq!(line(&g, "newgrp"), "newgrp:x:508:extra");
        assert_eq!(line(&p, "extra"), "extra:x:506:506::/:/usr/sbin/nologin");
        assert_eq!(line(&g, "extra"), "extra:x:506:");
    }

    #[test]
    fn etc_overrides_same_named_file_and_dev_null_masks() {
        let mut t = base_tree();
        conf(&mut t, "usr/lib/sysusers.d/a.conf", "u fromusr -\n");
        conf(&mut t, "etc/sysusers.d/a.conf", "u frometc -\n");
        conf(&mut t, "usr/lib/sysusers.d/b.conf", "u masked -\n");
        t.insert(
            "etc/sysusers.d/b.conf",
            Node::symlink("/dev/null", 0, "test"),
        )
        .unwrap();
        let r = apply(&mut t).unwrap();
        assert_eq!(
            r.users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            vec!["frometc"]
        );
        assert_eq!(r.files, vec!["etc/sysusers.d/a.conf".to_string()]);
    }

    #[test]
    fn existing_etc_files_win_over_master_and_rerun_is_stable() {
        let mut t = base_tree();
        conf(&mut t, "usr/lib/sysusers.d/a.conf", "u svc -\n");
        apply(&mut t).unwrap();
        let first: Vec<String> = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"]
            .iter()
            .map(|p| text(&t, p))
            .collect();
        let r = apply(&mut t).unwrap();
        assert!(r.users.is_empty() && r.groups.is_empty(), "{r:?}");
        let second: Vec<String> = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"]
            .iter()
            .map(|p| text(&t, p))
            .collect();
        assert_eq!(first, second);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        for (body, want) in [
            ("u ok -\nx bad -\n", "unknown line type"),
            ("\n\nu \"unterminated -\n", "unterminated"),
            ("u 9lives -\n", "not a valid user"),
            ("u a b c d e f g\n", "at most 6"),
            ("u a %H\n", "specifier %H"),
            ("r - 9-3\n", "bad range"),
        ] {
            let mut t = base_tree();
            conf(&mut t, "usr/lib/sysusers.d/z.conf", body);
            let e = apply(&mut t).unwrap_err().to_string();
            let n = body.lines().count();
            assert!(
                e.contains(&format!("/usr/lib/sysusers.d/z.conf:{n}")) && e.contains(want),
                "{body:?}: {e}"
            );
        }
    }

    #[test]
    fn malformed_passwd_and_group_lines_name_file_and_line() {
        for (path, body) in [
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/bash\nbad:x:zero:0:b:/:/bin/sh\n",
            ),
            ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nshort:x:1\n"),
            ("etc/group", "root:x:0:\n# comment\nstaff:x:notanumber:\n"),
        ] {
            let mut t = base_tree();
            conf(&mut t, path, body);
            let e = apply(&mut t).unwrap_err().to_string();
            let line = if path == "etc/group" { 3 } else { 2 };
            assert!(e.contains(&format!("/{path}:{line}")), "{body:?}: {e}");
        }
    }

    #[test]
    fn strict_gid_that_does_not_exist_is_an_error() {
        let mut t = base_tree();
        conf(&mut t, "usr/lib/sysusers.d/z.conf", "u svc 300:777\n");
        let e = apply(&mut t).unwrap_err().to_string();
        assert!(e.contains("z.conf:1") && e.contains("777"), "{e}");
    }

    #[test]
    fn path_ids_take_the_owner_of_the_file() {
        let mut t = base_tree();
        let mut n = Node::dir(0o755, 0, "pkg:x");
        n.uid = 555;
        n.gid = 556;
        t.insert("var/lib/owned", n).unwrap();
        let mut n = Node::file(b"x".to_vec(), 0o644, 0, "pkg:x");
        n.uid = 560;
        n.gid = 561;
        t.insert("var/lib/owned2", n).unwrap();
        conf(
            &mut t,
            "usr/lib/sysusers.d/z.conf",
            "g ogrp /var/lib/owned\nu ousr /var/lib/owned2\nu taken /var/lib/owned\n",
        );
        apply(&mut t).unwrap();
        assert_eq!(line(&text(&t, "etc/group"), "ogrp"), "ogrp:x:556:");
        assert_eq!(
            line(&text(&t, "etc/passwd"), "ousr"),
            "ousr:x:560:561::/:/usr/sbin/nologin"
        );
        // The owner's GID is taken by ogrp: the group is allocated instead.
        assert_eq!(
            line(&text(&t, "etc/passwd"), "taken"),
            "taken:x:555:999::/:/usr/sbin/nologin"
        );
    }

    #[test]
    fn agrees_with_systemd_sysusers() {
        referee(&[
            ("basic.conf", "g adm 4 -\ng tty 5 -\nu root 0 - /root /bin/bash\nu sync 4:65534 - /bin /bin/sync\n"),
            ("dbus.conf", "u messagebus - \"System Message Bus\"\n"),
            ("systemd-journal.conf", "g systemd-journal - -\n"),
            ("systemd-network.conf", "u systemd-network - \"systemd Network Management\"\n"),
            ("zz.conf", "g 'both' 990\nu both - \"Both\"\ng taken 998\nu wantsgid 65534\nm messagebus adm\nm newbie newgroup\n"),
        ]);
    }

    #[test]
    fn agrees_with_systemd_sysusers_on_ranges_and_collisions() {
        referee(&[
            ("a.conf", "r - 990-995\nr - 200-201\nu first -\ng second -\nu third 994\nu fourth -:adm /home/f\n"),
            ("b.conf", "u fifth 65534 \"Uid taken\"\ng sixth 993\nu seventh -\nu eighth 100:users\n"),
        ]);
    }

    /// The host's systemd-sysusers is the referee: same input, same IDs.
    fn referee(confs: &[(&str, &str)]) {
        let mut t = base_tree();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("usr/lib/sysusers.d")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD_MASTER).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP_MASTER).unwrap();
        for &(name, body) in confs {
            conf(&mut t, &format!("usr/lib/sysusers.d/{name}"), body);
            std::fs::write(dir.path().join("usr/lib/sysusers.d").join(name), body).unwrap();
        }
        let out = std::process::Command::new("systemd-sysusers")
            .arg(format!("--root={}", dir.path().display()))
            .output()
            .expect("systemd-sysusers (package systemd) must be installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        apply(&mut t).unwrap();
        // Compare everything but the password field (kiln runs pwconv's step too).
        let strip = |s: &str| -> Vec<String> {
            s.lines()
                .map(|l| {
                    let mut f: Vec<&str> = l.split(':').collect();
                    f[1] = "";
                    f.join(":")
                })
                .filter(|l| !UDEV_GROUPS.iter().any(|g| l.starts_with(&format!("{g}:"))))
                .collect()
        };
        for f in ["etc/passwd", "etc/group"] {
            let theirs = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert_eq!(strip(&text(&t, f)), strip(&theirs), "{f}");
        }
        // The four files pass shadow-utils' own consistency checks.
        let ro = dir.path().join("kiln");
        std::fs::create_dir_all(ro.join("etc")).unwrap();
        for f in ["passwd", "group", "shadow", "gshadow"] {
            std::fs::write(
                ro.join("etc").join(f),
                &*t.read(&format!("etc/{f}")).unwrap(),
            )
            .unwrap();
        }
        for tool in ["pwck", "grpck"] {
            // -q: report errors only (missing home directories are not errors).
            let out = std::process::Command::new(tool)
                .args(["-r", "-q", "-R"])
                .arg(&ro)
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{tool}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
