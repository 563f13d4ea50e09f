//! OIMService status (DESIGN §3): state mapping and conditions whose lastTransitionTime moves
//! only on a real change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{OIMServiceStatus, ServiceState};

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
    let strip = |s: &OIMServiceStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    a.map(strip) != Some(strip(b))
}
