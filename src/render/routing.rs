//! NIM's router and platform (DESIGN §7): the Gateway API HTTPRoute, the Inference Extension
//! InferencePool, the router's Ingress, and the KServe InferenceService that replaces the
//! Deployment and Service with `inferencePlatform: kserve`. Pure builders, like the rest.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::{Capabilities, Input, PORT, RenderError, dynamic, meta, name_of, selector_labels};
use crate::api::{FailureMode, InferencePlatform, OIMService, RouterSpec};

/// The KServe annotation choosing the deployment mode.
pub const KSERVE_DEPLOYMENT_MODE: &str = "serving.kserve.io/deploymentMode";
/// The KServe annotation choosing the autoscaler.
pub const KSERVE_AUTOSCALER_CLASS: &str = "serving.kserve.io/autoscalerClass";
/// The port KServe's predictor Service listens on (it forwards to the container's port).
const KSERVE_SERVICE_PORT: i32 = 80;
/// The endpoint picker's default gRPC port (Gateway API Inference Extension).
const EPP_PORT: i32 = 9002;

/// Gateway API `gateway.networking.k8s.io/v1` HTTPRoute.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Gateway API `gateway.networking.k8s.io/v1` Gateway (read only: its listeners say https).
pub fn gateway_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"), "gateways")
}

/// Gateway API Inference Extension `inference.networking.k8s.io/v1` InferencePool (the GA
/// group; the `x-k8s.io` v1alpha2 pools of older releases are not rendered).
pub fn inference_pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("inference.networking.k8s.io", "v1", "InferencePool"),
        "inferencepools",
    )
}

/// KServe `serving.kserve.io/v1beta1` InferenceService.
pub fn inference_service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService"),
        "inferenceservices",
    )
}

/// Whether the service runs on KServe.
pub fn on_kserve(svc: &OIMService) -> bool {
    svc.spec.inference_platform == Some(InferencePlatform::Kserve)
}

/// Why the router is not rendered as asked: it names an API (Gateway API, Inference Extension)
/// the cluster did not serve when the operator started. The service still serves in-cluster.
pub fn missing_router_api(svc: &OIMService, caps: &Capabilities) -> Option<String> {
    let router = router(svc)?;
    let wants_route = router.gateway.as_ref().is_some_and(|g| g.http_routes_enabled != Some(false));
    if wants_route && !caps.gateway {
        return Some("spec.expose.router.gateway: the Gateway API (gateway.networking.k8s.io/v1 HTTPRoute) was not found when the operator started, so no HTTPRoute is rendered and the service has no external endpoint; install the Gateway API CRDs and restart the operator, or use spec.expose.router.ingress".into());
    }
    if router.inference_pool.is_some() && !caps.inference_pools && !on_kserve(svc) {
        return Some("spec.expose.router.inferencePool: the Gateway API Inference Extension (inference.networking.k8s.io/v1 InferencePool) was not found when the operator started, so no InferencePool is rendered (an HTTPRoute goes to the Service); install the Inference Extension CRDs and restart the operator, or remove inferencePool".into());
    }
    None
}

fn router(svc: &OIMService) -> Option<&RouterSpec> {
    svc.spec.expose.as_ref()?.router.as_ref()
}

/// `<name>.<namespace>.<hostDomainName>`, NIM's router host.
pub fn router_host(svc: &OIMService) -> Option<String> {
    let domain = router(svc)?.host_domain_name.as_deref()?.trim_end_matches('.');
    Some(format!("{}.{}.{domain}", name_of(svc), svc.metadata.namespace.as_deref().unwrap_or("default")))
}

/// The Service traffic goes to and its port: ours, or KServe's predictor Service.
pub fn backend(svc: &OIMService) -> (String, i32) {
    if on_kserve(svc) {
        return (format!("{}-predictor", name_of(svc)), KSERVE_SERVICE_PORT);
    }
    let port = svc.spec.expose.as_ref().and_then(|e| e.service.as_ref()).and_then(|s| s.port).unwrap_or(PORT);
    (name_of(svc), port)
}

/// The Ingress of `router.ingress`: the router host, `/` to the Service, TLS with the secret.
pub fn router_ingress(svc: &OIMService) -> Option<Ingress> {
    let r = router(svc)?;
    let i = r.ingress.as_ref()?;
    let host = router_host(svc)?;
    let (service, port) = backend(svc);
    let mut meta = meta(svc, &name_of(svc), "inference");
    if let Some(a) = r.annotations.clone() {
        meta.annotations.get_or_insert_with(BTreeMap::new).extend(a);
    }
    let spec = IngressSpec {
        ingress_class_name: Some(i.ingress_class.clone()),
        rules: Some(vec![IngressRule {
            host: Some(host.clone()),
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath {
                    path: Some("/".into()),
                    path_type: "Prefix".into(),
                    backend: IngressBackend {
                        service: Some(IngressServiceBackend {
                            name: service,
                            port: Some(ServiceBackendPort { number: Some(port), ..Default::default() }),
                        }),
                        ..Default::default()
                    },
                }],
            }),
        }]),
        tls: i
            .tls_secret_name
            .clone()
            .map(|secret| vec![IngressTLS { hosts: Some(vec![host]), secret_name: Some(secret) }]),
        ..Default::default()
    };
    Some(Ingress { metadata: meta, spec: Some(spec), ..Default::default() })
}

/// The InferencePool of `router.inferencePool`, where its API exists: this service's pods on
/// the engine port, with the endpoint picker named in the spec.
pub fn inference_pool(input: &Input) -> Option<DynamicObject> {
    let svc = input.service;
    let pool = router(svc)?.inference_pool.as_ref()?;
    if !input.capabilities.inference_pools || on_kserve(svc) {
        return None;
    }
    let epp = &pool.endpoint_picker_ref;
    let mode = match epp.failure_mode.unwrap_or(FailureMode::FailClose) {
        FailureMode::FailOpen => "FailOpen",
        FailureMode::FailClose => "FailClose",
    };
    let spec = json!({
        "selector": {"matchLabels": selector_labels(&name_of(svc))},
        "targetPorts": [{"number": PORT}],
        "endpointPickerRef": {
            "kind": "Service",
            "name": epp.name,
            "port": {"number": epp.port.unwrap_or(EPP_PORT)},
            "failureMode": mode,
        },
    });
    Some(dynamic(input, &inference_pool_resource(), "inference", spec))
}

/// The HTTPRoute of `router.gateway`, where the Gateway API exists: the router host on the
/// parent Gateway, `/` to the InferencePool when one is rendered, else to the Service.
pub fn http_route(input: &Input, pool: Option<&DynamicObject>) -> Option<DynamicObject> {
    let svc = input.service;
    let r = router(svc)?;
    let g = r.gateway.as_ref().filter(|g| g.http_routes_enabled != Some(false))?;
    if !input.capabilities.gateway {
        return None;
    }
    let host = router_host(svc)?;
    let backend_ref = match pool {
        Some(p) => json!({
            "group": "inference.networking.k8s.io",
            "kind": "InferencePool",
            "name": p.metadata.name,
        }),
        None => {
            let (name, port) = backend(svc);
            json!({"group": "", "kind": "Service", "name": name, "port": port})
        }
    };
    let spec = json!({
        "parentRefs": [{
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "namespace": g.namespace,
            "name": g.name,
        }],
        "hostnames": [host],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [backend_ref],
        }],
    });
    let mut obj = dynamic(input, &http_route_resource(), "inference", spec);
    if let Some(a) = r.annotations.clone() {
        obj.metadata.annotations.get_or_insert_with(BTreeMap::new).extend(a);
    }
    Some(obj)
}

/// The KServe InferenceService of `inferencePlatform: kserve`: the Deployment's pod (same
/// container — image, args, env, exact resources, probes, security — volumes and placement)
/// as a RawDeployment predictor, with the replicas or autoscaling of the spec. KServe makes
/// the Deployment, Service and HPA from it.
pub fn inference_service(input: &Input, deployment: &Deployment) -> Result<Option<DynamicObject>, RenderError> {
    let svc = input.service;
    if !on_kserve(svc) {
        return Ok(None);
    }
    let spec = deployment.spec.as_ref();
    let mut pod = spec.and_then(|s| s.template.spec.clone()).unwrap_or_default();
    // KServe finds the serving container by this name.
    if let Some(c) = pod.containers.first_mut() {
        c.name = "kserve-container".into();
    }
    let mut predictor = serde_json::to_value(&pod).expect("typed objects serialize");
    let scale = svc.spec.scale.as_ref().filter(|s| s.enabled == Some(true));
    let autoscaler = match scale {
        Some(s) => {
            let hpa = s.hpa.clone().unwrap_or_default();
            predictor["minReplicas"] = json!(hpa.min_replicas.unwrap_or(1));
            predictor["maxReplicas"] = json!(hpa.max_replicas.max(1));
            let mut auto = json!({});
            if let Some(metrics) = &hpa.metrics {
                auto["metrics"] = Value::Array(kserve_metrics(metrics)?);
            }
            if let Some(b) = &hpa.behavior {
                auto["behavior"] = serde_json::to_value(b).expect("typed objects serialize");
            }
            if auto.as_object().is_some_and(|o| !o.is_empty()) {
                predictor["autoScaling"] = auto;
            }
            "hpa"
        }
        None => {
            let n = svc.spec.replicas.unwrap_or(1);
            predictor["minReplicas"] = json!(n);
            predictor["maxReplicas"] = json!(n);
            "none"
        }
    };
    if let Some(strategy) = spec.and_then(|s| s.strategy.as_ref()) {
        predictor["deploymentStrategy"] = serde_json::to_value(strategy).expect("typed objects serialize");
    }
    let mut obj = dynamic(input, &inference_service_resource(), "inference", json!({"predictor": predictor}));
    let annotations = obj.metadata.annotations.get_or_insert_with(BTreeMap::new);
    // The Deployment's annotations carry the stored selection; the InferenceService keeps it.
    annotations.extend(deployment.metadata.annotations.clone().unwrap_or_default());
    annotations.insert(KSERVE_DEPLOYMENT_MODE.into(), "RawDeployment".into());
    annotations.insert(KSERVE_AUTOSCALER_CLASS.into(), autoscaler.into());
    Ok(Some(obj))
}

/// HPA metrics in KServe's shape: Resource metrics carry over; other kinds cannot be said.
fn kserve_metrics(metrics: &[k8s_openapi::api::autoscaling::v2::MetricSpec]) -> Result<Vec<Value>, RenderError> {
    metrics
        .iter()
        .enumerate()
        .map(|(i, m)| match &m.resource {
            Some(r) if m.type_ == "Resource" => Ok(json!({
                "type": "Resource",
                "resource": {"name": r.name, "target": serde_json::to_value(&r.target).expect("typed objects serialize")},
            })),
            _ => Err(RenderError::InvalidSpec {
                field: format!("spec.scale.hpa.metrics[{i}]"),
                message: format!(
                    "type {} cannot be passed to a KServe InferenceService (it takes Resource metrics: cpu or memory); use a Resource metric or inferencePlatform: standalone",
                    m.type_
                ),
            }),
        })
        .collect()
}
