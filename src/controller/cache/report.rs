//! Status: the one writer. A [`Report`] says where the cache stands; [`finish`] records the
//! completed downloads on the PVC, writes the status when it changed, and says when to look again.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{CacheState, CachedProfile, OIMCache, OIMCacheStatus};
use crate::controller::context::{Context, Error};
use crate::controller::events::publish;
use crate::controller::status::{Cond, conditions, differs_but_times};
use crate::render::FIELD_MANAGER;
use crate::render::cache::COMPLETE_ANNOTATION;

/// What the PVC annotation records per downloaded repository: asked revision and its commit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Done {
    /// Weights repository.
    pub weights: String,
    /// Revision asked for.
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
}

/// Where a cache stands.
#[derive(Debug, Clone)]
pub struct Report {
    /// The summary state.
    pub state: CacheState,
    /// The Ready condition's reason.
    pub reason: &'static str,
    /// Its message.
    pub message: String,
    /// What the PVC holds, for services.
    pub profiles: Vec<CachedProfile>,
    /// The PVC's name, once known.
    pub pvc: Option<String>,
    /// Its size.
    pub size: Option<String>,
    /// When the download started.
    pub start: Option<Time>,
    /// When it completed.
    pub completion: Option<Time>,
    /// Downloads to record on the PVC as complete.
    pub done: Option<Vec<Done>>,
}

impl Report {
    /// A cache that cannot proceed; the PVC name reported earlier is kept.
    pub fn problem(cache: &OIMCache, state: CacheState, reason: &'static str, message: String) -> Report {
        Report {
            state,
            reason,
            message,
            profiles: vec![],
            pvc: cache.status.as_ref().and_then(|s| s.pvc.clone()),
            size: None,
            start: None,
            completion: None,
            done: None,
        }
    }
}

/// The complete status for `report` (pure).
pub fn build(cache: &OIMCache, report: &Report) -> OIMCacheStatus {
    let ready = report.state == CacheState::Ready;
    let old = cache.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    OIMCacheStatus {
        state: Some(report.state),
        pvc: report.pvc.clone(),
        size: report.size.clone(),
        profiles: report.profiles.clone(),
        conditions: conditions(
            old,
            &[Cond("Ready", ready, report.reason, report.message.clone())],
            cache.metadata.generation,
        ),
        observed_generation: cache.metadata.generation,
        start_time: report.start.clone(),
        completion_time: report.completion.clone(),
    }
}

/// Records completed downloads on the PVC, writes the status when it changed (with an Event),
/// and says when to look again.
pub async fn finish(ctx: &Context, cache: &OIMCache, report: Report) -> Result<Action, Error> {
    if let (Some(done), Some(pvc)) = (&report.done, &report.pvc) {
        record_complete(ctx, cache, pvc, done).await?;
    }
    let status = build(cache, &report);
    if differs_but_times(cache.status.as_ref(), &status, |s| &mut s.conditions) {
        let name = cache.name_any();
        let api: Api<OIMCache> = Api::namespaced(ctx.client.clone(), &cache.namespace().unwrap_or_default());
        let patch = json!({"apiVersion": "oim.opea.dev/v1alpha1", "kind": "OIMCache", "status": status});
        api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|source| Error::StatusPatch { kind: "OIMCache", name, source })?;
        ctx.metrics.writes.add();
        let reason = if report.state == CacheState::Ready { "Ready" } else { report.reason };
        let warning = matches!(report.state, CacheState::Failed | CacheState::Pending);
        if report.state != CacheState::InProgress {
            publish(ctx, &cache.object_ref(&()), warning, reason, &report.message).await;
        }
    }
    Ok(match report.state {
        CacheState::Failed if report.reason != "DownloadFailed" => Action::await_change(),
        CacheState::Ready | CacheState::Failed => Action::requeue(Duration::from_secs(600)),
        CacheState::InProgress => Action::requeue(Duration::from_secs(10)),
        _ => Action::requeue(Duration::from_secs(30)),
    })
}

async fn record_complete(ctx: &Context, cache: &OIMCache, pvc: &str, done: &[Done]) -> Result<(), Error> {
    let ns = cache.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let value = serde_json::to_string(done).unwrap_or_default();
    let live = pvcs.get_opt(pvc).await.map_err(|source| Error::Read { what: format!("PVC {ns}/{pvc}"), source })?;
    if live.as_ref().and_then(|p| p.annotations().get(COMPLETE_ANNOTATION)) == Some(&value) {
        return Ok(());
    }
    let patch = json!({"metadata": {"annotations": {COMPLETE_ANNOTATION: value}}});
    pvcs.patch(pvc, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|source| Error::Apply {
        kind: "PersistentVolumeClaim".into(),
        name: pvc.into(),
        source,
    })?;
    ctx.metrics.writes.add();
    Ok(())
}
