//! `oim render`: the objects the operator would apply, with no cluster (like `helm template`).

use std::path::Path;

use super::{Platform as CliPlatform, RenderArgs, exit};
use crate::api::openapi::SchemaCheck;
use crate::api::{OIMCache, OIMService};
use crate::hardware::slices::ResourceSlice;
use crate::profile::engines::Engines;
use crate::profile::estimate::Arch;
use crate::profile::select::{PodUse, Request, select_with};
use crate::render::{Capabilities, Input, Platform, Selection, Weights, render};

/// The documents of `-f` files: services and caches.
fn read_inputs(files: &[std::path::PathBuf]) -> Result<(Vec<OIMService>, Vec<OIMCache>), String> {
    let mut services = vec![];
    let mut caches = vec![];
    let schema = SchemaCheck::new()?;
    for f in files {
        let text = crate::bounded::read_text(f, crate::bounded::MAX_INPUT_BYTES).map_err(|e| e.to_string())?;
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: not YAML: {e}", f.display()))?;
        for (i, doc) in docs.into_iter().filter(|d| !d.is_null()).enumerate() {
            let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
            let at = format!("{} (document {})", f.display(), i + 1);
            // What the API server checks first: the CRD's OpenAPI schema.
            if let Err(errors) = schema.check(&kind, &doc) {
                return Err(format!("{at}: {kind} is invalid:\n  {}", errors.join("\n  ")));
            }
            match kind.as_str() {
                "OIMService" => {
                    let svc: OIMService = serde_path_to_error::deserialize(doc)
                        .map_err(|e| format!("{at}: {}: {}", e.path(), e.inner()))?;
                    svc.validate_cel().map_err(|e| format!("{at}: {e}"))?;
                    services.push(svc);
                }
                "OIMCache" => {
                    let c: OIMCache = serde_path_to_error::deserialize(doc)
                        .map_err(|e| format!("{at}: {}: {}", e.path(), e.inner()))?;
                    c.validate_cel().map_err(|e| format!("{at}: {e}"))?;
                    caches.push(c);
                }
                other => {
                    return Err(format!(
                        "{at}: kind {other:?} is not rendered; pass OIMService and OIMCache documents"
                    ));
                }
            }
        }
    }
    Ok((services, caches))
}

fn read_pods(path: &Path) -> Result<Vec<PodUse>, String> {
    let text = crate::bounded::read_text(path, crate::bounded::MAX_INPUT_BYTES).map_err(|e| format!("--pods {e}"))?;
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| format!("--pods {}: not YAML: {e}", path.display()))?;
    let mut pods = vec![];
    for doc in docs {
        let items = match doc.get("items") {
            Some(serde_json::Value::Array(items)) => items.clone(),
            _ => vec![doc],
        };
        for item in items.into_iter().filter(|i| i.get("kind").and_then(|k| k.as_str()).is_none_or(|k| k == "Pod")) {
            let pod: k8s_openapi::api::core::v1::Pod =
                serde_json::from_value(item).map_err(|e| format!("--pods {}: {e}", path.display()))?;
            pods.extend(PodUse::from_pod(&pod));
        }
    }
    Ok(pods)
}

/// `--resource-slices`: ResourceSlice documents or a list of them.
fn read_slices(path: &Path) -> Result<Vec<ResourceSlice>, String> {
    let text = crate::bounded::read_text(path, crate::bounded::MAX_INPUT_BYTES)
        .map_err(|e| format!("--resource-slices {e}"))?;
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| format!("--resource-slices {}: not YAML: {e}", path.display()))?;
    let mut slices = vec![];
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let items = match doc.get("items") {
            Some(serde_json::Value::Array(items)) => items.clone(),
            _ => vec![doc],
        };
        for item in items {
            let kind = item.get("kind").and_then(|k| k.as_str()).unwrap_or("ResourceSlice");
            if kind != "ResourceSlice" {
                return Err(format!("--resource-slices {}: a {kind}, not a ResourceSlice", path.display()));
            }
            let slice: ResourceSlice = serde_path_to_error::deserialize(item)
                .map_err(|e| format!("--resource-slices {}: {}: {}", path.display(), e.path(), e.inner()))?;
            slices.push(slice);
        }
    }
    Ok(slices)
}

/// Attaches each node's DRA devices; a node only the slices name is added (offline: all free).
fn attach_slices(nodes: &mut Vec<crate::profile::select::NodeView>, slices: &[ResourceSlice]) {
    for (name, devices) in crate::hardware::slices::by_node(slices, []) {
        match nodes.iter_mut().find(|n| n.name == name) {
            Some(n) => n.dra = devices,
            None => {
                let inventory = crate::hardware::inventory::Inventory { node: name, ..Default::default() };
                let mut n = crate::profile::select::NodeView::offline(inventory);
                n.dra = devices;
                nodes.push(n);
            }
        }
    }
}

/// Where a service's weights come from, given the caches known.
fn weights_for(svc: &OIMService, caches: &[OIMCache], profile: &crate::profile::Profile) -> Result<Weights, String> {
    let Some(name) = svc.spec.storage.as_ref().and_then(|s| s.oim_cache.as_ref()).map(|c| c.name.clone()) else {
        return Ok(Weights::Hub);
    };
    let cache = caches.iter().find(|c| c.metadata.name.as_deref() == Some(name.as_str())).ok_or_else(|| {
        format!("spec.storage.oimCache.name {name:?}: no OIMCache of that name among the -f documents; pass it too")
    })?;
    let status_entry = cache.status.as_ref().and_then(|s| s.profiles.iter().find(|p| p.name == profile.name));
    let path = match status_entry {
        Some(p) => p.path.clone(),
        None => format!("/{}/{}", profile.weights(), profile.weights_revision.clone().unwrap_or_else(|| "main".into())),
    };
    let pvc = cache
        .status
        .as_ref()
        .and_then(|s| s.pvc.clone())
        .or_else(|| cache.spec.storage.pvc.name.clone())
        .unwrap_or_else(|| format!("{name}-weights"));
    Ok(Weights::Cache { pvc, path })
}

/// What the inputs render against: nodes, pods, catalog, engines, platform.
struct Env {
    nodes: Vec<crate::profile::select::NodeView>,
    pods: Vec<PodUse>,
    catalog: crate::profile::catalog::Catalog,
    engines: Engines,
    platform: Platform,
    puller_image: String,
    /// `--model-config`: architectures by lowercased model id.
    archs: std::collections::BTreeMap<String, Arch>,
}

impl Env {
    fn arch(&self, model: &str) -> Option<&Arch> {
        self.archs.get(&model.to_ascii_lowercase())
    }
}

/// `--model-config MODEL=DIR|FILE` values, read.
fn model_configs(values: &[String]) -> Result<std::collections::BTreeMap<String, Arch>, String> {
    let mut out = std::collections::BTreeMap::new();
    for v in values {
        let (model, path) = v.split_once('=').filter(|(m, p)| !m.is_empty() && !p.is_empty()).ok_or_else(|| {
            format!("--model-config {v:?}: expected MODEL=DIR|FILE, e.g. Qwen/Qwen2.5-32B-Instruct=./qwen")
        })?;
        out.insert(model.to_ascii_lowercase(), Arch::from_path(model, Path::new(path))?);
    }
    Ok(out)
}

/// A failure: the exit code and the message.
type Failure = (u8, String);

/// `oim render`.
pub async fn run(args: RenderArgs) -> u8 {
    let fail = |(code, msg): Failure| {
        eprintln!("oim render: {msg}");
        code
    };
    let (services, caches) = match read_inputs(&args.files) {
        Ok(x) => x,
        Err(e) => return fail((exit::BAD_INPUT, e)),
    };
    let env = match environment(&args) {
        Ok(e) => e,
        Err(f) => return fail(f),
    };
    let mut out = String::new();
    let mut infeasible = false;
    for mut svc in services {
        svc.metadata.namespace.get_or_insert_with(|| "default".into());
        match render_service(&env, &svc, &caches).await {
            Ok(Some(objects)) => out.push_str(&objects),
            Ok(None) => infeasible = true,
            Err(f) => return fail(f),
        }
    }
    for mut cache in caches {
        cache.metadata.namespace.get_or_insert_with(|| "default".into());
        match render_cache(&env, &cache).await {
            Ok(Some(objects)) => out.push_str(&objects),
            Ok(None) => infeasible = true,
            Err(f) => return fail(f),
        }
    }
    print!("{out}");
    if infeasible { exit::NO_FEASIBLE_PROFILE } else { exit::OK }
}

fn environment(args: &RenderArgs) -> Result<Env, Failure> {
    let mut nodes = super::profiles::read_nodes(&args.inventory).map_err(|e| (exit::BAD_INPUT, e))?;
    if let Some(path) = &args.resource_slices {
        attach_slices(&mut nodes, &read_slices(path).map_err(|e| (exit::BAD_INPUT, e))?);
    }
    let pods = args.pods.as_deref().map(read_pods).transpose().map_err(|e| (exit::BAD_INPUT, e))?.unwrap_or_default();
    let catalog = super::profiles::catalog(&args.source)?;
    let platform = match args.platform {
        CliPlatform::Kubernetes => Platform::Kubernetes,
        CliPlatform::Openshift => Platform::Openshift,
    };
    let archs = model_configs(&args.model_config).map_err(|e| (exit::BAD_INPUT, e))?;
    Ok(Env {
        nodes,
        pods,
        catalog,
        engines: Engines::builtin(),
        platform,
        puller_image: args.puller_image.clone(),
        archs,
    })
}

/// YAML documents, each after `---`.
fn documents(objects: &[serde_json::Value]) -> Result<String, Failure> {
    let mut out = String::new();
    for obj in objects {
        let y = serde_saphyr::to_string(obj).map_err(|e| (exit::RUNTIME, e.to_string()))?;
        out.push_str("---\n");
        out.push_str(&y);
    }
    Ok(out)
}

/// A service's objects, or None (reasons on stderr) when no profile fits.
async fn render_service(env: &Env, svc: &OIMService, caches: &[OIMCache]) -> Result<Option<String>, Failure> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let req = Request::for_service(svc);
    let profiles = env.catalog.list(&req.model).await.map_err(|e| (exit::RUNTIME, e.to_string()))?;
    let selection = select_with(&req, &profiles, &env.nodes, &env.pods, &env.engines, env.arch(&req.model));
    let Some(chosen) = selection.selected else {
        eprintln!("oim render: {name}: {}; rejected:", selection.reason.unwrap_or_default());
        for r in selection.rejected {
            eprintln!("  {}: {}", r.name, r.reason);
        }
        for u in selection.unusable {
            eprintln!("  node {}: {} ({})", u.node, u.reason, u.message);
        }
        return Ok(None);
    };
    let profile = match &chosen.document {
        Some(d) => d.clone(),
        None => env.catalog.fetch(&chosen.profile).await.map_err(|e| (exit::RUNTIME, e.to_string()))?,
    };
    let weights = weights_for(svc, caches, &profile).map_err(|e| (exit::BAD_INPUT, format!("{name}: {e}")))?;
    let key = crate::profile::select::selection_key(svc);
    let rejected: Vec<crate::api::RejectedProfile> = selection
        .rejected
        .iter()
        .take(10)
        .map(|r| crate::api::RejectedProfile { name: r.name.clone(), reason: r.reason.clone() })
        .collect();
    let input = Input {
        service: svc,
        profile: &profile,
        digest: &chosen.profile.digest,
        source: &chosen.profile.source,
        selection: Selection { key: &key, reason: &chosen.reason, rejected: &rejected },
        group: &chosen.group,
        weights,
        platform: env.platform,
        // Offline, render what the spec asks for, like `helm template`.
        capabilities: Capabilities::offline(env.platform),
        engines: &env.engines,
        device_groups: vec![],
    };
    let rendered = render(&input).map_err(|e| (exit::BAD_INPUT, format!("{name}: {e}")))?;
    documents(&rendered.objects()).map(Some)
}

/// A cache's PVC (when it creates one) and download Job, or None when no profile fits.
async fn render_cache(env: &Env, cache: &OIMCache) -> Result<Option<String>, Failure> {
    let name = cache.metadata.name.clone().unwrap_or_default();
    let profiles = env.catalog.list(&cache.spec.model()).await.map_err(|e| (exit::RUNTIME, e.to_string()))?;
    let (wanted, group) = match crate::profile::weights::plan(
        cache,
        &profiles,
        &env.nodes,
        &env.engines,
        env.arch(&cache.spec.model()),
    ) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("oim render: OIMCache {name}: {why}");
            return Ok(None);
        }
    };
    let mut objects = vec![];
    if cache.spec.storage.pvc.create.unwrap_or(true) {
        let size = crate::profile::weights::size_for(&cache.spec, &wanted, env.arch(&cache.spec.model())).ok_or_else(|| {
            let model = cache.spec.model();
            (
                exit::BAD_INPUT,
                format!(
                    "OIMCache {name}: the weight size of {model} is unknown; set spec.storage.pvc.size or pass --model-config {model}=DIR"
                ),
            )
        })?;
        objects.push(crate::render::with_kind(&crate::render::cache::build_pvc(cache, &size)));
    }
    let job = crate::render::cache::build_job(cache, &wanted, &group, &env.puller_image, env.platform);
    objects.push(crate::render::with_kind(&job));
    documents(&objects).map(Some)
}
