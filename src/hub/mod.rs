//! The Hugging Face hub API, as `oim download` (the OIMCache Job) uses it: resolve a revision to a
//! commit, list its files, download each with resume and size/checksum checks into
//! `DEST/<repo>/<commit>/`, and write the completion marker last. Honours `HF_ENDPOINT` and
//! `HF_TOKEN`; the token is sent as a header and never printed, and URLs are printed without
//! their userinfo.
//!
//! The downloader's own files live in `DEST/<repo>/.oim/<commit>/` (the marker `complete.json`,
//! and `partial/<path>` while a file downloads): a repository file always lands under
//! `DEST/<repo>/<commit>/`, so none can pose as the marker or collide with a partial file.
//! Every read is bounded: the revision document by size and deadline, HEADs by deadline, file
//! bodies by their advertised size.

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

use crate::bounded::ReadError;
use crate::redact::{redact_text, redact_url};

/// The downloader's folder beside the snapshots of a repository: `DEST/<repo>/.oim/`.
pub const STATE_DIR: &str = ".oim";
/// The marker written last: `DEST/<repo>/.oim/<commit>/complete.json`.
pub const COMPLETE_MARKER: &str = "complete.json";
/// Files being downloaded: `DEST/<repo>/.oim/<commit>/partial/<path>`.
const PARTIAL_DIR: &str = "partial";
const ATTEMPTS: u32 = 5;
/// The revision document (a repository with 100,000 files is about 20 MiB of JSON).
pub const MAX_REVISION_BYTES: u64 = 32 << 20;
/// Deadline for the revision document and each HEAD; file bodies are bounded by their size and
/// the read timeout instead (a 10 GB shard has no sensible overall deadline).
pub const METADATA_DEADLINE: Duration = Duration::from_secs(120);
/// A path inside a repository: at most this many bytes, and components of at most 255.
const MAX_PATH_BYTES: usize = 1024;

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
    deadline: Duration,
}

impl Hub {
    /// From `HF_ENDPOINT` (default `https://huggingface.co`) and `HF_TOKEN`.
    pub fn from_env() -> Result<Hub, HubError> {
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
        let token = std::env::var("HF_TOKEN").ok().map(|t| clean_token(&t)).transpose()?.flatten();
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
        Ok(Hub { http, endpoint: endpoint.trim_end_matches('/').to_string(), token, deadline: METADATA_DEADLINE })
    }

    /// Another deadline for the revision document and each HEAD (default [`METADATA_DEADLINE`]).
    pub fn with_deadline(mut self, deadline: Duration) -> Hub {
        self.deadline = deadline;
        self
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
            StatusCode::NOT_FOUND => HubError::NotFound { what: what.into(), endpoint: redact_url(&self.endpoint) },
            status => HubError::Http { url: redact_url(url), status },
        }
    }

    /// Resolves `revision` of `repo` to a commit and lists its files.
    pub async fn revision(&self, repo: &str, revision: &str) -> Result<Revision, HubError> {
        let url = format!("{}/api/models/{repo}/revision/{}?blobs=true", self.endpoint, encode(revision));
        let shown = redact_url(&url);
        let req = self.http.get(&url).headers(self.headers());
        let (status, _, body) =
            crate::bounded::fetch(req, &shown, MAX_REVISION_BYTES, self.deadline).await.map_err(|e| match e {
                ReadError::TooLarge { .. } => HubError::Protocol(format!(
                    "{e}: the revision document of {repo} is over {MAX_REVISION_BYTES} bytes; is HF_ENDPOINT a hub?"
                )),
                e => HubError::Network { url: shown.clone(), message: redact_text(&e.to_string()) },
            })?;
        if !status.is_success() {
            let what = format!("{repo} at revision {revision}");
            return Err(self.status_error(repo, &what, &url, status));
        }
        let api: ApiRevision = serde_json::from_slice(&body)
            .map_err(|e| HubError::Protocol(format!("{shown}: not a hub revision document: {e}")))?;
        if api.sha.len() < 7 || !api.sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(HubError::Protocol(format!("{shown}: the commit {:?} is not a sha", api.sha)));
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
        let send = self.http.head(&url).headers(self.headers()).send();
        let resp = tokio::time::timeout(self.deadline, send)
            .await
            .map_err(|_| HubError::Network {
                url: redact_url(&url),
                message: format!("no answer within {}s", self.deadline.as_secs_f32()),
            })?
            .map_err(|e| network(&url, &e))?;
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
    async fn fetch(
        &self,
        repo: &str,
        commit: &str,
        file: &RepoFile,
        target: &Path,
        partial: &Path,
    ) -> Result<u64, HubError> {
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
        for dir in [target.parent(), partial.parent()].into_iter().flatten() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.stream_to(repo, commit, &file.path, partial, size).await {
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
        let written = verify(partial, &file.path, size, expected_sha256.as_deref(), git_sha1.as_deref())?;
        std::fs::rename(partial, target).map_err(|e| io(target, e))?;
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
            return Err(HubError::Network {
                url: redact_url(&url),
                message: "range not satisfiable; restarting the file".into(),
            });
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
            // Never more than the hub advertised: a body without end stops here.
            if let Some(s) = size
                && written + chunk.len() as u64 > s
            {
                drop(out);
                let _ = std::fs::remove_file(partial);
                return Err(HubError::Corrupt {
                    path: path.to_string(),
                    what: "size",
                    expected: s.to_string(),
                    actual: format!("more than {s}"),
                });
            }
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
            return Err(HubError::Network {
                url: redact_url(&url),
                message: format!("connection closed after {written} bytes"),
            });
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
    HubError::Network { url: redact_url(url), message: redact_text(&crate::bounded::chain(e)) }
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

/// Why a repository file path cannot be written, or None when it can: it must stay inside the
/// snapshot, be of sane length, and hold no control characters.
fn bad_path(path: &str) -> Option<&'static str> {
    if !safe(path) || path.contains('\\') {
        return Some("it leaves the snapshot folder (absolute, '..', '.', empty or '\\' parts)");
    }
    if path.len() > MAX_PATH_BYTES || path.split('/').any(|c| c.len() > 255) {
        return Some("it is too long");
    }
    if path.chars().any(char::is_control) {
        return Some("it contains control characters");
    }
    None
}

/// Every wanted path checked before the first byte is fetched: each must be writable, and no
/// file may also be a folder of another (`a` and `a/b`).
fn check_paths(repo: &str, files: &[&RepoFile]) -> Result<(), HubError> {
    let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for f in files {
        if let Some(why) = bad_path(&f.path) {
            return Err(HubError::Protocol(format!("{repo}: refusing the file path {:?}: {why}", f.path)));
        }
        if !names.insert(f.path.as_str()) {
            return Err(HubError::Protocol(format!("{repo}: the file {:?} is listed twice", f.path)));
        }
    }
    for f in files {
        let mut prefix = f.path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if names.contains(parent) {
                return Err(HubError::Protocol(format!(
                    "{repo}: {parent:?} is listed as a file and as the folder of {:?}",
                    f.path
                )));
            }
            prefix = parent;
        }
    }
    Ok(())
}

/// `HF_TOKEN` as given: surrounding whitespace (a trailing newline from `echo` or a Secret
/// file) is trimmed; a token with a space or control character inside is refused with what is
/// wrong (never the token itself). Empty is no token.
pub fn clean_token(raw: &str) -> Result<Option<String>, HubError> {
    let t = raw.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if let Some(i) = t.find(|c: char| !c.is_ascii_graphic()) {
        return Err(HubError::BadInput(format!(
            "HF_TOKEN has a space, control or non-ASCII character at position {} of {}; set it to the token alone (OIMCache: the HF_TOKEN key of spec.source.hf.authSecret)",
            i + 1,
            t.len()
        )));
    }
    Ok(Some(t.to_string()))
}

/// Downloads `repo` at `revision` into `dest/<repo>/<commit>/`; returns that directory. A
/// snapshot whose marker exists is complete and left untouched.
pub async fn download(
    hub: &Hub,
    repo: &str,
    revision: &str,
    dest: &Path,
    include: &[String],
    exclude: &[String],
) -> Result<PathBuf, HubError> {
    let parts: Vec<&str> = repo.split('/').collect();
    if !safe(repo) || parts.len() > 2 || parts.iter().any(|p| p.starts_with('.')) {
        return Err(HubError::BadInput(format!(
            "--repo {repo:?}: expected org/name, e.g. meta-llama/Llama-3.1-8B-Instruct"
        )));
    }
    let (inc, exc) = (globs(include, "--include")?, globs(exclude, "--exclude")?);
    let rev = hub.revision(repo, revision).await?;
    let dir = dest.join(repo).join(&rev.commit);
    let state = dest.join(repo).join(STATE_DIR).join(&rev.commit);
    let marker_path = state.join(COMPLETE_MARKER);
    if marker_path.is_file() {
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
    check_paths(repo, &wanted)?;
    let mut files = vec![];
    for f in wanted {
        let partial = state.join(PARTIAL_DIR).join(&f.path);
        let size = hub.fetch(repo, &rev.commit, f, &dir.join(&f.path), &partial).await?;
        tracing::info!(file = %f.path, bytes = size, "downloaded");
        files.push(CompleteFile { path: f.path.clone(), size });
    }
    let bytes = files.iter().map(|f| f.size).sum();
    let marker = Complete { repo: repo.into(), revision: revision.into(), commit: rev.commit.clone(), files, bytes };
    let tmp = state.join(format!("{COMPLETE_MARKER}.tmp"));
    let json = serde_json::to_vec_pretty(&marker).map_err(|e| HubError::Protocol(e.to_string()))?;
    std::fs::create_dir_all(&state).map_err(|e| io(&state, e))?;
    std::fs::write(&tmp, json).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &marker_path).map_err(|e| io(&marker_path, e))?;
    let _ = std::fs::remove_dir_all(state.join(PARTIAL_DIR));
    Ok(dir)
}

/// Where the marker of a snapshot directory (`DEST/<repo>/<commit>`) lives.
pub fn marker_of(snapshot: &Path) -> Option<PathBuf> {
    let commit = snapshot.file_name()?;
    Some(snapshot.parent()?.join(STATE_DIR).join(commit).join(COMPLETE_MARKER))
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
    fn every_path_is_checked_before_a_byte_and_files_cannot_also_be_folders() {
        let f = |p: &str| RepoFile { path: p.into(), size: Some(1), sha256: None };
        let (a, b, c) = (f("config.json"), f("original/params.json"), f(".oim-complete.json"));
        assert!(check_paths("o/m", &[&a, &b, &c]).is_ok(), "a file named like the old marker is just a file");
        let bad = f("x/../../etc/passwd");
        let e = check_paths("o/m", &[&a, &bad]).unwrap_err().to_string();
        assert!(e.contains("refusing the file path") && e.contains("leaves the snapshot"), "{e}");
        let dir_and_file = f("original");
        let e = check_paths("o/m", &[&b, &dir_and_file]).unwrap_err().to_string();
        assert!(e.contains("as a file and as the folder"), "{e}");
        let control = f("a\nb");
        assert!(check_paths("o/m", &[&control]).unwrap_err().to_string().contains("control"));
        let long = f(&"x".repeat(300));
        assert!(check_paths("o/m", &[&long]).unwrap_err().to_string().contains("too long"));
    }

    #[test]
    fn a_token_with_a_trailing_newline_is_trimmed_and_a_broken_one_refused_without_echoing_it() {
        assert_eq!(clean_token("hf_abc\n").unwrap().as_deref(), Some("hf_abc"));
        assert_eq!(clean_token("  \n").unwrap(), None);
        let e = clean_token("hf_a bc").unwrap_err();
        assert!(e.to_string().contains("position 5") && !e.to_string().contains("hf_a"), "{e}");
        assert!(e.is_user_error(), "a bad token is the user's to fix: exit 2");
    }

    #[tokio::test]
    async fn a_hub_that_stalls_ends_at_the_deadline_with_a_clear_error() {
        use crate::fake_http::{delayed, respond};
        let stalled = crate::fake_http::start(|_| respond(200, delayed(Duration::from_secs(30), b"{}"))).await;
        let hub = Hub::new(&format!("http://{stalled}"), None).unwrap().with_deadline(Duration::from_secs(1));
        let dest = std::env::temp_dir().join(format!("oim-hub-stall-{}", std::process::id()));
        let start = std::time::Instant::now();
        let e = download(&hub, "o/m", "main", &dest, &[], &[]).await.unwrap_err().to_string();
        assert!(e.contains("no complete answer within 1s") && e.contains("/api/models/o/m/revision/main"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
        let _ = std::fs::remove_dir_all(&dest);
    }

    #[test]
    fn the_marker_lives_beside_the_snapshot_not_in_it() {
        let m = marker_of(Path::new("/d/o/m/4c2a")).unwrap();
        assert_eq!(m, Path::new("/d/o/m/.oim/4c2a/complete.json"));
    }

    #[test]
    fn branch_names_and_file_names_are_encoded() {
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode("model file.bin"), "model%20file.bin");
    }
}
