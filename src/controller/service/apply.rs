//! Apply: the rendered set is applied — the workload (Deployment or LeaderWorkerSet) first, the
//! rest together (beside the status write) — and every
//! object this service owns that is no longer rendered is deleted (never a PVC: its retention
//! is deliberate). Objects of our names that we did not create are a conflict: nothing is
//! written then.

use futures::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde_json::Value;
use tracing::info;

use crate::api::OIMService;
use crate::controller::apply::{Owner, Verdict, api_for, key, mark, server_side_apply, stamp, verdict};
use crate::controller::context::{Context, Error};
use crate::controller::service::outcome::{Blocked, Step};
use crate::render::{FIELD_MANAGER, Rendered};

/// One rendered object and what to do with it.
struct Planned {
    obj: Value,
    kind: String,
    name: String,
    verdict: Verdict,
    live: Option<ObjectMeta>,
}

/// What a reconcile will write: what the pods need (PVC, ResourceClaimTemplates), the workload
/// (Deployment or LeaderWorkerSet), and the rest.
pub struct Plan {
    needed: Vec<Planned>,
    workload: Vec<Planned>,
    rest: Vec<Planned>,
    /// The workload changes kind (Deployment <-> LeaderWorkerSet): the old one, pruned with the
    /// rest, still holds its devices.
    replaces_workload: bool,
}

fn is_workload(kind: &str) -> bool {
    kind == "Deployment" || kind == "LeaderWorkerSet"
}

/// Plans `rendered` for `svc`: what is missing or changed is applied, the rest left. `Ok(Err(_))`
/// is a conflict with an object we did not create (nothing is written then).
pub async fn plan(ctx: &Context, svc: &OIMService, rendered: &Rendered) -> Result<Result<Plan, Blocked>, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let uid = svc.uid().unwrap_or_default();
    let name = svc.name_any();
    let owner = Owner { uid: &uid, name: &name };
    let mut planned = vec![];
    for mut obj in rendered.objects() {
        let hash = stamp(&mut obj, Some(&ns));
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let child = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let live = live_meta(ctx, &ns, &obj).await?;
        let recorded = ctx.children.recorded(&key(&kind, &ns, &child));
        let verdict = verdict(live.as_ref(), Some(&owner), &hash, recorded.as_deref());
        planned.push(Planned { obj, kind, name: child, verdict, live });
    }
    if let Some(p) = planned.iter().find(|p| p.verdict == Verdict::Foreign) {
        let message = format!(
            "{} {ns}/{} exists and was not created by the operator for this OIMService; nothing was written to it: rename the OIMService, or delete that {}",
            p.kind, p.name, p.kind
        );
        return Ok(Err(Blocked::new(Step::Conflict, "ConflictingObject", message)));
    }
    let other = if rendered.deployment.is_some() { "LeaderWorkerSet" } else { "Deployment" };
    let replaces_workload = ctx.children.of(&ns).and_then(|c| c.meta(other, &ns, &name)).is_some_and(|m| m.is_some());
    let (needed, planned): (Vec<Planned>, Vec<Planned>) =
        planned.into_iter().partition(|p| p.kind == "PersistentVolumeClaim" || p.kind == "ResourceClaimTemplate");
    let (workload, rest) = planned.into_iter().partition(|p| is_workload(&p.kind));
    Ok(Ok(Plan { needed, workload, rest, replaces_workload }))
}

impl Plan {
    /// The workload is written in this pass: whatever the cache shows, it is not rolled out.
    pub fn rolls_out(&self) -> bool {
        self.workload.iter().any(|p| p.verdict == Verdict::Apply)
    }

    /// Whether the rest may wait for a revisit: nothing the new pods need is left in it.
    pub fn rest_can_wait(&self) -> bool {
        !self.replaces_workload
    }

    /// Applies the workload, after what its pods need: it is what users wait for, so it goes
    /// first.
    pub async fn workload(&self, ctx: &Context, svc: &OIMService) -> Result<(), Error> {
        let ns = svc.namespace().unwrap_or_default();
        for r in join_all(self.needed.iter().map(|p| apply_one(ctx, &ns, p))).await {
            r?;
        }
        for p in &self.workload {
            if p.verdict == Verdict::Apply && svc.spec.scale.as_ref().and_then(|s| s.enabled) == Some(true) {
                hand_replicas_to_hpa(ctx, &ns, &p.obj).await?;
            }
        }
        for r in join_all(self.workload.iter().map(|p| apply_one(ctx, &ns, p))).await {
            r?;
        }
        Ok(())
    }

    /// Applies everything else together and removes what `rendered` no longer has.
    pub async fn rest(&self, ctx: &Context, svc: &OIMService, rendered: &Rendered) -> Result<(), Error> {
        let ns = svc.namespace().unwrap_or_default();
        for r in join_all(self.rest.iter().map(|p| apply_one(ctx, &ns, p))).await {
            r?;
        }
        prune(ctx, svc, rendered).await?;
        Ok(())
    }
}

/// The live metadata of a rendered object: from our caches, else (a kind we do not cache, or
/// not yet cached as ours) a metadata GET, which also sees objects of that name we did not make.
async fn live_meta(ctx: &Context, ns: &str, obj: &Value) -> Result<Option<ObjectMeta>, Error> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if let Some(Some(m)) = ctx.children.of(ns).and_then(|c| c.meta(kind, ns, name)) {
        return Ok(Some(m));
    }
    let Some((api, name)) = api_for::<DynamicObject>(&ctx.client, obj) else { return Ok(None) };
    let live = api
        .get_metadata_opt(&name)
        .await
        .map_err(|source| Error::Read { what: format!("{kind} {ns}/{name}"), source })?;
    Ok(live.map(|l| l.metadata))
}

async fn apply_one(ctx: &Context, ns: &str, p: &Planned) -> Result<(), Error> {
    let k = key(&p.kind, ns, &p.name);
    if p.verdict != Verdict::Apply {
        if ctx.children.recorded(&k).is_none()
            && let Some(live) = &p.live
        {
            ctx.children.record(k, mark(live));
        }
        return Ok(());
    }
    let live = server_side_apply(&ctx.client, &p.obj, &ctx.metrics.writes).await.map_err(|source| Error::Apply {
        kind: p.kind.clone(),
        name: p.name.clone(),
        source,
    })?;
    info!(namespace = %ns, kind = %p.kind, name = %p.name, "applied");
    ctx.echoes.wrote(k.clone(), live.resource_version.clone());
    ctx.children.record(k, mark(&live));
    Ok(())
}

/// Deletes what this service owns (by owner UID, among our labelled children) and no longer
/// renders.
async fn prune(ctx: &Context, svc: &OIMService, rendered: &Rendered) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    let uid = svc.uid().unwrap_or_default();
    let Some(children) = ctx.children.of(&ns) else { return Ok(()) };
    let wanted: Vec<(String, String)> = rendered
        .objects()
        .iter()
        .map(|o| {
            (o["kind"].as_str().unwrap_or_default().into(), o["metadata"]["name"].as_str().unwrap_or_default().into())
        })
        .collect();
    for ar in children.kinds() {
        let owned = match children.owned_by(&ar.kind, &ns, &uid) {
            Some(names) => names,
            None => listed_owned(ctx, ar, &ns, &uid).await?,
        };
        for name in owned {
            if wanted.iter().any(|(k, n)| *k == ar.kind && *n == name) {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, ar);
            let background =
                DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
            match api.delete(&name, &background).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => return Err(Error::Delete { kind: ar.kind.clone(), name, source }),
            }
            ctx.metrics.writes.add();
            ctx.children.forget(&key(&ar.kind, &ns, &name));
            let note = format!("{} {name} removed: the spec no longer asks for it", ar.kind);
            info!(namespace = %ns, kind = %ar.kind, %name, "removed");
            crate::controller::events::publish(ctx, &svc.object_ref(&()), false, "ChildRemoved", &note).await;
        }
    }
    Ok(())
}

/// Our children of a kind whose cache has not listed (an optional CRD installed late): asked of
/// the API by our label. A kind whose API is gone has nothing to prune.
async fn listed_owned(ctx: &Context, ar: &ApiResource, ns: &str, uid: &str) -> Result<Vec<String>, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, ar);
    let params = ListParams::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    match api.list_metadata(&params).await {
        Ok(list) => {
            let metas: Vec<ObjectMeta> = list.items.into_iter().map(|o| o.metadata).collect();
            Ok(crate::controller::children::owned_names(&metas, ns, uid))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(vec![]),
        Err(source) => Err(Error::Read { what: format!("{} in {ns}", ar.plural), source }),
    }
}

/// With autoscaling on, the rendered workload (Deployment or LeaderWorkerSet) leaves `replicas`
/// out. Dropping a field we own would reset it to 1, so first a second field manager takes over
/// the current value: the HPA then moves it from there and running replicas never drop.
async fn hand_replicas_to_hpa(ctx: &Context, ns: &str, obj: &Value) -> Result<(), Error> {
    const HANDOFF: &str = "oim-operator-replicas-handoff";
    let Some((api, name)) = api_for::<DynamicObject>(&ctx.client, obj) else { return Ok(()) };
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let read = |source| Error::Read { what: format!("{kind} {ns}/{name}"), source };
    let Some(live) = api.get_opt(&name).await.map_err(read)? else { return Ok(()) };
    let we_own_replicas = live.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.fields_v1.as_ref().is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
    });
    let Some(current) = live.data["spec"]["replicas"].as_i64().filter(|_| we_own_replicas) else { return Ok(()) };
    let patch = serde_json::json!({"apiVersion": obj["apiVersion"], "kind": kind, "spec": {"replicas": current}});
    api.patch(&name, &PatchParams::apply(HANDOFF), &Patch::Apply(&patch)).await.map_err(|source| Error::Apply {
        kind: kind.clone(),
        name: name.clone(),
        source,
    })?;
    ctx.metrics.writes.add();
    info!(service = %name, %kind, replicas = current, "replicas handed to the autoscaler");
    Ok(())
}
