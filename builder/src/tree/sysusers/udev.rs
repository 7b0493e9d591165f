//! The system groups udev's postinst creates, which no sysusers.d file
//! lists.

use std::collections::BTreeSet;

use super::db::{Database, GrEntry};
use super::{CreatedGroup, UsersReport};

/// Groups udev's postinst creates with `addgroup --system`, in its order.
pub(super) const UDEV_GROUPS: [&str; 4] = ["input", "sgx", "kvm", "render"];

/// adduser's system GID range (`FIRST_SYSTEM_GID`..`LAST_SYSTEM_GID`).
const ADDUSER_SYSTEM_GIDS: std::ops::RangeInclusive<u32> = 100..=999;

/// What udev's postinst does with `addgroup --system`: the lowest free GID
/// from adduser's system range, for each group still missing.
pub(super) fn add_udev_groups(db: &mut Database, report: &mut UsersReport) {
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
