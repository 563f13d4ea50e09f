//! Every bound holds against the binary: `oim` run on crafted inputs (a registry or hub on
//! 127.0.0.1 that never stops sending, catalog trees with symlink loops, a FIFO and `/dev/zero`,
//! a sysfs tree with `cpuinfo -> /dev/urandom` and a 200 MB `vendor` file) ends within its
//! deadline with a clear error, and its peak memory (its `ru_maxrss`, reaped by a small parent)
//! stays under 100 MB.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

#[path = "../../src/fake_http.rs"]
#[allow(dead_code)]
mod fake_http;

use fake_http::{endless, full, respond};

/// The most any bounded read may cost the process.
pub(crate) const PEAK_LIMIT_MIB: f64 = 100.0;

/// How a measured run ended.
#[derive(Debug)]
pub(crate) struct Measured {
    /// Exit code; None when killed (by the deadline).
    pub(crate) code: Option<i32>,
    /// stdout and stderr.
    pub(crate) output: String,
    /// Peak resident memory, MiB.
    pub(crate) peak_mib: f64,
    /// Wall time.
    pub(crate) elapsed: Duration,
}

impl Measured {
    /// Asserts the run ended by itself within `deadline` with `code`, under the memory limit.
    pub(crate) fn assert_bounded(&self, code: i32, deadline: Duration) {
        eprintln!("exit {:?} after {:?}, peak RSS {:.1} MiB", self.code, self.elapsed, self.peak_mib);
        assert_eq!(self.code, Some(code), "killed or wrong exit after {:?}: {}", self.elapsed, self.output);
        assert!(self.elapsed < deadline, "took {:?} (deadline {deadline:?}): {}", self.elapsed, self.output);
        assert!(self.peak_mib < PEAK_LIMIT_MIB, "peak RSS {:.1} MiB: {}", self.peak_mib, self.output);
    }
}

/// Forks the program in argv[3:], SIGKILLs it after argv[2] seconds, reaps it and writes its exit
/// code and `ru_maxrss` to the file argv[1]. It runs in a small python3 parent because a process
/// spawned straight from this test binary starts with the binary's own peak: exec records the
/// peak of the address space it replaces, so the test process's RSS (often over 100 MB while
/// other tests run) would count as oim's.
const REAPER: &str = r#"
import json, os, sys, time
report, deadline, argv = sys.argv[1], time.monotonic() + float(sys.argv[2]), sys.argv[3:]
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
while True:
    got, status, usage = os.wait4(pid, os.WNOHANG)
    if got:
        break
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        _, status, usage = os.wait4(pid, 0)
        break
    time.sleep(0.01)
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as f:
    json.dump({"code": code if code >= 0 else None, "maxrss_kib": usage.ru_maxrss}, f)
"#;

/// Runs `cmd` (program, arguments, environment), SIGKILLs it after `kill_after`, and reports its
/// exit, output and peak RSS.
pub(crate) fn measured(cmd: &mut Command, kill_after: Duration) -> Measured {
    let report = std::env::temp_dir().join(format!("oim-measured-{}", crate::cluster::unique("rss")));
    let mut reaper = Command::new("python3");
    reaper.args(["-c", REAPER]).arg(&report).arg(kill_after.as_secs_f64().to_string());
    reaper.arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => reaper.env(key, v),
            None => reaper.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        reaper.current_dir(dir);
    }
    let started = Instant::now();
    let output = reaper.stdin(Stdio::null()).output().expect("run python3 with oim");
    let elapsed = started.elapsed();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let written = std::fs::read(&report).unwrap_or_else(|e| panic!("the reaper wrote no report ({e}): {text}"));
    let _ = std::fs::remove_file(&report);
    let report: serde_json::Value = serde_json::from_slice(&written).expect("the reaper's report");
    let code = report["code"].as_i64().map(|c| c as i32);
    // Linux reports ru_maxrss in KiB.
    let peak_mib = report["maxrss_kib"].as_f64().unwrap_or_default() / 1024.0;
    Measured { code, output: text, peak_mib, elapsed }
}

fn oim(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oim"));
    c.args(args).env("RUST_LOG", "warn");
    c
}

const MODEL: &str = "acme/tiny";

fn digest_of(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// A profile manifest for one L4 whose one layer declares `size` bytes.
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

fn list(addr: &str) -> Command {
    oim(&["profiles", "list", "--model", MODEL, "--registry", &format!("{addr}/oim")])
}

#[tokio::test]
async fn a_registry_that_never_stops_sending_costs_the_cli_under_100_mb_and_a_clear_error() {
    // Tag pages without end: every request gets 100 new tags.
    let served = std::sync::atomic::AtomicUsize::new(0);
    let pages = fake_http::start(move |req| {
        if req.uri().path().ends_with("/tags/list") {
            let n = served.fetch_add(1, Ordering::SeqCst);
            let tags: Vec<String> = (0..100).map(|i| format!("t{n:05}-{i:03}")).collect();
            return respond(200, tags_page(&tags));
        }
        respond(200, full("{}"))
    })
    .await;
    let run = tokio::task::spawn_blocking(move || measured(&mut list(&pages), Duration::from_secs(60))).await.unwrap();
    run.assert_bounded(1, Duration::from_secs(40));
    assert!(run.output.contains("kept sending tag pages"), "{}", run.output);

    // One page with more tags than a profile repository holds.
    let many = fake_http::start(|req| {
        if req.uri().path().ends_with("/tags/list") {
            let tags: Vec<String> = (0..5001).map(|i| format!("t{i}")).collect();
            return respond(200, tags_page(&tags));
        }
        respond(200, full("{}"))
    })
    .await;
    let run = tokio::task::spawn_blocking(move || measured(&mut list(&many), Duration::from_secs(60))).await.unwrap();
    run.assert_bounded(1, Duration::from_secs(40));
    assert!(run.output.contains("more than 5000 tags"), "{}", run.output);

    // A token endpoint whose answer never ends.
    let tokens = fake_http::start(|_| respond(200, endless(b"{\"token\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"))).await;
    let challenge = format!("Bearer realm=\"http://{tokens}/token\",service=\"fake\"");
    let guarded = fake_http::start(move |_| {
        let mut r = respond(401, full("{}"));
        r.headers_mut().insert("www-authenticate", challenge.parse().unwrap());
        r
    })
    .await;
    let run =
        tokio::task::spawn_blocking(move || measured(&mut list(&guarded), Duration::from_secs(60))).await.unwrap();
    run.assert_bounded(1, Duration::from_secs(40));
    assert!(run.output.contains("token endpoint") && run.output.contains("more than 65536 bytes"), "{}", run.output);

    // A manifest without end.
    let manifests = fake_http::start(|req| {
        let p = req.uri().path();
        if p.ends_with("/tags/list") {
            return respond(200, tags_page(&["a".to_string()]));
        }
        if p.contains("/manifests/") {
            return respond(200, endless(&[b' '; 65536]));
        }
        respond(200, full("{}"))
    })
    .await;
    let run =
        tokio::task::spawn_blocking(move || measured(&mut list(&manifests), Duration::from_secs(60))).await.unwrap();
    run.assert_bounded(1, Duration::from_secs(40));
    assert!(run.output.contains("more than 4194304 bytes"), "{}", run.output);

    // A blob whose manifest says 471 bytes, streamed without end, fetched by `select`.
    let m = manifest(471);
    let d = digest_of(&m);
    let blobs = fake_http::start(move |req| {
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
    let inventory = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/inventories/l4-pair.yaml");
    let mut select = oim(&["profiles", "select", "--model", MODEL, "--kpi", "latency", "--registry"]);
    select.arg(format!("{blobs}/oim")).args(["--inventory", inventory]);
    let run = tokio::task::spawn_blocking(move || measured(&mut select, Duration::from_secs(60))).await.unwrap();
    run.assert_bounded(1, Duration::from_secs(40));
    assert!(run.output.contains("more than 471 bytes"), "{}", run.output);
}

fn tree(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("oim-bounds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn catalog_trees_with_loops_a_fifo_and_dev_zero_cost_the_cli_under_100_mb() {
    let d = tree("catalog");
    let profile =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/profiles/llama31-8b/h100-latency.yaml"))
            .unwrap();
    std::fs::create_dir_all(d.join("a/b")).unwrap();
    std::fs::write(d.join("a/b/p.yaml"), &profile).unwrap();
    std::os::unix::fs::symlink(&d, d.join("a/up")).unwrap();
    std::os::unix::fs::symlink(d.join("a"), d.join("a/b/again")).unwrap();
    let list =
        || oim(&["profiles", "list", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--catalog", d.to_str().unwrap()]);
    let run = measured(&mut list(), Duration::from_secs(30));
    run.assert_bounded(0, Duration::from_secs(10));
    assert!(run.output.contains("vllm-nvidia-h100"), "the profile is listed once: {}", run.output);

    std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).unwrap();
    let run = measured(&mut list(), Duration::from_secs(30));
    run.assert_bounded(2, Duration::from_secs(10));
    assert!(run.output.contains("zero.yaml") && run.output.contains("character device"), "{}", run.output);
    std::fs::remove_file(d.join("zero.yaml")).unwrap();

    assert!(Command::new("mkfifo").arg(d.join("x.yaml")).status().unwrap().success());
    let run = measured(&mut list(), Duration::from_secs(30));
    run.assert_bounded(2, Duration::from_secs(10));
    assert!(run.output.contains("x.yaml") && run.output.contains("FIFO"), "{}", run.output);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn detect_on_cpuinfo_from_dev_urandom_and_a_200_mb_vendor_file_costs_under_100_mb() {
    let root = tree("detect");
    let dev = |address: &str| root.join("sys/bus/pci/devices").join(address);
    for (address, device) in [("0000:01:00.0", "0x2330"), ("0000:02:00.0", "0x2330")] {
        std::fs::create_dir_all(dev(address)).unwrap();
        std::fs::write(dev(address).join("vendor"), "0x10de\n").unwrap();
        std::fs::write(dev(address).join("device"), format!("{device}\n")).unwrap();
        std::fs::write(dev(address).join("class"), "0x030200\n").unwrap();
    }
    // 200 MB of vendor id (sparse: no disk), and a CPU table that never ends.
    std::fs::File::create(dev("0000:02:00.0").join("vendor")).unwrap().set_len(200 << 20).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::os::unix::fs::symlink("/dev/urandom", root.join("proc/cpuinfo")).unwrap();
    let run = measured(&mut oim(&["detect", "--root", root.to_str().unwrap(), "-o", "json"]), Duration::from_secs(30));
    run.assert_bounded(0, Duration::from_secs(10));
    assert!(run.output.contains("0000:02:00.0") && run.output.contains("more than 4096 bytes"), "{}", run.output);
    assert!(
        run.output.contains("\"count\": 1") || run.output.contains("\"count\":1"),
        "the good GPU is kept: {}",
        run.output
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_profile_in_json_form_is_listed_and_pushed_not_silently_skipped() {
    let d = tree("json");
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/profiles/llama31-8b/h100-latency.yaml"
    ))
    .unwrap();
    let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    std::fs::write(d.join("h100-latency.yaml"), serde_json::to_string_pretty(&value).unwrap()).unwrap();
    let run = measured(
        &mut oim(&[
            "profiles",
            "list",
            "--model",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--catalog",
            d.to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    );
    run.assert_bounded(0, Duration::from_secs(10));
    assert!(run.output.contains(value["name"].as_str().unwrap()), "{}", run.output);
    // `push` reads the same way: to a registry that is not there, it fails on the network, not
    // with "nothing to push".
    let run = measured(
        &mut oim(&["profiles", "push", d.to_str().unwrap(), "--registry", "127.0.0.1:9/oim"]),
        Duration::from_secs(60),
    );
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(run.output.contains("127.0.0.1:9"), "{}", run.output);
    std::fs::remove_dir_all(&d).unwrap();
}
