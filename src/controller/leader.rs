//! Leader election on a `coordination.k8s.io/v1` Lease, with a write fence.
//!
//! The algorithm is client-go's: the holder renews `renewTime` every retry period; a candidate
//! takes the Lease when it is free, released, or unchanged for a whole lease duration as seen by
//! its own monotonic clock (no clock comparison between machines). Every write is an update
//! guarded by `resourceVersion`, so two candidates cannot both win.
//!
//! The fence is what makes it safe: leadership counts from the moment a renewal was *sent*, and
//! ends `renew_deadline` later unless renewed again. A paused or partitioned leader therefore
//! stops writing before any other replica can see its lease expire (renew deadline < lease
//! duration). [`Fence::layer`] puts that check in front of every non-read request of the
//! operator's client, so no reconcile that wakes up late can write. A lost lease ends the process
//! (`run` returns), so it restarts as a standby with fresh caches.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// Leader-election settings, from `--leader-elect-*`.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (pod name plus a random suffix).
    pub identity: String,
    /// How long a standby waits, after the last change it saw, before taking the Lease.
    pub lease_duration: Duration,
    /// How long after its last successful renewal attempt the leader keeps writing.
    pub renew_deadline: Duration,
    /// How often the Lease is renewed or checked.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Checks the timing rules client-go also enforces; the message names the flags.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "--leader-elect-renew-deadline ({:?}) must be shorter than --leader-elect-lease-duration ({:?}): the leader must stop writing before a standby may take over",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(format!(
                "--leader-elect-retry-period ({:?}) must be above zero and shorter than --leader-elect-renew-deadline ({:?}), so a renewal can be retried before the deadline",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.lease_duration.as_secs() < 1 {
            return Err("--leader-elect-lease-duration must be at least 1s (the Lease stores whole seconds)".into());
        }
        Ok(())
    }
}

/// A unique identity for this process: the pod's name (or host) and a random suffix, so a
/// restarted pod with the same name never mistakes the old holder's lease for its own.
pub fn identity() -> String {
    use std::hash::{BuildHasher, Hasher};
    let base =
        std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "oim-operator".into());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    format!("{base}_{:08x}", h.finish() as u32)
}

/// Whether this process may write now. Without leader election it always may.
#[derive(Clone, Debug, Default)]
pub struct Fence {
    /// Until when writes are allowed; `None` = not leading. Absent fence state = no election.
    until: Option<Arc<Mutex<Option<Instant>>>>,
}

impl Fence {
    /// A fence that never closes (no leader election).
    pub fn open() -> Fence {
        Fence { until: None }
    }

    fn elected() -> Fence {
        Fence { until: Some(Arc::new(Mutex::new(None))) }
    }

    /// True while this replica leads (or when there is no election).
    pub fn may_write(&self) -> bool {
        match &self.until {
            None => true,
            Some(m) => lock(m).is_some_and(|t| Instant::now() < t),
        }
    }

    fn extend(&self, until: Instant) {
        if let Some(m) = &self.until {
            *lock(m) = Some(until);
        }
    }

    fn close(&self) {
        if let Some(m) = &self.until {
            *lock(m) = None;
        }
    }

    /// A tower layer for the operator's kube client that refuses every request other than a read
    /// while the fence is closed.
    pub fn layer(
        &self,
    ) -> tower::filter::FilterLayer<
        impl Fn(hyper::Request<kube::client::Body>) -> Result<hyper::Request<kube::client::Body>, tower::BoxError>
        + Clone
        + use<>,
    > {
        let fence = self.clone();
        tower::filter::FilterLayer::new(move |req: hyper::Request<kube::client::Body>| {
            let read = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS);
            if read || fence.may_write() { Ok(req) } else { Err(NotLeader.into()) }
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The write the fence refused.
#[derive(Debug, thiserror::Error)]
#[error("not the leader: the leader-election lease is not held (or was not renewed in time); write refused")]
pub struct NotLeader;

/// What the election loop reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for the Lease.
    Standby,
    /// Holding it.
    Leading,
    /// Held it and lost it (not renewed within the deadline, or taken): the process must end.
    Lost,
}

/// A running election.
pub struct Election {
    /// The fence the operator's client is built with.
    pub fence: Fence,
    state: watch::Receiver<State>,
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Election {
    /// Starts campaigning for the Lease with `client` (an unfenced client: renewals must go out
    /// even when the fence is closed).
    pub fn start(client: kube::Client, config: LeaseConfig) -> Election {
        let api = Api::<Lease>::namespaced(client, &config.namespace);
        let fence = Fence::elected();
        let (tx, state) = watch::channel(State::Standby);
        tokio::spawn(campaign(api.clone(), config.clone(), fence.clone(), tx));
        Election { fence, state, api, config }
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Resolves when this replica leads (false if the election ended first).
    pub async fn leading(&self) -> bool {
        let mut rx = self.state.clone();
        rx.wait_for(|s| *s != State::Standby).await.is_ok_and(|s| *s == State::Leading)
    }

    /// Resolves when leadership is lost.
    pub async fn lost(&self) {
        let mut rx = self.state.clone();
        let _ = rx.wait_for(|s| *s == State::Lost).await;
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once instead of waiting a
    /// lease duration. Only a Lease we still hold is touched.
    pub async fn release(&self) {
        self.fence.close();
        let attempt = async {
            let Some(mut lease) = self.api.get_opt(&self.config.name).await? else { return Ok(()) };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now());
            self.api.replace(&self.config.name, &PostParams::default(), &lease).await.map(|_| ())
        };
        match tokio::time::timeout(self.config.retry_period, attempt).await {
            Ok(Ok(())) => info!(lease = %self.config.name, "leader lease released"),
            Ok(Err(e)) => {
                warn!(lease = %self.config.name, error = %e, "leader lease not released; a standby takes over when it expires")
            }
            Err(_) => {
                warn!(lease = %self.config.name, "leader lease release timed out; a standby takes over when it expires")
            }
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// What a candidate last saw of someone else's Lease, and when (its own clock).
struct Observed {
    record: (Option<String>, Option<String>, Option<i32>),
    at: Instant,
}

/// The election loop: try to acquire or renew every retry period until lost or the receivers go.
async fn campaign(api: Api<Lease>, config: LeaseConfig, fence: Fence, tx: watch::Sender<State>) {
    let mut observed: Option<Observed> = None;
    let mut leading = false;
    loop {
        let sent = Instant::now();
        let attempt = tokio::time::timeout(config.retry_period, try_acquire_or_renew(&api, &config, &mut observed));
        match attempt.await {
            Ok(Ok(true)) => {
                fence.extend(sent + config.renew_deadline);
                if !leading {
                    leading = true;
                    info!(lease = %config.name, identity = %config.identity, "became the leader");
                    let _ = tx.send(State::Leading);
                }
            }
            Ok(Ok(false)) => {
                if leading {
                    return lose(&fence, &tx, &config, "another replica holds the lease");
                }
            }
            Ok(Err(e)) => warn!(lease = %config.name, error = %e, "leader lease not acquired or renewed"),
            Err(_) => warn!(lease = %config.name, "leader lease request timed out"),
        }
        if leading && !fence.may_write() {
            return lose(&fence, &tx, &config, "the lease was not renewed within the renew deadline");
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(config.retry_period).await;
    }
}

fn lose(fence: &Fence, tx: &watch::Sender<State>, config: &LeaseConfig, why: &str) {
    fence.close();
    warn!(lease = %config.name, identity = %config.identity, why, "leadership lost; stopping");
    let _ = tx.send(State::Lost);
}

/// One step: true when this replica holds the Lease after it.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(config.name.clone()), ..Default::default() },
            spec: Some(held_spec(config, None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let ours = holder.as_deref() == Some(config.identity.as_str());
    if !ours && holder.is_some() && !expired(&spec, observed, config) {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let acquired = if ours { spec.acquire_time.clone() } else { None };
    lease.spec = Some(held_spec(config, acquired, transitions));
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        // Someone else wrote in between: look again next round.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// True when someone else's Lease has not changed for a whole lease duration by our clock.
fn expired(spec: &LeaseSpec, observed: &mut Option<Observed>, config: &LeaseConfig) -> bool {
    let record =
        (spec.holder_identity.clone(), spec.renew_time.as_ref().map(|t| t.0.to_string()), spec.lease_duration_seconds);
    let changed = observed.as_ref().is_none_or(|o| o.record != record);
    if changed {
        *observed = Some(Observed { record, at: Instant::now() });
        return false;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(config.lease_duration, Duration::from_secs);
    observed.as_ref().is_some_and(|o| o.at.elapsed() >= duration)
}

fn held_spec(config: &LeaseConfig, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
    let now = now();
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "oim-system".into(),
            name: "oim-operator".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn timings_that_would_let_two_leaders_write_are_refused() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.renew_deadline = Duration::from_secs(15);
        assert!(c.validate().unwrap_err().contains("--leader-elect-renew-deadline"));
        let mut c = config();
        c.retry_period = Duration::from_secs(10);
        assert!(c.validate().unwrap_err().contains("--leader-elect-retry-period"));
    }

    #[test]
    fn a_fence_closes_at_its_deadline_and_an_open_fence_never_does() {
        assert!(Fence::open().may_write());
        let f = Fence::elected();
        assert!(!f.may_write(), "not leading yet");
        f.extend(Instant::now() + Duration::from_secs(60));
        assert!(f.may_write());
        f.extend(Instant::now() - Duration::from_millis(1));
        assert!(!f.may_write(), "past the renew deadline");
    }

    #[test]
    fn someone_elses_lease_expires_only_after_a_whole_unchanged_duration() {
        let mut c = config();
        c.lease_duration = Duration::from_millis(0);
        let spec =
            LeaseSpec { holder_identity: Some("b".into()), lease_duration_seconds: Some(0), ..Default::default() };
        let mut seen = None;
        assert!(!expired(&spec, &mut seen, &c), "first sight starts the clock");
        assert!(expired(&spec, &mut seen, &c), "unchanged for the (zero) duration");
        let renewed = LeaseSpec { renew_time: Some(now()), ..spec.clone() };
        assert!(!expired(&renewed, &mut seen, &c), "a renewal restarts the clock");
        let long = LeaseSpec { lease_duration_seconds: Some(3600), ..renewed };
        assert!(!expired(&long, &mut seen, &c));
        assert!(!expired(&long, &mut seen, &c), "the holder's own duration counts");
    }

    #[tokio::test]
    async fn a_closed_fence_refuses_writes_and_lets_reads_through() {
        use tower::{Layer, ServiceExt};
        let api = tower::service_fn(|_req: hyper::Request<kube::client::Body>| async {
            Ok::<_, tower::BoxError>(hyper::Response::new(()))
        });
        let request = |method: hyper::Method| {
            hyper::Request::builder()
                .method(method)
                .uri("/apis/apps/v1/deployments")
                .body(kube::client::Body::empty())
                .unwrap()
        };
        let fence = Fence::elected();
        let fenced = fence.layer().layer(api);
        assert!(fenced.clone().oneshot(request(hyper::Method::GET)).await.is_ok(), "reads pass a closed fence");
        for method in [hyper::Method::POST, hyper::Method::PUT, hyper::Method::PATCH, hyper::Method::DELETE] {
            let refused = fenced.clone().oneshot(request(method.clone())).await.unwrap_err();
            assert!(refused.to_string().contains("not the leader"), "{method}: {refused}");
        }
        fence.extend(Instant::now() + Duration::from_secs(60));
        assert!(fenced.clone().oneshot(request(hyper::Method::PATCH)).await.is_ok(), "the leader writes");
    }

    #[test]
    fn identities_differ_between_processes_with_one_pod_name() {
        assert_ne!(identity(), identity());
    }
}
