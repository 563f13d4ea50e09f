//! The download Job: run it, replace it when what it downloads changed (its pod template is
//! immutable), and read its progress from its status and its pods' termination messages.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PropagationPolicy};
use kube::{Resource, ResourceExt};

use crate::api::{CacheState, OIMCache};
use crate::controller::apply::{server_side_apply, stamp};
use crate::controller::cache::pvc::{Pvc, held};
use crate::controller::cache::report::{Done, Report};
use crate::controller::context::{Context, Error};
use crate::controller::events::publish;
use crate::profile::weights::Wanted;
use crate::render::cache::JOB_HASH;
use crate::render::with_kind;

/// What ensuring the Job came to.
pub enum Ensured {
    /// The Job runs (or ran) as built.
    Running,
    /// An old Job is being replaced; look again shortly.
    Again,
}

/// Runs `job` unless the live one is it; replaces a live Job built for other downloads.
pub async fn ensure(ctx: &Context, cache: &OIMCache, job: &Job, live: Option<&Job>) -> Result<Ensured, Error> {
    let name = job.name_any();
    let want = job.labels().get(JOB_HASH);
    match live {
        Some(old) if old.metadata.deletion_timestamp.is_some() => return Ok(Ensured::Again),
        Some(old) if old.labels().get(JOB_HASH) != want => {
            let foreground =
                DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), ..Default::default() };
            Api::<Job>::namespaced(ctx.client.clone(), &cache.namespace().unwrap_or_default())
                .delete(&name, &foreground)
                .await
                .map_err(|source| Error::Delete { kind: "Job".into(), name: name.clone(), source })?;
            ctx.metrics.writes.add();
            return Ok(Ensured::Again);
        }
        Some(_) => return Ok(Ensured::Running),
        None => {}
    }
    let mut obj = with_kind(job);
    stamp(&mut obj, None);
    server_side_apply(&ctx.client, &obj, &ctx.metrics.writes).await.map_err(|source| Error::Apply {
        kind: "Job".into(),
        name: name.clone(),
        source,
    })?;
    publish(ctx, &cache.object_ref(&()), false, "DownloadStarted", &format!("Job {name}")).await;
    Ok(Ensured::Running)
}

/// Where the download stands (pure): Ready with the commits reported, Failed with the pods'
/// reason, else in progress with the last problem seen.
pub fn progress(cache: &OIMCache, pvc: &Pvc, wanted: &[Wanted], job: Option<&Job>, pods: &[Pod]) -> Report {
    let job_name = crate::render::cache::job_name(cache);
    let status = job.and_then(|j| j.status.clone()).unwrap_or_default();
    let reasons = pod_reasons(pods);
    let mut report = Report::problem(cache, CacheState::InProgress, "Downloading", String::new());
    report.pvc = Some(pvc.name.clone());
    report.size = pvc.size.clone();
    report.start = status.start_time.clone();
    let failed = status.conditions.iter().flatten().find(|c| c.type_ == "Failed" && c.status == "True");
    if status.succeeded.unwrap_or(0) > 0 {
        let reported = commits_from(pods);
        let commits: BTreeMap<String, String> = wanted
            .iter()
            .map(|w| (w.weights.clone(), reported.get(&w.weights).cloned().unwrap_or_else(|| w.revision.clone())))
            .collect();
        report.done = Some(
            wanted
                .iter()
                .map(|w| Done {
                    weights: w.weights.clone(),
                    revision: w.revision.clone(),
                    commit: commits[&w.weights].clone(),
                })
                .collect(),
        );
        report.profiles = held(wanted, &commits);
        report.state = CacheState::Ready;
        report.reason = "Ready";
        report.message = format!("weights of {} profile(s) in PVC {}", report.profiles.len(), pvc.name);
        report.completion = status.completion_time.clone();
    } else if let Some(f) = failed {
        let why = reasons.first().cloned().unwrap_or_else(|| f.message.clone().unwrap_or_default());
        report.state = CacheState::Failed;
        report.reason = "DownloadFailed";
        report.message =
            format!("download Job {job_name} failed ({}): {why}", f.reason.clone().unwrap_or_else(|| "Failed".into()));
    } else {
        let detail = reasons.first().map(|r| format!("; last problem: {r}")).unwrap_or_default();
        let names: Vec<String> = wanted.iter().map(|w| format!("{}@{}", w.weights, w.revision)).collect();
        report.message = format!("Job {job_name} downloads {}{detail}", names.join(", "));
    }
    report
}

fn container_states(pods: &[Pod]) -> impl Iterator<Item = k8s_openapi::api::core::v1::ContainerState> + '_ {
    pods.iter().flat_map(|p| {
        let s = p.status.as_ref();
        let init = s.and_then(|s| s.init_container_statuses.clone()).into_iter().flatten();
        init.chain(s.and_then(|s| s.container_statuses.clone()).into_iter().flatten()).filter_map(|c| c.state)
    })
}

/// Why a Job's pods failed or wait, from their container states: image pulls, auth errors in
/// the downloader's message, OOM kills.
fn pod_reasons(pods: &[Pod]) -> Vec<String> {
    let mut out = vec![];
    for st in container_states(pods) {
        if let Some(w) = st.waiting.filter(|w| w.reason.as_deref().is_some_and(|r| r != "PodInitializing")) {
            out.push(format!("{}: {}", w.reason.unwrap_or_default(), w.message.unwrap_or_default()));
        }
        if let Some(t) = st.terminated.filter(|t| t.exit_code != 0) {
            let msg = t.message.unwrap_or_default();
            out.push(format!("{} (exit {}): {}", t.reason.unwrap_or_default(), t.exit_code, msg.trim()));
        }
    }
    out.dedup();
    out
}

/// Commits the downloader reported in its termination messages (`{"repo", "commit"}`).
fn commits_from(pods: &[Pod]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for st in container_states(pods) {
        let msg = st.terminated.and_then(|t| t.message).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&msg)
            && let (Some(repo), Some(commit)) = (v["repo"].as_str(), v["commit"].as_str())
        {
            out.insert(repo.to_string(), commit.to_string());
        }
    }
    out
}
