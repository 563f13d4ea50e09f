//! Model facts for the estimator from the hub: `config.json` and the exact weight bytes from
//! the safetensors metadata (`model.safetensors.index.json`'s `total_size`, or a single
//! `model.safetensors` file's header read with two HTTP range requests), never the weights.
//! Every body is read up to a limit. [`ArchCache`] keeps answers so a reconcile loop asks the
//! hub once per model and revision.

use std::collections::HashMap;
use std::sync::Mutex;
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
                    "{url}: larger than {limit} bytes; is this a model repository?"
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

/// (endpoint, repo, revision) -> when asked, and the answer.
type Entries = HashMap<(String, String, String), (Instant, Result<Arch, String>)>;

/// Architectures by (endpoint, repo, revision) for `ttl`; failures are kept a tenth as long
/// so a fixed token or repository is seen soon.
pub struct ArchCache {
    ttl: Duration,
    entries: Mutex<Entries>,
}

impl ArchCache {
    /// An empty cache.
    pub fn new(ttl: Duration) -> ArchCache {
        ArchCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The architecture of `repo` at `revision`, from the cache or the hub.
    pub async fn get(&self, hub: &Hub, repo: &str, revision: &str) -> Result<Arch, String> {
        let key = (hub.endpoint.clone(), repo.to_string(), revision.to_string());
        if let Ok(entries) = self.entries.lock()
            && let Some((at, answer)) = entries.get(&key)
        {
            let ttl = if answer.is_ok() { self.ttl } else { self.ttl / 10 };
            if at.elapsed() < ttl {
                return answer.clone();
            }
        }
        let answer = hub.model_arch(repo, revision).await.map_err(|e| e.to_string());
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key, (Instant::now(), answer.clone()));
        }
        answer
    }
}
