//! Model facts for the estimator from the hub: `config.json` and the exact weight bytes from
//! the safetensors metadata (`model.safetensors.index.json`'s `total_size`, or a single
//! `model.safetensors` file's header read with two HTTP range requests), never the weights.
//! Every body is read up to a limit. [`ArchCache`] keeps answers so reconcile loops ask the hub
//! once per model, revision, endpoint and token, never wait on it for more than a moment, and
//! retry a failure with backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::RANGE;

use super::{Hub, HubError, network};
use crate::profile::estimate::Arch;
use crate::profile::estimate::arch::{MAX_CONFIG_BYTES, safetensors_header_bytes, safetensors_index_bytes};

/// The largest safetensors index read (a 405B model's is ~100 KiB).
const MAX_INDEX_BYTES: u64 = 16 << 20;
/// The largest safetensors header read (tensor names, dtypes, shapes, offsets).
const MAX_HEADER_BYTES: u64 = 64 << 20;

impl Hub {
    /// GETs `path` of `repo` at `revision`, at most `limit` bytes (optionally a byte range);
    /// None when the file does not exist.
    async fn get_bounded(
        &self,
        repo: &str,
        revision: &str,
        path: &str,
        limit: u64,
        range: Option<(u64, u64)>,
    ) -> Result<Option<Vec<u8>>, HubError> {
        let url = self.file_url(repo, &super::encode(revision), path);
        let mut req = self.http.get(&url).headers(self.headers());
        if let Some((from, to)) = range {
            req = req.header(RANGE, format!("bytes={from}-{to}"));
        }
        let resp = req.send().await.map_err(|e| network(&url, &e))?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if !s.is_success() => return Err(self.status_error(repo, &format!("{repo}/{path}"), &url, s)),
            _ => {}
        }
        let mut body = vec![];
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| network(&url, &e))?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(HubError::Protocol(format!(
                    "{}: larger than {limit} bytes; is this a model repository?",
                    crate::redact::redact_url(&url)
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }

    /// The architecture of `repo` at `revision` from its `config.json`, with the exact weight
    /// bytes when the safetensors metadata is there. An architecture the estimator cannot size
    /// is `BadInput` with the reason.
    pub async fn model_arch(&self, repo: &str, revision: &str) -> Result<Arch, HubError> {
        let config =
            self.get_bounded(repo, revision, "config.json", MAX_CONFIG_BYTES, None).await?.ok_or_else(|| {
                HubError::NotFound {
                    what: format!("{repo}/config.json at {revision}"),
                    endpoint: self.endpoint.clone(),
                }
            })?;
        let mut arch = Arch::from_config_json(repo, &config).map_err(HubError::BadInput)?;
        arch.source = format!("config.json of {repo} at {revision}");
        if let Some(bytes) = self.safetensors_bytes(repo, revision).await? {
            arch = arch.with_checkpoint_bytes(bytes);
            arch.source.push_str(" and its safetensors metadata");
        }
        Ok(arch)
    }

    /// Bytes of all tensors: the index's `metadata.total_size`, else the single file's header.
    async fn safetensors_bytes(&self, repo: &str, revision: &str) -> Result<Option<u64>, HubError> {
        if let Some(index) =
            self.get_bounded(repo, revision, "model.safetensors.index.json", MAX_INDEX_BYTES, None).await?
        {
            return safetensors_index_bytes(&index)
                .map(Some)
                .map_err(|e| HubError::Protocol(format!("{repo}/model.safetensors.index.json: {e}")));
        }
        let Some(len) = self.get_bounded(repo, revision, "model.safetensors", 8, Some((0, 7))).await? else {
            return Ok(None);
        };
        let len: [u8; 8] = len
            .try_into()
            .map_err(|_| HubError::Protocol(format!("{repo}/model.safetensors: the hub ignored the range request")))?;
        let n = u64::from_le_bytes(len);
        if n == 0 || n > MAX_HEADER_BYTES {
            return Err(HubError::Protocol(format!(
                "{repo}/model.safetensors: a header of {n} bytes is not safetensors"
            )));
        }
        let header = self
            .get_bounded(repo, revision, "model.safetensors", n, Some((8, 7 + n)))
            .await?
            .ok_or_else(|| HubError::Protocol(format!("{repo}/model.safetensors vanished between two requests")))?;
        safetensors_header_bytes(&header)
            .map(Some)
            .map_err(|e| HubError::Protocol(format!("{repo}/model.safetensors: {e}")))
    }
}

/// A hub error said without the downloader's flags and fields (the caller names its own).
fn neutral(e: &HubError) -> String {
    match e {
        HubError::Unauthorized { .. } => "the hub refused access (401): the model needs a token that can read it".into(),
        HubError::Forbidden { .. } => {
            "access is forbidden (403): the repository is gated or private; accept its license on the hub with the account whose token is used".into()
        }
        HubError::NotFound { .. } => "it was not found (404): check the model name and revision".into(),
        other => other.to_string(),
    }
}

/// Where a model's facts come from: hub, repository, revision and the token to send.
#[derive(Clone)]
pub struct ModelSource {
    /// The hub (`HF_ENDPOINT`).
    pub endpoint: String,
    /// Repository id.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// `HF_TOKEN`, when the model needs one.
    pub token: Option<String>,
}

impl ModelSource {
    /// `endpoint, repo, revision, sha256(token)[..8]`: a token is part of the key (a gated model
    /// read with one token is not served to a caller without it) but never kept in the clear.
    fn key(&self) -> Key {
        use sha2::Digest;
        let token = self.token.as_deref().map_or(String::new(), |t| {
            sha2::Sha256::digest(t.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
        });
        (self.endpoint.trim_end_matches('/').to_string(), self.repo.clone(), self.revision.clone(), token)
    }

    /// `Qwen/X at main from https://hub`, for messages.
    pub fn describe(&self) -> String {
        format!("{} at {} from {}", self.repo, self.revision, crate::redact::redact_url(&self.endpoint))
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The architecture.
    Ready(Arc<Arch>),
    /// Still being read; look again soon.
    Pending,
    /// The last read failed; the next is not tried before `retry_in`.
    Failed {
        /// The cause, naming the model and the hub.
        message: String,
        /// When the next read may start.
        retry_in: Duration,
    },
}

type Key = (String, String, String, String);

enum State {
    /// A read is under way; its sender is dropped when it ends.
    Reading(tokio::sync::watch::Receiver<()>),
    Done(Result<Arc<Arch>, String>),
}

struct Entry {
    at: Instant,
    state: State,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// The last answer read, served while a refresh is under way or failing.
    good: Option<Arc<Arch>>,
}

/// Architectures read from the hub, shared by every reconcile: at most `capacity` entries (the
/// oldest answer is evicted first), answers kept for `ttl`, failures retried after a backoff
/// doubling from 2 s to 5 min, one read per key at a time, each read under an overall deadline.
/// A model read once keeps its last answer while a refresh is under way or fails: what serves
/// keeps serving through a hub outage.
pub struct ArchCache {
    capacity: usize,
    ttl: Duration,
    deadline: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
}

/// The delay before retrying after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let n = failures.saturating_sub(1).min(16);
    Duration::from_secs((2u64 << n).min(300))
}

impl ArchCache {
    /// An empty cache.
    pub fn new(capacity: usize, ttl: Duration, deadline: Duration) -> Arc<ArchCache> {
        Arc::new(ArchCache { capacity: capacity.max(1), ttl, deadline, entries: Mutex::new(HashMap::new()) })
    }

    /// The architecture of `src`: from the cache, or read from the hub in the background and
    /// waited for at most `wait` (a slow hub never holds a reconcile longer than that).
    pub async fn lookup(self: &Arc<Self>, src: &ModelSource, wait: Duration) -> Lookup {
        let key = src.key();
        let mut rx = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let good = entries.get(&key).and_then(|e| e.good.clone());
            match (entries.get(&key).and_then(|e| self.answer(e)), &good) {
                (Some(Lookup::Failed { .. }), Some(g)) => return Lookup::Ready(g.clone()),
                (Some(found), _) => return found,
                (None, _) => {}
            }
            let rx = match entries.get(&key).map(|e| &e.state) {
                Some(State::Reading(rx)) => rx.clone(),
                _ => self.start(&mut entries, key.clone(), src.clone()),
            };
            if let Some(g) = good {
                return Lookup::Ready(g);
            }
            rx
        };
        let _ = tokio::time::timeout(wait, rx.changed()).await;
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = entries.get(&key) else { return Lookup::Pending };
        match (self.answer(e), &e.good) {
            (Some(Lookup::Failed { .. }) | None, Some(g)) => Lookup::Ready(g.clone()),
            (Some(found), _) => found,
            (None, None) => Lookup::Pending,
        }
    }

    /// A settled answer still valid; None when the entry must be (re)read or is being read.
    fn answer(&self, e: &Entry) -> Option<Lookup> {
        match &e.state {
            State::Reading(_) => None,
            State::Done(Ok(a)) if e.at.elapsed() < self.ttl => Some(Lookup::Ready(a.clone())),
            State::Done(Err(m)) => {
                let wait = backoff(e.failures);
                let elapsed = e.at.elapsed();
                (elapsed < wait).then(|| Lookup::Failed { message: m.clone(), retry_in: wait - elapsed })
            }
            State::Done(Ok(_)) => None,
        }
    }

    /// Marks `key` as being read and reads it in a task of its own.
    fn start(
        self: &Arc<Self>,
        entries: &mut HashMap<Key, Entry>,
        key: Key,
        src: ModelSource,
    ) -> tokio::sync::watch::Receiver<()> {
        let (tx, rx) = tokio::sync::watch::channel(());
        let (failures, good) = entries.get(&key).map_or((0, None), |e| (e.failures, e.good.clone()));
        let reading = Entry { at: Instant::now(), state: State::Reading(rx.clone()), failures, good };
        entries.insert(key.clone(), reading);
        let cache = self.clone();
        tokio::spawn(async move {
            let answer = cache.read(&src).await;
            let mut entries = cache.entries.lock().unwrap_or_else(|e| e.into_inner());
            let before = entries.get(&key).and_then(|e| e.good.clone());
            let (failures, good) = match &answer {
                Ok(a) => (0, Some(a.clone())),
                Err(_) => (failures.saturating_add(1), before),
            };
            entries.insert(key, Entry { at: Instant::now(), state: State::Done(answer), failures, good });
            cache.evict(&mut entries);
            drop(tx);
        });
        rx
    }

    async fn read(&self, src: &ModelSource) -> Result<Arc<Arch>, String> {
        let what = src.describe();
        let hub = Hub::new(&src.endpoint, src.token.clone()).map_err(|e| format!("config.json of {what}: {e}"))?;
        match tokio::time::timeout(self.deadline, hub.model_arch(&src.repo, &src.revision)).await {
            Ok(Ok(a)) => Ok(Arc::new(a)),
            Ok(Err(e)) => Err(format!("config.json of {what} could not be read: {}", neutral(&e))),
            Err(_) => Err(format!(
                "config.json of {what} could not be read: no complete answer within {}s",
                self.deadline.as_secs()
            )),
        }
    }

    /// Drops the oldest settled answers beyond the capacity (reads under way stay).
    fn evict(&self, entries: &mut HashMap<Key, Entry>) {
        while entries.len() > self.capacity {
            let oldest = entries
                .iter()
                .filter(|(_, e)| matches!(e.state, State::Done(_)))
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => entries.remove(&k),
                None => break,
            };
        }
    }

    /// Entries held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    use super::*;
    use crate::fake_http::{self, delayed, full, respond};

    const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 4,
        "vocab_size": 32000, "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}"#;

    /// A hub whose answers are 500 while `failing` is set; counts config.json requests.
    async fn hub(failing: Arc<AtomicU32>, asked: Arc<AtomicUsize>) -> String {
        let addr = fake_http::start(move |req| {
            let path = req.uri().path();
            if failing.load(Ordering::SeqCst) == 1 {
                return respond(500, full("down"));
            }
            if path.starts_with("/acme/gated/") {
                return respond(403, full("{}"));
            }
            if path.ends_with("/config.json") {
                asked.fetch_add(1, Ordering::SeqCst);
                if path.starts_with("/acme/slow/") {
                    return respond(200, delayed(Duration::from_secs(5), b"{}"));
                }
                return respond(200, full(CONFIG));
            }
            if path.ends_with("model.safetensors.index.json") {
                return respond(200, full(r#"{"metadata": {"total_size": 33000000}, "weight_map": {}}"#));
            }
            respond(404, full("{}"))
        })
        .await;
        format!("http://{addr}")
    }

    fn source(endpoint: &str, repo: &str) -> ModelSource {
        ModelSource { endpoint: endpoint.into(), repo: repo.into(), revision: "main".into(), token: None }
    }

    #[tokio::test]
    async fn an_answer_is_read_once_and_a_failure_names_the_model_and_hub_and_backs_off() {
        let (failing, asked) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicUsize::new(0)));
        let endpoint = hub(failing.clone(), asked.clone()).await;
        let cache = ArchCache::new(8, Duration::from_secs(3600), Duration::from_secs(5));
        let tiny = source(&endpoint, "acme/tiny");
        let Lookup::Ready(a) = cache.lookup(&tiny, Duration::from_secs(5)).await else { panic!("ready") };
        assert_eq!(a.checkpoint.bytes, Some(33_000_000.0), "exact bytes from the safetensors index");
        assert!(matches!(cache.lookup(&tiny, Duration::from_secs(5)).await, Lookup::Ready(_)));
        assert_eq!(asked.load(Ordering::SeqCst), 1, "the second lookup is served from the cache");

        match cache.lookup(&source(&endpoint, "acme/gated"), Duration::from_secs(5)).await {
            Lookup::Failed { message, .. } => {
                assert!(message.contains("403") && message.contains("gated or private"), "{message}");
                assert!(!message.contains("--repo") && !message.contains("OIMCache"), "no downloader flags: {message}");
            }
            other => panic!("{other:?}"),
        }

        failing.store(1, Ordering::SeqCst);
        let other = source(&endpoint, "acme/other");
        match cache.lookup(&other, Duration::from_secs(5)).await {
            Lookup::Failed { message, retry_in } => {
                assert!(message.contains("acme/other") && message.contains(&endpoint), "{message}");
                assert!(message.contains("500"), "{message}");
                assert!(retry_in <= backoff(1) && retry_in > Duration::ZERO);
            }
            other => panic!("{other:?}"),
        }
        failing.store(0, Ordering::SeqCst);
        assert!(
            matches!(cache.lookup(&other, Duration::from_secs(5)).await, Lookup::Failed { .. }),
            "not asked again before the backoff"
        );
        tokio::time::sleep(backoff(1)).await;
        assert!(matches!(cache.lookup(&other, Duration::from_secs(5)).await, Lookup::Ready(_)), "recovered");
    }

    #[tokio::test]
    async fn a_slow_hub_holds_a_lookup_only_for_its_wait_and_the_cache_stays_bounded() {
        let (failing, asked) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicUsize::new(0)));
        let endpoint = hub(failing, asked.clone()).await;
        let cache = ArchCache::new(2, Duration::from_secs(3600), Duration::from_secs(2));
        let slow = source(&endpoint, "acme/slow");
        let started = Instant::now();
        assert!(matches!(cache.lookup(&slow, Duration::from_millis(300)).await, Lookup::Pending));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(cache.lookup(&slow, Duration::from_millis(100)).await, Lookup::Pending));
        assert_eq!(asked.load(Ordering::SeqCst), 1, "one read under way per model");
        match cache.lookup(&slow, Duration::from_secs(5)).await {
            Lookup::Failed { message, .. } => assert!(message.contains("within 2s"), "{message}"),
            other => panic!("the overall deadline ends the read: {other:?}"),
        }
        for repo in ["acme/a", "acme/b", "acme/c"] {
            assert!(matches!(cache.lookup(&source(&endpoint, repo), Duration::from_secs(5)).await, Lookup::Ready(_)));
        }
        assert_eq!(cache.len(), 2, "the oldest answers are evicted");
    }

    #[tokio::test]
    async fn a_model_read_once_keeps_its_answer_while_a_refresh_fails() {
        let (failing, asked) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicUsize::new(0)));
        let endpoint = hub(failing.clone(), asked.clone()).await;
        // Every answer is stale at once: each lookup refreshes in the background.
        let cache = ArchCache::new(8, Duration::ZERO, Duration::from_secs(5));
        let tiny = source(&endpoint, "acme/tiny");
        assert!(matches!(cache.lookup(&tiny, Duration::from_secs(5)).await, Lookup::Ready(_)));
        failing.store(1, Ordering::SeqCst);
        for _ in 0..3 {
            assert!(matches!(cache.lookup(&tiny, Duration::from_secs(5)).await, Lookup::Ready(_)));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_five_minutes_and_tokens_are_keyed_but_not_kept() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(300));
        let mut a = source("https://hub", "acme/x");
        let plain = a.key();
        a.token = Some("hf_secret".into());
        let key = a.key();
        assert_ne!(plain, key);
        assert!(!format!("{key:?}").contains("hf_secret"));
    }
}
