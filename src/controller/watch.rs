//! How the operator's watches back off.

use std::time::Duration;

use kube::runtime::utils::Backoff as WatchBackoff;

/// The backoff of every watch the operator runs (and of a controller's triggers): 100 ms
/// doubling to 5 s, back to 100 ms after any event. After an API server restart each watch
/// fails once (its resource version expired); kube's default (0.8 s doubling to 30 s, reset
/// only after 2 quiet minutes, and a controller pauses *all* its triggers after an error of any
/// one) left services blind to their Deployments for minutes (the API server fault test saw 4).
pub struct FastBackoff(Duration);

impl FastBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
}

impl Iterator for FastBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.0;
        self.0 = (self.0 * 2).min(FastBackoff::MAX);
        Some(now)
    }
}

impl WatchBackoff for FastBackoff {
    fn reset(&mut self) {
        self.0 = FastBackoff::FIRST;
    }
}

/// A fresh [`FastBackoff`].
pub fn watch_backoff() -> FastBackoff {
    FastBackoff(FastBackoff::FIRST)
}
