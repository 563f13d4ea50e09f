//! The operator against the bare-client floor on the local control plane (run `make bench`).
//!
//! With the controller-manager and the scheduler paused (SIGSTOP) so only the contender writes:
//! 1. the floor: a plain client with 8 workers creates N copies of the Deployment and Service
//!    the operator renders for one OIMService (1x H100, Llama 3.1 8B, latency);
//! 2. the operator: N OIMServices created by 8 workers while it runs; time until every
//!    Deployment exists, create->Deployment p50/p99, peak RSS, CPU seconds, API writes, and what
//!    an idle minute costs; then the ratio to the floor. Beside it, what the API server and etcd
//!    spent (CPU seconds, for both contenders: the bottleneck on a small machine) and when every
//!    Service and status existed too (workloads go first, see `controller::priority`);
//! 3. a fresh operator resyncing those N services writes nothing;
//! 4. at scale: N_LARGE services over 1,000 nodes of the benchmark's own, from a cold start.
//!
//! Sizes: `OIM_BENCH_SERVICES` (default 1000), `OIM_BENCH_LARGE` (default 10000, 0 skips),
//! `OIM_BENCH_LARGE_NODES` (default 1000), `OIM_BENCH_IDLE_SECS` (default 180 for N, 300 at scale).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use oim::api::OIMService;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const WORKERS: usize = 8;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Operator {
    child: Child,
    metrics: String,
}

impl Operator {
    fn start(namespace: &str) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
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

    fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.metrics).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    }

    /// A counter from /metrics, summed over its labels.
    fn counter(&self, name: &str) -> f64 {
        let body = self.get("/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn ready(&self) {
        for _ in 0..600 {
            if self.get("/readyz").is_some_and(|b| b.split_whitespace().nth(1) == Some("200")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the operator did not become ready");
    }

    fn status(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn peak_rss_mib(&self) -> f64 {
        self.status("VmHWM:")
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
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

/// User + system CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<f64>().ok()).sum();
    ticks / clock_ticks()
}

/// The pids of the named control-plane processes (from the cluster's pid list).
fn cluster_pids(names: &[&str]) -> Vec<u32> {
    let state = std::env::var("OIM_CLUSTER_STATE").expect("OIM_CLUSTER_STATE: run `make bench`");
    let pids = std::fs::read_to_string(format!("{state}/pids")).unwrap_or_default();
    pids.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, name)| names.contains(name))
        .filter_map(|(pid, _)| pid.parse().ok())
        .collect()
}

/// CPU seconds the API server and etcd have used so far: what a contender costs the cluster.
fn server_cpu() -> f64 {
    cluster_pids(&["kube-apiserver", "etcd"]).into_iter().map(cpu_seconds).sum()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The controller-manager and scheduler stopped while it lives, so only the contender writes.
struct Paused(Vec<String>);

impl Paused {
    fn control_plane() -> Paused {
        let pids: Vec<String> =
            cluster_pids(&["kube-controller-manager", "kube-scheduler"]).iter().map(u32::to_string).collect();
        for pid in &pids {
            let _ = Command::new("kill").args(["-STOP", pid]).status();
        }
        Paused(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").args(["-CONT", pid]).status();
        }
    }
}

/// `count` H100 nodes of the run (labelled for its services), created by the workers.
async fn nodes(client: &kube::Client, run: &str, count: usize) -> Vec<String> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/nodes/oim-h100-0.yaml")).unwrap();
    let template: Node = serde_json::from_str(text.split_once('\n').unwrap().1).unwrap();
    let names: Vec<String> = (0..count).map(|i| format!("{run}-{i}")).collect();
    let api: Api<Node> = Api::all(client.clone());
    in_parallel(names.clone(), move |name| {
        let (api, mut node, run) = (api.clone(), template.clone(), run.to_string());
        async move {
            node.metadata.name = Some(name.clone());
            let labels = node.metadata.labels.get_or_insert_default();
            labels.insert("kubernetes.io/hostname".into(), name.clone());
            labels.insert("oim.bench/run".into(), run);
            api.create(&PostParams::default(), &node).await.expect("create a bench node");
        }
    })
    .await;
    names
}

/// Waits (up to 5 minutes) until the `count` nodes of `run` carry no not-ready taint.
async fn schedulable(client: &kube::Client, run: &str, count: usize) {
    let api: Api<Node> = Api::all(client.clone());
    let params = kube::api::ListParams::default().labels(&format!("oim.bench/run={run}"));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        let nodes = api.list(&params).await.map(|l| l.items).unwrap_or_default();
        let tainted = nodes.iter().filter(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/not-ready"))
        });
        if nodes.len() >= count && tainted.count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the nodes of {run} are still not schedulable after 5 minutes");
}

/// Runs `work` over `items` with [`WORKERS`] in flight.
async fn in_parallel<T, F, Fut>(items: Vec<T>, work: F)
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    futures::stream::iter(items.into_iter().map(work)).buffer_unordered(WORKERS).collect::<Vec<()>>().await;
}

fn service(name: &str, run: &str) -> OIMService {
    serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: {name}}}\nspec:\n  model: {{name: {MODEL}}}\n  profile: {{kpi: latency}}\n  nodeSelector: {{oim.bench/run: {run}}}\n"
    ))
    .unwrap()
}

async fn namespace(client: &kube::Client, name: &str) {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// First sight of each Deployment in `ns`, by name.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn watch_deployments(client: &kube::Client, ns: &str) -> (Seen, tokio::task::JoinHandle<()>) {
    watch_seen(Api::<Deployment>::namespaced(client.clone(), ns), |_| true)
}

/// When each object of the namespace was first seen `done`.
fn watch_seen<K>(api: Api<K>, done: fn(&K) -> bool) -> (Seen, tokio::task::JoinHandle<()>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let into = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).applied_objects().boxed();
        while let Some(Ok(o)) = stream.next().await {
            if done(&o) {
                into.lock().unwrap().entry(o.meta().name.clone().unwrap_or_default()).or_insert_with(Instant::now);
            }
        }
    });
    (seen, task)
}

async fn wait_all(seen: &Mutex<HashMap<String, Instant>>, n: usize, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if seen.lock().unwrap().len() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits until the operator's write counter has not moved for `quiet`; returns the count.
async fn settle(op: &Operator, quiet: Duration) -> f64 {
    let mut last = op.counter("oim_operator_api_writes_total");
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = op.counter("oim_operator_api_writes_total");
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
}

/// The Deployment and Service the operator renders for one service, stripped to what a client
/// would create.
async fn rendered_pair(client: &kube::Client, run: &str) -> (Deployment, Service) {
    let ns = format!("{run}-warm");
    namespace(client, &ns).await;
    let op = Operator::start(&ns);
    op.ready().await;
    Api::<OIMService>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service("warm", run))
        .await
        .unwrap();
    let (seen, task) = watch_deployments(client, &ns);
    assert!(wait_all(&seen, 1, Duration::from_secs(60)).await, "the warm-up service got no Deployment");
    task.abort();
    op.stop();
    let mut d = Api::<Deployment>::namespaced(client.clone(), &ns).get("warm").await.unwrap();
    let mut s = Api::<Service>::namespaced(client.clone(), &ns).get("warm").await.unwrap();
    for meta in [&mut d.metadata, &mut s.metadata] {
        *meta = kube::api::ObjectMeta {
            labels: meta.labels.take(),
            annotations: meta.annotations.take(),
            ..Default::default()
        };
    }
    d.status = None;
    s.status = None;
    if let Some(spec) = s.spec.as_mut() {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
    }
    let _ = Api::<Namespace>::all(client.clone()).delete(&ns, &DeleteParams::default()).await;
    (d, s)
}

/// The floor: `n` copies of the pair created by 8 workers. Returns (time to all, per-create latencies).
async fn floor(client: &kube::Client, ns: &str, pair: &(Deployment, Service), n: usize) -> (Duration, Vec<Duration>) {
    let (deployments, services) =
        (Api::<Deployment>::namespaced(client.clone(), ns), Api::<Service>::namespaced(client.clone(), ns));
    let latencies = Arc::new(Mutex::new(vec![]));
    let started = Instant::now();
    in_parallel((0..n).collect(), |i| {
        let (mut d, mut s) = pair.clone();
        let (deployments, services, latencies) = (deployments.clone(), services.clone(), latencies.clone());
        async move {
            let name = format!("svc-{i}");
            d.metadata.name = Some(name.clone());
            s.metadata.name = Some(name);
            let t = Instant::now();
            deployments.create(&PostParams::default(), &d).await.expect("floor: create Deployment");
            latencies.lock().unwrap().push(t.elapsed());
            services.create(&PostParams::default(), &s).await.expect("floor: create Service");
        }
    })
    .await;
    let took = started.elapsed();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    (took, l)
}

struct Run {
    all: Duration,
    p50: Duration,
    p99: Duration,
    rss: f64,
    cpu: f64,
    writes: f64,
    converged: bool,
    /// How long creating the services took (while the operator ran, or before it started).
    created_in: Duration,
    /// CPU seconds the API server and etcd spent until all Deployments existed.
    server_cpu: f64,
    /// Until every service also had its Service and a status.
    complete: Duration,
    /// Reconciles that left the Service and status to a revisit (workloads first).
    deferred: f64,
}

/// The operator: `n` services created by 8 workers while it runs (`live`) or before it starts.
async fn contender(client: &kube::Client, ns: &str, run: &str, n: usize, live: bool) -> (Operator, Run) {
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), ns);
    let (seen, task) = watch_deployments(client, ns);
    let (services, services_task) = watch_seen(Api::<Service>::namespaced(client.clone(), ns), |_| true);
    let (statuses, statuses_task) = watch_seen(svcs.clone(), |s: &OIMService| s.status.is_some());
    let created = Arc::new(Mutex::new(HashMap::new()));
    let create_all = async {
        in_parallel((0..n).collect(), |i| {
            let (svcs, created) = (svcs.clone(), created.clone());
            async move {
                let name = format!("svc-{i}");
                created.lock().unwrap().insert(name.clone(), Instant::now());
                svcs.create(&PostParams::default(), &service(&name, run)).await.expect("create an OIMService");
            }
        })
        .await;
    };
    let op;
    let started;
    let created_in;
    let server_at_start;
    if live {
        op = Operator::start(ns);
        op.ready().await;
        server_at_start = server_cpu();
        started = Instant::now();
        create_all.await;
        created_in = started.elapsed();
    } else {
        let t = Instant::now();
        create_all.await;
        created_in = t.elapsed();
        server_at_start = server_cpu();
        started = Instant::now();
        op = Operator::start(ns);
    }
    let converged = wait_all(&seen, n, Duration::from_secs(3600)).await;
    let all = started.elapsed();
    let server_cpu = server_cpu() - server_at_start;
    let rest_complete = wait_all(&services, n, Duration::from_secs(3600)).await
        && wait_all(&statuses, n, Duration::from_secs(3600)).await;
    let complete = started.elapsed();
    task.abort();
    services_task.abort();
    statuses_task.abort();
    let writes = settle(&op, Duration::from_secs(15)).await;
    let seen = seen.lock().unwrap().clone();
    let created = created.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = seen
        .iter()
        .filter_map(|(name, at)| Some(at.saturating_duration_since(if live { *created.get(name)? } else { started })))
        .collect();
    latencies.sort();
    let result = Run {
        all,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        rss: op.peak_rss_mib(),
        cpu: op.cpu_seconds(),
        writes,
        converged,
        created_in,
        server_cpu,
        complete,
        deferred: op.counter("oim_operator_deferred_rest_total"),
    };
    assert!(rest_complete, "not every service got its Service and a status");
    (op, result)
}

/// CPU seconds and writes the operator spends over `secs` with nothing changing.
async fn idle(op: &Operator, secs: u64) -> (f64, f64) {
    let (cpu, writes) = (op.cpu_seconds(), op.counter("oim_operator_api_writes_total"));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (op.cpu_seconds() - cpu, op.counter("oim_operator_api_writes_total") - writes)
}

fn print_run(label: &str, n: usize, r: &Run) {
    println!(
        "{label}: all {n} Deployments {} in {:.1} s; create->Deployment p50 {:.0} ms, p99 {:.0} ms; peak RSS {:.1} MiB; CPU {:.1} s; API writes {}",
        if r.converged { "exist" } else { "did NOT all appear" },
        r.all.as_secs_f64(),
        ms(r.p50),
        ms(r.p99),
        r.rss,
        r.cpu,
        r.writes
    );
    println!(
        "  (its {n} services created in {:.1} s; API server + etcd used {:.1} CPU s until all Deployments existed; every Service and status written after {:.1} s; {} Services and statuses left to a revisit while others waited)",
        r.created_in.as_secs_f64(),
        r.server_cpu,
        r.complete.as_secs_f64(),
        r.deferred
    );
}

async fn cleanup(client: &kube::Client, namespaces: &[String], nodes: &[String]) {
    for ns in namespaces {
        let _ = Api::<Namespace>::all(client.clone()).delete(ns, &DeleteParams::default()).await;
    }
    let api: Api<Node> = Api::all(client.clone());
    in_parallel(nodes.to_vec(), |n| {
        let api = api.clone();
        async move {
            let _ = api.delete(&n, &DeleteParams::default()).await;
        }
    })
    .await;
}

#[tokio::main]
async fn main() {
    let client = kube::Client::try_default().await.expect("a cluster: run `make bench`");
    let run = format!("bench-{}", std::process::id());
    let n = env_usize("OIM_BENCH_SERVICES", 1000);
    let large = env_usize("OIM_BENCH_LARGE", 10_000);
    let large_nodes = env_usize("OIM_BENCH_LARGE_NODES", 1000);
    // Nodes are created while the control plane runs: the node lifecycle controller (in the
    // controller-manager) lifts the not-ready taint every new node gets.
    let small_nodes = nodes(&client, &run, 4).await;
    schedulable(&client, &run, 4).await;
    let pair = rendered_pair(&client, &run).await;

    // 1-2. Floor and operator side by side, only they writing.
    let paused = Paused::control_plane();
    let floor_ns = format!("{run}-floor");
    namespace(&client, &floor_ns).await;
    let server_at_start = server_cpu();
    let (floor_all, floor_lat) = floor(&client, &floor_ns, &pair, n).await;
    println!(
        "floor (bare client, {WORKERS} workers): {n} Deployments + Services in {:.1} s; create p50 {:.0} ms, p99 {:.0} ms; {} API writes; API server + etcd {:.1} CPU s",
        floor_all.as_secs_f64(),
        ms(percentile(&floor_lat, 0.5)),
        ms(percentile(&floor_lat, 0.99)),
        2 * n,
        server_cpu() - server_at_start
    );
    let op_ns = format!("{run}-operator");
    namespace(&client, &op_ns).await;
    let (op, r) = contender(&client, &op_ns, &run, n, true).await;
    print_run("operator", n, &r);
    println!(
        "ratio to the floor: all Deployments {:.2}x (target <= 1.5x); p99 create->Deployment / floor total {:.2}x (target <= 2x)",
        r.all.as_secs_f64() / floor_all.as_secs_f64(),
        r.p99.as_secs_f64() / floor_all.as_secs_f64()
    );
    let idle_secs = env_usize("OIM_BENCH_IDLE_SECS", 180) as u64;
    let (cpu, writes) = idle(&op, idle_secs).await;
    println!("operator idle for {idle_secs} s with {n} services: {cpu:.2} CPU s, {writes} API writes (target 0)");
    op.stop();

    // 3. A fresh operator resyncing the same services writes nothing.
    let op = Operator::start(&op_ns);
    let started = Instant::now();
    while op.counter("oim_operator_reconciles_total") < n as f64 && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resync = started.elapsed();
    let writes = settle(&op, Duration::from_secs(10)).await;
    println!(
        "steady-state resync of {n} services: {} reconciles in {:.1} s, {writes} API writes (target 0)",
        op.counter("oim_operator_reconciles_total"),
        resync.as_secs_f64()
    );
    op.stop();
    drop(paused);
    cleanup(&client, &[floor_ns, op_ns], &[]).await;

    // 4. At scale, from a cold start, on nodes created now (so they do not weigh on the part
    // above) with the control plane running, then paused again.
    let scale_run = format!("{run}-scale");
    let mut large_node_names = vec![];
    let mut namespaces = vec![];
    if large > 0 {
        let started = Instant::now();
        large_node_names = nodes(&client, &scale_run, large_nodes).await;
        schedulable(&client, &scale_run, large_nodes).await;
        println!("{large_nodes} nodes created and schedulable in {:.1} s", started.elapsed().as_secs_f64());
        let paused = Paused::control_plane();
        let ns = format!("{run}-scale");
        namespace(&client, &ns).await;
        let (op, r) = contender(&client, &ns, &scale_run, large, false).await;
        print_run(&format!("operator at scale over {large_nodes} nodes, cold start"), large, &r);
        let idle_secs = env_usize("OIM_BENCH_IDLE_SECS", 300) as u64;
        let (cpu, writes) = idle(&op, idle_secs).await;
        println!(
            "operator idle for {idle_secs} s with {large} services: {:.2} CPU s/min, {:.1} API writes/min (target 0)",
            cpu * 60.0 / idle_secs as f64,
            writes * 60.0 / idle_secs as f64
        );
        println!("operator peak RSS at scale: {:.1} MiB (target < 256 MiB)", op.peak_rss_mib());
        op.stop();
        drop(paused);
        namespaces = vec![ns];
    }
    cleanup(&client, &namespaces, &[small_nodes, large_node_names].concat()).await;
}
