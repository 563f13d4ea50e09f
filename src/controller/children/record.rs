//! A cached child as the reconcile reads it, and nothing more: its versions, owner references,
//! our labels and annotations (shared strings), the field manager that edited it behind our
//! back, and for workloads their rollout fields. At 10,000 services the slimmed objects
//! themselves were most of the operator's memory (~11 KB per service; a record is under 1 KB,
//! the stored selection it carries shared by every service of the same profile).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{ApiResource, DynamicObject};
use kube::core::TypeMeta;

use crate::controller::apply::{edited_by, editor, is_ours};
use crate::controller::intern::Interner;

type Pairs = Box<[(Arc<str>, Arc<str>)]>;

/// One cached child (its namespace and name are the cache's key).
#[derive(Debug, Clone)]
pub struct Record {
    resource_version: Option<Box<str>>,
    generation: Option<i64>,
    created: Option<Time>,
    deleting: Option<Time>,
    owners: Box<[Owner]>,
    /// Our labels and annotations only: no other key is read.
    labels: Pairs,
    annotations: Pairs,
    /// Who else edited content or our metadata (`apply::editor`).
    editor: Option<Arc<str>>,
    body: Body,
}

#[derive(Debug, Clone)]
struct Owner {
    api_version: Arc<str>,
    kind: Arc<str>,
    name: Arc<str>,
    uid: Arc<str>,
    controller: Option<bool>,
    block_owner_deletion: Option<bool>,
}

/// What the status reads beyond metadata.
#[derive(Debug, Clone)]
enum Body {
    Meta,
    Deployment {
        replicas: Option<i32>,
        available: Option<i32>,
        updated: Option<i32>,
        observed: Option<i64>,
    },
    /// A LeaderWorkerSet: `spec.replicas` and its status.
    Group(serde_json::Value),
}

impl Record {
    /// The record of an object with this metadata and nothing else read.
    pub fn meta(meta: &ObjectMeta, strings: &Interner) -> Record {
        let pairs = |m: &Option<BTreeMap<String, String>>| -> Pairs {
            m.iter().flatten().filter(|(k, _)| is_ours(k)).map(|(k, v)| (strings.get(k), strings.get(v))).collect()
        };
        Record {
            resource_version: meta.resource_version.as_deref().map(Into::into),
            generation: meta.generation,
            created: meta.creation_timestamp.clone(),
            deleting: meta.deletion_timestamp.clone(),
            owners: meta
                .owner_references
                .iter()
                .flatten()
                .map(|o| Owner {
                    api_version: strings.get(&o.api_version),
                    kind: strings.get(&o.kind),
                    name: strings.get(&o.name),
                    uid: strings.get(&o.uid),
                    controller: o.controller,
                    block_owner_deletion: o.block_owner_deletion,
                })
                .collect(),
            labels: pairs(&meta.labels),
            annotations: pairs(&meta.annotations),
            editor: editor(meta).map(|m| strings.get(&m)),
            body: Body::Meta,
        }
    }

    /// A Deployment's record: its metadata and rollout fields.
    pub fn deployment(d: &Deployment, strings: &Interner) -> Record {
        let status = d.status.as_ref();
        Record {
            body: Body::Deployment {
                replicas: d.spec.as_ref().and_then(|s| s.replicas),
                available: status.and_then(|s| s.available_replicas),
                updated: status.and_then(|s| s.updated_replicas),
                observed: status.and_then(|s| s.observed_generation),
            },
            ..Record::meta(&d.metadata, strings)
        }
    }

    /// A LeaderWorkerSet's record: its metadata, `spec.replicas` and status.
    pub fn group(g: &DynamicObject, strings: &Interner) -> Record {
        let mut body = serde_json::json!({"status": g.data.get("status")});
        if let Some(replicas) = g.data.pointer("/spec/replicas") {
            body["spec"] = serde_json::json!({"replicas": replicas});
        }
        Record { body: Body::Group(body), ..Record::meta(&g.metadata, strings) }
    }

    /// The controller owner reference's UID.
    pub fn controller_uid(&self) -> Option<&Arc<str>> {
        self.owners.iter().find(|o| o.controller == Some(true)).map(|o| &o.uid)
    }

    /// Whether it is being deleted.
    pub fn deleting(&self) -> bool {
        self.deleting.is_some()
    }

    /// Its metadata, as far as it was kept.
    pub fn to_meta(&self, namespace: &str, name: &str) -> ObjectMeta {
        let map = |pairs: &Pairs| {
            (!pairs.is_empty()).then(|| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        };
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            resource_version: self.resource_version.as_deref().map(Into::into),
            generation: self.generation,
            creation_timestamp: self.created.clone(),
            deletion_timestamp: self.deleting.clone(),
            owner_references: (!self.owners.is_empty()).then(|| {
                self.owners
                    .iter()
                    .map(|o| OwnerReference {
                        api_version: o.api_version.to_string(),
                        kind: o.kind.to_string(),
                        name: o.name.to_string(),
                        uid: o.uid.to_string(),
                        controller: o.controller,
                        block_owner_deletion: o.block_owner_deletion,
                    })
                    .collect()
            }),
            labels: map(&self.labels),
            annotations: map(&self.annotations),
            managed_fields: edited_by(self.editor.as_deref()),
            ..Default::default()
        }
    }

    /// The Deployment as far as it was kept (metadata, replicas, rollout status); None for
    /// another kind.
    pub fn to_deployment(&self, namespace: &str, name: &str) -> Option<Deployment> {
        let Body::Deployment { replicas, available, updated, observed } = &self.body else { return None };
        Some(Deployment {
            metadata: self.to_meta(namespace, name),
            spec: Some(DeploymentSpec { replicas: *replicas, ..Default::default() }),
            status: Some(DeploymentStatus {
                available_replicas: *available,
                updated_replicas: *updated,
                observed_generation: *observed,
                ..Default::default()
            }),
        })
    }

    /// The LeaderWorkerSet as far as it was kept; None for another kind.
    pub fn to_group(&self, ar: &ApiResource, namespace: &str, name: &str) -> Option<DynamicObject> {
        let Body::Group(data) = &self.body else { return None };
        Some(DynamicObject {
            types: Some(TypeMeta { api_version: ar.api_version.clone(), kind: ar.kind.clone() }),
            metadata: self.to_meta(namespace, name),
            data: data.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::apply::{Owner as Claimant, Verdict, mark, verdict};
    use crate::controller::service::status::Rollout;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn live() -> Deployment {
        serde_saphyr::from_str(
            r#"
metadata:
  name: llm
  namespace: team
  resourceVersion: "41"
  generation: 3
  creationTimestamp: "2026-11-27T10:00:00Z"
  labels: {app.kubernetes.io/managed-by: oim-operator, app.kubernetes.io/instance: llm, team: search}
  annotations:
    oim.opea.dev/applied-hash: h
    oim.opea.dev/profile: "engine: {name: vllm}"
    deployment.kubernetes.io/revision: "2"
  ownerReferences:
  - {apiVersion: oim.opea.dev/v1alpha1, kind: OIMService, name: llm, uid: u1, controller: true}
spec:
  replicas: 2
  selector: {matchLabels: {app: llm}}
  template: {spec: {containers: [{name: vllm, image: vllm}]}}
status: {availableReplicas: 1, updatedReplicas: 2, observedGeneration: 3}
"#,
        )
        .unwrap()
    }

    #[test]
    fn a_cached_deployment_answers_every_question_the_reconcile_asks_as_the_object_would() {
        let strings = Interner::default();
        let d = live();
        let kept = Record::deployment(&d, &strings).to_deployment("team", "llm").unwrap();
        let me = Claimant { uid: "u1", name: "llm" };
        let seen = mark(&d.metadata);
        assert_eq!(mark(&kept.metadata), seen, "the same mark");
        assert_eq!(verdict(Some(&kept.metadata), Some(&me), "h", Some(&seen)), Verdict::Unchanged);
        assert_eq!(verdict(Some(&kept.metadata), Some(&me), "h2", Some(&seen)), Verdict::Apply);
        let stranger = Claimant { uid: "u2", name: "llm" };
        assert_eq!(verdict(Some(&kept.metadata), Some(&stranger), "h", None), Verdict::Foreign);
        assert_eq!(Rollout::of(Some(&kept)), Rollout::of(Some(&d)), "the same rollout");
        assert_eq!(kept.metadata.creation_timestamp, d.metadata.creation_timestamp);
        let ann = kept.metadata.annotations.unwrap();
        assert_eq!(ann["oim.opea.dev/profile"], "engine: {name: vllm}", "the stored selection is kept whole");
        assert!(!ann.contains_key("deployment.kubernetes.io/revision"), "only our annotations are kept");
        assert!(kept.spec.unwrap().template.spec.is_none(), "no pod template");
    }

    #[test]
    fn an_edit_behind_our_back_survives_the_cache_and_controllers_do_not_count() {
        let strings = Interner::default();
        let mut d = live();
        d.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kube-controller-manager".into()),
            subresource: Some("status".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:status": {}}))),
            ..Default::default()
        }]);
        let me = Claimant { uid: "u1", name: "llm" };
        let kept = Record::deployment(&d, &strings).to_meta("team", "llm");
        assert_eq!(verdict(Some(&kept), Some(&me), "h", None), Verdict::Unchanged, "a controller's status");
        d.metadata.managed_fields.as_mut().unwrap().push(ManagedFieldsEntry {
            manager: Some("kubectl-edit".into()),
            operation: Some("Update".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {"f:template": {}}}))),
            ..Default::default()
        });
        let kept = Record::deployment(&d, &strings).to_meta("team", "llm");
        assert_eq!(verdict(Some(&kept), Some(&me), "h", None), Verdict::Apply, "edited while we were not looking");
    }

    #[test]
    fn services_of_one_profile_share_one_copy_of_the_stored_selection() {
        let strings = Interner::default();
        let (a, b) = (Record::deployment(&live(), &strings), Record::deployment(&live(), &strings));
        let profile =
            |r: &Record| r.annotations.iter().find(|(k, _)| &**k == "oim.opea.dev/profile").unwrap().1.clone();
        assert!(Arc::ptr_eq(&profile(&a), &profile(&b)));
    }
}
