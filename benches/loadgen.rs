//! `oim bench` at scale: how many concurrent streams it sustains on this machine and what it
//! costs. The simulator (tests/sim) answers with a fixed TTFT and inter-token latency; a level
//! is sustained when the TTFT p50 and ITL p50 that `oim bench` measures stay within 10% of
//! those and no request fails. Prints `oim bench`'s own CPU time (and the simulator's, which
//! shares the cores). Run with `make bench` (release build).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

const TTFT_MS: f64 = 200.0;
const ITL_MS: f64 = 50.0;
const OUTPUT_TOKENS: u32 = 64;

fn cpu_sec(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn main() {
    let mut sim = Command::new(env!("CARGO_BIN_EXE_oim-vllm-sim"))
        .args(["serve", "sim/llama", "--port", "0", "--ttft-ms", &TTFT_MS.to_string(), "--itl-ms", &ITL_MS.to_string()])
        .args(["--max-num-seqs", "4096"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the simulator");
    let mut line = String::new();
    BufReader::new(sim.stdout.take().expect("piped")).read_line(&mut line).expect("simulator address");
    let url = line.trim().trim_start_matches("listening on ").to_string();
    println!(
        "oim bench vs oim-vllm-sim (TTFT {TTFT_MS} ms, ITL {ITL_MS} ms, {OUTPUT_TOKENS} output tokens), {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "{:>5} {:>6} {:>9} {:>8} {:>9} {:>10} {:>13} {:>8} {:>9}",
        "conc", "ok", "TTFT p50", "ITL p50", "tok/s", "oim CPU s", "CPU ms/1k tok", "sim CPU", "sustained"
    );
    let mut best = 0;
    for c in [1u32, 64, 128, 256, 512] {
        let sim_before = cpu_sec(sim.id());
        let out = Command::new(env!("CARGO_BIN_EXE_oim"))
            .args(["bench", "--url", &url, "--model", "sim/llama", "-o", "json", "--no-progress"])
            .args(["--concurrency", &c.to_string(), "--requests", &(2 * c).max(16).to_string()])
            .args(["--input-tokens", "128", "--output-tokens", &OUTPUT_TOKENS.to_string(), "--timeout", "60"])
            .output()
            .expect("run oim bench");
        let r: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("oim bench output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
        let l = &r["levels"][0];
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let (ttft, itl, tps) = (f(&l["ttftMs"]["p50"]), f(&l["itlMs"]["p50"]), f(&l["outputTokensPerSec"]));
        let cpu = f(&r["clientCpuSec"]);
        let tokens = f(&l["outputTokens"]);
        let failed = l["errors"].as_object().map_or(0, |e| e.values().filter_map(Value::as_u64).sum::<u64>());
        let ok = failed == 0 && (ttft - TTFT_MS).abs() <= 0.1 * TTFT_MS && (itl - ITL_MS).abs() <= 0.1 * ITL_MS;
        if ok {
            best = c;
        }
        println!(
            "{c:>5} {:>6} {ttft:>9.1} {itl:>8.1} {tps:>9.0} {cpu:>10.2} {:>13.1} {:>8.2} {:>9}",
            l["completed"].as_u64().unwrap_or(0),
            cpu * 1000.0 / (tokens / 1000.0).max(1e-9),
            cpu_sec(sim.id()) - sim_before,
            if ok { "yes" } else { "no" }
        );
    }
    println!("largest concurrency sustained within 10% of the configured latencies: {best} streams (target 512)");
    let _ = sim.kill();
    let _ = sim.wait();
}
