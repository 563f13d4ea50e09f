//! Workloads first under load. When every reconcile slot of the service controllers is taken,
//! other services are waiting, and on a small control plane the API server is the bottleneck: a
//! Service create and a status write each cost it more than the Deployment that starts the pods.
//! So a reconcile that has just written a workload then leaves its Service and status owed and
//! returns; once the slots are no longer all taken (the backlog drained), every owed service is
//! woken and its revisit writes the rest, whatever the load. A revisit also comes after
//! [`MAX_DEFERRAL`] at the latest. kube's scheduler picks among waiting services in no order, so
//! the deferral, not a revisit timer, is what lets the workloads go first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use tokio::sync::Notify;

use crate::controller::limit::RECONCILES;

/// The longest a service waits for its Service and status while the backlog lasts.
pub const MAX_DEFERRAL: Duration = Duration::from_secs(30);

/// How often a backlog is looked at while services are owed their rest.
const LOOK: Duration = Duration::from_millis(500);

/// (namespace, name) of a service.
pub type Key = (String, String);

/// Service reconciles in flight, and the services owed their Service and status.
#[derive(Default)]
pub struct Reconciles {
    running: AtomicUsize,
    owed: Mutex<HashMap<Key, Instant>>,
    /// One wake channel per controller scope (`None`: every namespace).
    wakes: Mutex<Vec<(Option<String>, UnboundedSender<Key>)>>,
    owing: Notify,
}

/// One reconcile counted while it lives.
pub struct Running<'a>(&'a Reconciles);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Reconciles {
    /// Counts a reconcile until the guard drops.
    pub fn start(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(self)
    }

    /// Whether this reconcile of `key` is a revisit owed the rest (asked once, first): it then
    /// writes everything whatever the load.
    pub fn revisited(&self, key: &Key) -> bool {
        self.owed.lock().unwrap_or_else(|e| e.into_inner()).remove(key).is_some()
    }

    /// Whether the reconcile of `key`, having just written its workload, leaves the rest owed:
    /// when every slot is taken. The caller never asks on a revisit.
    pub fn defer_rest(&self, key: &Key) -> bool {
        if self.running.load(Ordering::Relaxed) < RECONCILES {
            return false;
        }
        self.owed.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), Instant::now());
        self.owing.notify_one();
        true
    }

    /// The wakes of owed services in `scope`, for that controller's `reconcile_on`.
    pub fn wakes(&self, scope: &Option<String>) -> UnboundedReceiver<Key> {
        let (tx, rx) = unbounded();
        self.wakes.lock().unwrap_or_else(|e| e.into_inner()).push((scope.clone(), tx));
        rx
    }

    /// Wakes the owed services once the slots are no longer all taken, and any owed longer than
    /// [`MAX_DEFERRAL`]. Returns whether none is owed any more.
    pub fn release(&self, now: Instant) -> bool {
        let quiet = self.running.load(Ordering::Relaxed) < RECONCILES;
        let due: Vec<Key> = {
            let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
            let due: Vec<Key> = owed
                .iter()
                .filter(|(_, since)| quiet || now.duration_since(**since) >= MAX_DEFERRAL)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &due {
                owed.remove(k);
            }
            due
        };
        let wakes = self.wakes.lock().unwrap_or_else(|e| e.into_inner());
        for key in due {
            if let Some((_, tx)) = wakes.iter().find(|(scope, _)| scope.as_ref().is_none_or(|s| *s == key.0)) {
                // A closed channel is a stopped controller: nothing to wake.
                let _ = tx.unbounded_send(key);
            }
        }
        self.owed.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Runs for the operator's life: while services are owed, looks every [`LOOK`] whether they
    /// can be woken.
    pub async fn keep_releasing(&self) {
        loop {
            self.owing.notified().await;
            loop {
                tokio::time::sleep(LOOK).await;
                if self.release(Instant::now()) {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn key(name: &str) -> Key {
        ("team-a".into(), name.into())
    }

    #[tokio::test]
    async fn while_every_slot_is_taken_the_rest_waits_and_is_woken_once_a_slot_frees() {
        let r = Reconciles::default();
        let mut wakes = r.wakes(&Some("team-a".into()));
        let one = r.start();
        assert!(!r.defer_rest(&key("a")), "alone: the Service and status are written at once");
        let others: Vec<_> = (1..RECONCILES).map(|_| r.start()).collect();
        assert!(r.defer_rest(&key("a")), "every slot taken: the rest is owed");
        assert!(!r.release(Instant::now()), "still a backlog: nobody is woken");
        drop(others);
        assert!(r.release(Instant::now()), "a slot free: every owed service is woken");
        assert_eq!(wakes.next().await, Some(key("a")));
        assert!(!r.revisited(&key("a")), "woken once, owed no more");
        drop(one);
    }

    #[tokio::test]
    async fn a_revisit_writes_whatever_the_load_and_nobody_waits_longer_than_the_bound() {
        let r = Reconciles::default();
        let mut everywhere = r.wakes(&None);
        let _all: Vec<_> = (0..RECONCILES).map(|_| r.start()).collect();
        assert!(r.defer_rest(&key("a")));
        assert!(r.revisited(&key("a")), "the revisit is told it owes the rest");
        assert!(!r.revisited(&key("a")), "and only once");
        assert!(!r.revisited(&key("b")), "a service never deferred owes nothing");
        assert!(r.defer_rest(&key("b")));
        assert!(!r.release(Instant::now()), "the backlog lasts");
        assert!(r.release(Instant::now() + MAX_DEFERRAL), "past the bound it is woken under load too");
        assert_eq!(everywhere.next().await, Some(key("b")));
    }
}
