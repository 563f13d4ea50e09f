//! Model facts for models the built-in architecture table does not know: their `config.json`
//! and safetensors weight bytes, read from the hub with the owner's token through the shared
//! [`ArchCache`]. A reconcile waits for the hub at most [`WAIT`]; a failure is reported with the
//! model, the hub and the cause, and retried with the cache's backoff — never replaced by a guess.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use crate::controller::context::{Context, Error, ReadContext};
use crate::hub::clean_token;
use crate::hub::model::{ArchCache, Lookup, ModelSource};
use crate::profile::estimate::Arch;

/// The longest a reconcile waits for the hub; a slower read goes on in the background.
pub const WAIT: Duration = Duration::from_secs(3);
/// Answers held at most (the oldest is evicted first).
const CAPACITY: usize = 256;
/// How long an answer holds (a revision such as `main` can move).
const TTL: Duration = Duration::from_secs(3600);
/// The overall deadline of one read (config.json, the safetensors index or header).
const DEADLINE: Duration = Duration::from_secs(20);
/// Retry after a problem with the token Secret (a change to the Secret is not watched).
const SECRET_RETRY: Duration = Duration::from_secs(30);

/// The operator's hub and its cache of model facts.
pub struct HubFacts {
    /// `--hf-endpoint` (`HF_ENDPOINT`).
    pub endpoint: String,
    cache: Arc<ArchCache>,
}

impl HubFacts {
    /// An empty cache for `endpoint`.
    pub fn new(endpoint: String) -> HubFacts {
        HubFacts { endpoint, cache: ArchCache::new(CAPACITY, TTL, DEADLINE) }
    }
}

/// What a model's owner (an OIMService or OIMCache) asks for.
pub struct Wanted<'a> {
    /// Namespace of the owner (and of its token Secret).
    pub namespace: &'a str,
    /// Repository id.
    pub model: &'a str,
    /// Revision; default `main`.
    pub revision: Option<&'a str>,
    /// The owner's hub, when it names one; else the operator's.
    pub endpoint: Option<&'a str>,
    /// The Secret holding `HF_TOKEN`.
    pub auth_secret: Option<&'a str>,
    /// The field naming that Secret, for messages (`spec.authSecret`).
    pub secret_field: &'static str,
}

/// Model facts, or why not (yet).
#[derive(Debug, Clone)]
pub enum Facts {
    /// Read.
    Ready(Arc<Arch>),
    /// Being read: look again in a moment.
    Pending(String),
    /// Not readable now: the message (model, hub, cause) and when to look again.
    Unavailable {
        /// Names the model, the hub and the cause.
        message: String,
        /// When the next read may start.
        retry_in: Duration,
    },
}

/// The condition reason of a read that failed.
pub const UNAVAILABLE: &str = "ModelConfigUnavailable";
/// The condition reason of a read under way.
pub const PENDING: &str = "ModelConfigPending";

/// Reads (or finds in the cache) the facts of `w.model`.
pub async fn facts(ctx: &Context, w: &Wanted<'_>) -> Result<Facts, Error> {
    let endpoint = w.endpoint.filter(|e| !e.is_empty()).unwrap_or(&ctx.hub.endpoint).to_string();
    let field = w.secret_field;
    let token = match w.auth_secret {
        None => None,
        Some(name) => match token(ctx, w.namespace, name, field).await? {
            Ok(t) => t,
            Err(why) => {
                let message = format!(
                    "{} is not in the built-in architecture table and its config.json cannot be read from {}: {why}",
                    w.model,
                    crate::redact::redact_url(&endpoint)
                );
                return Ok(Facts::Unavailable { message, retry_in: SECRET_RETRY });
            }
        },
    };
    let src = ModelSource {
        endpoint,
        repo: w.model.to_string(),
        revision: w.revision.filter(|r| !r.is_empty()).unwrap_or("main").to_string(),
        token,
    };
    Ok(match ctx.hub.cache.lookup(&src, WAIT).await {
        Lookup::Ready(a) => Facts::Ready(a),
        Lookup::Pending => Facts::Pending(format!(
            "reading config.json of {} to size it ({} is not in the built-in architecture table)",
            src.describe(),
            w.model
        )),
        Lookup::Failed { message, retry_in } => {
            let token = match (w.auth_secret, src.token.is_some()) {
                (Some(s), true) => format!("the token of Secret {s} ({field}) was sent"),
                (Some(s), false) => format!("Secret {s} ({field}) holds an empty HF_TOKEN, so no token was sent"),
                (None, _) => format!("no token was sent (a gated model needs {field})"),
            };
            Facts::Unavailable {
                message: format!(
                    "{message}; {token}. {} is not in the built-in architecture table, so no profile is generated until it can be read (retried with backoff up to every 5 minutes)",
                    w.model
                ),
                retry_in,
            }
        }
    })
}

/// `HF_TOKEN` of Secret `name`, or why it cannot be used.
async fn token(ctx: &Context, ns: &str, name: &str, field: &str) -> Result<Result<Option<String>, String>, Error> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .reading(|| format!("Secret {ns}/{name}"))?;
    let Some(secret) = secret else {
        return Ok(Err(format!("{field}: Secret {name} does not exist in {ns}; create it with key HF_TOKEN")));
    };
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get("HF_TOKEN"))
        .map(|b| b.0.clone())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get("HF_TOKEN")).map(|s| s.clone().into_bytes()));
    let Some(raw) = raw else {
        return Ok(Err(format!("{field}: Secret {name} has no key HF_TOKEN")));
    };
    let text = String::from_utf8(raw).map_err(|_| ()).ok();
    Ok(match text.as_deref().map(clean_token) {
        Some(Ok(t)) => Ok(t),
        Some(Err(e)) => Err(format!("{field}: Secret {name} key HF_TOKEN: {e}")),
        None => Err(format!("{field}: Secret {name} key HF_TOKEN is not text")),
    })
}
