//! Where a service's profiles come from: a per-service registry the operator allows, with the
//! service's own credentials; `updatePolicy` on a re-published tag; several watched namespaces.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use oim::api::{OIMService, ServiceState};

use crate::cluster::{self, KwokNode, TestNs};
use crate::operator::{Operator, condition, service};
use crate::profiles::{docker_config, tempdir};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const PROFILE: &str = "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16";

fn push(dir: &std::path::Path, registry: &str, config: &std::path::Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(["profiles", "push", dir.to_str().unwrap(), "--registry", registry, "--registry-config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn with_source(name: &str, scenario: &str, source: &str, policy: &str) -> OIMService {
    let mut svc = service(name, MODEL, "latency", scenario);
    let profile: oim::api::ProfileSelector =
        serde_saphyr::from_str(&format!("{{kpi: latency, updatePolicy: {policy}, source: {source}}}")).unwrap();
    svc.spec.profile = Some(profile);
    svc
}

async fn pull_secret(client: &kube::Client, ns: &str, config: &std::path::Path) {
    let mut secret = Secret::default();
    secret.metadata.name = Some("profiles-pull".into());
    secret.type_ = Some("kubernetes.io/dockerconfigjson".into());
    secret.data = Some([(".dockerconfigjson".to_string(), ByteString(std::fs::read(config).unwrap()))].into());
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &secret).await.unwrap();
}

fn digest(svc: &OIMService) -> String {
    svc.status.as_ref().and_then(|s| s.profile.as_ref()).and_then(|p| p.digest.clone()).unwrap_or_default()
}

#[tokio::test]
async fn per_service_registries_are_allowed_or_refused_and_a_republished_profile_is_followed_or_reported() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let env = cluster::env();
    let prefix = cluster::unique("svc-src");
    let registry = format!("{}/{prefix}", env.auth_registry);
    let tmp = tempdir("svc-src");
    let config = docker_config(&tmp, &env.auth_registry, &env.auth_user, &env.auth_password);
    let catalog = tmp.join("catalog");
    std::fs::create_dir_all(catalog.join("llama31-8b")).unwrap();
    let original = std::fs::read_to_string(format!(
        "{}/tests/fixtures/profiles/llama31-8b/h100-latency.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    std::fs::write(catalog.join("llama31-8b/h100-latency.yaml"), &original).unwrap();
    push(&catalog, &registry, &config);

    let pinned_ns = TestNs::new(&client, "src-pinned", &[]).await;
    let auto_ns = TestNs::new(&client, "src-auto", &[]).await;
    let unwatched = TestNs::new(&client, "src-unwatched", &[]).await;
    let scenario = cluster::unique("src");
    let node = KwokNode::create(&client, &scenario, &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    for ns in [&pinned_ns.name, &auto_ns.name] {
        pull_secret(&client, ns, &config).await;
    }
    let watched = format!("{},{}", pinned_ns.name, auto_ns.name);
    let _operator = Operator::with_args(&[
        "--catalog",
        concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"),
        "--watch-namespaces",
        &watched,
        "--allowed-registries",
        &env.auth_registry,
        "--profile-refresh",
        "2",
    ]);
    let source =
        format!("{{registry: '{}', repository: {prefix}, credentialsSecret: profiles-pull}}", env.auth_registry);
    let pinned: Api<OIMService> = Api::namespaced(client.clone(), &pinned_ns.name);
    let auto: Api<OIMService> = Api::namespaced(client.clone(), &auto_ns.name);
    pinned.create(&PostParams::default(), &with_source("llm", &scenario, &source, "Pinned")).await.unwrap();
    auto.create(&PostParams::default(), &with_source("llm", &scenario, &source, "Auto")).await.unwrap();
    let refused = with_source("elsewhere", &scenario, "{registry: registry.example.com}", "Pinned");
    pinned.create(&PostParams::default(), &refused).await.unwrap();
    let ignored: Api<OIMService> = Api::namespaced(client.clone(), &unwatched.name);
    ignored.create(&PostParams::default(), &service("llm", MODEL, "latency", &scenario)).await.unwrap();

    // Both watched namespaces get a Ready service whose profile came from the private registry.
    let ready = |s: &OIMService| s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready);
    let first = cluster::wait_for(&pinned, "llm", Duration::from_secs(90), ready).await;
    cluster::wait_for(&auto, "llm", Duration::from_secs(90), ready).await;
    let profile = first.status.as_ref().unwrap().profile.clone().unwrap();
    assert_eq!(profile.name, PROFILE);
    assert!(profile.source.unwrap().contains(&format!("{}/{prefix}/", env.auth_registry)));
    let old = digest(&first);
    assert!(old.starts_with("sha256:"));
    assert_eq!(condition(&first, "ProfileUpdateAvailable").unwrap().status, "False");

    // A registry not on the allow-list is a spec error that says what to do.
    let refused = cluster::wait_for(&pinned, "elsewhere", Duration::from_secs(30), |s| s.status.is_some()).await;
    assert_eq!(refused.status.as_ref().unwrap().state, Some(ServiceState::Failed));
    let c = condition(&refused, "ProfileSelected").unwrap();
    assert_eq!(c.reason, "ProfileSourceRefused");
    assert!(c.message.contains("registry.example.com") && c.message.contains("--allowed-registries"), "{}", c.message);

    // The profile is re-published under the same tag with a new figure for max-num-seqs.
    let changed = original.replace("max-num-seqs: 64", "max-num-seqs: 48");
    std::fs::write(catalog.join("llama31-8b/h100-latency.yaml"), changed).unwrap();
    push(&catalog, &registry, &config);

    let followed =
        cluster::wait_for(&auto, "llm", Duration::from_secs(60), |s| !digest(s).is_empty() && digest(s) != old).await;
    assert_eq!(condition(&followed, "ProfileUpdateAvailable").unwrap().reason, "Auto");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &auto_ns.name);
    let d = deployments.get("llm").await.unwrap();
    let args = d.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    assert!(args.windows(2).any(|w| w == ["--max-num-seqs", "48"]), "Auto rolls to the new profile: {args:?}");

    let reported = cluster::wait_for(&pinned, "llm", Duration::from_secs(60), |s| {
        condition(s, "ProfileUpdateAvailable").is_some_and(|c| c.status == "True")
    })
    .await;
    assert_eq!(digest(&reported), old, "Pinned keeps the digest it resolved");
    let c = condition(&reported, "ProfileUpdateAvailable").unwrap();
    assert_eq!(c.reason, "NewDigestPublished");
    assert!(c.message.contains("updatePolicy: Auto"), "{}", c.message);
    let d = Api::<Deployment>::namespaced(client.clone(), &pinned_ns.name).get("llm").await.unwrap();
    let args = d.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    assert!(args.windows(2).any(|w| w == ["--max-num-seqs", "64"]), "Pinned does not roll: {args:?}");

    // A namespace the operator does not watch is left alone.
    assert!(ignored.get("llm").await.unwrap().status.is_none());
    for ns in [pinned_ns, auto_ns, unwatched] {
        ns.cleanup().await;
    }
    node.delete(&client).await;
}
