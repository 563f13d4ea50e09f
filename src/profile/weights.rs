//! Which weights an OIMCache downloads: for each node group present, the profile its selector
//! picks there; their weight repositories, deduplicated; and the PVC size they need.

use crate::api::{OIMCache, OIMCacheSpec, Precision};
use crate::profile::catalog::ProfileSummary;
use crate::profile::engines::Engines;
use crate::profile::estimate::{self, Arch};
use crate::profile::select::{Group, NodeView, Request, groups, select_with};

/// One weights repository to download, for the profiles that load it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    /// Profiles loading these weights.
    pub profiles: Vec<String>,
    /// Weights repository.
    pub weights: String,
    /// Revision to download (a commit when the profile pins one).
    pub revision: String,
    /// Precision, for the size estimate.
    pub precision: Precision,
}

/// For each node group present, the profile the selector picks there; their weights,
/// deduplicated. Returns the wanted weights and the group the Job runs on (the first one's), or
/// why nothing fits. `arch` is the model's own architecture (from the hub) for a model the
/// built-in table does not know: with it, a group no published profile fits gets a generated one.
pub fn plan(
    cache: &OIMCache,
    profiles: &[ProfileSummary],
    nodes: &[NodeView],
    engines: &Engines,
    arch: Option<&Arch>,
) -> Result<(Vec<Wanted>, Group), String> {
    let req = Request::for_cache(cache);
    let (present, _) = groups(nodes, &[], &req);
    let mut wanted: Vec<Wanted> = vec![];
    let mut first_group = None;
    let mut reasons = vec![];
    for g in &present {
        let mut r = req.clone();
        r.vendor = Some(g.vendor);
        r.product = Some(g.product.clone());
        let s = select_with(&r, profiles, nodes, &[], engines, arch);
        let Some(sel) = s.selected else {
            reasons.extend(s.rejected.first().map(|x| format!("{}: {}", x.name, x.reason)));
            continue;
        };
        let revision = cache
            .spec
            .source
            .hf
            .revision
            .clone()
            .or_else(|| sel.profile.weights_revision.clone())
            .unwrap_or_else(|| "main".into());
        let weights = sel.profile.weights.clone();
        first_group.get_or_insert(sel.group.clone());
        match wanted.iter_mut().find(|w| w.weights == weights && w.revision == revision) {
            Some(w) => w.profiles.push(sel.profile.name.clone()),
            None => wanted.push(Wanted {
                profiles: vec![sel.profile.name.clone()],
                weights,
                revision,
                precision: sel.profile.precision,
            }),
        }
    }
    match first_group {
        Some(g) => Ok((wanted, g)),
        None => Err(format!(
            "no profile for {} fits the {} node group(s) present{}",
            req.model,
            present.len(),
            reasons.first().map(|r| format!("; {r}")).unwrap_or_default()
        )),
    }
}

/// Whether a cache needs its model's own facts from the hub: the built-in table does not know
/// the model, and either it creates a PVC without a size, or some published profile is missing
/// for the groups present (generation needs the architecture). Models in the table never cause a
/// hub read.
pub fn needs_model_facts(
    cache: &OIMCache,
    profiles: &[ProfileSummary],
    nodes: &[NodeView],
    pvc_exists: bool,
    engines: &Engines,
) -> bool {
    if estimate::arch(&cache.spec.model()).is_some() {
        return false;
    }
    let pvc = &cache.spec.storage.pvc;
    let sizes = pvc.create.unwrap_or(true) && !pvc_exists && pvc.size.is_none();
    sizes || plan(cache, profiles, nodes, engines, None).is_err()
}

/// The PVC size: the spec's, else the weight bytes plus 20% and 5 GiB of headroom, rounded up to
/// GiB. The bytes are the built-in table's estimate, else those of `arch` (the model's own
/// safetensors metadata read from the hub: exact); None when neither knows the model.
pub fn size_for(spec: &OIMCacheSpec, wanted: &[Wanted], arch: Option<&Arch>) -> Option<String> {
    if let Some(s) = &spec.storage.pvc.size {
        return Some(s.clone());
    }
    let mut bytes = 0.0;
    for w in wanted {
        let arch = estimate::arch(&w.weights).or_else(|| estimate::arch(&spec.model())).or(arch)?;
        // The model's own repository holds its checkpoint, whatever precision the profile
        // serves it at (vLLM quantizes to fp8 while loading); another repository is a
        // checkpoint at the profile's precision.
        let stored = if w.weights.eq_ignore_ascii_case(&spec.model()) { arch.native_precision() } else { w.precision };
        bytes += arch.weight_bytes(stored);
    }
    let gib = (bytes * 1.2 / (1u64 << 30) as f64).ceil() as u64 + 5;
    Some(format!("{gib}Gi"))
}
