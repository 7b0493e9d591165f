//! ID allocation by systemd-sysusers' rules, so the IDs match what a
//! Debian install would get.

use std::collections::{BTreeSet, HashMap};

use super::config::{Config, GroupItem, GroupRef, IdSpec, UserItem};
use super::db::{Database, GrEntry, PwEntry};
use super::{CreatedGroup, CreatedUser, SysusersError, UsersReport};
use crate::tree::FileTree;

/// Debian's `nologin`, the shell sysusers gives users without one.
const NOLOGIN: &str = "/usr/sbin/nologin";

/// One creation in progress.
#[derive(Debug, Clone)]
struct Pending {
    name: String,
    id: u32,
    source: String,
    /// Created for a `g` line (not as a user's own group).
    from_group_line: bool,
}

/// One allocation pass: the existing IDs and the users and groups
/// queued for creation.
pub(super) struct Run<'a> {
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
    /// Starts from the IDs `db` already holds and `config`'s ranges.
    pub(super) fn new(db: &Database, config: &Config, tree: &'a FileTree) -> Run<'a> {
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

    /// Queues every group, then every user, of `config` (in that order,
    /// as systemd-sysusers does).
    pub(super) fn process(&mut self, config: &Config) -> Result<(), SysusersError> {
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

    /// Adds the queued entries and memberships to `db` and lists them in
    /// `report`.
    pub(super) fn finish(self, db: &mut Database, config: &Config, report: &mut UsersReport) {
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
