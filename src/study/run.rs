//! `oim study run --local`: for each candidate without a result, start the engine command on
//! this machine with the candidate's args and env, wait for `/health`, run `oim bench` over the
//! study's concurrency sweep, stop the engine and write the result atomically. Candidates with
//! a result are skipped, so a run interrupted at any point resumes where it stopped; Ctrl-C
//! stops the engine and leaves the candidate in progress unmeasured.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::{CandidateResult, StudyDir, StudyError, now_rfc3339, write_atomic};
use crate::bench::{self, Api, BenchConfig};
use crate::profile::schema::Profile;

/// How a run starts engines.
#[derive(Debug, Clone)]
pub struct LocalRun {
    /// The engine command before the model, e.g. `vllm serve`.
    pub engine_command: Vec<String>,
    /// How long an engine may take to answer `/health`.
    pub startup_timeout: Duration,
    /// Deadline of one benchmark request.
    pub request_timeout: Duration,
    /// Draw bench progress bars on a terminal.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Candidates measured now.
    pub measured: Vec<String>,
    /// Candidates skipped because they had a result.
    pub skipped: Vec<String>,
    /// Candidates that failed, with why.
    pub failed: Vec<(String, String)>,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
}

/// Runs every unfinished candidate; `say` receives one progress line per state change.
pub async fn run_local(
    s: &StudyDir,
    opts: &LocalRun,
    stop: watch::Receiver<bool>,
    say: &mut dyn FnMut(String),
) -> Result<RunSummary, StudyError> {
    for d in ["results", "logs"] {
        let p = s.dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| StudyError::new(&p, e.to_string()))?;
    }
    let mut summary = RunSummary::default();
    let total = s.candidates.len();
    for (i, c) in s.candidates.iter().enumerate() {
        let tag = format!("[{}/{total}] {}", i + 1, c.name);
        if s.result(&c.name)?.is_some() {
            say(format!("{tag}: done earlier, skipped"));
            summary.skipped.push(c.name.clone());
            continue;
        }
        if *stop.borrow() {
            summary.interrupted = true;
            break;
        }
        match run_one(s, c, opts, stop.clone(), &tag, say).await {
            Ok(Some(result)) => {
                let json = serde_json::to_vec_pretty(&result).unwrap_or_default();
                write_atomic(&s.result_path(&c.name), &json)?;
                say(format!("{tag}: done ({})", headline(&result)));
                summary.measured.push(c.name.clone());
            }
            Ok(None) => {
                say(format!("{tag}: interrupted; it will be measured on the next run"));
                summary.interrupted = true;
                break;
            }
            Err(why) => {
                say(format!("{tag}: failed: {why}"));
                summary.failed.push((c.name.clone(), why));
            }
        }
    }
    Ok(summary)
}

fn headline(r: &CandidateResult) -> String {
    let c1 = r.bench.levels.iter().find(|l| l.concurrency == 1);
    let best = r.bench.levels.iter().map(|l| l.output_tokens_per_sec).fold(0.0, f64::max);
    match c1 {
        Some(l) => format!("TTFT p50 {:.1} ms at c=1, best {best:.0} tok/s", l.ttft_ms.p50),
        None => format!("best {best:.0} tok/s"),
    }
}

/// A free loopback port (bound, then released for the engine to take).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// The engine command line for a candidate (DESIGN §7 order: served name and port, then the
/// profile's args).
pub fn engine_argv(opts: &LocalRun, p: &Profile, port: u16) -> Vec<String> {
    let mut argv = opts.engine_command.clone();
    argv.push(p.weights().to_string());
    argv.extend(["--served-model-name".into(), p.model.clone(), "--host".into(), "127.0.0.1".into()]);
    argv.extend(["--port".into(), port.to_string()]);
    argv.extend(p.engine_args());
    argv
}

async fn run_one(
    s: &StudyDir,
    p: &Profile,
    opts: &LocalRun,
    mut stop: watch::Receiver<bool>,
    tag: &str,
    say: &mut dyn FnMut(String),
) -> Result<Option<CandidateResult>, String> {
    let port = free_port()?;
    let argv = engine_argv(opts, p, port);
    let log_path = s.dir.join("logs").join(format!("{}.log", p.name));
    say(format!("{tag}: starting {}", argv.join(" ")));
    let mut engine = Engine::start(&argv, p, &log_path)?;
    let base = format!("http://127.0.0.1:{port}");
    let client = bench::client(Duration::from_secs(5))?;
    let started = now_rfc3339();
    let ready = tokio::select! {
        r = wait_healthy(&client, &base, &mut engine, opts.startup_timeout, &log_path) => r,
        _ = stop.wait_for(|s| *s) => { engine.stop().await; return Ok(None); }
    };
    if let Err(e) = ready {
        engine.stop().await;
        return Err(e);
    }
    let engine_version = version(&client, &base).await.unwrap_or_else(|| p.engine.version.clone());
    say(format!("{tag}: ready ({engine_version}); benchmarking at concurrency {:?}", s.study.bench.concurrencies));
    let cfg = BenchConfig {
        url: base,
        model: p.model.clone(),
        api: Api::Chat,
        input_tokens: s.study.bench.input_tokens,
        output_tokens: s.study.bench.output_tokens,
        concurrencies: s.study.bench.concurrencies.clone(),
        requests: s.study.bench.requests,
        duration: None,
        dataset: vec![],
        timeout: opts.request_timeout,
        progress: opts.progress,
    };
    let result = bench::run(&cfg, stop.clone()).await;
    engine.stop().await;
    let result = result?;
    if result.interrupted {
        return Ok(None);
    }
    if result.levels.iter().all(|l| l.completed == 0) {
        return Err(format!("no request succeeded; see {}", log_path.display()));
    }
    Ok(Some(CandidateResult {
        candidate: p.name.clone(),
        engine_version,
        started,
        finished: now_rfc3339(),
        mode: "local".into(),
        bench: result,
    }))
}

async fn version(client: &reqwest::Client, base: &str) -> Option<String> {
    let r = client.get(format!("{base}/version")).timeout(Duration::from_secs(5)).send().await.ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    let v = v.get("version")?.as_str()?;
    Some(if v.starts_with(|c: char| c.is_ascii_digit()) { format!("vllm {v}") } else { v.to_string() })
}

async fn wait_healthy(
    client: &reqwest::Client,
    base: &str,
    engine: &mut Engine,
    timeout: Duration,
    log: &Path,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Some(status) = engine.exited() {
            return Err(format!(
                "the engine exited ({status}) before it was healthy; last lines of {}:\n{}",
                log.display(),
                tail(log)
            ));
        }
        let ok = client
            .get(format!("{base}/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!("not healthy after {}s; see {}", timeout.as_secs(), log.display()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last lines of a log, bounded.
fn tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(4096)..]).to_string();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// An engine process started for one candidate.
struct Engine {
    child: Child,
    log: PathBuf,
}

impl Engine {
    fn start(argv: &[String], p: &Profile, log: &Path) -> Result<Engine, String> {
        let Some((program, args)) = argv.split_first() else { return Err("--engine-command is empty".into()) };
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .envs(&p.env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {program:?}: {e}; set --engine-command"))?;
        Ok(Engine { child, log: log.to_path_buf() })
    }

    fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// SIGTERM, up to 30 s to exit (vLLM frees device memory on the way out), then SIGKILL.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            if tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.is_ok() {
                return;
            }
            tracing::warn!(log = %self.log.display(), "engine ignored SIGTERM for 30 s; killing it");
        }
        let _ = self.child.kill().await;
    }
}
