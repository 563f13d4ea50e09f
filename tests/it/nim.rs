//! NIM users move over by the table in docs/nim-conversion.md: the table itself converts full
//! NIMServices (tests/fixtures/nim/); the result is an OIMService field for field
//! — in the Rust types, under CEL, in the API server (nothing pruned) — and renders into the pod
//! and objects the API server accepts, with the platform's CRDs installed.

use std::process::Command;

use serde_json::{Map, Value, json};

use crate::cluster;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every NIMService spec field (apps.nvidia.com/v1alpha1, NIM Operator 3.x): the table must say
/// where each goes.
const NIM_SPEC_FIELDS: &[&str] = &[
    "image",
    "command",
    "args",
    "env",
    "authSecret",
    "initContainers",
    "sidecarContainers",
    "userID",
    "groupID",
    "labels",
    "annotations",
    "storage",
    "resources",
    "draResources",
    "nodeSelector",
    "tolerations",
    "affinity",
    "podAffinity",
    "schedulerName",
    "priorityClassName",
    "runtimeClassName",
    "replicas",
    "scale",
    "expose",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "metrics",
    "proxy",
    "multiNode",
    "inferencePlatform",
];

/// The conversion table's rows: NIM path -> OIM path (None: left out).
fn table() -> Vec<(String, Option<String>)> {
    let text = std::fs::read_to_string(format!("{ROOT}/docs/nim-conversion.md")).unwrap();
    let mut rows = vec![];
    for line in text.lines().filter(|l| l.starts_with("| `spec.")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let path = |c: &str| c.strip_prefix('`').and_then(|c| c.strip_suffix('`')).map(str::to_string);
        let nim = path(cells[1]).unwrap_or_else(|| panic!("a row without a NIM path: {line}"));
        let oim = match cells[2] {
            "—" => None,
            c => Some(path(c).unwrap_or_else(|| panic!("an OIM cell that is neither a path nor —: {line}"))),
        };
        rows.push((nim, oim));
    }
    assert!(rows.len() > 40, "docs/nim-conversion.md lost its table");
    rows
}

fn set(out: &mut Value, path: &str, value: Value) {
    let mut at = out;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        at = at.as_object_mut().unwrap().entry(p.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
    let last = parts[parts.len() - 1].to_string();
    match (at.get_mut(&last), value) {
        (Some(Value::Object(old)), Value::Object(new)) => old.extend(new),
        (_, value) => {
            at.as_object_mut().unwrap().insert(last, value);
        }
    }
}

/// Converts `value` at `path` by the table: a row for the path moves the whole subtree, unless
/// rows exist for fields under it; a field no row covers is an error.
fn convert(path: &str, value: &Value, rows: &[(String, Option<String>)], out: &mut Value, dropped: &mut Vec<String>) {
    let deeper = rows.iter().any(|(nim, _)| nim.starts_with(&format!("{path}.")));
    if let (true, Value::Object(fields)) = (deeper, value) {
        for (k, v) in fields {
            convert(&format!("{path}.{k}"), v, rows, out, dropped);
        }
        return;
    }
    match rows.iter().find(|(nim, _)| nim == path) {
        Some((_, Some(oim))) => set(out, oim, value.clone()),
        Some((_, None)) => dropped.push(path.to_string()),
        None => panic!("{path} is not in docs/nim-conversion.md"),
    }
}

/// The NIMService fixtures, the model each serves (the one field OIM needs that NIM lacks), and
/// exactly the fields the table leaves out of it.
const FIXTURES: &[(&str, &str, &[&str])] = &[
    (
        "nimservice.yaml",
        "meta-llama/Llama-3.1-8B-Instruct",
        &[
            "spec.command",
            "spec.initContainers",
            "spec.sidecarContainers",
            "spec.storage.pvc.annotations",
            "spec.scale.annotations",
            "spec.expose.service.name",
            "spec.expose.service.grpcPort",
            "spec.expose.service.metricsPort",
            "spec.expose.service.labels",
            "spec.expose.ingress.spec",
        ],
    ),
    (
        "nimservice-405b.yaml",
        "meta-llama/Llama-3.1-405B-Instruct",
        &[
            "spec.storage.nimCache.profile",
            "spec.multiNode.backendType",
            "spec.multiNode.parallelism.pipeline",
            "spec.multiNode.ray",
        ],
    ),
];

/// A fixture converted by the table, plus the model; and the paths the table left out.
fn converted_from(fixture: &str, model: &str) -> (Value, Vec<String>) {
    let text = std::fs::read_to_string(format!("{ROOT}/tests/fixtures/nim/{fixture}")).unwrap();
    let nim: Value = serde_saphyr::from_str(&text).unwrap();
    let rows = table();
    let mut spec = json!({});
    let mut dropped = vec![];
    for (k, v) in nim["spec"].as_object().unwrap() {
        convert(&format!("spec.{k}"), v, &rows, &mut spec, &mut dropped);
    }
    let mut spec = spec["spec"].take();
    spec["model"] = json!({"name": model});
    let obj = json!({
        "apiVersion": "oim.opea.dev/v1alpha1", "kind": "OIMService",
        "metadata": {"name": nim["metadata"]["name"]},
        "spec": spec,
    });
    (obj, dropped)
}

/// The single-node fixture, converted.
fn converted() -> (Value, Vec<String>) {
    converted_from(FIXTURES[0].0, FIXTURES[0].1)
}

#[test]
fn the_table_covers_every_nimservice_field_and_converts_the_full_fixture_into_a_valid_oimservice() {
    let rows = table();
    for f in NIM_SPEC_FIELDS {
        let p = format!("spec.{f}");
        assert!(
            rows.iter().any(|(nim, _)| *nim == p || nim.starts_with(&format!("{p}."))),
            "NIMService field {p} is missing from docs/nim-conversion.md"
        );
    }
    for (fixture, model, left_out) in FIXTURES {
        let (obj, mut dropped) = converted_from(fixture, model);
        // What has no counterpart is dropped, and only that: a field the table wrongly marks `—`
        // (or a counterpart it forgets) fails here.
        dropped.sort();
        let mut want: Vec<String> = left_out.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(dropped, want, "{fixture}: the fields the table leaves out");
        // Field for field: the typed OIMService reads every converted field and writes it back.
        let svc: oim::api::OIMService = serde_json::from_value(obj.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&svc).unwrap()["spec"],
            obj["spec"],
            "{fixture}: a converted field the OIM types do not know"
        );
        if let Err(e) = svc.validate_cel() {
            panic!("{fixture}: the converted NIMService fails OIM's CEL rules: {e}");
        }
    }
    let (obj, _) = converted();
    assert_eq!(
        obj["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"],
        5
    );
    assert!(obj["spec"]["affinity"]["nodeAffinity"].is_object(), "podAffinity joins, never replaces, affinity");
    let (multi, _) = converted_from(FIXTURES[1].0, FIXTURES[1].1);
    assert_eq!(multi["spec"]["profile"]["tensorParallelism"], 8, "NIM's GPUs per pod narrow the profiles");
    assert_eq!(multi["spec"]["draResources"][0]["claimCreationSpec"]["devices"][0]["count"], 8);
    assert_eq!(multi["spec"]["storage"]["oimCache"]["name"], "llama31-405b");
}

fn oim(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oim")).args(args).current_dir(ROOT).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test]
async fn a_converted_nimservice_is_accepted_by_the_api_server_as_written_and_renders_its_fields_into_the_pod() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    cluster::install_oim_crds();
    cluster::platform_apis(true);
    cluster::optional_apis(true);
    let ns = cluster::TestNs::new(&client, "nim-convert", &[]).await;
    // The API server keeps every field of each: nothing is pruned or rewritten.
    for (fixture, model, _) in FIXTURES {
        let (mut obj, _) = converted_from(fixture, model);
        obj["metadata"]["namespace"] = json!(ns.name);
        let (ok, out, err) =
            cluster::tool_stdin("kubectl", &["create", "--dry-run=server", "-o", "json", "-f", "-"], &obj.to_string());
        assert!(ok, "{fixture}: {err}");
        let stored: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(stored["spec"], obj["spec"], "{fixture}: the API server pruned or changed a converted field");
    }
    let (mut obj, _) = converted();
    obj["metadata"]["namespace"] = json!(ns.name);

    // Rendered offline for a node in the zone the NIMService asks for, standalone and on KServe:
    // the objects pass server-side dry-run.
    let node =
        cluster::KwokNode::create(&client, "nim-convert", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    cluster::kubectl(&["label", "node", &node.name, "topology.kubernetes.io/zone=zone-a", "--overwrite"]);
    let live = cluster::kubectl(&["get", "node", &node.name, "-o", "json"]);
    let dir = std::env::temp_dir().join(cluster::unique("nim-convert"));
    std::fs::create_dir_all(&dir).unwrap();
    let inventory = dir.join("nodes.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [serde_json::from_str::<Value>(&live).unwrap()]});
    std::fs::write(&inventory, list.to_string()).unwrap();
    for platform in ["standalone", "kserve"] {
        obj["spec"]["inferencePlatform"] = json!(platform);
        // Standalone, the OIM-only inferencePool joins the router (KServe refuses it).
        let router = obj["spec"]["expose"]["router"].as_object_mut().unwrap();
        match platform {
            "standalone" => router.insert("inferencePool".into(), json!({"endpointPickerRef": {"name": "vllm-epp"}})),
            _ => router.remove("inferencePool"),
        };
        let file = dir.join(format!("{platform}.yaml"));
        std::fs::write(&file, obj.to_string()).unwrap();
        let (ok, yaml, err) = oim(&[
            "render",
            "-f",
            file.to_str().unwrap(),
            "--inventory",
            inventory.to_str().unwrap(),
            "--catalog",
            "profiles",
        ]);
        assert!(ok, "{err}");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
        let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).cloned();
        assert!(kind("HTTPRoute").is_some(), "router.gateway renders an HTTPRoute");
        assert_eq!(kind("InferencePool").is_some(), platform == "standalone", "{platform}: the InferencePool");
        let pod = match platform {
            "standalone" => kind("Deployment").expect("a Deployment")["spec"]["template"]["spec"].clone(),
            _ => {
                assert!(kind("Deployment").is_none(), "KServe makes the Deployment");
                kind("InferenceService").expect("an InferenceService")["spec"]["predictor"].clone()
            }
        };
        for (field, want) in
            [("runtimeClassName", "nvidia"), ("schedulerName", "gpu-binpack"), ("priorityClassName", "inference-high")]
        {
            assert_eq!(pod[field], want, "{platform}: {field}");
        }
        assert_eq!(
            (pod["securityContext"]["runAsUser"].as_i64(), pod["securityContext"]["runAsGroup"].as_i64()),
            (Some(1000), Some(2000))
        );
        assert_eq!(pod["nodeSelector"]["topology.kubernetes.io/zone"], "zone-a");
        assert!(
            pod["tolerations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["key"] == "dedicated" && t["tolerationSeconds"] == 3600)
        );
        assert!(pod["affinity"]["podAffinity"].is_object() && pod["affinity"]["nodeAffinity"].is_object());
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "docker.io/vllm/vllm-openai:v0.11.0");
        assert!(c["args"].as_array().unwrap().iter().any(|a| a == "--enable-prefix-caching"));
        assert!(c["env"].as_array().unwrap().iter().any(|e| e["name"] == "VLLM_LOGGING_LEVEL"));
        assert_eq!(c["resources"]["limits"]["memory"], "48Gi");
        assert_eq!(c["resources"]["requests"]["cpu"], "6");
        assert_eq!(c["livenessProbe"]["periodSeconds"], 20);
        assert_eq!(c["startupProbe"]["failureThreshold"], 120);
        let (ok, out, err) = cluster::tool_stdin(
            "kubectl",
            &["apply", "--dry-run=server", "--server-side", "-n", &ns.name, "-f", "-"],
            &yaml,
        );
        assert!(ok, "{platform}: {err}");
        assert!(out.contains("httproute.gateway.networking.k8s.io/llama31-8b"), "{out}");
        if platform == "standalone" {
            assert!(out.contains("inferencepool.inference.networking.k8s.io/llama31-8b"), "{out}");
        }
        if platform == "kserve" {
            assert!(out.contains("inferenceservice.serving.kserve.io/llama31-8b"), "{out}");
        }
    }
    cluster::platform_apis(false);
    cluster::optional_apis(false);
    ns.cleanup().await;
    node.delete(&client).await;
}
