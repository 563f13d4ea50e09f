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
) -> Result<OciCatalog, (u8, String)> {
    let r = RegistryRef::parse(registry).map_err(|e| (exit::BAD_INPUT, e.to_string()))?;
    let auth = match config {
        Some(path) => {
            oci::auth_from_file(path, &r.host).map_err(|e| (exit::BAD_INPUT, format!("--registry-config {e}")))?
        }
        None => RegistryAuth::Anonymous,
    };
    OciCatalog::new(r, auth, insecure, TAG_TTL).map_err(|e| (exit::RUNTIME, e.to_string()))
}

/// The catalog named by `--catalog` or `--registry`.
pub fn catalog(args: &CatalogArgs) -> Result<Catalog, (u8, String)> {
    match (&args.catalog, &args.registry) {
        (Some(dir), _) => DirCatalog::load(dir).map(Catalog::Dir).map_err(|e| (code(&e), e.to_string())),
        (None, Some(reg)) => {
            registry_catalog(reg, args.insecure, args.registry_config.as_deref()).map(|c| Catalog::Oci(Box::new(c)))
        }
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
