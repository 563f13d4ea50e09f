//! Every CEL rule of both CRDs, evaluated client-side (kube's `cel` feature) against an object
//! that passes and one that fails; transition rules with an old and a new object. The same
//! rules are exercised server-side by the integration tests' dry-runs.

use kube::core::cel::ValidationErrors;

use super::*;

fn svc(yaml: &str) -> OIMService {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{yaml}"))
}

fn cache(yaml: &str) -> OIMCache {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{yaml}"))
}

/// A minimal valid OIMService with `extra` appended to its spec.
fn svc_with(name: &str, extra: &str) -> OIMService {
    let spec = extra.lines().map(|l| format!("  {l}\n")).collect::<String>();
    svc(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata:\n  name: {name}\nspec:\n  model:\n    name: meta-llama/Llama-3.1-8B-Instruct\n{spec}"
    ))
}

fn cache_with(name: &str, extra: &str) -> OIMCache {
    let spec = extra.lines().map(|l| format!("  {l}\n")).collect::<String>();
    cache(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMCache\nmetadata:\n  name: {name}\nspec:\n  source:\n    hf:\n      modelName: meta-llama/Llama-3.1-70B-Instruct\n{spec}"
    ))
}

#[track_caller]
fn assert_rejected(result: Result<(), ValidationErrors>, message_part: &str) {
    match result {
        Ok(()) => panic!("expected a CEL rejection mentioning {message_part:?}, but the object passed"),
        Err(errors) => {
            let text = errors.to_string();
            assert!(text.contains(message_part), "rejection {text:?} does not mention {message_part:?}");
        }
    }
}

#[track_caller]
fn assert_accepted(result: Result<(), ValidationErrors>) {
    if let Err(e) = result {
        panic!("expected the object to pass CEL, got: {e}");
    }
}

#[test]
fn service_names_must_be_dns1035_labels_of_at_most_52_characters() {
    assert_accepted(svc_with("llama31-8b-latency", "").validate_cel());
    assert_accepted(svc_with(&"a".repeat(52), "").validate_cel());
    assert_rejected(svc_with(&"a".repeat(53), "").validate_cel(), "at most 52 characters");
    assert_rejected(svc_with("8b-llama", "").validate_cel(), "DNS-1035");
    assert_rejected(svc_with("llama.8b", "").validate_cel(), "DNS-1035");
    assert_rejected(svc_with("llama-", "").validate_cel(), "DNS-1035");
}

#[test]
fn cache_names_follow_the_same_rule() {
    assert_accepted(cache_with("llama31-70b", "").validate_cel());
    assert_rejected(cache_with(&"c".repeat(53), "").validate_cel(), "at most 52 characters");
}

#[test]
fn at_most_one_storage_source() {
    assert_accepted(svc_with("s", "storage:\n  pvc:\n    create: true\n    size: 100Gi").validate_cel());
    assert_accepted(svc_with("s", "storage:\n  sharedMemorySizeLimit: 8Gi").validate_cel());
    assert_rejected(
        svc_with("s", "storage:\n  oimCache:\n    name: c\n  emptyDir:\n    sizeLimit: 10Gi").validate_cel(),
        "at most one of oimCache, pvc or emptyDir",
    );
}

#[test]
fn replicas_and_autoscaling_are_exclusive() {
    assert_accepted(svc_with("s", "replicas: 2\nscale:\n  enabled: false").validate_cel());
    assert_accepted(svc_with("s", "scale:\n  enabled: true\n  hpa:\n    maxReplicas: 3").validate_cel());
    assert_rejected(
        svc_with("s", "replicas: 2\nscale:\n  enabled: true\n  hpa:\n    maxReplicas: 3").validate_cel(),
        "exclusive",
    );
}

#[test]
fn min_replicas_must_not_exceed_max_replicas() {
    assert_accepted(
        svc_with("s", "scale:\n  enabled: true\n  hpa:\n    minReplicas: 2\n    maxReplicas: 2").validate_cel(),
    );
    assert_rejected(
        svc_with("s", "scale:\n  enabled: true\n  hpa:\n    minReplicas: 3\n    maxReplicas: 2").validate_cel(),
        "minReplicas must be <= maxReplicas",
    );
}

#[test]
fn args_the_operator_owns_are_rejected() {
    assert_accepted(svc_with("s", "args: ['--max-num-seqs', '32', '--enforce-eager']").validate_cel());
    assert_accepted(
        svc_with("s", "args: ['--max_num_seqs=32', '--model-impl', 'vllm', '--seed', '-1', '--', '--hosts-file']")
            .validate_cel(),
    );
    // vLLM's parser reads '_' as '-', takes unique prefixes and single-dash long flags.
    for bad in [
        "--port",
        "--port=9000",
        "--host",
        "--host=0.0.0.0",
        "--served-model-name",
        "--served-model-name=x",
        "--model",
        "--served_model_name",
        "--served_model_name=x",
        "--por",
        "--ho=0.0.0.0",
        "-port",
        "--mod",
        "--served",
    ] {
        assert_rejected(
            svc_with("s", &format!("args: ['--enforce-eager', '{bad}', 'x']")).validate_cel(),
            "must not contain --port, --host, --served-model-name or --model",
        );
    }
}

#[test]
fn proxy_urls_carry_no_credentials_and_the_secret_excludes_them() {
    assert_accepted(svc_with("s", "proxy:\n  httpsProxy: http://proxy.corp:3128\n  noProxy: .svc").validate_cel());
    assert_accepted(svc_with("s", "proxy:\n  credentialsSecret: proxy-creds\n  noProxy: .svc").validate_cel());
    for url in ["http://user:pw@proxy.corp:3128", "user:pw@proxy:3128", "https://token@proxy"] {
        assert_rejected(
            svc_with("s", &format!("proxy:\n  httpProxy: '{url}'")).validate_cel(),
            "must not contain user:password@",
        );
        assert_rejected(
            cache_with("c", &format!("proxy:\n  httpsProxy: '{url}'")).validate_cel(),
            "must not contain user:password@",
        );
    }
    assert_accepted(svc_with("s", "proxy:\n  httpProxy: 'http://proxy/a@b'").validate_cel());
    assert_rejected(
        svc_with("s", "proxy:\n  credentialsSecret: p\n  httpProxy: http://proxy:3128").validate_cel(),
        "either httpProxy/httpsProxy or credentialsSecret",
    );
}

#[test]
fn a_positional_model_in_args_is_rejected() {
    assert_rejected(
        svc_with("s", "args: ['mistralai/Mistral-7B-Instruct-v0.3', '--enforce-eager']").validate_cel(),
        "must start with a flag",
    );
    assert_rejected(
        svc_with("s", "args: ['--enforce-eager', 'meta-llama/Llama-3.1-8B-Instruct']").validate_cel(),
        "must not repeat the model",
    );
}

#[test]
fn engine_must_be_vllm() {
    assert_accepted(svc_with("s", "profile:\n  engine: vllm").validate_cel());
    assert_rejected(svc_with("s", "profile:\n  engine: tgi").validate_cel(), "only 'vllm' is supported");
}

#[test]
fn model_name_must_be_a_hub_id() {
    assert_accepted(svc_with("s", "").validate_cel());
    let mut bad = svc_with("s", "");
    bad.spec.model.name = "meta-llama/Llama 3.1/8B".into();
    assert_rejected(bad.validate_cel(), "must be a Hugging Face model id");
}

#[test]
fn sizes_must_be_quantities() {
    assert_accepted(svc_with("s", "storage:\n  emptyDir:\n    sizeLimit: 40Gi").validate_cel());
    assert_rejected(svc_with("s", "storage:\n  emptyDir:\n    sizeLimit: lots").validate_cel(), "must be a quantity");
    assert_rejected(
        svc_with("s", "storage:\n  pvc:\n    create: true\n    size: 10 GB").validate_cel(),
        "must be a quantity",
    );
    assert_rejected(cache_with("c", "resources:\n  memory: 4 gigs").validate_cel(), "must be a quantity");
}

#[test]
fn a_created_pvc_needs_a_size_and_an_existing_one_a_name() {
    assert_accepted(svc_with("s", "storage:\n  pvc:\n    name: weights").validate_cel());
    assert_rejected(svc_with("s", "storage:\n  pvc:\n    create: true").validate_cel(), "with create=true set size");
    assert_rejected(svc_with("s", "storage:\n  pvc:\n    create: false").validate_cel(), "with create=true set size");
    assert_rejected(
        cache_with("c", "storage:\n  pvc:\n    create: false").validate_cel(),
        "with create=false set name",
    );
}

#[test]
fn pvc_storage_class_and_access_mode_are_immutable() {
    let pvc = |class: &str, mode: &str| {
        svc_with(
            "s",
            &format!(
                "storage:\n  pvc:\n    create: true\n    size: 100Gi\n    storageClass: {class}\n    volumeAccessMode: {mode}"
            ),
        )
    };
    let old = pvc("fast", "ReadWriteOnce");
    assert_accepted(pvc("fast", "ReadWriteOnce").validate_cel_update(&old));
    assert_rejected(pvc("slow", "ReadWriteOnce").validate_cel_update(&old), "storageClass is immutable");
    assert_rejected(pvc("fast", "ReadWriteMany").validate_cel_update(&old), "volumeAccessMode is immutable");
    let unset =
        svc_with("s", "storage:\n  pvc:\n    create: true\n    size: 100Gi\n    volumeAccessMode: ReadWriteOnce");
    assert_rejected(unset.validate_cel_update(&old), "storageClass is immutable");
}

#[test]
fn pvc_size_only_grows() {
    let sized = |size: &str| svc_with("s", &format!("storage:\n  pvc:\n    create: true\n    size: {size}"));
    let old = sized("100Gi");
    assert_accepted(sized("100Gi").validate_cel_update(&old));
    assert_accepted(sized("200Gi").validate_cel_update(&old));
    assert_accepted(sized("1Ti").validate_cel_update(&old));
    assert_rejected(sized("50Gi").validate_cel_update(&old), "can only grow");
    assert_rejected(sized("99999Mi").validate_cel_update(&old), "can only grow");
}

#[test]
fn cache_pvc_transition_rules() {
    let pvc = |class: &str, size: &str| {
        cache_with("c", &format!("storage:\n  pvc:\n    storageClass: {class}\n    size: {size}"))
    };
    let old = pvc("fast", "200Gi");
    assert_accepted(pvc("fast", "300Gi").validate_cel_update(&old));
    assert_rejected(pvc("slow", "200Gi").validate_cel_update(&old), "storageClass is immutable");
    assert_rejected(pvc("fast", "100Gi").validate_cel_update(&old), "can only grow");
}

#[test]
fn cache_source_is_immutable() {
    let old = cache_with("c", "");
    let mut same = old.clone();
    same.spec.retention_policy = Some(RetentionPolicy::Delete);
    assert_accepted(same.validate_cel_update(&old));
    let mut other = old.clone();
    other.spec.source.hf.model_name = "meta-llama/Llama-3.1-8B-Instruct".into();
    assert_rejected(other.validate_cel_update(&old), "spec.source is immutable");
    let mut revision = old.clone();
    revision.spec.source.hf.revision = Some("main".into());
    assert_rejected(revision.validate_cel_update(&old), "spec.source is immutable");
}

#[test]
fn cache_model_name_is_org_slash_name_or_split_with_namespace() {
    assert_accepted(cache_with("c", "").validate_cel());
    let mut split = cache_with("c", "");
    split.spec.source.hf.namespace = Some("meta-llama".into());
    split.spec.source.hf.model_name = "Llama-3.1-70B-Instruct".into();
    assert_accepted(split.validate_cel());
    let mut bare = split.clone();
    bare.spec.source.hf.namespace = None;
    assert_rejected(bare.validate_cel(), "give org/name");
    let mut doubled = cache_with("c", "");
    doubled.spec.source.hf.namespace = Some("meta-llama".into());
    assert_rejected(doubled.validate_cel(), "give org/name");
}

#[test]
fn router_takes_an_ingress_or_a_gateway_with_a_host_domain() {
    let gateway = "expose:\n  router:\n    hostDomainName: example.com\n    gateway: {namespace: gw, name: inference}";
    assert_accepted(svc_with("s", gateway).validate_cel());
    let ingress =
        "expose:\n  router:\n    hostDomainName: example.com\n    ingress: {ingressClass: nginx, tlsSecretName: tls}";
    assert_accepted(svc_with("s", ingress).validate_cel());
    assert_accepted(svc_with("s", "expose:\n  router:\n    annotations: {a: b}").validate_cel());
    assert_rejected(
        svc_with(
            "s",
            "expose:\n  router:\n    hostDomainName: example.com\n    ingress: {ingressClass: nginx}\n    gateway: {namespace: gw, name: inference}",
        )
        .validate_cel(),
        "set either ingress or gateway, not both",
    );
    assert_rejected(
        svc_with("s", "expose:\n  router:\n    gateway: {namespace: gw, name: inference}").validate_cel(),
        "spec.expose.router.hostDomainName is required",
    );
    assert_rejected(
        svc_with("s", "expose:\n  router:\n    ingress: {ingressClass: nginx}").validate_cel(),
        "set it, e.g. hostDomainName: example.com",
    );
}

#[test]
fn router_gateway_refuses_grpc_routes_and_a_pool_needs_a_gateway() {
    let grpc = "expose:\n  router:\n    hostDomainName: example.com\n    gateway: {namespace: gw, name: inference, grpcRoutesEnabled: true}";
    assert_rejected(svc_with("s", grpc).validate_cel(), "vLLM serves HTTP only");
    let off = "expose:\n  router:\n    hostDomainName: example.com\n    gateway: {namespace: gw, name: inference, grpcRoutesEnabled: false}";
    assert_accepted(svc_with("s", off).validate_cel());
    let pool =
        "expose:\n  router:\n    hostDomainName: example.com\n    inferencePool:\n      endpointPickerRef: {name: epp}";
    assert_rejected(svc_with("s", pool).validate_cel(), "inferencePool needs router.gateway");
    let with_gateway = format!("{pool}\n    gateway: {{namespace: gw, name: inference}}");
    assert_accepted(svc_with("s", &with_gateway).validate_cel());
    assert_rejected(
        svc_with("s", &format!("inferencePlatform: kserve\n{with_gateway}")).validate_cel(),
        "needs spec.inferencePlatform: standalone",
    );
}

#[test]
fn the_old_ingress_and_the_router_ingress_are_exclusive() {
    let both = "expose:\n  ingress: {enabled: true}\n  router:\n    hostDomainName: example.com\n    ingress: {ingressClass: nginx}";
    assert_rejected(svc_with("s", both).validate_cel(), "both render the Ingress named after the service");
    let old_off = "expose:\n  ingress: {enabled: false}\n  router:\n    hostDomainName: example.com\n    ingress: {ingressClass: nginx}";
    assert_accepted(svc_with("s", old_off).validate_cel());
}

#[test]
fn dra_resources_name_exactly_one_source_and_a_positive_count() {
    assert_accepted(svc_with("s", "draResources:\n  - resourceClaimName: shared-gpus").validate_cel());
    assert_accepted(
        svc_with(
            "s",
            "draResources:\n  - claimCreationSpec:\n      devices:\n        - name: gpus\n          count: 2",
        )
        .validate_cel(),
    );
    assert_rejected(
        svc_with("s", "draResources:\n  - resourceClaimName: a\n    resourceClaimTemplateName: b").validate_cel(),
        "set exactly one of resourceClaimName",
    );
    assert_rejected(svc_with("s", "draResources:\n  - requests: [gpus]").validate_cel(), "set exactly one of");
    // One existing claim cannot serve several pods.
    for many in ["replicas: 2", "scale: {enabled: true, hpa: {maxReplicas: 3}}"] {
        assert_rejected(
            svc_with("s", &format!("{many}\ndraResources:\n  - resourceClaimName: shared-gpus")).validate_cel(),
            "every pod would share it; use claimCreationSpec or resourceClaimTemplateName",
        );
    }
    assert_accepted(svc_with("s", "replicas: 2\ndraResources:\n  - resourceClaimTemplateName: per-pod").validate_cel());
    for one_pod in ["scale: {enabled: true, hpa: {maxReplicas: 1}}", "scale: {enabled: false, hpa: {maxReplicas: 3}}"] {
        assert_accepted(
            svc_with("s", &format!("{one_pod}\ndraResources:\n  - resourceClaimName: shared-gpus")).validate_cel(),
        );
    }
    assert_rejected(
        svc_with(
            "s",
            "draResources:\n  - claimCreationSpec:\n      devices:\n        - name: gpus\n          count: 0",
        )
        .validate_cel(),
        "count must be between 1 and 64; leave it unset",
    );
    assert_rejected(
        svc_with(
            "s",
            "draResources:\n  - claimCreationSpec:\n      devices:\n        - name: gpus\n          celExpressions: ['true']\n          attributeSelectors:\n            - key: productName\n              value: {stringValue: x}",
        )
        .validate_cel(),
        "celExpressions cannot be combined",
    );
    assert_rejected(
        svc_with(
            "s",
            "draResources:\n  - claimCreationSpec:\n      devices:\n        - name: gpus\n          attributeSelectors:\n            - key: productName\n              value: {stringValue: x, intValue: 1}",
        )
        .validate_cel(),
        "set exactly one of boolValue, intValue",
    );
    assert_rejected(
        svc_with(
            "s",
            "draResources:\n  - claimCreationSpec:\n      devices:\n        - name: gpus\n          capacitySelectors:\n            - key: memory\n              value: lots",
        )
        .validate_cel(),
        "capacitySelectors[].value must be a quantity",
    );
    assert_rejected(
        svc_with("s", "resources:\n  claims:\n    - name: gpus").validate_cel(),
        "spec.resources.claims is filled by the operator from spec.draResources",
    );
}
