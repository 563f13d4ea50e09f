//! A whole study over simulated engines: plan from the estimator, run locally (interrupted and
//! resumed), publish the winners to the local registry with the evidence attached, read them
//! back with `oim profiles list` and `oras`, let the operator select the latency winner, and
//! check the report's chart.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::PostParams;
use oim::api::OIMService;
use oim::profile::schema::Profile;
use serde_json::Value;

use crate::cluster::{self, KwokNode, TestNs};
use crate::operator::{Operator, service};
use crate::sim::SIM;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const X1_BF16: &str = "study-nvidia-h100-sxm-80gb-x1-bf16-s256-l8k";
const X1_FP8: &str = "study-nvidia-h100-sxm-80gb-x1-fp8-s256-l8k";
const X2_BF16: &str = "study-nvidia-h100-sxm-80gb-x2-bf16-s256-l8k";

fn oim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oim")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Gives a candidate simulated latencies through its `env` (the simulator reads them).
fn simulate(dir: &Path, name: &str, ttft_ms: u32, itl_ms: u32, growth_us: u32) {
    let path = dir.join("candidates").join(format!("{name}.yaml"));
    let mut p = Profile::parse(&std::fs::read(&path).unwrap(), name).unwrap();
    p.env.insert("OIM_SIM_TTFT_MS".into(), ttft_ms.to_string());
    p.env.insert("OIM_SIM_ITL_MS".into(), itl_ms.to_string());
    p.env.insert("OIM_SIM_ITL_GROWTH_US".into(), growth_us.to_string());
    std::fs::write(&path, serde_saphyr::to_string(&p).unwrap()).unwrap();
}

fn results(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("results"))
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.ends_with(".json")).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn run_args(dir: &Path) -> Vec<String> {
    let engine = format!("{SIM} serve");
    ["study", "run", dir.to_str().unwrap(), "--local", "--engine-command", &engine, "--startup-timeout", "30"]
        .map(String::from)
        .to_vec()
}

#[tokio::test]
async fn a_study_of_three_simulated_candidates_publishes_the_expected_winners() {
    let dir = crate::profiles::tempdir("study").join("s");
    let (code, out, err) = oim(&[
        "study",
        "plan",
        "--model",
        MODEL,
        "--accelerator",
        "nvidia/h100-sxm-80gb",
        "--count",
        "2",
        "--tensor",
        "1,2",
        "--precision",
        "bf16,fp8",
        "--max-num-seqs",
        "256",
        "--max-model-len",
        "8192",
        "--concurrency",
        "1,16",
        "--requests",
        "16",
        "--input-tokens",
        "32",
        "--output-tokens",
        "16",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4 candidates") && out.contains(X2_BF16), "{out}");
    // Prune one candidate, as a user may; configure the other three to differ: fp8 answers first
    // but slows down as the batch grows; bf16 TP1 is steady; TP2 answers sooner than it but
    // streams no faster, on two devices.
    std::fs::remove_file(dir.join("candidates/study-nvidia-h100-sxm-80gb-x2-fp8-s256-l8k.yaml")).unwrap();
    simulate(&dir, X1_FP8, 40, 8, 2500);
    simulate(&dir, X1_BF16, 80, 10, 0);
    simulate(&dir, X2_BF16, 60, 12, 0);

    // Interrupt the run once the first candidate has its result, then resume it.
    let child = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(run_args(&dir))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while results(&dir).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "no candidate finished in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stdout));
    let first = results(&dir);
    assert!(!first.is_empty() && first.len() < 3, "{first:?}");
    let kept = std::fs::read(dir.join("results").join(&first[0])).unwrap();

    let args = run_args(&dir);
    let (code, out, err) = oim(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{}: done earlier, skipped", first[0].trim_end_matches(".json"))), "{out}");
    assert_eq!(results(&dir).len(), 3);
    assert_eq!(std::fs::read(dir.join("results").join(&first[0])).unwrap(), kept, "a finished candidate is not re-run");

    // Publish to the real registry.
    let env = cluster::env();
    let registry = format!("{}/{}", env.registry, cluster::unique("study"));
    let (code, out, err) = oim(&["study", "publish", dir.to_str().unwrap(), "--registry", &registry]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, listed, err) = oim(&["profiles", "list", "--model", MODEL, "--registry", &registry, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let mut names: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "vllm-nvidia-h100-sxm-80gb-x1-latency-fp8",
            "vllm-nvidia-h100-sxm-80gb-x1-quantization-fp8",
            "vllm-nvidia-h100-sxm-80gb-x1-throughput-bf16",
        ],
        "latency: fp8 answers first; throughput per device: steady bf16 TP1 beats TP2 and the slowing fp8"
    );

    // The published figures are the measured ones, with their source.
    let published = dir.join("publish/vllm-nvidia-h100-sxm-80gb-x1-latency-fp8.yaml");
    let p = Profile::parse(&std::fs::read(&published).unwrap(), "published").unwrap();
    let perf = p.performance.unwrap();
    let measured: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("results/{X1_FP8}.json"))).unwrap()).unwrap();
    let c1 = &measured["bench"]["levels"][0];
    assert_eq!(c1["concurrency"], 1);
    assert_eq!(perf.ttft_ms_p50, c1["ttftMs"]["p50"].as_f64());
    assert_eq!(perf.itl_ms_p50, c1["itlMs"]["p50"].as_f64());
    assert_eq!(perf.throughput_tokens_per_sec, c1["outputTokensPerSec"].as_f64());
    assert_eq!(perf.concurrency, Some(1));
    let study: Value = serde_saphyr::from_str(&std::fs::read_to_string(dir.join("study.yaml")).unwrap()).unwrap();
    let id = study["id"].as_str().unwrap();
    assert!(perf.source.as_deref().unwrap().starts_with(&format!("study {id}, oim-vllm-sim")), "{:?}", perf.source);

    // oras sees the profile and, through the referrers fallback, the evidence behind it.
    let repo = format!("{registry}/meta-llama/llama-3.1-8b-instruct");
    let oras = cluster::env().bin.join("oras");
    let tmp = crate::profiles::tempdir("study-oras");
    let run = |args: &[&str]| {
        let o = Command::new(&oras).args(args).current_dir(&tmp).output().unwrap();
        assert!(o.status.success(), "oras {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let reference = format!("{repo}:vllm-nvidia-h100-sxm-80gb-x1-throughput-bf16");
    let discovered = run(&["discover", "--plain-http", "--format", "json", &reference]);
    let d: Value = serde_json::from_str(&discovered).unwrap();
    let referrers = d["referrers"].as_array().unwrap_or_else(|| panic!("{discovered}"));
    assert_eq!(referrers.len(), 1, "{discovered}");
    assert_eq!(referrers[0]["artifactType"], "application/vnd.oim.study.results.v1+json");
    let evidence = format!("{repo}@{}", referrers[0]["digest"].as_str().unwrap());
    run(&["pull", "--plain-http", &evidence]);
    let doc: Value = serde_json::from_slice(&std::fs::read(tmp.join(format!("study-{id}.json"))).unwrap()).unwrap();
    assert_eq!(doc["kpi"], "throughput");
    assert_eq!(doc["winner"]["candidate"], X1_BF16);
    assert_eq!(doc["candidates"].as_array().unwrap().len(), 3);
    // The profile tags are untouched: the fallback index's `sha256-*` tag is not a profile.
    let (code, out, _) = oim(&["profiles", "list", "--model", MODEL, "--registry", &registry]);
    assert_eq!((code, out.lines().count()), (0, 4), "{out}");

    // The operator selects the study's latency winner for a new OIMService.
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "study-op", &[]).await;
    let node = KwokNode::create(&client, "study-op", &cluster::inventory_of("h100-sxm-80gb", 2), None).await;
    let _operator = Operator::with_args(&["--profile-registry", &registry, "--watch-namespaces", &ns.name]);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    svcs.create(&PostParams::default(), &service("study-latency", MODEL, "latency", "study-op")).await.unwrap();
    let svc = cluster::wait_for(&svcs, "study-latency", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.profile.as_ref()).is_some()
    })
    .await;
    assert_eq!(svc.status.unwrap().profile.unwrap().name, "vllm-nvidia-h100-sxm-80gb-x1-latency-fp8");
    node.delete(&client).await;
    ns.cleanup().await;

    // The report: axes, one line per candidate, winners marked.
    let html = dir.join("report.html");
    let (code, _, err) = oim(&["study", "report", dir.to_str().unwrap(), "-o", html.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let svg = dir.join("report.svg");
    let (code, _, err) = oim(&["study", "report", dir.to_str().unwrap(), "-o", svg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    crate::study::check_report(&std::fs::read_to_string(&svg).unwrap(), &std::fs::read_to_string(&html).unwrap());
}

/// The chart has both axis titles; one line per candidate (its own colour, a point per
/// concurrency) named in the legend; and the three winners ringed on a measured point and named.
/// The HTML embeds the chart and lists the winners and the numbers.
pub(crate) fn check_report(svg: &str, html: &str) {
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("output tokens/s") && svg.contains("TTFT p50 (ms)"), "axis titles");
    let attr = |el: &str, name: &str| -> String {
        let key = format!(" {name}=\"");
        el.split_once(&key).and_then(|(_, rest)| rest.split_once('"')).map(|(v, _)| v.to_string()).unwrap_or_default()
    };
    // Series: coloured, 2 px polylines whose points are the two concurrency levels (the legend's
    // sample lines are horizontal 20 px strokes of the same colour).
    let mut colours: Vec<String> = svg
        .lines()
        .filter(|l| l.starts_with("<polyline") && attr(l, "stroke-width") == "2" && attr(l, "stroke") != "#000000")
        .filter(|l| attr(l, "points").split_whitespace().count() == 2)
        .filter(|l| {
            let points = attr(l, "points");
            let p: Vec<&str> = points.split_whitespace().collect();
            p[0].split(',').nth(1) != p[1].split(',').nth(1)
        })
        .map(|l| attr(l, "stroke"))
        .collect();
    colours.sort();
    colours.dedup();
    assert_eq!(colours.len(), 3, "one line per candidate: {colours:?}");
    for name in [X1_BF16, X1_FP8, X2_BF16] {
        assert!(svg.contains(name), "legend names {name}");
    }
    // Winners: a black ring around a measured point, and a label.
    let points: Vec<(String, String)> = svg
        .lines()
        .filter(|l| l.starts_with("<circle") && attr(l, "r") == "4")
        .map(|l| (attr(l, "cx"), attr(l, "cy")))
        .collect();
    let rings: Vec<(String, String)> = svg
        .lines()
        .filter(|l| l.starts_with("<circle") && attr(l, "r") == "11")
        .map(|l| (attr(l, "cx"), attr(l, "cy")))
        .collect();
    assert_eq!(rings.len(), 3, "three winners ringed");
    assert!(rings.iter().all(|r| points.contains(r)), "each ring is on a measured point");
    for kpi in ["latency winner", "throughput winner", "quantization winner"] {
        assert!(svg.contains(kpi), "{kpi} is marked");
    }
    assert!(html.contains("<svg") && html.contains(X2_BF16));
    assert_eq!(html.matches("class=\"winner\"").count(), 3);
}
