//! The helper processes fixtures run (`redis-server`, the SMTP sink), tracked
//! so that they die with the test process even when no destructor runs.

use std::process::{Child, Command};
use std::sync::Mutex;

/// The pids of the helpers now running, for [`kill_all`].
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills every helper still running (before the process exits without
/// running destructors).
pub(crate) fn kill_all() {
    let pids = std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in pids {
        crate::signal(pid, "KILL");
    }
}

/// A running helper; dropping it kills it and waits for it.
pub(crate) struct Tracked(Child);

impl Tracked {
    /// Runs `command` (`what` names it in the panic when it cannot).
    pub(crate) fn spawn(command: &mut Command, what: &str) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Self(child)
    }

    pub(crate) fn child(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let pid = self.0.id();
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != pid);
    }
}
