//! The account databases: `/etc/{passwd,group,shadow,gshadow}` as the tree
//! has them (or base-passwd's master files), and as kiln writes them back.

use std::collections::BTreeMap;

use super::SysusersError;
use crate::tree::{FileTree, Node, TreeError};

/// Origin recorded on the database files kiln writes.
const ORIGIN: &str = "kiln:sysusers";

/// A passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PwEntry {
    pub(super) name: String,
    pub(super) passwd: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) gecos: String,
    pub(super) home: String,
    pub(super) shell: String,
    /// Whether sysusers created it (its shadow line then has sysusers' form).
    pub(super) created: bool,
}

/// A group entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GrEntry {
    pub(super) name: String,
    pub(super) passwd: String,
    pub(super) gid: u32,
    pub(super) members: Vec<String>,
    /// Password kiln gives a new group in gshadow (`None`: pre-existing).
    pub(super) new_gshadow: Option<&'static str>,
}

/// The four account databases, in file order.
#[derive(Debug, Default)]
pub(super) struct Database {
    pub(super) users: Vec<PwEntry>,
    pub(super) groups: Vec<GrEntry>,
    /// Existing shadow lines by user name, kept verbatim.
    pub(super) shadow: BTreeMap<String, String>,
    /// Existing gshadow lines by group name, kept verbatim.
    pub(super) gshadow: BTreeMap<String, String>,
}

impl Database {
    /// Reads the tree's databases (base-passwd's master files when there
    /// is no passwd or group).
    pub(super) fn load(tree: &FileTree) -> Result<Database, SysusersError> {
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

    /// The group called `name`.
    pub(super) fn group_by_name(&self, name: &str) -> Option<&GrEntry> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Writes passwd and group (0644) and shadow and gshadow (0640, group
    /// `shadow`), shadow lines in the form `shadowconfig on` leaves.
    pub(super) fn write(&self, tree: &mut FileTree) -> Result<(), SysusersError> {
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

/// The text of the first of `paths` that is a regular file in the tree.
pub(super) fn first_existing(
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
