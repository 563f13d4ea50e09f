//! `oim bench` against the simulator: the figures it reports match the latencies the simulator
//! was configured with, errors and stalls are counted without hanging, and Ctrl-C still prints.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sim::Sim;

const MODEL: &str = "sim/llama";

/// Timing tests measure the machine too: these run one at a time, so that one test's load
/// (the Ctrl-C test drives thousands of requests) does not skew another's latencies.
/// The study and cross-check tests take it too. A tokio mutex, so async tests can hold it across
/// awaits (and a failed test does not poison it).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// For synchronous tests.
pub(crate) fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.blocking_lock()
}

/// For async tests.
pub(crate) async fn one_at_a_time_async() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

fn oim_bench(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oim"))
        .arg("bench")
        .args(["--model", MODEL, "-o", "json", "--no-progress"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), v, stderr)
}

fn within(measured: f64, expected: f64, tolerance: f64) -> bool {
    (measured - expected).abs() <= expected * tolerance
}

#[test]
fn bench_reports_the_configured_ttft_and_itl_within_10_percent_at_concurrency_1_and_16() {
    let _serial = one_at_a_time();
    // Latencies large enough that a loaded CI machine's scheduling delays stay well inside 10%.
    let (ttft, itl, out_tokens) = (500.0, 50.0, 12.0);
    let sim = Sim::start(MODEL, &["--ttft-ms", "500", "--itl-ms", "50"]);
    for (c, requests) in [(1.0, 8), (16.0, 32)] {
        let (code, r, err) = oim_bench(&[
            "--url",
            &sim.url,
            "--concurrency",
            &c.to_string(),
            "--requests",
            &requests.to_string(),
            "--input-tokens",
            "64",
            "--output-tokens",
            "12",
        ]);
        assert_eq!(code, 0, "{err}");
        let l = &r["levels"][0];
        let (t, i) = (l["ttftMs"]["p50"].as_f64().unwrap(), l["itlMs"]["p50"].as_f64().unwrap());
        assert!(within(t, ttft, 0.10), "TTFT p50 {t} ms at concurrency {c}, configured {ttft}");
        assert!(within(i, itl, 0.10), "ITL p50 {i} ms at concurrency {c}, configured {itl}");
        assert_eq!(l["completed"], requests, "{l}");
        assert!(l["errors"].as_object().unwrap().is_empty(), "{l}");
        // Tokens come from usage: exactly what was asked, and the prompt as the server counted it.
        assert_eq!(l["outputTokens"], requests * 12);
        assert_eq!(l["inputTokens"], requests * 64);
        assert_eq!(l["countedTokens"], 0);
        // With C streams each taking TTFT + 11 ITL, throughput is C x 12 tokens per stream time:
        // no faster, and slower only by what a loaded machine adds (stalls lengthen streams).
        let ideal = c * out_tokens / ((ttft + (out_tokens - 1.0) * itl) / 1000.0);
        let tps = l["outputTokensPerSec"].as_f64().unwrap();
        assert!(tps <= ideal * 1.05 && tps >= ideal * 0.75, "{tps} tokens/s at concurrency {c}, ideal {ideal}");
        assert!(r["clientCpuSec"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn the_completions_api_and_a_dataset_work_and_missing_usage_falls_back_to_counted_chunks() {
    let _serial = one_at_a_time();
    let sim = Sim::start(MODEL, &["--ttft-ms", "20", "--itl-ms", "5", "--no-usage"]);
    let dir = crate::profiles::tempdir("bench-ds");
    let ds = dir.join("prompts.jsonl");
    std::fs::write(
        &ds,
        "{\"prompt\": \"one two three\", \"output_tokens\": 7}\n{\"prompt\": \"four\", \"output_tokens\": 7}\n",
    )
    .unwrap();
    let (code, r, err) = oim_bench(&[
        "--url",
        &format!("{}/v1", sim.url),
        "--api",
        "completions",
        "--dataset",
        ds.to_str().unwrap(),
        "--requests",
        "6",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning") && err.contains("no usage"), "{err}");
    let l = &r["levels"][0];
    assert_eq!(
        (l["completed"].as_u64(), l["outputTokens"].as_u64(), l["countedTokens"].as_u64()),
        (Some(6), Some(42), Some(6))
    );
    assert_eq!(r["api"], "completions");
}

#[test]
fn failures_and_stalled_streams_are_counted_per_request_and_the_run_ends() {
    let _serial = one_at_a_time();
    // Every 3rd request fails with a 500; a stalled server never finishes a stream.
    let failing = Sim::start(MODEL, &["--ttft-ms", "10", "--itl-ms", "2", "--fail-every", "3"]);
    let (code, r, err) = oim_bench(&["--url", &failing.url, "--requests", "9", "--output-tokens", "4"]);
    assert_eq!(code, 0, "{err}");
    let l = &r["levels"][0];
    assert_eq!((l["completed"].as_u64(), l["errors"]["http-500"].as_u64()), (Some(6), Some(3)), "{l}");

    let stalled = Sim::start(MODEL, &["--ttft-ms", "10", "--itl-ms", "2", "--stall-after", "2"]);
    let start = Instant::now();
    let (code, r, _) = oim_bench(&[
        "--url",
        &stalled.url,
        "--concurrency",
        "4",
        "--requests",
        "4",
        "--output-tokens",
        "8",
        "--timeout",
        "1",
    ]);
    assert!(start.elapsed() < Duration::from_secs(10), "a stalled server must not hang the run");
    assert_eq!(code, 1, "nothing succeeded");
    assert_eq!(r["levels"][0]["errors"]["timeout"], 4);

    let (code, _, err) = oim_bench(&["--url", "http://127.0.0.1:1", "--requests", "2"]);
    assert_eq!(code, 1);
    assert!(err.contains("no request succeeded"), "{err}");
}

#[test]
fn bad_flags_are_refused_with_the_fix() {
    let _serial = one_at_a_time();
    let out = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(["bench", "--model", MODEL, "--url", "127.0.0.1:8000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected http://HOST:PORT"));
    let out = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(["bench", "--model", MODEL, "--url", "http://127.0.0.1:8000", "--concurrency", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 to 4096"));
}

#[test]
fn ctrl_c_prints_what_was_measured_so_far() {
    let _serial = one_at_a_time();
    let sim = Sim::start(MODEL, &["--ttft-ms", "20", "--itl-ms", "5"]);
    let child = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(["bench", "--model", MODEL, "--url", &sim.url, "--concurrency", "2,8", "--requests", "100000"])
        .args(["--output-tokens", "8", "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10), "Ctrl-C ends the run promptly");
    assert_eq!(out.status.code(), Some(130));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("TTFT P50") && table.contains("interrupted: partial results"), "{table}");
    // The first level's row is there with requests that completed.
    let row = table.lines().find(|l| l.trim_start().starts_with("2 ")).unwrap_or_else(|| panic!("{table}"));
    let ok: u64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(ok > 10, "{row}");
}

#[test]
fn a_duration_bounds_each_level_instead_of_a_request_count() {
    let _serial = one_at_a_time();
    let sim = Sim::start(MODEL, &["--ttft-ms", "50", "--itl-ms", "10"]);
    let start = Instant::now();
    let (code, r, err) =
        oim_bench(&["--url", &sim.url, "--concurrency", "1,4", "--duration", "1", "--output-tokens", "6"]);
    assert_eq!(code, 0, "{err}");
    // Two levels of 1 s each; requests in flight at the deadline (100 ms each) finish.
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    for l in r["levels"].as_array().unwrap() {
        let secs = l["durationSec"].as_f64().unwrap();
        assert!((1.0..1.5).contains(&secs), "{l}");
        // At most 10 requests per second per stream (100 ms each), and some.
        let per_stream = l["completed"].as_f64().unwrap() / l["concurrency"].as_f64().unwrap();
        assert!((2.0..=11.0).contains(&per_stream), "{l}");
    }
}
