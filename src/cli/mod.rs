//! The `oim` command line (DESIGN §6, contract): one binary, one subcommand per role.

pub mod bench;
pub mod profiles;
pub mod render;
pub mod study;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes every subcommand uses.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Runtime failure (cluster, registry, network, or a part that is not implemented yet).
    pub const RUNTIME: u8 = 1;
    /// Bad input: the message names the file, field and fix.
    pub const BAD_INPUT: u8 = 2;
    /// No feasible profile; the result is still printed.
    pub const NO_FEASIBLE_PROFILE: u8 = 3;
}

/// oim: serve any model on whatever accelerators your cluster has, with vLLM.
#[derive(Debug, Parser)]
#[command(name = "oim", version, about, long_about = None, propagate_version = true)]
#[command(after_help = "Exit codes: 0 success, 1 runtime failure, 2 bad input, 3 no feasible profile.")]
pub struct Cli {
    /// Log format: `human` for terminals, `json` for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "OIM_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Output format for documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocFormat {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Output format for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// An aligned table.
    Table,
    /// JSON.
    Json,
}

/// Target platform for rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Platform {
    /// Upstream Kubernetes.
    Kubernetes,
    /// OpenShift (restricted-v2 SCC assigns user ids; Routes).
    Openshift,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: reconcile OIMService and OIMCache, keep the node agent deployed.
    Operator(OperatorArgs),
    /// Run the node agent: detect this node's hardware and publish it on the Node.
    NodeAgent(NodeAgentArgs),
    /// Print this machine's (or a fixture tree's) hardware inventory; no cluster.
    Detect(DetectArgs),
    /// Print every CRD as YAML.
    Crds,
    /// Download model weights from a Hugging Face hub into DEST/<repo>/<commit>/ (the OIMCache Job).
    Download(DownloadArgs),
    /// List, select and publish launch profiles.
    #[command(subcommand)]
    Profiles(ProfilesCommand),
    /// Print the objects the operator would apply, as multi-document YAML; no cluster.
    Render(RenderArgs),
    /// Load-test an OpenAI-compatible endpoint: TTFT, inter-token latency, tokens/s per concurrency.
    Bench(bench::BenchArgs),
    /// Performance studies: plan candidate profiles, benchmark them, publish the winners, report.
    #[command(subcommand)]
    Study(study::StudyCommand),
}

/// An OCI registry to write to.
#[derive(Debug, Args, Clone, Default)]
pub struct RegistryArgs {
    /// OCI registry and repository prefix, `host[:port]/prefix`. Loopback hosts use plain HTTP.
    #[arg(long, value_name = "REF")]
    pub registry: String,
    /// Use plain HTTP for a non-loopback registry.
    #[arg(long)]
    pub insecure: bool,
    /// Docker config.json with registry credentials.
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
}

/// A profile catalog: a directory or a registry.
#[derive(Debug, Args, Clone, Default)]
#[group(skip)]
pub struct CatalogArgs {
    /// A catalog directory, scanned recursively for profile YAML.
    #[arg(long, value_name = "DIR", conflicts_with = "registry", required_unless_present = "registry")]
    pub catalog: Option<PathBuf>,
    /// OCI registry and repository prefix, `host[:port]/prefix`. Loopback hosts use plain HTTP.
    #[arg(long, value_name = "REF")]
    pub registry: Option<String>,
    /// Use plain HTTP for a non-loopback registry.
    #[arg(long)]
    pub insecure: bool,
    /// Docker config.json with registry credentials.
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
}

/// `oim operator`.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Namespaces to watch (comma-separated); default all.
    #[arg(long, value_delimiter = ',', value_name = "NS,...")]
    pub watch_namespaces: Vec<String>,
    /// Default profile registry, `host[:port]/prefix`.
    #[arg(long, value_name = "REF", required_unless_present = "catalog")]
    pub profile_registry: Option<String>,
    /// A profile catalog directory instead of a registry (e.g. the seed catalog in the image).
    #[arg(long, value_name = "DIR", conflicts_with = "profile_registry")]
    pub catalog: Option<PathBuf>,
    /// Registries a per-service `profile.source` may name (comma-separated), each
    /// `host[:port][/path]` matched on whole path segments; `http://host[:port][/path]` also lets
    /// a service ask for plain HTTP with `insecure: true`.
    #[arg(long, value_delimiter = ',', value_name = "REF,...")]
    pub allowed_registries: Vec<String>,
    /// Image of the node agent DaemonSet; default the operator's own image (read from its pod).
    #[arg(long, value_name = "IMG")]
    pub agent_image: Option<String>,
    /// Namespace of the node agent DaemonSet; default the operator's own (POD_NAMESPACE) or oim-system.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS")]
    pub agent_namespace: Option<String>,
    /// Do not deploy the node agent (it is installed some other way, or not wanted).
    #[arg(long, conflicts_with_all = ["agent_image", "agent_namespace"])]
    pub no_agent: bool,
    /// Deploy the node agent even where its ValidatingAdmissionPolicy cannot be applied (clusters
    /// without the API): its ClusterRole may then patch any Node. Off by default: fail closed.
    #[arg(long)]
    pub agent_without_admission_policy: bool,
    /// Run the node agent only on nodes with this label (repeatable, `key=value`).
    #[arg(long, value_name = "KEY=VALUE")]
    pub agent_node_selector: Vec<String>,
    /// The node agent's tolerations as a JSON list (default: tolerate every taint).
    #[arg(long, value_name = "JSON")]
    pub agent_tolerations: Option<String>,
    /// Seconds before a profile tag is resolved again (updatePolicy, ProfileUpdateAvailable).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub profile_refresh: u64,
    /// YAML overriding the vendor engine table (images, env, command).
    #[arg(long, value_name = "FILE")]
    pub engine_images: Option<PathBuf>,
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_bind: String,
    /// Take a Lease before reconciling, for more than one replica: only the leader reconciles.
    #[arg(long)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: the operator's own, POD_NAMESPACE, else the
    /// kubeconfig's namespace).
    #[arg(long, value_name = "NS")]
    pub leader_elect_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, value_name = "NAME", default_value = "oim-operator")]
    pub leader_elect_lease_name: String,
    /// How long a standby waits after the leader's last renewal before taking over.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: std::time::Duration,
    /// How long the leader keeps writing without a successful renewal (shorter than the lease
    /// duration, so it stops before a standby may take over).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: std::time::Duration,
    /// How often the Lease is renewed or checked.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: std::time::Duration,
    /// Use plain HTTP for a non-loopback profile registry.
    #[arg(long)]
    pub insecure: bool,
    /// Docker config.json with registry credentials.
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
    /// The Hugging Face hub whose `config.json` and safetensors metadata size models the
    /// built-in table does not know (an OIMCache's `spec.source.hf.endpoint` wins for its model).
    #[arg(long, env = "HF_ENDPOINT", value_name = "URL", default_value = "https://huggingface.co")]
    pub hf_endpoint: String,
}

/// A duration such as `15s`, `500ms` or `1m`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let d: k8s_openapi::jiff::SignedDuration =
        text.parse().map_err(|e| format!("{text:?} is not a duration like 15s, 500ms or 1m: {e}"))?;
    std::time::Duration::try_from(d).map_err(|_| format!("{text:?}: a duration must not be negative"))
}

/// `oim node-agent`.
#[derive(Debug, Args)]
pub struct NodeAgentArgs {
    /// This node's name (default: the NODE_NAME environment variable).
    #[arg(long, env = "NODE_NAME", value_name = "N")]
    pub node_name: Option<String>,
    /// Prefix for every sysfs/procfs path.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Seconds between re-detections.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub interval: u64,
}

/// `oim detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Prefix for every sysfs/procfs path (`DIR/sys/bus/pci/devices/...`, `DIR/proc/cpuinfo`).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DocFormat::Json)]
    pub output: DocFormat,
}

/// `oim download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Repository id, e.g. `meta-llama/Llama-3.1-8B-Instruct`.
    #[arg(long, value_name = "R")]
    pub repo: String,
    /// Branch, tag or commit; resolved to a commit.
    #[arg(long, value_name = "REV", default_value = "main")]
    pub revision: String,
    /// Destination directory; files land in DEST/<repo>/<commit>/.
    #[arg(long, value_name = "DIR")]
    pub dest: PathBuf,
    /// Only files matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Skip files matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
}

/// `oim profiles ...`.
#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// List a model's profiles from a catalog directory or registry.
    List(ProfilesListArgs),
    /// Select the best feasible profile for a model on given inventories (exit 3: none fits).
    Select(ProfilesSelectArgs),
    /// Publish a catalog directory to an OCI registry.
    Push(ProfilesPushArgs),
}

/// `oim profiles list`.
#[derive(Debug, Args)]
pub struct ProfilesListArgs {
    /// Hugging Face model id.
    #[arg(long, value_name = "M")]
    pub model: String,
    /// Profile source.
    #[command(flatten)]
    pub source: CatalogArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
}

/// `oim profiles select`.
#[derive(Debug, Args)]
pub struct ProfilesSelectArgs {
    /// Hugging Face model id.
    #[arg(long, value_name = "M")]
    pub model: String,
    /// latency, throughput or quantization.
    #[arg(long, value_name = "K")]
    pub kpi: Option<String>,
    /// Only profiles of this precision.
    #[arg(long, value_name = "P")]
    pub precision: Option<String>,
    /// Never generate an estimated profile.
    #[arg(long)]
    pub no_generate: bool,
    /// The model's `config.json` (or a folder holding it and `model.safetensors.index.json`)
    /// for generated profiles; default: the built-in architecture table.
    #[arg(long, value_name = "DIR|FILE", conflicts_with = "from_hub")]
    pub model_config: Option<PathBuf>,
    /// Read `config.json` and the safetensors metadata from the Hugging Face hub
    /// (`HF_ENDPOINT`, `HF_TOKEN`) for generated profiles.
    #[arg(long)]
    pub from_hub: bool,
    /// Inventory documents or `kubectl get nodes -o yaml` output.
    #[arg(long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Profile source.
    #[command(flatten)]
    pub source: CatalogArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DocFormat::Json)]
    pub output: DocFormat,
}

/// `oim profiles push`.
#[derive(Debug, Args)]
pub struct ProfilesPushArgs {
    /// Catalog directory to publish.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Registry credentials and target.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `oim render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// OIMService and OIMCache documents (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Inventory documents or `kubectl get nodes -o yaml` output.
    #[arg(long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Pod list for free-device accounting.
    #[arg(long, value_name = "FILE")]
    pub pods: Option<PathBuf>,
    /// ResourceSlices DRA drivers publish (`kubectl get resourceslices -o yaml`): the devices
    /// services with `spec.draResources` are placed on. A node only a slice names joins the
    /// inventory.
    #[arg(long, value_name = "FILE")]
    pub resource_slices: Option<PathBuf>,
    /// Target platform.
    #[arg(long, value_enum, default_value_t = Platform::Kubernetes)]
    pub platform: Platform,
    /// The image of OIMCache download Jobs (the operator's own image by default).
    #[arg(long, value_name = "IMAGE", default_value = crate::render::DEFAULT_IMAGE)]
    pub puller_image: String,
    /// A model's own config.json (a file, or a folder holding it and its
    /// model.safetensors.index.json), for a model the built-in table does not know: what the
    /// operator reads from the hub (repeatable).
    #[arg(long, value_name = "MODEL=DIR|FILE")]
    pub model_config: Vec<String>,
    /// Profile source.
    #[command(flatten)]
    pub source: CatalogArgs,
}
