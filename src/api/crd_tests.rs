//! The generated CRDs: checked-in copy, size, structural schema, and the examples.

use std::path::Path;

use kube::CustomResourceExt;
use serde_json::Value;

use super::*;

const CRDS_FILE: &str = "crds/oim.opea.dev.yaml";

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

#[test]
fn checked_in_crds_equal_oim_crds_output() {
    let generated = crds_yaml().unwrap();
    let checked_in = repo_file(CRDS_FILE);
    assert!(generated == checked_in, "{CRDS_FILE} is stale: run `make crds` and commit the result");
}

#[test]
fn each_crd_stays_under_256_kib() {
    for crd in crds() {
        let size = serde_saphyr::to_string(&crd).unwrap().len();
        assert!(size < 256 * 1024, "{} is {size} bytes", crd.metadata.name.unwrap_or_default());
        let json = serde_json::to_vec(&crd).unwrap().len();
        assert!(json < 256 * 1024, "{} is {json} bytes as JSON", crd.metadata.name.unwrap_or_default());
    }
}

/// Structural schema rules the API server enforces: every node has a type (unless int-or-string
/// or preserve-unknown-fields), no $ref, and no type inside anyOf/oneOf/allOf/not.
fn assert_structural(node: &Value, path: &str, inside_junctor: bool) {
    let Value::Object(map) = node else { return };
    assert!(!map.contains_key("$ref"), "{path}: $ref is not allowed");
    let escape = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if inside_junctor {
        assert!(!map.contains_key("type"), "{path}: type inside a junctor");
    } else {
        assert!(map.contains_key("type") || escape, "{path}: missing type");
    }
    if let Some(Value::Object(props)) = map.get("properties") {
        for (k, v) in props {
            assert_structural(v, &format!("{path}.{k}"), false);
        }
    }
    if let Some(items) = map.get("items") {
        assert_structural(items, &format!("{path}[]"), false);
    }
    if let Some(extra) = map.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(extra, &format!("{path}{{}}"), false);
    }
    for junctor in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = map.get(junctor) {
            for b in branches {
                assert_structural(b, &format!("{path}/{junctor}"), true);
            }
        }
    }
}

#[test]
fn crd_schemas_are_structural() {
    for crd in crds() {
        let schema =
            serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap())
                .unwrap();
        assert_structural(&schema, &crd.metadata.name.clone().unwrap(), false);
    }
}

#[test]
fn crds_carry_names_categories_status_and_printer_columns() {
    let svc = OIMService::crd();
    assert_eq!(svc.spec.names.short_names.as_deref(), Some(&["oimsvc".to_string()][..]));
    assert_eq!(svc.spec.names.categories.as_deref(), Some(&["oim".to_string()][..]));
    let v = &svc.spec.versions[0];
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let cols: Vec<_> = v.additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(cols, ["State", "Model", "Profile", "Accelerator", "Available", "Age"]);

    let cache = OIMCache::crd();
    assert_eq!(cache.spec.names.short_names.as_deref(), Some(&["oimcache".to_string()][..]));
    assert_eq!(cache.spec.names.categories.as_deref(), Some(&["oim".to_string()][..]));
    let cols: Vec<_> =
        cache.spec.versions[0].additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(cols, ["State", "PVC", "Size", "Age"]);
}

/// Every property of our own types has a description, which becomes `kubectl explain`.
fn assert_documented(node: &Value, path: &str) {
    let Value::Object(map) = node else { return };
    if let Some(Value::Object(props)) = map.get("properties") {
        for (k, v) in props {
            let p = format!("{path}.{k}");
            if p.ends_with(".metadata") || p.ends_with(".apiVersion") || p.ends_with(".kind") {
                continue;
            }
            let described = v.get("description").and_then(Value::as_str).is_some_and(|d| !d.trim().is_empty());
            assert!(described, "{p} has no description for kubectl explain");
            assert_documented(v, &p);
        }
    }
    if let Some(items) = map.get("items") {
        assert_documented(items, path);
    }
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    for crd in crds() {
        let schema =
            serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap())
                .unwrap();
        assert_documented(&schema, &crd.spec.names.kind);
    }
}

#[test]
fn enum_schemas_list_exactly_what_serde_accepts() {
    let schema = serde_json::to_value(OIMService::crd()).unwrap();
    let kpi = &schema
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/profile/properties/kpi/enum")
        .unwrap();
    assert_eq!(**kpi, serde_json::json!(["latency", "throughput", "quantization"]));
    let precision = schema
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/profile/properties/precision/enum")
        .unwrap();
    for p in precision.as_array().unwrap() {
        serde_json::from_value::<Precision>(p.clone())
            .unwrap_or_else(|e| panic!("schema allows {p} but serde rejects it: {e}"));
    }
    assert!(serde_json::from_value::<Kpi>(serde_json::json!("fastest")).is_err());
}

fn example(path: &str) -> String {
    repo_file(&format!("examples/{path}"))
}

#[test]
fn examples_deserialize_and_pass_cel() {
    let svc: OIMService = serde_saphyr::from_str(&example("llama31-8b-latency.yaml")).unwrap();
    assert_eq!(svc.spec.profile.as_ref().unwrap().kpi, Some(Kpi::Latency));
    svc.validate_cel().unwrap();
    let svc70: OIMService = serde_saphyr::from_str(&example("llama31-70b-throughput.yaml")).unwrap();
    assert_eq!(svc70.spec.storage.as_ref().unwrap().oim_cache.as_ref().unwrap().name, "llama31-70b");
    svc70.validate_cel().unwrap();
    let cache: OIMCache = serde_saphyr::from_str(&example("llama31-70b-cache.yaml")).unwrap();
    assert_eq!(cache.metadata.name.as_deref(), Some("llama31-70b"));
    cache.validate_cel().unwrap();
}

#[test]
fn the_invalid_example_is_rejected_by_the_rule_its_comment_names() {
    let text = example("invalid-port-in-args.yaml");
    assert!(text.contains("FORBIDDEN_ARG_RULE"));
    let svc: OIMService = serde_saphyr::from_str(&text).unwrap();
    let err = svc.validate_cel().unwrap_err().to_string();
    assert!(err.contains("must not contain --port"), "{err}");
}
