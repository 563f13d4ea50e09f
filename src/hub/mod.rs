//! The Hugging Face hub API, as `oim download` (the OIMCache Job) uses it: resolve a revision to a
//! commit, list its files, download each with resume and size/checksum checks into
//! `DEST/<repo>/<commit>/`, and write `.oim-complete.json` last. Honours `HF_ENDPOINT` and
//! `HF_TOKEN`; the token is sent as a header and never printed.

use std::io::{ErrorKind, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, RANGE};
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub mod model;

/// The marker written last into `DEST/<repo>/<commit>/`.
pub const COMPLETE_MARKER: &str = ".oim-complete.json";
const PARTIAL_SUFFIX: &str = ".oim-partial";
const ATTEMPTS: u32 = 5;

/// Why a download failed; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// 401.
    #[error(
        "{repo}: the hub refused access (401); set HF_TOKEN (OIMCache: spec.source.hf.authSecret) to a token that can read it"
    )]
    Unauthorized {
        /// Repository.
        repo: String,
    },
    /// 403: gated or private.
    #[error(
        "{repo}: access is forbidden (403): the repository is gated or private; accept its license on the hub with the account whose HF_TOKEN is used"
    )]
    Forbidden {
        /// Repository.
        repo: String,
    },
    /// 404.
    #[error(
        "{what} was not found on {endpoint} (404); check --repo and --revision (OIMCache: spec.source.hf.modelName and revision)"
    )]
    NotFound {
        /// What was asked for.
        what: String,
        /// The hub.
        endpoint: String,
    },
    /// Another HTTP status.
    #[error("{url}: the hub answered {status}")]
    Http {
        /// URL.
        url: String,
        /// Status.
        status: StatusCode,
    },
    /// Network trouble.
    #[error("{url}: {message}")]
    Network {
        /// URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// The hub's answer was not understood.
    #[error("{0}")]
    Protocol(String),
    /// Out of space.
    #[error(
        "disk full writing {path}: at least {needed} more bytes are needed; raise the PVC size (OIMCache: spec.storage.pvc.size)"
    )]
    DiskFull {
        /// File.
        path: PathBuf,
        /// Bytes still to write.
        needed: u64,
    },
    /// Any other filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Content that does not match what the hub advertised.
    #[error(
        "{path}: {what} mismatch: expected {expected}, got {actual}; the partial file was removed, run again to re-download it"
    )]
    Corrupt {
        /// File.
        path: String,
        /// `size`, `sha256` or `git sha1`.
        what: &'static str,
        /// Advertised.
        expected: String,
        /// Found.
        actual: String,
    },
    /// A bad `--include`/`--exclude` glob.
    #[error("{0}")]
    BadInput(String),
}

impl HubError {
    /// Whether the user must change something (credentials, names, globs) for a retry to help.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            HubError::Unauthorized { .. }
                | HubError::Forbidden { .. }
                | HubError::NotFound { .. }
                | HubError::BadInput(_)
        )
    }

    fn transient(&self) -> bool {
        match self {
            HubError::Network { .. } => true,
            HubError::Http { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
            _ => false,
        }
    }
}

/// One file of a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoFile {
    /// Path inside the repository.
    pub path: String,
    /// Size in bytes, when the hub said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of an LFS file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A revision resolved to a commit.
#[derive(Debug, Clone)]
pub struct Revision {
    /// The commit sha.
    pub commit: String,
    /// Its files.
    pub files: Vec<RepoFile>,
}

#[derive(Deserialize)]
struct ApiRevision {
    sha: String,
    #[serde(default)]
    siblings: Vec<ApiSibling>,
}

#[derive(Deserialize)]
struct ApiSibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<ApiLfs>,
}

#[derive(Deserialize)]
struct ApiLfs {
    sha256: String,
    #[serde(default)]
    size: Option<u64>,
}

/// What `.oim-complete.json` records.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Complete {
    /// Repository.
    pub repo: String,
    /// The revision asked for.
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    /// Files and sizes.
    pub files: Vec<CompleteFile>,
    /// Total bytes.
    pub bytes: u64,
}

/// One downloaded file in the marker.
#[derive(Debug, Serialize, Deserialize)]
pub struct CompleteFile {
    /// Path inside the repository.
    pub path: String,
    /// Bytes.
    pub size: u64,
}

/// A hub client.
pub struct Hub {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
}

impl Hub {
    /// From `HF_ENDPOINT` (default `https://huggingface.co`) and `HF_TOKEN`.
    pub fn from_env() -> Result<Hub, HubError> {
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
        Hub::new(endpoint.as_deref().unwrap_or("https://huggingface.co"), token)
    }

    /// A client for `endpoint`, sending `token` when given.
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Hub, HubError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("oim/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HubError::Protocol(format!("HTTP client: {e}")))?;
        Ok(Hub { http, endpoint: endpoint.trim_end_matches('/').to_string(), token })
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = &self.token
            && let Ok(mut v) = format!("Bearer {t}").parse::<reqwest::header::HeaderValue>()
        {
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        h
    }

    fn status_error(&self, repo: &str, what: &str, url: &str, status: StatusCode) -> HubError {
        match status {
            StatusCode::UNAUTHORIZED => HubError::Unauthorized { repo: repo.into() },
            StatusCode::FORBIDDEN => HubError::Forbidden { repo: repo.into() },
            StatusCode::NOT_FOUND => HubError::NotFound { what: what.into(), endpoint: self.endpoint.clone() },
            status => HubError::Http { url: url.into(), status },
        }
    }

    /// Resolves `revision` of `repo` to a commit and lists its files.
    pub async fn revision(&self, repo: &str, revision: &str) -> Result<Revision, HubError> {
        let url = format!("{}/api/models/{repo}/revision/{}?blobs=true", self.endpoint, encode(revision));
        let resp = self.http.get(&url).headers(self.headers()).send().await.map_err(|e| network(&url, &e))?;
        if !resp.status().is_success() {
            let what = format!("{repo} at revision {revision}");
            return Err(self.status_error(repo, &what, &url, resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| network(&url, &e))?;
        let api: ApiRevision = serde_json::from_slice(&body)
            .map_err(|e| HubError::Protocol(format!("{url}: not a hub revision document: {e}")))?;
        if api.sha.len() < 7 || !api.sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(HubError::Protocol(format!("{url}: the commit {:?} is not a sha", api.sha)));
        }
        let files = api
            .siblings
            .into_iter()
            .map(|s| RepoFile {
                size: s.lfs.as_ref().and_then(|l| l.size).or(s.size),
                sha256: s.lfs.map(|l| l.sha256.to_ascii_lowercase()),
                path: s.rfilename,
            })
            .collect();
        Ok(Revision { commit: api.sha, files })
    }

    /// Size, checksum and commit from a HEAD of the file (the hub's `X-Linked-*` headers when it
    /// redirects large files to a CDN).
    async fn head(&self, repo: &str, commit: &str, file: &RepoFile) -> Result<Meta, HubError> {
        let url = self.file_url(repo, commit, &file.path);
        let resp = self.http.head(&url).headers(self.headers()).send().await.map_err(|e| network(&url, &e))?;
        if !resp.status().is_success() {
            return Err(self.status_error(repo, &format!("{repo}/{}", file.path), &url, resp.status()));
        }
        let h = resp.headers();
        let text = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(|s| s.trim_matches('"').to_string());
        let size = text("x-linked-size").or_else(|| text("content-length")).and_then(|s| s.parse().ok());
        let etag = text("x-linked-etag")
            .or_else(|| text("etag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string());
        Ok(Meta { size, etag, commit: text("x-repo-commit") })
    }

    fn file_url(&self, repo: &str, commit: &str, path: &str) -> String {
        let path: Vec<String> = path.split('/').map(encode).collect();
        format!("{}/{repo}/resolve/{commit}/{}", self.endpoint, path.join("/"))
    }

    /// Downloads one file to `target`, resuming a `.oim-partial` left by an earlier attempt, and
    /// checks size and checksum before it takes its final name.
    async fn fetch(&self, repo: &str, commit: &str, file: &RepoFile, target: &Path) -> Result<u64, HubError> {
        let meta = self.head(repo, commit, file).await?;
        if let Some(c) = &meta.commit
            && c != commit
        {
            return Err(HubError::Protocol(format!("{}: served from commit {c}, expected {commit}", file.path)));
        }
        let size = file.size.or(meta.size);
        if let (Ok(m), Some(s)) = (std::fs::metadata(target), size)
            && m.len() == s
        {
            return Ok(s); // verified and renamed by an earlier run
        }
        let partial = PathBuf::from(format!("{}{PARTIAL_SUFFIX}", target.display()));
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.stream_to(repo, commit, &file.path, &partial, size).await {
                Ok(()) => break,
                Err(e) if e.transient() && attempt < ATTEMPTS => {
                    tracing::warn!(file = %file.path, attempt, error = %e, "download interrupted; resuming");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
            }
        }
        let expected_sha256 = file.sha256.clone().or_else(|| meta.etag.clone().filter(|e| is_hex(e, 64)));
        let git_sha1 = meta.etag.clone().filter(|e| is_hex(e, 40));
        let written = verify(&partial, &file.path, size, expected_sha256.as_deref(), git_sha1.as_deref())?;
        std::fs::rename(&partial, target).map_err(|e| io(target, e))?;
        Ok(written)
    }

    async fn stream_to(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        partial: &Path,
        size: Option<u64>,
    ) -> Result<(), HubError> {
        let mut have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        if size.is_some_and(|s| have > s) {
            have = 0;
        }
        if size == Some(have) && have > 0 {
            return Ok(());
        }
        let url = self.file_url(repo, commit, path);
        let mut req = self.http.get(&url).headers(self.headers());
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
        }
        let resp = req.send().await.map_err(|e| network(&url, &e))?;
        let status = resp.status();
        let append = match status {
            StatusCode::PARTIAL_CONTENT => true,
            s if s.is_success() => false, // the server ignored the range: start over
            StatusCode::RANGE_NOT_SATISFIABLE => false,
            s => return Err(self.status_error(repo, &format!("{repo}/{path}"), &url, s)),
        };
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            let _ = std::fs::remove_file(partial);
            return Err(HubError::Network { url, message: "range not satisfiable; restarting the file".into() });
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .map_err(|e| io(partial, e))?;
        let mut written = if append { have } else { 0 };
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| network(&url, &e))?;
            out.write_all(&chunk).map_err(|e| match e.kind() {
                ErrorKind::StorageFull => HubError::DiskFull {
                    path: partial.to_path_buf(),
                    needed: size.unwrap_or(0).saturating_sub(written),
                },
                _ => io(partial, e),
            })?;
            written += chunk.len() as u64;
        }
        out.flush().map_err(|e| io(partial, e))?;
        if size.is_some_and(|s| written < s) {
            return Err(HubError::Network { url, message: format!("connection closed after {written} bytes") });
        }
        Ok(())
    }
}

struct Meta {
    size: Option<u64>,
    etag: Option<String>,
    commit: Option<String>,
}

fn network(url: &str, e: &reqwest::Error) -> HubError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    HubError::Network { url: url.to_string(), message }
}

fn io(path: &Path, source: std::io::Error) -> HubError {
    if source.kind() == ErrorKind::StorageFull {
        return HubError::DiskFull { path: path.to_path_buf(), needed: 0 };
    }
    HubError::Io { path: path.to_path_buf(), source }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Percent-encodes a path segment or revision (branch names may hold `/`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Checks a finished file's size and checksum; a mismatch removes it so the next run starts clean.
fn verify(
    partial: &Path,
    name: &str,
    size: Option<u64>,
    sha256: Option<&str>,
    git_sha1: Option<&str>,
) -> Result<u64, HubError> {
    let fail = |what, expected: String, actual: String| {
        let _ = std::fs::remove_file(partial);
        Err(HubError::Corrupt { path: name.to_string(), what, expected, actual })
    };
    let len = std::fs::metadata(partial).map_err(|e| io(partial, e))?.len();
    if let Some(s) = size
        && s != len
    {
        return fail("size", s.to_string(), len.to_string());
    }
    let mut f = std::fs::File::open(partial).map_err(|e| io(partial, e))?;
    let mut s256 = sha2::Sha256::new();
    let mut s1 = sha1::Sha1::new();
    s1.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io(partial, e))?;
        if n == 0 {
            break;
        }
        s256.update(&buf[..n]);
        if git_sha1.is_some() {
            s1.update(&buf[..n]);
        }
    }
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if let Some(want) = sha256 {
        let got = hex(&s256.finalize());
        if !got.eq_ignore_ascii_case(want) {
            return fail("sha256", want.to_string(), got);
        }
    } else if let Some(want) = git_sha1 {
        let got = hex(&s1.finalize());
        if !got.eq_ignore_ascii_case(want) {
            return fail("git sha1", want.to_string(), got);
        }
    }
    Ok(len)
}

fn globs(patterns: &[String], flag: &str) -> Result<Option<GlobSet>, HubError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| HubError::BadInput(format!("{flag} {p:?}: {e}")))?);
    }
    b.build().map(Some).map_err(|e| HubError::BadInput(format!("{flag}: {e}")))
}

/// A repository path that stays inside the destination.
fn safe(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

/// Downloads `repo` at `revision` into `dest/<repo>/<commit>/`; returns that directory. A
/// directory that already holds the marker is complete and left untouched.
pub async fn download(
    hub: &Hub,
    repo: &str,
    revision: &str,
    dest: &Path,
    include: &[String],
    exclude: &[String],
) -> Result<PathBuf, HubError> {
    if !safe(repo) || repo.split('/').count() > 2 {
        return Err(HubError::BadInput(format!(
            "--repo {repo:?}: expected org/name, e.g. meta-llama/Llama-3.1-8B-Instruct"
        )));
    }
    let (inc, exc) = (globs(include, "--include")?, globs(exclude, "--exclude")?);
    let rev = hub.revision(repo, revision).await?;
    let dir = dest.join(repo).join(&rev.commit);
    if dir.join(COMPLETE_MARKER).is_file() {
        tracing::info!(dir = %dir.display(), "already complete");
        return Ok(dir);
    }
    let wanted: Vec<&RepoFile> = rev
        .files
        .iter()
        .filter(|f| inc.as_ref().is_none_or(|g| g.is_match(&f.path)))
        .filter(|f| exc.as_ref().is_none_or(|g| !g.is_match(&f.path)))
        .collect();
    if wanted.is_empty() {
        return Err(HubError::BadInput(format!(
            "{repo}@{}: no file matches --include {include:?} / --exclude {exclude:?}; {} file(s) exist",
            rev.commit,
            rev.files.len()
        )));
    }
    let mut files = vec![];
    for f in wanted {
        if !safe(&f.path) {
            return Err(HubError::Protocol(format!("{repo}: refusing the file path {:?}", f.path)));
        }
        let size = hub.fetch(repo, &rev.commit, f, &dir.join(&f.path)).await?;
        tracing::info!(file = %f.path, bytes = size, "downloaded");
        files.push(CompleteFile { path: f.path.clone(), size });
    }
    let bytes = files.iter().map(|f| f.size).sum();
    let marker = Complete { repo: repo.into(), revision: revision.into(), commit: rev.commit.clone(), files, bytes };
    let tmp = dir.join(format!("{COMPLETE_MARKER}{PARTIAL_SUFFIX}"));
    let json = serde_json::to_vec_pretty(&marker).map_err(|e| HubError::Protocol(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, dir.join(COMPLETE_MARKER)).map_err(|e| io(&dir, e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_destination_are_refused() {
        assert!(safe("model-00001-of-00004.safetensors") && safe("original/params.json"));
        for bad in ["../etc/passwd", "/abs", "a/../../b", ""] {
            assert!(!safe(bad), "{bad}");
        }
    }

    #[test]
    fn a_file_whose_bytes_differ_from_the_advertised_sha256_is_removed() {
        let dir = std::env::temp_dir().join(format!("oim-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.oim-partial");
        std::fs::write(&p, b"hello").unwrap();
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(verify(&p, "x", Some(5), Some(good), None).unwrap(), 5);
        // git's blob id of "hello" (what the hub's ETag is for small files).
        assert_eq!(verify(&p, "x", Some(5), None, Some("b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0")).unwrap(), 5);
        let e = verify(&p, "x", Some(5), Some(&"0".repeat(64)), None).unwrap_err();
        assert!(e.to_string().contains("sha256 mismatch") && e.to_string().contains("run again"), "{e}");
        assert!(!p.exists(), "the corrupt file is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn branch_names_and_file_names_are_encoded() {
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode("model file.bin"), "model%20file.bin");
    }
}
