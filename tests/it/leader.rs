//! Two operator replicas with leader election on the local control plane: one reconciles, the
//! standby is ready and takes over when the leader dies (within the lease), at once when it shuts
//! down cleanly, and a leader frozen past its lease writes nothing when it wakes.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use oim::api::OIMService;

use crate::cluster::{self, KwokNode, TestNs};
use crate::operator::{Operator, ready, service};

const LEASE: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_secs(1);

struct Replica {
    operator: Operator,
    name: &'static str,
    bind: String,
}

fn replica(ns: &str, name: &'static str) -> Replica {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bind = format!("127.0.0.1:{port}");
    let catalog = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles");
    let args = [
        "--catalog",
        catalog,
        "--watch-namespaces",
        ns,
        "--metrics-bind",
        &bind,
        "--leader-elect",
        "--leader-elect-namespace",
        ns,
        "--leader-elect-lease-duration",
        "4s",
        "--leader-elect-renew-deadline",
        "3s",
        "--leader-elect-retry-period",
        "1s",
    ];
    let operator = Operator::spawn(cluster::operator_kubeconfig(), &args, &[("POD_NAME", name)]);
    Replica { operator, name, bind }
}

impl Replica {
    /// (status code, body) of a GET on its metrics endpoint.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let out = Command::new("curl")
            .args(["-s", "-m", "2", "-w", "\n%{http_code}", &format!("http://{}{path}", self.bind)])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.parse().ok()?, body.to_string()))
    }

    fn leads(&self) -> bool {
        self.get("/metrics").is_some_and(|(_, m)| m.lines().any(|l| l == "oim_operator_leader 1"))
    }
}

/// Waits until every replica answers /readyz with 200; fails with their last answers.
async fn wait_ready(replicas: &[&Replica]) {
    let started = Instant::now();
    loop {
        let answers: Vec<_> = replicas.iter().map(|r| (r.name, r.get("/readyz"))).collect();
        if answers.iter().all(|(_, a)| a.as_ref().is_some_and(|(code, _)| *code == 200)) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "replicas not ready: {answers:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt("oim-operator").await.ok()??.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn wait_holder(leases: &Api<Lease>, who: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let who = format!("{who}_");
    cluster::wait_until(&format!("{who} holds the lease"), within, || async {
        holder(leases).await.filter(|h| h.starts_with(&who)).map(|_| ())
    })
    .await;
    started.elapsed()
}

/// The exit code of `operator`, waiting up to `within` for it to end.
async fn exit_code(operator: &mut Operator, within: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(code) = operator.exited() {
            return code;
        }
        assert!(started.elapsed() < within, "the operator did not exit within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_ready(svcs: &Api<OIMService>, name: &str, scenario: &str) -> Duration {
    let started = Instant::now();
    svcs.create(&PostParams::default(), &service(name, "meta-llama/Llama-3.1-8B-Instruct", "latency", scenario))
        .await
        .unwrap();
    cluster::wait_for(svcs, name, Duration::from_secs(60), ready).await;
    started.elapsed()
}

#[tokio::test]
async fn the_standby_takes_over_a_dead_leader_within_the_lease_and_a_frozen_leader_writes_nothing() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let scenario = "leader";
    let ns = TestNs::new(&client, scenario, &[]).await;
    cluster::grant_agent_role(&ns.name);
    let _node = KwokNode::create(&client, scenario, &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);

    // One leads and reconciles; the standby is ready (its caches synced) but does not lead.
    let mut a = replica(&ns.name, "replica-a");
    wait_holder(&leases, a.name, Duration::from_secs(30)).await;
    let b = replica(&ns.name, "replica-b");
    create_ready(&svcs, "first", scenario).await;
    wait_ready(&[&a, &b]).await;
    assert!(a.leads(), "the lease holder reports oim_operator_leader 1");
    assert!(!b.leads(), "the standby reports oim_operator_leader 0");
    assert_eq!(b.get("/healthz").map(|r| r.0), Some(200));

    // The leader dies without releasing: the standby takes over once the lease has run out.
    a.operator.signal("-KILL");
    let _ = a.operator.exited();
    let took = wait_holder(&leases, b.name, Duration::from_secs(30)).await;
    assert!(took <= LEASE + RETRY * 2 + Duration::from_secs(1), "takeover took {took:?} with a {LEASE:?} lease");
    let reconciled = create_ready(&svcs, "second", scenario).await;
    assert!(reconciled < Duration::from_secs(20), "the new leader reconciled a new service in {reconciled:?}");

    // A clean shutdown releases the lease: the next standby takes over at once.
    let mut b = b;
    let c = replica(&ns.name, "replica-c");
    wait_ready(&[&c]).await;
    b.operator.signal("-TERM");
    let took = wait_holder(&leases, c.name, Duration::from_secs(30)).await;
    assert!(took < LEASE, "after a release the standby took {took:?}, not less than the {LEASE:?} lease");
    exit_code(&mut b.operator, Duration::from_secs(15)).await;

    // The leader is frozen past its lease; the standby takes over and then dies too, so a
    // service created now can only be reconciled by the frozen one, if it ever wrote again.
    let mut c = c;
    let d = replica(&ns.name, "replica-d");
    wait_ready(&[&d]).await;
    c.operator.signal("-STOP");
    wait_holder(&leases, d.name, Duration::from_secs(30)).await;
    create_ready(&svcs, "third", scenario).await;
    let third = deployments.get("third").await.unwrap().metadata.resource_version;
    let mut d = d;
    d.operator.signal("-KILL");
    let _ = d.operator.exited();
    svcs.create(&PostParams::default(), &service("orphan", "meta-llama/Llama-3.1-8B-Instruct", "latency", scenario))
        .await
        .unwrap();
    c.operator.signal("-CONT");
    let code = exit_code(&mut c.operator, Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "a replica that lost its lease exits non-zero so it restarts as a standby");
    assert!(deployments.get_opt("orphan").await.unwrap().is_none(), "the woken old leader created a Deployment");
    let orphan = svcs.get("orphan").await.unwrap();
    assert!(orphan.status.is_none(), "the woken old leader wrote a status: {:?}", orphan.status);
    assert_eq!(
        deployments.get("third").await.unwrap().metadata.resource_version,
        third,
        "the woken old leader wrote to a Deployment"
    );
    ns.cleanup().await;
}
