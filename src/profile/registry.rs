//! Bounded reads from an OCI distribution registry: tag pages, manifest digests, manifests and
//! blobs, each with a size cap checked before and while reading, an overall deadline per
//! request, and the registry token flow (anonymous or basic credentials exchanged for a bearer
//! token) with bounded token answers. oci-client reads whole bodies into memory with no cap, so
//! reads do not go through it; pushes (`oim profiles push`) still do.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use serde::Deserialize;

use crate::bounded::{self, ReadError};

/// Every registry request completes within this (connect, headers and body).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// One tag-list page (100 tags of at most 128 bytes is 14 KiB).
pub const MAX_TAG_PAGE_BYTES: u64 = 256 << 10;
/// A manifest (the OCI spec asks registries to accept at least 4 MiB; ours are ~1 KiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// A token endpoint's answer.
const MAX_TOKEN_BYTES: u64 = 64 << 10;
/// An error body worth reading for its code.
const MAX_ERROR_BYTES: u64 = 64 << 10;

/// The manifest types we accept.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

/// Why a registry read failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Connection, TLS or deadline trouble: the registry may come back.
    #[error("{0}")]
    Unreachable(String),
    /// 401/403 after authenticating.
    #[error("{0}")]
    Unauthorized(String),
    /// 404 / NAME_UNKNOWN / MANIFEST_UNKNOWN.
    #[error("{0}")]
    NotFound(String),
    /// Over a size cap, bad digest, or an answer we cannot use.
    #[error("{0}")]
    Invalid(String),
}

impl From<ReadError> for RegistryError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooLarge { .. } => RegistryError::Invalid(e.to_string()),
            _ => RegistryError::Unreachable(e.to_string()),
        }
    }
}

/// A tag-list page.
#[derive(Debug, Deserialize)]
pub struct TagPage {
    /// Tags on this page (`null` from some registries for an empty repository).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// Bounded reader for one registry.
pub struct RegistryReader {
    http: reqwest::Client,
    base: String,
    auth: RegistryAuth,
    deadline: Duration,
    /// repository -> (valid until, Authorization value).
    tokens: Mutex<HashMap<String, (Instant, String)>>,
}

impl RegistryReader {
    /// A reader for `host[:port]` (Docker Hub's name is resolved to its API host).
    pub fn new(host: &str, auth: RegistryAuth, plain_http: bool) -> Result<RegistryReader, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("oim/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let host = if matches!(host, "docker.io" | "index.docker.io") { "registry-1.docker.io" } else { host };
        let scheme = if plain_http { "http" } else { "https" };
        Ok(RegistryReader {
            http,
            base: format!("{scheme}://{host}"),
            auth,
            deadline: REQUEST_DEADLINE,
            tokens: Mutex::default(),
        })
    }

    /// Another overall deadline per request (tests; a slow registry's budget).
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.deadline = deadline;
    }

    /// One page of tags; `None` when the repository does not exist.
    pub async fn tags_page(&self, repo: &str, n: usize, last: Option<&str>) -> Result<Vec<String>, RegistryError> {
        let mut url = format!("{}/v2/{repo}/tags/list?n={n}", self.base);
        if let Some(l) = last {
            url.push_str(&format!("&last={}", encode(l)));
        }
        match self.get(repo, &url, reqwest::Method::GET, MAX_TAG_PAGE_BYTES).await {
            Ok((_, body)) => {
                let page: TagPage = serde_json::from_slice(&body)
                    .map_err(|e| RegistryError::Invalid(format!("{url}: not a tag list: {e}")))?;
                Ok(page.tags.unwrap_or_default())
            }
            Err(RegistryError::NotFound(_)) => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    /// The digest a tag points at (`Docker-Content-Digest` of a HEAD, else of a bounded GET).
    pub async fn manifest_digest(&self, repo: &str, tag: &str) -> Result<String, RegistryError> {
        let url = format!("{}/v2/{repo}/manifests/{}", self.base, encode(tag));
        let (headers, _) = self.get(repo, &url, reqwest::Method::HEAD, 0).await?;
        if let Some(d) = headers.get("docker-content-digest").and_then(|v| v.to_str().ok()).filter(|d| is_digest(d)) {
            return Ok(d.to_string());
        }
        let (_, body) = self.get(repo, &url, reqwest::Method::GET, MAX_MANIFEST_BYTES).await?;
        Ok(crate::profile::catalog::digest_of(&body))
    }

    /// The manifest behind `digest`, checked against it.
    pub async fn manifest(&self, repo: &str, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let url = format!("{}/v2/{repo}/manifests/{digest}", self.base);
        let (_, body) = self.get(repo, &url, reqwest::Method::GET, MAX_MANIFEST_BYTES).await?;
        check_digest(&url, &body, digest)?;
        Ok(body)
    }

    /// A blob of declared `size` bytes (refused when over `limit`), checked against `digest`.
    pub async fn blob(&self, repo: &str, digest: &str, size: u64, limit: u64) -> Result<Vec<u8>, RegistryError> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        if size > limit {
            return Err(RegistryError::Invalid(format!("{url}: blob is {size} bytes, over the {limit}-byte limit")));
        }
        let (_, body) = self.get(repo, &url, reqwest::Method::GET, size).await?;
        if body.len() as u64 != size {
            return Err(RegistryError::Invalid(format!(
                "{url}: {} bytes received, the manifest declares {size}",
                body.len()
            )));
        }
        check_digest(&url, &body, digest)?;
        Ok(body)
    }

    /// A request with this repository's credentials; a 401 with a challenge fetches a token and
    /// retries once.
    async fn get(
        &self,
        repo: &str,
        url: &str,
        method: reqwest::Method,
        limit: u64,
    ) -> Result<(HeaderMap, Vec<u8>), RegistryError> {
        let mut retried = false;
        loop {
            let mut req = self.http.request(method.clone(), url).header(ACCEPT, MANIFEST_ACCEPT);
            if let Some(h) = self.cached_token(repo) {
                req = req.header(AUTHORIZATION, h);
            } else if let Some(h) = self.basic() {
                req = req.header(AUTHORIZATION, h);
            }
            // Error bodies are read (bounded) for their message; success bodies up to `limit`.
            let (status, headers, body) = bounded::fetch_with(req, url, limit, MAX_ERROR_BYTES, self.deadline).await?;
            match status {
                s if s.is_success() => return Ok((headers, body)),
                StatusCode::UNAUTHORIZED if !retried => {
                    retried = true;
                    let challenge = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("");
                    self.authenticate(repo, url, challenge).await?;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(RegistryError::Unauthorized(format!("{url}: {status}")));
                }
                StatusCode::NOT_FOUND => return Err(RegistryError::NotFound(format!("{url}: 404 Not Found"))),
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    return Err(RegistryError::Unreachable(format!("{url}: {s}")));
                }
                s => {
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    return Err(RegistryError::Invalid(format!("{url}: {s}: {text}")));
                }
            }
        }
    }

    fn basic(&self) -> Option<String> {
        match &self.auth {
            RegistryAuth::Basic(u, p) => {
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
            }
            RegistryAuth::Bearer(t) => Some(format!("Bearer {t}")),
            _ => None,
        }
    }

    fn cached_token(&self, repo: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(repo).filter(|(until, _)| Instant::now() < *until).map(|(_, h)| h.clone())
    }

    /// The bearer token flow of the distribution spec; a Basic challenge means our basic
    /// credentials (if any) were refused.
    async fn authenticate(&self, repo: &str, url: &str, challenge: &str) -> Result<(), RegistryError> {
        let Some(params) = challenge.strip_prefix("Bearer ").map(parse_challenge) else {
            return Err(RegistryError::Unauthorized(format!("{url}: 401 Unauthorized")));
        };
        let realm = params
            .get("realm")
            .ok_or_else(|| RegistryError::Invalid(format!("{url}: the registry's Bearer challenge names no realm")))?;
        let mut token_url = reqwest::Url::parse(realm)
            .map_err(|e| RegistryError::Invalid(format!("{url}: token realm {realm:?}: {e}")))?;
        {
            let mut q = token_url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &format!("repository:{repo}:pull"));
        }
        let mut req = self.http.get(token_url.clone());
        if let RegistryAuth::Basic(u, p) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let what = format!("token endpoint {}", crate::redact::redact_url(token_url.as_str()));
        let (status, _, body) = bounded::fetch(req, &what, MAX_TOKEN_BYTES, self.deadline).await?;
        if !status.is_success() {
            return Err(RegistryError::Unauthorized(format!("{what}: {status}")));
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: Token =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Invalid(format!("{what}: not a token: {e}")))?;
        let token = t.token.or(t.access_token).ok_or_else(|| RegistryError::Invalid(format!("{what}: no token")))?;
        // Reuse it for most of its life (60 s when the registry does not say).
        let life = Duration::from_secs(t.expires_in.unwrap_or(60).clamp(10, 3600) * 9 / 10);
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(repo.to_string(), (Instant::now() + life, format!("Bearer {token}")));
        Ok(())
    }
}

/// `realm="...",service="..."` into pairs.
fn parse_challenge(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, tail) = match after.strip_prefix('"') {
            Some(q) => q.split_once('"').unwrap_or((q, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.insert(key, value.to_string());
        rest = tail.trim_start_matches(',');
    }
    out
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_digest(url: &str, body: &[u8], digest: &str) -> Result<(), RegistryError> {
    let got = crate::profile::catalog::digest_of(body);
    if digest.starts_with("sha256:") && !got.eq_ignore_ascii_case(digest) {
        return Err(RegistryError::Invalid(format!("{url}: content digest is {got}, not {digest}")));
    }
    Ok(())
}

/// Percent-encodes a query value or tag.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse_with_quoted_commas() {
        let p =
            parse_challenge(r#"realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull,push""#);
        assert_eq!(p["realm"], "https://auth.io/token");
        assert_eq!(p["service"], "registry.io");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
    }
}
