//! The open-file limit. Every connection is a file descriptor; when the process runs out,
//! new clients wait in the kernel's accept queue and time out instead of getting an
//! answer. So `serve` raises the soft limit to the hard limit at start (the kernel allows
//! that without privileges) and keeps `--max-connections` below what it got.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept for everything but client connections: stdin/out/err, the listener,
/// the SQLite file with its WAL and shared-memory files (or PostgreSQL's pooled
/// connections), /dev/urandom, tokio's epoll and wake-up descriptors, and some margin.
pub const RESERVED: u64 = 64;

/// The limit as the process has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the ceiling for the soft one).
    pub hard: u64,
    /// The soft limit before [`raise`], when it was raised.
    pub raised_from: Option<u64>,
}

/// Reading or setting the limit failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} the open-file limit (RLIMIT_NOFILE): {source}")]
pub struct FdLimitError {
    what: &'static str,
    source: nix::Error,
}

/// Raises the soft limit to the hard one (nothing to do when they are equal). A hard
/// limit the kernel will not grant as a soft one (an "unlimited" hard limit above
/// fs.nr_open) leaves the soft limit as it was.
pub fn raise() -> Result<FdLimit, FdLimitError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| FdLimitError {
        what: "reading",
        source,
    })?;
    if soft >= hard {
        return Ok(FdLimit {
            soft,
            hard,
            raised_from: None,
        });
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(FdLimit {
            soft: hard,
            hard,
            raised_from: Some(soft),
        }),
        Err(nix::Error::EPERM | nix::Error::EINVAL) => Ok(FdLimit {
            soft,
            hard,
            raised_from: None,
        }),
        Err(source) => Err(FdLimitError {
            what: "raising",
            source,
        }),
    }
}

/// The number of connections that fits under `limit`, and a warning when that is fewer
/// than `wanted`.
pub fn fit(wanted: usize, limit: &FdLimit) -> (usize, Option<String>) {
    let room = limit.soft.saturating_sub(RESERVED).max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if wanted <= room {
        return (wanted, None);
    }
    let warning = format!(
        "--max-connections {wanted} does not fit the open-file limit ({} soft, {} hard, \
         {RESERVED} kept for the database and the runtime): serving at most {room} \
         connections at once; raise the hard limit (LimitNOFILE= in the systemd unit, \
         `ulimit -Hn` in a shell) to allow more",
        limit.soft, limit.hard
    );
    (room, Some(warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_kept_under_the_limit() {
        let low = FdLimit {
            soft: 256,
            hard: 256,
            raised_from: None,
        };
        let (n, warning) = fit(1024, &low);
        assert_eq!(n, 192);
        let warning = warning.unwrap();
        assert!(
            warning.contains("at most 192") && warning.contains("LimitNOFILE"),
            "{warning}"
        );
        assert_eq!(fit(100, &low), (100, None));
        let tiny = FdLimit {
            soft: 10,
            hard: 10,
            raised_from: None,
        };
        assert_eq!(fit(5, &tiny).0, 1);
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let got = raise().unwrap();
        assert!(got.soft <= got.hard);
        // Either raised to the hard limit, or the kernel refused a value above nr_open.
        assert!(got.soft == got.hard || got.raised_from.is_none(), "{got:?}");
    }
}
