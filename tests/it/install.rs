//! Installing oim-operator three ways, on the local control plane: `kubectl apply -k
//! config/default`, the Helm chart, and the OLM bundle; and the image `make image` builds. The
//! operator runs out of cluster with a token of the installed ServiceAccount, so the RBAC shipped
//! is exactly what it has: it must reconcile a service to Ready, and a write outside its rules must
//! be refused by the API server.
//!
//! helm, crane, opm and the bundle validator come from `tests/cluster/build-packaging.sh`, which
//! `make test` runs; a test needing one skips with that hint only when it was not built.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::Api;
use kube::api::PostParams;
use oim::api::{OIMService, ServiceState};
use serde_json::Value;

use crate::cluster::{self, KwokNode, TestNs};
use crate::operator::{Operator, service};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A packaging tool from build-packaging.sh's cache; None (with the reason printed) when absent.
fn packaging_tool(name: &str) -> Option<PathBuf> {
    let dir = packaging_dir();
    let path = dir.join(name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {name} is not built in {}; run tests/cluster/build-packaging.sh (make test does)",
            dir.display()
        );
        None
    }
}

/// Where build-packaging.sh puts its tools.
fn packaging_dir() -> PathBuf {
    std::env::var("OIM_PACKAGING_BIN").map(PathBuf::from).unwrap_or_else(|_| {
        let cache = std::env::var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"));
        cache.join("oim-testcluster/packaging/bin")
    })
}

/// Runs a program with the cluster's kubeconfig, and kubectl and the packaging tools on PATH;
/// returns (success, stdout, stderr).
fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let env = cluster::env();
    let path =
        format!("{}:{}:{}", env.bin.display(), packaging_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new(program)
        .args(args)
        .env("KUBECONFIG", &env.kubeconfig)
        .env("PATH", path)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn ok(program: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let (success, out, err) = run(program, args, stdin);
    assert!(success, "{} {args:?} failed:\n{err}\n{out}", program.display());
    out
}

fn kubectl() -> PathBuf {
    cluster::env().bin.join("kubectl")
}

/// A kubeconfig authenticating as `namespace/account` with a fresh token, written to a temp file.
struct TokenKubeconfig {
    path: PathBuf,
    token: String,
}

impl TokenKubeconfig {
    fn new(namespace: &str, account: &str) -> TokenKubeconfig {
        let token =
            cluster::kubectl(&["create", "token", account, "-n", namespace, "--duration", "1h"]).trim().to_string();
        let env = cluster::env();
        let path = std::env::temp_dir().join(cluster::unique("oim-token-kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {}, certificate-authority: {}}}\nusers:\n- name: u\n  user: {{token: {token}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
                env.server, env.ca
            ),
        )
        .unwrap();
        TokenKubeconfig { path, token }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// kubectl as this account; returns (success, stderr).
    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let env = cluster::env();
        let mut full = vec!["--kubeconfig", "/dev/null", "--server", &env.server, "--certificate-authority", &env.ca];
        full.extend(["--token", &self.token]);
        full.extend_from_slice(args);
        let (success, _, err) = run(&kubectl(), &full, None);
        (success, err)
    }
}

impl Drop for TokenKubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An H100 node of `scenario` and an OIMService that fits it; waits until the service is Ready.
async fn serve_to_ready(client: &kube::Client, namespace: &str, scenario: &str) -> KwokNode {
    let node = KwokNode::create(client, scenario, &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), namespace);
    svcs.create(
        &PostParams::default(),
        &service("llama31-8b-latency", "meta-llama/Llama-3.1-8B-Instruct", "latency", scenario),
    )
    .await
    .unwrap();
    let ready = cluster::wait_for(&svcs, "llama31-8b-latency", Duration::from_secs(120), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
    })
    .await;
    assert_eq!(ready.status.unwrap().accelerator.as_deref(), Some("1x h100-sxm-80gb"));
    node
}

fn assert_forbidden(as_operator: &TokenKubeconfig, what: &str, args: &[&str]) {
    let (success, err) = as_operator.kubectl(args);
    assert!(!success && err.contains(" is forbidden: "), "{what} must be refused by RBAC, got: {err}");
}

#[tokio::test]
async fn kubectl_apply_k_config_default_installs_an_operator_whose_rbac_is_enough_and_no_more() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "kustomize", &[]).await;
    let k = kubectl();
    // Server-side, next to the tests' own apply of the same CRDs. (A dry run first would fail on
    // a cluster without oim-system: dry runs create no namespace.)
    ok(&k, &["apply", "--server-side", "--field-manager", "oim-tests", "-k", &format!("{ROOT}/config/default")], None);
    ok(&k, &["apply", "-k", &format!("{ROOT}/config/default"), "--dry-run=server"], None);
    for (kind, name) in [
        ("clusterrole", "oim-operator"),
        ("clusterrole", "oim-operator-cluster"),
        ("clusterrolebinding", "oim-operator"),
        ("clusterrolebinding", "oim-operator-cluster"),
    ] {
        ok(&k, &["get", kind, name], None);
    }
    for (kind, name) in
        [("serviceaccount", "oim-operator"), ("deployment", "oim-operator"), ("rolebinding", "oim-operator-agent")]
    {
        ok(&k, &["get", "-n", "oim-system", kind, name], None);
    }

    let token = TokenKubeconfig::new("oim-system", "oim-operator");
    let _operator = Operator::with_kubeconfig(
        token.path(),
        &["--catalog", &format!("{ROOT}/profiles"), "--watch-namespaces", &ns.name],
    );
    let node = serve_to_ready(&client, &ns.name, "install-kustomize").await;

    assert_forbidden(&token, "reading Secrets in bulk", &["get", "secrets", "-n", &ns.name]);
    assert_forbidden(&token, "creating a Secret", &["create", "secret", "generic", "x", "-n", &ns.name]);
    assert_forbidden(&token, "deleting a Node", &["delete", "node", &node.name, "--dry-run=server"]);
    assert_forbidden(
        &token,
        "creating a ClusterRoleBinding to cluster-admin",
        &[
            "create",
            "clusterrolebinding",
            "oim-escalate",
            "--clusterrole=cluster-admin",
            "--serviceaccount=oim-system:oim-operator",
        ],
    );
    node.delete(&client).await;
    ns.cleanup().await;
}

/// The chart's CRD file with a new optional field in OIMService's spec, as a chart upgrade ships.
fn crds_with_new_field(text: &str) -> String {
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap();
    let svc = docs.iter_mut().find(|d| d["spec"]["names"]["kind"] == "OIMService").unwrap();
    svc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["chartUpgradeProbe"] =
        serde_json::json!({"type": "string", "description": "added by the chart upgrade test"});
    docs.iter().map(|d| format!("---\n{}\n", serde_json::to_string(d).unwrap())).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn live_crd_has_probe(k: &Path) -> bool {
    let out = ok(k, &["get", "crd", "oimservices.oim.opea.dev", "-o", "json"], None);
    let crd: Value = serde_json::from_str(&out).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        .get("chartUpgradeProbe")
        .is_some()
}

#[tokio::test]
async fn the_helm_chart_lints_installs_every_object_serves_with_its_own_rbac_and_upgrades_its_crds() {
    let Some(helm) = packaging_tool("helm") else { return };
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let k = kubectl();
    let chart = format!("{ROOT}/charts/oim-operator");
    let release_ns = TestNs::new(&client, "chart", &[]).await;
    let served = TestNs::new(&client, "chart-served", &[]).await;
    let rel = &release_ns.name;
    let watch = format!("watchNamespaces={{{}}}", served.name);

    // A release left by an interrupted run holds the cluster-scoped names.
    let leftovers: Vec<Value> =
        serde_json::from_str(&ok(&helm, &["list", "-A", "-f", "^oimchart$", "-o", "json"], None)).unwrap();
    for old in leftovers {
        ok(&helm, &["uninstall", "oimchart", "-n", old["namespace"].as_str().unwrap(), "--wait"], None);
    }

    ok(&helm, &["lint", "--strict", &chart, "--set", &watch], None);
    let manifests = ok(&helm, &["template", "oimchart", &chart, "-n", rel, "--set", &watch], None);
    assert!(!manifests.contains("SecurityContextConstraints"), "no OpenShift objects on plain Kubernetes");
    ok(&k, &["apply", "--dry-run=server", "-f", "-"], Some(&manifests));
    let on_openshift = ok(
        &helm,
        &[
            "template",
            "oimchart",
            &chart,
            "-n",
            rel,
            "--api-versions",
            "security.openshift.io/v1/SecurityContextConstraints",
        ],
        None,
    );
    assert!(on_openshift.contains("kind: SecurityContextConstraints"), "the agent's SCC where the API exists");

    // The CRDs already exist (the other tests installed them): Helm adopts them.
    for crd in ["oimservices.oim.opea.dev", "oimcaches.oim.opea.dev"] {
        let namespace = format!("meta.helm.sh/release-namespace={rel}");
        ok(&k, &["annotate", "crd", crd, "meta.helm.sh/release-name=oimchart", &namespace, "--overwrite"], None);
        ok(&k, &["label", "crd", crd, "app.kubernetes.io/managed-by=Helm", "--overwrite"], None);
    }
    ok(&helm, &["install", "oimchart", &chart, "-n", rel, "--set", &watch], None);
    let installed = ok(&helm, &["get", "manifest", "oimchart", "-n", rel], None);
    let names = ok(&k, &["get", "-f", "-", "-o", "name"], Some(&installed));
    for kind in [
        "customresourcedefinition",
        "clusterrole",
        "clusterrolebinding",
        "role",
        "rolebinding",
        "serviceaccount",
        "deployment",
        "service/",
    ] {
        assert!(names.contains(kind), "helm install created a {kind}: {names}");
    }
    assert!(
        ok(&k, &["get", "rolebinding", "oimchart-oim-operator", "-n", &served.name, "-o", "name"], None)
            .contains("rolebinding"),
        "the namespaced rules are bound in the watched namespace only"
    );

    let token = TokenKubeconfig::new(rel, "oimchart-oim-operator");
    {
        let _operator = Operator::with_kubeconfig(
            token.path(),
            &["--catalog", &format!("{ROOT}/profiles"), "--watch-namespaces", &served.name, "--agent-namespace", rel],
        );
        let node = serve_to_ready(&client, &served.name, "install-chart").await;
        // The node agent's objects are within the chart's rules too: no escalate, no bind.
        let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), rel);
        cluster::wait_until("the node agent DaemonSet", Duration::from_secs(60), || async {
            daemonsets.get_opt("oim-node-agent").await.ok().flatten()
        })
        .await;
        ok(&k, &["get", "clusterrolebinding", &format!("oim-node-agent-{rel}")], None);
        assert_forbidden(
            &token,
            "a Deployment outside the watched namespaces",
            &["create", "deployment", "x", "--image=x", "-n", "default", "--dry-run=server"],
        );
        assert_forbidden(&token, "creating a Secret", &["create", "secret", "generic", "x", "-n", &served.name]);
        node.delete(&client).await;
    }

    // `helm upgrade` with a changed CRD updates it (the CRDs are templates), and back; no other
    // test applies the CRDs meanwhile.
    let crds_lock = cluster::CRDS.lock().unwrap_or_else(|e| e.into_inner());
    let upgraded = std::env::temp_dir().join(cluster::unique("oim-chart"));
    copy_dir(Path::new(&chart), &upgraded);
    let crds = std::fs::read_to_string(format!("{chart}/files/crds.yaml")).unwrap();
    std::fs::write(upgraded.join("files/crds.yaml"), crds_with_new_field(&crds)).unwrap();
    assert!(!live_crd_has_probe(&k));
    ok(&helm, &["upgrade", "oimchart", upgraded.to_str().unwrap(), "-n", rel, "--reuse-values"], None);
    assert!(live_crd_has_probe(&k), "helm upgrade applied the new CRD field");
    ok(&helm, &["upgrade", "oimchart", &chart, "-n", rel, "--reuse-values"], None);
    assert!(!live_crd_has_probe(&k), "and the next upgrade removed it");
    drop(crds_lock);
    let _ = std::fs::remove_dir_all(&upgraded);

    // Uninstall keeps the CRDs (and so every OIMService and OIMCache).
    ok(&helm, &["uninstall", "oimchart", "-n", rel, "--wait"], None);
    ok(&k, &["get", "crd", "oimservices.oim.opea.dev", "oimcaches.oim.opea.dev"], None);
    let (gone, _, _) = run(&k, &["get", "clusterrole", "oimchart-oim-operator"], None);
    assert!(!gone, "the chart's ClusterRole went with the release");
    served.cleanup().await;
    release_ns.cleanup().await;
}

#[test]
fn the_copies_of_the_crds_and_rules_match_their_sources() {
    let read = |p: &str| std::fs::read_to_string(format!("{ROOT}/{p}")).unwrap_or_else(|e| panic!("{p}: {e}"));
    let crds = read("crds/oim.opea.dev.yaml");
    for copy in ["config/crd/oim.opea.dev.yaml", "charts/oim-operator/files/crds.yaml"] {
        assert!(read(copy) == crds, "{copy} differs from crds/oim.opea.dev.yaml: run `make manifests`");
    }
    assert!(
        read("config/samples/llama31-8b-latency.yaml") == read("examples/llama31-8b-latency.yaml"),
        "config/samples/llama31-8b-latency.yaml differs from examples/: copy it again"
    );
    assert!(
        read("charts/oim-operator/files/role.yaml") == read("config/rbac/role.yaml"),
        "charts/oim-operator/files/role.yaml differs from config/rbac/role.yaml: run `make manifests`"
    );
    let rules: Vec<Value> = serde_saphyr::from_multiple(&read("config/rbac/role.yaml")).unwrap();
    for role in &rules {
        for rule in role["rules"].as_array().unwrap() {
            for field in ["verbs", "resources", "apiGroups"] {
                assert!(
                    !rule[field].as_array().unwrap().iter().any(|v| v == "*"),
                    "{}: no wildcard {field}",
                    role["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn make_bundle_output_is_checked_in() {
    let out = std::env::temp_dir().join(cluster::unique("oim-bundle")).join("bundle");
    let status = Command::new("python3").arg(format!("{ROOT}/hack/bundle.py")).arg(&out).status().unwrap();
    assert!(status.success(), "hack/bundle.py failed");
    for file in [
        "manifests/oim-operator.clusterserviceversion.yaml",
        "manifests/oimservices.oim.opea.dev.yaml",
        "manifests/oimcaches.oim.opea.dev.yaml",
        "metadata/annotations.yaml",
    ] {
        let fresh = std::fs::read_to_string(out.join(file)).unwrap();
        let checked_in = std::fs::read_to_string(format!("{ROOT}/bundle/{file}")).unwrap();
        assert!(fresh == checked_in, "bundle/{file} is stale: run `make bundle`");
    }
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

#[tokio::test]
async fn the_olm_bundle_validates_and_its_csv_and_examples_apply_once_the_olm_crds_are_installed() {
    let Some(validate) = packaging_tool("bundle-validate") else { return };
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let k = kubectl();
    let out = ok(&validate, &[&format!("{ROOT}/bundle"), "1.36"], None);
    assert!(!out.contains("ERROR"), "{out}");
    eprintln!("bundle validator warnings:\n{out}");

    let olm_crds = validate.parent().unwrap().join("../olm-crds");
    let olm_crds = olm_crds.to_str().unwrap();
    ok(&k, &["apply", "--server-side", "--field-manager", "oim-tests", "-f", olm_crds], None);
    ok(&k, &["wait", "--for=condition=Established", "--timeout=60s", "-f", olm_crds], None);
    let ns = TestNs::new(&client, "olm", &[]).await;
    let csv_path = format!("{ROOT}/bundle/manifests/oim-operator.clusterserviceversion.yaml");
    let mut csv: Value = serde_saphyr::from_str(&std::fs::read_to_string(&csv_path).unwrap()).unwrap();
    // OLM puts the CSV into the namespace it installs to; the bundle says "placeholder".
    csv["metadata"]["namespace"] = Value::String(ns.name.clone());
    ok(&k, &["apply", "--dry-run=server", "-f", "-"], Some(&csv.to_string()));
    let examples: Vec<Value> =
        serde_json::from_str(csv["metadata"]["annotations"]["alm-examples"].as_str().unwrap()).unwrap();
    assert!(examples.len() >= 2, "an OIMService and an OIMCache example");
    for example in &examples {
        ok(&k, &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(&example.to_string()));
    }
    ns.cleanup().await;
}

#[test]
fn the_bundle_image_renders_into_a_file_based_catalog_with_opm() {
    let (Some(_crane), Some(opm)) = (packaging_tool("crane"), packaging_tool("opm")) else { return };
    let catalog = std::env::temp_dir().join(cluster::unique("oim-catalog"));
    ok(
        Path::new("bash"),
        &[&format!("{ROOT}/hack/catalog.sh"), &cluster::env().registry, catalog.to_str().unwrap()],
        None,
    );
    let fbc = std::fs::read_to_string(catalog.join("oim-operator/catalog.yaml")).unwrap();
    assert!(fbc.contains("schema: olm.bundle") && fbc.contains("name: oim-operator.v0.1.0"), "{fbc}");
    ok(&opm, &["validate", catalog.to_str().unwrap()], None);
    let _ = std::fs::remove_dir_all(&catalog);
}

#[test]
fn the_image_built_without_a_runtime_is_in_the_registry_and_runs_from_its_unpacked_root() {
    let Some(crane) = packaging_tool("crane") else { return };
    let reference = format!("{}/opea/oim:it", cluster::env().registry);
    let script = format!("{ROOT}/hack/image.sh");
    let out = Command::new("bash")
        .args([&script, &reference, env!("CARGO_BIN_EXE_oim")])
        .env("CRANE", &crane)
        .output()
        .unwrap();
    assert!(out.status.success(), "hack/image.sh: {}", String::from_utf8_lossy(&out.stderr));

    // Pulled back from the registry, not the build directory.
    let config: Value = serde_json::from_str(&ok(&crane, &["config", "--insecure", &reference], None)).unwrap();
    assert_eq!(config["config"]["User"], "65532:65532", "non-root");
    assert_eq!(config["os"], "linux");
    let labels = &config["config"]["Labels"];
    for label in [
        "org.opencontainers.image.title",
        "org.opencontainers.image.version",
        "org.opencontainers.image.source",
        "org.opencontainers.image.licenses",
        "org.opencontainers.image.revision",
        "name",
        "vendor",
        "version",
        "release",
        "summary",
        "description",
    ] {
        assert!(labels[label].as_str().is_some_and(|v| !v.is_empty()), "label {label} is set: {labels}");
    }
    let root = std::env::temp_dir().join(cluster::unique("oim-image-root"));
    std::fs::create_dir_all(&root).unwrap();
    let tar = root.with_extension("tar");
    ok(&crane, &["export", "--insecure", &reference, tar.to_str().unwrap()], None);
    ok(Path::new("tar"), &["-xf", tar.to_str().unwrap(), "-C", root.to_str().unwrap()], None);
    let root_s = root.to_str().unwrap();
    let version = ok(Path::new("chroot"), &["--userspec=65532:65532", root_s, "/usr/bin/oim", "--version"], None);
    assert_eq!(version.trim(), concat!("oim ", env!("CARGO_PKG_VERSION")));
    let listed = ok(
        Path::new("chroot"),
        &[
            "--userspec=65532:65532",
            root_s,
            "/usr/bin/oim",
            "profiles",
            "list",
            "--model",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--catalog",
            "/usr/share/oim/profiles",
        ],
        None,
    );
    assert!(listed.contains("vllm-nvidia-h100-sxm-80gb-x1-latency-bf16"), "the seed catalog is in the image: {listed}");
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&tar);
}
