//! Helpers every integration test uses: the local control plane from `tests/cluster/up.sh`, a fresh
//! namespace per test, kwok nodes per scenario, waiting on conditions, and a serial lock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, Resource};
use oim::hardware::inventory::{INVENTORY_ANNOTATION, Inventory};
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, MutexGuard};

/// Label every test node carries, so a test's workloads target only its own nodes.
pub const SCENARIO_LABEL: &str = "oim.test/scenario";

/// Facts `up.sh` wrote to `$OIM_CLUSTER_STATE/env` and `make test` exported.
pub struct Env {
    /// kubectl, oras and friends.
    pub bin: PathBuf,
    /// Anonymous registry, `127.0.0.1:port`.
    pub registry: String,
    /// Basic-auth registry, `127.0.0.1:port`.
    pub auth_registry: String,
    /// Its user.
    pub auth_user: String,
    /// Its password.
    pub auth_password: String,
    /// The kubeconfig file.
    pub kubeconfig: String,
    /// The API server URL.
    pub server: String,
    /// The cluster CA file.
    pub ca: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: integration tests need the local control plane; run `make test` (or `tests/cluster/up.sh` and `source $STATE/env`)")
    })
}

/// The test cluster's environment.
pub fn env() -> &'static Env {
    static ENV: LazyLock<Env> = LazyLock::new(|| Env {
        bin: PathBuf::from(var("OIM_CLUSTER_BIN")),
        registry: var("OIM_REGISTRY"),
        auth_registry: var("OIM_AUTH_REGISTRY"),
        auth_user: var("OIM_AUTH_REGISTRY_USER"),
        auth_password: var("OIM_AUTH_REGISTRY_PASSWORD"),
        kubeconfig: var("KUBECONFIG"),
        server: var("OIM_KUBE_SERVER"),
        ca: var("OIM_KUBE_CA"),
    });
    &ENV
}

/// A kube client for the test cluster (ring is the one crypto provider).
pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    env();
    Client::try_default().await.expect("kube client for the test cluster")
}

/// Runs a tool from the cluster's bin directory; returns (success, stdout, stderr).
pub fn tool(name: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env().bin.join(name))
        .args(args)
        .env("KUBECONFIG", &env().kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Like [`tool`], feeding `stdin`.
pub fn tool_stdin(name: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(env().bin.join(name))
        .args(args)
        .env("KUBECONFIG", &env().kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// kubectl, asserting success.
pub fn kubectl(args: &[&str]) -> String {
    let (ok, out, err) = tool("kubectl", args);
    assert!(ok, "kubectl {args:?} failed: {err}");
    out
}

/// A unique, DNS-safe suffix.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 1_000_000;
    format!("{prefix}-{t}-{}-{}", std::process::id() % 10_000, N.fetch_add(1, Ordering::Relaxed))
}

/// A namespace of its own for one test, deleted by [`TestNs::cleanup`] (and by cluster teardown
/// when a test fails before).
pub struct TestNs {
    /// Its name.
    pub name: String,
    client: Client,
}

impl TestNs {
    /// Creates the namespace with `labels` and waits for its default ServiceAccount, so pods
    /// pass ServiceAccount admission.
    pub async fn new(client: &Client, prefix: &str, labels: &[(&str, &str)]) -> TestNs {
        let name = unique(prefix);
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_until(&format!("default ServiceAccount in {name}"), Duration::from_secs(30), || async {
            sa.get_opt("default").await.ok().flatten()
        })
        .await;
        TestNs { name, client: client.clone() }
    }

    /// Deletes the namespace (and everything in it).
    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.name, &DeleteParams::background()).await;
    }
}

/// Polls `probe` every 250 ms until it returns Some, or panics naming `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the object exists and `check` accepts it.
pub async fn wait_for<K>(api: &Api<K>, name: &str, timeout: Duration, check: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    wait_until(&format!("{name} to reach the expected state"), timeout, || async {
        api.get_opt(name).await.ok().flatten().filter(|o| check(o))
    })
    .await
}

/// A simulated node for one scenario: the inventory's accelerators become capacity and
/// allocatable, its labels and annotation are what the agent would publish.
pub struct KwokNode {
    /// Node name.
    pub name: String,
}

impl KwokNode {
    /// Creates a Ready kwok node labelled `oim.test/scenario=<scenario>` from `inventory`;
    /// `allocatable` overrides the accelerator count the device plugin reports (None = PCI count).
    pub async fn create(client: &Client, scenario: &str, inventory: &Inventory, allocatable: Option<u32>) -> KwokNode {
        let name = unique(scenario);
        let mut inv = inventory.clone();
        inv.node = name.clone();
        let mut labels: BTreeMap<String, String> = inv.labels();
        labels.insert(SCENARIO_LABEL.into(), scenario.into());
        labels.insert("kubernetes.io/hostname".into(), name.clone());
        labels.insert("type".into(), "kwok".into());
        let mut capacity: BTreeMap<String, Quantity> = [
            ("pods", "110".to_string()),
            ("cpu", "64".to_string()),
            ("memory", format!("{}Mi", inv.memory_mib.max(262_144))),
            ("ephemeral-storage", "2Ti".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v)))
        .collect();
        for g in &inv.accelerators {
            let n = allocatable.unwrap_or(g.count);
            capacity.insert(g.resource_name.clone(), Quantity(n.to_string()));
            if g.resource_name == "habana.ai/gaudi" {
                capacity.insert("hugepages-2Mi".into(), Quantity("200Gi".into()));
            }
        }
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {"kwok.x-k8s.io/node": "fake", INVENTORY_ANNOTATION: serde_json::to_string(&inv).unwrap()},
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }))
        .unwrap();
        let nodes: Api<Node> = Api::all(client.clone());
        nodes.create(&PostParams::default(), &node).await.expect("create kwok node");
        wait_for(&nodes, &name, Duration::from_secs(60), |n| {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let not_ready_taint = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key.contains("not-ready")));
            ready && !not_ready_taint
        })
        .await;
        KwokNode { name }
    }

    /// Deletes the node.
    pub async fn delete(self, client: &Client) {
        let _ = Api::<Node>::all(client.clone()).delete(&self.name, &DeleteParams::default()).await;
    }
}

/// Held by tests that count free devices or change cluster-wide state, so they run one at a time.
pub async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: LazyLock<Mutex<()>> = LazyLock::new(|| Mutex::new(()));
    LOCK.lock().await
}

/// Inventory with `count` devices of the device-table product `slug`.
pub fn inventory_of(slug: &str, count: u32) -> Inventory {
    let d = oim::hardware::devices::by_slug(slug).unwrap_or_else(|| panic!("{slug} is not in the device table"));
    let mut group = oim::hardware::inventory::AcceleratorGroup::of(d, count);
    group.numa_nodes = vec![0];
    Inventory { accelerators: vec![group], memory_mib: 1_048_576, ..Inventory::default() }
}

/// Installs (or removes) the optional Route and ServiceMonitor CRDs that the renderer targets,
/// so tests run both with and without them.
pub fn optional_apis(installed: bool) {
    let dir = env().bin.join("../optional-crds");
    let dir = dir.to_str().unwrap();
    if installed {
        kubectl(&["apply", "--server-side", "-f", dir]);
        wait_established(dir);
    } else {
        kubectl(&["delete", "--ignore-not-found", "--wait", "-f", dir]);
    }
}

/// Installs (or removes) the Gateway API (Gateway, HTTPRoute), Inference Extension
/// (InferencePool) and KServe (InferenceService) CRDs of NIM's router and platform. Callers hold
/// [`serial`]: an operator reads which APIs exist when it starts.
pub fn platform_apis(installed: bool) {
    let dir = env().bin.join("../platform-crds");
    let dir = dir.to_str().unwrap();
    if installed {
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", dir]);
        wait_established(dir);
    } else {
        kubectl(&["delete", "--ignore-not-found", "--wait", "-f", dir]);
    }
}

/// Held while the oim CRDs are applied, and by the chart test while its upgrade briefly changes
/// them (another apply meanwhile would conflict with Helm's field ownership).
pub static CRDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Installs the oim CRDs from `crds/` with server-side apply and waits until they are Established.
pub fn install_oim_crds() {
    let _crds = CRDS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    kubectl(&["apply", "--server-side", "--force-conflicts", "--field-manager", "oim-tests", "-f", dir]);
    wait_established(dir);
}

/// `kubectl wait --for=condition=Established`, retried: on a CRD so new that it has no
/// conditions yet, kubectl fails at once instead of waiting.
fn wait_established(dir: &str) {
    let mut last = String::new();
    for _ in 0..60 {
        let (ok, _, err) = tool("kubectl", &["wait", "--for=condition=Established", "--timeout=60s", "-f", dir]);
        if ok {
            return;
        }
        last = err;
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    panic!("CRDs in {dir} not Established: {last}");
}

/// A kubeconfig that authenticates as `namespace/service_account` with a fresh token, written
/// into `dir`: tests run the operator with exactly that account's rights.
pub fn kubeconfig_for(namespace: &str, service_account: &str, dir: &std::path::Path) -> String {
    let token = kubectl(&["create", "token", service_account, "-n", namespace, "--duration", "2h"]);
    let env = env();
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "test", "cluster": {"server": env.server, "certificate-authority": env.ca}}],
        "users": [{"name": "sa", "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
    });
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{service_account}.kubeconfig"));
    std::fs::write(&path, config.to_string()).unwrap();
    path.display().to_string()
}

/// Where the tests' operator account lives.
pub const OPERATOR_NAMESPACE: &str = "oim-operator-tests";

/// A kubeconfig of the least-privilege operator account: `config/rbac/role.yaml` (what the chart,
/// kustomize and the bundle install) bound to ServiceAccount `oim-operator-tests/oim-operator`.
/// Every test's operator runs with it unless a test chooses other rights.
pub fn operator_kubeconfig() -> &'static str {
    static KUBECONFIG: LazyLock<String> = LazyLock::new(|| {
        let ns = OPERATOR_NAMESPACE;
        let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rbac/role.yaml");
        let account = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "oim-operator", "namespace": ns}},
            binding("ClusterRoleBinding", "oim-operator-tests", "ClusterRole", "oim-operator", None),
            binding("ClusterRoleBinding", "oim-operator-tests-cluster", "ClusterRole", "oim-operator-cluster", None),
        ]});
        let (ok, _, err) = tool_stdin("kubectl", &["apply", "--server-side", "-f", "-"], &account.to_string());
        assert!(ok, "operator account: {err}");
        kubectl(&["apply", "--server-side", "-n", ns, "-f", rbac]);
        grant_agent_role(ns);
        kubeconfig_for(ns, "oim-operator", &std::env::temp_dir().join(unique("operator-account")))
    });
    &KUBECONFIG
}

fn binding(kind: &str, name: &str, role_kind: &str, role: &str, namespace: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "oim-operator", "namespace": OPERATOR_NAMESPACE}]
    })
}

/// Lets the tests' operator account deploy the node agent into `namespace` (the chart grants this
/// Role in the operator's own namespace).
pub fn grant_agent_role(namespace: &str) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rbac/role.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut role = docs.into_iter().find(|d| d["kind"] == "Role").expect("config/rbac has the agent Role");
    role["metadata"]["namespace"] = serde_json::json!(namespace);
    let objects = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        role, binding("RoleBinding", "oim-operator-agent", "Role", "oim-operator-agent", Some(namespace)),
    ]});
    let (ok, _, err) = tool_stdin("kubectl", &["apply", "--server-side", "-f", "-"], &objects.to_string());
    assert!(ok, "agent role in {namespace}: {err}");
}

/// Events of `reason` in `ns`, their messages.
pub fn events(ns: &str, reason: &str) -> Vec<String> {
    let out = kubectl(&["get", "events", "-n", ns, "--field-selector", &format!("reason={reason}"), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().into_iter().flatten().filter_map(|e| e["message"].as_str().map(str::to_string)).collect()
}
