//! `oim render`: the objects the operator would apply, with no cluster (like `helm template`).

use std::path::Path;

use super::{Platform as CliPlatform, RenderArgs, exit};
use crate::api::openapi::SchemaCheck;
use crate::api::{OIMCache, OIMService};
use crate::profile::engines::Engines;
use crate::profile::select::{PodUse, Request, select};
use crate::render::{Capabilities, Input, Platform, Weights, render};

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

/// The selection request an OIMService makes (also used by the controller).
pub fn request_for(svc: &OIMService) -> Request {
    let p = svc.spec.profile.clone().unwrap_or_default();
    let scale = svc.spec.scale.as_ref().filter(|s| s.enabled == Some(true));
    let replicas = match scale {
        Some(s) => s.hpa.as_ref().and_then(|h| h.min_replicas).unwrap_or(1),
        None => svc.spec.replicas.unwrap_or(1),
    };
    let mut req = Request::from_selector(svc.spec.model.name.clone(), &p, u32::try_from(replicas.max(1)).unwrap_or(1));
    req.service =
        svc.metadata.name.as_deref().map(|n| crate::profile::select::service_id(svc.metadata.namespace.as_deref(), n));
    req.node_selector = svc.spec.node_selector.clone().unwrap_or_default();
    req.tolerations = svc.spec.tolerations.clone().unwrap_or_default();
    req
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

/// `oim render`.
pub async fn run(args: RenderArgs) -> u8 {
    let fail = |code: u8, msg: String| {
        eprintln!("oim render: {msg}");
        code
    };
    let (services, caches) = match read_inputs(&args.files) {
        Ok(x) => x,
        Err(e) => return fail(exit::BAD_INPUT, e),
    };
    let nodes = match super::profiles::read_nodes(&args.inventory) {
        Ok(n) => n,
        Err(e) => return fail(exit::BAD_INPUT, e),
    };
    let pods = match args.pods.as_deref().map(read_pods).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => return fail(exit::BAD_INPUT, e),
    };
    let catalog = match super::profiles::catalog(&args.source) {
        Ok(c) => c,
        Err((code, msg)) => return fail(code, msg),
    };
    let engines = Engines::builtin();
    let platform = match args.platform {
        CliPlatform::Kubernetes => Platform::Kubernetes,
        CliPlatform::Openshift => Platform::Openshift,
    };
    let mut out = String::new();
    let mut infeasible = false;
    for mut svc in services {
        svc.metadata.namespace.get_or_insert_with(|| "default".into());
        let name = svc.metadata.name.clone().unwrap_or_default();
        let req = request_for(&svc);
        let profiles = match catalog.list(&req.model).await {
            Ok(p) => p,
            Err(e) => return fail(exit::RUNTIME, e.to_string()),
        };
        let selection = select(&req, &profiles, &nodes, &pods, &engines);
        let Some(chosen) = selection.selected else {
            infeasible = true;
            eprintln!("oim render: {name}: {}; rejected:", selection.reason.unwrap_or_default());
            for r in selection.rejected {
                eprintln!("  {}: {}", r.name, r.reason);
            }
            for u in selection.unusable {
                eprintln!("  node {}: {} ({})", u.node, u.reason, u.message);
            }
            continue;
        };
        let profile = match &chosen.document {
            Some(d) => d.clone(),
            None => match catalog.fetch(&chosen.profile).await {
                Ok(p) => p,
                Err(e) => return fail(exit::RUNTIME, e.to_string()),
            },
        };
        let weights = match weights_for(&svc, &caches, &profile) {
            Ok(w) => w,
            Err(e) => return fail(exit::BAD_INPUT, format!("{name}: {e}")),
        };
        let input = Input {
            service: &svc,
            profile: &profile,
            digest: &chosen.profile.digest,
            source: &chosen.profile.source,
            group: &chosen.group,
            weights,
            platform,
            // Offline, render what the spec asks for, like `helm template`.
            capabilities: Capabilities { routes: platform == Platform::Openshift, service_monitors: true },
            engines: &engines,
            device_groups: vec![],
        };
        let rendered = match render(&input) {
            Ok(r) => r,
            Err(e) => return fail(exit::BAD_INPUT, format!("{name}: {e}")),
        };
        for obj in rendered.objects() {
            match serde_saphyr::to_string(&obj) {
                Ok(y) => {
                    out.push_str("---\n");
                    out.push_str(&y);
                }
                Err(e) => return fail(exit::RUNTIME, e.to_string()),
            }
        }
    }
    print!("{out}");
    if infeasible { exit::NO_FEASIBLE_PROFILE } else { exit::OK }
}
