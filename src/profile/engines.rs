//! The vendor engine table: image, command, env, non-root ids, capabilities and resource extras
//! per vendor, for generated profiles and the renderer. Compiled in; `--engine-images FILE`
//! replaces entries per vendor.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::api::Vendor;

const BUILTIN: &str = include_str!("engines.yaml");

/// One vendor's engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineSpec {
    /// Vendor.
    pub vendor: Vendor,
    /// vLLM version in the image.
    pub version: String,
    /// Image, pinned.
    pub image: String,
    /// Container command.
    pub command: Vec<String>,
    /// Non-root user id of the image.
    #[serde(default)]
    pub run_as_user: Option<i64>,
    /// Group id of the image.
    #[serde(default)]
    pub run_as_group: Option<i64>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Capabilities to add (documented: the namespace must allow them).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Extra resources, e.g. Gaudi hugepages.
    #[serde(default)]
    pub resource_extras: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    engines: Vec<EngineSpec>,
}

/// The engine table in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engines {
    engines: Vec<EngineSpec>,
}

impl Engines {
    /// The compiled-in table (checked by tests, so a parse failure is a build defect).
    pub fn builtin() -> Engines {
        let t: Table = serde_saphyr::from_str(BUILTIN).expect("src/profile/engines.yaml is valid (unit-tested)");
        Engines { engines: t.engines }
    }

    /// The built-in table with `path`'s entries replacing those of the same vendor.
    pub fn with_overrides(path: &Path) -> Result<Engines, String> {
        let text = crate::bounded::read_text(path, crate::bounded::MAX_INPUT_BYTES).map_err(|e| e.to_string())?;
        let t: Table = serde_saphyr::from_str(&text).map_err(|e| {
            format!(
                "{}: not an engine table ({e}); expected `engines: [{{vendor, version, image, command}}]`",
                path.display()
            )
        })?;
        let mut engines = Engines::builtin();
        for e in t.engines {
            if !pinned(&e.image) {
                return Err(format!(
                    "{}: engines[{}].image {:?} is not pinned; use a version tag or digest",
                    path.display(),
                    e.vendor,
                    e.image
                ));
            }
            engines.engines.retain(|x| x.vendor != e.vendor);
            engines.engines.push(e);
        }
        Ok(engines)
    }

    /// The engine of a vendor.
    pub fn get(&self, vendor: Vendor) -> Option<&EngineSpec> {
        self.engines.iter().find(|e| e.vendor == vendor)
    }
}

/// A version tag or digest; `latest` only on Habana's vault, which publishes one repository per
/// release: `vault.habana.ai/gaudi-docker/<x.y.z>/<os>/habanalabs/<image>:latest`.
pub fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let Some((repo, tag)) = image.rsplit_once(':').filter(|(r, t)| !t.contains('/') && !r.is_empty()) else {
        return false;
    };
    if tag == "latest" {
        return habana_release_repository(repo);
    }
    !tag.is_empty()
}

fn habana_release_repository(repo: &str) -> bool {
    let word = |s: &str| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    };
    let version = |s: &str| {
        let parts: Vec<&str> = s.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    };
    matches!(repo.split('/').collect::<Vec<_>>().as_slice(),
        ["vault.habana.ai", "gaudi-docker", v, os, "habanalabs", name] if version(v) && word(os) && word(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vendor_has_a_pinned_engine_that_runs_vllm_serve_as_non_root() {
        let engines = Engines::builtin();
        for v in [Vendor::Nvidia, Vendor::Amd, Vendor::Intel, Vendor::Habana, Vendor::Cpu] {
            let e = engines.get(v).unwrap_or_else(|| panic!("no engine for {v}"));
            assert!(pinned(&e.image), "{v}: {} is not pinned", e.image);
            assert_eq!(e.command, ["vllm", "serve"]);
            assert!(e.run_as_user.is_some_and(|u| u > 0), "{v} runs as root");
        }
        assert!(engines.get(Vendor::Habana).unwrap().resource_extras.contains_key("hugepages-2Mi"));
        assert!(engines.get(Vendor::Cpu).unwrap().capabilities.contains(&"SYS_NICE".to_string()));
    }

    #[test]
    fn latest_is_refused_except_on_a_versioned_repository_path() {
        assert!(!pinned("vllm/vllm-openai:latest"));
        assert!(!pinned("vllm/vllm-openai"));
        assert!(!pinned("localhost:5000/vllm"));
        assert!(pinned("localhost:5000/vllm:v1"));
        assert!(pinned(
            "vault.habana.ai/gaudi-docker/1.24.1/ubuntu24.04/habanalabs/vllm-v0.26.0-ptupstream-2.11.0:latest"
        ));
        // The exception is the vault's host and release layout, not any path that looks versioned.
        for other in [
            "evil.io/gaudi-docker/1.24.1/ubuntu24.04/habanalabs/vllm-v0.26.0:latest",
            "vault.habana.ai.evil.io/gaudi-docker/1.24.1/ubuntu24.04/habanalabs/vllm-v0.26.0:latest",
            "vault.habana.ai/other/1.24.1/ubuntu24.04/habanalabs/vllm-v0.26.0:latest",
            "vault.habana.ai/gaudi-docker/latest/ubuntu24.04/habanalabs/vllm-v0.26.0:latest",
            "vault.habana.ai/gaudi-docker/1.24.1/ubuntu24.04/habanalabs/vllm/extra:latest",
            "registry.io/team-1.2/vllm-v0.1:latest",
        ] {
            assert!(!pinned(other), "{other}");
        }
    }

    #[test]
    fn an_override_file_replaces_one_vendor_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("oim-engines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("engines.yaml");
        std::fs::write(&file, "engines:\n  - {vendor: nvidia, version: \"0.27.0\", image: \"mirror.local/vllm:v0.27.0\", command: [vllm, serve]}\n").unwrap();
        let e = Engines::with_overrides(&file).unwrap();
        assert_eq!(e.get(Vendor::Nvidia).unwrap().image, "mirror.local/vllm:v0.27.0");
        assert_eq!(e.get(Vendor::Amd), Engines::builtin().get(Vendor::Amd));
        std::fs::write(
            &file,
            "engines:\n  - {vendor: nvidia, version: x, image: \"vllm/vllm-openai:latest\", command: [vllm, serve]}\n",
        )
        .unwrap();
        assert!(Engines::with_overrides(&file).unwrap_err().contains("not pinned"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
