//! `oim profiles list|push`: the catalog from the command line.

use std::time::Duration;

use oci_client::secrets::RegistryAuth;

use super::{CatalogArgs, ListFormat, ProfilesListArgs, ProfilesPushArgs, exit};
use crate::profile::catalog::{Catalog, CatalogError, DirCatalog, OciCatalog, ProfileSummary};
use crate::profile::oci::{self, RegistryRef};

/// How long resolved tags are trusted before the registry is asked again.
pub const TAG_TTL: Duration = Duration::from_secs(300);

fn code(e: &CatalogError) -> u8 {
    match e {
        CatalogError::Profile(_) | CatalogError::Duplicate { .. } | CatalogError::Io { .. } => exit::BAD_INPUT,
        _ => exit::RUNTIME,
    }
}

/// An OCI catalog from `--registry`, `--insecure` and `--registry-config`.
pub fn registry_catalog(
    registry: &str,
    insecure: bool,
    config: Option<&std::path::Path>,
    ttl: Duration,
) -> Result<OciCatalog, (u8, String)> {
    let r = RegistryRef::parse(registry).map_err(|e| (exit::BAD_INPUT, e.to_string()))?;
    let auth = match config {
        Some(path) => {
            oci::auth_from_file(path, &r.host).map_err(|e| (exit::BAD_INPUT, format!("--registry-config {e}")))?
        }
        None => RegistryAuth::Anonymous,
    };
    OciCatalog::new(r, auth, insecure, ttl).map_err(|e| (exit::RUNTIME, e.to_string()))
}

/// The catalog named by `--catalog` or `--registry`.
pub fn catalog(args: &CatalogArgs) -> Result<Catalog, (u8, String)> {
    match (&args.catalog, &args.registry) {
        (Some(dir), _) => DirCatalog::load(dir).map(Catalog::Dir).map_err(|e| (code(&e), e.to_string())),
        (None, Some(reg)) => registry_catalog(reg, args.insecure, args.registry_config.as_deref(), TAG_TTL)
            .map(|c| Catalog::Oci(Box::new(c))),
        (None, None) => Err((exit::BAD_INPUT, "pass --catalog DIR or --registry REF".into())),
    }
}

/// `oim profiles list`.
pub async fn list(args: ProfilesListArgs) -> u8 {
    let catalog = match catalog(&args.source) {
        Ok(c) => c,
        Err((code, msg)) => {
            eprintln!("oim profiles list: {msg}");
            return code;
        }
    };
    let mut profiles = match catalog.list(&args.model).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("oim profiles list: {e}");
            return code(&e);
        }
    };
    profiles.sort_by(|a, b| a.name.cmp(&b.name));
    match args.output {
        ListFormat::Json => match serde_json::to_string_pretty(&profiles) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("oim profiles list: {e}");
                return exit::RUNTIME;
            }
        },
        ListFormat::Table => print!("{}", table(&profiles)),
    }
    exit::OK
}

/// The listing as an aligned table.
pub fn table(profiles: &[ProfileSummary]) -> String {
    let mut rows =
        vec![["NAME", "KPI", "PRECISION", "ACCELERATOR", "COUNT", "DIGEST", "PERFORMANCE"].map(String::from).to_vec()];
    for p in profiles {
        let perf = match (p.ttft_ms_p50, p.throughput_tokens_per_sec) {
            (Some(t), Some(tp)) => format!("ttft {t}ms, {tp} tok/s"),
            (Some(t), None) => format!("ttft {t}ms"),
            (None, Some(tp)) => format!("{tp} tok/s"),
            (None, None) => "-".into(),
        };
        rows.push(vec![
            p.name.clone(),
            oci::enum_str(&p.kpi),
            oci::enum_str(&p.precision),
            format!("{} {}", p.vendor, p.product),
            p.count.to_string(),
            p.digest.chars().take(19).collect(),
            perf,
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            line.join("  ").trim_end().to_string() + "\n"
        })
        .collect()
}

/// `oim profiles push DIR --registry REF`.
pub async fn push(args: ProfilesPushArgs) -> u8 {
    let dir = match DirCatalog::load(&args.dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("oim profiles push: {e}");
            return code(&e);
        }
    };
    let registry = match registry_catalog(
        &args.registry.registry,
        args.registry.insecure,
        args.registry.registry_config.as_deref(),
        TAG_TTL,
    ) {
        Ok(r) => r,
        Err((code, msg)) => {
            eprintln!("oim profiles push: {msg}");
            return code;
        }
    };
    match registry.push(&dir).await {
        Ok(pushed) => {
            for (reference, digest) in pushed {
                println!("{reference}@{digest}");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("oim profiles push: {e}");
            code(&e)
        }
    }
}

/// Inventories from a file: one inventory, a list of them, a multi-document stream, or
/// `kubectl get nodes -o yaml` (whose allocatable, taints and cordons then count).
pub fn read_nodes(path: &std::path::Path) -> Result<Vec<crate::profile::select::NodeView>, String> {
    use crate::hardware::inventory::Inventory;
    use crate::profile::select::NodeView;
    let text =
        crate::bounded::read_text(path, crate::bounded::MAX_INPUT_BYTES).map_err(|e| format!("--inventory {e}"))?;
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| format!("--inventory {}: not YAML or JSON: {e}", path.display()))?;
    let mut nodes = vec![];
    let push_value = |v: serde_json::Value, nodes: &mut Vec<NodeView>| -> Result<(), String> {
        if v.get("kind").and_then(|k| k.as_str()) == Some("Node") {
            let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(v)
                .map_err(|e| format!("--inventory {}: a Node that does not parse: {e}", path.display()))?;
            let name = node.metadata.name.clone().unwrap_or_default();
            match NodeView::try_from_node(&node) {
                Ok(n) => nodes.push(n),
                Err(problem) => tracing::warn!(node = %name, "node {name} {problem}; it is left out"),
            }
            return Ok(());
        }
        let inv = Inventory::parse(&v.to_string()).map_err(|e| {
            format!(
                "--inventory {}: {e}; pass inventory documents (oim detect -o yaml) or `kubectl get nodes -o yaml`",
                path.display()
            )
        })?;
        let mut node = NodeView::offline(inv);
        if node.name.is_empty() {
            node.name = format!("node-{}", nodes.len() + 1);
        }
        nodes.push(node);
        Ok(())
    };
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        match doc {
            serde_json::Value::Array(items) => {
                for i in items {
                    push_value(i, &mut nodes)?;
                }
            }
            v if v.get("kind").and_then(|k| k.as_str()).is_some_and(|k| k == "List" || k == "NodeList") => {
                for i in v.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default() {
                    push_value(i, &mut nodes)?;
                }
            }
            v => push_value(v, &mut nodes)?,
        }
    }
    Ok(nodes)
}

fn parse_choice<T: serde::de::DeserializeOwned>(
    flag: &str,
    value: &Option<String>,
    choices: &str,
) -> Result<Option<T>, String> {
    match value {
        None => Ok(None),
        Some(v) => serde_json::from_value(serde_json::Value::String(v.clone()))
            .map(Some)
            .map_err(|_| format!("{flag} {v:?}: use one of {choices}")),
    }
}

/// What `oim profiles select` prints for the winner: the profile document's fields, its digest,
/// source, whether it was generated, the group and the reason.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SelectedOut {
    #[serde(flatten)]
    profile: crate::profile::Profile,
    digest: String,
    source: String,
    generated: bool,
    group: crate::profile::select::Group,
    reason: String,
}

/// `oim profiles select`.
pub async fn select(args: super::ProfilesSelectArgs) -> u8 {
    use crate::profile::select::{Request, select_with};
    let fail = |code: u8, msg: String| {
        eprintln!("oim profiles select: {msg}");
        code
    };
    let kpi = match parse_choice::<crate::api::Kpi>("--kpi", &args.kpi, "latency, throughput, quantization") {
        Ok(k) => k.unwrap_or_default(),
        Err(e) => return fail(exit::BAD_INPUT, e),
    };
    let precision =
        match parse_choice("--precision", &args.precision, "fp32, bf16, fp16, fp8, int8, int4, nvfp4, mxfp4") {
            Ok(p) => p,
            Err(e) => return fail(exit::BAD_INPUT, e),
        };
    let nodes = match read_nodes(&args.inventory) {
        Ok(n) => n,
        Err(e) => return fail(exit::BAD_INPUT, e),
    };
    let catalog = match catalog(&args.source) {
        Ok(c) => c,
        Err((code, msg)) => return fail(code, msg),
    };
    let profiles = match catalog.list(&args.model).await {
        Ok(p) => p,
        Err(e) => return fail(code(&e), e.to_string()),
    };
    let req = Request {
        model: args.model.clone(),
        kpi,
        precision,
        allow_generated: !args.no_generate,
        replicas: 1,
        ..Default::default()
    };
    let arch = match (&args.model_config, args.from_hub) {
        (Some(path), _) => match crate::profile::estimate::Arch::from_path(&args.model, path) {
            Ok(a) => Some(a),
            Err(e) => return fail(exit::BAD_INPUT, e),
        },
        (None, true) => {
            let hub = match crate::hub::Hub::from_env() {
                Ok(h) => h,
                Err(e) => return fail(if e.is_user_error() { exit::BAD_INPUT } else { exit::RUNTIME }, e.to_string()),
            };
            match hub.model_arch(&args.model, "main").await {
                Ok(a) => Some(a),
                Err(e) => return fail(if e.is_user_error() { exit::BAD_INPUT } else { exit::RUNTIME }, e.to_string()),
            }
        }
        (None, false) => None,
    };
    let engines = crate::profile::engines::Engines::builtin();
    let selection = select_with(&req, &profiles, &nodes, &[], &engines, arch.as_ref());
    let selected = match &selection.selected {
        None => None,
        Some(s) => {
            let document = match &s.document {
                Some(d) => d.clone(),
                None => match catalog.fetch(&s.profile).await {
                    Ok(d) => d,
                    Err(e) => return fail(code(&e), e.to_string()),
                },
            };
            Some(SelectedOut {
                profile: document,
                digest: s.profile.digest.clone(),
                source: s.profile.source.clone(),
                generated: s.generated,
                group: s.group.clone(),
                reason: s.reason.clone(),
            })
        }
    };
    let out = serde_json::json!({
        "selected": selected,
        "rejected": selection.rejected,
        "unusable": selection.unusable,
        "reason": selection.reason,
    });
    let text = match args.output {
        super::DocFormat::Json => serde_json::to_string_pretty(&out).map(|s| s + "\n").map_err(|e| e.to_string()),
        super::DocFormat::Yaml => serde_saphyr::to_string(&out).map_err(|e| e.to_string()),
    };
    match text {
        Ok(t) => print!("{t}"),
        Err(e) => return fail(exit::RUNTIME, e),
    }
    if selection.selected.is_some() { exit::OK } else { exit::NO_FEASIBLE_PROFILE }
}
