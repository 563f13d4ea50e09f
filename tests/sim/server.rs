//! `oim-vllm-sim`: a small vLLM-compatible server for tests and studies without a GPU.
//!
//! It speaks the parts of vLLM's OpenAI API that `oim bench` and other load generators use —
//! streaming and non-streaming `/v1/chat/completions` and `/v1/completions` with
//! `stream_options.include_usage`, `/v1/models`, `/health`, `/version` — and paces tokens from
//! configured latencies instead of a model:
//!
//! - the first token `--ttft-ms` after the request gets one of `--max-num-seqs` slots (requests
//!   beyond that queue, as in vLLM's scheduler, so their TTFT grows);
//! - each later token `--itl-ms` plus `--itl-growth-us` per other running sequence after the
//!   previous one (a decode step slows as the batch grows), on an absolute schedule so timer
//!   jitter does not accumulate (a stall longer than a step restarts the schedule instead of
//!   releasing a burst).
//!
//! It accepts `vllm serve MODEL [flags]` command lines (unknown flags are ignored), so a study
//! can start it in place of the engine. Every latency flag can also come from the environment
//! (`OIM_SIM_TTFT_MS`, `OIM_SIM_ITL_MS`, `OIM_SIM_ITL_GROWTH_US`, `OIM_SIM_MAX_NUM_SEQS`), so a
//! profile's `env` can configure it. `--port 0` binds a free port; the first stdout line is
//! `listening on http://127.0.0.1:PORT`. Test hooks: `--no-usage` (never send `usage`),
//! `--fail-every N` (every N-th request gets a 500), `--stall-after N` (stop after N tokens and
//! hold the connection open).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Debug, Clone)]
struct Config {
    host: String,
    port: u16,
    model: String,
    ttft: Duration,
    itl: Duration,
    itl_growth: Duration,
    max_num_seqs: usize,
    usage: bool,
    fail_every: u64,
    stall_after: Option<u64>,
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let env_f64 = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let mut c = Config {
        host: "127.0.0.1".into(),
        port: 8000,
        model: String::new(),
        ttft: Duration::from_secs_f64(env_f64("OIM_SIM_TTFT_MS").unwrap_or(50.0) / 1000.0),
        itl: Duration::from_secs_f64(env_f64("OIM_SIM_ITL_MS").unwrap_or(10.0) / 1000.0),
        itl_growth: Duration::from_secs_f64(env_f64("OIM_SIM_ITL_GROWTH_US").unwrap_or(0.0) / 1e6),
        max_num_seqs: env_f64("OIM_SIM_MAX_NUM_SEQS").map(|v| v as usize).unwrap_or(256),
        usage: true,
        fail_every: 0,
        stall_after: None,
    };
    let mut positional = vec![];
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let (key, inline) = match a.strip_prefix("--") {
            Some(k) => match k.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (k.to_string(), None),
            },
            None => {
                positional.push(a.clone());
                i += 1;
                continue;
            }
        };
        // A flag's value is the next word unless it is another flag.
        let takes_next = inline.is_none() && args.get(i + 1).is_some_and(|n| !n.starts_with("--"));
        let value = inline.clone().or_else(|| takes_next.then(|| args[i + 1].clone()));
        let num = |v: &Option<String>| -> Result<f64, String> {
            v.as_deref().and_then(|v| v.parse::<f64>().ok()).ok_or(format!("--{key} needs a number"))
        };
        let mut used_value = takes_next;
        match key.as_str() {
            "host" => c.host = value.clone().unwrap_or_default(),
            "port" => c.port = num(&value)? as u16,
            "served-model-name" | "model" => c.model = value.clone().unwrap_or_default(),
            "ttft-ms" => c.ttft = Duration::from_secs_f64(num(&value)? / 1000.0),
            "itl-ms" => c.itl = Duration::from_secs_f64(num(&value)? / 1000.0),
            "itl-growth-us" => c.itl_growth = Duration::from_secs_f64(num(&value)? / 1e6),
            "max-num-seqs" => c.max_num_seqs = num(&value)?.max(1.0) as usize,
            "fail-every" => c.fail_every = num(&value)? as u64,
            "stall-after" => c.stall_after = Some(num(&value)? as u64),
            "no-usage" => {
                c.usage = false;
                used_value = false;
            }
            "help" => return Err(HELP.into()),
            _ => {} // other vLLM flags: accepted, ignored
        }
        i += if used_value { 2 } else { 1 };
    }
    // `vllm serve MODEL`: the first positional after `serve` is the model.
    let model_pos = positional.iter().find(|p| p.as_str() != "serve").cloned();
    if c.model.is_empty() {
        c.model = model_pos.unwrap_or_else(|| "sim-model".into());
    }
    Ok(c)
}

const HELP: &str = "usage: oim-vllm-sim [serve] [MODEL] [--port P] [--host H] [--served-model-name M] \
[--ttft-ms MS] [--itl-ms MS] [--itl-growth-us US] [--max-num-seqs N] [--no-usage] [--fail-every N] \
[--stall-after N] [any vllm flag]";

struct Sim {
    cfg: Config,
    slots: Arc<Semaphore>,
    requests: AtomicU64,
}

impl Sim {
    fn running(&self) -> usize {
        self.cfg.max_num_seqs - self.slots.available_permits()
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oim-vllm-sim: {e}");
            std::process::exit(2);
        }
    };
    let addr: SocketAddr = match format!("{}:{}", cfg.host, cfg.port).parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("oim-vllm-sim: --host {:?} --port {}: not an address", cfg.host, cfg.port);
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("oim-vllm-sim: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    println!("listening on http://{local}");
    eprintln!(
        "oim-vllm-sim: model {} ttft {:?} itl {:?} (+{:?} per running seq) max-num-seqs {}",
        cfg.model, cfg.ttft, cfg.itl, cfg.itl_growth, cfg.max_num_seqs
    );
    let sim = Arc::new(Sim { slots: Arc::new(Semaphore::new(cfg.max_num_seqs)), cfg, requests: AtomicU64::new(0) });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(sim.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn full(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    r
}

async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => full(StatusCode::OK, json!({})),
        (&Method::GET, "/version") => {
            full(StatusCode::OK, json!({"version": concat!("oim-vllm-sim-", env!("CARGO_PKG_VERSION"))}))
        }
        (&Method::GET, "/v1/models") => full(
            StatusCode::OK,
            json!({"object": "list", "data": [{"id": sim.cfg.model, "object": "model", "owned_by": "oim-vllm-sim", "max_model_len": 131072}]}),
        ),
        (&Method::POST, "/v1/chat/completions") => completion(sim, req, true).await,
        (&Method::POST, "/v1/completions") => completion(sim, req, false).await,
        _ => full(StatusCode::NOT_FOUND, json!({"error": {"message": format!("no route {path}"), "code": 404}})),
    })
}

fn bad(msg: &str) -> Response<Body> {
    full(StatusCode::BAD_REQUEST, json!({"error": {"message": msg, "type": "BadRequestError", "code": 400}}))
}

async fn completion(sim: Arc<Sim>, req: Request<Incoming>, chat: bool) -> Response<Body> {
    let n = sim.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let Ok(body) = Limited::new(req.into_body(), 4 << 20).collect().await else {
        return bad("request body unreadable or over 4 MiB");
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body.to_bytes()) else { return bad("request body is not JSON") };
    if v.get("model").and_then(Value::as_str) != Some(sim.cfg.model.as_str()) {
        return full(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("The model `{}` does not exist.", v.get("model").unwrap_or(&Value::Null)), "code": 404}}),
        );
    }
    if sim.cfg.fail_every > 0 && n.is_multiple_of(sim.cfg.fail_every) {
        return full(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": "simulated failure", "code": 500}}),
        );
    }
    let prompt_tokens = if chat {
        v.get("messages").and_then(Value::as_array).map_or(0, |m| {
            m.iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .map(|c| c.split_whitespace().count())
                .sum()
        })
    } else {
        v.get("prompt").and_then(Value::as_str).map_or(0, |p| p.split_whitespace().count())
    } as u64;
    let max_tokens = v
        .get("max_tokens")
        .or_else(|| v.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(16)
        .clamp(1, 1 << 20);
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let usage = sim.cfg.usage
        && (!stream || v.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false));
    let Ok(permit) = sim.slots.clone().acquire_owned().await else { return bad("shutting down") };
    let generation = Generation {
        sim: sim.clone(),
        _permit: permit,
        chat,
        id: format!("{}-{n}", if chat { "chatcmpl" } else { "cmpl" }),
        prompt_tokens,
        max_tokens,
        usage,
        next: Instant::now() + sim.cfg.ttft,
        sent: 0,
        phase: Phase::Tokens,
    };
    if stream { sse(generation) } else { whole(generation).await }
}

enum Phase {
    Tokens,
    Finish,
    Usage,
    Done,
    End,
}

/// One request holding a slot until its last token; dropping it (client gone) frees the slot.
struct Generation {
    sim: Arc<Sim>,
    _permit: OwnedSemaphorePermit,
    chat: bool,
    id: String,
    prompt_tokens: u64,
    max_tokens: u64,
    usage: bool,
    next: Instant,
    sent: u64,
    phase: Phase,
}

impl Generation {
    fn created() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    fn chunk(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        let choice = if self.chat {
            let mut delta = json!({});
            if self.sent <= 1 && text.is_some() {
                delta["role"] = json!("assistant");
            }
            if let Some(t) = text {
                delta["content"] = json!(t);
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        };
        json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": Self::created(),
            "model": self.sim.cfg.model,
            "choices": [choice],
            "usage": null,
        })
    }

    fn usage_value(&self) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": self.sent, "total_tokens": self.prompt_tokens + self.sent})
    }

    /// Waits for the next token's time; the step after it is one ITL, longer with more running.
    async fn next_token(&mut self) {
        tokio::time::sleep_until(self.next).await;
        let others = self.sim.running().saturating_sub(1) as u32;
        let step = self.sim.cfg.itl + self.sim.cfg.itl_growth * others;
        // Timer jitter is absorbed by the absolute schedule; a stall longer than a step (a
        // starved CPU) restarts it, as an engine never decodes faster than its step time.
        let now = Instant::now();
        if now > self.next + step {
            self.next = now;
        }
        self.next += step;
        self.sent += 1;
        if self.sim.cfg.stall_after.is_some_and(|s| self.sent > s) {
            std::future::pending::<()>().await;
        }
    }
}

fn token_text(i: u64) -> String {
    const WORDS: &[&str] = &["simulated", "tokens", "arrive", "on", "schedule", "for", "the", "benchmark"];
    format!("{} ", WORDS[(i as usize) % WORDS.len()])
}

fn sse(generation: Generation) -> Response<Body> {
    let events = futures::stream::unfold(generation, |mut g| async move {
        let data = match g.phase {
            Phase::Tokens => {
                g.next_token().await;
                if g.sent >= g.max_tokens {
                    g.phase = Phase::Finish;
                }
                g.chunk(Some(&token_text(g.sent)), None).to_string()
            }
            Phase::Finish => {
                g.phase = if g.usage { Phase::Usage } else { Phase::Done };
                g.chunk(None, Some("length")).to_string()
            }
            Phase::Usage => {
                g.phase = Phase::Done;
                let mut c = g.chunk(None, None);
                c["choices"] = json!([]);
                c["usage"] = g.usage_value();
                c.to_string()
            }
            Phase::Done => {
                g.phase = Phase::End;
                "[DONE]".to_string()
            }
            Phase::End => return None,
        };
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {data}\n\n")))), g))
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(events.boxed())));
    r.headers_mut().insert("content-type", "text/event-stream".parse().expect("static header"));
    r
}

async fn whole(mut g: Generation) -> Response<Body> {
    let mut text = String::new();
    while g.sent < g.max_tokens {
        g.next_token().await;
        text += &token_text(g.sent);
    }
    let choice = if g.chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
    } else {
        json!({"index": 0, "text": text, "finish_reason": "length"})
    };
    let mut v = json!({
        "id": g.id,
        "object": if g.chat { "chat.completion" } else { "text_completion" },
        "created": Generation::created(),
        "model": g.sim.cfg.model,
        "choices": [choice],
    });
    if g.usage {
        v["usage"] = g.usage_value();
    }
    full(StatusCode::OK, v)
}
