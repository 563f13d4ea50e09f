//! `oim study run`: for each candidate without a result, deploy it — on this machine (`--local`:
//! the engine command with the candidate's args and env) or on a cluster ([`super::cluster`]) —,
//! wait until it answers `/health`, run `oim bench` over the study's concurrency sweep, tear it
//! down and write the result atomically. Candidates with a result are skipped, so a run
//! interrupted at any point resumes where it stopped; Ctrl-C tears the candidate in progress
//! down and leaves it unmeasured.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::cluster::{self, ClusterTarget};
use super::{CandidateResult, StudyDir, StudyError, now_rfc3339, write_atomic};
use crate::bench::{self, Api, BenchConfig};
use crate::profile::schema::Profile;

/// Where candidates run.
#[derive(Clone)]
pub enum Target {
    /// Start the engine on this machine: the command before the model, e.g. `vllm serve`.
    Local {
        /// The engine command.
        engine_command: Vec<String>,
    },
    /// Deploy on a cluster.
    Cluster(ClusterTarget),
}

/// How a run deploys and measures candidates.
#[derive(Clone)]
pub struct RunOptions {
    /// Where.
    pub target: Target,
    /// How long a candidate may take to answer `/health` (cluster: including scheduling and
    /// the image pull).
    pub startup_timeout: Duration,
    /// Deadline of one benchmark request.
    pub request_timeout: Duration,
    /// Draw bench progress bars on a terminal.
    pub progress: bool,
}

impl RunOptions {
    fn mode(&self) -> &'static str {
        match self.target {
            Target::Local { .. } => "local",
            Target::Cluster(_) => "cluster",
        }
    }
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
pub async fn run(
    s: &StudyDir,
    opts: &RunOptions,
    stop: watch::Receiver<bool>,
    say: &mut dyn FnMut(String),
) -> Result<RunSummary, StudyError> {
    for d in ["results", "logs"] {
        let p = s.dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| StudyError::new(&p, e.to_string()))?;
    }
    if let Target::Cluster(t) = &opts.target {
        cluster::check(t)
            .await
            .map_err(|problem| StudyError { path: format!("namespace {}", t.namespace), problem })?;
        let left = cluster::sweep(t, &s.study).await;
        if !left.is_empty() {
            say(format!("removed what an interrupted run left in {}: {}", t.namespace, left.join(", ")));
        }
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
pub fn engine_argv(engine_command: &[String], p: &Profile, port: u16) -> Vec<String> {
    let mut argv = engine_command.to_vec();
    argv.push(p.weights().to_string());
    argv.extend(["--served-model-name".into(), p.model.clone(), "--host".into(), "127.0.0.1".into()]);
    argv.extend(["--port".into(), port.to_string()]);
    argv.extend(p.engine_args());
    argv
}

/// A deployed candidate: an engine process here, or objects on the cluster.
enum Deployed {
    Local { engine: Engine, base: String, log: PathBuf },
    Cluster(cluster::Deployed),
}

impl Deployed {
    async fn start(
        s: &StudyDir,
        p: &Profile,
        opts: &RunOptions,
        say: &mut dyn FnMut(String),
    ) -> Result<Deployed, String> {
        match &opts.target {
            Target::Local { engine_command } => {
                let port = free_port()?;
                let argv = engine_argv(engine_command, p, port);
                let log = s.dir.join("logs").join(format!("{}.log", p.name));
                say(format!("starting {}", argv.join(" ")));
                let engine = Engine::start(&argv, p, &log)?;
                Ok(Deployed::Local { engine, base: format!("http://127.0.0.1:{port}"), log })
            }
            Target::Cluster(t) => {
                let d = cluster::deploy(t, &s.study, p).await?;
                say(format!("applied {}", d.describe()));
                Ok(Deployed::Cluster(d))
            }
        }
    }

    /// Waits until the engine answers `/health`; returns its base URL.
    async fn ready(
        &mut self,
        client: &reqwest::Client,
        timeout: Duration,
        say: &mut dyn FnMut(String),
    ) -> Result<String, String> {
        let start = Instant::now();
        match self {
            Deployed::Local { engine, base, log } => {
                wait_healthy(client, base, Some(engine), timeout, log).await?;
                Ok(base.clone())
            }
            Deployed::Cluster(d) => {
                let base = d.wait_ready(timeout, say).await?;
                let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(5));
                if let Err(e) = wait_healthy(client, &base, None, left, Path::new("")).await {
                    let pod = d.pod.as_deref().unwrap_or("unknown");
                    let forward =
                        d.forward_error().map(|e| format!("; last port-forward error: {e}")).unwrap_or_default();
                    return Err(format!("{e} (pod {pod}){forward}"));
                }
                Ok(base)
            }
        }
    }

    async fn stop(&mut self) {
        match self {
            Deployed::Local { engine, .. } => engine.stop().await,
            Deployed::Cluster(d) => d.teardown().await,
        }
    }

    fn where_to_look(&self) -> String {
        match self {
            Deployed::Local { log, .. } => format!("see {}", log.display()),
            Deployed::Cluster(d) => format!("see the logs of pod {}", d.pod.as_deref().unwrap_or("(none)")),
        }
    }
}

async fn run_one(
    s: &StudyDir,
    p: &Profile,
    opts: &RunOptions,
    mut stop: watch::Receiver<bool>,
    tag: &str,
    say: &mut dyn FnMut(String),
) -> Result<Option<CandidateResult>, String> {
    let mut tell = |line: String| say(format!("{tag}: {line}"));
    let mut deployed = Deployed::start(s, p, opts, &mut tell).await?;
    let client = bench::client(Duration::from_secs(5))?;
    let started = now_rfc3339();
    let ready = tokio::select! {
        r = deployed.ready(&client, opts.startup_timeout, &mut tell) => r,
        _ = stop.wait_for(|s| *s) => { deployed.stop().await; return Ok(None); }
    };
    let base = match ready {
        Ok(b) => b,
        Err(e) => {
            deployed.stop().await;
            return Err(e);
        }
    };
    let engine_version = version(&client, &base).await.unwrap_or_else(|| p.engine.version.clone());
    tell(format!("ready ({engine_version}); benchmarking at concurrency {:?}", s.study.bench.concurrencies));
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
    let look = deployed.where_to_look();
    tell("tearing down".into());
    deployed.stop().await;
    let result = result?;
    if result.interrupted {
        return Ok(None);
    }
    if result.levels.iter().all(|l| l.completed == 0) {
        return Err(format!("no request succeeded; {look}"));
    }
    Ok(Some(CandidateResult {
        candidate: p.name.clone(),
        engine_version,
        started,
        finished: now_rfc3339(),
        mode: opts.mode().into(),
        bench: result,
    }))
}

async fn version(client: &reqwest::Client, base: &str) -> Option<String> {
    let r = client.get(format!("{base}/version")).timeout(Duration::from_secs(5)).send().await.ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    let v = v.get("version")?.as_str()?;
    Some(if v.starts_with(|c: char| c.is_ascii_digit()) { format!("vllm {v}") } else { v.to_string() })
}

/// Polls `/health` until it answers; a local engine that exits first fails at once.
async fn wait_healthy(
    client: &reqwest::Client,
    base: &str,
    mut engine: Option<&mut Engine>,
    timeout: Duration,
    log: &Path,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Some(status) = engine.as_mut().and_then(|e| e.exited()) {
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
            let see = if engine.is_some() { format!("; see {}", log.display()) } else { String::new() };
            return Err(format!("{base}/health did not answer within {}s{see}", timeout.as_secs()));
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
