//! Workloads first under load. On a small control plane the API server is the bottleneck, and a
//! Service create and a status write each cost it more than the Deployment that starts the pods.
//! So while other services wait for their first look at a change (their watch event has come,
//! their reconcile has not started), a reconcile that has written a workload (and what its pods
//! need: PVC, claim templates) leaves the rest — Service, autoscaler, routes, pruning — and its
//! status owed, and returns. Its passes while owed write nothing more, whatever woke them, until
//! nobody waits or [`MAX_DEFERRAL`] has passed: then it is woken, and that revisit writes
//! everything. (kube's scheduler picks among waiting reconciles in no order, so only the
//! deferral lets the workloads go first.)

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use tokio::sync::Notify;

/// The longest a service waits for its Service and status while others wait.
pub const MAX_DEFERRAL: Duration = Duration::from_secs(30);

/// A change not looked at for this long no longer holds others back (longer than any backlog
/// measured: 10,000 services took 8 minutes); deletions and relists clear the rest.
const STALE: Duration = Duration::from_secs(600);

/// How often the owed services are looked at while there are any.
const LOOK: Duration = Duration::from_millis(500);

/// (namespace, name) of a service.
pub type Key = (String, String);

/// The backlog's key of a service (typed or not).
pub fn key_of<K: kube::Resource>(o: &K) -> Key {
    (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default())
}

/// What a reconcile of a service is, as the backlog sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Nothing owed: write everything, unless others wait after the workload is written.
    Fresh,
    /// The rest is owed since then, and not yet released: write nothing more while others wait.
    Owed(Instant),
    /// Released: write everything now, whatever the backlog.
    Released,
}

/// Services waiting for a first look at a change, and those owed their rest.
#[derive(Default)]
pub struct Backlog {
    waiting: Mutex<HashMap<Key, Instant>>,
    owed: Mutex<HashMap<Key, Instant>>,
    released: Mutex<HashSet<Key>>,
    /// One wake channel per controller scope (`None`: every namespace).
    wakes: Mutex<Vec<(Option<String>, UnboundedSender<Key>)>>,
    owing: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn in_scope(scope: &Option<String>, key: &Key) -> bool {
    scope.as_ref().is_none_or(|s| *s == key.0)
}

impl Backlog {
    /// A change of `key` came from the watch (not our own echo): its reconcile is due.
    pub fn arrived(&self, key: Key) {
        lock(&self.waiting).entry(key).or_insert_with(Instant::now);
    }

    /// `key` was deleted: nothing of it is due or owed.
    pub fn gone(&self, key: &Key) {
        lock(&self.waiting).remove(key);
        lock(&self.owed).remove(key);
        lock(&self.released).remove(key);
    }

    /// The watch of `scope` lists again: what it lists arrives anew.
    pub fn relisting(&self, scope: &Option<String>) {
        lock(&self.waiting).retain(|k, _| !in_scope(scope, k));
    }

    /// The reconcile of `key` starts: it is no longer waiting. Says what it owes.
    pub fn start_look(&self, key: &Key) -> Look {
        lock(&self.waiting).remove(key);
        if lock(&self.released).remove(key) {
            return Look::Released;
        }
        lock(&self.owed).get(key).map_or(Look::Fresh, |since| Look::Owed(*since))
    }

    /// After the workload: whether the reconcile of `key` (seen as `look`) leaves the rest owed
    /// — while others wait, and not past [`MAX_DEFERRAL`]. Otherwise it writes the rest and
    /// owes nothing any more.
    pub fn defer_rest(&self, key: &Key, look: Look) -> bool {
        let now = Instant::now();
        let since = match look {
            Look::Released => None,
            Look::Fresh => Some(now),
            Look::Owed(since) => Some(since).filter(|s| now.duration_since(*s) < MAX_DEFERRAL),
        };
        let defer = since.filter(|_| self.others_wait(now));
        match defer {
            Some(since) => {
                lock(&self.owed).insert(key.clone(), since);
                self.owing.notify_one();
            }
            None => {
                lock(&self.owed).remove(key);
            }
        }
        defer.is_some()
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

    /// Releases and wakes the owed services once nobody waits, and any owed for
    /// [`MAX_DEFERRAL`]. Returns whether none is owed any more.
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
        lock(&self.released).extend(due.iter().cloned());
        let wakes = lock(&self.wakes);
        for key in due {
            if let Some((_, tx)) = wakes.iter().find(|(scope, _)| in_scope(scope, &key)) {
                // A closed channel is a stopped controller: nothing to wake.
                let _ = tx.unbounded_send(key);
            }
        }
        lock(&self.owed).is_empty()
    }

    /// Runs for the operator's life: while services are owed, looks every [`LOOK`] whether they
    /// can be released.
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
    use futures::FutureExt;
    use futures::StreamExt;

    fn key(ns: &str, name: &str) -> Key {
        (ns.into(), name.into())
    }

    fn woken(rx: &mut UnboundedReceiver<Key>) -> Option<Key> {
        rx.next().now_or_never().flatten()
    }

    #[test]
    fn while_others_wait_the_rest_stays_owed_whatever_wakes_it_and_is_released_once_none_waits() {
        let b = Backlog::default();
        let mut wakes = b.wakes(&Some("team-a".into()));
        let (a, c, d) = (key("team-a", "a"), key("team-a", "c"), key("team-a", "d"));
        b.arrived(a.clone());
        let look = b.start_look(&a);
        assert_eq!(look, Look::Fresh);
        assert!(!b.defer_rest(&a, look), "nobody else waits: the rest is written at once");
        b.arrived(c.clone());
        b.arrived(d.clone());
        let look = b.start_look(&c);
        assert!(b.defer_rest(&c, look), "d still waits: c's rest is owed");
        // Something else wakes c (its Deployment's status): still owed while d waits.
        let look = b.start_look(&c);
        assert!(matches!(look, Look::Owed(_)));
        assert!(b.defer_rest(&c, look), "owed and d waits: nothing more is written");
        assert!(!b.release(Instant::now()), "d waits: nobody is released");
        assert_eq!(woken(&mut wakes), None);
        b.start_look(&d);
        assert!(b.release(Instant::now()), "nobody waits: every owed service is released");
        assert_eq!(woken(&mut wakes), Some(c.clone()));
        b.arrived(key("team-a", "e"));
        let look = b.start_look(&c);
        assert_eq!(look, Look::Released);
        assert!(!b.defer_rest(&c, look), "the released revisit writes everything, whatever waits");
        assert_eq!(b.start_look(&c), Look::Fresh, "and owes nothing after");
    }

    #[test]
    fn nobody_waits_past_the_bound_and_relists_and_deletions_clear_only_their_own() {
        let b = Backlog::default();
        let mut team_b = b.wakes(&Some("team-b".into()));
        let mut team_a = b.wakes(&Some("team-a".into()));
        let (a, x) = (key("team-a", "a"), key("team-b", "x"));
        b.arrived(key("team-a", "waiting"));
        assert!(b.defer_rest(&x, b.start_look(&x)));
        assert!(!b.release(Instant::now()), "the backlog lasts");
        assert!(b.release(Instant::now() + MAX_DEFERRAL), "past the bound it is released all the same");
        assert_eq!(woken(&mut team_b), Some(x.clone()), "woken in its own namespace's controller");
        assert_eq!(woken(&mut team_a), None);
        assert_eq!(b.start_look(&x), Look::Released);
        // An owed service past the bound writes the rest itself, backlog or not.
        let since = Instant::now() - MAX_DEFERRAL;
        assert!(!b.defer_rest(&a, Look::Owed(since)));
        // team-b relisting does not forget team-a's backlog; team-a's does.
        b.relisting(&Some("team-b".into()));
        assert!(b.defer_rest(&a, Look::Fresh), "team-a still waits");
        b.gone(&a);
        b.relisting(&Some("team-a".into()));
        assert!(!b.defer_rest(&a, Look::Fresh), "after its relist only what is listed again waits");
        // A change never looked at stops holding others back after STALE.
        b.arrived(key("team-a", "ghost"));
        assert!(b.defer_rest(&a, Look::Fresh));
        assert!(b.release(Instant::now() + STALE));
        assert_eq!(woken(&mut team_a), Some(a));
    }
}
