//! `oim bench` against an established external load generator, inference-perf
//! (kubernetes-sigs, installed once by `tests/crosscheck/install.sh`, which `make test` runs), on
//! the same simulator with the same load at the same time: TTFT p50, ITL p50 and output tokens/s
//! must agree within 10% at concurrency 1 and 16.
//!
//! Same time, because throughput integrates every scheduling delay: on a shared CI machine two
//! runs a minute apart see different loads, so each `oim bench` level starts when
//! inference-perf logs the start of the same stage, and both measure the one simulator (whose
//! slots are many more than both tools' streams, so neither slows the other's requests).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::sim::Sim;

const MODEL: &str = "sim/llama";
const TOLERANCE: f64 = 0.10;
const INPUT_TOKENS: u32 = 64;
/// Requests of about 1.4 s (TTFT 200 ms, 31 gaps of 40 ms), so per-request overheads of a tool
/// starved of CPU on a shared machine stay a small part of each.
const OUTPUT_TOKENS: u32 = 32;
/// (concurrency, requests): 16 one at a time, then ten waves of 16, so ramp-up and ramp-down
/// are a small part of each level.
const LEVELS: [(u32, u32); 2] = [(1, 16), (16, 160)];

/// The inference-perf virtualenv `make test` installed.
fn inference_perf() -> PathBuf {
    let dir = std::env::var("OIM_INFERENCE_PERF").unwrap_or_else(|_| {
        panic!("OIM_INFERENCE_PERF is not set: run `make test`, or `export OIM_INFERENCE_PERF=$(bash tests/crosscheck/install.sh)`")
    });
    PathBuf::from(dir)
}

/// One `oim bench` level, as its JSON result.
fn oim_bench(url: &str, concurrency: u32, requests: u32) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(["bench", "--url", url, "--model", MODEL, "--api", "completions", "-o", "json", "--no-progress"])
        .args(["--concurrency", &concurrency.to_string(), "--requests", &requests.to_string()])
        .args(["--input-tokens", &INPUT_TOKENS.to_string(), "--output-tokens", &OUTPUT_TOKENS.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "oim bench: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts inference-perf with the same load (a stage per level).
fn start_inference_perf(venv: &Path, url: &str, work: &Path) -> Running {
    let tokenizer = work.join("tokenizer");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/crosscheck/tokenizer.py");
    let made = Command::new(venv.join("bin/python")).arg(script).arg(&tokenizer).output().unwrap();
    assert!(made.status.success(), "tokenizer.py: {}", String::from_utf8_lossy(&made.stderr));
    let total: u32 = LEVELS.iter().map(|l| l.1).sum();
    let stages: Vec<String> =
        LEVELS.iter().map(|(c, r)| format!("    - {{num_requests: {r}, concurrency_level: {c}}}")).collect();
    let config = format!(
        "api: {{type: completion, streaming: true}}
data:
  type: random
  input_distribution: {{min: {INPUT_TOKENS}, max: {INPUT_TOKENS}, mean: {INPUT_TOKENS}, std_dev: 0, total_count: {total}}}
  output_distribution: {{min: {OUTPUT_TOKENS}, max: {OUTPUT_TOKENS}, mean: {OUTPUT_TOKENS}, std_dev: 0, total_count: {total}}}
load:
  type: concurrent
  stages:
{}
  num_workers: 1
server: {{type: vllm, model_name: {MODEL}, base_url: \"{url}\", ignore_eos: true}}
tokenizer: {{pretrained_model_name_or_path: \"{}\"}}
storage: {{local_storage: {{path: \"{}\"}}}}
report: {{request_lifecycle: {{summary: true, per_stage: true}}}}
",
        stages.join("\n"),
        tokenizer.display(),
        work.join("reports").display()
    );
    let config_path = work.join("inference-perf.yaml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(venv.join("bin/inference-perf"))
        .arg("--config_file")
        .arg(&config_path)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(work.join("inference-perf.err")).unwrap())
        .spawn()
        .unwrap();
    // Its log (stdout) says when each stage starts; the reader forwards those and keeps the rest.
    let (started, stages) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            for i in 0..LEVELS.len() {
                if line.contains(&format!("Stage {i} - run started")) {
                    let _ = started.send(i);
                }
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    Running { child, stages, log, work: work.to_path_buf() }
}

/// inference-perf, running.
struct Running {
    child: std::process::Child,
    stages: mpsc::Receiver<usize>,
    log: std::thread::JoinHandle<String>,
    work: PathBuf,
}

impl Running {
    /// Waits until inference-perf starts stage `i`.
    fn wait_for_stage(&self, i: usize) {
        loop {
            match self.stages.recv_timeout(Duration::from_secs(180)) {
                Ok(s) if s == i => return,
                Ok(_) => {}
                Err(e) => {
                    let err = std::fs::read_to_string(self.work.join("inference-perf.err")).unwrap_or_default();
                    panic!(
                        "inference-perf did not start stage {i} ({e}); stderr:\n{}",
                        &err[err.len().saturating_sub(3000)..]
                    )
                }
            }
        }
    }

    /// Waits for it to finish; returns each stage's lifecycle metrics of successful requests.
    fn finish(mut self) -> Vec<Value> {
        let status = self.child.wait().unwrap();
        let mut log = self.log.join().unwrap();
        log.push_str(&std::fs::read_to_string(self.work.join("inference-perf.err")).unwrap_or_default());
        let tail = &log[log.len().saturating_sub(3000)..];
        assert!(status.success(), "inference-perf failed:\n{tail}");
        // Reports go to the storage path, or a timestamped directory under it.
        let first = find_file(&self.work.join("reports"), "stage_0_lifecycle_metrics.json")
            .unwrap_or_else(|| panic!("no stage reports from inference-perf:\n{tail}"));
        let dir = first.parent().unwrap();
        (0..LEVELS.len())
            .map(|i| {
                let path = dir.join(format!("stage_{i}_lifecycle_metrics.json"));
                let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
                v["successes"].clone()
            })
            .collect()
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if p.is_dir()
            && let Some(f) = find_file(&p, name)
        {
            return Some(f);
        }
    }
    None
}

#[test]
fn oim_bench_agrees_with_inference_perf_within_10_percent_on_the_same_simulator() {
    let venv = inference_perf();
    let _serial = crate::bench::one_at_a_time();
    let sim = Sim::start(MODEL, &["--ttft-ms", "200", "--itl-ms", "40"]);
    let work = crate::profiles::tempdir("crosscheck");
    let theirs = start_inference_perf(&venv, &sim.url, &work);
    let ours: Vec<Value> = LEVELS
        .iter()
        .enumerate()
        .map(|(i, (c, r))| {
            theirs.wait_for_stage(i);
            oim_bench(&sim.url, *c, *r)["levels"][0].clone()
        })
        .collect();
    let theirs = theirs.finish();

    let mut rows = vec![];
    for ((c, _), (o, t)) in LEVELS.iter().zip(ours.iter().zip(&theirs)) {
        assert_eq!(o["completed"].as_u64(), Some(u64::from(LEVELS.iter().find(|l| l.0 == *c).unwrap().1)), "{o}");
        let pairs = [
            (
                "TTFT p50 ms",
                o["ttftMs"]["p50"].as_f64(),
                t["latency"]["time_to_first_token"]["median"].as_f64().map(|s| s * 1000.0),
            ),
            (
                "ITL p50 ms",
                o["itlMs"]["p50"].as_f64(),
                t["latency"]["inter_token_latency"]["median"].as_f64().map(|s| s * 1000.0),
            ),
            ("output tokens/s", o["outputTokensPerSec"].as_f64(), t["throughput"]["output_tokens_per_sec"].as_f64()),
        ];
        for (name, a, b) in pairs {
            let (a, b) = (
                a.unwrap_or_else(|| panic!("oim bench has no {name}")),
                b.unwrap_or_else(|| panic!("inference-perf has no {name}: {t}")),
            );
            rows.push((*c, name, a, b, (a - b).abs() / b.abs().max(1e-9)));
        }
    }
    let table: String = rows
        .iter()
        .map(|(c, name, a, b, d)| {
            format!("c={c:<3} {name:<16} oim bench {a:>8.1}  inference-perf {b:>8.1}  {:>5.1}%\n", d * 100.0)
        })
        .collect();
    println!("{table}");
    let over: Vec<_> = rows.iter().filter(|r| r.4 > TOLERANCE).collect();
    assert!(over.is_empty(), "more than {:.0}% apart:\n{table}", TOLERANCE * 100.0);
}
