//! The OIMCache reconciler, a pipeline: dereference (catalog listing, PVC, Job and its pods) ->
//! select (the profile per node group present, pure) -> build (PVC and Job, pure, in `render`)
//! -> apply (create or adopt the PVC, run or replace the Job) -> status (one writer, from a
//! [`Report`]). A finalizer carries out `retentionPolicy` on deletion ([`cleanup`]).

mod cleanup;
mod dereference;
mod job;
mod pvc;
pub mod report;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

use crate::api::{CacheState, OIMCache};
use crate::controller::context::{Context, Error};
use crate::controller::model::{self, Facts};
use crate::profile::estimate::Arch;
use crate::profile::weights::{needs_model_facts, plan};
use crate::render::cache::JOB_HASH;
use dereference::Read;
pub use report::Report;

/// Keeps the cache until its retention policy has been carried out.
pub const FINALIZER: &str = "oim.opea.dev/cache-retention";

/// Reconciles one OIMCache, counted in the metrics by outcome.
pub async fn reconcile(cache: Arc<OIMCache>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let key = failure_key(&cache);
    let api: Api<OIMCache> = Api::namespaced(ctx.client.clone(), &cache.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, cache, |event| async {
        match event {
            Finalizer::Apply(c) => pipeline(&c, &ctx).await,
            Finalizer::Cleanup(c) => cleanup::run(&c, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    let outcome = result.as_ref().err().map_or("ok", Error::label);
    ctx.metrics.reconciled("oimcache", outcome, started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.succeeded(&key);
    }
    result
}

/// The backoff key of a cache.
pub fn failure_key(cache: &OIMCache) -> String {
    format!("OIMCache/{}/{}", cache.namespace().unwrap_or_default(), cache.name_any())
}

async fn pipeline(cache: &OIMCache, ctx: &Context) -> Result<Action, Error> {
    let world = match dereference::read(cache, ctx).await? {
        Read::NotSynced => return Ok(Action::requeue(Duration::from_secs(2))),
        Read::Blocked(report) => return report::finish(ctx, cache, report).await,
        Read::World(w) => w,
    };
    let arch = match model_facts(ctx, cache, &world).await? {
        Ok(a) => a,
        Err((report, retry)) => {
            report::finish(ctx, cache, report).await?;
            return Ok(Action::requeue(retry));
        }
    };
    let (wanted, group) = match plan(cache, &world.profiles, &world.nodes, &ctx.engines, arch.as_deref()) {
        Ok(x) => x,
        Err(mut message) => {
            if !world.unparseable.is_empty() {
                message = format!("{message}; left out: {}", world.unparseable.join("; "));
            }
            let report = Report::problem(cache, CacheState::Pending, "NoFeasibleProfile", message);
            return report::finish(ctx, cache, report).await;
        }
    };
    let pvc = match pvc::ensure(ctx, cache, world.pvc.as_ref(), &wanted, arch.as_deref()).await? {
        pvc::Ensured::Ready(p) => p,
        pvc::Ensured::Blocked(report) => return report::finish(ctx, cache, report).await,
        pvc::Ensured::Again => return Ok(Action::requeue(Duration::from_secs(2))),
    };
    if let Some(report) = pvc::already_complete(cache, &pvc, &wanted) {
        return report::finish(ctx, cache, report).await;
    }
    let job = crate::render::cache::build_job(cache, &wanted, &group, &ctx.puller_image(cache), ctx.platform);
    let same = |live: &&k8s_openapi::api::batch::v1::Job| {
        live.labels().get(JOB_HASH) == job.labels().get(JOB_HASH) && live.metadata.deletion_timestamp.is_none()
    };
    let failed = world.job.as_ref().filter(same).filter(|j| job::failed(j));
    // The token Secret's version matters only to a Job about to start or one that failed.
    let token_version = match world.job.is_none() || failed.is_some() {
        true => job::token_version(ctx, cache).await?,
        false => String::new(),
    };
    // A failed download of what is still wanted runs again when its cause may be gone.
    let mut retry_in = None;
    if let Some(live) = failed {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        match job::retry(live, &token_version, &now) {
            job::Retry::Now(why) => {
                job::rerun(ctx, cache, live, &why).await?;
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            job::Retry::After { left, at } => retry_in = Some((left, at)),
        }
    }
    match job::ensure(ctx, cache, &job, world.job.as_ref(), &token_version).await? {
        job::Ensured::Running => {}
        job::Ensured::Again => return Ok(Action::requeue(Duration::from_secs(2))),
    }
    let mut report = job::progress(cache, &pvc, &wanted, world.job.as_ref(), &world.pods);
    if report.state == CacheState::Ready {
        job::forget_attempts(ctx, cache);
    }
    let Some((left, at)) = retry_in else { return report::finish(ctx, cache, report).await };
    let secret = cache.spec.source.hf.auth_secret.as_deref();
    let when = secret.map(|s| format!(" or when Secret {s} changes")).unwrap_or_default();
    report.message = format!("{}; it runs again at {at}{when}", report.message);
    report::finish(ctx, cache, report).await?;
    Ok(Action::requeue(left.min(job::TOKEN_POLL)))
}

/// The model's own architecture from the cache's hub (with its token), when the built-in table
/// does not know the model and the cache needs it: to size a PVC it creates, or to generate a
/// profile for a group no published profile fits. Or the report to write and when to look again.
async fn model_facts(
    ctx: &Context,
    cache: &OIMCache,
    world: &dereference::World,
) -> Result<Result<Option<Arc<Arch>>, (Report, Duration)>, Error> {
    let model = cache.spec.model();
    let sizes =
        cache.spec.storage.pvc.create.unwrap_or(true) && world.pvc.is_none() && cache.spec.storage.pvc.size.is_none();
    if !needs_model_facts(cache, &world.profiles, &world.nodes, world.pvc.is_some(), &ctx.engines) {
        return Ok(Ok(None));
    }
    let ns = cache.namespace().unwrap_or_default();
    let hf = &cache.spec.source.hf;
    let wanted = model::Wanted {
        namespace: &ns,
        model: &model,
        revision: hf.revision.as_deref(),
        endpoint: hf.endpoint.as_deref(),
        auth_secret: hf.auth_secret.as_deref(),
        secret_field: "spec.source.hf.authSecret",
    };
    Ok(match model::facts(ctx, &wanted).await? {
        Facts::Ready(a) => Ok(Some(a)),
        Facts::Pending(m) => {
            Err((Report::problem(cache, CacheState::Pending, model::PENDING, m), Duration::from_secs(2)))
        }
        Facts::Unavailable { message, retry_in } => {
            let hint =
                if sizes { "; a spec.storage.pvc.size skips this read when a published profile fits" } else { "" };
            Err((
                Report::problem(cache, CacheState::Pending, model::UNAVAILABLE, format!("{message}{hint}")),
                retry_in.max(Duration::from_secs(1)),
            ))
        }
    })
}
