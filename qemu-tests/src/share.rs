//! Sharing the machine's two cores between tests that boot VMs.
//!
//! TCG is CPU-bound: with `--test-threads=2`, a three-VM scenario next to another test's
//! VMs starves guests long enough for RCU stalls and for systemd's start timeouts. A test
//! thread that runs a VM holds a shared share (taken by [`crate::RunningVm::start`], given
//! back when its last VM stops); a multi-VM scenario takes the whole machine with
//! [`whole_machine`] and runs alone. The lock prefers a waiting scenario over new shares,
//! so it is not starved by a stream of single-VM tests.

use std::cell::{Cell, RefCell};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

static MACHINE: RwLock<()> = RwLock::new(());

/// Per test thread: how many of its VMs run, and its share while any does. A thread that
/// holds the whole machine has `whole` set and takes no share.
#[derive(Default)]
struct ThreadShare {
    vms: usize,
    guard: Option<RwLockReadGuard<'static, ()>>,
    whole: bool,
}

thread_local! {
    static SHARE: RefCell<ThreadShare> = RefCell::new(ThreadShare::default());
    /// Time this thread's test spent waiting for its share or the whole machine.
    static WAITED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Starts counting this thread's waits from zero (a new test on the thread).
pub(crate) fn reset_waited() {
    WAITED.with(|w| w.set(Duration::ZERO));
}

/// How long this thread waited for other tests' VMs since [`reset_waited`].
pub(crate) fn waited() -> Duration {
    WAITED.with(Cell::get)
}

fn add_waited(since: Instant) {
    WAITED.with(|w| w.set(w.get() + since.elapsed()));
}

/// The whole machine, for one multi-VM scenario; dropping it lets other tests boot again.
pub struct WholeMachine {
    _guard: RwLockWriteGuard<'static, ()>,
}

/// Waits until no other test runs a VM, then keeps them from starting any until the
/// returned value is dropped. Call it before the scenario's first VM starts.
pub fn whole_machine() -> WholeMachine {
    let asked = Instant::now();
    let guard = MACHINE.write().unwrap_or_else(|e| e.into_inner());
    add_waited(asked);
    SHARE.with(|s| s.borrow_mut().whole = true);
    WholeMachine { _guard: guard }
}

impl Drop for WholeMachine {
    fn drop(&mut self) {
        SHARE.with(|s| s.borrow_mut().whole = false);
    }
}

/// Called when this thread starts a VM: the first one takes the thread's share. Only one
/// share per thread, because a second read lock behind a waiting writer would deadlock.
pub(crate) fn vm_started() {
    SHARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.whole {
            return;
        }
        if s.vms == 0 {
            let asked = Instant::now();
            s.guard = Some(MACHINE.read().unwrap_or_else(|e| e.into_inner()));
            add_waited(asked);
        }
        s.vms += 1;
    });
}

/// Called when a VM started by this thread stops (a VM dropped on another thread leaves
/// its share with the starting thread until that thread ends).
pub(crate) fn vm_stopped() {
    SHARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.whole || s.vms == 0 {
            return;
        }
        s.vms -= 1;
        if s.vms == 0 {
            s.guard = None;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_scenario_waits_for_running_vms_and_then_runs_alone() {
        vm_started();
        vm_started();
        let (tx, rx) = mpsc::channel();
        let scenario = std::thread::spawn(move || {
            let _whole = whole_machine();
            tx.send(()).unwrap();
            // Its own VMs take no share: this would deadlock otherwise.
            vm_started();
            vm_stopped();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the scenario started while this thread's VMs ran"
        );
        vm_stopped();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        vm_stopped();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the scenario never got the machine");
        scenario.join().unwrap();
        // Free again for single VMs.
        vm_started();
        vm_stopped();
    }
}
