//! Grouped commits: writes that arrive together share one transaction and one commit
//! (one fsync on SQLite, one WAL flush on PostgreSQL), and none of them returns before
//! the commit that holds it is durable, so an answer the client saw is never lost.
//!
//! The writer connection sits behind one lock. A write takes it, opens a transaction if
//! none is open (and brings the registry up to date, [`ops::sync`]), runs, and then
//! commits only when no other write is waiting for the lock (or the group is full);
//! otherwise it leaves the transaction to the next one. Either way it then waits for the
//! commit of its group. A commit that fails fails every write in the group; each one
//! retries on its own when the failure was temporary. A write that fails (rather than
//! being refused) rolls the whole group back, since part of it may be in the
//! transaction; the others retry.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::feed::Feed;
use super::ops::{self, Pending, Tx, Work};
use super::registry::Registry;
use super::StoreError;

/// Most writes in one group: bounds how long the first one waits for the commit.
const MAX_GROUP: usize = 64;
/// Tries per write when the failure is temporary.
const ATTEMPTS: u32 = 5;
/// Failed groups remembered for the writes waiting on them.
const KEEP_FAILED: usize = 64;

/// A backend's writer connection.
pub(crate) trait Conn: Send {
    /// Opens a write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: BEGIN and the
    /// advisory write lock), reconnecting first if the connection was lost.
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Commits the open transaction.
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Rolls the open transaction back (best effort: a lost connection rolled it back).
    fn rollback(&mut self);
    /// Row access inside the open transaction.
    fn tx(&mut self) -> Result<Box<dyn Tx + '_>, StoreError>;
}

struct Writer<C> {
    conn: C,
    open: bool,
    /// The number of the open (or last) group.
    epoch: u64,
    /// Writes run in the open group.
    ops: usize,
    reg: Registry,
    touched: BTreeSet<String>,
    full: bool,
    pending: Pending,
}

#[derive(Default)]
struct Done {
    /// Every group up to this one has committed or failed.
    finished: u64,
    failed: VecDeque<(u64, StoreError)>,
}

/// The writer connection and its grouped commits.
pub(crate) struct Group<C> {
    writer: Mutex<Writer<C>>,
    /// Writes waiting for the writer lock: while there are any, a write leaves its
    /// transaction open for them.
    pub(crate) waiting: AtomicUsize,
    /// Groups committed so far.
    pub(crate) commits: AtomicUsize,
    done: Mutex<Done>,
    finished: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the writer leaves at most an open transaction: the next
    // write finds it open and carries on, or its commit fails and everyone retries.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<C: Conn> Group<C> {
    /// Groups over this connection (no transaction open).
    pub(crate) fn new(conn: C) -> Group<C> {
        Group {
            writer: Mutex::new(Writer {
                conn,
                open: false,
                epoch: 0,
                ops: 0,
                reg: Registry::default(),
                touched: BTreeSet::new(),
                full: false,
                pending: Pending::default(),
            }),
            waiting: AtomicUsize::new(0),
            commits: AtomicUsize::new(0),
            done: Mutex::new(Done::default()),
            finished: Condvar::new(),
        }
    }

    /// Runs `f` in a grouped transaction; returns once its group is committed. What the
    /// group changed in the peer list goes to `feed` at the commit.
    pub(crate) fn write<T>(
        &self,
        feed: &Feed,
        f: &dyn Fn(&mut dyn Tx, &mut Work<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 1;
        loop {
            match self.once(feed, f) {
                Err(e) if e.retryable() && attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "retrying");
                    std::thread::sleep(Duration::from_millis(25 * u64::from(attempt)));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn once<T>(
        &self,
        feed: &Feed,
        f: &dyn Fn(&mut dyn Tx, &mut Work<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut w = lock(&self.writer);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if !w.open {
            w.conn.begin()?;
            w.open = true;
            w.epoch += 1;
            w.ops = 0;
        }
        let epoch = w.epoch;
        let first = w.ops == 0;
        let result = {
            let Writer {
                conn,
                reg,
                touched,
                full,
                pending,
                ..
            } = &mut *w;
            conn.tx().and_then(|mut tx| {
                let mut work = Work {
                    reg,
                    touched,
                    full,
                    pending,
                };
                if first || !work.reg.valid() {
                    ops::sync(&mut *tx, &mut work)?;
                }
                f(&mut *tx, &mut work)
            })
        };
        w.ops += 1;
        if let Err(e) = &result {
            if !matches!(e, StoreError::Refused(_)) {
                // Part of this write may be in the transaction: undo the whole group.
                self.abandon(&mut w, epoch, e);
                return result;
            }
        }
        if self.waiting.load(Ordering::SeqCst) == 0 || w.ops >= MAX_GROUP {
            self.commit(&mut w, feed);
        }
        drop(w);
        self.wait(epoch)?;
        result
    }

    fn abandon(&self, w: &mut Writer<C>, epoch: u64, e: &StoreError) {
        w.conn.rollback();
        w.open = false;
        w.pending = Pending::default();
        w.reg.invalidate();
        w.touched.clear();
        w.full = false;
        let others = StoreError::Backend {
            what: format!("another write in the same commit failed: {e}"),
            retry: true,
        };
        self.finish(epoch, Some(others));
    }

    fn commit(&self, w: &mut Writer<C>, feed: &Feed) {
        let epoch = w.epoch;
        w.open = false;
        let flushed = {
            let Writer { conn, pending, .. } = &mut *w;
            conn.tx().and_then(|mut tx| ops::flush(&mut *tx, pending))
        };
        w.pending = Pending::default();
        match flushed.and_then(|()| w.conn.commit()) {
            Ok(()) => {
                if std::mem::take(&mut w.full) {
                    let rows = w.reg.all().map(|(n, c)| (n.clone(), c)).collect();
                    if feed.loaded() {
                        feed.load(w.reg.version, rows);
                    }
                } else {
                    let rows = std::mem::take(&mut w.touched)
                        .iter()
                        .filter_map(|name| w.reg.get_changed(name))
                        .map(|(n, c)| (n.clone(), c))
                        .collect();
                    feed.apply(w.reg.version, rows);
                }
                w.touched.clear();
                self.commits.fetch_add(1, Ordering::SeqCst);
                self.finish(epoch, None);
            }
            Err(e) => {
                w.conn.rollback();
                w.reg.invalidate();
                w.touched.clear();
                w.full = false;
                self.finish(epoch, Some(e));
            }
        }
    }

    fn finish(&self, epoch: u64, failure: Option<StoreError>) {
        let mut d = lock(&self.done);
        d.finished = d.finished.max(epoch);
        if let Some(e) = failure {
            if d.failed.len() >= KEEP_FAILED {
                d.failed.pop_front();
            }
            d.failed.push_back((epoch, e));
        }
        self.finished.notify_all();
    }

    fn wait(&self, epoch: u64) -> Result<(), StoreError> {
        let mut d = lock(&self.done);
        while d.finished < epoch {
            d = self.finished.wait(d).unwrap_or_else(|p| p.into_inner());
        }
        match d.failed.iter().find(|(e, _)| *e == epoch) {
            Some((_, e)) => Err(e.clone()),
            None => Ok(()),
        }
    }
}
