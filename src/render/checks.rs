//! Checks of spec values that the CRD schema cannot express but the API server refuses in the
//! objects we render (env names, volume subPaths, negative quantities), and the image
//! reference: refused here with the field and the fix, instead of a failed apply.

use super::RenderError;
use crate::api::{ImageSpec, OIMService};
use crate::profile::engines::pinned;
use crate::profile::schema::is_quantity;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> RenderError {
    RenderError::InvalidSpec { field: field.into(), message: message.into() }
}

/// Everything in a service's spec that would make the API server refuse the Deployment.
pub fn check_spec(svc: &OIMService) -> Result<(), RenderError> {
    for (i, a) in svc.spec.args.iter().flatten().enumerate() {
        if let Some(flag) = forbidden_arg(a) {
            return Err(invalid(
                format!("spec.args[{i}]"),
                format!(
                    "{a:?} is vLLM's --{flag} (vLLM reads '_' as '-' and accepts prefixes); the operator sets it: use spec.model.servedName and spec.expose.service.port instead"
                ),
            ));
        }
    }
    for (i, e) in svc.spec.env.iter().flatten().enumerate() {
        env_name(&e.name).map_err(|m| invalid(format!("spec.env[{i}].name"), m))?;
    }
    let sub_path = svc.spec.storage.as_ref().and_then(|s| s.pvc.as_ref()).and_then(|p| p.sub_path.as_deref());
    if let Some(p) = sub_path {
        relative_path(p).map_err(|m| invalid("spec.storage.pvc.subPath", m))?;
    }
    if let Some(r) = &svc.spec.resources {
        for (field, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for (k, v) in map.iter().flatten() {
                if !is_quantity(&v.0) {
                    return Err(invalid(
                        format!("spec.resources.{field}[{k}]"),
                        format!("{:?} is not a non-negative quantity; write e.g. 8, 500m or 16Gi", v.0),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Flags the operator passes to vLLM itself.
pub const OPERATOR_FLAGS: &[&str] = &["port", "host", "served-model-name", "model"];

/// The operator flag an argument sets the way vLLM's argparse reads it (one or two dashes,
/// `_` as `-`, `--x=y`, unique prefixes), or None.
pub fn forbidden_arg(arg: &str) -> Option<&'static str> {
    let name = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    let name = name.split('=').next().unwrap_or("").replace('_', "-");
    if name.is_empty() {
        return None;
    }
    OPERATOR_FLAGS.iter().copied().find(|f| f.starts_with(name.as_str()))
}

/// A container env name as the API server accepts it: printable ASCII without `=`.
pub fn env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=') {
        return Err(format!("{name:?} is not an environment variable name: use printable ASCII without '='"));
    }
    Ok(())
}

/// A volume subPath as the API server accepts it: relative, with no `..` segment.
pub fn relative_path(p: &str) -> Result<(), String> {
    if p.starts_with('/') {
        return Err(format!("{p:?} must be a relative path inside the volume"));
    }
    if p.split('/').any(|s| s == "..") {
        return Err(format!("{p:?} must not contain '..'; name a folder inside the volume"));
    }
    Ok(())
}

/// `spec.image` as an image reference: a `sha256:<hex>` tag becomes `@sha256:<hex>`; a
/// missing tag or a `latest` that pins nothing is refused as it is in profiles.
pub fn image_ref(i: &ImageSpec) -> Result<String, RenderError> {
    let field = "spec.image.tag";
    let tag = i.tag.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
        invalid(field, format!("image {} has no tag or digest; pin a version tag or sha256:<digest>", i.repository))
    })?;
    if let Some(hex) = tag.strip_prefix("sha256:") {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(invalid(field, format!("{tag:?} is not a sha256 digest (64 lowercase hex digits)")));
        }
        return Ok(format!("{}@{tag}", i.repository));
    }
    let tag_ok = tag.len() <= 128
        && tag.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !tag_ok {
        return Err(invalid(
            field,
            format!("{tag:?} is not an image tag (letters, digits, '_', '.', '-'; at most 128)"),
        ));
    }
    let image = format!("{}:{tag}", i.repository);
    if !pinned(&image) {
        return Err(invalid(field, format!("{image} is not pinned; use a version tag or sha256:<digest>")));
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(repo: &str, tag: Option<&str>) -> Result<String, String> {
        image_ref(&ImageSpec { repository: repo.into(), tag: tag.map(str::to_string), ..Default::default() })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_digest_tag_renders_as_a_digest_reference_and_unpinned_images_are_refused() {
        let hex = "a".repeat(64);
        assert_eq!(image("reg.io/vllm", Some(&format!("sha256:{hex}"))).unwrap(), format!("reg.io/vllm@sha256:{hex}"));
        assert_eq!(image("reg.io/vllm", Some("v0.26.0")).unwrap(), "reg.io/vllm:v0.26.0");
        let e = image("reg.io/vllm", None).unwrap_err();
        assert!(e.starts_with("spec.image.tag: ") && e.contains("no tag or digest"), "{e}");
        assert!(image("reg.io/vllm", Some("latest")).unwrap_err().contains("not pinned"));
        assert!(image("reg.io/vllm", Some("sha256:abc")).unwrap_err().contains("64 lowercase hex"));
        assert!(image("reg.io/vllm", Some("v1/../x")).unwrap_err().contains("not an image tag"));
    }

    #[test]
    fn operator_flags_are_found_in_every_spelling_vllm_accepts() {
        for (arg, flag) in [
            ("--port", "port"),
            ("--port=9000", "port"),
            ("--por", "port"),
            ("-port", "port"),
            ("--served_model_name", "served-model-name"),
            ("--served-model", "served-model-name"),
            ("--served_model_name=x", "served-model-name"),
            ("--ho", "host"),
            ("--model=/x", "model"),
            ("--mod", "model"),
        ] {
            assert_eq!(forbidden_arg(arg), Some(flag), "{arg}");
        }
        for ok in ["--max-num-seqs", "--model-impl", "--max_model_len=4096", "--", "-1", "8", "--hosts-file"] {
            assert_eq!(forbidden_arg(ok), None, "{ok}");
        }
    }

    #[test]
    fn proxy_credentials_come_from_the_secret_by_reference() {
        let p = crate::api::ProxySpec {
            credentials_secret: Some("proxy-creds".into()),
            no_proxy: Some(".svc".into()),
            ..Default::default()
        };
        let env = crate::render::proxy_env(&p);
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"]);
        for e in &env[..4] {
            assert!(e.value.is_none(), "{}: no inline value", e.name);
            let r = e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).unwrap();
            assert_eq!((r.name.as_str(), r.optional), ("proxy-creds", Some(true)));
            assert_eq!(r.key, e.name.to_ascii_uppercase());
        }
    }

    #[test]
    fn env_names_and_sub_paths_are_checked_like_the_api_server_does() {
        assert!(env_name("HTTP_PROXY").is_ok() && env_name("my.var-1").is_ok());
        assert!(env_name("A=B").unwrap_err().contains("without '='"));
        assert!(env_name("").is_err() && env_name("A\nB").is_err());
        assert!(relative_path("models/llama").is_ok());
        assert!(relative_path("a/../../etc").unwrap_err().contains("'..'"));
        assert!(relative_path("/etc").unwrap_err().contains("relative"));
    }
}
