//! The download Job: run it, replace it when what it downloads changed (its pod template is
//! immutable), run it again when it failed and its cause may be gone (the token Secret changed,
//! or after a backoff: the hub may be back), and read its progress from its status and its pods'
//! termination messages.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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

/// Annotation on the download Job and its pods: which attempt at this download it is.
pub const ATTEMPT: &str = "oim.opea.dev/download-attempt";
/// Annotation on the download Job: the resourceVersion of the token Secret it started with
/// (empty without one), so a changed token is noticed.
pub const TOKEN_VERSION: &str = "oim.opea.dev/token-version";
/// How often a failed download looks at its token Secret again (a `get`: the operator may not
/// list or watch Secrets).
pub const TOKEN_POLL: Duration = Duration::from_secs(10);

/// The wait after the `attempt`-th failed download before the next: 1 min doubling to 1 h.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs((60u64 << attempt.saturating_sub(1).min(6)).min(3600))
}

/// When a failed download runs again.
#[derive(Debug, PartialEq)]
pub enum Retry {
    /// Now, because of this.
    Now(String),
    /// After `left`, at `at` (the failure time plus the backoff), unless the token Secret
    /// changes first.
    After {
        /// Time left.
        left: Duration,
        /// When, to the second.
        at: String,
    },
}

/// Whether `job` failed.
pub fn failed(job: &Job) -> bool {
    job.status.iter().flat_map(|s| s.conditions.iter().flatten()).any(|c| c.type_ == "Failed" && c.status == "True")
}

/// Which attempt `job` is (1 for a Job without the annotation).
pub fn attempt(job: &Job) -> u32 {
    job.annotations().get(ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(1).max(1)
}

/// When the failed `job` runs again (pure): at once when the token Secret's version differs
/// from the one it started with, else [`retry_delay`] after it failed.
pub fn retry(job: &Job, token_version: &str, now: &Time) -> Retry {
    let started_with = job.annotations().get(TOKEN_VERSION).map(String::as_str).unwrap_or_default();
    if started_with != token_version {
        return Retry::Now("its token Secret changed".into());
    }
    let failed_at = job
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .and_then(|c| c.last_transition_time.clone())
        .map_or(now.0, |t| t.0);
    let waited = Duration::try_from(now.0.duration_since(failed_at)).unwrap_or_default();
    let delay = retry_delay(attempt(job));
    let at = failed_at
        .checked_add(delay)
        .ok()
        .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t.as_second()).ok())
        .map_or_else(String::new, |t| t.to_string());
    match delay.checked_sub(waited) {
        Some(left) if !left.is_zero() => Retry::After { left, at },
        _ => Retry::Now(format!("{}s after it failed", delay.as_secs())),
    }
}

/// The resourceVersion of the cache's token Secret; empty when it names none or it is missing.
pub async fn token_version(ctx: &Context, cache: &OIMCache) -> Result<String, Error> {
    let Some(name) = cache.spec.source.hf.auth_secret.as_deref() else { return Ok(String::new()) };
    let ns = cache.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::Read { what: format!("Secret {ns}/{name}"), source })?;
    Ok(secret.and_then(|s| s.metadata.resource_version).unwrap_or_default())
}

/// Deletes the failed `job` so the next pass runs attempt `attempt(job) + 1`, remembered in
/// `ctx.failures` until then (after an operator restart the count starts again).
pub async fn rerun(ctx: &Context, cache: &OIMCache, job: &Job, why: &str) -> Result<(), Error> {
    let name = job.name_any();
    let next = attempt(job).saturating_add(1);
    let background = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    Api::<Job>::namespaced(ctx.client.clone(), &cache.namespace().unwrap_or_default())
        .delete(&name, &background)
        .await
        .map_err(|source| Error::Delete { kind: "Job".into(), name: name.clone(), source })?;
    ctx.metrics.writes.add();
    ctx.failures.set_count(&attempt_key(cache), next);
    let note = format!("Job {name} failed; running it again (attempt {next}): {why}");
    publish(ctx, &cache.object_ref(&()), false, "DownloadRetried", &note).await;
    Ok(())
}

fn attempt_key(cache: &OIMCache) -> String {
    format!("{}/download-attempt", crate::controller::cache::failure_key(cache))
}

/// Forgets the attempts of a download that completed.
pub fn forget_attempts(ctx: &Context, cache: &OIMCache) {
    ctx.failures.succeeded(&attempt_key(cache));
}

/// What ensuring the Job came to.
pub enum Ensured {
    /// The Job runs (or ran) as built.
    Running,
    /// An old Job is being replaced; look again shortly.
    Again,
}

/// Runs `job` unless the live one is it; replaces a live Job built for other downloads.
pub async fn ensure(
    ctx: &Context,
    cache: &OIMCache,
    job: &Job,
    live: Option<&Job>,
    token_version: &str,
) -> Result<Ensured, Error> {
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
            // Other downloads: their attempts count from 1.
            forget_attempts(ctx, cache);
            return Ok(Ensured::Again);
        }
        Some(_) => return Ok(Ensured::Running),
        None => {}
    }
    let mut obj = with_kind(job);
    let n = ctx.failures.count(&attempt_key(cache)).max(1).to_string();
    obj["metadata"]["annotations"][ATTEMPT] = n.clone().into();
    obj["metadata"]["annotations"][TOKEN_VERSION] = token_version.into();
    obj["spec"]["template"]["metadata"]["annotations"][ATTEMPT] = n.into();
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    fn failed_job(attempt: Option<&str>, token: &str, failed_at: Timestamp) -> Job {
        let mut job = Job::default();
        let mut annotations = BTreeMap::from([(TOKEN_VERSION.to_string(), token.to_string())]);
        if let Some(a) = attempt {
            annotations.insert(ATTEMPT.into(), a.into());
        }
        job.metadata.annotations = Some(annotations);
        job.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                last_transition_time: Some(Time(failed_at)),
                ..Default::default()
            }]),
            ..Default::default()
        });
        job
    }

    #[test]
    fn a_failed_download_runs_again_when_its_token_changes_or_after_a_doubling_backoff() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |secs: i64| Time(t0.checked_add(SignedDuration::from_secs(secs)).unwrap());
        let job = failed_job(None, "41", t0);
        assert!(failed(&job));
        assert_eq!(attempt(&job), 1);
        assert_eq!(
            retry(&job, "41", &at(20)),
            Retry::After { left: Duration::from_secs(40), at: "2027-01-15T08:01:00Z".into() }
        );
        assert_eq!(retry(&job, "57", &at(20)), Retry::Now("its token Secret changed".into()));
        assert_eq!(retry(&job, "41", &at(60)), Retry::Now("60s after it failed".into()));
        // A Secret created or deleted since counts as a change too.
        assert!(matches!(retry(&job, "", &at(1)), Retry::Now(_)));
        let third = failed_job(Some("3"), "", t0);
        assert!(matches!(retry(&third, "", &at(200)), Retry::After { .. }), "the third failure waits 4 min");
        assert!(matches!(retry(&third, "", &at(240)), Retry::Now(_)));
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(2), Duration::from_secs(120));
        assert_eq!(retry_delay(7), Duration::from_secs(3600), "capped at an hour");
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(3600));
        assert!(!failed(&Job::default()));
    }
}
