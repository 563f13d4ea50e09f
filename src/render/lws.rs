//! The LeaderWorkerSet (`leaderworkerset.x-k8s.io/v1`) of a profile that spans nodes: one
//! group per replica, `size` = the profile's nodes; the leader starts the Ray head and serves
//! (vLLM with tensor parallelism inside a node and pipeline parallelism across nodes), the
//! workers join it. Both templates come from the Deployment's pod builder, so resources, shm,
//! volumes, placement and security are the same per pod.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::workload::{Role, pod_template};
use super::{Input, RenderError, meta, name_of};

/// API group of LeaderWorkerSet.
pub const LWS_GROUP: &str = "leaderworkerset.x-k8s.io";

/// The LeaderWorkerSet API, with its resource name as published.
pub fn leader_worker_set_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(LWS_GROUP, "v1", "LeaderWorkerSet"), "leaderworkersets")
}

/// The LeaderWorkerSet for `input` (whose profile spans `nodes` > 1 nodes).
pub fn leader_worker_set(
    input: &Input,
    created_pvc: Option<&PersistentVolumeClaim>,
) -> Result<DynamicObject, RenderError> {
    let svc = input.service;
    let name = name_of(svc);
    let nodes = input.profile.nodes;
    let leader = pod_template(input, created_pvc, Role::Leader { nodes })?;
    let worker = pod_template(input, created_pvc, Role::Worker)?;
    // The Deployment's rollout rule, per group: GPUs are scarce, so no surge, one group at a time.
    let rolling = svc.spec.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
    let int_or_str = |v: Option<IntOrString>, default: i32| match v.unwrap_or(IntOrString::Int(default)) {
        IntOrString::Int(i) => json!(i),
        IntOrString::String(s) => json!(s),
    };
    let mut spec = json!({
        "startupPolicy": "LeaderCreated",
        "rolloutStrategy": {
            "type": "RollingUpdate",
            "rollingUpdateConfiguration": {
                "maxSurge": int_or_str(rolling.max_surge, 0),
                "maxUnavailable": int_or_str(rolling.max_unavailable, 1),
            },
        },
        "leaderWorkerTemplate": {
            "size": nodes,
            // A group is one engine: any pod lost restarts the whole group.
            "restartPolicy": "RecreateGroupOnPodRestart",
            "leaderTemplate": leader,
            "workerTemplate": worker,
        },
    });
    // With autoscaling the HPA owns replicas (through the scale subresource).
    if svc.spec.scale.as_ref().and_then(|s| s.enabled) != Some(true) {
        spec["replicas"] = json!(svc.spec.replicas.unwrap_or(1));
    }
    let mut obj = DynamicObject::new(&name, &leader_worker_set_resource()).data(json!({ "spec": spec }));
    obj.metadata = meta(svc, &name, "inference");
    Ok(obj)
}
