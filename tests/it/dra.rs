//! Dynamic Resource Allocation on the local control plane: no DRA driver runs under kwok, so the
//! test publishes the ResourceSlice a driver would. A node with no extended resources but two
//! H100s in a slice serves Llama 3.1 70B on the TP2 profile through a resource claim, whose
//! allocation a second service sees as taken; without the slice, the service says why nothing
//! fits; `oim render` renders the same offline.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use oim::api::{OIMService, ServiceState};
use oim::hardware::inventory::Inventory;
use oim::hardware::slices::ResourceSlice;
use oim::render::dra::ResourceClaimTemplate;

use crate::cluster::{self, KwokNode, SCENARIO_LABEL, TestNs};
use crate::operator::{Operator, condition};

/// The slice NVIDIA's DRA driver (`gpu.nvidia.com`) publishes for a node with two H100s, owned
/// by the node as a driver's is (the garbage collector removes it with the node).
fn h100_slice(node: &str, node_uid: Option<&str>) -> ResourceSlice {
    let device = |i: u32| {
        serde_json::json!({
            "name": format!("gpu-{i}"),
            "attributes": {
                "type": {"string": "gpu"},
                "productName": {"string": "NVIDIA H100 80GB HBM3"},
                "architecture": {"string": "Hopper"},
                "uuid": {"string": format!("GPU-{node}-{i}")},
            },
            "capacity": {"memory": {"value": "81559Mi"}},
        })
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{node}-gpu.nvidia.com"),
            "ownerReferences": node_uid.map(|uid| vec![serde_json::json!({"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid})]),
        },
        "spec": {
            "driver": "gpu.nvidia.com",
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [device(0), device(1)],
        },
    }))
    .unwrap()
}

/// The DeviceClass the driver installs; the scheduler allocates claims of this class.
fn device_class() {
    let class = serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
        "metadata": {"name": "gpu.nvidia.com"},
        "spec": {"selectors": [{"cel": {"expression": "device.driver == 'gpu.nvidia.com'"}}]},
    });
    let (ok, _, err) = cluster::tool_stdin("kubectl", &["apply", "--server-side", "-f", "-"], &class.to_string());
    assert!(ok, "DeviceClass gpu.nvidia.com: {err}");
}

/// Llama 3.1 70B for latency with one generated claim; on the scenario's nodes when given.
fn service(scenario: Option<&str>) -> OIMService {
    let selector = scenario.map(|s| format!("  nodeSelector: {{{SCENARIO_LABEL}: {s}}}\n")).unwrap_or_default();
    serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: llama70b}}\nspec:\n  model: {{name: meta-llama/Llama-3.1-70B-Instruct}}\n  profile: {{kpi: latency, precision: bf16}}\n{selector}  draResources:\n    - claimCreationSpec:\n        devices:\n          - name: gpus\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn two_h100s_published_in_a_resource_slice_serve_70b_through_a_claim_and_their_removal_is_explained() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    cluster::install_oim_crds();
    device_class();
    // Its own scenario label: a node left by an interrupted run never takes this run's pod.
    let scenario = &cluster::unique("dra");
    let ns = TestNs::new(&client, "dra", &[]).await;
    // No accelerators in the agent's inventory and no extended resources: only the slice counts.
    let bare = Inventory { memory_mib: 1_048_576, ..Inventory::default() };
    let node = KwokNode::create(&client, scenario, &bare, None).await;
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let uid = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()).get(&node.name).await.unwrap().metadata.uid;
    let slice = h100_slice(&node.name, uid.as_deref());
    slices.create(&PostParams::default(), &slice).await.expect("the API server accepts the driver's slice");
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    svcs.create(&PostParams::default(), &service(Some(scenario))).await.unwrap();

    // Selected from the slice's two H100s: the TP2 profile, and a pod that claims them.
    let selected = cluster::wait_for(&svcs, "llama70b", Duration::from_secs(90), |s| {
        condition(s, "ProfileSelected").is_some_and(|c| c.status == "True")
    })
    .await;
    let status = selected.status.clone().unwrap();
    assert_eq!(status.profile.unwrap().name, "vllm-nvidia-h100-sxm-80gb-x2-latency-bf16");
    assert_eq!(status.accelerator.as_deref(), Some("2x h100-sxm-80gb"));
    let templates: Api<ResourceClaimTemplate> = Api::namespaced(client.clone(), &ns.name);
    let t = cluster::wait_for(&templates, "llama70b-dra-0", Duration::from_secs(60), |_| true).await;
    let exact = t.spec.spec.devices.unwrap().requests.unwrap().remove(0).exactly.unwrap();
    assert_eq!((exact.device_class_name.as_str(), exact.count), ("gpu.nvidia.com", Some(2)));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = cluster::wait_for(&deployments, "llama70b", Duration::from_secs(60), |_| true).await;
    let pod_spec = d.spec.unwrap().template.spec.unwrap();
    let claim = &pod_spec.resource_claims.as_ref().unwrap()[0];
    assert_eq!(claim.resource_claim_template_name.as_deref(), Some("llama70b-dra-0"));
    let resources = pod_spec.containers[0].resources.clone().unwrap();
    assert!(!resources.limits.unwrap_or_default().contains_key("nvidia.com/gpu"), "the claim supplies the GPUs");
    assert_eq!(resources.claims.unwrap()[0].name, claim.name);

    // The scheduler allocates the slice's devices to the pod's claim and binds it to the node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = cluster::wait_until("the llama70b pod scheduled through its claim", Duration::from_secs(90), || async {
        let list = pods.list(&ListParams::default().labels("app.kubernetes.io/instance=llama70b")).await.ok()?;
        list.items.into_iter().find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
    })
    .await;
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some(node.name.as_str()));
    cluster::wait_for(&svcs, "llama70b", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
    })
    .await;

    // The pod's claim holds both devices: a second service finds none free (its own would not
    // count against it), and says so.
    let mut second = service(Some(scenario));
    second.metadata.name = Some("llama70b-b".into());
    svcs.create(&PostParams::default(), &second).await.unwrap();
    let waiting = cluster::wait_for(&svcs, "llama70b-b", Duration::from_secs(60), |s| {
        condition(s, "ProfileSelected").is_some_and(|c| c.status == "False")
    })
    .await;
    let rejected = waiting.status.unwrap().profile.unwrap().rejected;
    let tp2 = rejected.iter().find(|r| r.name == "vllm-nvidia-h100-sxm-80gb-x2-latency-bf16").unwrap();
    assert!(tp2.reason.contains("InsufficientFreeAccelerators") && tp2.reason.contains("free: 0"), "{}", tp2.reason);
    svcs.delete("llama70b-b", &DeleteParams::default()).await.unwrap();

    // Switched to the team's own template: the operator's is pruned, the pod claims the team's.
    let own = serde_json::json!({"spec": {"draResources": [{"resourceClaimTemplateName": "team-gpus"}]}});
    svcs.patch("llama70b", &PatchParams::default(), &Patch::Merge(&own)).await.unwrap();
    cluster::wait_until("the operator's ResourceClaimTemplate pruned", Duration::from_secs(60), || async {
        templates.get_opt("llama70b-dra-0").await.ok().flatten().is_none().then_some(())
    })
    .await;
    cluster::wait_for(&deployments, "llama70b", Duration::from_secs(30), |d| {
        let pod = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let claims = pod.and_then(|p| p.resource_claims.as_ref());
        claims.is_some_and(|c| c[0].resource_claim_template_name.as_deref() == Some("team-gpus"))
    })
    .await;

    // The driver withdraws the slice: its watch wakes the service, nothing fits, and the
    // condition says why.
    slices.delete(&slice.metadata.name.clone().unwrap(), &DeleteParams::default()).await.unwrap();
    let pending = cluster::wait_for(&svcs, "llama70b", Duration::from_secs(60), |s| {
        condition(s, "ProfileSelected").is_some_and(|c| c.status == "False")
    })
    .await;
    let c = condition(&pending, "ProfileSelected").unwrap();
    assert_eq!(c.reason, "NoFeasibleProfile");
    let why = format!("node {} publishes no accelerator in a ResourceSlice", node.name);
    assert!(c.message.contains(&why) && c.message.contains("install the vendor's DRA driver"), "{}", c.message);

    ns.cleanup().await;
    node.delete(&client).await;
}

#[test]
fn oim_render_takes_the_slices_offline_and_prints_the_claim_template_and_the_claiming_pod() {
    let dir = std::env::temp_dir().join(cluster::unique("dra-render"));
    std::fs::create_dir_all(&dir).unwrap();
    let svc = dir.join("svc.yaml");
    std::fs::write(&svc, serde_saphyr::to_string(&service(None)).unwrap()).unwrap();
    // The node as `oim detect` would see it with the driver's devices hidden: no accelerators.
    let inventory = dir.join("inventory.yaml");
    let bare = Inventory { node: "gpu-node-1".into(), memory_mib: 1_048_576, ..Inventory::default() };
    std::fs::write(&inventory, serde_saphyr::to_string(&bare).unwrap()).unwrap();
    let slices = dir.join("slices.yaml");
    let mut slice = serde_json::to_value(h100_slice("gpu-node-1", None)).unwrap();
    slice["apiVersion"] = "resource.k8s.io/v1".into();
    slice["kind"] = "ResourceSlice".into();
    std::fs::write(&slices, serde_saphyr::to_string(&slice).unwrap()).unwrap();
    let catalog = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "render",
            "-f",
            svc.to_str().unwrap(),
            "--inventory",
            inventory.to_str().unwrap(),
            "--catalog",
            catalog,
        ];
        args.extend(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_oim")).args(&args).output().unwrap()
    };
    let out = run(&["--resource-slices", slices.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout).unwrap();
    let template = docs.iter().find(|d| d["kind"] == "ResourceClaimTemplate").expect("a ResourceClaimTemplate");
    assert_eq!(template["apiVersion"], "resource.k8s.io/v1");
    assert_eq!(template["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"], 2);
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["resourceClaims"][0]["resourceClaimTemplateName"], "llama70b-dra-0");
    assert!(pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu").is_none());
    // No slices: nothing fits (exit 3), and the node left out is named.
    let none = run(&[]);
    assert_eq!(none.status.code(), Some(3), "{}", String::from_utf8_lossy(&none.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
