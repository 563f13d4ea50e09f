//! Status: the one writer. [`build`] turns an outcome and our live Deployment into a complete
//! status — keeping what is still true (the profile, endpoints and available replicas of a
//! workload that still runs) and always setting `observedGeneration`; [`write`] patches it only
//! when it differs in more than condition times.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use crate::api::{AcceleratorStatus, ModelStatus, OIMService, OIMServiceStatus, SelectedProfile, ServiceState};
use crate::controller::context::{Context, Error};
use crate::controller::service::outcome::{Blocked, Outcome, Serving, Step};
use crate::controller::status::{Cond, conditions, differs, state};
use crate::profile::oci::enum_str;
use crate::render::FIELD_MANAGER;

/// What our workload shows: available replicas (ready groups of a LeaderWorkerSet), and whether
/// this generation is rolled out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Available replicas.
    pub available: i32,
    /// The current generation is observed, updated and available.
    pub done: bool,
    /// For a LeaderWorkerSet: the groups it wants (a group is ready when all its pods are).
    pub groups: Option<i32>,
}

impl Rollout {
    /// From our live Deployment (None: nothing runs).
    pub fn of(d: Option<&Deployment>) -> Rollout {
        let Some(d) = d else { return Rollout::default() };
        let s = d.status.clone().unwrap_or_default();
        let available = s.available_replicas.unwrap_or(0);
        let wanted = d.spec.as_ref().and_then(|x| x.replicas).unwrap_or(1);
        let done = s.observed_generation >= d.metadata.generation
            && s.updated_replicas.unwrap_or(0) >= wanted
            && available > 0;
        Rollout { available, done, groups: None }
    }

    /// From our live LeaderWorkerSet: `status.readyReplicas` groups of `spec.replicas`; rolled
    /// out when its controller saw this generation (condition observedGeneration where the
    /// status has none), every group is updated, and one is ready.
    pub fn of_group(g: &kube::api::DynamicObject) -> Rollout {
        let int = |v: &serde_json::Value| v.as_i64().and_then(|n| i32::try_from(n).ok());
        let status = &g.data["status"];
        let available = int(&status["readyReplicas"]).unwrap_or(0);
        let wanted = int(&g.data["spec"]["replicas"]).or_else(|| int(&status["replicas"])).unwrap_or(1);
        let observed = status["observedGeneration"]
            .as_i64()
            .or_else(|| status["conditions"].as_array()?.iter().filter_map(|c| c["observedGeneration"].as_i64()).max());
        let done = observed >= g.metadata.generation
            && int(&status["updatedReplicas"]).unwrap_or(0) >= wanted
            && available > 0;
        Rollout { available, done, groups: Some(wanted) }
    }
}

/// The complete status for `outcome`.
pub fn build(svc: &OIMService, outcome: &Outcome, rollout: Rollout, running: bool) -> OIMServiceStatus {
    match outcome {
        Outcome::Serving(s) => serving(svc, s, rollout),
        Outcome::Blocked(b) => blocked(svc, b, rollout, running),
    }
}

fn old_conditions(svc: &OIMService) -> &[Condition] {
    svc.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[])
}

fn serving(svc: &OIMService, s: &Serving, rollout: Rollout) -> OIMServiceStatus {
    let c = &s.chosen;
    let accel = crate::render::accelerator_string(&c.profile, &c.group);
    // On KServe the InferenceService's Ready condition says whether it serves; its predictor
    // Deployment (KServe's) gives the replicas.
    let rollout = match &s.kserve {
        Some(k) => Rollout { available: k.available, done: k.ready, groups: None },
        None => rollout,
    };
    let nodes = c.profile.nodes;
    let available_msg = match rollout.groups {
        Some(wanted) => format!(
            "{}/{wanted} LeaderWorkerSet group(s) ready ({nodes} pods each: a leader serving, {} worker(s) over Ray) on {accel}",
            rollout.available,
            nodes.saturating_sub(1)
        ),
        None if rollout.available > 0 => format!("{} replica(s) available on {accel}", rollout.available),
        None if s.kserve.as_ref().is_some_and(|k| k.ready) => {
            format!("InferenceService {} reports Ready", svc.name_any())
        }
        None if s.kserve.is_some() => {
            format!("waiting for KServe's predictor Deployment: 0 replicas available (needs {accel} per replica)")
        }
        None if c.profile.multi_node() => {
            format!("waiting for the LeaderWorkerSet: 0 groups ready (needs {accel} per replica)")
        }
        None => format!("waiting for the Deployment: 0 replicas available (needs {accel} per replica)"),
    };
    let ready = match (&s.apply_error, &s.kserve, rollout.done) {
        (Some(e), _, _) => Cond("Ready", false, "ApplyFailed", e.clone()),
        (None, Some(_), true) => Cond("Ready", true, "Ready", format!("serving: InferenceService {}", svc.name_any())),
        (None, Some(k), false) => Cond(
            "Ready",
            false,
            if k.reason == "InferenceServicePending" { "InferenceServicePending" } else { "InferenceServiceNotReady" },
            format!("InferenceService {} is not Ready: {} {}", svc.name_any(), k.reason, k.message)
                .trim_end()
                .to_string(),
        ),
        (None, None, true) => Cond("Ready", true, "Ready", "serving".into()),
        (None, None, false) => {
            Cond("Ready", false, "RolloutInProgress", "the rollout of this generation is not complete".into())
        }
    };
    let conds = conditions(
        old_conditions(svc),
        &[
            Cond(
                "ProfileSelected",
                true,
                if c.generated { "Generated" } else { "Selected" },
                format!("{}: {}", c.profile.name, c.reason),
            ),
            match &s.cache {
                Some(message) => Cond("CacheReady", true, "Ready", message.clone()),
                None => Cond("CacheReady", true, "NotUsed", "no OIMCache is referenced".into()),
            },
            Cond(
                "Available",
                rollout.available > 0 || (s.kserve.is_some() && rollout.done),
                if rollout.available > 0 || (s.kserve.is_some() && rollout.done) {
                    "MinimumReplicasAvailable"
                } else {
                    "Unavailable"
                },
                available_msg,
            ),
            ready,
            degraded(s),
            update_condition(s),
        ],
        svc.metadata.generation,
    );
    OIMServiceStatus {
        state: Some(state(&conds, false)),
        observed_generation: svc.metadata.generation,
        available_replicas: Some(rollout.available),
        accelerator: Some(accel),
        conditions: conds,
        profile: Some(selected_profile(c)),
        resources: s.resources.clone(),
        model: Some(ModelStatus {
            name: served_name(svc),
            cluster_endpoint: Some(s.cluster_endpoint.clone()),
            external_endpoint: s.external_endpoint.clone(),
        }),
    }
}

fn degraded(s: &Serving) -> Cond<'static> {
    match (&s.apply_error, &s.warning) {
        (Some(e), _) => Cond("Degraded", true, "ApplyFailed", e.clone()),
        (None, Some((reason, why))) => Cond("Degraded", true, reason, why.clone()),
        (None, None) => Cond("Degraded", false, "AsExpected", "no problem detected".into()),
    }
}

fn update_condition(s: &Serving) -> Cond<'static> {
    match (&s.update, s.auto) {
        (Some(digest), false) => Cond(
            "ProfileUpdateAvailable",
            true,
            "NewDigestPublished",
            format!(
                "{} was re-published as {digest}; this service keeps {} (updatePolicy: Pinned); set spec.profile.updatePolicy: Auto to follow it",
                s.chosen.profile.name, s.chosen.digest
            ),
        ),
        (_, true) => Cond(
            "ProfileUpdateAvailable",
            false,
            "Auto",
            "re-published profiles are followed (updatePolicy: Auto)".into(),
        ),
        _ => Cond(
            "ProfileUpdateAvailable",
            false,
            "UpToDate",
            "the resolved profile is the published one; it is kept until model or profile change".into(),
        ),
    }
}

fn selected_profile(c: &crate::controller::service::select::Chosen) -> SelectedProfile {
    SelectedProfile {
        name: c.profile.name.clone(),
        digest: Some(c.digest.clone()).filter(|d| !d.is_empty()),
        source: Some(c.source.clone()),
        engine: Some(format!("{} {}", c.profile.engine.name, c.profile.engine.version)),
        image: Some(c.profile.engine.image.clone()),
        precision: Some(enum_str(&c.profile.precision)),
        tensor_parallelism: i32::try_from(c.profile.parallelism.tensor).ok(),
        pipeline_parallelism: i32::try_from(c.profile.parallelism.pipeline).ok(),
        accelerator: Some(AcceleratorStatus {
            vendor: c.group.vendor,
            product: c.group.product.clone(),
            count: i32::try_from(c.profile.accelerator.count).unwrap_or(0),
        }),
        reason: Some(c.reason.clone()),
        rejected: c.rejected.clone(),
        generated: c.generated,
    }
}

fn served_name(svc: &OIMService) -> String {
    svc.spec.model.served_name.clone().unwrap_or_else(|| svc.spec.model.name.clone())
}

/// A blocked service: the step's conditions, and — while our workload still runs — the
/// profile, accelerator, resources, endpoints and replicas it runs with.
fn blocked(svc: &OIMService, b: &Blocked, rollout: Rollout, running: bool) -> OIMServiceStatus {
    let old = svc.status.clone().unwrap_or_default();
    let keep = |c: &str| old.conditions.iter().find(|x| x.type_ == c).filter(|_| running).cloned();
    let mut wanted = vec![];
    let profile_cond = match b.step {
        Step::SourceRefused | Step::SourceMissing | Step::Selection | Step::Registry | Step::ModelConfig => {
            Some(Cond("ProfileSelected", false, &b.reason, b.message.clone()))
        }
        _ => None,
    };
    wanted.extend(profile_cond);
    if b.step == Step::Cache {
        wanted.push(Cond("CacheReady", false, &b.reason, b.message.clone()));
    }
    wanted.push(if rollout.available > 0 {
        Cond(
            "Available",
            true,
            "MinimumReplicasAvailable",
            format!("{} replica(s) of the earlier start still serve", rollout.available),
        )
    } else {
        Cond("Available", false, &b.reason, "nothing runs until this is resolved".into())
    });
    wanted.push(Cond("Ready", false, &b.reason, b.message.clone()));
    let degraded = matches!(b.step, Step::Conflict | Step::Registry);
    wanted.push(match degraded {
        true => Cond("Degraded", true, &b.reason, b.message.clone()),
        false => Cond("Degraded", false, "AsExpected", "no problem detected".into()),
    });
    let mut conds = conditions(&old.conditions, &wanted, svc.metadata.generation);
    // Conditions this step says nothing about keep their value while the workload runs.
    for type_ in ["ProfileSelected", "CacheReady", "ProfileUpdateAvailable"] {
        if !conds.iter().any(|c| c.type_ == type_)
            && let Some(c) = keep(type_)
        {
            conds.push(c);
        }
    }
    conds.sort_by_key(|c| order(&c.type_));
    let st = if b.spec_error() { ServiceState::Failed } else { state(&conds, false) };
    let mut profile = old.profile.clone().filter(|_| running);
    if b.step == Step::Selection {
        let p = profile.get_or_insert_with(SelectedProfile::default);
        p.rejected = b.rejected.clone();
    }
    OIMServiceStatus {
        state: Some(st),
        observed_generation: svc.metadata.generation,
        available_replicas: running.then_some(rollout.available),
        accelerator: old.accelerator.filter(|_| running),
        conditions: conds,
        profile,
        resources: old.resources.filter(|_| running),
        model: old.model.filter(|_| running),
    }
}

fn order(type_: &str) -> usize {
    ["ProfileSelected", "CacheReady", "Available", "Ready", "Degraded", "ProfileUpdateAvailable"]
        .iter()
        .position(|t| *t == type_)
        .unwrap_or(usize::MAX)
}

/// Patches the status when it differs in more than condition times; returns whether it wrote.
pub async fn write(ctx: &Context, svc: &OIMService, status: &OIMServiceStatus) -> Result<bool, Error> {
    if !differs(svc.status.as_ref(), status) {
        return Ok(false);
    }
    let name = svc.name_any();
    let api: Api<OIMService> = Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let patch = serde_json::json!({"apiVersion": "oim.opea.dev/v1alpha1", "kind": "OIMService", "status": status});
    let ns = svc.namespace().unwrap_or_default();
    let live = api
        .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::StatusPatch { kind: "OIMService", name: name.clone(), source })?;
    ctx.metrics.writes.add();
    ctx.echoes.wrote(crate::controller::apply::key("OIMService", &ns, &name), live.metadata.resource_version);
    Ok(true)
}

#[cfg(test)]
mod tests;
