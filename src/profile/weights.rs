//! Which weights an OIMCache downloads: for each node group present, the profile its selector
//! picks there; their weight repositories, deduplicated; and the PVC size they need.

use crate::api::{OIMCache, OIMCacheSpec, Precision};
use crate::profile::catalog::ProfileSummary;
use crate::profile::engines::Engines;
use crate::profile::estimate;
use crate::profile::select::{Group, NodeView, Request, groups, select};

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
/// why nothing fits.
pub fn plan(
    cache: &OIMCache,
    profiles: &[ProfileSummary],
    nodes: &[NodeView],
    engines: &Engines,
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
        let s = select(&r, profiles, nodes, &[], engines);
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

/// The PVC size: the spec's, else the estimated weight bytes plus 20% and 5 GiB of headroom,
/// rounded up to GiB; None when the model is not in the estimator's table.
pub fn size_for(spec: &OIMCacheSpec, wanted: &[Wanted]) -> Option<String> {
    if let Some(s) = &spec.storage.pvc.size {
        return Some(s.clone());
    }
    let mut bytes = 0.0;
    for w in wanted {
        let arch = estimate::arch(&w.weights).or_else(|| estimate::arch(&spec.model()))?;
        bytes += arch.weight_bytes(w.precision);
    }
    let gib = (bytes * 1.2 / (1u64 << 30) as f64).ceil() as u64 + 5;
    Some(format!("{gib}Gi"))
}
