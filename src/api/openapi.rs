//! The generated CRDs' OpenAPI schemas, translated to JSON Schema, so that `oim render` refuses
//! offline what the API server refuses when the same document is applied: wrong types, values
//! out of bounds, values outside an enum, strings that miss a pattern or a length, too many
//! items, missing required fields, and unknown fields (the API server's strict field
//! validation). Errors use the API server's field paths (`spec.args[2]`) and wording.
//!
//! What is not here: CEL rules (see `validate_cel`), `x-kubernetes-list-type` uniqueness and
//! `format` checks (the API server checks few formats and none our types use for bounds).

use serde_json::{Map, Value, json};

use super::crds;

/// One validator per kind of the generated CRDs.
pub struct SchemaCheck {
    kinds: Vec<(String, jsonschema::Validator)>,
}

impl SchemaCheck {
    /// Builds validators from [`crds`]; an error here is a bug in the generated schema.
    pub fn new() -> Result<SchemaCheck, String> {
        let mut kinds = vec![];
        for crd in crds() {
            let kind = crd.spec.names.kind.clone();
            let schema = crd
                .spec
                .versions
                .first()
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .ok_or_else(|| format!("CRD {kind} has no schema"))?;
            let schema = serde_json::to_value(schema).map_err(|e| format!("CRD {kind}: {e}"))?;
            let translated = root_schema(&schema);
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft4)
                .should_validate_formats(false)
                .build(&translated)
                .map_err(|e| format!("CRD {kind}: schema does not compile: {e}"))?;
            kinds.push((kind, validator));
        }
        Ok(SchemaCheck { kinds })
    }

    /// Every schema violation of `doc` (a whole object of `kind`), as `field.path: message`
    /// lines sorted by path; `Ok` when there are none or the kind is not ours.
    pub fn check(&self, kind: &str, doc: &Value) -> Result<(), Vec<String>> {
        let Some((_, validator)) = self.kinds.iter().find(|(k, _)| k == kind) else { return Ok(()) };
        let mut out: Vec<String> = validator.iter_errors(doc).flat_map(|e| describe(doc, &e)).collect();
        out.sort();
        out.dedup();
        if out.is_empty() { Ok(()) } else { Err(out) }
    }
}

/// The root of an object: the API server also accepts `apiVersion`, `kind` and `metadata`.
fn root_schema(schema: &Value) -> Value {
    let mut root = translate(schema);
    if let Some(props) = root.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("apiVersion".into(), json!({"type": "string"}));
        props.insert("kind".into(), json!({"type": "string"}));
        props.insert("metadata".into(), json!({"type": "object"}));
    }
    root
}

/// OpenAPI v3 (Kubernetes structural schema) to JSON Schema draft 4: `nullable` becomes a
/// `null` type, int-or-string a two-type union, objects with declared properties refuse
/// others unless they preserve unknown fields; descriptions, defaults, formats and
/// `x-kubernetes-*` extensions are dropped.
fn translate(node: &Value) -> Value {
    let Value::Object(map) = node else { return node.clone() };
    let mut out = Map::new();
    let flag = |k: &str| map.get(k) == Some(&Value::Bool(true));
    for (k, v) in map {
        match k.as_str() {
            "properties" => {
                let props = v.as_object().map(|p| p.iter().map(|(n, s)| (n.clone(), translate(s))).collect());
                out.insert(k.clone(), Value::Object(props.unwrap_or_default()));
            }
            "items" | "additionalProperties" | "not" if v.is_object() => {
                out.insert(k.clone(), translate(v));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let branches = v.as_array().map(|a| a.iter().map(translate).collect()).unwrap_or_default();
                out.insert(k.clone(), Value::Array(branches));
            }
            "type" | "enum" | "pattern" | "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum"
            | "multipleOf" | "minLength" | "maxLength" | "minItems" | "maxItems" | "uniqueItems" | "minProperties"
            | "maxProperties" | "required" | "additionalItems" => {
                out.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    if flag("x-kubernetes-int-or-string") {
        out.insert("type".into(), json!(["integer", "string"]));
    }
    // Structural schemas junctor branches carry no type; a typed node with `nullable` takes null.
    if flag("nullable")
        && let Some(t) = out.get("type").cloned()
    {
        let mut types = match t {
            Value::Array(a) => a,
            other => vec![other],
        };
        types.push(json!("null"));
        out.insert("type".into(), Value::Array(types));
        if let Some(Value::Array(e)) = out.get_mut("enum") {
            e.push(Value::Null);
        }
    }
    let declares = out.contains_key("properties");
    if declares && !out.contains_key("additionalProperties") && !flag("x-kubernetes-preserve-unknown-fields") {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

/// `/spec/args/2` in `doc` as the API server writes it: `spec.args[2]`.
pub fn field_path(doc: &Value, pointer: &str) -> String {
    let mut path = String::new();
    let mut at = Some(doc);
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        match at {
            Some(Value::Array(a)) => {
                path.push_str(&format!("[{seg}]"));
                at = seg.parse::<usize>().ok().and_then(|i| a.get(i));
            }
            Some(Value::Object(m)) if m.contains_key(&seg) && !is_plain(&seg) => {
                path.push_str(&format!("[{seg}]"));
                at = m.get(&seg);
            }
            other => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&seg);
                at = other.and_then(|v| v.get(&seg));
            }
        }
    }
    path
}

/// A key that reads well after a dot; others (map keys like `nvidia.com/gpu`) go in brackets.
fn is_plain(seg: &str) -> bool {
    seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 { format!("{}...", s.chars().take(77).collect::<String>()) } else { s }
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else if is_plain(child) {
        format!("{parent}.{child}")
    } else {
        format!("{parent}[{child}]")
    }
}

/// One error in the API server's words, with the fix where there is an obvious one.
fn describe(doc: &Value, e: &jsonschema::ValidationError<'_>) -> Vec<String> {
    use jsonschema::error::ValidationErrorKind as K;
    let path = field_path(doc, e.instance_path().as_str());
    let value = short(e.instance());
    let at = if path.is_empty() { "<root>".to_string() } else { path.clone() };
    match e.kind() {
        K::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|f| {
                let p = join(&path, f);
                format!("{p}: unknown field {p:?}; remove it or fix its spelling (`kubectl explain` lists the fields)")
            })
            .collect(),
        K::Required { property } => {
            let name = property.as_str().map(str::to_string).unwrap_or_else(|| property.to_string());
            vec![format!("{}: Required value", join(&path, &name))]
        }
        K::Minimum { limit } => {
            vec![format!("{at}: Invalid value: {value}: should be greater than or equal to {limit}")]
        }
        K::Maximum { limit } => vec![format!("{at}: Invalid value: {value}: should be less than or equal to {limit}")],
        K::Enum { options } => vec![format!("{at}: Unsupported value: {value}: supported values: {}", short(options))],
        K::Pattern { pattern } => vec![format!("{at}: Invalid value: {value}: should match '{pattern}'")],
        K::MaxLength { limit } => vec![format!("{at}: Too long: may not be more than {limit} bytes")],
        K::MinLength { limit } => vec![format!("{at}: Invalid value: {value}: should be at least {limit} chars long")],
        K::MaxItems { limit } => vec![format!("{at}: Too many: must have at most {limit} items")],
        K::MinItems { limit } => vec![format!("{at}: Invalid value: should have at least {limit} items")],
        K::Type { .. } => vec![format!("{at}: Invalid value: {value}: {e}")],
        _ => vec![format!("{at}: Invalid value: {value}: {e}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: Value) -> Value {
        json!({"apiVersion": "oim.opea.dev/v1alpha1", "kind": "OIMService", "metadata": {"name": "s"}, "spec": spec})
    }

    fn errors(doc: &Value) -> Vec<String> {
        SchemaCheck::new().unwrap().check("OIMService", doc).err().unwrap_or_default()
    }

    #[test]
    fn a_valid_service_passes_and_nullable_fields_take_null() {
        let doc = service(json!({"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}, "replicas": null}));
        assert_eq!(errors(&doc), Vec::<String>::new());
        for f in ["examples/llama31-8b-latency.yaml", "examples/llama31-70b-throughput.yaml"] {
            let text = std::fs::read_to_string(format!("{}/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            let doc: Value = serde_saphyr::from_str(&text).unwrap();
            assert_eq!(errors(&doc), Vec::<String>::new(), "{f}");
        }
    }

    #[test]
    fn bounds_types_enums_and_unknown_fields_are_refused_with_api_server_paths() {
        let doc = service(json!({
            "model": {"name": "m/x", "revison": "main"},
            "replicas": -5,
            "args": ["--a", 3],
            "expose": {"service": {"type": "Sideways", "port": 70000}},
            "resources": {"requests": {"nvidia.com/gpu": true}},
            "bogus": 1
        }));
        let e = errors(&doc);
        let has = |needle: &str| e.iter().any(|l| l.contains(needle));
        assert!(has("spec.replicas: Invalid value: -5: should be greater than or equal to 0"), "{e:#?}");
        assert!(has("spec.model.revison: unknown field"), "{e:#?}");
        assert!(has("spec.bogus: unknown field"), "{e:#?}");
        assert!(has("spec.args[1]: Invalid value: 3"), "{e:#?}");
        assert!(has("spec.expose.service.type: Unsupported value: \"Sideways\""), "{e:#?}");
        assert!(has("spec.expose.service.port: Invalid value: 70000: should be less than or equal to 65535"), "{e:#?}");
        assert!(has("spec.resources.requests[nvidia.com/gpu]: Invalid value: true"), "{e:#?}");
        assert!(errors(&service(json!({}))).iter().any(|l| l == "spec.model: Required value"));
    }

    #[test]
    fn lengths_and_patterns_are_checked() {
        let long = "x".repeat(300);
        let doc = service(json!({"model": {"name": "m/x"}, "authSecret": long,
            "profile": {"accelerator": {"product": "H100!"}}}));
        let e = errors(&doc);
        assert!(e.iter().any(|l| l.starts_with("spec.authSecret: Too long: may not be more than 253")), "{e:#?}");
        assert!(
            e.iter().any(|l| l.starts_with("spec.profile.accelerator.product: Invalid value: \"H100!\": should match")),
            "{e:#?}"
        );
    }
}
