//! The cache's PVC: adopt ours (same source), refuse someone else's, create it when asked.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{CacheState, CachedProfile, OIMCache};
use crate::controller::apply::{server_side_apply, stamp};
use crate::controller::cache::report::{Done, Report};
use crate::controller::context::{Context, Error};
use crate::controller::events::publish;
use crate::profile::weights::{Wanted, size_for};
use crate::render::cache::{CACHE_LABEL, COMPLETE_ANNOTATION, SOURCE_HASH, build_pvc, job_name, pvc_name, source_hash};
use crate::render::with_kind;

/// The PVC the download goes to.
pub struct Pvc {
    /// Its name.
    pub name: String,
    /// Its capacity (or request).
    pub size: Option<String>,
    /// Downloads it is known to hold completely.
    pub complete: Vec<Done>,
}

/// What ensuring the PVC came to.
pub enum Ensured {
    /// The PVC to download into.
    Ready(Pvc),
    /// It cannot be used: the status to report.
    Blocked(Report),
    /// A step was taken that must settle first (an old Job is going).
    Again,
}

/// What to do about the PVC (pure): `Ok(None)` use it as it is, `Ok(Some(true))` create it,
/// `Ok(Some(false))` adopt it (label it to this cache), `Err` why it cannot be used.
fn decide(
    cache: &OIMCache,
    live: Option<&PersistentVolumeClaim>,
) -> Result<Option<bool>, (CacheState, &'static str, String)> {
    let pvc = pvc_name(cache);
    let hash = source_hash(&cache.spec);
    let create = cache.spec.storage.pvc.create.unwrap_or(true);
    match (live, live.and_then(|p| p.annotations().get(SOURCE_HASH))) {
        (Some(_), Some(h)) if *h != hash => Err((
            CacheState::Failed,
            "PVCConflict",
            format!(
                "PVC {pvc} holds weights of another source (cache-source-hash {h}, this cache's is {hash}); delete that PVC, or set spec.storage.pvc.name to another name"
            ),
        )),
        (Some(_), None) if create => Err((
            CacheState::Failed,
            "PVCConflict",
            format!(
                "PVC {pvc} exists and was not made by an OIMCache; set spec.storage.pvc.create: false to download into it, or choose another spec.storage.pvc.name"
            ),
        )),
        (None, _) if !create => Err((
            CacheState::Pending,
            "PVCNotFound",
            format!("PVC {pvc} does not exist; create it or set spec.storage.pvc.create: true"),
        )),
        (None, _) => Ok(Some(true)),
        (Some(p), _) => Ok((p.labels().get(CACHE_LABEL) != Some(&cache.name_any())).then_some(false)),
    }
}

/// Creates or adopts the PVC as decided.
pub async fn ensure(
    ctx: &Context,
    cache: &OIMCache,
    live: Option<&PersistentVolumeClaim>,
    wanted: &[Wanted],
    arch: Option<&crate::profile::estimate::Arch>,
) -> Result<Ensured, Error> {
    let name = pvc_name(cache);
    let mut view = Pvc { name: name.clone(), size: size_of(live), complete: complete_of(live) };
    match decide(cache, live) {
        Err((state, reason, message)) => Ok(Ensured::Blocked(Report::problem(cache, state, reason, message))),
        Ok(None) => Ok(Ensured::Ready(view)),
        Ok(Some(false)) => {
            adopt(ctx, cache, &name).await?;
            Ok(Ensured::Ready(view))
        }
        Ok(Some(true)) => {
            let Some(size) = size_for(&cache.spec, wanted, arch) else {
                let message = format!(
                    "the weight size of {} is unknown to the estimator; set spec.storage.pvc.size (e.g. 200Gi)",
                    cache.spec.model()
                );
                return Ok(Ensured::Blocked(Report::problem(cache, CacheState::Pending, "SizeRequired", message)));
            };
            let mut obj = with_kind(&build_pvc(cache, &size));
            stamp(&mut obj, None);
            server_side_apply(&ctx.client, &obj, &ctx.metrics.writes).await.map_err(|source| Error::Apply {
                kind: "PersistentVolumeClaim".into(),
                name: name.clone(),
                source,
            })?;
            publish(ctx, &cache.object_ref(&()), false, "PVCCreated", &format!("PVC {name} ({size})")).await;
            view.size = Some(size);
            // A Job that filled an earlier PVC of this name says nothing about this empty one.
            Ok(if remove_old_job(ctx, cache).await? { Ensured::Again } else { Ensured::Ready(view) })
        }
    }
}

/// Ours from an earlier cache of the same source (or a user's PVC we were told to use): label it
/// to this cache.
async fn adopt(ctx: &Context, cache: &OIMCache, pvc: &str) -> Result<(), Error> {
    let ns = cache.namespace().unwrap_or_default();
    let patch = json!({"metadata": {"labels": {CACHE_LABEL: cache.name_any()}}});
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
        .patch(pvc, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Apply { kind: "PersistentVolumeClaim".into(), name: pvc.into(), source })?;
    ctx.metrics.writes.add();
    publish(ctx, &cache.object_ref(&()), false, "PVCAdopted", &format!("PVC {pvc}")).await;
    Ok(())
}

async fn remove_old_job(ctx: &Context, cache: &OIMCache) -> Result<bool, Error> {
    let ns = cache.namespace().unwrap_or_default();
    let name = job_name(cache);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let background = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    match jobs.delete(&name, &background).await {
        Ok(_) => {
            ctx.metrics.writes.add();
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(Error::Delete { kind: "Job".into(), name, source }),
    }
}

fn size_of(live: Option<&PersistentVolumeClaim>) -> Option<String> {
    let p = live?;
    p.status
        .as_ref()
        .and_then(|s| s.capacity.as_ref()?.get("storage").cloned())
        .or_else(|| p.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").cloned())
        .map(|q| q.0)
}

fn complete_of(live: Option<&PersistentVolumeClaim>) -> Vec<Done> {
    live.and_then(|p| p.annotations().get(COMPLETE_ANNOTATION).and_then(|a| serde_json::from_str(a).ok()))
        .unwrap_or_default()
}

/// The profiles a PVC serves, at the commits downloaded.
pub fn held(wanted: &[Wanted], commits: &BTreeMap<String, String>) -> Vec<CachedProfile> {
    wanted
        .iter()
        .flat_map(|w| {
            let commit = commits.get(&w.weights).cloned().unwrap_or_else(|| w.revision.clone());
            w.profiles.iter().map(move |p| CachedProfile {
                name: p.clone(),
                weights: w.weights.clone(),
                weights_revision: commit.clone(),
                path: format!("/{}/{commit}", w.weights),
            })
        })
        .collect()
}

/// Ready with no Job when the PVC already holds every wanted download (an adopted PVC).
pub fn already_complete(cache: &OIMCache, pvc: &Pvc, wanted: &[Wanted]) -> Option<Report> {
    let covered = |w: &Wanted| pvc.complete.iter().any(|c| c.weights == w.weights && c.revision == w.revision);
    if !wanted.iter().all(covered) {
        return None;
    }
    let commits = pvc.complete.iter().map(|d| (d.weights.clone(), d.commit.clone())).collect();
    let profiles = held(wanted, &commits);
    let status = cache.status.as_ref();
    Some(Report {
        state: CacheState::Ready,
        reason: "Ready",
        message: format!("weights of {} profile(s) in PVC {}", profiles.len(), pvc.name),
        profiles,
        pvc: Some(pvc.name.clone()),
        size: pvc.size.clone(),
        start: status.and_then(|s| s.start_time.clone()),
        completion: status.and_then(|s| s.completion_time.clone()),
        done: None,
    })
}
