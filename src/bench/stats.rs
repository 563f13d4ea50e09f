//! What one benchmark level measured: per-request samples folded into percentiles, rates and
//! error counts, and the table people read.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Streamed to `[DONE]` (or the end of the body) with at least one token.
    Ok(Sample),
    /// Failed; the key names the kind (`http-503`, `timeout`, `connect`, `stream`, `empty`).
    Failed(String),
}

/// Timings of one successful request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    /// Request sent -> first content chunk.
    pub ttft: Duration,
    /// Gaps between consecutive content chunks.
    pub itl: Vec<Duration>,
    /// Request sent -> stream ended.
    pub e2e: Duration,
    /// Output tokens (the server's `usage`, else counted chunks).
    pub output_tokens: u64,
    /// Prompt tokens from `usage` (0 when the server does not say).
    pub input_tokens: u64,
    /// Tokens came from counted chunks because the server sent no `usage`.
    pub counted: bool,
}

/// p50/p90/p99 (and the mean) of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `ms`; zeros when empty.
    pub fn of(ms: &mut [f64]) -> Percentiles {
        if ms.is_empty() {
            return Percentiles::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        Percentiles { p50: round3(at(0.50)), p90: round3(at(0.90)), p99: round3(at(0.99)), mean: round3(mean) }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The figures of one concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LevelResult {
    /// Requests in flight.
    pub concurrency: u32,
    /// Requests that completed.
    pub completed: u64,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Time to first token, ms.
    pub ttft_ms: Percentiles,
    /// Inter-token latency (gaps between streamed chunks), ms.
    pub itl_ms: Percentiles,
    /// End-to-end latency, ms.
    pub e2e_ms: Percentiles,
    /// Output tokens per second over the level's wall time.
    pub output_tokens_per_sec: f64,
    /// Completed requests per second.
    pub requests_per_sec: f64,
    /// Output tokens of all completed requests.
    pub output_tokens: u64,
    /// Prompt tokens the server counted.
    pub input_tokens: u64,
    /// Wall time of the level, s.
    pub duration_sec: f64,
    /// Requests whose token count came from counted chunks (no `usage`).
    pub counted_tokens: u64,
}

impl LevelResult {
    /// Folds the outcomes of one level that ran for `wall`.
    pub fn fold(concurrency: u32, outcomes: &[Outcome], wall: Duration) -> LevelResult {
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        let mut errors = BTreeMap::new();
        let (mut ttft, mut itl, mut e2e) = (vec![], vec![], vec![]);
        let (mut out_tokens, mut in_tokens, mut counted, mut completed) = (0u64, 0u64, 0u64, 0u64);
        for o in outcomes {
            match o {
                Outcome::Ok(s) => {
                    completed += 1;
                    ttft.push(ms(&s.ttft));
                    itl.extend(s.itl.iter().map(ms));
                    e2e.push(ms(&s.e2e));
                    out_tokens += s.output_tokens;
                    in_tokens += s.input_tokens;
                    counted += u64::from(s.counted);
                }
                Outcome::Failed(kind) => *errors.entry(kind.clone()).or_insert(0) += 1,
            }
        }
        let secs = wall.as_secs_f64().max(1e-9);
        LevelResult {
            concurrency,
            completed,
            errors,
            ttft_ms: Percentiles::of(&mut ttft),
            itl_ms: Percentiles::of(&mut itl),
            e2e_ms: Percentiles::of(&mut e2e),
            output_tokens_per_sec: round3(out_tokens as f64 / secs),
            requests_per_sec: round3(completed as f64 / secs),
            output_tokens: out_tokens,
            input_tokens: in_tokens,
            duration_sec: round3(wall.as_secs_f64()),
            counted_tokens: counted,
        }
    }

    /// Failed requests of all kinds.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A whole `oim bench` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchResult {
    /// Endpoint base URL.
    pub url: String,
    /// Served model name.
    pub model: String,
    /// `chat` or `completions`.
    pub api: String,
    /// Requested prompt length, tokens (approximate for synthetic prompts).
    pub input_tokens: u32,
    /// Requested output length, tokens.
    pub output_tokens: u32,
    /// One entry per concurrency level that ran (a partial last one after Ctrl-C).
    pub levels: Vec<LevelResult>,
    /// Stopped by Ctrl-C before the plan finished.
    pub interrupted: bool,
    /// CPU time `oim bench` itself used (user + system), s.
    pub client_cpu_sec: f64,
}

/// The result as an aligned table.
pub fn table(r: &BenchResult) -> String {
    let mut rows = vec![
        ["CONC", "OK", "ERR", "TTFT P50", "P90", "P99", "ITL P50", "P90", "P99", "E2E P50", "P99", "TOK/S", "REQ/S"]
            .map(String::from)
            .to_vec(),
    ];
    for l in &r.levels {
        let f = |v: f64| format!("{v:.1}");
        rows.push(vec![
            l.concurrency.to_string(),
            l.completed.to_string(),
            l.failed().to_string(),
            f(l.ttft_ms.p50),
            f(l.ttft_ms.p90),
            f(l.ttft_ms.p99),
            f(l.itl_ms.p50),
            f(l.itl_ms.p90),
            f(l.itl_ms.p99),
            f(l.e2e_ms.p50),
            f(l.e2e_ms.p99),
            f(l.output_tokens_per_sec),
            format!("{:.2}", l.requests_per_sec),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = format!("{} at {} ({} API), latencies in ms\n", r.model, r.url, r.api);
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    for l in r.levels.iter().filter(|l| !l.errors.is_empty()) {
        let kinds: Vec<String> = l.errors.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        out += &format!("errors at concurrency {}: {}\n", l.concurrency, kinds.join(", "));
    }
    out += &format!("oim bench used {:.2} s of CPU", r.client_cpu_sec);
    if r.interrupted {
        out += " (interrupted: partial results)";
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.mean), (50.0, 90.0, 99.0, 50.5));
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
        assert_eq!(Percentiles::of(&mut [7.0]).p99, 7.0);
    }

    #[test]
    fn a_level_counts_tokens_rates_and_errors_by_kind() {
        let ok = |ttft_ms: u64, tokens: u64| {
            Outcome::Ok(Sample {
                ttft: Duration::from_millis(ttft_ms),
                itl: vec![Duration::from_millis(10); tokens as usize - 1],
                e2e: Duration::from_millis(ttft_ms + 10 * (tokens - 1)),
                output_tokens: tokens,
                input_tokens: 5,
                counted: false,
            })
        };
        let outcomes =
            vec![ok(100, 11), ok(200, 11), Outcome::Failed("timeout".into()), Outcome::Failed("http-500".into())];
        let l = LevelResult::fold(2, &outcomes, Duration::from_secs(2));
        assert_eq!((l.completed, l.failed(), l.output_tokens, l.input_tokens), (2, 2, 22, 10));
        assert_eq!((l.output_tokens_per_sec, l.requests_per_sec), (11.0, 1.0));
        assert_eq!((l.ttft_ms.p50, l.ttft_ms.p99, l.itl_ms.p50), (100.0, 200.0, 10.0));
        assert_eq!(l.errors.get("timeout"), Some(&1));
        let r = BenchResult {
            url: "http://127.0.0.1:1".into(),
            model: "m".into(),
            api: "chat".into(),
            input_tokens: 5,
            output_tokens: 11,
            levels: vec![l],
            interrupted: true,
            client_cpu_sec: 0.5,
        };
        let t = table(&r);
        assert!(t.contains("TTFT P50") && t.contains("http-500 x1") && t.contains("partial results"), "{t}");
    }
}
