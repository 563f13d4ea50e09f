//! Our own writes coming back as watch events.
//!
//! Every apply and status write we make is reported back by the watches a moment later. Those
//! events carry nothing new: reconciling again for them only re-reads what we just wrote (about
//! one extra reconcile per service per converging pass). Each write records the resourceVersion
//! the API server gave it; the watch event with exactly that version is dropped once. Anything
//! written after us has another version and wakes the owner as before, so nobody else's change
//! is ever missed.

use std::collections::HashMap;
use std::sync::Mutex;

/// resourceVersions of our latest write per object (`kind/namespace/name`).
#[derive(Default)]
pub struct Echoes(Mutex<HashMap<String, String>>);

impl Echoes {
    /// We wrote `key` and the server answered with `resource_version`.
    pub fn wrote(&self, key: String, resource_version: Option<String>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match resource_version {
            Some(rv) => map.insert(key, rv),
            None => map.remove(&key),
        };
    }

    /// True (once) when an event for `key` at `resource_version` is the echo of our last write.
    pub fn is_echo(&self, key: &str, resource_version: Option<&str>) -> bool {
        let Some(rv) = resource_version else { return false };
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|ours| ours == rv) {
            map.remove(key);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_event_of_our_own_write_is_dropped_and_only_once() {
        let echoes = Echoes::default();
        echoes.wrote("Deployment/team/llm".into(), Some("41".into()));
        assert!(!echoes.is_echo("Deployment/team/llm", Some("40")), "an older version is someone else's");
        assert!(!echoes.is_echo("Service/team/llm", Some("41")), "another object");
        assert!(echoes.is_echo("Deployment/team/llm", Some("41")));
        assert!(!echoes.is_echo("Deployment/team/llm", Some("41")), "a relist of the same version wakes again");
        echoes.wrote("Deployment/team/llm".into(), Some("45".into()));
        assert!(!echoes.is_echo("Deployment/team/llm", Some("46")), "written after us: wakes the owner");
    }
}
