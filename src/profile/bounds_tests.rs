//! Every registry read is bounded: crafted registries on 127.0.0.1 (tag pages without end, a
//! blob longer than its manifest says, a manifest without end, a registry that stalls) end
//! within their deadline with an error that says what happened; catalog walks survive symlink
//! loops, FIFOs and devices; caches forget their oldest entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use oci_client::secrets::RegistryAuth;
use serde_json::json;

use crate::fake_http::{self, delayed, endless, full, respond};
use crate::profile::catalog::{Catalog, CatalogError, DirCatalog, MAX_TAG_PAGES, MAX_TAGS, OciCatalog, digest_of};
use crate::profile::oci::RegistryRef;

const MODEL: &str = "acme/tiny";

fn catalog(addr: &str, deadline: Duration) -> Catalog {
    let r = RegistryRef::parse(&format!("{addr}/oim")).unwrap();
    let c = OciCatalog::new(r, RegistryAuth::Anonymous, false, Duration::from_secs(60)).unwrap();
    Catalog::Oci(Box::new(c.with_deadline(deadline)))
}

/// A profile manifest whose one layer declares `size` bytes.
fn manifest(size: u64) -> Vec<u8> {
    let annotations = json!({
        "dev.opea.oim.profile.schema": "oim.opea.dev/profile/v1",
        "dev.opea.oim.profile.model": MODEL,
        "dev.opea.oim.profile.kpi": "latency",
        "dev.opea.oim.profile.precision": "bf16",
        "dev.opea.oim.profile.accelerator.vendor": "nvidia",
        "dev.opea.oim.profile.accelerator.product": "l4",
        "dev.opea.oim.profile.accelerator.count": "1",
    });
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.oim.profile.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.oim.profile.v1+yaml", "digest": digest_of(b"x"), "size": size}],
        "annotations": annotations,
    }))
    .unwrap()
}

fn tags_page(tags: &[String]) -> fake_http::Body {
    full(serde_json::to_vec(&json!({"name": "oim/acme/tiny", "tags": tags})).unwrap())
}

#[tokio::test]
async fn a_registry_that_keeps_sending_new_tag_pages_is_cut_off() {
    let pages = Arc::new(AtomicUsize::new(0));
    let served = pages.clone();
    let addr = fake_http::start(move |req| {
        if req.uri().path().ends_with("/tags/list") {
            let n = served.fetch_add(1, Ordering::SeqCst);
            let tags: Vec<String> = (0..100).map(|i| format!("t{n:05}-{i:03}")).collect();
            return respond(200, tags_page(&tags));
        }
        respond(200, full("{}"))
    })
    .await;
    let start = Instant::now();
    let e = catalog(&addr, Duration::from_secs(5)).list(MODEL).await.unwrap_err();
    assert!(e.to_string().contains("kept sending tag pages"), "{e}");
    assert_eq!(pages.load(Ordering::SeqCst), MAX_TAG_PAGES as usize, "no page beyond the cap is requested");
    assert!(start.elapsed() < Duration::from_secs(20));

    // One page with more tags than a profile repository holds.
    let addr = fake_http::start(|req| {
        if req.uri().path().ends_with("/tags/list") {
            let tags: Vec<String> = (0..MAX_TAGS + 1).map(|i| format!("t{i}")).collect();
            return respond(200, tags_page(&tags));
        }
        respond(200, full("{}"))
    })
    .await;
    let e = catalog(&addr, Duration::from_secs(5)).list(MODEL).await.unwrap_err();
    assert!(e.to_string().contains(&format!("more than {MAX_TAGS} tags")), "{e}");
}

#[tokio::test]
async fn a_blob_longer_than_its_manifest_declares_is_refused_at_the_declared_size() {
    let m = manifest(471);
    let digest = digest_of(&m);
    let d = digest.clone();
    let addr = fake_http::start(move |req| {
        let p = req.uri().path();
        if p.ends_with("/tags/list") {
            return respond(200, tags_page(&["l4-latency".to_string()]));
        }
        if p.contains("/manifests/") {
            let mut r = respond(200, full(m.clone()));
            r.headers_mut().insert("docker-content-digest", d.parse().unwrap());
            return r;
        }
        if p.contains("/blobs/") {
            return respond(200, endless(&[b'a'; 4096]));
        }
        respond(200, full("{}"))
    })
    .await;
    let c = catalog(&addr, Duration::from_secs(10));
    let listed = c.list(MODEL).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, digest);
    let start = Instant::now();
    let e = c.fetch(&listed[0]).await.unwrap_err();
    assert!(e.to_string().contains("more than 471 bytes"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_manifest_without_end_and_a_stalled_registry_end_with_clear_errors() {
    let addr = fake_http::start(move |req| {
        let p = req.uri().path();
        if p.ends_with("/tags/list") {
            return respond(200, tags_page(&["a".to_string()]));
        }
        if p.contains("/manifests/") {
            let mut r = respond(200, endless(&[b' '; 65536]));
            // No digest header: the reader must GET the manifest to learn its digest.
            r.headers_mut().insert("content-type", "application/json".parse().unwrap());
            return r;
        }
        respond(200, full("{}"))
    })
    .await;
    let e = catalog(&addr, Duration::from_secs(10)).list(MODEL).await.unwrap_err();
    assert!(e.to_string().contains("more than 4194304 bytes"), "{e}");

    let stalled = fake_http::start(|_| respond(200, delayed(Duration::from_secs(30), b"{}"))).await;
    let start = Instant::now();
    let e = catalog(&stalled, Duration::from_secs(1)).list(MODEL).await.unwrap_err();
    assert!(matches!(e, CatalogError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("no complete answer within 1s"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5), "the deadline holds: {:?}", start.elapsed());
}

#[tokio::test]
async fn a_declared_size_over_the_profile_limit_is_refused_before_any_byte() {
    let m = manifest(64 << 20);
    let digest = digest_of(&m);
    let blobs = Arc::new(AtomicUsize::new(0));
    let seen = blobs.clone();
    let addr = fake_http::start(move |req| {
        let p = req.uri().path();
        if p.ends_with("/tags/list") {
            return respond(200, tags_page(&["big".to_string()]));
        }
        if p.contains("/manifests/") {
            let mut r = respond(200, full(m.clone()));
            r.headers_mut().insert("docker-content-digest", digest.parse().unwrap());
            return r;
        }
        if p.contains("/blobs/") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        respond(200, full("{}"))
    })
    .await;
    let c = catalog(&addr, Duration::from_secs(10));
    let listed = c.list(MODEL).await.unwrap();
    let e = c.fetch(&listed[0]).await.unwrap_err();
    assert!(e.to_string().contains("over the 1048576-byte limit"), "{e}");
    assert_eq!(blobs.load(Ordering::SeqCst), 0);
}

fn tree(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("oim-walk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn catalog_walks_end_on_symlink_loops_and_refuse_fifos_and_devices() {
    let profile =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/profiles/llama31-8b/h100-latency.yaml"))
            .unwrap();
    let d = tree("loops");
    std::fs::create_dir_all(d.join("a/b")).unwrap();
    std::fs::write(d.join("a/b/p.yaml"), &profile).unwrap();
    // Two loops: each directory links back to the root and to the other.
    std::os::unix::fs::symlink(&d, d.join("a/up")).unwrap();
    std::os::unix::fs::symlink(d.join("a"), d.join("a/b/again")).unwrap();
    let start = Instant::now();
    let c = DirCatalog::load(&d).unwrap();
    assert_eq!(c.entries().count(), 1, "the profile is read once");
    assert!(start.elapsed() < Duration::from_secs(5));

    std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).unwrap();
    let e = DirCatalog::load(&d).err().unwrap().to_string();
    assert!(e.contains("zero.yaml") && e.contains("character device"), "{e}");
    std::fs::remove_file(d.join("zero.yaml")).unwrap();

    if std::process::Command::new("mkfifo").arg(d.join("x.yaml")).status().is_ok_and(|s| s.success()) {
        let start = Instant::now();
        let e = DirCatalog::load(&d).err().unwrap().to_string();
        assert!(e.contains("x.yaml") && e.contains("FIFO"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_profile_written_as_json_is_read_not_skipped() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/profiles/llama31-8b/h100-latency.yaml"
    ))
    .unwrap();
    let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    let d = tree("json");
    std::fs::write(d.join("p.yaml"), serde_json::to_string(&value).unwrap()).unwrap();
    let c = DirCatalog::load(&d).unwrap();
    assert_eq!(c.entries().count(), 1, "JSON is YAML: the profile is found");
    std::fs::remove_dir_all(&d).unwrap();
}
