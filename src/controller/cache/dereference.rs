//! Dereference: every read a cache's reconcile needs — the node snapshot, the model's
//! profiles, the PVC, the download Job and its pods.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::api::{CacheState, OIMCache};
use crate::controller::cache::Report;
use crate::controller::context::{Context, Error, ReadContext};
use crate::controller::source::SourceError;
use crate::profile::catalog::ProfileSummary;
use crate::profile::select::NodeView;
use crate::render::cache::pvc_name;

/// Everything read for one reconcile.
pub struct World {
    /// The model's published profiles.
    pub profiles: Vec<ProfileSummary>,
    /// Nodes as selection sees them.
    pub nodes: Arc<[NodeView]>,
    /// The PVC of the cache's name, whoever made it.
    pub pvc: Option<PersistentVolumeClaim>,
    /// The download Job.
    pub job: Option<Job>,
    /// Its pods.
    pub pods: Vec<Pod>,
}

/// What dereferencing found.
pub enum Read {
    /// The node cache is not synced yet.
    NotSynced,
    /// The source or the registry cannot be used: the status to report.
    Blocked(Report),
    /// Everything read.
    World(Box<World>),
}

/// Reads what the reconcile of `cache` needs.
pub async fn read(cache: &OIMCache, ctx: &Context) -> Result<Read, Error> {
    let ns = cache.namespace().unwrap_or_default();
    if !tokio::time::timeout(Duration::from_secs(30), ctx.nodes.wait_until_ready()).await.is_ok_and(|r| r.is_ok()) {
        return Ok(Read::NotSynced);
    }
    let source = cache.spec.profile.as_ref().and_then(|p| p.source.as_ref());
    let catalog = match ctx.sources.for_service(&ctx.client, &ns, source).await {
        Ok(c) => c,
        Err(SourceError::Kube(e)) => return Err(Error::Read { what: "the profile source's Secret".into(), source: e }),
        Err(e @ SourceError::Refused(_)) => {
            return Ok(Read::Blocked(Report::problem(
                cache,
                CacheState::Failed,
                "ProfileSourceRefused",
                e.to_string(),
            )));
        }
        Err(e) => {
            return Ok(Read::Blocked(Report::problem(
                cache,
                CacheState::Pending,
                "ProfileSourceUnavailable",
                e.to_string(),
            )));
        }
    };
    let listed = ctx.sources.lookup(&catalog, catalog.list(&cache.spec.model())).await;
    let profiles = match listed.and_then(|r| r.map_err(|e| e.to_string())) {
        Ok(p) => p,
        Err(e) => {
            ctx.metrics.registry_failed(&catalog.location());
            return Ok(Read::Blocked(Report::problem(
                cache,
                CacheState::Pending,
                "RegistryUnavailable",
                e.to_string(),
            )));
        }
    };
    let pvc_name = pvc_name(cache);
    let pvc = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&pvc_name)
        .await
        .reading(|| format!("PersistentVolumeClaim {ns}/{pvc_name}"))?;
    let job_name = crate::render::cache::job_name(cache);
    let job = Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&job_name)
        .await
        .reading(|| format!("Job {ns}/{job_name}"))?;
    let pods = match &job {
        Some(_) => {
            Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                .list(&ListParams::default().labels(&format!("job-name={job_name}")).limit(50))
                .await
                .reading(|| format!("pods of Job {ns}/{job_name}"))?
                .items
        }
        None => vec![],
    };
    Ok(Read::World(Box::new(World { profiles, nodes: ctx.placement().nodes.clone(), pvc, job, pods })))
}
