//! `oim download` against a local server speaking the Hugging Face hub API: revision to commit,
//! resume after an interruption, corrupted content caught, auth and disk-full errors that say
//! what to do, and the token never printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, stream};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use sha2::Digest;

use crate::fake_hub::{self, Body, full, status};

const COMMIT: &str = "4c2a1f0e9b8d7c6a5f4e3d2c1b0a99887766554f";
const TOKEN: &str = "hf_test_secret_7d1e";

struct File {
    path: &'static str,
    body: Vec<u8>,
    lfs: bool,
}

fn weights() -> Vec<u8> {
    (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect()
}

fn repo_files() -> Vec<File> {
    vec![
        File { path: "config.json", body: br#"{"architectures": ["LlamaForCausalLM"]}"#.to_vec(), lfs: false },
        File { path: "model.safetensors", body: weights(), lfs: true },
        File { path: "original/consolidated.pth", body: vec![7; 4096], lfs: true },
    ]
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn git_sha1(b: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    h.finalize().iter().map(|x| format!("{x:02x}")).collect()
}

/// What the fake hub does and saw.
#[derive(Default)]
struct Hub {
    /// Break the next full GET of model.safetensors after half its bytes.
    cut_next: bool,
    /// Serve model.safetensors with one flipped byte.
    corrupt: bool,
    /// Range headers received for model.safetensors.
    ranges: Vec<String>,
    /// Tokens received.
    tokens: Vec<String>,
    /// List repository files named like the downloader's own marker and partial files.
    spoof: bool,
    /// Stream the revision document without end.
    endless_revision: bool,
    /// Send model.safetensors and then bytes without end.
    oversize: bool,
}

/// Files a repository may hold that look like the downloader's own.
fn spoof_files() -> Vec<File> {
    vec![
        File { path: ".oim-complete.json", body: br#"{"commit": "forged"}"#.to_vec(), lfs: false },
        File { path: "model.safetensors.oim-partial", body: b"not a partial".to_vec(), lfs: false },
    ]
}

fn endless(chunk: &'static [u8]) -> Body {
    let frames = stream::repeat(chunk).map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(c))));
    BodyExt::boxed(StreamBody::new(frames))
}

fn serve(req: &Request<Incoming>, state: &Mutex<Hub>) -> Response<Body> {
    let mut files = repo_files();
    let path = req.uri().path().to_string();
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut hub = state.lock().unwrap();
    if !auth.is_empty() {
        hub.tokens.push(auth.clone());
    }
    // Gated: 401 without a token, 403 with the wrong one.
    if path.contains("acme/gated") {
        return status(if auth.is_empty() { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN });
    }
    if hub.spoof {
        files.extend(spoof_files());
    }
    if let Some(rest) = path.strip_prefix("/api/models/acme/tiny-llm/revision/") {
        if rest != "main" && rest != COMMIT {
            return status(StatusCode::NOT_FOUND);
        }
        if hub.endless_revision {
            return Response::new(endless(b"{\"siblings\": [                                                  "));
        }
        let siblings: Vec<_> = files
            .iter()
            .map(|f| {
                let mut s = serde_json::json!({"rfilename": f.path, "size": f.body.len()});
                if f.lfs {
                    s["lfs"] = serde_json::json!({"sha256": sha256(&f.body), "size": f.body.len()});
                }
                s
            })
            .collect();
        return Response::new(full(
            serde_json::json!({"id": "acme/tiny-llm", "sha": COMMIT, "siblings": siblings}).to_string(),
        ));
    }
    let Some(file) = path.strip_prefix(&format!("/acme/tiny-llm/resolve/{COMMIT}/")) else {
        return status(StatusCode::NOT_FOUND);
    };
    let Some(f) = files.iter().find(|f| f.path == file) else { return status(StatusCode::NOT_FOUND) };
    let mut body = f.body.clone();
    if hub.corrupt && f.path == "model.safetensors" {
        body[1000] ^= 0xff;
    }
    let etag = if f.lfs { sha256(&f.body) } else { git_sha1(&f.body) };
    let head = |r: &mut Response<Body>, len: usize| {
        let h = r.headers_mut();
        h.insert("x-repo-commit", COMMIT.parse().unwrap());
        h.insert("etag", format!("\"{etag}\"").parse().unwrap());
        h.insert("content-length", len.to_string().parse().unwrap());
        h.insert("accept-ranges", "bytes".parse().unwrap());
    };
    if req.method() == hyper::Method::HEAD {
        let mut r = Response::new(full(Bytes::new()));
        head(&mut r, body.len());
        return r;
    }
    let range = req.headers().get("range").and_then(|v| v.to_str().ok()).map(str::to_string);
    if f.path == "model.safetensors" {
        hub.ranges.push(range.clone().unwrap_or_default());
    }
    if let Some(from) = range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-')) {
        let from: usize = from.parse().unwrap();
        let mut r = Response::new(full(body[from..].to_vec()));
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        head(&mut r, body.len() - from);
        return r;
    }
    if hub.oversize && f.path == "model.safetensors" {
        let frames = stream::iter(vec![Ok::<_, std::io::Error>(Frame::data(Bytes::from(body.clone())))])
            .chain(stream::repeat(&[0u8; 8192][..]).map(|c| Ok(Frame::data(Bytes::from_static(c)))));
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        head(&mut r, body.len());
        r.headers_mut().remove("content-length");
        return r;
    }
    if hub.cut_next && f.path == "model.safetensors" {
        hub.cut_next = false;
        let half = Bytes::from(body[..body.len() / 2].to_vec());
        let frames = vec![Ok(Frame::data(half)), Err(std::io::Error::other("connection cut by the test"))];
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream::iter(frames))));
        head(&mut r, body.len());
        return r;
    }
    let mut r = Response::new(full(body.clone()));
    head(&mut r, body.len());
    r
}

/// Starts the fake hub on a free port in a thread of its own.
fn start(state: Arc<Mutex<Hub>>) -> String {
    fake_hub::start(move |req| serve(req, &state))
}

fn download(endpoint: &str, token: Option<&str>, repo: &str, dest: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oim"));
    cmd.args(["download", "--repo", repo, "--revision", "main", "--dest"]).arg(dest).args(extra);
    cmd.env("HF_ENDPOINT", endpoint).env_remove("HF_TOKEN");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("oim-dl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The downloader's marker for the test commit: beside the snapshot, never in it.
fn marker(dest: &Path) -> PathBuf {
    dest.join("acme/tiny-llm/.oim").join(COMMIT).join("complete.json")
}

/// The partial file of model.safetensors while it downloads.
fn partial(dest: &Path) -> PathBuf {
    dest.join("acme/tiny-llm/.oim").join(COMMIT).join("partial/model.safetensors")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_revision_downloads_to_its_commit_resumes_after_a_cut_and_writes_the_marker_last() {
    let state = Arc::new(Mutex::new(Hub { cut_next: true, ..Hub::default() }));
    let endpoint = start(state.clone());
    let dest = tempdir("resume");
    let out = download(&endpoint, Some(TOKEN), "acme/tiny-llm", &dest, &["--exclude", "original/*"]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = dest.join("acme/tiny-llm").join(COMMIT);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), dir.display().to_string());
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), weights());
    assert!(!dir.join("original").exists(), "--exclude is honoured");
    let half = weights().len() / 2;
    assert_eq!(
        state.lock().unwrap().ranges,
        ["".to_string(), format!("bytes={half}-")],
        "the cut resumes where it broke"
    );
    let marker: serde_json::Value = serde_json::from_slice(&std::fs::read(marker(&dest)).unwrap()).unwrap();
    assert_eq!(marker["commit"], COMMIT);
    assert_eq!(marker["bytes"], (weights().len() + repo_files()[0].body.len()) as u64);
    assert!(!text(&out).contains(TOKEN), "the token never appears in output");
    assert!(state.lock().unwrap().tokens.iter().all(|t| t == &format!("Bearer {TOKEN}")));

    // A second run finds the marker and fetches nothing.
    let out = download(&endpoint, Some(TOKEN), "acme/tiny-llm", &dest, &["--exclude", "original/*"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(state.lock().unwrap().ranges.len(), 2);
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn a_partial_file_left_by_a_killed_run_is_resumed_not_restarted() {
    let state = Arc::new(Mutex::new(Hub::default()));
    let endpoint = start(state.clone());
    let dest = tempdir("partial");
    let dir = dest.join("acme/tiny-llm").join(COMMIT);
    std::fs::create_dir_all(partial(&dest).parent().unwrap()).unwrap();
    std::fs::write(partial(&dest), &weights()[..1_000_000]).unwrap();
    let out = download(&endpoint, None, "acme/tiny-llm", &dest, &["--include", "*.safetensors"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(state.lock().unwrap().ranges, ["bytes=1000000-"]);
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), weights());
    assert!(!dir.join("config.json").exists(), "--include is honoured");
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn corrupted_content_is_caught_and_no_marker_is_written() {
    let state = Arc::new(Mutex::new(Hub { corrupt: true, ..Hub::default() }));
    let endpoint = start(state);
    let dest = tempdir("corrupt");
    let out = download(&endpoint, None, "acme/tiny-llm", &dest, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("model.safetensors: sha256 mismatch"), "{}", text(&out));
    let dir = dest.join("acme/tiny-llm").join(COMMIT);
    assert!(!marker(&dest).exists());
    assert!(!dir.join("model.safetensors").exists() && !partial(&dest).exists());
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn auth_and_missing_repos_are_clear_errors_without_the_token() {
    let endpoint = start(Arc::new(Mutex::new(Hub::default())));
    let dest = tempdir("auth");
    let cases = [("acme/gated", None, "401"), ("acme/gated", Some(TOKEN), "403"), ("acme/nothing-here", None, "404")];
    for (repo, token, code) in cases {
        let out = download(&endpoint, token, repo, &dest, &[]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{repo}: {t}");
        assert!(t.contains(code) && t.contains(repo), "{repo}: {t}");
        assert!(!t.contains(TOKEN), "{repo}: the token leaked: {t}");
        assert!(out.stdout.is_empty());
    }
    let out = download(&endpoint, None, "acme/gated", &dest, &[]);
    assert!(text(&out).contains("HF_TOKEN"), "401 says which setting to fix: {}", text(&out));
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn a_full_disk_says_how_much_more_is_needed() {
    let endpoint = start(Arc::new(Mutex::new(Hub::default())));
    let dest = tempdir("full");
    std::fs::create_dir_all(partial(&dest).parent().unwrap()).unwrap();
    // Writes to /dev/full fail with ENOSPC, as on a full PVC.
    std::os::unix::fs::symlink("/dev/full", partial(&dest)).unwrap();
    let out = download(&endpoint, None, "acme/tiny-llm", &dest, &["--include", "model.safetensors"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("disk full") && t.contains(&weights().len().to_string()) && t.contains("spec.storage.pvc.size"),
        "{t}"
    );
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn repository_files_named_like_the_markers_are_only_files_and_a_failed_run_is_not_complete() {
    let state = Arc::new(Mutex::new(Hub { spoof: true, corrupt: true, ..Hub::default() }));
    let endpoint = start(state.clone());
    let dest = tempdir("spoof");
    let out = download(&endpoint, None, "acme/tiny-llm", &dest, &[]);
    assert_eq!(out.status.code(), Some(1), "the corrupt shard fails the run: {}", text(&out));
    // The retry must download the missing shard, not trust a repository file as the marker.
    state.lock().unwrap().corrupt = false;
    let out = download(&endpoint, None, "acme/tiny-llm", &dest, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = dest.join("acme/tiny-llm").join(COMMIT);
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), weights());
    assert_eq!(std::fs::read(dir.join(".oim-complete.json")).unwrap(), spoof_files()[0].body);
    assert_eq!(std::fs::read(dir.join("model.safetensors.oim-partial")).unwrap(), spoof_files()[1].body);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(marker(&dest)).unwrap()).unwrap();
    assert_eq!(m["commit"], COMMIT);
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn an_endless_revision_document_and_an_endless_file_end_with_clear_errors_under_100_mb() {
    let measured = |endpoint: &str, dest: &Path, extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oim"));
        cmd.args(["download", "--repo", "acme/tiny-llm", "--revision", "main", "--dest"]).arg(dest).args(extra);
        cmd.env("HF_ENDPOINT", endpoint).env_remove("HF_TOKEN");
        crate::bounds::measured(&mut cmd, std::time::Duration::from_secs(90))
    };
    let state = Arc::new(Mutex::new(Hub { endless_revision: true, ..Hub::default() }));
    let endpoint = start(state.clone());
    let dest = tempdir("endless");
    let run = measured(&endpoint, &dest, &[]);
    run.assert_bounded(1, std::time::Duration::from_secs(60));
    assert!(
        run.output.contains("more than 33554432 bytes") && run.output.contains("revision document"),
        "{}",
        run.output
    );

    let state = Arc::new(Mutex::new(Hub { oversize: true, ..Hub::default() }));
    let endpoint = start(state);
    let run = measured(&endpoint, &dest, &["--include", "model.safetensors"]);
    run.assert_bounded(1, std::time::Duration::from_secs(60));
    let t = &run.output;
    assert!(
        t.contains("model.safetensors: size mismatch") && t.contains(&format!("more than {}", weights().len())),
        "{t}"
    );
    assert!(!partial(&dest).exists(), "the overlong partial file is removed");
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn a_token_with_a_trailing_newline_is_sent_trimmed() {
    let state = Arc::new(Mutex::new(Hub::default()));
    let endpoint = start(state.clone());
    let dest = tempdir("newline");
    let out = download(&endpoint, Some(&format!("{TOKEN}\n")), "acme/tiny-llm", &dest, &["--include", "config.json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!state.lock().unwrap().tokens.is_empty(), "the token was sent, not dropped");
    assert!(state.lock().unwrap().tokens.iter().all(|t| t == &format!("Bearer {TOKEN}")));
    let out = download(&endpoint, Some("hf_two words"), "acme/tiny-llm", &dest, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("HF_TOKEN has a space") && !text(&out).contains("two words"), "{}", text(&out));
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn credentials_in_hf_endpoint_never_reach_the_output_or_the_termination_message() {
    let endpoint = start(Arc::new(Mutex::new(Hub::default())));
    let with_userinfo = endpoint.replace("http://", "http://mirror-user:hunter2@");
    let dest = tempdir("redact");
    let log = dest.join("termination-log");
    let out = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(["download", "--repo", "acme/nothing-here", "--revision", "main", "--dest"])
        .arg(&dest)
        .env("HF_ENDPOINT", &with_userinfo)
        .env("OIM_TERMINATION_LOG", &log)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    let message = std::fs::read_to_string(&log).unwrap();
    for shown in [&t, &message] {
        assert!(shown.contains("404") && shown.contains("***@127.0.0.1"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("mirror-user"), "credentials leaked: {shown}");
    }
    std::fs::remove_dir_all(&dest).unwrap();
}
