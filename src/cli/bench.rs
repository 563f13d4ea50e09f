//! `oim bench`: the load generator from the command line (see `crate::bench`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{ListFormat, exit};
use crate::bench::{self, Api, BenchConfig};

/// Exit code after Ctrl-C (128 + SIGINT), once the partial results are printed.
pub const INTERRUPTED: u8 = 130;

/// `oim bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:8000.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Served model name.
    #[arg(long, value_name = "NAME")]
    pub model: String,
    /// Endpoint: chat (/v1/chat/completions) or completions (/v1/completions).
    #[arg(long, value_enum, default_value_t = Api::Chat)]
    pub api: Api,
    /// Prompt length of synthetic prompts, tokens (about one word each).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub input_tokens: u32,
    /// Tokens generated per request (max_tokens with ignore_eos).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub output_tokens: u32,
    /// Concurrency levels, comma-separated; each runs in turn.
    #[arg(long, value_name = "C,...", default_value = "1")]
    pub concurrency: String,
    /// Requests per level (default 4 x concurrency, at least 16).
    #[arg(long, value_name = "R")]
    pub requests: Option<u64>,
    /// Seconds per level instead of a request count (requests in flight then finish).
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// JSONL prompts: {"prompt": "...", "output_tokens": N} per line.
    #[arg(long, value_name = "FILE")]
    pub dataset: Option<PathBuf>,
    /// Seconds one request may take, first byte to last.
    #[arg(long, value_name = "S", default_value_t = 300.0)]
    pub timeout: f64,
    /// Output format on stdout.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
    /// Also write the JSON result to this file.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

fn seconds(flag: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 && v < 1e7 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{flag} {v}: expected a positive number of seconds"))
    }
}

/// The plan from the flags; errors name the flag and the fix.
pub fn config(args: &BenchArgs) -> Result<BenchConfig, String> {
    if !(args.url.starts_with("http://") || args.url.starts_with("https://")) {
        return Err(format!("--url {:?}: expected http://HOST:PORT or https://...", args.url));
    }
    if args.output_tokens == 0 {
        return Err("--output-tokens 0: generate at least 1 token".into());
    }
    if args.requests == Some(0) {
        return Err("--requests 0: send at least 1 request per level".into());
    }
    let dataset = match &args.dataset {
        Some(p) => bench::read_dataset(p)?,
        None => vec![],
    };
    Ok(BenchConfig {
        url: args.url.clone(),
        model: args.model.clone(),
        api: args.api,
        input_tokens: args.input_tokens,
        output_tokens: args.output_tokens,
        concurrencies: bench::parse_concurrencies(&args.concurrency)?,
        requests: args.requests,
        duration: args.duration.map(|d| seconds("--duration", d)).transpose()?,
        dataset,
        timeout: seconds("--timeout", args.timeout)?,
        progress: !args.no_progress,
    })
}

/// `oim bench`.
pub async fn run(args: BenchArgs) -> u8 {
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oim bench: {e}");
            return exit::BAD_INPUT;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\noim bench: interrupted; printing what was measured");
            let _ = stop_tx.send(true);
        }
    });
    let result = match bench::run(&cfg, stop_rx).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oim bench: {e}");
            return exit::RUNTIME;
        }
    };
    let counted: u64 = result.levels.iter().map(|l| l.counted_tokens).sum();
    if counted > 0 {
        eprintln!(
            "oim bench: warning: {counted} response(s) had no usage; output tokens are counted chunks (one chunk may hold several tokens)"
        );
    }
    let json = serde_json::to_string_pretty(&result).unwrap_or_default();
    if let Some(path) = &args.save
        && let Err(e) = std::fs::write(path, format!("{json}\n"))
    {
        eprintln!("oim bench: --save {}: {e}", path.display());
        return exit::RUNTIME;
    }
    match args.output {
        ListFormat::Json => println!("{json}"),
        ListFormat::Table => print!("{}", bench::stats::table(&result)),
    }
    if result.interrupted {
        INTERRUPTED
    } else if result.levels.iter().all(|l| l.completed == 0) {
        eprintln!("oim bench: no request succeeded");
        exit::RUNTIME
    } else {
        exit::OK
    }
}
