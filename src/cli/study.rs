//! `oim study plan|run|publish|report`: performance studies from the command line (see
//! `crate::study`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{RegistryArgs, exit};
use crate::bench::parse_concurrencies;
use crate::profile::engines::Engines;
use crate::render::Platform;
use crate::study::cluster::ClusterTarget;
use crate::study::publish::Rules;
use crate::study::{BenchPlan, StudyDir, plan, publish, report, run};

/// `oim study ...`.
#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Write candidate profiles for a model on an accelerator into a study directory.
    Plan(PlanArgs),
    /// Benchmark every candidate without a result (resumable).
    Run(RunArgs),
    /// Publish the best candidate per KPI, with the measured figures and the evidence attached.
    Publish(PublishArgs),
    /// Draw the latency-throughput frontier as HTML or SVG.
    Report(ReportArgs),
}

/// `oim study plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Hugging Face model id (in the estimator's architecture table).
    #[arg(long, value_name = "M")]
    pub model: String,
    /// VENDOR/PRODUCT, e.g. nvidia/h100-sxm-80gb (slugs of src/hardware/devices.yaml).
    #[arg(long, value_name = "VENDOR/PRODUCT")]
    pub accelerator: String,
    /// Devices per node available to one replica.
    #[arg(long, value_name = "N")]
    pub count: u32,
    /// Memory per device, for products not in the device table.
    #[arg(long, value_name = "MIB")]
    pub device_memory_mib: Option<u64>,
    /// Precisions to plan (default: those the device runs natively).
    #[arg(long, value_name = "P,...")]
    pub precision: Option<String>,
    /// Tensor-parallel degrees to plan (default 1,2,4,8 as they fit).
    #[arg(long, value_name = "TP,...", value_delimiter = ',')]
    pub tensor: Vec<u32>,
    /// max-num-seqs steps.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "64,256")]
    pub max_num_seqs: Vec<u32>,
    /// max-model-len steps (default: min(context, 8192) and the largest that fits).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub max_model_len: Vec<u64>,
    /// Concurrency sweep of every candidate; must include 1.
    #[arg(long, value_name = "C,...", default_value = "1,4,16,64")]
    pub concurrency: String,
    /// Prompt tokens per request.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub input_tokens: u32,
    /// Output tokens per request.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub output_tokens: u32,
    /// Requests per level (default 4 x concurrency, at least 16).
    #[arg(long, value_name = "R")]
    pub requests: Option<u64>,
    /// The study directory to create.
    #[arg(short = 'o', long = "output", value_name = "DIR", default_value = "study")]
    pub output: PathBuf,
}

/// `oim study run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The study directory (from `oim study plan`).
    #[arg(value_name = "PLAN")]
    pub dir: PathBuf,
    /// Start each candidate's engine on this machine instead of deploying it on the cluster.
    #[arg(long)]
    pub local: bool,
    /// --local: the engine command before the model; the candidate's args follow it.
    #[arg(long, value_name = "CMD", default_value = "vllm serve")]
    pub engine_command: String,
    /// Cluster: the namespace candidates run in (default: the kubeconfig's).
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// Cluster: only nodes with this label (repeatable), like an OIMService's nodeSelector.
    #[arg(long, value_name = "KEY=VALUE")]
    pub node_selector: Vec<String>,
    /// Cluster: Secret with the Hugging Face token (key HF_TOKEN), for gated models.
    #[arg(long, value_name = "SECRET")]
    pub auth_secret: Option<String>,
    /// Cluster: render for OpenShift (no fixed user ids).
    #[arg(long)]
    pub openshift: bool,
    /// Seconds a candidate may take to answer /health (on a cluster: scheduling, image pull and
    /// model download included).
    #[arg(long, value_name = "S", default_value_t = 900)]
    pub startup_timeout: u64,
    /// Seconds one benchmark request may take.
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub request_timeout: u64,
}

/// The KPI rules, shared by publish and report.
#[derive(Debug, Args, Clone)]
pub struct RuleArgs {
    /// Latency winners must reach this many output tokens/s at concurrency 1.
    #[arg(long, value_name = "TOK/S", default_value_t = 0.0)]
    pub throughput_floor: f64,
    /// Throughput winners count only levels with TTFT p50 up to this, ms.
    #[arg(long, value_name = "MS", default_value_t = 2000.0)]
    pub ttft_ceiling_ms: f64,
    /// What is known about the quantized winner's quality (published with it).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "online FP8 of the bf16 checkpoint; quality not measured by this study"
    )]
    pub quality_note: String,
}

impl RuleArgs {
    fn rules(&self) -> Rules {
        Rules {
            throughput_floor: self.throughput_floor,
            ttft_ceiling_ms: self.ttft_ceiling_ms,
            quality_note: self.quality_note.clone(),
        }
    }
}

/// `oim study publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The study directory with results.
    #[arg(value_name = "RESULTS")]
    pub dir: PathBuf,
    /// Registry credentials and target.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The KPI rules.
    #[command(flatten)]
    pub rules: RuleArgs,
}

/// `oim study report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The study directory with results.
    #[arg(value_name = "RESULTS")]
    pub dir: PathBuf,
    /// Output file: .html (chart and tables) or .svg (the chart).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// The KPI rules (to mark the winners).
    #[command(flatten)]
    pub rules: RuleArgs,
}

/// Runs a study subcommand.
pub async fn run(cmd: StudyCommand) -> u8 {
    match cmd {
        StudyCommand::Plan(a) => plan_cmd(a),
        StudyCommand::Run(a) => run_cmd(a).await,
        StudyCommand::Publish(a) => publish_cmd(a).await,
        StudyCommand::Report(a) => report_cmd(a),
    }
}

fn plan_cmd(a: PlanArgs) -> u8 {
    let precisions = match a.precision.as_deref().map(plan::parse_precisions).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            eprintln!("oim study plan: {e}");
            return exit::BAD_INPUT;
        }
    };
    let concurrencies = match parse_concurrencies(&a.concurrency) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oim study plan: {e}");
            return exit::BAD_INPUT;
        }
    };
    let req = plan::PlanRequest {
        model: a.model,
        accelerator: a.accelerator,
        count: a.count,
        device_memory_mib: a.device_memory_mib,
        precisions,
        max_num_seqs: a.max_num_seqs,
        max_model_len: a.max_model_len,
        tensor: a.tensor,
        bench: BenchPlan {
            input_tokens: a.input_tokens,
            output_tokens: a.output_tokens.max(1),
            concurrencies,
            requests: a.requests,
        },
    };
    let (study, candidates) = match plan::plan(&req, &Engines::builtin()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("oim study plan: {e}");
            return exit::BAD_INPUT;
        }
    };
    if let Err(e) = plan::write(&a.output, &study, &candidates) {
        eprintln!("oim study plan: {e}");
        return exit::BAD_INPUT;
    }
    println!("study {} in {}: {} candidates", study.id, a.output.display(), candidates.len());
    for c in &candidates {
        println!("  {}", c.name);
    }
    exit::OK
}

/// Parses `KEY=VALUE` node selector terms.
fn node_selector(terms: &[String]) -> Result<BTreeMap<String, String>, String> {
    terms
        .iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!(
                "--node-selector {t:?}: expected KEY=VALUE, e.g. oim.opea.dev/accelerator.product=h100-sxm-80gb"
            )),
        })
        .collect()
}

/// Where candidates run, from the flags.
async fn target(a: &RunArgs) -> Result<run::Target, (u8, String)> {
    if a.local {
        let engine_command: Vec<String> = a.engine_command.split_whitespace().map(str::to_string).collect();
        if engine_command.is_empty() {
            return Err((exit::BAD_INPUT, "--engine-command is empty; e.g. --engine-command 'vllm serve'".into()));
        }
        return Ok(run::Target::Local { engine_command });
    }
    let node_selector = node_selector(&a.node_selector).map_err(|e| (exit::BAD_INPUT, e))?;
    let client = kube::Client::try_default().await.map_err(|e| {
        (exit::BAD_INPUT, format!("no cluster to deploy candidates on ({e}); set KUBECONFIG, or pass --local"))
    })?;
    let namespace = a.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let platform = if a.openshift { Platform::Openshift } else { Platform::Kubernetes };
    Ok(run::Target::Cluster(ClusterTarget {
        client,
        namespace,
        node_selector,
        auth_secret: a.auth_secret.clone(),
        platform,
    }))
}

async fn run_cmd(a: RunArgs) -> u8 {
    let s = match StudyDir::load(&a.dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oim study run: {e}");
            return exit::BAD_INPUT;
        }
    };
    let target = match target(&a).await {
        Ok(t) => t,
        Err((code, e)) => {
            eprintln!("oim study run: {e}");
            return code;
        }
    };
    let what = match &target {
        run::Target::Local { .. } => "stopping the engine".to_string(),
        run::Target::Cluster(t) => format!("tearing down the candidate in {}", t.namespace),
    };
    let opts = run::RunOptions {
        target,
        startup_timeout: Duration::from_secs(a.startup_timeout.max(1)),
        request_timeout: Duration::from_secs(a.request_timeout.max(1)),
        progress: true,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\noim study run: interrupted; {what}");
            let _ = stop_tx.send(true);
        }
    });
    println!("study {}: {} candidates ({})", s.study.id, s.candidates.len(), if a.local { "local" } else { "cluster" });
    let mut say = |line: String| println!("{line}");
    let summary = match run::run(&s, &opts, stop_rx, &mut say).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("oim study run: {e}");
            return exit::RUNTIME;
        }
    };
    println!(
        "measured {}, skipped {} (done earlier), failed {}",
        summary.measured.len(),
        summary.skipped.len(),
        summary.failed.len()
    );
    if summary.interrupted {
        super::bench::INTERRUPTED
    } else if summary.failed.is_empty() {
        exit::OK
    } else {
        exit::RUNTIME
    }
}

async fn publish_cmd(a: PublishArgs) -> u8 {
    let s = match publish::load(&a.dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oim study publish: {e}");
            return exit::BAD_INPUT;
        }
    };
    let r = &a.registry;
    let catalog = match super::profiles::registry_catalog(
        &r.registry,
        r.insecure,
        r.registry_config.as_deref(),
        super::profiles::TAG_TTL,
    ) {
        Ok(c) => c,
        Err((code, msg)) => {
            eprintln!("oim study publish: {msg}");
            return code;
        }
    };
    let auth = match &r.registry_config {
        Some(path) => match crate::profile::oci::auth_from_file(path, &catalog.registry().host) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("oim study publish: --registry-config {e}");
                return exit::BAD_INPUT;
            }
        },
        None => oci_client::secrets::RegistryAuth::Anonymous,
    };
    let client = match crate::profile::oci::client_for(catalog.registry(), r.insecure) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oim study publish: {e}");
            return exit::RUNTIME;
        }
    };
    match publish::publish(&s, &a.rules.rules(), &catalog, &client, &auth).await {
        Ok((published, none)) => {
            for p in &published {
                println!(
                    "{} {}@{} ({})",
                    crate::profile::oci::enum_str(&p.winner.kpi),
                    p.reference,
                    p.digest,
                    p.winner.reason
                );
                println!("  evidence {}@{}", p.reference.rsplit_once(':').map_or("", |x| x.0), p.evidence_digest);
            }
            for n in none {
                println!("no winner: {n}");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("oim study publish: {e}");
            exit::RUNTIME
        }
    }
}

fn report_cmd(a: ReportArgs) -> u8 {
    let s = match StudyDir::load(&a.dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oim study report: {e}");
            return exit::BAD_INPUT;
        }
    };
    let results = match s.results() {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => {
            eprintln!("oim study report: {}: no results yet; run `oim study run` first", a.dir.display());
            return exit::BAD_INPUT;
        }
        Err(e) => {
            eprintln!("oim study report: {e}");
            return exit::BAD_INPUT;
        }
    };
    let title = format!("{} on {} — study {}", s.study.model, s.study.accelerator, s.study.id);
    let rules = a.rules.rules();
    let doc = match a.output.extension().and_then(|e| e.to_str()) {
        Some("svg") => report::svg(&title, &results, &publish::winners(&results, &rules).0),
        Some("html" | "htm") => report::html(&title, &results, &rules),
        _ => {
            eprintln!("oim study report: -o {}: name an .html or .svg file", a.output.display());
            return exit::BAD_INPUT;
        }
    };
    match doc.and_then(|d| std::fs::write(&a.output, d).map_err(|e| format!("{}: {e}", a.output.display()))) {
        Ok(()) => {
            println!("{}", a.output.display());
            exit::OK
        }
        Err(e) => {
            eprintln!("oim study report: {e}");
            exit::RUNTIME
        }
    }
}
