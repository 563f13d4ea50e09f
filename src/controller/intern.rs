//! One shared copy of the strings many cached objects repeat: label and annotation keys,
//! namespaces, owner kinds, and the stored selection every service of one model and profile
//! carries (a profile document and a rejected list of a few KB each).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Below this many entries the pool is never swept.
const SWEEP_FLOOR: usize = 1024;

/// A pool of shared strings; a string no cached object holds any more is dropped at the next
/// sweep, which runs when the pool has doubled since the last one (amortised O(1) per string).
#[derive(Default)]
pub struct Interner(Mutex<Pool>);

#[derive(Default)]
struct Pool {
    strings: HashSet<Arc<str>>,
    swept_at: usize,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&self, s: &str) -> Arc<str> {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = pool.strings.get(s) {
            return shared.clone();
        }
        if pool.strings.len() >= 2 * pool.swept_at.max(SWEEP_FLOOR) {
            pool.strings.retain(|s| Arc::strong_count(s) > 1);
            pool.swept_at = pool.strings.len();
        }
        let shared: Arc<str> = Arc::from(s);
        pool.strings.insert(shared.clone());
        shared
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().strings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy_and_unused_ones_are_dropped() {
        let pool = Interner::default();
        let a = pool.get("oim.opea.dev/profile");
        let b = pool.get("oim.opea.dev/profile");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        // Nothing holds the first string any more; filling the pool past its floor twice
        // sweeps it, while a string still held survives.
        let kept = pool.get("kept");
        for i in 0..4 * SWEEP_FLOOR {
            drop(pool.get(&format!("s{i}")));
        }
        assert!(pool.len() <= 2 * SWEEP_FLOOR + 1, "the pool stays bounded: {}", pool.len());
        assert!(Arc::ptr_eq(&kept, &pool.get("kept")));
    }
}
