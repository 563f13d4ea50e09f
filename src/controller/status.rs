//! OIMService status (DESIGN §3): state mapping and conditions whose lastTransitionTime moves
//! only on a real change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{OIMServiceStatus, ServiceState};
use crate::render::Rendered;

/// A condition to set: type, status, reason, message.
pub struct Cond<'a>(pub &'a str, pub bool, pub &'a str, pub String);

/// Conditions from `wanted`, keeping each old lastTransitionTime when its status did not change.
pub fn conditions(old: &[Condition], wanted: &[Cond], generation: Option<i64>) -> Vec<Condition> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    wanted
        .iter()
        .map(|Cond(type_, ok, reason, message)| {
            let status = if *ok { "True" } else { "False" }.to_string();
            let previous = old.iter().find(|c| c.type_ == *type_);
            let since = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message: message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// The summary state: Ready iff the Ready condition is True; Failed only for spec errors; NotReady
/// when a profile is selected but not available; else Pending.
pub fn state(conditions: &[Condition], spec_error: bool) -> ServiceState {
    let is = |t: &str| conditions.iter().any(|c| c.type_ == t && c.status == "True");
    if spec_error {
        ServiceState::Failed
    } else if is("Ready") {
        ServiceState::Ready
    } else if is("ProfileSelected") {
        ServiceState::NotReady
    } else {
        ServiceState::Pending
    }
}

/// Whether two statuses differ in anything but condition timestamps.
pub fn differs(a: Option<&OIMServiceStatus>, b: &OIMServiceStatus) -> bool {
    differs_but_times(a, b, |s| &mut s.conditions)
}

/// Whether two statuses of any kind differ in anything but the timestamps of the conditions
/// `conditions` points at: a status write is skipped when only time would change.
pub fn differs_but_times<S: Clone + PartialEq>(
    a: Option<&S>,
    b: &S,
    conditions: impl Fn(&mut S) -> &mut Vec<Condition>,
) -> bool {
    let strip = |s: &S| {
        let mut s = s.clone();
        for c in conditions(&mut s) {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    a.map(&strip) != Some(strip(b))
}

/// What the cluster assigned to the exposure objects.
#[derive(Debug, Default)]
pub struct Assigned {
    /// A LoadBalancer Service's hostname or IP.
    pub load_balancer: Option<String>,
    /// A Route's host, when the router picked it.
    pub route_host: Option<String>,
}

/// The URL users reach the service at from outside, derived from the Route, else the Ingress,
/// else a LoadBalancer Service — never probed over the network.
pub fn external_endpoint(r: &Rendered, assigned: &Assigned) -> Option<String> {
    if let Some(route) = &r.route {
        let host = route.data["spec"]["host"].as_str().map(str::to_string).or_else(|| assigned.route_host.clone());
        let scheme = if route.data["spec"]["tls"].is_null() { "http" } else { "https" };
        if let Some(h) = host {
            return Some(format!("{scheme}://{h}"));
        }
    }
    if let Some(spec) = r.ingress.as_ref().and_then(|i| i.spec.as_ref()) {
        let host = spec.rules.iter().flatten().find_map(|rule| rule.host.clone());
        if let Some(h) = host {
            let tls = spec.tls.iter().flatten().any(|t| t.hosts.iter().flatten().any(|x| *x == h));
            return Some(format!("{}://{h}", if tls { "https" } else { "http" }));
        }
    }
    let port = r.service.spec.as_ref().and_then(|s| s.ports.as_ref()).and_then(|p| p.first()).map_or(8000, |p| p.port);
    assigned.load_balancer.as_ref().map(|a| format!("http://{a}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::devices;
    use crate::hardware::inventory::{AcceleratorGroup, Inventory};
    use crate::profile::engines::Engines;
    use crate::profile::select::{NodeView, groups};
    use crate::render::{Capabilities, Input, Platform, Weights, render};

    fn rendered(expose: &str, routes: bool) -> Rendered {
        let svc: crate::api::OIMService = serde_saphyr::from_str(&format!(
            "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: llm, namespace: team}}\nspec:\n  model: {{name: meta-llama/Llama-3.1-8B-Instruct}}\n  expose: {expose}\n"
        ))
        .unwrap();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/profiles/llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml"
        );
        let profile = crate::profile::Profile::parse(&std::fs::read(path).unwrap(), path).unwrap();
        let inv = Inventory {
            node: "n1".into(),
            accelerators: vec![AcceleratorGroup::of(devices::by_slug("h100-sxm-80gb").unwrap(), 8)],
            ..Inventory::default()
        };
        let group = groups(&[NodeView::offline(inv)], &[], &Default::default()).0.remove(0);
        render(&Input {
            service: &svc,
            profile: &profile,
            digest: "",
            source: "",
            selection: Default::default(),
            group: &group,
            weights: Weights::Hub,
            platform: if routes { Platform::Openshift } else { Platform::Kubernetes },
            capabilities: Capabilities { routes, service_monitors: false, dra: false },
            engines: &Engines::builtin(),
            device_groups: vec![],
        })
        .unwrap()
    }

    #[test]
    fn the_external_endpoint_comes_from_the_route_then_the_ingress_then_the_load_balancer() {
        let none = Assigned::default();
        assert_eq!(
            external_endpoint(&rendered("{}", false), &none),
            None,
            "a ClusterIP service has no external endpoint"
        );
        let ingress =
            "{ingress: {enabled: true, spec: {rules: [{host: llm.example.com}], tls: [{hosts: [llm.example.com]}]}}}";
        assert_eq!(external_endpoint(&rendered(ingress, false), &none).as_deref(), Some("https://llm.example.com"));
        let plain = "{ingress: {enabled: true, spec: {rules: [{host: llm.lan}]}}}";
        assert_eq!(external_endpoint(&rendered(plain, false), &none).as_deref(), Some("http://llm.lan"));
        let route = "{route: {enabled: true, host: llm.apps.example.com}}";
        assert_eq!(external_endpoint(&rendered(route, true), &none).as_deref(), Some("https://llm.apps.example.com"));
        let assigned = Assigned { route_host: Some("llm-team.apps.ocp".into()), ..Default::default() };
        let route = "{route: {enabled: true}}";
        assert_eq!(external_endpoint(&rendered(route, true), &assigned).as_deref(), Some("https://llm-team.apps.ocp"));
        let lb = Assigned { load_balancer: Some("203.0.113.7".into()), ..Default::default() };
        let svc = "{service: {type: LoadBalancer, port: 9000}}";
        assert_eq!(external_endpoint(&rendered(svc, false), &lb).as_deref(), Some("http://203.0.113.7:9000"));
    }
}
