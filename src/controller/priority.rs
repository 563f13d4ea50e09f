//! Workloads first under load. On a small control plane the API server is the bottleneck, and a
//! Service create and a status write each cost it more than the Deployment that starts the pods.
//! So while other services wait for their first look at a change (their watch event has come,
//! their reconcile has not started), a reconcile that has just written a workload leaves its
//! Service and status owed and returns. Once nobody waits, every owed service is woken and its
//! revisit writes the rest, whatever the load; [`MAX_DEFERRAL`] bounds the wait. (kube's
//! scheduler picks among waiting services in no order, so only the deferral lets the workloads
//! go first.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use tokio::sync::Notify;

/// The longest a service waits for its Service and status while others wait.
pub const MAX_DEFERRAL: Duration = Duration::from_secs(30);

/// A change not looked at for this long no longer holds others back: its event was for an
/// object the controller no longer has (a deletion the watch missed).
const STALE: Duration = Duration::from_secs(60);

/// How often the owed services are looked at while there are any.
const LOOK: Duration = Duration::from_millis(500);

/// (namespace, name) of a service.
pub type Key = (String, String);

/// Services waiting for a first look at a change, and those owed their Service and status.
#[derive(Default)]
pub struct Backlog {
    waiting: Mutex<HashMap<Key, Instant>>,
    owed: Mutex<HashMap<Key, Instant>>,
    /// One wake channel per controller scope (`None`: every namespace).
    wakes: Mutex<Vec<(Option<String>, UnboundedSender<Key>)>>,
    owing: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backlog {
    /// A change of `key` came from the watch (not our own echo): its reconcile is due.
    pub fn arrived(&self, key: Key) {
        lock(&self.waiting).entry(key).or_insert_with(Instant::now);
    }

    /// `key` was deleted: nothing of it is due.
    pub fn gone(&self, key: &Key) {
        lock(&self.waiting).remove(key);
        lock(&self.owed).remove(key);
    }

    /// The watch lists again: what it lists arrives anew.
    pub fn relisting(&self) {
        lock(&self.waiting).clear();
    }

    /// The reconcile of `key` starts. Whether it is a revisit owed the rest: then it writes
    /// everything whatever the backlog.
    pub fn looked_at(&self, key: &Key) -> bool {
        lock(&self.waiting).remove(key);
        lock(&self.owed).remove(key).is_some()
    }

    /// Whether the reconcile of `key`, having just written its workload, leaves the rest owed:
    /// while other services wait for their first look. The caller never asks on a revisit.
    pub fn defer_rest(&self, key: &Key) -> bool {
        if !self.others_wait(Instant::now()) {
            return false;
        }
        lock(&self.owed).insert(key.clone(), Instant::now());
        self.owing.notify_one();
        true
    }

    fn others_wait(&self, now: Instant) -> bool {
        let mut waiting = lock(&self.waiting);
        waiting.retain(|_, since| now.duration_since(*since) < STALE);
        !waiting.is_empty()
    }

    /// The wakes of owed services in `scope`, for that controller's `reconcile_on`.
    pub fn wakes(&self, scope: &Option<String>) -> UnboundedReceiver<Key> {
        let (tx, rx) = unbounded();
        lock(&self.wakes).push((scope.clone(), tx));
        rx
    }

    /// Wakes the owed services once nobody waits, and any owed for [`MAX_DEFERRAL`]. Returns
    /// whether none is owed any more.
    pub fn release(&self, now: Instant) -> bool {
        let quiet = !self.others_wait(now);
        let due: Vec<Key> = {
            let mut owed = lock(&self.owed);
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
        let wakes = lock(&self.wakes);
        for key in due {
            if let Some((_, tx)) = wakes.iter().find(|(scope, _)| scope.as_ref().is_none_or(|s| *s == key.0)) {
                // A closed channel is a stopped controller: nothing to wake.
                let _ = tx.unbounded_send(key);
            }
        }
        lock(&self.owed).is_empty()
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
    async fn while_others_wait_for_a_first_look_the_rest_is_owed_and_woken_once_none_waits() {
        let b = Backlog::default();
        let mut wakes = b.wakes(&Some("team-a".into()));
        b.arrived(key("a"));
        assert!(!b.looked_at(&key("a")), "a first look owes nothing");
        assert!(!b.defer_rest(&key("a")), "nobody else waits: the Service and status are written at once");
        b.arrived(key("b"));
        b.arrived(key("c"));
        assert!(!b.looked_at(&key("b")));
        assert!(b.defer_rest(&key("b")), "c still waits: b's rest is owed");
        assert!(!b.release(Instant::now()), "c waits: nobody is woken");
        b.gone(&key("c"));
        assert!(b.release(Instant::now()), "nobody waits: every owed service is woken");
        assert_eq!(wakes.next().await, Some(key("b")));
        assert!(!b.looked_at(&key("b")), "woken once, owed no more");
    }

    #[tokio::test]
    async fn a_revisit_writes_whatever_the_backlog_and_nobody_waits_past_the_bound() {
        let b = Backlog::default();
        let mut everywhere = b.wakes(&None);
        b.arrived(key("waiting"));
        assert!(b.defer_rest(&key("a")));
        assert!(b.looked_at(&key("a")), "the revisit is told it owes the rest");
        assert!(!b.looked_at(&key("a")), "and only once");
        assert!(b.defer_rest(&key("b")));
        assert!(!b.release(Instant::now()), "the backlog lasts");
        assert!(b.release(Instant::now() + MAX_DEFERRAL), "past the bound it is woken all the same");
        assert_eq!(everywhere.next().await, Some(key("b")));
        // A change the controller never looks at (a deletion the watch missed) stops holding.
        assert!(b.defer_rest(&key("c")));
        assert!(b.release(Instant::now() + STALE), "a stale change holds nobody");
        assert_eq!(everywhere.next().await, Some(key("c")));
        b.arrived(key("d"));
        b.relisting();
        assert!(!b.defer_rest(&key("e")), "after a relist only what is listed again waits");
    }
}
