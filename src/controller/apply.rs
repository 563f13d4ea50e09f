//! Server-side apply with one field manager, skipped when the live object already carries the
//! hash of exactly what we would apply, so a reconcile that changes nothing writes nothing.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::render::FIELD_MANAGER;

/// Annotation holding the hash of the applied configuration.
pub const APPLIED_HASH: &str = "oim.opea.dev/applied-hash";

/// Counts the operator's writes (applies and status patches); exported on /metrics, read by
/// tests and the benchmark ("a steady-state resync writes nothing").
#[derive(Debug, Default)]
pub struct WriteCounter(prometheus_client::metrics::counter::Counter);

impl WriteCounter {
    /// One more write.
    pub fn add(&self) {
        self.0.inc();
    }
    /// Writes so far.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
    /// The counter behind it, for registration.
    pub fn counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.0.clone()
    }
}

fn hash(obj: &Value) -> String {
    let digest = Sha256::digest(serde_json::to_vec(obj).unwrap_or_default());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Applies `obj` (a full object with apiVersion and kind) unless the live one already matches.
/// Returns whether it wrote.
pub async fn apply(
    client: &kube::Client,
    namespace: &str,
    obj: Value,
    writes: &WriteCounter,
) -> Result<bool, kube::Error> {
    apply_known(client, namespace, obj, writes, None).await
}

/// [`apply`], with the live object's applied hash already known from a cache (`Some(None)`: it
/// does not exist); None looks it up.
pub async fn apply_known(
    client: &kube::Client,
    namespace: &str,
    mut obj: Value,
    writes: &WriteCounter,
    known: Option<Option<String>>,
) -> Result<bool, kube::Error> {
    let h = hash(&obj);
    obj["metadata"]["annotations"][APPLIED_HASH] = Value::String(h.clone());
    obj["metadata"]["namespace"] = Value::String(namespace.to_string());
    let (api, name) = api_for(client, &obj);
    let live = match known {
        Some(k) => k,
        None => api.get_opt(&name).await?.and_then(|l| l.metadata.annotations.and_then(|mut a| a.remove(APPLIED_HASH))),
    };
    if live.as_ref() == Some(&h) {
        return Ok(false);
    }
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj)).await?;
    writes.add();
    Ok(true)
}

/// The dynamic API of a full object (apiVersion, kind, metadata.name, and metadata.namespace
/// unless cluster-scoped), and its name.
pub fn api_for(client: &kube::Client, obj: &Value) -> (Api<DynamicObject>, String) {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural_of(kind));
    let api = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    (api, obj["metadata"]["name"].as_str().unwrap_or_default().to_string())
}

/// The resource name of a kind, by English plural rules (`Ingress` -> `ingresses`,
/// `ValidatingAdmissionPolicy` -> `validatingadmissionpolicies`).
fn plural_of(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    if let Some(stem) = k.strip_suffix('y') {
        format!("{stem}ies")
    } else if k.ends_with('s') {
        format!("{k}es")
    } else {
        format!("{k}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plurals_match_the_api_resource_names() {
        for (kind, plural) in [
            ("Deployment", "deployments"),
            ("Ingress", "ingresses"),
            ("HorizontalPodAutoscaler", "horizontalpodautoscalers"),
            ("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
            ("ServiceMonitor", "servicemonitors"),
            ("PersistentVolumeClaim", "persistentvolumeclaims"),
        ] {
            assert_eq!(super::plural_of(kind), plural);
        }
    }
}
