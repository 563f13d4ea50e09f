//! The OCI layout of profiles (DESIGN §5, contract): one repository per model, one tag per
//! profile, an image manifest with an empty config, one YAML layer, and annotations that let
//! selection list and filter without downloading a blob.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::profile::reference::{self, Location, Transport};
use crate::profile::schema::Profile;

/// `artifactType` of a profile manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.oim.profile.v1";
/// Media type of the profile layer.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oim.profile.v1+yaml";
/// Layer types other publishers may use for the same YAML.
pub const ACCEPTED_LAYER_TYPES: &[&str] =
    &[LAYER_MEDIA_TYPE, "application/yaml", "application/x-yaml", "application/json"];
/// The empty config descriptor's media type (OCI 1.1 artifact guidance).
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Prefix of every annotation key.
pub const ANNOTATION_PREFIX: &str = "dev.opea.oim.profile.";
/// OCI title annotation (the file name `oras pull` writes).
pub const TITLE: &str = "org.opencontainers.image.title";

/// Where profiles live: `host[:port]/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]`.
    pub host: String,
    /// Repository prefix, possibly empty.
    pub prefix: String,
}

/// A registry reference that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("registry reference {0:?}: {1}; expected host[:port]/prefix, e.g. 127.0.0.1:5000/oim/profiles")]
pub struct BadRegistryRef(pub String, pub String);

impl RegistryRef {
    /// Parses `host[:port][/prefix]` (an `oci://` scheme and a trailing `/` are tolerated);
    /// the prefix is whole repository path components, never `.`, `..`, empty or
    /// percent-encoded (see [`reference::Location`]).
    pub fn parse(s: &str) -> Result<RegistryRef, BadRegistryRef> {
        let s = s.trim().trim_start_matches("oci://").trim_end_matches('/');
        let l = Location::parse(s).map_err(|e| BadRegistryRef(s.to_string(), e.reason))?;
        Ok(RegistryRef { host: l.authority(), prefix: l.prefix() })
    }

    /// The parsed form; `None` only for a value built by hand that does not parse.
    pub fn location(&self) -> Option<Location> {
        Location::parse(&self.to_string()).ok()
    }

    /// `localhost`, `127.0.0.0/8` or `::1`: plain HTTP without `--insecure`.
    pub fn is_loopback(&self) -> bool {
        self.location().is_some_and(|l| l.is_loopback())
    }

    /// The repository of a model: `<prefix>/<hf-org>/<hf-name>`, lowercased.
    pub fn repository(&self, model: &str) -> String {
        let model = model.to_ascii_lowercase();
        if self.prefix.is_empty() { model } else { format!("{}/{model}", self.prefix) }
    }

    /// `<host>/<repository>:<tag>`.
    pub fn tag_ref(&self, model: &str, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), self.repository(model), tag.to_string())
    }

    /// `<host>/<repository>@<digest>`.
    pub fn digest_ref(&self, model: &str, digest: &str) -> Reference {
        Reference::with_digest(self.host.clone(), self.repository(model), digest.to_string())
    }

    /// Whether this registry is covered by an allow-list entry (`[http://]host[:port][/prefix]`,
    /// matched on host, port and whole path segments).
    pub fn allowed_by(&self, allowed: &[String]) -> bool {
        self.location().is_some_and(|l| reference::admit(&l, false, allowed).is_ok())
    }

    /// Whether a service's `insecure` may be honoured here: `Ok(true)` for plain HTTP (loopback,
    /// or `insecure` under an `http://` entry), `Ok(false)` for HTTPS, and an error sentence
    /// when `insecure` asks for plain HTTP that the covering entry does not permit.
    pub fn plain_http(&self, insecure: bool, allowed: &[String]) -> Result<bool, String> {
        let l = self.location().ok_or_else(|| format!("registry reference {self} does not parse"))?;
        reference::admit(&l, insecure, allowed).map(|t| t == Transport::PlainHttp)
    }
}

impl std::fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() { f.write_str(&self.host) } else { write!(f, "{}/{}", self.host, self.prefix) }
    }
}

/// An oci-client configured for this registry: plain HTTP for loopback or `insecure`.
pub fn client_for(
    registry: &RegistryRef,
    insecure: bool,
) -> Result<oci_client::Client, oci_client::errors::OciDistributionError> {
    let protocol = if insecure || registry.is_loopback() {
        ClientProtocol::HttpsExcept(vec![registry.host.clone()])
    } else {
        ClientProtocol::Https
    };
    // ring is the process's one crypto provider (kube uses it too); install it if nobody has.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(5)),
        read_timeout: Some(std::time::Duration::from_secs(30)),
        ..Default::default()
    };
    oci_client::Client::try_from(config)
}

/// Credentials for `host` from a docker config.json (`auths.<host>.auth` or username/password).
pub fn auth_from_docker_config(json: &[u8], host: &str) -> Result<RegistryAuth, String> {
    #[derive(Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let config: DockerConfig = serde_json::from_slice(json).map_err(|e| format!("not a docker config.json: {e}"))?;
    let entry = config.auths.iter().find(|(k, _)| {
        let k = k.trim_start_matches("https://").trim_start_matches("http://");
        k.split('/').next() == Some(host)
    });
    let Some((_, entry)) = entry else { return Ok(RegistryAuth::Anonymous) };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    let Some(auth) = &entry.auth else { return Ok(RegistryAuth::Anonymous) };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| format!("auths.{host}.auth is not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| format!("auths.{host}.auth is not UTF-8"))?;
    let (u, p) = decoded.split_once(':').ok_or_else(|| format!("auths.{host}.auth is not user:password"))?;
    Ok(RegistryAuth::Basic(u.to_string(), p.to_string()))
}

/// Reads `--registry-config FILE`.
pub fn auth_from_file(path: &Path, host: &str) -> Result<RegistryAuth, String> {
    let bytes = crate::bounded::read_file(path, 1 << 20).map_err(|e| e.to_string())?;
    auth_from_docker_config(&bytes, host).map_err(|e| format!("{}: {e}", path.display()))
}

/// The manifest annotations of a profile (DESIGN §5), for listing without blobs.
pub fn annotations(p: &Profile) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        a.insert(format!("{ANNOTATION_PREFIX}{k}"), v);
    };
    put("schema", p.schema.clone());
    put("model", p.model.clone());
    put("weights", p.weights().to_string());
    if let Some(r) = &p.weights_revision {
        put("weights.revision", r.clone());
    }
    put("kpi", enum_str(&p.kpi));
    put("precision", enum_str(&p.precision));
    put("engine", p.engine.name.clone());
    put("accelerator.vendor", p.accelerator.vendor.to_string());
    put("accelerator.product", p.accelerator.product.clone());
    put("accelerator.count", p.accelerator.count.to_string());
    if let Some(m) = p.accelerator.min_memory_mib {
        put("accelerator.min-memory-mib", m.to_string());
    }
    put("tensor-parallel-size", p.parallelism.tensor.to_string());
    put("pipeline-parallel-size", p.parallelism.pipeline.to_string());
    // Beyond the DESIGN list, and only where it is not 1 (single-node artifacts keep their
    // annotations): a profile spanning nodes needs the LeaderWorkerSet API and whole groups.
    if p.nodes > 1 {
        put("nodes", p.nodes.to_string());
    }
    if let Some(perf) = &p.performance {
        if let Some(t) = perf.ttft_ms_p50 {
            put("performance.ttft-ms-p50", t.to_string());
        }
        if let Some(t) = perf.throughput_tokens_per_sec {
            put("performance.throughput-tokens-per-sec", t.to_string());
        }
        // Beyond the DESIGN list: lets selection compare figures only at equal concurrency.
        if let Some(c) = perf.concurrency {
            put("performance.concurrency", c.to_string());
        }
        // Also beyond it: estimated figures rank after measured ones.
        if let Some(s) = &perf.source {
            put("performance.source", s.clone());
        }
    }
    a
}

/// The serde name of a unit enum value (`latency`, `bf16`).
pub fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references_parse_and_loopback_means_plain_http() {
        let r = RegistryRef::parse("127.0.0.1:5000/oim/profiles").unwrap();
        assert_eq!((r.host.as_str(), r.prefix.as_str()), ("127.0.0.1:5000", "oim/profiles"));
        assert!(r.is_loopback());
        assert!(RegistryRef::parse("localhost:5000").unwrap().is_loopback());
        assert!(RegistryRef::parse("[::1]:5000/x").unwrap().is_loopback());
        assert!(!RegistryRef::parse("ghcr.io/acme").unwrap().is_loopback());
        assert_eq!(r.repository("meta-llama/Llama-3.1-8B-Instruct"), "oim/profiles/meta-llama/llama-3.1-8b-instruct");
        assert!(RegistryRef::parse("ghcr.io/Acme").is_err(), "repository names are lowercase");
        assert!(RegistryRef::parse("").is_err());
    }

    #[test]
    fn the_allow_list_matches_host_and_prefix_on_segment_boundaries() {
        let allowed = vec!["ghcr.io/acme".to_string(), "registry.local:5000".to_string()];
        assert!(RegistryRef::parse("ghcr.io/acme").unwrap().allowed_by(&allowed));
        assert!(RegistryRef::parse("ghcr.io/acme/profiles").unwrap().allowed_by(&allowed));
        assert!(!RegistryRef::parse("ghcr.io/acme-evil").unwrap().allowed_by(&allowed));
        assert!(!RegistryRef::parse("ghcr.io/other").unwrap().allowed_by(&allowed));
        assert!(RegistryRef::parse("registry.local:5000/anything").unwrap().allowed_by(&allowed));
        assert!(!RegistryRef::parse("registry.local:5001/x").unwrap().allowed_by(&allowed));
        // `..` would be normalised away by the HTTP client: refused, not matched as text.
        let e = RegistryRef::parse("ghcr.io/acme/../evil").unwrap_err().to_string();
        assert!(e.contains("'..'"), "{e}");
        assert!(RegistryRef::parse("ghcr.io/acme//x").is_err() && RegistryRef::parse("ghcr.io/acme/%2E%2E").is_err());
        let forged = RegistryRef { host: "ghcr.io".into(), prefix: "acme/../evil".into() };
        assert!(!forged.allowed_by(&allowed), "a hand-built reference is re-parsed before matching");
    }

    #[test]
    fn docker_config_credentials_are_read_per_host() {
        let json = br#"{"auths": {"https://reg.example:5000": {"auth": "dXNlcjpzM2NyZXQ="}, "other.io": {"username": "u", "password": "p"}}}"#;
        assert!(
            matches!(auth_from_docker_config(json, "reg.example:5000").unwrap(), RegistryAuth::Basic(u, p) if u == "user" && p == "s3cret")
        );
        assert!(matches!(auth_from_docker_config(json, "other.io").unwrap(), RegistryAuth::Basic(u, _) if u == "u"));
        assert!(matches!(auth_from_docker_config(json, "nowhere.io").unwrap(), RegistryAuth::Anonymous));
        let err = auth_from_docker_config(br#"{"auths": {"x.io": {"auth": "!!"}}}"#, "x.io").unwrap_err();
        assert!(err.contains("not base64") && !err.contains("!!"), "{err}");
        assert!(auth_from_docker_config(b"nope", "x.io").is_err());
    }
}
