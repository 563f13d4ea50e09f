//! Fault tests: each breaks something for real on the local control plane while services
//! reconcile — the API server, the operator process, the profile registry, one object — and
//! asserts the end state a user cares about. Stopping the API server breaks every other test in
//! the cluster, so these are `#[ignore]`d and run alone, one at a time, after the rest of the
//! suite: `make test` (and `make test-faults`) run
//! `cargo test --test it faults -- --ignored --test-threads=1`.
//!
//! The operators here run without `--leader-elect`: with it, an API server gone for longer than
//! the renew deadline makes the leader stop and exit, by design (its replacement takes over). The
//! two-replica failover (kill the leader; SIGSTOP it past its lease) is `leader.rs`, in the
//! normal suite: it breaks only its own processes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use oim::api::OIMService;
use serde_json::json;

use crate::cluster::{self, KwokNode, TestNs};
use crate::operator::{Operator, condition, ready, service};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// Enough 8xH100 kwok nodes for `services` one-GPU services.
async fn h100_nodes(client: &Client, scenario: &str, services: usize) -> Vec<KwokNode> {
    let inventory = cluster::inventory_of("h100-sxm-80gb", 8);
    let nodes = (0..services.div_ceil(8)).map(|_| KwokNode::create(client, scenario, &inventory, None));
    futures::future::join_all(nodes).await
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

async fn create_services(svcs: &Api<OIMService>, names: &[String], scenario: &str) {
    create_services_of(svcs, names, scenario, MODEL, "latency").await;
}

async fn create_services_of(svcs: &Api<OIMService>, names: &[String], scenario: &str, model: &str, kpi: &str) {
    futures::stream::iter(names)
        .for_each_concurrent(8, |n| async move {
            svcs.create(&PostParams::default(), &service(n, model, kpi, scenario)).await.unwrap();
        })
        .await;
}

/// The services of `ns` that decode (one that does not must not hide the others).
async fn services(client: &Client, ns: &str) -> Vec<OIMService> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<OIMService>(&()));
    let items = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    items.into_iter().filter_map(|o| serde_json::from_value(serde_json::to_value(o).ok()?).ok()).collect()
}

/// Waits until every one of `names` is Ready; on timeout names the ones that are not, with why.
async fn all_ready(client: &Client, ns: &str, names: &[String], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let live = services(client, ns).await;
        let by_name: BTreeMap<String, &OIMService> =
            live.iter().map(|s| (s.metadata.name.clone().unwrap_or_default(), s)).collect();
        let waiting: Vec<&String> = names.iter().filter(|n| !by_name.get(*n).is_some_and(|s| ready(s))).collect();
        if waiting.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let why: Vec<String> = waiting
                .iter()
                .take(5)
                .map(|n| {
                    let st = by_name.get(*n).and_then(|s| s.status.as_ref());
                    let conds: Vec<String> = st
                        .map(|s| {
                            s.conditions.iter().map(|c| format!("{}={} {}", c.type_, c.status, c.reason)).collect()
                        })
                        .unwrap_or_default();
                    format!("{n}: {:?} {conds:?}", st.and_then(|s| s.state))
                })
                .collect();
            panic!("after {timeout:?}, {} of {} services are not Ready: {why:#?}", waiting.len(), names.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn owner_uids(meta: &kube::api::ObjectMeta, kind: &str) -> Vec<String> {
    meta.owner_references.iter().flatten().filter(|o| o.kind == kind).map(|o| o.uid.clone()).collect()
}

/// Every service has exactly one Deployment and Service of its own (and no ServiceAccount or
/// ConfigMap: the pods use the namespace's default account, the selection rides on the
/// Deployment); each Deployment exactly one ReplicaSet (nothing rolled it) and one pod; nothing the
/// operator made is left without a live owner.
async fn exactly_one_of_each_child(client: &Client, ns: &str, names: &[String]) {
    let uid_of: BTreeMap<String, String> = services(client, ns)
        .await
        .iter()
        .map(|s| (s.metadata.uid.clone().unwrap(), s.metadata.name.clone().unwrap()))
        .collect();
    assert_eq!(uid_of.len(), names.len(), "the services themselves");
    let kinds = [
        (ApiResource::erase::<Deployment>(&()), 1),
        (ApiResource::erase::<Service>(&()), 1),
        (ApiResource::erase::<ServiceAccount>(&()), 0),
        (ApiResource::erase::<ConfigMap>(&()), 0),
    ];
    let mut problems = vec![];
    for (ar, expected) in &kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
        let mut per_service: BTreeMap<String, usize> = BTreeMap::new();
        for o in api.list(&ListParams::default()).await.unwrap().items {
            let name = o.metadata.name.clone().unwrap_or_default();
            let owners = owner_uids(&o.metadata, "OIMService");
            let ours = o.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/managed-by"))
                == Some(&"oim-operator".to_string());
            match owners.as_slice() {
                [] if ours => problems.push(format!("{} {name} has no owner (orphaned)", ar.kind)),
                [] => {}
                [uid] => match uid_of.get(uid) {
                    Some(svc) => *per_service.entry(svc.clone()).or_default() += 1,
                    None => problems.push(format!("{} {name} is owned by a service that is gone (orphaned)", ar.kind)),
                },
                _ => problems.push(format!("{} {name} has several OIMService owners", ar.kind)),
            }
        }
        for n in names {
            let count = per_service.get(n).copied().unwrap_or(0);
            if count != *expected {
                problems.push(format!("service {n} has {count} {}(s)", ar.kind));
            }
        }
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap();
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap();
    for d in &deployments.items {
        let uid = d.metadata.uid.clone().unwrap();
        let count = replica_sets.items.iter().filter(|r| owner_uids(&r.metadata, "Deployment").contains(&uid)).count();
        if count != 1 {
            problems.push(format!("Deployment {} has {count} ReplicaSets (rolled)", d.metadata.name.clone().unwrap()));
        }
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap();
    for n in names {
        let count = pods
            .items
            .iter()
            .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/instance")) == Some(n))
            .count();
        if count != 1 {
            problems.push(format!("service {n} has {count} pods"));
        }
    }
    assert!(problems.is_empty(), "{} problem(s): {problems:#?}", problems.len());
}

async fn deployment_count(deployments: &Api<Deployment>) -> usize {
    deployments.list(&ListParams::default()).await.map(|l| l.items.len()).unwrap_or(0)
}

fn apiserver(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/apiserver.sh");
    let out = Command::new("bash").arg(script).arg(action).output().expect("run tests/cluster/apiserver.sh");
    assert!(out.status.success(), "apiserver.sh {action}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
#[ignore = "fault test: run alone after the suite by `make test` / `make test-faults`"]
async fn the_api_server_down_for_20s_the_operator_rides_it_out_and_100_services_converge_once() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "fault-api", &[]).await;
    let nodes = h100_nodes(&client, "fault-api", 100).await;
    let mut operator = Operator::start(&ns.name);
    let pid = operator.pid();
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let all = names("llm", 100);
    create_services(&svcs, &all, "fault-api").await;
    // Mid-reconcile: some services applied, most not.
    cluster::wait_until("the first 10 Deployments", Duration::from_secs(90), || async {
        (deployment_count(&deployments).await >= 10).then_some(())
    })
    .await;
    apiserver("stop");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(operator.running(), "the operator exited while the API server was down");
    apiserver("start");
    all_ready(&client, &ns.name, &all, Duration::from_secs(240)).await;
    assert!(operator.running() && operator.pid() == pid, "the operator recovered without restarting");
    exactly_one_of_each_child(&client, &ns.name, &all).await;
    ns.cleanup().await;
    for n in nodes {
        n.delete(&client).await;
    }
}

#[tokio::test]
#[ignore = "fault test: run alone after the suite by `make test` / `make test-faults`"]
async fn the_operator_sigkilled_five_times_mid_reconcile_leaves_100_services_converged_once() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "fault-kill", &[]).await;
    let nodes = h100_nodes(&client, "fault-kill", 100).await;
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &ns.name);
    let all = names("llm", 100);
    let mut operator = Operator::start(&ns.name);
    let creating = create_services(&svcs, &all, "fault-kill");
    let rng = fastrand::Rng::new();
    let seed = rng.get_seed();
    let killing = async {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut at = vec![];
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(rng.u64(500..4000))).await;
            operator.kill();
            // Work done: the Deployment and, written after it under load, the Service.
            let with_service = services.list(&ListParams::default()).await.map(|l| l.items.len()).unwrap_or(0);
            at.push(deployment_count(&deployments).await.min(with_service));
            operator = Operator::start(&ns.name);
        }
        at
    };
    let ((), killed_at) = futures::join!(creating, killing);
    eprintln!("SIGKILLed with {killed_at:?} services' Deployment and Service applied (seed {seed})");
    assert!(killed_at.iter().any(|&n| n < all.len()), "every kill came after the work was done (seed {seed})");
    all_ready(&client, &ns.name, &all, Duration::from_secs(240)).await;
    exactly_one_of_each_child(&client, &ns.name, &all).await;
    drop(operator);
    ns.cleanup().await;
    for n in nodes {
        n.delete(&client).await;
    }
}

/// The test's own OCI registry (the cluster's `registry` binary) on a fixed loopback port, so it
/// can be stopped and started again with the same storage.
struct Registry {
    child: Option<Child>,
    config: PathBuf,
    addr: String,
}

impl Registry {
    fn new(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yaml");
        let storage = dir.join("storage");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: '{addr}', secret: fault-test}}\n",
                storage.display()
            ),
        )
        .unwrap();
        let mut r = Registry { child: None, config, addr };
        r.start();
        r
    }

    fn start(&mut self) {
        let child = Command::new(cluster::env().bin.join("registry"))
            .arg("serve")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not listen on {} within 30s", self.addr);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Write requests of the operator account on Deployments `names` in `ns`, in the API server's
/// audit log after byte `from`.
fn deployment_writes(ns: &str, names: &BTreeSet<String>, from: u64) -> Vec<String> {
    let path = format!("{}/log/audit.log", std::env::var("OIM_CLUSTER_STATE").unwrap());
    let mut file = std::fs::File::open(path).expect("the API server's audit log");
    file.seek(std::io::SeekFrom::Start(from)).unwrap();
    let mut writes = vec![];
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        if !line.contains(ns) {
            continue;
        }
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let o = &e["objectRef"];
        let verb = e["verb"].as_str().unwrap_or_default();
        if o["namespace"] == ns
            && o["resource"] == "deployments"
            && names.contains(o["name"].as_str().unwrap_or_default())
            && matches!(verb, "create" | "update" | "patch" | "delete")
        {
            writes.push(format!("{verb} {}", o["name"]));
        }
    }
    writes
}

fn audit_log_len() -> u64 {
    let path = format!("{}/log/audit.log", std::env::var("OIM_CLUSTER_STATE").unwrap());
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What a write to a Deployment would change: its spec generation and the operator's apply.
fn applied_state(d: &Deployment) -> (Option<i64>, String) {
    let ours = d.metadata.managed_fields.iter().flatten().filter(|m| m.manager.as_deref() == Some("oim-operator"));
    (d.metadata.generation, format!("{:?}", ours.map(|m| (&m.time, &m.fields_v1)).collect::<Vec<_>>()))
}

#[tokio::test]
#[ignore = "fault test: run alone after the suite by `make test` / `make test-faults`"]
async fn the_registry_down_leaves_running_services_untouched_blocks_new_ones_and_both_recover() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let dir = crate::profiles::tempdir("fault-registry");
    let mut registry = Registry::new(&dir);
    // Two models: the running services' (resolved before the outage) and the new ones' (not).
    for (model, profile) in [
        ("llama-3.1-8b", "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml"),
        ("qwen2.5-7b", "vllm-nvidia-h100-sxm-80gb-x1-throughput-bf16.yaml"),
    ] {
        let to = dir.join("catalog").join(model);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(format!("{}/profiles/{model}/{profile}", env!("CARGO_MANIFEST_DIR")), to.join(profile)).unwrap();
    }
    let reference = format!("{}/oim", registry.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(["profiles", "push", dir.join("catalog").to_str().unwrap(), "--registry", &reference])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let ns = TestNs::new(&client, "fault-registry", &[]).await;
    let nodes = h100_nodes(&client, "fault-registry", 8).await;
    // Tags are re-resolved every 2 s, so the outage is noticed by every reconcile.
    let _operator = Operator::with_args(&[
        "--profile-registry",
        &reference,
        "--profile-refresh",
        "2",
        "--watch-namespaces",
        &ns.name,
    ]);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let running = names("running", 4);
    create_services(&svcs, &running, "fault-registry").await;
    all_ready(&client, &ns.name, &running, Duration::from_secs(120)).await;
    let mut before = BTreeMap::new();
    for n in &running {
        before.insert(n.clone(), applied_state(&deployments.get(n).await.unwrap()));
    }
    let audit_from = audit_log_len();

    registry.stop();
    let blocked = names("new", 3);
    create_services_of(&svcs, &blocked, "fault-registry", "Qwen/Qwen2.5-7B-Instruct", "throughput").await;
    // Each running service is reconciled during the outage, more than once.
    let touch = json!({"metadata": {"annotations": {"oim.test/resync": "during-outage"}}});
    for n in &running {
        svcs.patch(n, &PatchParams::default(), &Patch::Merge(&touch)).await.unwrap();
    }
    for n in &blocked {
        let s = cluster::wait_for(&svcs, n, Duration::from_secs(60), |s| {
            condition(s, "Degraded").is_some_and(|c| c.status == "True")
        })
        .await;
        let c = condition(&s, "Degraded").unwrap();
        assert_eq!(c.reason, "RegistryUnavailable", "{n}: {}", c.message);
        assert!(c.message.contains(&registry.addr), "{n}: {}", c.message);
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    for n in &running {
        let d = deployments.get(n).await.unwrap();
        assert_eq!(applied_state(&d), before[n], "{n}: the Deployment was written while the registry was down");
        assert_eq!(d.status.and_then(|s| s.available_replicas), Some(1), "{n} keeps serving");
    }
    let writes = deployment_writes(&ns.name, &running.iter().cloned().collect(), audit_from);
    assert!(writes.is_empty(), "the operator wrote to running Deployments during the outage: {writes:?}");

    registry.start();
    let everyone: Vec<String> = running.iter().chain(&blocked).cloned().collect();
    all_ready(&client, &ns.name, &everyone, Duration::from_secs(120)).await;
    cluster::wait_until("no service Degraded", Duration::from_secs(60), || async {
        let list = svcs.list(&ListParams::default()).await.ok()?;
        list.items.iter().all(|s| condition(s, "Degraded").is_none_or(|c| c.status != "True")).then_some(())
    })
    .await;
    for n in &running {
        assert_eq!(applied_state(&deployments.get(n).await.unwrap()), before[n], "{n} was rolled after the outage");
    }
    exactly_one_of_each_child(&client, &ns.name, &everyone).await;
    ns.cleanup().await;
    for n in nodes {
        n.delete(&client).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The OIMService CRD with an unchecked spec, so an object the operator's types cannot read can
/// be stored (as an older or newer CRD version might have).
fn loosened_service_crd() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/oim.opea.dev.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut crd = docs.into_iter().find(|d| d["spec"]["names"]["kind"] == "OIMService").unwrap();
    for v in crd["spec"]["versions"].as_array_mut().unwrap() {
        let schema = &mut v["schema"]["openAPIV3Schema"];
        schema["properties"]["spec"] = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        schema.as_object_mut().unwrap().remove("x-kubernetes-validations");
    }
    crd.to_string()
}

#[tokio::test]
#[ignore = "fault test: run alone after the suite by `make test` / `make test-faults`"]
async fn a_service_the_operator_cannot_read_is_reported_and_20_others_keep_reconciling() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "fault-undecodable", &[]).await;
    let nodes = h100_nodes(&client, "fault-undecodable", 20).await;
    // Stored while the CRD was loose (as another CRD version would have written it).
    let apply = ["apply", "--server-side", "--force-conflicts", "--field-manager", "oim-tests", "-f", "-"];
    let (ok, _, err) = cluster::tool_stdin("kubectl", &apply, &loosened_service_crd());
    assert!(ok, "{err}");
    let bad = json!({"apiVersion": "oim.opea.dev/v1alpha1", "kind": "OIMService",
                     "metadata": {"name": "from-the-future", "namespace": ns.name}, "spec": {"model": 42}});
    cluster::wait_until("the unreadable service stored", Duration::from_secs(30), || async {
        let (ok, _, _) = cluster::tool_stdin("kubectl", &["create", "-f", "-"], &bad.to_string());
        ok.then_some(())
    })
    .await;
    cluster::install_oim_crds();
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let others = names("llm", 20);
    create_services(&svcs, &others, "fault-undecodable").await;
    all_ready(&client, &ns.name, &others, Duration::from_secs(180)).await;
    let events = cluster::wait_until("an InvalidObject event", Duration::from_secs(30), || async {
        let out = cluster::kubectl(&[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "reason=InvalidObject",
            "-o",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["items"].as_array().filter(|i| !i.is_empty()).cloned()
    })
    .await;
    let note = events[0]["message"].as_str().unwrap_or_default().to_string();
    assert!(note.contains("from-the-future") && note.contains("spec.model"), "{note}");
    assert_eq!(events[0]["involvedObject"]["name"], "from-the-future");
    exactly_one_of_each_child(&client, &ns.name, &others).await;
    cluster::kubectl(&["delete", "oimservice", "-n", &ns.name, "from-the-future", "--wait=false"]);
    ns.cleanup().await;
    for n in nodes {
        n.delete(&client).await;
    }
}
