//! The profile catalog against the real registry, with the real `oras` CLI on the other side.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use oci_client::secrets::RegistryAuth;
use oim::profile::catalog::{Catalog, CatalogError, DirCatalog, OciCatalog};
use oim::profile::oci::RegistryRef;
use serde_json::Value;

use crate::cluster;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/profiles")
}

fn oim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oim")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn oras(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cluster::env().bin.join("oras")).args(args).current_dir(dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

pub(crate) fn tempdir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(cluster::unique(prefix));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn anonymous_catalog(registry: &str) -> Catalog {
    let c =
        OciCatalog::new(RegistryRef::parse(registry).unwrap(), RegistryAuth::Anonymous, false, Duration::from_secs(60));
    Catalog::Oci(Box::new(c.unwrap()))
}

fn repo(registry: &str) -> String {
    format!("{registry}/meta-llama/llama-3.1-8b-instruct")
}

#[tokio::test]
async fn a_catalog_round_trips_through_the_registry_and_oras_sees_the_design_layout() {
    let env = cluster::env();
    let registry = format!("{}/{}", env.registry, cluster::unique("rt"));
    let (code, out, err) = oim(&["profiles", "push", fixtures().to_str().unwrap(), "--registry", &registry]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");

    let tmp = tempdir("oras-rt");
    let (ok, tags, err) = oras(&tmp, &["repo", "tags", "--plain-http", &repo(&registry)]);
    assert!(ok, "{err}");
    let mut tags: Vec<&str> = tags.lines().collect();
    tags.sort();
    assert_eq!(
        tags,
        [
            "vllm-amd-mi300x-x1-throughput-bf16",
            "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16",
            "vllm-nvidia-l4-x1-throughput-fp8"
        ]
    );

    let tag = "vllm-nvidia-l4-x1-throughput-fp8";
    let reference = format!("{}:{tag}", repo(&registry));
    let (ok, manifest, err) = oras(&tmp, &["manifest", "fetch", "--plain-http", &reference]);
    assert!(ok, "{err}");
    let m: Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["artifactType"], "application/vnd.oim.profile.v1");
    assert_eq!(m["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.oim.profile.v1+yaml");
    assert_eq!(m["layers"][0]["annotations"]["org.opencontainers.image.title"], format!("{tag}.yaml"));
    let a = &m["annotations"];
    for (k, v) in [
        ("schema", "oim.opea.dev/profile/v1"),
        ("model", MODEL),
        ("weights", "neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8"),
        ("kpi", "throughput"),
        ("precision", "fp8"),
        ("engine", "vllm"),
        ("accelerator.vendor", "nvidia"),
        ("accelerator.product", "l4"),
        ("accelerator.count", "1"),
        ("tensor-parallel-size", "1"),
        ("pipeline-parallel-size", "1"),
        ("performance.ttft-ms-p50", "95"),
        ("performance.throughput-tokens-per-sec", "1100"),
    ] {
        assert_eq!(a[format!("dev.opea.oim.profile.{k}")], v, "annotation {k}");
    }

    let (ok, _, err) = oras(&tmp, &["pull", "--plain-http", &reference]);
    assert!(ok, "{err}");
    let pulled = std::fs::read(tmp.join(format!("{tag}.yaml"))).unwrap();
    assert_eq!(
        pulled,
        std::fs::read(fixtures().join("llama31-8b/l4-throughput.yaml")).unwrap(),
        "oras pull writes the document as published"
    );

    // oim lists it back with the digests the registry reports, and the documents are identical.
    let (code, json, err) = oim(&["profiles", "list", "--model", MODEL, "--registry", &registry, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(listed.len(), 3);
    let (_, descriptor, _) = oras(&tmp, &["manifest", "fetch", "--plain-http", "--descriptor", &reference]);
    let digest = serde_json::from_str::<Value>(&descriptor).unwrap()["digest"].as_str().unwrap().to_string();
    assert!(listed.iter().any(|p| p["name"] == tag && p["digest"] == digest.as_str()));

    let dir = DirCatalog::load(&fixtures()).unwrap();
    let oci = anonymous_catalog(&registry);
    let local = Catalog::Dir(dir);
    for s in oci.list(MODEL).await.unwrap() {
        let from_registry = oci.fetch(&s).await.unwrap();
        let from_dir = local.list(MODEL).await.unwrap().into_iter().find(|d| d.name == s.name).unwrap();
        assert_eq!(from_registry, local.fetch(&from_dir).await.unwrap());
    }
}

#[tokio::test]
async fn a_profile_pushed_with_oras_and_an_annotation_file_is_listed_and_read_by_oim() {
    let env = cluster::env();
    let registry = format!("{}/{}", env.registry, cluster::unique("oras-in"));
    let tmp = tempdir("oras-in");
    let name = "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16";
    std::fs::copy(fixtures().join("llama31-8b/h100-latency.yaml"), tmp.join(format!("{name}.yaml"))).unwrap();
    let annotations = serde_json::json!({"$manifest": {
        "dev.opea.oim.profile.schema": "oim.opea.dev/profile/v1",
        "dev.opea.oim.profile.model": MODEL,
        "dev.opea.oim.profile.kpi": "latency",
        "dev.opea.oim.profile.precision": "bf16",
        "dev.opea.oim.profile.engine": "vllm",
        "dev.opea.oim.profile.accelerator.vendor": "nvidia",
        "dev.opea.oim.profile.accelerator.product": "h100-sxm-80gb",
        "dev.opea.oim.profile.accelerator.count": "1",
        "dev.opea.oim.profile.tensor-parallel-size": "1",
        "dev.opea.oim.profile.pipeline-parallel-size": "1",
        "dev.opea.oim.profile.performance.ttft-ms-p50": "38",
    }});
    std::fs::write(tmp.join("annotations.json"), annotations.to_string()).unwrap();
    let reference = format!("{}:{name}", repo(&registry));
    let file = format!("{name}.yaml:application/vnd.oim.profile.v1+yaml");
    let (ok, _, err) = oras(
        &tmp,
        &[
            "push",
            "--plain-http",
            "--artifact-type",
            "application/vnd.oim.profile.v1",
            "--annotation-file",
            "annotations.json",
            &reference,
            &file,
        ],
    );
    assert!(ok, "{err}");
    // A signature-style tag beside it is not a profile and is skipped.
    let sig_tag = format!("{}:sha256-{}.sig", repo(&registry), "ab".repeat(32));
    let (ok, _, err) = oras(&tmp, &["push", "--plain-http", &sig_tag, "annotations.json"]);
    assert!(ok, "{err}");

    let (code, table, err) = oim(&["profiles", "list", "--model", MODEL, "--registry", &registry]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains(name) && table.contains("ttft 38ms"), "{table}");
    assert!(!table.contains("sha256-abab"), "{table}");
    let catalog = anonymous_catalog(&registry);
    let listed = catalog.list(MODEL).await.unwrap();
    assert_eq!(listed.len(), 1);
    let profile = catalog.fetch(&listed[0]).await.unwrap();
    assert_eq!(profile.name, name);
    assert_eq!(profile.engine_args()[..2], ["--enable-prefix-caching", "--gpu-memory-utilization"]);
}

/// `oim profiles list` on `registry` with `--registry-config config`.
fn list_with_config(registry: &str, config: &Path) -> (i32, String, String) {
    oim(&["profiles", "list", "--model", MODEL, "--registry", registry, "--registry-config", config.to_str().unwrap()])
}

pub(crate) fn docker_config(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::json!({"auths": {host: {"auth": auth}}}).to_string()).unwrap();
    path
}

#[tokio::test]
async fn the_basic_auth_registry_takes_a_docker_config_and_a_wrong_password_is_a_clear_error_without_the_secret() {
    let env = cluster::env();
    let registry = format!("{}/{}", env.auth_registry, cluster::unique("auth"));
    let tmp = tempdir("auth");
    let good = docker_config(&tmp, &env.auth_registry, &env.auth_user, &env.auth_password);
    let fixtures = fixtures();
    let (code, _, err) = oim(&[
        "profiles",
        "push",
        fixtures.to_str().unwrap(),
        "--registry",
        &registry,
        "--registry-config",
        good.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = list_with_config(&registry, &good);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "header and three profiles: {out}");

    let wrong_password = "not-the-password-5f3a9";
    let bad_dir = tempdir("auth-bad");
    let bad = docker_config(&bad_dir, &env.auth_registry, &env.auth_user, wrong_password);
    let (code, out, err) = list_with_config(&registry, &bad);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("refused the credentials") && err.contains("--registry-config"), "{err}");
    assert!(!err.contains(wrong_password) && !err.contains(&env.auth_password), "a secret leaked: {err}");

    let (code, _, err) = oim(&["profiles", "list", "--model", MODEL, "--registry", &registry]);
    assert_eq!(code, 1, "anonymous access is refused: {err}");
}

/// A registry of this test's own, so it can be stopped.
struct OwnRegistry {
    child: std::process::Child,
    host: String,
    dir: PathBuf,
}

impl OwnRegistry {
    fn start() -> OwnRegistry {
        let dir = tempdir("own-registry");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let host = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {host}}}\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new(cluster::env().bin.join("registry"))
            .args(["serve", dir.join("config.yml").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(&host).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRegistry { child, host, dir }
    }

    fn stop(self) {
        drop(self);
    }
}

/// Stopped even when the test fails half-way, so no registry outlives the test binary.
impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn when_the_registry_goes_down_resolved_profiles_keep_serving_and_errors_say_unreachable() {
    let reg = OwnRegistry::start();
    let registry = format!("{}/oim", reg.host);
    let (code, _, err) = oim(&["profiles", "push", fixtures().to_str().unwrap(), "--registry", &registry]);
    assert_eq!(code, 0, "{err}");
    // TTL zero: every list re-resolves tags, so the outage is noticed at once.
    let catalog =
        OciCatalog::new(RegistryRef::parse(&registry).unwrap(), RegistryAuth::Anonymous, false, Duration::ZERO)
            .unwrap();
    let catalog = Catalog::Oci(Box::new(catalog));
    let listed = catalog.list(MODEL).await.unwrap();
    let chosen = listed.iter().find(|s| s.name.contains("h100")).unwrap().clone();
    let profile = catalog.fetch(&chosen).await.unwrap();

    reg.stop();
    let again = catalog.list(MODEL).await.expect("resolved profiles keep serving");
    assert_eq!(again.len(), 3);
    assert_eq!(catalog.fetch(&chosen).await.unwrap(), profile, "the pinned digest is served from cache");

    let fresh = OciCatalog::new(RegistryRef::parse(&registry).unwrap(), RegistryAuth::Anonymous, false, Duration::ZERO)
        .unwrap();
    match Catalog::Oci(Box::new(fresh)).list(MODEL).await {
        Err(e @ CatalogError::Unreachable { .. }) => assert!(e.to_string().contains("is unreachable"), "{e}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    let (code, _, err) = oim(&["profiles", "list", "--model", MODEL, "--registry", &registry]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("registry {} is unreachable", reg_host(&registry))), "{err}");
}

fn reg_host(registry: &str) -> &str {
    registry.split('/').next().unwrap()
}

#[tokio::test]
async fn listing_reads_annotations_only_and_a_warm_listing_needs_no_manifest_or_blob() {
    let env = cluster::env();
    let registry = format!("{}/{}", env.registry, cluster::unique("count"));
    let (code, _, err) = oim(&["profiles", "push", fixtures().to_str().unwrap(), "--registry", &registry]);
    assert_eq!(code, 0, "{err}");
    let c = OciCatalog::new(RegistryRef::parse(&registry).unwrap(), RegistryAuth::Anonymous, false, Duration::ZERO)
        .unwrap();
    let listed = list_via(&c).await;
    assert_eq!(listed, 3);
    let cold = c.counts();
    assert_eq!((cold.heads, cold.manifests, cold.blobs), (3, 3, 0), "cold: a HEAD and a manifest per tag, no blob");
    list_via(&c).await;
    let warm = c.counts();
    assert_eq!((warm.heads - cold.heads, warm.manifests - cold.manifests, warm.blobs), (3, 0, 0), "warm: HEADs only");
}

async fn list_via(c: &OciCatalog) -> usize {
    oim::profile::catalog::list_oci(c, MODEL).await.unwrap().len()
}
