//! Server-side apply with one field manager, for objects we own only. One policy for every
//! child (and the node agent's objects): write when the object is missing, when what we would
//! apply changed (the applied-hash annotation), or when someone else changed it since our last
//! apply (its generation, or resourceVersion for kinds without one, moved); otherwise write
//! nothing. An object of that name we did not create is a conflict: nothing is written to it.

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::discovery::ApiResource;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::render::FIELD_MANAGER;

/// Annotation holding the hash of the applied configuration.
pub const APPLIED_HASH: &str = "oim.opea.dev/applied-hash";

/// Counts the operator's writes (applies, deletes and status patches); exported on /metrics,
/// read by tests and the benchmark ("a steady-state resync writes nothing").
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

/// The hash of what we apply, stored on the object.
pub fn hash(obj: &Value) -> String {
    let digest = Sha256::digest(serde_json::to_vec(obj).unwrap_or_default());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Every kind the operator writes, from the typed API metadata (resource names as the API
/// server publishes them, never guessed).
fn known_kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<PersistentVolumeClaim>(&()),
        ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        ApiResource::erase::<Ingress>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<Namespace>(&()),
        ApiResource::erase::<ClusterRole>(&()),
        ApiResource::erase::<ClusterRoleBinding>(&()),
        ApiResource::erase::<ValidatingAdmissionPolicy>(&()),
        ApiResource::erase::<ValidatingAdmissionPolicyBinding>(&()),
        ApiResource::erase::<DaemonSet>(&()),
        crate::render::route_resource(),
        crate::render::service_monitor_resource(),
        crate::render::routing::http_route_resource(),
        crate::render::routing::inference_pool_resource(),
        crate::render::routing::inference_service_resource(),
        crate::render::leader_worker_set_resource(),
        ApiResource::erase::<crate::render::dra::ResourceClaimTemplate>(&()),
    ]
}

/// The API resource of a full object (apiVersion and kind); None for a kind we never write.
pub fn resource_of(obj: &Value) -> Option<ApiResource> {
    let api_version = obj["apiVersion"].as_str()?;
    let kind = obj["kind"].as_str()?;
    known_kinds().into_iter().find(|ar| ar.api_version == api_version && ar.kind == kind)
}

/// The dynamic API of a full object (namespaced when it carries a namespace), and its name;
/// `K` is `DynamicObject`, or `PartialObjectMeta<DynamicObject>` for answers with metadata only.
pub fn api_for<K>(client: &kube::Client, obj: &Value) -> Option<(Api<K>, String)>
where
    K: kube::Resource<DynamicType = ApiResource, Scope = kube::core::DynamicResourceScope>,
{
    let ar = resource_of(obj)?;
    let api = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    Some((api, obj["metadata"]["name"].as_str().unwrap_or_default().to_string()))
}

/// The mark of a live object that moves when anyone changes it: generation where the API keeps
/// one (status writes do not move it) with our own labels and annotations (edits of metadata do
/// not move generation, and the stored selection rides on them), else resourceVersion. Other
/// metadata (the Deployment controller's revision annotation) does not move it.
pub fn mark(meta: &ObjectMeta) -> String {
    use std::hash::{Hash, Hasher};
    match meta.generation {
        Some(g) if g > 0 => {
            fn ours(m: &Option<std::collections::BTreeMap<String, String>>) -> Vec<(&String, &String)> {
                m.iter().flatten().filter(|(k, _)| is_ours(k)).collect()
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (ours(&meta.labels), ours(&meta.annotations)).hash(&mut h);
            format!("g{g}/{:x}", h.finish())
        }
        _ => meta.resource_version.clone().unwrap_or_default(),
    }
}

/// A label or annotation key the operator sets.
pub fn is_ours(key: &str) -> bool {
    key.starts_with("oim.opea.dev/") || key.starts_with("app.kubernetes.io/")
}

/// What to do with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It carries what we would apply and nobody changed it since: write nothing.
    Unchanged,
    /// Missing, changed in what we apply, or changed by someone else: apply.
    Apply,
    /// An object of that name that is not ours: never written.
    Foreign,
}

/// Who may own an object: the controller owner reference's UID, or for kinds we create without
/// one (PVCs kept past their service), our labels naming the owner.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// The owner's UID.
    pub uid: &'a str,
    /// The owner's name (the `app.kubernetes.io/instance` label of what we create).
    pub name: &'a str,
}

impl Owner<'_> {
    /// Whether we created `meta` for this owner.
    pub fn owns(&self, meta: &ObjectMeta) -> bool {
        if super::children::controlled_by(meta, self.uid) {
            return true;
        }
        let unowned = meta.owner_references.as_ref().is_none_or(|o| o.is_empty());
        let labels = meta.labels.clone().unwrap_or_default();
        let is = |k: &str, v: &str| labels.get(k).map(String::as_str) == Some(v);
        // A service's own retained PVC; never an OIMCache's (`oim-cache`) of the same name.
        unowned
            && is("app.kubernetes.io/managed-by", FIELD_MANAGER)
            && is("app.kubernetes.io/name", "oim-service")
            && is("app.kubernetes.io/instance", self.name)
    }
}

/// The verdict for one object: `live` as seen now, `recorded` the mark of our last apply.
pub fn verdict(live: Option<&ObjectMeta>, owner: Option<&Owner>, hash: &str, recorded: Option<&str>) -> Verdict {
    let Some(live) = live else { return Verdict::Apply };
    if owner.is_some_and(|o| !o.owns(live)) {
        return Verdict::Foreign;
    }
    let carried = live.annotations.as_ref().and_then(|a| a.get(APPLIED_HASH)).map(String::as_str);
    if carried != Some(hash) {
        return Verdict::Apply;
    }
    match recorded {
        Some(m) if m != mark(live) => Verdict::Apply,
        // First sight (e.g. after a restart): an edit made meanwhile shows as another writer
        // of the spec.
        None if edited_by_others(live) => Verdict::Apply,
        _ => Verdict::Unchanged,
    }
}

/// Whether a field manager other than ours holds content fields (`spec`, `data`, ...: anything
/// but metadata and status) or one of our own labels or annotations through the object itself —
/// not through a status or scale subresource, which controllers and autoscalers write.
fn edited_by_others(live: &ObjectMeta) -> bool {
    live.managed_fields.iter().flatten().any(edits)
}

/// Whether this managedFields entry is such an edit.
fn edits(m: &ManagedFieldsEntry) -> bool {
    let ours = m.manager.as_deref().is_some_and(|n| n.starts_with(FIELD_MANAGER));
    let subresource = m.subresource.as_deref().is_some_and(|s| !s.is_empty());
    let content = m.fields_v1.as_ref().and_then(|f| f.0.as_object()).is_some_and(|f| {
        f.keys().any(|k| k != "f:metadata" && k != "f:status" && k != "f:apiVersion" && k != "f:kind")
            || holds_our_metadata(f.get("f:metadata"))
    });
    !ours && !subresource && content
}

/// Whether a managedFields `f:metadata` tree holds a label or annotation key of ours.
fn holds_our_metadata(metadata: Option<&Value>) -> bool {
    ["f:labels", "f:annotations"].iter().any(|set| {
        metadata
            .and_then(|m| m.get(set))
            .and_then(Value::as_object)
            .is_some_and(|keys| keys.keys().any(|k| k.strip_prefix("f:").is_some_and(is_ours)))
    })
}

/// The field manager that edited the object as [`verdict`] counts an edit, if any: all the
/// caches keep of managedFields (a manager's full field set is as large as the object).
pub fn editor(meta: &ObjectMeta) -> Option<String> {
    meta.managed_fields.iter().flatten().find(|m| edits(m)).map(|m| m.manager.clone().unwrap_or_default())
}

/// The managedFields of an object whose [`editor`] is `manager`, as [`verdict`] reads them.
pub fn edited_by(manager: Option<&str>) -> Option<Vec<ManagedFieldsEntry>> {
    manager.map(|m| {
        vec![ManagedFieldsEntry {
            manager: Some(m.to_string()),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {}}))),
            ..Default::default()
        }]
    })
}

/// Adds the hash annotation and namespace to a rendered object; returns the hash.
pub fn stamp(obj: &mut Value, namespace: Option<&str>) -> String {
    let h = hash(obj);
    obj["metadata"]["annotations"][APPLIED_HASH] = Value::String(h.clone());
    if let Some(ns) = namespace {
        obj["metadata"]["namespace"] = Value::String(ns.to_string());
    }
    h
}

/// A forced server-side apply of a stamped object; returns the live metadata after it.
pub async fn server_side_apply(
    client: &kube::Client,
    obj: &Value,
    writes: &WriteCounter,
) -> Result<ObjectMeta, kube::Error> {
    let Some((api, name)) = api_for(client, obj) else {
        return Err(kube::Error::Api(Box::new(
            kube::core::Status::failure(&format!("the operator does not write {} objects", obj["kind"]), "NotFound")
                .with_code(404),
        )));
    };
    // The API server answers with metadata only: the rest is what we sent, and parsing a whole
    // Deployment per write would cost memory and CPU for nothing.
    let api: Api<PartialObjectMeta<DynamicObject>> = api;
    let live = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await?;
    writes.add();
    Ok(live.metadata)
}

/// The key children are recorded under.
pub fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn live(owner_uid: Option<&str>, hash: &str, generation: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some("llm".into()),
            generation: Some(generation),
            resource_version: Some("100".into()),
            annotations: Some([(APPLIED_HASH.to_string(), hash.to_string())].into()),
            owner_references: owner_uid.map(|u| {
                vec![OwnerReference {
                    uid: u.into(),
                    controller: Some(true),
                    kind: "OIMService".into(),
                    name: "llm".into(),
                    api_version: "oim.opea.dev/v1alpha1".into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_missing_changed_or_edited_objects_of_ours_are_applied() {
        let me = Owner { uid: "u1", name: "llm" };
        assert_eq!(verdict(None, Some(&me), "h", None), Verdict::Apply, "missing");
        let ours = live(Some("u1"), "h", 3);
        assert_eq!(verdict(Some(&ours), Some(&me), "h", None), Verdict::Unchanged, "first sight after a restart");
        let steady = mark(&ours);
        assert_eq!(verdict(Some(&ours), Some(&me), "h", Some(&steady)), Verdict::Unchanged, "steady state");
        assert_eq!(verdict(Some(&ours), Some(&me), "h2", Some(&steady)), Verdict::Apply, "the render changed");
        let mut spec_edit = ours.clone();
        spec_edit.generation = Some(4);
        assert_eq!(verdict(Some(&spec_edit), Some(&me), "h", Some(&steady)), Verdict::Apply, "edited by someone else");
        let mut revision = ours.clone();
        revision.annotations.as_mut().unwrap().insert("deployment.kubernetes.io/revision".into(), "2".into());
        assert_eq!(verdict(Some(&revision), Some(&me), "h", Some(&steady)), Verdict::Unchanged, "a controller's note");
        let mut stored = ours.clone();
        stored.annotations.as_mut().unwrap().insert("oim.opea.dev/profile".into(), "image: evil".into());
        assert_eq!(
            verdict(Some(&stored), Some(&me), "h", Some(&steady)),
            Verdict::Apply,
            "our annotation edited (generation does not move)"
        );
        let mut edited = ours.clone();
        edited.managed_fields = Some(vec![
            ManagedFieldsEntry {
                manager: Some("kube-controller-manager".into()),
                subresource: Some("status".into()),
                fields_v1: Some(FieldsV1(serde_json::json!({"f:status": {}}))),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some("kube-controller-manager".into()),
                subresource: Some("scale".into()),
                fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {"f:replicas": {}}}))),
                ..Default::default()
            },
        ]);
        assert_eq!(verdict(Some(&edited), Some(&me), "h", None), Verdict::Unchanged, "controllers are not edits");
        edited.managed_fields.as_mut().unwrap().push(ManagedFieldsEntry {
            manager: Some("kubectl-set".into()),
            operation: Some("Update".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {"f:template": {}}}))),
            ..Default::default()
        });
        assert_eq!(verdict(Some(&edited), Some(&me), "h", None), Verdict::Apply, "edited while we were not looking");
        let mut slimmed = edited.clone();
        slimmed.managed_fields = edited_by(editor(&slimmed).as_deref());
        assert_eq!(verdict(Some(&slimmed), Some(&me), "h", None), Verdict::Apply, "as the cache keeps it");
        let mut annotated = ours.clone();
        annotated.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl-annotate".into()),
            operation: Some("Update".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:metadata": {"f:annotations": {
                "f:oim.opea.dev/profile": {}, "f:team": {}
            }}}))),
            ..Default::default()
        }]);
        annotated.managed_fields = edited_by(editor(&annotated).as_deref());
        assert_eq!(verdict(Some(&annotated), Some(&me), "h", None), Verdict::Apply, "our annotation edited meanwhile");
        annotated.managed_fields.as_mut().unwrap()[0].fields_v1 =
            Some(FieldsV1(serde_json::json!({"f:metadata": {"f:annotations": {"f:team": {}}}})));
        assert_eq!(verdict(Some(&annotated), Some(&me), "h", None), Verdict::Unchanged, "someone's own annotation");
        let foreign = live(None, "h", 1);
        assert_eq!(verdict(Some(&foreign), Some(&me), "h", None), Verdict::Foreign, "not created by us");
        let other_owner = live(Some("u2"), "h", 1);
        assert_eq!(verdict(Some(&other_owner), Some(&me), "h", None), Verdict::Foreign, "another owner's");
        let mut retained_pvc = live(None, "h", 0);
        retained_pvc.labels = Some(
            [
                ("app.kubernetes.io/managed-by", FIELD_MANAGER),
                ("app.kubernetes.io/name", "oim-service"),
                ("app.kubernetes.io/instance", "llm"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        );
        assert_eq!(verdict(Some(&retained_pvc), Some(&me), "h", None), Verdict::Unchanged, "ours by label");
        let mut cache_pvc = retained_pvc.clone();
        cache_pvc.labels.as_mut().unwrap().insert("app.kubernetes.io/name".into(), "oim-cache".into());
        assert_eq!(verdict(Some(&cache_pvc), Some(&me), "h", None), Verdict::Foreign, "an OIMCache's PVC");
        assert_eq!(mark(&retained_pvc), "100", "no generation: the resourceVersion");
    }

    #[test]
    fn every_kind_written_resolves_to_its_published_resource_name() {
        for (api_version, kind, plural) in [
            ("apps/v1", "Deployment", "deployments"),
            ("networking.k8s.io/v1", "Ingress", "ingresses"),
            ("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
            ("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors"),
            ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
            ("route.openshift.io/v1", "Route", "routes"),
            ("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
            ("inference.networking.k8s.io/v1", "InferencePool", "inferencepools"),
            ("serving.kserve.io/v1beta1", "InferenceService", "inferenceservices"),
            ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets"),
        ] {
            let obj = serde_json::json!({"apiVersion": api_version, "kind": kind});
            assert_eq!(resource_of(&obj).map(|r| r.plural), Some(plural.to_string()), "{kind}");
        }
        assert_eq!(resource_of(&serde_json::json!({"apiVersion": "v1", "kind": "Secret"})), None);
    }
}
