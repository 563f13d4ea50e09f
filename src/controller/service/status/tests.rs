//! The status as a pure function of the outcome: complete, and keeping what is still true.

use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

use super::*;
use crate::api::RejectedProfile;
use crate::controller::service::outcome::KServeState;
use crate::controller::service::select::Chosen;
use crate::hardware::devices;
use crate::hardware::inventory::{AcceleratorGroup, Inventory};
use crate::profile::select::{NodeView, groups};

fn service() -> OIMService {
    let mut s: OIMService = serde_saphyr::from_str(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {name: llm, namespace: team}\nspec:\n  model: {name: meta-llama/Llama-3.1-8B-Instruct}\n  storage: {oimCache: {name: weights}}\n",
    )
    .unwrap();
    s.metadata.generation = Some(4);
    s
}

fn chosen() -> Chosen {
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml");
    let profile = crate::profile::Profile::parse(&std::fs::read(path).unwrap(), path).unwrap();
    let inv = Inventory {
        node: "n1".into(),
        accelerators: vec![AcceleratorGroup::of(devices::by_slug("h100-sxm-80gb").unwrap(), 8)],
        ..Inventory::default()
    };
    let group = groups(&[NodeView::offline(inv)], &[], &Default::default()).0.remove(0);
    Chosen {
        profile,
        digest: "sha256:abc".into(),
        source: "oci://registry/oim".into(),
        group,
        reason: "lowest latency that fits".into(),
        generated: false,
        rejected: vec![],
    }
}

fn serving(apply_error: Option<&str>) -> Outcome {
    Outcome::Serving(Box::new(Serving {
        chosen: chosen(),
        resources: None,
        cluster_endpoint: "http://llm.team.svc:8000".into(),
        external_endpoint: Some("https://llm.example.com".into()),
        cache: Some("weights from OIMCache weights".into()),
        warning: None,
        update: None,
        auto: false,
        apply_error: apply_error.map(str::to_string),
        kserve: None,
    }))
}

fn deployment(available: i32) -> Deployment {
    Deployment {
        metadata: kube::api::ObjectMeta { generation: Some(2), ..Default::default() },
        spec: Some(DeploymentSpec { replicas: Some(1), ..Default::default() }),
        status: Some(DeploymentStatus {
            observed_generation: Some(2),
            updated_replicas: Some(1),
            available_replicas: Some(available),
            ..Default::default()
        }),
    }
}

fn cond<'a>(s: &'a OIMServiceStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} condition"))
}

#[test]
fn a_rolled_out_service_is_ready_with_its_profile_endpoints_and_replicas() {
    let svc = service();
    let d = deployment(1);
    let s = build(&svc, &serving(None), Rollout::of(Some(&d)), true);
    assert_eq!(s.state, Some(ServiceState::Ready));
    assert_eq!(s.observed_generation, Some(4));
    assert_eq!(s.available_replicas, Some(1));
    assert_eq!(s.accelerator.as_deref(), Some("1x h100-sxm-80gb"));
    assert_eq!(s.profile.as_ref().unwrap().digest.as_deref(), Some("sha256:abc"));
    assert_eq!(s.model.as_ref().unwrap().external_endpoint.as_deref(), Some("https://llm.example.com"));
    assert_eq!(cond(&s, "Degraded").status, "False");
}

#[test]
fn a_child_the_api_server_refuses_shows_degraded_with_its_message() {
    let svc = service();
    let s = build(&svc, &serving(Some("exceeded quota: gpus, requested: nvidia.com/gpu=1")), Rollout::default(), false);
    assert_eq!(s.state, Some(ServiceState::NotReady));
    let d = cond(&s, "Degraded");
    assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "ApplyFailed"));
    assert!(d.message.contains("exceeded quota"));
    assert_eq!(cond(&s, "Ready").reason, "ApplyFailed");
}

#[test]
fn a_service_waiting_for_a_rerun_cache_keeps_what_still_serves() {
    let mut svc = service();
    let d = deployment(1);
    svc.status = Some(build(&svc, &serving(None), Rollout::of(Some(&d)), true));
    let waiting = Blocked::new(Step::Cache, "CacheNotReady", "OIMCache weights is InProgress: downloading".into());
    let s = build(&svc, &Outcome::Blocked(waiting), Rollout::of(Some(&d)), true);
    assert_eq!(s.state, Some(ServiceState::NotReady), "a profile still runs: not Pending");
    assert_eq!(s.observed_generation, Some(4));
    assert_eq!(s.profile.as_ref().unwrap().name, "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16");
    assert_eq!(s.model.as_ref().unwrap().cluster_endpoint.as_deref(), Some("http://llm.team.svc:8000"));
    assert_eq!(s.available_replicas, Some(1));
    assert_eq!(cond(&s, "Available").status, "True");
    assert_eq!(cond(&s, "CacheReady").reason, "CacheNotReady");
    assert_eq!(cond(&s, "Ready").status, "False");
    assert_eq!(cond(&s, "ProfileSelected").status, "True", "the running profile is still the selection");
}

#[test]
fn with_nothing_running_a_blocked_service_is_pending_with_the_rejections() {
    let mut svc = service();
    svc.status = Some(build(&svc, &serving(None), Rollout::default(), true));
    let mut none = Blocked::new(Step::Selection, "NoFeasibleProfile", "12 profile(s) considered, none fits".into());
    none.rejected = vec![RejectedProfile { name: "p".into(), reason: "needs 2 GPUs, 1 free".into() }];
    let s = build(&svc, &Outcome::Blocked(none), Rollout::default(), false);
    assert_eq!(s.state, Some(ServiceState::Pending));
    assert_eq!(s.available_replicas, None);
    assert_eq!(s.model, None, "no endpoint without a workload");
    let p = s.profile.clone().unwrap();
    assert_eq!((p.name.as_str(), p.rejected.len()), ("", 1));
    assert_eq!(cond(&s, "ProfileSelected").reason, "NoFeasibleProfile");
}

#[test]
fn an_unreadable_model_config_is_pending_on_profile_selected_and_retried_on_the_hubs_backoff() {
    let svc = service();
    let mut b = Blocked::new(
        Step::ModelConfig,
        "ModelConfigUnavailable",
        "config.json of Qwen/Qwen2.5-32B-Instruct at main from https://hub.example could not be read: 500".into(),
    );
    b.retry_after = Some(std::time::Duration::from_secs(8));
    let s = build(&svc, &Outcome::Blocked(b.clone()), Rollout::default(), false);
    assert_eq!(s.state, Some(ServiceState::Pending), "the hub may come back: not Failed");
    let c = cond(&s, "ProfileSelected");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "ModelConfigUnavailable"));
    assert!(c.message.contains("https://hub.example"));
    assert_eq!(cond(&s, "Ready").reason, "ModelConfigUnavailable");
    assert_eq!(b.retry(), Some(std::time::Duration::from_secs(8)));
}

#[test]
fn spec_errors_and_conflicts_fail_and_say_so() {
    let svc = service();
    let conflict = Blocked::new(
        Step::Conflict,
        "ConflictingObject",
        "Deployment team/llm exists and was not created by the operator".into(),
    );
    let s = build(&svc, &Outcome::Blocked(conflict), Rollout::default(), false);
    assert_eq!(s.state, Some(ServiceState::Failed));
    assert_eq!(cond(&s, "Degraded").reason, "ConflictingObject");
    let refused = Blocked::new(Step::SourceRefused, "ProfileSourceRefused", "not on --allowed-registries".into());
    let s = build(&svc, &Outcome::Blocked(refused), Rollout::default(), false);
    assert_eq!(s.state, Some(ServiceState::Failed));
    assert_eq!(cond(&s, "ProfileSelected").reason, "ProfileSourceRefused");
    let render = Blocked::new(Step::Render, "InvalidResources", "spec.resources sets nvidia.com/gpu=2".into());
    assert_eq!(
        build(&svc, &Outcome::Blocked(render.clone()), Rollout::default(), false).state,
        Some(ServiceState::Failed)
    );
    assert_eq!(render.retry(), None, "waits for a spec change");
}

#[test]
fn on_kserve_ready_follows_the_inference_service_and_names_its_reason() {
    let outcome = |k: KServeState| match serving(None) {
        Outcome::Serving(mut s) => {
            s.kserve = Some(k);
            Outcome::Serving(s)
        }
        other => other,
    };
    let waiting =
        KServeState { reason: "PredictorNotReady".into(), message: "pods crash".into(), ..Default::default() };
    // No Deployment of ours runs on KServe: the rollout says nothing.
    let st = build(&service(), &outcome(waiting), Rollout::default(), false);
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InferenceServiceNotReady"));
    assert!(ready.message.contains("PredictorNotReady pods crash"), "{}", ready.message);
    assert_eq!(st.state, Some(ServiceState::NotReady));
    let up = KServeState { ready: true, reason: "Ready".into(), available: 2, ..Default::default() };
    let st = build(&service(), &outcome(up), Rollout::default(), false);
    assert_eq!(st.state, Some(ServiceState::Ready));
    assert_eq!(st.available_replicas, Some(2), "the replicas of KServe's predictor Deployment");
}

/// A LeaderWorkerSet as its controller reports it: `ready` of `replicas` groups.
fn group(generation: i64, observed: i64, ready: i64, updated: i64) -> kube::api::DynamicObject {
    let mut o = kube::api::DynamicObject::new("llm", &crate::render::leader_worker_set_resource()).data(serde_json::json!({
        "spec": {"replicas": 2},
        "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": updated, "replicas": 2},
    }));
    o.metadata.generation = Some(generation);
    o
}

#[test]
fn a_group_service_reports_ready_groups_and_is_ready_once_its_generation_is_rolled_out() {
    let svc = service();
    let mut multi = chosen();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/profiles-405b/h100-x8-n2.yaml");
    multi.profile = crate::profile::Profile::parse(&std::fs::read(path).unwrap(), path).unwrap();
    let outcome = Outcome::Serving(Box::new(Serving {
        chosen: multi,
        ..match serving(None) {
            Outcome::Serving(s) => *s,
            Outcome::Blocked(_) => unreachable!(),
        }
    }));
    let one_of_two = Rollout::of_group(&group(3, 3, 1, 2));
    assert_eq!((one_of_two.available, one_of_two.done, one_of_two.groups), (1, true, Some(2)));
    let s = build(&svc, &outcome, one_of_two, true);
    assert_eq!((s.state, s.available_replicas), (Some(ServiceState::Ready), Some(1)));
    assert_eq!(s.accelerator.as_deref(), Some("2 nodes x 8x h100-sxm-80gb"));
    assert_eq!(
        cond(&s, "Available").message,
        "1/2 LeaderWorkerSet group(s) ready (2 pods each: a leader serving, 1 worker(s) over Ray) on 2 nodes x 8x h100-sxm-80gb"
    );
    // A generation its controller has not seen yet, or groups not yet updated: still rolling.
    assert!(!Rollout::of_group(&group(4, 3, 2, 2)).done);
    assert!(!Rollout::of_group(&group(3, 3, 2, 1)).done);
    let none_ready = Rollout::of_group(&group(3, 3, 0, 2));
    let s = build(&svc, &outcome, none_ready, true);
    assert_eq!(cond(&s, "Available").status, "False");
    assert_eq!(s.state, Some(ServiceState::NotReady));
}
