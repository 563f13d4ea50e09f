//! Kubernetes Events on our objects: only for changes a user should see.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use crate::controller::context::Context;

/// Records an Event on `object` (a Warning when `warning`); a failure to record is logged, never
/// fatal.
pub async fn publish(ctx: &Context, object: &ObjectReference, warning: bool, reason: &str, note: &str) {
    let ev = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.chars().take(128).collect(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&ev, object).await {
        // An Event is an API write like any other (counted in `oim_operator_api_writes_total`).
        Ok(()) => ctx.metrics.writes.add(),
        Err(e) => warn!(error = %e, "event not published"),
    }
}
