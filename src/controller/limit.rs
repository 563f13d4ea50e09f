//! How many requests the operator keeps in flight at the API server: sized to the API server's
//! answers, not a constant.
//!
//! Every request of the operator's client (a watch only until its response starts) takes a slot;
//! the number of slots grows by one per answer under [`SLOW`] and shrinks by a quarter on a
//! slower answer or a failed request (AIMD, as TCP does). An idle or fast API server lets many
//! reconciles write at once; one that queues (API Priority and Fairness queues before it
//! refuses) gets fewer. The reconcile concurrency only caps memory: a reconcile waiting for a
//! slot holds shared snapshots, not copies.

use std::sync::Arc;
use std::time::Duration;

use tower_resilience_adaptive::{AdaptiveLimiterLayer, Aimd, ConcurrencyAlgorithm};

/// Slots at start.
pub const INITIAL: usize = 8;
/// Never fewer: leader election and status writes must get through an overloaded server.
pub const MIN: usize = 4;
/// Never more: also the number of reconciles in flight per controller.
pub const MAX: usize = 64;
/// An answer slower than this means the API server is queueing.
pub const SLOW: Duration = Duration::from_millis(250);

/// Reconciles in flight per controller. Each has one or two requests out at a time (the
/// workload, then the rest together), so 32 keep the client's 64 slots busy; more would only
/// hold more rendered objects in memory while waiting for a slot.
pub const RECONCILES: usize = MAX / 2;

/// The limit, shared by the client layer and the metrics.
#[derive(Clone)]
pub struct ApiLimit(Arc<Aimd>);

impl Default for ApiLimit {
    fn default() -> Self {
        let aimd = Aimd::builder()
            .initial_limit(INITIAL)
            .min_limit(MIN)
            .max_limit(MAX)
            .increase_by(1)
            .decrease_factor(0.75)
            .latency_threshold(SLOW)
            .build()
            .unwrap_or_else(|e| unreachable!("constant AIMD settings are valid: {e}"));
        ApiLimit(Arc::new(aimd))
    }
}

impl ApiLimit {
    /// The tower layer for the operator's kube client.
    pub fn layer(&self) -> AdaptiveLimiterLayer<ApiLimit> {
        AdaptiveLimiterLayer::new(self.clone())
    }

    /// Slots now.
    pub fn current(&self) -> usize {
        self.0.limit()
    }
}

impl ConcurrencyAlgorithm for ApiLimit {
    fn record_success(&self, latency: Duration) {
        self.0.record_success(latency);
    }

    fn record_failure(&self) {
        self.0.record_failure();
    }

    fn record_dropped(&self) {
        self.0.record_dropped();
    }

    fn limit(&self) -> usize {
        self.0.limit()
    }

    fn min_limit(&self) -> usize {
        self.0.min_limit()
    }

    fn max_limit(&self) -> usize {
        self.0.max_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[test]
    fn fast_answers_open_slots_slow_ones_or_failures_close_them_within_bounds() {
        let limit = ApiLimit::default();
        assert_eq!(limit.current(), INITIAL);
        for _ in 0..200 {
            limit.record_success(Duration::from_millis(5));
        }
        assert_eq!(limit.current(), MAX, "a fast API server gets every reconcile's writes at once");
        limit.record_success(Duration::from_secs(1));
        assert_eq!(limit.current(), MAX * 3 / 4, "a queueing one gets a quarter fewer");
        for _ in 0..50 {
            limit.record_failure();
        }
        assert_eq!(limit.current(), MIN, "never below the floor");
    }

    #[tokio::test]
    async fn requests_beyond_the_limit_wait_for_a_slot() {
        let limit = ApiLimit::default();
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let inner = {
            let started = started.clone();
            tower::service_fn(move |_: ()| {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut gate = gate_rx.clone();
                async move {
                    let _ = gate.wait_for(|open| *open).await;
                    Ok::<_, std::convert::Infallible>(())
                }
            })
        };
        let svc = tower::Layer::layer(&limit.layer(), inner);
        let calls: Vec<_> = (0..INITIAL + 3)
            .map(|_| {
                let mut s = svc.clone();
                tokio::spawn(async move { s.ready().await.unwrap().call(()).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), INITIAL, "the rest wait");
        gate_tx.send(true).unwrap();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), INITIAL + 3);
    }
}
