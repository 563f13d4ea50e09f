//! The operator on the local control plane: create-to-Deployment latency (p50/p99 over 200
//! services), time to reconcile 1,000 services from a cold start, the operator's peak memory,
//! and API writes during a steady-state resync (target 0). Needs the cluster: run `make bench`.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use oim::api::OIMService;

const MODEL: &str = "meta-llama/Llama-3.2-3B-Instruct";
const LATENCY_SERVICES: usize = 200;
const COLD_SERVICES: usize = 1000;
const NODES: usize = 4;

struct Operator {
    child: Child,
    metrics: String,
}

impl Operator {
    fn start(namespace: &str, port: u16) -> Operator {
        let child = Command::new(env!("CARGO_BIN_EXE_oim"))
            .args(["operator", "--no-agent", "--catalog", concat!(env!("CARGO_MANIFEST_DIR"), "/profiles")])
            .args(["--watch-namespaces", namespace, "--metrics-bind", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start oim operator");
        Operator { child, metrics: format!("127.0.0.1:{port}") }
    }

    /// A counter from /metrics (plain HTTP/1.0 GET, enough for a local scrape).
    fn counter(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.metrics).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let total: f64 = body
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Some(total)
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// CPU nodes (the Sapphire Rapids simulated node) with room for every bench pod.
async fn nodes(client: &kube::Client, run: &str) -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/nodes/oim-cpu-spr-0.yaml"))
        .unwrap();
    let template: Node = serde_json::from_str(text.split_once('\n').unwrap().1).unwrap();
    let api: Api<Node> = Api::all(client.clone());
    let mut names = vec![];
    for i in 0..NODES {
        let mut node = template.clone();
        let name = format!("{run}-{i}");
        node.metadata.name = Some(name.clone());
        let labels = node.metadata.labels.get_or_insert_default();
        labels.insert("kubernetes.io/hostname".into(), name.clone());
        labels.insert("oim.bench/run".into(), run.into());
        let status = node.status.get_or_insert_default();
        let room: std::collections::BTreeMap<String, Quantity> =
            [("pods", "1000"), ("cpu", "100000"), ("memory", "100000Gi"), ("ephemeral-storage", "100Ti")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect();
        status.capacity = Some(room.clone());
        status.allocatable = Some(room);
        api.create(&PostParams::default(), &node).await.expect("create a bench node");
        names.push(name);
    }
    names
}

fn service(name: &str, run: &str) -> OIMService {
    serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: {name}}}\nspec:\n  model: {{name: {MODEL}}}\n  nodeSelector: {{oim.bench/run: {run}}}\n"
    ))
    .unwrap()
}

async fn namespace(client: &kube::Client, name: &str) {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Names of OIMServices in `ns` that carry a status for their current generation.
async fn reconciled(api: &Api<OIMService>) -> usize {
    let list = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    list.iter().filter(|s| s.status.as_ref().is_some_and(|st| st.observed_generation == s.metadata.generation)).count()
}

/// Waits until the operator's write counter stops moving for `quiet`.
async fn settle(op: &Operator, quiet: Duration) -> f64 {
    let mut last = op.counter("oim_operator_api_writes_total").unwrap_or(0.0);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = op.counter("oim_operator_api_writes_total").unwrap_or(0.0);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
}

#[tokio::main]
async fn main() {
    let client = kube::Client::try_default().await.expect("a cluster: run `make bench`");
    let run = format!("bench-{}", std::process::id());
    let node_names = nodes(&client, &run).await;

    // 1. Create-to-Deployment latency, services created one after another on a running operator.
    let ns_a = format!("{run}-latency");
    namespace(&client, &ns_a).await;
    let op = Operator::start(&ns_a, free_port());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns_a);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(deployments, watcher::Config::default()).applied_objects().boxed();
        while let Some(Ok(d)) = stream.next().await {
            let _ = tx.send((d.metadata.name.unwrap_or_default(), Instant::now()));
        }
    });
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns_a);
    let mut created = HashMap::new();
    for i in 0..LATENCY_SERVICES {
        let name = format!("svc-{i}");
        created.insert(name.clone(), Instant::now());
        svcs.create(&PostParams::default(), &service(&name, &run)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while latencies.len() < LATENCY_SERVICES && Instant::now() < deadline {
        if let Ok(Some((name, at))) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
            && let Some(start) = created.get(&name)
        {
            latencies.entry(name).or_insert_with(|| at.duration_since(*start));
        }
    }
    watch.abort();
    let mut sorted: Vec<Duration> = latencies.values().copied().collect();
    sorted.sort();
    println!(
        "create-to-Deployment over {} services ({} got one): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        LATENCY_SERVICES,
        sorted.len(),
        percentile(&sorted, 0.5).as_secs_f64() * 1000.0,
        percentile(&sorted, 0.99).as_secs_f64() * 1000.0,
        sorted.last().unwrap().as_secs_f64() * 1000.0
    );
    op.stop();

    // 2. 1,000 services created while the operator is down, then a cold start.
    let ns_b = format!("{run}-cold");
    namespace(&client, &ns_b).await;
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns_b);
    for i in 0..COLD_SERVICES {
        svcs.create(&PostParams::default(), &service(&format!("svc-{i}"), &run)).await.unwrap();
    }
    let op = Operator::start(&ns_b, free_port());
    let started = Instant::now();
    loop {
        let done = reconciled(&svcs).await;
        if done == COLD_SERVICES || started.elapsed() > Duration::from_secs(1200) {
            println!(
                "reconcile {COLD_SERVICES} services from a cold start: {done} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let writes = settle(&op, Duration::from_secs(15)).await;
    println!("operator writes to reach steady state: {writes}");
    println!("operator peak memory with {COLD_SERVICES} services: {:.1} MiB", op.peak_rss_mib());
    op.stop();

    // 3. A steady-state resync: a fresh operator reconciles all 1,000 again and writes nothing.
    let op = Operator::start(&ns_b, free_port());
    let started = Instant::now();
    let mut reconciles = 0.0;
    while reconciles < COLD_SERVICES as f64 && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        reconciles = op.counter("oim_operator_reconciles_total").unwrap_or(0.0);
    }
    let resync = started.elapsed();
    let writes = settle(&op, Duration::from_secs(10)).await;
    println!(
        "steady-state resync of {COLD_SERVICES} services: {reconciles} reconciles in {:.1} s, {writes} API writes (target 0)",
        resync.as_secs_f64()
    );
    op.stop();

    for ns in [ns_a, ns_b] {
        let _ = Api::<Namespace>::all(client.clone()).delete(&ns, &DeleteParams::default()).await;
    }
    for n in node_names {
        let _ = Api::<Node>::all(client.clone()).delete(&n, &DeleteParams::default()).await;
    }
}
