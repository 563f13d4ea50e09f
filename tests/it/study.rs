//! A whole study over simulated engines: plan from the estimator, run locally and on the cluster
//! (interrupted and resumed), publish the winners to the local registry with the evidence attached, read them
//! back with `oim profiles list` and `oras`, let the operator select the latency winner, and
//! check the report's chart.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use oim::api::OIMService;
use oim::profile::schema::Profile;
use oim::study::cluster::CANDIDATE_LABEL;
use serde_json::Value;

use crate::cluster::{self, KwokNode, TestNs};
use crate::operator::{Operator, service};
use crate::sim::{SIM, Sim};

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

/// Latencies the three candidates are configured with (TTFT ms, ITL ms, ITL growth µs per
/// other running sequence): fp8 answers first but slows down as the batch grows; bf16 TP1 is
/// steady; TP2 answers sooner than it but streams slower, on two devices. The margins are wide
/// because other tests load the machine: TTFTs 80 ms apart (a port-forward's hops through the
/// API server and the kubelet do not reorder them), and with 32 output tokens bf16 TP1 streams
/// about 1000 tokens/s at concurrency 16, over three times TP2's per device (about 300) and five
/// times fp8's best (about 200), so a level slowed by a stall does not change the winner.
const CONFIGURED: [(&str, u32, u32, u32); 3] = [(X1_FP8, 40, 8, 5000), (X1_BF16, 200, 10, 0), (X2_BF16, 120, 24, 0)];

/// The winners those latencies must produce.
const EXPECTED_WINNERS: [&str; 3] = [
    "vllm-nvidia-h100-sxm-80gb-x1-latency-fp8",
    "vllm-nvidia-h100-sxm-80gb-x1-quantization-fp8",
    "vllm-nvidia-h100-sxm-80gb-x1-throughput-bf16",
];

/// Plans a study of four candidates, prunes one (as a user may) and configures the other three
/// to differ (see [`CONFIGURED`]).
fn plan_three(dir: &Path) {
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
        "--input-tokens",
        "32",
        "--output-tokens",
        "32",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4 candidates") && out.contains(X2_BF16), "{out}");
    std::fs::remove_file(dir.join("candidates/study-nvidia-h100-sxm-80gb-x2-fp8-s256-l8k.yaml")).unwrap();
    for (name, ttft, itl, growth) in CONFIGURED {
        simulate(dir, name, ttft, itl, growth);
    }
}

/// Runs `oim study run` until the first candidate has its result, then interrupts it like
/// Ctrl-C; returns the results written by then.
fn run_and_interrupt(dir: &Path, args: &[String]) -> Vec<String> {
    let child = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while results(dir).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(120), "no candidate finished in 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let first = results(dir);
    assert!(!first.is_empty() && first.len() < 3, "{first:?}");
    first
}

/// Publishes the study to a fresh repository of the local registry and returns it with the
/// profile names `oim profiles list` reads back, sorted.
fn publish_and_list(dir: &Path) -> (String, Vec<String>) {
    let registry = format!("{}/{}", cluster::env().registry, cluster::unique("study"));
    let (code, out, err) = oim(&["study", "publish", dir.to_str().unwrap(), "--registry", &registry]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, listed, err) = oim(&["profiles", "list", "--model", MODEL, "--registry", &registry, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let mut names: Vec<String> =
        listed.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    (registry, names)
}

#[tokio::test]
async fn a_study_of_three_simulated_candidates_publishes_the_expected_winners() {
    let timing = crate::bench::one_at_a_time_async().await;
    let dir = crate::profiles::tempdir("study").join("s");
    plan_three(&dir);

    // Interrupt the run once the first candidate has its result, then resume it.
    let first = run_and_interrupt(&dir, &run_args(&dir));
    let kept = std::fs::read(dir.join("results").join(&first[0])).unwrap();

    let args = run_args(&dir);
    let (code, out, err) = oim(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{}: done earlier, skipped", first[0].trim_end_matches(".json"))), "{out}");
    assert_eq!(results(&dir).len(), 3);
    assert_eq!(std::fs::read(dir.join("results").join(&first[0])).unwrap(), kept, "a finished candidate is not re-run");
    drop(timing);

    // Publish to the real registry.
    let (registry, names) = publish_and_list(&dir);
    assert_eq!(
        names, EXPECTED_WINNERS,
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

/// Stands in for the kubelet of the study's pods: whenever a candidate's pod appears, a kwok
/// `PortForward` sends its port 8000 to the simulator configured like that candidate, so a
/// port-forward through the API server reaches it. Returns the task; abort it when done.
fn forward_candidates_to(client: &Client, ns: &str, sims: BTreeMap<String, u16>) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let gvk = GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", "PortForward");
    let forwards: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "portforwards"));
    tokio::spawn(async move {
        let mut done = std::collections::BTreeSet::new();
        loop {
            let listed =
                pods.list(&ListParams::default().labels(CANDIDATE_LABEL)).await.map(|l| l.items).unwrap_or_default();
            for pod in listed {
                let name = pod.name_any();
                let candidate = pod.labels().get(CANDIDATE_LABEL).cloned().unwrap_or_default();
                let Some(port) = sims.get(&candidate) else { continue };
                if done.contains(&name) {
                    continue;
                }
                let pf: DynamicObject = serde_json::from_value(serde_json::json!({
                    "apiVersion": "kwok.x-k8s.io/v1alpha1",
                    "kind": "PortForward",
                    "metadata": {"name": name},
                    "spec": {"forwards": [{"ports": [8000], "target": {"address": "127.0.0.1", "port": port}}]},
                }))
                .unwrap();
                if forwards.create(&PostParams::default(), &pf).await.is_ok() {
                    done.insert(name);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Every Deployment, ReplicaSet, Service, ConfigMap, ServiceAccount and Pod in `ns`, labelled
/// or not, except what every namespace has (the `default` ServiceAccount and the root CA
/// ConfigMap): what a study may have created there.
async fn study_objects(client: &Client, ns: &str) -> Vec<String> {
    let lp = ListParams::default();
    let mut found = vec![];
    macro_rules! collect {
        ($k:ty) => {
            for o in Api::<$k>::namespaced(client.clone(), ns).list(&lp).await.unwrap().items {
                found.push(format!("{} {}", <$k as kube::Resource>::kind(&()), o.name_any()));
            }
        };
    }
    collect!(Deployment);
    collect!(ReplicaSet);
    collect!(Service);
    collect!(ConfigMap);
    collect!(ServiceAccount);
    collect!(Pod);
    found.retain(|o| o != "ServiceAccount default" && o != "ConfigMap kube-root-ca.crt");
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_run_on_the_cluster_deploys_each_candidate_measures_it_and_leaves_nothing_behind() {
    let _timing = crate::bench::one_at_a_time_async().await;
    let client = cluster::client().await;
    let ns = TestNs::new(&client, "study-run", &[]).await;
    let node = KwokNode::create(&client, "study-run", &cluster::inventory_of("h100-sxm-80gb", 2), None).await;
    let dir = crate::profiles::tempdir("study-run").join("s");
    plan_three(&dir);

    // One simulator per candidate on 127.0.0.1, configured like that candidate; the kwok node
    // forwards each candidate's pod to its own.
    let sims: Vec<(&str, Sim)> = CONFIGURED
        .iter()
        .map(|(name, ttft, itl, growth)| {
            let flags = [ttft.to_string(), itl.to_string(), growth.to_string()];
            let sim = Sim::start(MODEL, &["--ttft-ms", &flags[0], "--itl-ms", &flags[1], "--itl-growth-us", &flags[2]]);
            (*name, sim)
        })
        .collect();
    let ports: BTreeMap<String, u16> = sims
        .iter()
        .map(|(name, sim)| (name.to_string(), sim.url.rsplit(':').next().unwrap().parse().unwrap()))
        .collect();
    let stand_in = forward_candidates_to(&client, &ns.name, ports);

    let args: Vec<String> = [
        "study",
        "run",
        dir.to_str().unwrap(),
        "--namespace",
        &ns.name,
        "--node-selector",
        &format!("{}=study-run", cluster::SCENARIO_LABEL),
        "--startup-timeout",
        "60",
    ]
    .map(String::from)
    .to_vec();

    // Interrupted after the first candidate: the candidate in progress is torn down.
    let first = run_and_interrupt(&dir, &args);
    assert_eq!(study_objects(&client, &ns.name).await, Vec::<String>::new(), "an interrupted run leaves nothing");
    let kept = std::fs::read(dir.join("results").join(&first[0])).unwrap();

    // Killed outright while a candidate is deployed: its objects stay until the next run.
    let mut killed = Command::new(env!("CARGO_BIN_EXE_oim")).args(&args).stdout(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !study_objects(&client, &ns.name).await.iter().any(|o| o.starts_with("Deployment")) {
        assert!(start.elapsed() < Duration::from_secs(60), "no candidate deployed in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(!study_objects(&client, &ns.name).await.is_empty());

    // Resumed: what the killed run left is removed; the finished candidate is not measured
    // again; the others are.
    let (code, out, err) = oim(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("removed what an interrupted run left"), "{out}");
    assert!(out.contains(&format!("{}: done earlier, skipped", first[0].trim_end_matches(".json"))), "{out}");
    assert!(out.contains("applied Deployment") && out.contains("forwarding http://127.0.0.1:"), "{out}");
    assert_eq!(results(&dir).len(), 3);
    assert_eq!(std::fs::read(dir.join("results").join(&first[0])).unwrap(), kept, "a finished candidate is not re-run");
    assert_eq!(study_objects(&client, &ns.name).await, Vec::<String>::new(), "a finished run leaves nothing");

    // Each candidate was measured through its own pod and simulator: no TTFT p50 at concurrency 1
    // is below its configured one, and they rank as configured (the hops add a little to each).
    let mut ranked: Vec<(f64, &str)> = vec![];
    for (name, ttft, _, _) in CONFIGURED {
        let r: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("results/{name}.json"))).unwrap()).unwrap();
        assert_eq!(r["mode"], "cluster");
        let measured = r["bench"]["levels"][0]["ttftMs"]["p50"].as_f64().unwrap();
        assert!(measured >= f64::from(ttft) * 0.97, "{name}: TTFT p50 {measured} ms, configured {ttft} ms");
        ranked.push((measured, name));
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(ranked.iter().map(|r| r.1).collect::<Vec<_>>(), [X1_FP8, X2_BF16, X1_BF16], "{ranked:?}");

    let (_, names) = publish_and_list(&dir);
    assert_eq!(names, EXPECTED_WINNERS);

    stand_in.abort();
    drop(sims);
    node.delete(&client).await;
    ns.cleanup().await;
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
            // A legend sample is horizontal and 20 px long; a series may be horizontal too
            // (the same TTFT at both levels), but spans the throughput axis.
            let xy = |p: &str| -> (f64, f64) {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                (x.parse().unwrap_or(0.0), y.parse().unwrap_or(0.0))
            };
            let points = attr(l, "points");
            let p: Vec<(f64, f64)> = points.split_whitespace().map(xy).collect();
            p[0].1 != p[1].1 || (p[0].0 - p[1].0).abs() > 25.0
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
