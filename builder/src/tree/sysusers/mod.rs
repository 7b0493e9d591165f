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
//!
//! One job per file: `config` parses the sysusers.d files, `db` reads and
//! writes the account databases, `alloc` picks IDs by systemd-sysusers'
//! rules and `udev` adds the groups udev's postinst makes.

mod alloc;
mod config;
mod db;
mod udev;

use alloc::Run;
use config::Config;
use db::Database;
use udev::add_udev_groups;

use super::{FileTree, TreeError};

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

#[cfg(test)]
mod tests;
