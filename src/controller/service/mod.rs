//! The OIMService reconciler, a pipeline of named steps:
//! dereference (every read) -> select (pure: sticky, re-published or fresh) -> resolve (fetch the
//! chosen document) -> build (pure renderers) -> apply (ours only, prune the rest) -> status (one
//! writer, from the outcome).

pub mod apply;
pub mod dereference;
pub mod outcome;
pub mod select;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::{OIMService, UpdatePolicy};
use crate::controller::context::{Context, Error};
use crate::controller::events::publish;
use crate::controller::model::{self, Facts};
use crate::controller::priority::{Look, key_of};
use crate::controller::source::SourceError;
use crate::controller::status::{Assigned, external_endpoint};
use dereference::{CacheRef, Read, World};
use outcome::{Blocked, Outcome, Serving, Step};
use select::{Chosen, Decision};
use status::Rollout;

use crate::profile::select::selection_key;
use crate::render::{Input, Rendered, Selection, Weights, render};

/// Reconciles one OIMService, counted in the metrics by outcome.
pub async fn reconcile(svc: Arc<OIMService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = pipeline(&svc, &ctx).await;
    let outcome = result.as_ref().err().map_or("ok", Error::label);
    ctx.metrics.reconciled("oimservice", outcome, started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.succeeded(&failure_key(&svc));
    }
    result
}

/// Whether the status already says `Degraded` for this reason and message (its Event was sent).
fn degraded_already(svc: &OIMService, reason: &str, message: &str) -> bool {
    svc.status
        .iter()
        .flat_map(|s| &s.conditions)
        .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == reason && c.message == message)
}

/// After the workload: whether this reconcile leaves the rest and the status owed, because other
/// services wait for their workloads (`controller::priority`). Not on KServe (its status is
/// read from the InferenceService), nor when the workload changes kind (the old one holds its
/// devices until pruned with the rest).
fn leaves_rest_owed(ctx: &Context, svc: &OIMService, plan: &apply::Plan, rendered: &Rendered, look: Look) -> bool {
    let owes = plan.rolls_out() || matches!(look, Look::Owed(_));
    let deferred = owes
        && rendered.inference_service.is_none()
        && plan.rest_can_wait()
        && ctx.backlog.defer_rest(&key_of(svc), look);
    if deferred {
        ctx.metrics.deferred();
    }
    deferred
}

/// The backoff key of a service.
pub fn failure_key(svc: &OIMService) -> String {
    format!("OIMService/{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

async fn pipeline(svc: &OIMService, ctx: &Context) -> Result<Action, Error> {
    let look = ctx.backlog.start_look(&key_of(svc));
    if svc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let mut world = match dereference::read(svc, ctx).await? {
        Read::NotSynced => return Ok(Action::requeue(Duration::from_secs(2))),
        Read::Source(e) => return finish(ctx, svc, Outcome::Blocked(source_blocked(&e)), None, false).await,
        Read::World(w) => w,
    };
    if let Some(why) = &world.distrusted {
        let note = format!("the selection stored on Deployment {} was ignored: {why}; selecting again", svc.name_any());
        publish(ctx, &svc.object_ref(&()), true, "StoredSelectionRejected", &note).await;
    }
    if select::needs_model_facts(svc, &world, &ctx.engines) {
        match model_facts(ctx, svc, &world).await? {
            Ok(arch) => world.arch = Some(arch),
            Err(b) => {
                let running = world.running();
                return finish(ctx, svc, Outcome::Blocked(b), running, false).await;
            }
        }
    }
    let running = world.running();
    let (chosen, update) = match select::decide(svc, &world, &ctx.engines) {
        Decision::Blocked(b) => return finish(ctx, svc, Outcome::Blocked(b), running, false).await,
        Decision::Keep { chosen, update } => (*chosen, update),
        Decision::Fresh { selected, rejected, followed } => {
            match resolve(ctx, svc, &world, *selected, rejected, followed).await {
                Ok(c) => (c, None),
                Err(b) => return finish(ctx, svc, Outcome::Blocked(b), running, false).await,
            }
        }
    };
    let (rendered, serving) = match build(ctx, svc, &world, chosen, update) {
        Ok(x) => x,
        Err(b) => return finish(ctx, svc, Outcome::Blocked(b), running, false).await,
    };
    let mut serving = *serving;
    let plan = match apply::plan(ctx, svc, &rendered).await? {
        Ok(plan) => plan,
        Err(conflict) => return finish(ctx, svc, Outcome::Blocked(conflict), running, false).await,
    };
    let rolling = plan.rolls_out();
    if let Err(e) = plan.workload(ctx, svc).await {
        return apply_failed(ctx, svc, serving, running, e).await;
    }
    if leaves_rest_owed(ctx, svc, &plan, &rendered, look) {
        return Ok(Action::requeue(crate::controller::priority::MAX_DEFERRAL));
    }
    if rendered.inference_service.is_some() {
        // KServe's own status is read after its InferenceService is written.
        if let Err(e) = plan.rest(ctx, svc, &rendered).await {
            return apply_failed(ctx, svc, serving, running, e).await;
        }
        let kserve = kserve_state(ctx, svc).await?;
        if let Some(address) = &kserve.address {
            serving.cluster_endpoint = address.clone();
        }
        serving.kserve = Some(kserve);
        let mut assigned = assigned_address(ctx, &rendered).await?;
        assigned.inference_service_url = serving.kserve.as_ref().and_then(|k| k.url.clone());
        serving.external_endpoint = external_endpoint(&rendered, &assigned);
        return finish(ctx, svc, Outcome::Serving(Box::new(serving)), running, rolling).await;
    }
    serving.external_endpoint = external_endpoint(&rendered, &assigned_address(ctx, &rendered).await?);
    // The status does not depend on the rest being written, unless writing it fails: then
    // the status is written again with the error.
    let serving_status = Outcome::Serving(Box::new(serving.clone()));
    let (rest, done) =
        futures::join!(plan.rest(ctx, svc, &rendered), finish(ctx, svc, serving_status, running, rolling));
    match rest {
        Ok(()) => done,
        Err(e) => apply_failed(ctx, svc, serving, running, e).await,
    }
}

/// An API error writing a child: said in the status (and an Event), then retried with backoff.
async fn apply_failed(
    ctx: &Context,
    svc: &OIMService,
    mut serving: Serving,
    running: Option<Rollout>,
    e: Error,
) -> Result<Action, Error> {
    match e {
        Error::Apply { .. } | Error::Delete { .. } => {
            serving.apply_error = Some(format!("{e}"));
            finish(ctx, svc, Outcome::Serving(Box::new(serving)), running, false).await?;
            Err(e)
        }
        e => Err(e),
    }
}

/// The model's own architecture from the hub (with the service's token, through the cache's
/// hub when it mounts one), or why selection has to wait for it.
async fn model_facts(
    ctx: &Context,
    svc: &OIMService,
    world: &World,
) -> Result<Result<Arc<crate::profile::estimate::Arch>, Blocked>, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let endpoint = match &world.cache {
        CacheRef::Ready(c) => c.spec.source.hf.endpoint.clone(),
        _ => None,
    };
    let wanted = model::Wanted {
        namespace: &ns,
        model: &svc.spec.model.name,
        revision: svc.spec.model.revision.as_deref(),
        endpoint: endpoint.as_deref(),
        auth_secret: svc.spec.auth_secret.as_deref(),
        secret_field: "spec.authSecret",
    };
    Ok(match model::facts(ctx, &wanted).await? {
        Facts::Ready(a) => Ok(a),
        Facts::Pending(message) => {
            let mut b = Blocked::new(Step::ModelConfig, model::PENDING, message);
            b.retry_after = Some(Duration::from_secs(2));
            Err(b)
        }
        Facts::Unavailable { message, retry_in } => {
            let mut b = Blocked::new(Step::ModelConfig, model::UNAVAILABLE, message);
            b.retry_after = Some(retry_in.max(Duration::from_secs(1)));
            Err(b)
        }
    })
}

/// A `spec.profile.source` the operator cannot use.
fn source_blocked(e: &SourceError) -> Blocked {
    match e {
        SourceError::Refused(m) => Blocked::new(Step::SourceRefused, "ProfileSourceRefused", m.clone()),
        other => Blocked::new(Step::SourceMissing, "ProfileSourceUnavailable", other.to_string()),
    }
}

/// Resolve: the document of a freshly selected profile (generated ones carry theirs).
async fn resolve(
    ctx: &Context,
    svc: &OIMService,
    world: &World,
    selected: crate::profile::select::Selected,
    rejected: Vec<crate::api::RejectedProfile>,
    followed: Option<String>,
) -> Result<Chosen, Blocked> {
    let profile = match selected.document.clone() {
        Some(d) => d,
        None => world
            .catalog
            .fetch(&selected.profile)
            .await
            .map_err(|e| Blocked::new(Step::Registry, "RegistryUnavailable", e.to_string()))?,
    };
    if let Some(note) = followed {
        publish(ctx, &svc.object_ref(&()), false, "ProfileUpdated", &note).await;
    }
    // A first choice is in the status; an Event (one more write per service) only when a
    // choice replaces the one that ran.
    if world.deployment.is_some() {
        let note = format!("{}: {}", profile.name, selected.reason);
        publish(ctx, &svc.object_ref(&()), false, "ProfileSelected", &note).await;
    }
    Ok(Chosen {
        digest: selected.profile.digest.clone(),
        source: selected.profile.source.clone(),
        reason: selected.reason.clone(),
        generated: selected.generated,
        group: selected.group,
        profile,
        rejected,
    })
}

/// Build (pure): the rendered objects and what the status will say of them.
fn build(
    ctx: &Context,
    svc: &OIMService,
    world: &World,
    chosen: Chosen,
    update: Option<String>,
) -> Result<(Rendered, Box<Serving>), Blocked> {
    let (weights, cache, shared_rwo) = match &world.cache {
        CacheRef::Ready(c) => {
            let held = c.status.clone().unwrap_or_default().profiles;
            let path = select::cached_path(&held, &chosen.profile).ok_or_else(|| {
                let m = format!("OIMCache {} does not hold the weights of {}", c.name_any(), chosen.profile.name);
                Blocked::new(Step::Cache, "CacheNotReady", m)
            })?;
            let pvc =
                c.status.as_ref().and_then(|s| s.pvc.clone()).unwrap_or_else(|| crate::render::cache::pvc_name(c));
            let message = format!("weights from OIMCache {} (PVC {pvc}, {path})", c.name_any());
            let shared = crate::render::cache::rwo_shared(c, svc.spec.max_replicas(), chosen.profile.nodes);
            (Weights::Cache { pvc, path }, Some(message), shared)
        }
        _ => (Weights::Hub, None, crate::render::pvc_shared_by_group(svc, chosen.profile.nodes)),
    };
    let key = selection_key(svc);
    let input = Input {
        service: svc,
        profile: &chosen.profile,
        digest: &chosen.digest,
        source: &chosen.source,
        selection: Selection { key: &key, reason: &chosen.reason, rejected: &chosen.rejected },
        group: &chosen.group,
        weights,
        platform: ctx.platform,
        capabilities: ctx.capabilities,
        engines: &ctx.engines,
        device_groups: vec![],
    };
    if crate::render::routing::on_kserve(svc) && !ctx.capabilities.kserve {
        let m = "spec.inferencePlatform is kserve, but the KServe API (serving.kserve.io/v1beta1 InferenceService) was not found when the operator started: install KServe and restart the operator, or set spec.inferencePlatform: standalone".into();
        return Err(Blocked::new(Step::Platform, "KServeNotInstalled", m));
    }
    let rendered = render(&input).map_err(|e| Blocked::new(Step::Render, "InvalidResources", e.to_string()))?;
    let ns = svc.namespace().unwrap_or_default();
    let (backend, port) = crate::render::routing::backend(svc);
    let serving = Serving {
        resources: rendered.engine_resources(),
        cluster_endpoint: format!("http://{backend}.{ns}.svc:{port}"),
        external_endpoint: None,
        cache,
        warning: shared_rwo.map(|why| ("RWOSharedAcrossNodes", why)).or_else(|| {
            crate::render::routing::missing_router_api(svc, &ctx.capabilities).map(|why| ("RouterAPIMissing", why))
        }),
        update,
        auto: svc.spec.profile.as_ref().and_then(|p| p.update_policy) == Some(UpdatePolicy::Auto),
        apply_error: None,
        kserve: None,
        chosen,
    };
    Ok((rendered, Box::new(serving)))
}

/// Status: writes the status built from `outcome`, publishes an Event when a problem is new,
/// and says when to look again.
async fn finish(
    ctx: &Context,
    svc: &OIMService,
    outcome: Outcome,
    running: Option<Rollout>,
    rolling: bool,
) -> Result<Action, Error> {
    let mut rollout = running.unwrap_or_default();
    rollout.done &= !rolling;
    let st = status::build(svc, &outcome, rollout, running.is_some());
    let changed = status::write(ctx, svc, &st).await?;
    let revisit = ctx.sources.refresh().clamp(Duration::from_secs(1), Duration::from_secs(600));
    Ok(match &outcome {
        Outcome::Blocked(b) => {
            if changed {
                let warning = !(matches!(b.step, Step::Cache) || b.reason == model::PENDING);
                publish(ctx, &svc.object_ref(&()), warning, &b.reason, &b.message).await;
            }
            b.retry().map_or_else(Action::await_change, Action::requeue)
        }
        Outcome::Serving(s) => {
            if changed && let Some(e) = &s.apply_error {
                publish(ctx, &svc.object_ref(&()), true, "ApplyFailed", e).await;
            } else if changed
                && let Some((reason, why)) = &s.warning
                && !degraded_already(svc, reason, why)
            {
                publish(ctx, &svc.object_ref(&()), true, reason, why).await;
            }
            // Our Deployment's changes wake us during a rollout (the cache that woke us is the
            // one we read); the timer only revisits the published profile (updatePolicy).
            Action::requeue(revisit)
        }
    })
}

/// What the live InferenceService reports, with the available replicas of the predictor
/// Deployment KServe made from it (`<name>-predictor`).
async fn kserve_state(ctx: &Context, svc: &OIMService) -> Result<outcome::KServeState, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &crate::render::routing::inference_service_resource());
    let isvc = api
        .get_opt(&name)
        .await
        .map_err(|source| Error::Read { what: format!("InferenceService {ns}/{name}"), source })?;
    let predictor = format!("{name}-predictor");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let available = deployments
        .get_opt(&predictor)
        .await
        .map_err(|source| Error::Read { what: format!("Deployment {ns}/{predictor}"), source })?
        .and_then(|d| d.status)
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    Ok(outcome::KServeState::of(isvc.map(|o| o.data).as_ref(), available))
}

/// What only the cluster knows about the exposure: a LoadBalancer Service's address and a
/// Route's router-assigned host. Read only when such objects were rendered.
async fn assigned_address(ctx: &Context, rendered: &Rendered) -> Result<Assigned, Error> {
    let mut out = Assigned::default();
    let ns = rendered.service.metadata.namespace.clone().unwrap_or_default();
    let name = rendered.service.metadata.name.clone().unwrap_or_default();
    let read = |what: &str| {
        let what = format!("{what} {ns}/{name}");
        move |source| Error::Read { what, source }
    };
    if rendered.service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && let Some(live) = Api::<k8s_openapi::api::core::v1::Service>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(read("Service"))?
    {
        let lb = live.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).unwrap_or_default();
        out.load_balancer = lb.into_iter().find_map(|i| i.hostname.or(i.ip));
    }
    if let Some(parent) = rendered.http_route.as_ref().map(|h| &h.data["spec"]["parentRefs"][0]) {
        let gw_ns = parent["namespace"].as_str().unwrap_or(&ns).to_string();
        let gw_name = parent["name"].as_str().unwrap_or_default().to_string();
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &gw_ns, &crate::render::routing::gateway_resource());
        // A Gateway in a namespace this operator may not read only loses the https hint.
        let gateway = match api.get_opt(&gw_name).await {
            Ok(g) => g,
            Err(kube::Error::Api(s)) if s.code == 403 => None,
            Err(source) => return Err(Error::Read { what: format!("Gateway {gw_ns}/{gw_name}"), source }),
        };
        out.gateway_https = gateway.is_some_and(|g| {
            g.data["spec"]["listeners"].as_array().is_some_and(|l| l.iter().any(|l| l["protocol"] == "HTTPS"))
        });
    }
    if let Some(route) = rendered.route.as_ref().filter(|r| r.data["spec"]["host"].is_null()) {
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &ns, &crate::render::route_resource());
        if let Some(live) = api.get_opt(&route.name_any()).await.map_err(read("Route"))? {
            out.route_host = live.data["status"]["ingress"][0]["host"].as_str().map(str::to_string);
        }
    }
    Ok(out)
}
