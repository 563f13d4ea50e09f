//! `oim bench`: a load generator for OpenAI-compatible streaming endpoints. Each concurrency
//! level keeps C requests in flight until it has sent `requests` (or `duration` has passed),
//! timing the first token, every later chunk and the end of each stream. Token counts come from
//! the server's `usage` (requested with `stream_options.include_usage`); without it, chunks are
//! counted and the result says so. Every request has a deadline and a stop signal (Ctrl-C)
//! ends a run with what was measured so far.

pub mod sse;
pub mod stats;

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};
use tokio::sync::watch;

pub use stats::{BenchResult, LevelResult, Outcome, Percentiles, Sample};

/// Largest dataset file read.
pub const MAX_DATASET_BYTES: u64 = 64 * 1024 * 1024;

/// Which endpoint to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
        }
    }
}

/// One benchmark plan.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Base URL (`http://host:port`, with or without `/v1`).
    pub url: String,
    /// Served model name.
    pub model: String,
    /// Endpoint.
    pub api: Api,
    /// Prompt length of synthetic prompts, in (approximate) tokens.
    pub input_tokens: u32,
    /// Tokens to generate per request (`max_tokens`, with `ignore_eos`).
    pub output_tokens: u32,
    /// Concurrency levels, run in order.
    pub concurrencies: Vec<u32>,
    /// Requests per level; default 4 x concurrency, at least 16 (unless `duration` is given).
    pub requests: Option<u64>,
    /// Time per level; new requests stop after it, those in flight finish.
    pub duration: Option<Duration>,
    /// Prompts from a JSONL file instead of synthetic ones.
    pub dataset: Vec<Prompt>,
    /// Deadline of one request, connect to last byte.
    pub timeout: Duration,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

/// One request's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The text (chat: the user message).
    pub text: String,
    /// Output tokens for this prompt, if the dataset says.
    pub output_tokens: Option<u32>,
}

impl BenchConfig {
    fn requests_for(&self, concurrency: u32) -> u64 {
        match (self.requests, self.duration) {
            (Some(r), _) => r,
            (None, Some(_)) => u64::MAX,
            (None, None) => (u64::from(concurrency) * 4).max(16),
        }
    }

    fn endpoint(&self) -> String {
        let base = self.url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        format!("{base}{}", self.api.path())
    }

    /// The prompt of request `i`: the dataset's, round robin, else synthetic text of about
    /// `input_tokens` words that starts with the request number, so that no two share a prefix
    /// (a real engine's prefix cache would otherwise flatter TTFT).
    fn prompt(&self, i: u64) -> Prompt {
        if !self.dataset.is_empty() {
            return self.dataset[(i % self.dataset.len() as u64) as usize].clone();
        }
        const WORDS: &[&str] = &[
            "the",
            "model",
            "serves",
            "tokens",
            "quickly",
            "under",
            "load",
            "while",
            "we",
            "measure",
            "latency",
            "and",
            "throughput",
            "across",
            "many",
            "streams",
        ];
        let mut text = format!("{i}");
        for k in 1..self.input_tokens.max(1) as u64 {
            text.push(' ');
            text.push_str(WORDS[((k * 7 + i) % WORDS.len() as u64) as usize]);
        }
        Prompt { text, output_tokens: None }
    }

    fn body(&self, p: &Prompt) -> Value {
        let max_tokens = p.output_tokens.unwrap_or(self.output_tokens);
        let mut body = json!({
            "model": self.model,
            "max_tokens": max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
            "ignore_eos": true,
            "temperature": 0.0,
        });
        match self.api {
            Api::Chat => body["messages"] = json!([{"role": "user", "content": p.text}]),
            Api::Completions => body["prompt"] = json!(p.text),
        }
        body
    }
}

/// Reads a JSONL dataset: one object per line with `prompt` (a string) and optionally
/// `output_tokens`. Errors name the file, the line and the fix.
pub fn read_dataset(path: &Path) -> Result<Vec<Prompt>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("--dataset {}: {e}", path.display()))?;
    let mut out = vec![];
    for (n, line) in std::io::BufReader::new(f.take_bounded()).lines().enumerate() {
        let line = line.map_err(|e| format!("--dataset {}: line {}: {e}", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| {
            format!("--dataset {}: line {}: not JSON ({e}); write one object per line", path.display(), n + 1)
        })?;
        let Some(text) = v.get("prompt").and_then(Value::as_str) else {
            return Err(format!(
                "--dataset {}: line {}: no string field \"prompt\"; write {{\"prompt\": \"...\", \"output_tokens\": 128}}",
                path.display(),
                n + 1
            ));
        };
        let output_tokens = v.get("output_tokens").and_then(Value::as_u64).map(|t| t.clamp(1, 1 << 20) as u32);
        out.push(Prompt { text: text.to_string(), output_tokens });
    }
    if out.is_empty() {
        return Err(format!("--dataset {}: no prompts; write one JSON object per line", path.display()));
    }
    Ok(out)
}

trait TakeBounded: std::io::Read + Sized {
    fn take_bounded(self) -> std::io::Take<Self> {
        self.take(MAX_DATASET_BYTES)
    }
}
impl<R: std::io::Read> TakeBounded for R {}

/// The HTTP client: one connection per stream in flight.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    // ring is the process's one rustls provider; tests reach this without main.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Runs every level of `cfg`; stops early (and says so) when `stop` turns true.
pub async fn run(cfg: &BenchConfig, mut stop: watch::Receiver<bool>) -> Result<BenchResult, String> {
    let client = client(cfg.timeout)?;
    let cpu_start = process_cpu_sec();
    let mut levels = vec![];
    let mut interrupted = false;
    for &c in &cfg.concurrencies {
        let (outcomes, wall, stopped) = run_level(&client, cfg, c, &mut stop).await;
        if !outcomes.is_empty() {
            levels.push(LevelResult::fold(c, &outcomes, wall));
        }
        if stopped {
            interrupted = true;
            break;
        }
    }
    Ok(BenchResult {
        url: cfg.url.clone(),
        model: cfg.model.clone(),
        api: cfg.api.name().into(),
        input_tokens: cfg.input_tokens,
        output_tokens: cfg.output_tokens,
        levels,
        interrupted,
        client_cpu_sec: ((process_cpu_sec() - cpu_start) * 100.0).round() / 100.0,
    })
}

/// One level: C workers pull request numbers until the budget or the time is spent.
async fn run_level(
    client: &reqwest::Client,
    cfg: &BenchConfig,
    concurrency: u32,
    stop: &mut watch::Receiver<bool>,
) -> (Vec<Outcome>, Duration, bool) {
    warm_up(client, cfg, concurrency).await;
    let total = cfg.requests_for(concurrency);
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let endpoint = cfg.endpoint();
    let workers: FuturesUnordered<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, done, failed, endpoint) = (&next, &done, &failed, &endpoint);
            let mut stop = stop.clone();
            async move {
                let mut outcomes = vec![];
                loop {
                    if *stop.borrow() || deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let body = cfg.body(&cfg.prompt(i));
                    let req = tokio::time::timeout(cfg.timeout, one_request(client, endpoint, &body));
                    let outcome = tokio::select! {
                        r = req => r.unwrap_or_else(|_| Outcome::Failed("timeout".into())),
                        _ = stop.wait_for(|s| *s) => break,
                    };
                    if matches!(outcome, Outcome::Failed(_)) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    outcomes.push(outcome);
                }
                outcomes
            }
        })
        .collect();
    let collect = workers.collect::<Vec<Vec<Outcome>>>();
    let bar = progress_bar(cfg, concurrency, total, &done, &failed, start);
    // The bar never ends; the level is over when the workers are.
    let outcomes = tokio::select! {
        o = collect => o,
        _ = bar => vec![],
    };
    if cfg.progress && std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    let wall = start.elapsed();
    (outcomes.into_iter().flatten().collect(), wall, *stop.borrow())
}

/// Opens the level's connections before its clock starts (C concurrent `GET /v1/models`), so
/// that TCP setup is not counted as the server's time to first token. Failures are ignored:
/// the requests themselves will report them.
async fn warm_up(client: &reqwest::Client, cfg: &BenchConfig, concurrency: u32) {
    let base = cfg.url.trim_end_matches('/');
    let url = format!("{}/v1/models", base.strip_suffix("/v1").unwrap_or(base));
    let gets: FuturesUnordered<_> = (0..concurrency.max(1))
        .map(|_| tokio::time::timeout(Duration::from_secs(5), async { client.get(&url).send().await?.bytes().await }))
        .collect();
    gets.collect::<Vec<_>>().await;
}

/// Redraws `c=16 [#####-----] 40/64 err 0 3.2s` on stderr every 200 ms, forever.
async fn progress_bar(cfg: &BenchConfig, c: u32, total: u64, done: &AtomicU64, failed: &AtomicU64, start: Instant) {
    let draw = cfg.progress && std::io::stderr().is_terminal();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !draw {
            continue;
        }
        let n = done.load(Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        let frac = match cfg.duration {
            Some(d) => elapsed / d.as_secs_f64(),
            None => n as f64 / total.max(1) as f64,
        }
        .clamp(0.0, 1.0);
        let filled = (frac * 30.0) as usize;
        let of = if total == u64::MAX { String::new() } else { format!("/{total}") };
        eprint!(
            "\r\x1b[2Kc={c} [{}{}] {n}{of} err {} {elapsed:.1}s",
            "#".repeat(filled),
            "-".repeat(30 - filled),
            failed.load(Ordering::Relaxed)
        );
        let _ = std::io::stderr().flush();
    }
}

/// Sends one streaming request and times its chunks.
async fn one_request(client: &reqwest::Client, endpoint: &str, body: &Value) -> Outcome {
    let start = Instant::now();
    let resp = match client.post(endpoint).json(body).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Outcome::Failed("connect".into()),
        Err(_) => return Outcome::Failed("send".into()),
    };
    if !resp.status().is_success() {
        return Outcome::Failed(format!("http-{}", resp.status().as_u16()));
    }
    let mut parser = sse::Parser::default();
    let mut chunks: Vec<Instant> = vec![];
    let mut usage: Option<(u64, u64)> = None;
    let mut stream = resp.bytes_stream();
    let mut finished = false;
    while let Some(piece) = stream.next().await {
        let Ok(bytes) = piece else { return Outcome::Failed("stream".into()) };
        let now = Instant::now();
        let events = match parser.feed(&bytes) {
            Ok(ev) => ev,
            Err(_) => return Outcome::Failed("stream".into()),
        };
        for ev in events {
            match ev {
                sse::Event::Content => chunks.push(now),
                sse::Event::Usage { prompt, completion } => usage = Some((prompt, completion)),
                sse::Event::Done => finished = true,
                sse::Event::Error(_) => return Outcome::Failed("server-error".into()),
            }
        }
        if finished {
            break;
        }
    }
    for ev in parser.finish() {
        if let sse::Event::Usage { prompt, completion } = ev {
            usage = Some((prompt, completion));
        }
    }
    let end = Instant::now();
    let Some(first) = chunks.first() else { return Outcome::Failed("empty".into()) };
    let itl = chunks.windows(2).map(|w| w[1] - w[0]).collect();
    let (input_tokens, output_tokens, counted) = match usage {
        Some((p, c)) if c > 0 => (p, c, false),
        _ => (0, chunks.len() as u64, true),
    };
    Outcome::Ok(Sample { ttft: *first - start, itl, e2e: end - start, output_tokens, input_tokens, counted })
}

/// CPU seconds (user + system) this process has used, from /proc (USER_HZ is 100 on Linux).
pub fn process_cpu_sec() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Parses `1,4,16` into levels, refusing 0 and more than 4096.
pub fn parse_concurrencies(s: &str) -> Result<Vec<u32>, String> {
    let mut out = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(c) if (1..=4096).contains(&c) => out.push(c),
            _ => return Err(format!("--concurrency {part:?}: expected a number from 1 to 4096, e.g. 1,4,16")),
        }
    }
    if out.is_empty() {
        return Err("--concurrency: give at least one level, e.g. 1,4,16".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BenchConfig {
        BenchConfig {
            url: "http://127.0.0.1:8000/v1/".into(),
            model: "m".into(),
            api: Api::Chat,
            input_tokens: 8,
            output_tokens: 4,
            concurrencies: vec![1],
            requests: None,
            duration: None,
            dataset: vec![],
            timeout: Duration::from_secs(5),
            progress: false,
        }
    }

    #[test]
    fn requests_go_to_the_api_path_with_usage_and_a_fixed_length() {
        let c = cfg();
        assert_eq!(c.endpoint(), "http://127.0.0.1:8000/v1/chat/completions");
        let b = c.body(&c.prompt(3));
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!((b["max_tokens"].as_u64(), b["ignore_eos"].as_bool()), (Some(4), Some(true)));
        let text = b["messages"][0]["content"].as_str().unwrap();
        assert_eq!(text.split_whitespace().count(), 8);
        assert_ne!(c.prompt(3).text, c.prompt(4).text, "no shared prefix between requests");
        let c = BenchConfig { api: Api::Completions, ..cfg() };
        assert!(c.endpoint().ends_with("/v1/completions") && c.body(&c.prompt(0))["prompt"].is_string());
        assert_eq!(cfg().requests_for(16), 64);
        assert_eq!(cfg().requests_for(1), 16);
    }

    #[test]
    fn concurrency_lists_are_checked() {
        assert_eq!(parse_concurrencies("1, 4,16").unwrap(), vec![1, 4, 16]);
        assert!(parse_concurrencies("0").unwrap_err().contains("1 to 4096"));
        assert!(parse_concurrencies("x").is_err());
        assert!(parse_concurrencies("").is_err());
    }

    #[test]
    fn datasets_are_jsonl_with_a_prompt_and_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("oim-bench-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(&good, "{\"prompt\": \"hello\", \"output_tokens\": 9}\n\n{\"prompt\": \"bye\"}\n").unwrap();
        let ds = read_dataset(&good).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds[0].output_tokens, Some(9));
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"prompt\": \"ok\"}\n{\"text\": 1}\n").unwrap();
        let e = read_dataset(&bad).unwrap_err();
        assert!(e.contains("bad.jsonl") && e.contains("line 2") && e.contains("\"prompt\""), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
