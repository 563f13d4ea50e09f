//! What `/readyz` and `/healthz` answer.
//!
//! Ready: the shared caches (nodes, pods, children) have listed once, on the leader and on
//! standbys alike, so a rollout waits for a replica that could take over at once.
//! Healthy: no reconcile has run past `stuck_after`. Every read a reconcile makes has its own
//! deadline (API requests, registry, hub), so one running that long is stuck, and a restart is
//! the remedy a liveness probe gives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Readiness and the reconcile watchdog.
pub struct Health {
    ready: AtomicBool,
    next: AtomicU64,
    running: Mutex<HashMap<u64, (String, Instant)>>,
    stuck_after: Duration,
}

impl Health {
    /// A watchdog that calls a reconcile running longer than `stuck_after` stuck.
    pub fn new(stuck_after: Duration) -> Health {
        Health { ready: AtomicBool::new(false), next: AtomicU64::new(0), running: Mutex::default(), stuck_after }
    }

    /// The caches have synced.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Acquire) { Ok(()) } else { Err("caches not synced yet".into()) }
    }

    /// `Ok` when no reconcile is stuck, else which one and for how long.
    pub fn liveness(&self) -> Result<(), String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.values().max_by_key(|(_, started)| started.elapsed()) {
            Some((what, started)) if started.elapsed() > self.stuck_after => Err(format!(
                "reconcile of {what} running for {}s (limit {}s)",
                started.elapsed().as_secs(),
                self.stuck_after.as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// Marks a reconcile of `what` as running until the guard drops.
    pub fn running(self: &Arc<Self>, what: String) -> Running {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (what, Instant::now()));
        Running { health: self.clone(), id }
    }
}

/// A reconcile in progress (see [`Health::running`]).
pub struct Running {
    health: Arc<Health>,
    id: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.health.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_the_caches_sync() {
        let h = Health::new(Duration::from_secs(60));
        assert!(h.readiness().is_err());
        h.set_ready();
        assert!(h.readiness().is_ok());
    }

    #[test]
    fn a_reconcile_running_past_the_limit_makes_the_process_unhealthy_until_it_ends() {
        let h = Arc::new(Health::new(Duration::from_millis(20)));
        let quick = h.running("OIMService team/a".into());
        drop(quick);
        let slow = h.running("OIMService team/b".into());
        assert!(h.liveness().is_ok(), "still within the limit");
        std::thread::sleep(Duration::from_millis(40));
        let why = h.liveness().unwrap_err();
        assert!(why.contains("OIMService team/b"), "{why}");
        drop(slow);
        assert!(h.liveness().is_ok());
    }
}
