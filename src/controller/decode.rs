//! Our resources are watched as dynamic objects and decoded one by one, so one object the
//! operator cannot read (written by a newer CRD version, or before validation tightened) is
//! reported and skipped while every other object keeps reconciling. A typed watch would fail
//! its whole list on that one object.

use kube::Resource;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::controller::context::Context;

/// The API resource of one of our kinds.
pub fn resource<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// Decodes `obj` as `K`; the error names the field that does not fit.
pub fn decode<K: DeserializeOwned>(obj: &DynamicObject) -> Result<K, String> {
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

/// The `namespace/name` of a dynamic object.
pub fn id(obj: &DynamicObject) -> String {
    format!(
        "{}/{}",
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        obj.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Reports an object that does not decode (log, Event, metric) and waits for it to change.
pub async fn skip(ctx: &Context, obj: &DynamicObject, ar: &ApiResource, controller: &str, why: &str) -> Action {
    warn!(kind = %ar.kind, object = %id(obj), error = %why, "object not readable by this operator version; skipped");
    ctx.metrics.reconciled(controller, "decode", 0.0);
    let note = format!(
        "{} {} cannot be read by this operator: {why}; fix the field (or upgrade the operator to the CRD version that wrote it)",
        ar.kind,
        id(obj)
    );
    crate::controller::events::publish(ctx, &obj.object_ref(ar), true, "InvalidObject", &note).await;
    Action::await_change()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OIMService;

    #[test]
    fn an_object_that_does_not_fit_the_types_names_the_field() {
        let ar = resource::<OIMService>();
        let ok = DynamicObject::new("llm", &ar)
            .within("team")
            .data(serde_json::json!({"spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}}}));
        assert_eq!(decode::<OIMService>(&ok).unwrap().spec.model.name, "meta-llama/Llama-3.1-8B-Instruct");
        let bad = DynamicObject::new("llm", &ar).within("team").data(serde_json::json!({"spec": {"model": 42}}));
        let err = decode::<OIMService>(&bad).unwrap_err();
        assert!(err.starts_with("spec.model"), "{err}");
        assert_eq!(id(&bad), "team/llm");
    }
}
