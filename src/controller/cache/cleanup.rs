//! Carries out `retentionPolicy` before a deleted cache goes: Retain keeps the PVC for a later
//! cache of the same source; Delete removes it, never while a live OIMService mounts it.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::info;

use crate::api::{OIMCache, OIMService, RetentionPolicy};
use crate::controller::context::{Context, Error, ReadContext};
use crate::controller::events::publish;
use crate::render::cache::{SOURCE_HASH, pvc_name, source_hash};

/// The finalizer's cleanup.
pub async fn run(cache: &OIMCache, ctx: &Context) -> Result<Action, Error> {
    let ns = cache.namespace().unwrap_or_default();
    let pvc = pvc_name(cache);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    // Only a PVC holding this cache's source is ours to keep or delete (never one we refused).
    let hash = source_hash(&cache.spec);
    let live = pvcs.get_opt(&pvc).await.reading(|| format!("PersistentVolumeClaim {ns}/{pvc}"))?;
    let Some(live) = live.filter(|p| p.annotations().get(SOURCE_HASH) == Some(&hash)) else {
        return Ok(Action::await_change());
    };
    if cache.spec.retention_policy.unwrap_or_default() == RetentionPolicy::Retain {
        info!(cache = %cache.name_any(), %pvc, "OIMCache deleted; PVC retained");
        let note = format!("PVC {pvc} is kept (retentionPolicy: Retain); a new OIMCache of the same source adopts it");
        publish(ctx, &cache.object_ref(&()), false, "PVCRetained", &note).await;
        return Ok(Action::await_change());
    }
    let users = users(ctx, cache).await?;
    if !users.is_empty() {
        let message = format!(
            "PVC {pvc} is not deleted while OIMService(s) {} use it; delete them or remove their spec.storage.oimCache",
            users.join(", ")
        );
        publish(ctx, &cache.object_ref(&()), true, "PVCInUse", &message).await;
        return Err(Error::InUse(message));
    }
    if live.metadata.deletion_timestamp.is_none() {
        pvcs.delete(&pvc, &DeleteParams::default()).await.map_err(|source| Error::Delete {
            kind: "PersistentVolumeClaim".into(),
            name: pvc.clone(),
            source,
        })?;
        ctx.metrics.writes.add();
        info!(cache = %cache.name_any(), %pvc, "OIMCache deleted; PVC deleted (retentionPolicy: Delete)");
    }
    Ok(Action::await_change())
}

/// The live OIMServices (not being deleted) that mount this cache.
async fn users(ctx: &Context, cache: &OIMCache) -> Result<Vec<String>, Error> {
    let ns = cache.namespace().unwrap_or_default();
    let api: Api<OIMService> = Api::namespaced(ctx.client.clone(), &ns);
    let name = cache.name_any();
    Ok(api
        .list(&ListParams::default())
        .await
        .reading(|| format!("OIMServices in {ns}"))?
        .items
        .into_iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter(|s| s.spec.storage.as_ref().and_then(|x| x.oim_cache.as_ref()).is_some_and(|c| c.name == name))
        .map(|s| s.name_any())
        .collect())
}
