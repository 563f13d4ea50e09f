//! Dereference: every read a service's reconcile needs, and nothing else — the node and pod
//! snapshots, the profile catalog (default or the service's source), the OIMCache it mounts, the
//! stored selection and our running Deployment.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::Api;

use crate::api::{CacheState, OIMCache, OIMService, RejectedProfile};
use crate::controller::context::{Context, Error, ReadContext};
use crate::controller::source::SourceError;
use crate::profile::Profile;
use crate::profile::catalog::{Catalog, ProfileSummary};
use crate::profile::oci::enum_str;
use crate::profile::select::{NodeView, PodUse};
use crate::render::{
    DIGEST_ANNOTATION, PROFILE_ANNOTATION, REASON_ANNOTATION, REJECTED_ANNOTATION, SELECTION_KEY, SOURCE_ANNOTATION,
};

/// The selection an earlier reconcile stored on the service's workload.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The selection key it was made for.
    pub key: String,
    /// The profile document.
    pub profile: Profile,
    /// Its digest, empty for generated profiles.
    pub digest: String,
    /// Where it came from.
    pub source: String,
    /// Why it was chosen.
    pub reason: String,
    /// What was rejected then.
    pub rejected: Vec<RejectedProfile>,
}

impl Stored {
    /// The stored selection in our workload's annotations (Deployment or LeaderWorkerSet); None
    /// when it is missing or unreadable (then a fresh selection is made and stored again).
    pub fn parse(workload: &ObjectMeta) -> Option<Stored> {
        let ann = workload.annotations.as_ref()?;
        let profile = Profile::parse(ann.get(PROFILE_ANNOTATION)?.as_bytes(), "the workload's stored profile").ok()?;
        Some(Stored {
            key: ann.get(SELECTION_KEY)?.clone(),
            digest: ann.get(DIGEST_ANNOTATION).cloned().unwrap_or_default(),
            source: ann.get(SOURCE_ANNOTATION).cloned().unwrap_or_default(),
            reason: ann.get(REASON_ANNOTATION).cloned().unwrap_or_else(|| "kept from the earlier selection".into()),
            rejected: ann.get(REJECTED_ANNOTATION).and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default(),
            profile,
        })
    }
}

/// The OIMCache a service mounts, as far as it matters to the service.
#[derive(Debug, Clone)]
pub enum CacheRef {
    /// No `spec.storage.oimCache`.
    None,
    /// Ready: what it holds.
    Ready(Box<OIMCache>),
    /// Not there, or not Ready: the reason and message to report.
    Waiting {
        /// `CacheNotFound` or `CacheNotReady`.
        reason: &'static str,
        /// With the cache's own message.
        message: String,
    },
}

/// Everything read for one reconcile.
pub struct World {
    /// The catalog the service's profiles come from (to fetch a chosen document).
    pub catalog: Arc<Catalog>,
    /// The model's published profiles, or why they could not be listed.
    pub listed: Result<Vec<ProfileSummary>, String>,
    /// Nodes as selection sees them.
    pub nodes: Arc<[NodeView]>,
    /// Nodes left out because their inventory annotation does not parse, one line each.
    pub unparseable: Vec<String>,
    /// Pods holding devices.
    pub pods: Arc<[PodUse]>,
    /// The OIMCache it mounts.
    pub cache: CacheRef,
    /// The stored selection, verified against the catalog (published profiles) or the model.
    pub stored: Option<Stored>,
    /// Why a stored selection was not trusted (someone else changed it on the Deployment).
    pub distrusted: Option<String>,
    /// Our running Deployment (only if we created it for this service).
    pub deployment: Option<Arc<Deployment>>,
    /// Our running LeaderWorkerSet (only if we created it for this service).
    pub group: Option<Arc<kube::api::DynamicObject>>,
    /// The cluster serves the LeaderWorkerSet API: profiles spanning nodes can run.
    pub leader_worker_sets: bool,
    /// The model's own architecture from the hub, when selection needs it (set by the
    /// pipeline after [`crate::controller::service::select::needs_model_facts`]).
    pub arch: Option<Arc<crate::profile::estimate::Arch>>,
}

impl World {
    /// What our running workload shows, None when nothing runs: the LeaderWorkerSet when the
    /// stored profile spans nodes (or no Deployment runs), else the Deployment.
    pub fn running(&self) -> Option<crate::controller::service::status::Rollout> {
        use crate::controller::service::status::Rollout;
        let multi = self.stored.as_ref().is_some_and(|s| s.profile.multi_node());
        match (&self.deployment, &self.group) {
            (_, Some(g)) if multi || self.deployment.is_none() => Some(Rollout::of_group(g)),
            (Some(d), _) => Some(Rollout::of(Some(d))),
            (None, _) => None,
        }
    }
}

/// What dereferencing found.
pub enum Read {
    /// The shared caches are not synced yet: selecting now would report false "nothing fits".
    NotSynced,
    /// The profile source cannot be used.
    Source(SourceError),
    /// Everything read.
    World(Box<World>),
}

/// Reads what the reconcile of `svc` needs.
pub async fn read(svc: &OIMService, ctx: &Context) -> Result<Read, Error> {
    let ns = svc.namespace().unwrap_or_default();
    if !synced(ctx, &ns).await {
        return Ok(Read::NotSynced);
    }
    let source = svc.spec.profile.as_ref().and_then(|p| p.source.as_ref());
    let catalog = match ctx.sources.for_service(&ctx.client, &ns, source).await {
        Ok(c) => c,
        Err(SourceError::Kube(e)) => return Err(Error::Read { what: "the profile source's Secret".into(), source: e }),
        Err(e) => return Ok(Read::Source(e)),
    };
    let cache = cache(ctx, svc, &ns).await?;
    let uid = svc.uid().unwrap_or_default();
    let deployment = ctx
        .children
        .of(&ns)
        .and_then(|c| c.deployment(&ns, &svc.name_any()))
        .filter(|d| crate::controller::children::controlled_by(&d.metadata, &uid));
    let group = ctx
        .children
        .of(&ns)
        .and_then(|c| c.group(&ns, &svc.name_any()))
        .filter(|g| crate::controller::children::controlled_by(&g.metadata, &uid));
    // The selection rides on the workload; while one replaces the other, the newer one's holds.
    let carriers = deployment.as_deref().map(|d| &d.metadata).into_iter().chain(group.as_deref().map(|g| &g.metadata));
    let stored = carriers
        .max_by_key(|m| m.creation_timestamp.clone())
        .and_then(Stored::parse)
        .or_else(|| kserve_stored(ctx, svc, &ns, &uid));
    let (mut listed, verdict) = registry(ctx, svc, &catalog, stored.as_ref()).await;
    let (stored, distrusted) = match (stored, verdict) {
        (Some(s), Some(Ok(()))) => (Some(s), None),
        (Some(_), Some(Err(Distrust::Mismatch(why)))) => (None, Some(why)),
        // Not checkable now (registry trouble): neither trusted nor replaced; nothing new
        // is selected until the registry answers, and what runs is left alone.
        (Some(_), Some(Err(Distrust::Unchecked(why)))) => {
            listed = Err(why);
            (None, None)
        }
        _ => (None, None),
    };
    let placement = ctx.placement();
    Ok(Read::World(Box::new(World {
        catalog,
        listed,
        nodes: placement.nodes.clone(),
        unparseable: crate::controller::placement::unparseable_lines(&placement),
        pods: placement.pods.clone(),
        cache,
        stored,
        distrusted,
        deployment,
        group,
        leader_worker_sets: ctx.capabilities.leader_worker_sets,
        arch: None,
    })))
}

/// On KServe the stored selection rides on our InferenceService's annotations (from its
/// metadata cache), as it does on the Deployment otherwise.
fn kserve_stored(ctx: &Context, svc: &OIMService, ns: &str, uid: &str) -> Option<Stored> {
    if !crate::render::routing::on_kserve(svc) {
        return None;
    }
    let meta = ctx.children.of(ns)?.meta("InferenceService", ns, &svc.name_any())??;
    if !crate::controller::children::controlled_by(&meta, uid) {
        return None;
    }
    Stored::parse(&meta)
}

/// The registry's part of the read, within the registry budget: the model's profiles, and the
/// verdict on the stored selection. Failures are counted per registry.
async fn registry(
    ctx: &Context,
    svc: &OIMService,
    catalog: &Catalog,
    stored: Option<&Stored>,
) -> (Result<Vec<ProfileSummary>, String>, Option<Result<(), Distrust>>) {
    let work = async {
        let listed = catalog.list(&svc.spec.model.name).await.map_err(|e| e.to_string());
        let verdict = match stored {
            Some(s) => Some(verify(s, svc, catalog).await),
            None => None,
        };
        (listed, verdict)
    };
    let (listed, verdict) = match ctx.sources.lookup(catalog, work).await {
        Ok(done) => done,
        Err(busy) => (Err(busy.clone()), stored.map(|_| Err(Distrust::Unchecked(busy)))),
    };
    if listed.is_err() || matches!(verdict, Some(Err(Distrust::Unchecked(_)))) {
        ctx.metrics.registry_failed(&catalog.location());
    }
    (listed, verdict)
}

async fn synced(ctx: &Context, ns: &str) -> bool {
    let all = async {
        ctx.nodes.wait_until_ready().await.is_ok()
            && ctx.pods.wait_until_ready().await.is_ok()
            && match ctx.children.of(ns) {
                Some(c) => c.ready().await,
                None => true,
            }
    };
    tokio::time::timeout(Duration::from_secs(30), all).await.unwrap_or(false)
}

async fn cache(ctx: &Context, svc: &OIMService, ns: &str) -> Result<CacheRef, Error> {
    let Some(name) = svc.spec.storage.as_ref().and_then(|s| s.oim_cache.as_ref()).map(|c| c.name.clone()) else {
        return Ok(CacheRef::None);
    };
    let live = Api::<OIMCache>::namespaced(ctx.client.clone(), ns)
        .get_opt(&name)
        .await
        .reading(|| format!("OIMCache {ns}/{name}"))?;
    Ok(match live {
        Some(c) if c.status.as_ref().and_then(|s| s.state) == Some(CacheState::Ready) => CacheRef::Ready(Box::new(c)),
        Some(c) => {
            let st = c.status.clone().unwrap_or_default();
            let why = st.conditions.iter().find(|x| x.type_ == "Ready").map(|x| x.message.clone()).unwrap_or_default();
            let state = st.state.map(|s| enum_str(&s)).unwrap_or_else(|| "Pending".into());
            CacheRef::Waiting { reason: "CacheNotReady", message: format!("OIMCache {name} is {state}: {why}") }
        }
        None => CacheRef::Waiting {
            reason: "CacheNotFound",
            message: format!(
                "spec.storage.oimCache.name: OIMCache {name} does not exist in {ns}; create it or remove spec.storage.oimCache"
            ),
        },
    })
}

/// The stored selection is a cache, never the authority: a published profile must be exactly
/// the document its digest names in the service's catalog (the digest cache, else the registry);
/// a generated one is checked again by selection. Whoever can edit the annotations cannot change
/// the image, args or env this way.
async fn verify(stored: &Stored, svc: &OIMService, catalog: &Catalog) -> Result<(), Distrust> {
    if stored.profile.model != svc.spec.model.name {
        return Err(Distrust::Mismatch(format!(
            "it names model {}, not {}",
            stored.profile.model, svc.spec.model.name
        )));
    }
    if stored.profile.generated {
        return Ok(());
    }
    if stored.digest.is_empty() {
        return Err(Distrust::Mismatch("a published profile without a digest".into()));
    }
    let summary = ProfileSummary::of(&stored.profile, stored.digest.clone(), stored.source.clone());
    match catalog.fetch(&summary).await {
        Ok(p) if p == stored.profile => Ok(()),
        Ok(_) => Err(Distrust::Mismatch(format!("its document is not the one digest {} names", stored.digest))),
        // A directory cannot be down: a digest it does not hold is not there any more.
        Err(e) if matches!(catalog, Catalog::Dir(_)) => {
            Err(Distrust::Mismatch(format!("digest {}: {e}", stored.digest)))
        }
        Err(e) => {
            Err(Distrust::Unchecked(format!("the stored profile's digest {} could not be checked: {e}", stored.digest)))
        }
    }
}

/// Why a stored selection is not used.
#[derive(Debug, PartialEq)]
enum Distrust {
    /// It is not what its digest names (edited), or names another model.
    Mismatch(String),
    /// The catalog could not be asked.
    Unchecked(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::catalog::{DirCatalog, digest_of};

    fn stored() -> (Stored, OIMService, Catalog) {
        let dir = DirCatalog::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"))).unwrap();
        let (path, bytes, p) =
            dir.entries().find(|(_, _, p)| p.name == "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16").unwrap();
        // What the Deployment carries: the document as the operator serialised it.
        let yaml = serde_saphyr::to_string(p).unwrap();
        let stored = Stored {
            key: "k".into(),
            profile: Profile::parse(yaml.as_bytes(), "cm").unwrap(),
            digest: digest_of(bytes),
            source: path.display().to_string(),
            reason: String::new(),
            rejected: vec![],
        };
        let svc: OIMService = serde_saphyr::from_str(
            "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {name: llm}\nspec:\n  model: {name: meta-llama/Llama-3.1-8B-Instruct}\n",
        )
        .unwrap();
        (stored, svc, Catalog::Dir(dir))
    }

    #[tokio::test]
    async fn a_stored_selection_is_trusted_only_as_the_document_its_digest_names() {
        let (good, svc, catalog) = stored();
        assert_eq!(verify(&good, &svc, &catalog).await, Ok(()));
        let mismatch = |r: Result<(), Distrust>| match r {
            Err(Distrust::Mismatch(m)) => m,
            other => panic!("{other:?}"),
        };
        let mut image = good.clone();
        image.profile.engine.image = "docker.io/evil/vllm:1.0".into();
        assert!(mismatch(verify(&image, &svc, &catalog).await).contains("not the one digest"));
        let mut digest = good.clone();
        digest.digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
        assert!(verify(&digest, &svc, &catalog).await.is_err(), "a digest the catalog does not have");
        let mut other = good.clone();
        other.profile.model = "acme/other".into();
        assert!(mismatch(verify(&other, &svc, &catalog).await).contains("acme/other"));
        let mut unpinned = good;
        unpinned.digest = String::new();
        assert!(verify(&unpinned, &svc, &catalog).await.is_err());
    }
}
