//! Where profiles come from: one interface, two sources — a catalog directory, and an OCI
//! registry (listing from manifest annotations, no blobs; the chosen profile pinned by digest;
//! parsed profiles cached by digest; tags re-resolved after a TTL; already-resolved profiles keep
//! serving while the registry is down).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::client::{Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::api::{Kpi, Precision, Vendor};
use crate::profile::oci::{self, ANNOTATION_PREFIX, RegistryRef, enum_str};
use crate::profile::registry::{RegistryError, RegistryReader};
use crate::profile::schema::{MAX_PROFILE_BYTES, Profile, ProfileError, looks_like_profile};

/// What listing shows about a profile, read from manifest annotations (or the file itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSummary {
    /// Profile name (the tag).
    pub name: String,
    /// Model it serves.
    pub model: String,
    /// Weights repository.
    pub weights: String,
    /// Weights commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights_revision: Option<String>,
    /// KPI.
    pub kpi: Kpi,
    /// Precision.
    pub precision: Precision,
    /// Accelerator vendor.
    pub vendor: Vendor,
    /// Accelerator product slug or `any`.
    pub product: String,
    /// Devices per node of a replica.
    pub count: u32,
    /// Nodes a replica spans (1: one pod; more: a LeaderWorkerSet group).
    #[serde(skip_serializing_if = "is_one")]
    pub nodes: u32,
    /// Memory per device for `any`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_memory_mib: Option<u64>,
    /// Tensor parallelism.
    pub tensor_parallelism: u32,
    /// Pipeline parallelism.
    pub pipeline_parallelism: u32,
    /// Median TTFT, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms_p50: Option<f64>,
    /// Throughput, tokens/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_tokens_per_sec: Option<f64>,
    /// Concurrent requests the figures were measured at (figures compare only at equal values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// The figures are estimates (`performance.source: estimated`), not measurements: they rank
    /// after measured figures.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// Content digest (`sha256:...`).
    pub digest: String,
    /// File path or OCI reference.
    pub source: String,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl ProfileSummary {
    /// Devices of one replica over all its nodes.
    pub fn total_devices(&self) -> u32 {
        self.count.saturating_mul(self.nodes.max(1))
    }

    /// The summary of a parsed profile.
    pub fn of(p: &Profile, digest: String, source: String) -> ProfileSummary {
        let perf = p.performance.as_ref();
        ProfileSummary {
            name: p.name.clone(),
            model: p.model.clone(),
            weights: p.weights().to_string(),
            weights_revision: p.weights_revision.clone(),
            kpi: p.kpi,
            precision: p.precision,
            vendor: p.accelerator.vendor,
            product: p.accelerator.product.clone(),
            count: p.accelerator.count,
            nodes: p.nodes,
            min_memory_mib: p.accelerator.min_memory_mib,
            tensor_parallelism: p.parallelism.tensor,
            pipeline_parallelism: p.parallelism.pipeline,
            ttft_ms_p50: perf.and_then(|x| x.ttft_ms_p50),
            throughput_tokens_per_sec: perf.and_then(|x| x.throughput_tokens_per_sec),
            concurrency: perf.and_then(|x| x.concurrency),
            estimated: perf.and_then(|x| x.source.as_deref()) == Some(crate::profile::select::ESTIMATED),
            digest,
            source,
        }
    }

    /// Reads a summary from manifest annotations; None when they are not a profile's.
    pub fn from_annotations(a: &BTreeMap<String, String>, name: &str, digest: &str, source: String) -> Option<Self> {
        let get = |k: &str| a.get(&format!("{ANNOTATION_PREFIX}{k}")).cloned();
        fn parse_enum<T: serde::de::DeserializeOwned>(v: Option<String>) -> Option<T> {
            serde_json::from_value(serde_json::Value::String(v?)).ok()
        }
        Some(ProfileSummary {
            name: name.to_string(),
            model: get("model")?,
            weights: get("weights").or_else(|| get("model"))?,
            weights_revision: get("weights.revision"),
            kpi: parse_enum(get("kpi"))?,
            precision: parse_enum(get("precision"))?,
            vendor: parse_enum(get("accelerator.vendor"))?,
            product: get("accelerator.product")?,
            count: get("accelerator.count")?.parse().ok()?,
            nodes: get("nodes").and_then(|v| v.parse().ok()).filter(|n| *n >= 1).unwrap_or(1),
            min_memory_mib: get("accelerator.min-memory-mib").and_then(|v| v.parse().ok()),
            tensor_parallelism: get("tensor-parallel-size").and_then(|v| v.parse().ok()).unwrap_or(1),
            pipeline_parallelism: get("pipeline-parallel-size").and_then(|v| v.parse().ok()).unwrap_or(1),
            ttft_ms_p50: get("performance.ttft-ms-p50").and_then(|v| v.parse().ok()),
            throughput_tokens_per_sec: get("performance.throughput-tokens-per-sec").and_then(|v| v.parse().ok()),
            concurrency: get("performance.concurrency").and_then(|v| v.parse().ok()),
            estimated: get("performance.source").as_deref() == Some(crate::profile::select::ESTIMATED),
            digest: digest.to_string(),
            source,
        })
    }
}

/// Why profiles could not be listed or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A profile document is invalid.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// Two files define one name for one model.
    #[error(
        "{second}: name {name:?} for {model} is already defined in {first}; profile names must be unique per model, rename one"
    )]
    Duplicate {
        /// Model.
        model: String,
        /// Name.
        name: String,
        /// First file.
        first: String,
        /// Second file.
        second: String,
    },
    /// A catalog directory cannot be read.
    #[error("cannot read catalog {path}: {message}")]
    Io {
        /// Path.
        path: String,
        /// Why.
        message: String,
    },
    /// The registry cannot be reached and nothing is cached.
    #[error("registry {registry} is unreachable: {message}")]
    Unreachable {
        /// Registry.
        registry: String,
        /// Why.
        message: String,
    },
    /// The registry refused our credentials.
    #[error(
        "registry {registry} refused the credentials: {message}; check --registry-config or the credentials Secret"
    )]
    Unauthorized {
        /// Registry.
        registry: String,
        /// What it said (never the secret).
        message: String,
    },
    /// The registry answered with something we cannot use.
    #[error("{reference}: {message}")]
    Registry {
        /// Reference.
        reference: String,
        /// Why.
        message: String,
    },
}

/// Hex sha256 digest of bytes, `sha256:...`.
pub fn digest_of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A catalog directory: every `*.yaml` below it whose `schema` is the profile schema.
pub struct DirCatalog {
    entries: Vec<(PathBuf, Vec<u8>, Profile)>,
}

impl DirCatalog {
    /// Scans and validates the whole directory; any invalid profile or duplicate is an error.
    /// The walk is bounded (depth, file count, each file at most the profile limit), reads only
    /// regular files, and enters each directory once, so symlink loops end.
    pub fn load(dir: &Path) -> Result<DirCatalog, CatalogError> {
        let mut walk = Walk::default();
        walk.collect(dir, 0)?;
        let mut files = walk.files;
        files.sort();
        let mut entries: Vec<(PathBuf, Vec<u8>, Profile)> = vec![];
        let mut seen: HashMap<(String, String), PathBuf> = HashMap::new();
        for path in files {
            let bytes = crate::bounded::read_file(&path, MAX_PROFILE_BYTES as u64).map_err(|e| match e {
                crate::bounded::ReadError::TooLarge { .. } => CatalogError::Io {
                    path: path.display().to_string(),
                    message: format!(
                        "over the {MAX_PROFILE_BYTES}-byte profile limit; a profile is a small YAML document"
                    ),
                },
                e => CatalogError::Io { path: path.display().to_string(), message: e.to_string() },
            })?;
            if !looks_like_profile(&bytes) {
                continue;
            }
            let profile = Profile::parse(&bytes, &path.display().to_string())?;
            let key = (profile.model.clone(), profile.name.clone());
            if let Some(first) = seen.get(&key) {
                return Err(CatalogError::Duplicate {
                    model: key.0,
                    name: key.1,
                    first: first.display().to_string(),
                    second: path.display().to_string(),
                });
            }
            seen.insert(key, path.clone());
            entries.push((path, bytes, profile));
        }
        Ok(DirCatalog { entries })
    }

    /// Every profile with its file and bytes.
    pub fn entries(&self) -> impl Iterator<Item = (&Path, &[u8], &Profile)> {
        self.entries.iter().map(|(p, b, pr)| (p.as_path(), b.as_slice(), pr))
    }

    fn list(&self, model: &str) -> Vec<ProfileSummary> {
        self.entries
            .iter()
            .filter(|(_, _, p)| p.model == model)
            .map(|(path, bytes, p)| ProfileSummary::of(p, digest_of(bytes), path.display().to_string()))
            .collect()
    }

    fn fetch(&self, s: &ProfileSummary) -> Option<Profile> {
        self.entries
            .iter()
            .find(|(_, b, p)| p.model == s.model && p.name == s.name && digest_of(b) == s.digest)
            .map(|e| e.2.clone())
    }
}

/// A directory deeper than this under a catalog is a mistake (or a loop).
const MAX_WALK_DEPTH: usize = 32;
/// More YAML files than any catalog holds.
const MAX_WALK_FILES: usize = 100_000;

/// The state of one catalog walk: YAML files found and directories entered (device, inode).
#[derive(Default)]
struct Walk {
    files: Vec<PathBuf>,
    entered: std::collections::HashSet<(u64, u64)>,
}

impl Walk {
    fn collect(&mut self, dir: &Path, depth: usize) -> Result<(), CatalogError> {
        use std::os::unix::fs::MetadataExt;
        let io =
            |p: &Path, e: std::io::Error| CatalogError::Io { path: p.display().to_string(), message: e.to_string() };
        if depth > MAX_WALK_DEPTH {
            return Err(CatalogError::Io {
                path: dir.display().to_string(),
                message: format!("more than {MAX_WALK_DEPTH} directory levels below the catalog; flatten it"),
            });
        }
        let meta = std::fs::metadata(dir).map_err(|e| io(dir, e))?;
        if !self.entered.insert((meta.dev(), meta.ino())) {
            tracing::warn!(dir = %dir.display(), "catalog directory already read (a symlink loop or a second link); skipped");
            return Ok(());
        }
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let entry = entry.map_err(|e| io(dir, e))?;
            let path = entry.path();
            let mut kind = entry.file_type().map_err(|e| io(&path, e))?;
            if kind.is_symlink() {
                kind = std::fs::metadata(&path).map_err(|e| io(&path, e))?.file_type();
            }
            if kind.is_dir() {
                self.collect(&path, depth + 1)?;
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                if self.files.len() >= MAX_WALK_FILES {
                    return Err(CatalogError::Io {
                        path: dir.display().to_string(),
                        message: format!("more than {MAX_WALK_FILES} files; point --catalog at the profiles only"),
                    });
                }
                // Non-regular files (FIFO, devices) are refused when read, with their path.
                self.files.push(path);
            }
        }
        Ok(())
    }
}

/// A manifest we listed: its summary and the layer to fetch.
#[derive(Clone)]
struct Listed {
    summary: ProfileSummary,
    layer: OciDescriptor,
}

/// At most this many repositories' tag lists are kept per catalog.
const MAX_CACHED_REPOSITORIES: usize = 1024;
/// At most this many manifests and parsed profiles are kept per catalog.
const MAX_CACHED_DIGESTS: usize = 8192;
/// Tag-list pages followed for one repository (100 tags each).
pub const MAX_TAG_PAGES: u32 = 50;
/// Tags kept for one repository (one tag per profile).
pub const MAX_TAGS: usize = 5000;

/// A map that forgets its oldest entries beyond a capacity.
struct Bounded<V> {
    cap: usize,
    map: HashMap<String, V>,
    order: std::collections::VecDeque<String>,
}

impl<V> Bounded<V> {
    fn new(cap: usize) -> Self {
        Bounded { cap, map: HashMap::new(), order: std::collections::VecDeque::new() }
    }

    fn get(&self, k: &str) -> Option<&V> {
        self.map.get(k)
    }

    fn insert(&mut self, k: String, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

struct OciState {
    /// repository -> (resolved at, [(tag, digest)]).
    tags: Bounded<(Instant, Vec<(String, String)>)>,
    /// manifest digest -> what it says.
    manifests: Bounded<Listed>,
    /// manifest digest -> parsed profile.
    profiles: Bounded<Profile>,
}

impl Default for OciState {
    fn default() -> Self {
        OciState {
            tags: Bounded::new(MAX_CACHED_REPOSITORIES),
            manifests: Bounded::new(MAX_CACHED_DIGESTS),
            profiles: Bounded::new(MAX_CACHED_DIGESTS),
        }
    }
}

/// Requests a listing made, for benchmarks and the "no blob while listing" guarantee.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Tag-list pages.
    pub tag_pages: u32,
    /// Manifest HEADs (digest resolution).
    pub heads: u32,
    /// Manifest GETs.
    pub manifests: u32,
    /// Blob GETs.
    pub blobs: u32,
}

/// Profiles in an OCI registry.
pub struct OciCatalog {
    client: oci_client::Client,
    reader: RegistryReader,
    registry: RegistryRef,
    auth: RegistryAuth,
    ttl: Duration,
    state: Mutex<OciState>,
    counts: Mutex<RequestCounts>,
}

impl OciCatalog {
    /// A catalog on `registry` with `auth`; tags are re-resolved after `ttl`.
    pub fn new(
        registry: RegistryRef,
        auth: RegistryAuth,
        insecure: bool,
        ttl: Duration,
    ) -> Result<OciCatalog, CatalogError> {
        let client = oci::client_for(&registry, insecure)
            .map_err(|e| CatalogError::Registry { reference: registry.to_string(), message: e.to_string() })?;
        let reader = RegistryReader::new(&registry.host, auth.clone(), insecure || registry.is_loopback())
            .map_err(|message| CatalogError::Registry { reference: registry.to_string(), message })?;
        Ok(OciCatalog { client, reader, registry, auth, ttl, state: Mutex::default(), counts: Mutex::default() })
    }

    /// The same catalog with another overall deadline per registry request (default
    /// [`crate::profile::registry::REQUEST_DEADLINE`]).
    pub fn with_deadline(mut self, deadline: Duration) -> OciCatalog {
        self.reader.set_deadline(deadline);
        self
    }

    /// The registry.
    pub fn registry(&self) -> &RegistryRef {
        &self.registry
    }

    /// Requests made so far.
    pub fn counts(&self) -> RequestCounts {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut RequestCounts)) {
        f(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OciState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries in the digest caches (manifests, profiles) and repositories with cached tags.
    pub fn cached(&self) -> (usize, usize, usize) {
        let st = self.state();
        (st.manifests.len(), st.profiles.len(), st.tags.len())
    }

    fn read_error(&self, reference: &str, e: RegistryError) -> CatalogError {
        let registry = self.registry.host.clone();
        match e {
            RegistryError::Unreachable(message) => CatalogError::Unreachable { registry, message },
            RegistryError::Unauthorized(message) => CatalogError::Unauthorized { registry, message },
            RegistryError::NotFound(message) | RegistryError::Invalid(message) => {
                CatalogError::Registry { reference: reference.to_string(), message }
            }
        }
    }

    fn classify(&self, reference: &str, e: OciDistributionError) -> CatalogError {
        let registry = self.registry.host.clone();
        match e {
            OciDistributionError::RequestError(r) => {
                CatalogError::Unreachable { registry, message: describe_chain(&r) }
            }
            OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
                CatalogError::Unauthorized { registry, message: "401 Unauthorized".into() }
            }
            other => CatalogError::Registry { reference: reference.to_string(), message: other.to_string() },
        }
    }

    /// All tags of a repository; robust to registries that ignore `n`/`last` (distribution 2.8
    /// sends everything each time): stop when a page brings nothing new. `sha256-*` tags
    /// (signatures, referrer fallbacks) are skipped. A repository that does not exist is empty.
    async fn all_tags(&self, model: &str) -> Result<Vec<String>, CatalogError> {
        let repo = self.registry.repository(model);
        let mut tags: Vec<String> = vec![];
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut last: Option<String> = None;
        let mut pages = 0;
        loop {
            if pages == MAX_TAG_PAGES {
                return Err(CatalogError::Registry {
                    reference: repo,
                    message: format!(
                        "the registry kept sending tag pages ({MAX_TAG_PAGES} pages, {} tags); a profile repository holds at most {MAX_TAGS} tags",
                        tags.len()
                    ),
                });
            }
            pages += 1;
            self.count(|c| c.tag_pages += 1);
            let page =
                self.reader.tags_page(&repo, 100, last.as_deref()).await.map_err(|e| self.read_error(&repo, e))?;
            let before = tags.len();
            let short_page = page.len() < 100;
            for t in page {
                if seen.insert(t.clone()) {
                    tags.push(t);
                }
            }
            if tags.len() > MAX_TAGS {
                return Err(CatalogError::Registry {
                    reference: repo,
                    message: format!("more than {MAX_TAGS} tags; a profile repository holds one tag per profile"),
                });
            }
            // A compliant registry's last page is short; one that ignores `n`/`last` repeats itself.
            if short_page || tags.len() == before {
                break;
            }
            last = tags.iter().max().cloned();
        }
        tags.retain(|t| !t.starts_with("sha256-"));
        tags.sort();
        Ok(tags)
    }

    /// Tag -> digest for a model, from cache within the TTL; stale entries serve when the
    /// registry is unreachable.
    async fn resolve(&self, model: &str) -> Result<Vec<(String, String)>, CatalogError> {
        let repo = self.registry.repository(model);
        let cached = self.state().tags.get(&repo).cloned();
        if let Some((at, tags)) = &cached
            && at.elapsed() < self.ttl
        {
            return Ok(tags.clone());
        }
        match self.resolve_fresh(model).await {
            Ok(tags) => {
                self.state().tags.insert(repo, (Instant::now(), tags.clone()));
                Ok(tags)
            }
            Err(e @ CatalogError::Unreachable { .. }) => match cached {
                Some((_, tags)) => {
                    warn!(registry = %self.registry, error = %e, "serving profiles resolved earlier");
                    Ok(tags)
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn resolve_fresh(&self, model: &str) -> Result<Vec<(String, String)>, CatalogError> {
        let mut out = vec![];
        let repo = self.registry.repository(model);
        for tag in self.all_tags(model).await? {
            self.count(|c| c.heads += 1);
            let digest = self
                .reader
                .manifest_digest(&repo, &tag)
                .await
                .map_err(|e| self.read_error(&format!("{}/{repo}:{tag}", self.registry.host), e))?;
            out.push((tag, digest));
        }
        Ok(out)
    }

    /// The manifest behind a digest, from cache or one GET; None when it is not a profile.
    async fn manifest(&self, model: &str, tag: &str, digest: &str) -> Result<Option<Listed>, CatalogError> {
        if let Some(l) = self.state().manifests.get(digest) {
            return Ok(Some(Listed {
                summary: ProfileSummary { name: tag.to_string(), ..l.summary.clone() },
                layer: l.layer.clone(),
            }));
        }
        let r = self.registry.digest_ref(model, digest);
        self.count(|c| c.manifests += 1);
        let bytes = self.reader.manifest(r.repository(), digest).await.map_err(|e| self.read_error(&r.whole(), e))?;
        let Ok(m) = serde_json::from_slice::<OciImageManifest>(&bytes) else { return Ok(None) };
        if m.artifact_type.as_deref() != Some(oci::ARTIFACT_TYPE) || m.layers.len() != 1 {
            return Ok(None);
        }
        let annotations = m.annotations.clone().unwrap_or_default();
        let source = format!("{}:{tag}@{digest}", r.resolve_registry().to_string() + "/" + r.repository());
        let Some(summary) = ProfileSummary::from_annotations(&annotations, tag, digest, source) else {
            return Ok(None);
        };
        let listed = Listed { summary, layer: m.layers[0].clone() };
        self.state().manifests.insert(digest.to_string(), listed.clone());
        Ok(Some(listed))
    }

    async fn list(&self, model: &str) -> Result<Vec<ProfileSummary>, CatalogError> {
        let mut out = vec![];
        for (tag, digest) in self.resolve(model).await? {
            match self.manifest(model, &tag, &digest).await {
                Ok(Some(l)) if l.summary.model == model => out.push(l.summary),
                Ok(_) => {}
                // A manifest not cached yet while the registry is down: list what we have.
                Err(e @ CatalogError::Unreachable { .. }) => warn!(tag, error = %e, "profile skipped"),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn fetch(&self, s: &ProfileSummary) -> Result<Profile, CatalogError> {
        if let Some(p) = self.state().profiles.get(&s.digest) {
            return Ok(p.clone());
        }
        // Bind first: a guard living through the match would be held across the await below.
        let cached = self.state().manifests.get(&s.digest).cloned();
        let listed = match cached {
            Some(l) => l,
            None => self.manifest(&s.model, &s.name, &s.digest).await?.ok_or_else(|| CatalogError::Registry {
                reference: s.source.clone(),
                message: "not a profile artifact".into(),
            })?,
        };
        let layer = &listed.layer;
        if layer.size < 0 || layer.size as usize > MAX_PROFILE_BYTES {
            return Err(CatalogError::Registry {
                reference: s.source.clone(),
                message: format!("profile blob is {} bytes, over the {MAX_PROFILE_BYTES}-byte limit", layer.size),
            });
        }
        if !oci::ACCEPTED_LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(CatalogError::Registry {
                reference: s.source.clone(),
                message: format!("layer type {} is not a profile", layer.media_type),
            });
        }
        let r = self.registry.digest_ref(&s.model, &s.digest);
        self.count(|c| c.blobs += 1);
        let buf = self
            .reader
            .blob(r.repository(), &layer.digest, layer.size as u64, MAX_PROFILE_BYTES as u64)
            .await
            .map_err(|e| self.read_error(&r.whole(), e))?;
        let profile = Profile::parse(&buf, &s.source)?;
        // Annotations are an index; the document is the truth, and they must agree.
        let doc = ProfileSummary::of(&profile, s.digest.clone(), s.source.clone());
        let agree = (&doc.name, &doc.model, doc.kpi, doc.precision, doc.vendor, &doc.product, doc.count)
            == (&s.name, &s.model, s.kpi, s.precision, s.vendor, &s.product, s.count);
        if !agree {
            return Err(CatalogError::Registry {
                reference: s.source.clone(),
                message: format!(
                    "the manifest annotations describe {} ({} {} {}x {}) but the document is {} ({} {} {}x {}); re-publish it with `oim profiles push`",
                    s.name,
                    enum_str(&s.kpi),
                    enum_str(&s.precision),
                    s.count,
                    s.product,
                    doc.name,
                    enum_str(&doc.kpi),
                    enum_str(&doc.precision),
                    doc.count,
                    doc.product
                ),
            });
        }
        self.state().profiles.insert(s.digest.clone(), profile.clone());
        Ok(profile)
    }

    /// Publishes every profile of `dir` with the DESIGN layout; returns (reference, digest) pairs.
    pub async fn push(&self, dir: &DirCatalog) -> Result<Vec<(String, String)>, CatalogError> {
        let mut out = vec![];
        for (_, bytes, p) in dir.entries() {
            let r = self.registry.tag_ref(&p.model, &p.name);
            let title = BTreeMap::from([(oci::TITLE.to_string(), format!("{}.yaml", p.name))]);
            let layer = ImageLayer::new(bytes.to_vec(), oci::LAYER_MEDIA_TYPE.to_string(), Some(title));
            let config = Config::new(b"{}".to_vec(), oci::EMPTY_CONFIG_MEDIA_TYPE.to_string(), None);
            let mut manifest =
                OciImageManifest::build(std::slice::from_ref(&layer), &config, Some(oci::annotations(p)));
            manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
            manifest.artifact_type = Some(oci::ARTIFACT_TYPE.to_string());
            self.client
                .push(&r, &[layer], config, &self.auth, Some(manifest.clone()))
                .await
                .map_err(|e| self.classify(&r.whole(), e))?;
            let digest = digest_of(&serde_json::to_vec(&OciManifest::Image(manifest)).unwrap_or_default());
            let digest = self.client.fetch_manifest_digest(&r, &self.auth).await.unwrap_or(digest);
            out.push((r.whole(), digest));
        }
        Ok(out)
    }
}

/// An error and its sources on one line ("error sending request: connection refused").
fn describe_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

/// Lists an OCI catalog without wrapping it in [`Catalog`] (benchmarks keep the counters).
pub async fn list_oci(c: &OciCatalog, model: &str) -> Result<Vec<ProfileSummary>, CatalogError> {
    c.list(model).await
}

/// The two sources behind one interface.
pub enum Catalog {
    /// A directory.
    Dir(DirCatalog),
    /// An OCI registry.
    Oci(Box<OciCatalog>),
}

impl Catalog {
    /// Where it reads from: `host[:port]/prefix`, or `catalog directory`.
    pub fn location(&self) -> String {
        match self {
            Catalog::Dir(_) => "catalog directory".into(),
            Catalog::Oci(o) => o.registry().to_string(),
        }
    }

    /// The profiles for `model` (exact Hugging Face id).
    pub async fn list(&self, model: &str) -> Result<Vec<ProfileSummary>, CatalogError> {
        match self {
            Catalog::Dir(d) => Ok(d.list(model)),
            Catalog::Oci(o) => o.list(model).await,
        }
    }

    /// The full profile behind a summary, pinned by its digest.
    pub async fn fetch(&self, s: &ProfileSummary) -> Result<Profile, CatalogError> {
        match self {
            Catalog::Dir(d) => d.fetch(s).ok_or_else(|| CatalogError::Registry {
                reference: s.source.clone(),
                message: "changed since it was listed".into(),
            }),
            Catalog::Oci(o) => o.fetch(s).await,
        }
    }
}

#[cfg(test)]
mod cache_bound_tests {
    use super::*;

    #[test]
    fn a_full_cache_forgets_its_oldest_entries_and_keeps_its_size() {
        let mut c: Bounded<u32> = Bounded::new(3);
        for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            c.insert(k.to_string(), i as u32);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("a").is_none() && c.get("b").is_none(), "the oldest went first");
        assert_eq!((c.get("c"), c.get("e")), (Some(&2), Some(&4)));
        // Replacing an entry keeps one copy and its place.
        c.insert("c".into(), 9);
        assert_eq!((c.len(), c.get("c")), (3, Some(&9)));
        for i in 0..10_000 {
            c.insert(format!("k{i}"), i);
        }
        assert_eq!((c.len(), c.order.len()), (3, 3), "the order queue is bounded too");
    }
}
