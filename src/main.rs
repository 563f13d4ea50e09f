//! `oim`: one binary for the operator, the node agent and the offline tools (DESIGN §6).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use oim::cli::{Cli, Command, DetectArgs, DocFormat, LogFormat, NodeAgentArgs, OperatorArgs, ProfilesCommand, exit};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    // One crypto provider for kube and oci-client alike; ignore "already installed".
    let _ = rustls::crypto::ring::default_provider().install_default();

    match cli.command {
        Command::Crds => print_crds(),
        Command::Detect(args) => detect(&args),
        Command::NodeAgent(args) => node_agent(args),
        Command::Profiles(ProfilesCommand::List(args)) => block_on(oim::cli::profiles::list(args)),
        Command::Profiles(ProfilesCommand::Push(args)) => block_on(oim::cli::profiles::push(args)),
        Command::Profiles(ProfilesCommand::Select(args)) => block_on(oim::cli::profiles::select(args)),
        Command::Render(args) => block_on(oim::cli::render::run(args)),
        Command::Operator(args) => operator(args),
        Command::Download(args) => block_on(download(args)),
        Command::Bench(args) => block_on(oim::cli::bench::run(args)),
        Command::Study(cmd) => block_on(oim::cli::study::run(cmd)),
    }
}

async fn download(args: oim::cli::DownloadArgs) -> u8 {
    let result = match oim::hub::Hub::from_env() {
        Ok(hub) => oim::hub::download(&hub, &args.repo, &args.revision, &args.dest, &args.include, &args.exclude).await,
        Err(e) => Err(e),
    };
    // In a Job, the outcome goes to the termination message the operator reads.
    let report = match &result {
        Ok(dir) => serde_json::json!({
            "repo": args.repo,
            "revision": args.revision,
            "commit": dir.file_name().map(|c| c.to_string_lossy().to_string()),
            "path": dir.display().to_string(),
        })
        .to_string(),
        // Errors carry URLs already redacted; redact again so no future message can leak one.
        Err(e) => format!("oim download: {}", oim::redact::redact_text(&e.to_string())),
    };
    if let Some(path) = std::env::var_os("OIM_TERMINATION_LOG")
        && let Err(e) = std::fs::write(&path, &report)
    {
        tracing::warn!(error = %e, "termination message not written");
    }
    match result {
        Ok(dir) => {
            println!("{}", dir.display());
            exit::OK
        }
        Err(e) => {
            eprintln!("{report}");
            if e.is_user_error() { oim::cli::exit::BAD_INPUT } else { oim::cli::exit::RUNTIME }
        }
    }
}

fn print_crds() -> ExitCode {
    match oim::api::crds_yaml() {
        Ok(yaml) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(yaml.as_bytes()).and_then(|_| out.flush()) {
                Ok(()) => ExitCode::from(exit::OK),
                Err(e) => {
                    eprintln!("oim crds: cannot write to stdout: {e}");
                    ExitCode::from(exit::RUNTIME)
                }
            }
        }
        Err(e) => {
            eprintln!("oim crds: cannot serialize the CRDs: {e}");
            ExitCode::from(exit::RUNTIME)
        }
    }
}

fn block_on(f: impl std::future::Future<Output = u8>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => ExitCode::from(rt.block_on(f)),
        Err(e) => {
            eprintln!("oim: cannot start the async runtime: {e}");
            ExitCode::from(exit::RUNTIME)
        }
    }
}

fn operator(args: OperatorArgs) -> ExitCode {
    let refresh = std::time::Duration::from_secs(args.profile_refresh);
    let catalog = match (&args.catalog, &args.profile_registry) {
        (Some(dir), _) => match oim::profile::catalog::DirCatalog::load(dir) {
            Ok(c) => oim::profile::catalog::Catalog::Dir(c),
            Err(e) => {
                eprintln!("oim operator: --catalog: {e}");
                return ExitCode::from(exit::BAD_INPUT);
            }
        },
        (None, Some(reg)) => {
            match oim::cli::profiles::registry_catalog(reg, args.insecure, args.registry_config.as_deref(), refresh) {
                Ok(c) => oim::profile::catalog::Catalog::Oci(Box::new(c)),
                Err((code, msg)) => {
                    eprintln!("oim operator: --profile-registry: {msg}");
                    return ExitCode::from(code);
                }
            }
        }
        (None, None) => {
            eprintln!("oim operator: pass --profile-registry REF or --catalog DIR");
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    if let Err(e) = oim::profile::reference::parse_allow_list(&args.allowed_registries) {
        eprintln!(
            "oim operator: --allowed-registries: {e}; expected [http://]host[:port][/path] (http:// lets services ask for plain HTTP)"
        );
        return ExitCode::from(exit::BAD_INPUT);
    }
    let metrics_bind = match args.metrics_bind.as_str() {
        "" | "0" | "off" => None,
        a => match a.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                eprintln!("oim operator: --metrics-bind {a:?}: expected ADDR:PORT, e.g. 0.0.0.0:8080 (or off)");
                return ExitCode::from(exit::BAD_INPUT);
            }
        },
    };
    let engines = match &args.engine_images {
        Some(path) => match oim::profile::engines::Engines::with_overrides(path) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("oim operator: --engine-images {e}");
                return ExitCode::from(exit::BAD_INPUT);
            }
        },
        None => oim::profile::engines::Engines::builtin(),
    };
    let (node_selector, tolerations) = match agent_placement(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("oim operator: {e}");
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    let sources = oim::controller::source::Sources::new(catalog, args.allowed_registries.clone(), refresh);
    block_on(async move {
        let api_limit = oim::controller::limit::ApiLimit::default();
        let (client, election) = match connect(&args, &api_limit).await {
            Ok(c) => c,
            Err((code, e)) => {
                eprintln!("oim operator: {e}");
                return code;
            }
        };
        // OpenShift is recognised by its security API group; Route and ServiceMonitor by theirs.
        let api_groups = client.list_api_groups().await.map(|g| g.groups).unwrap_or_default();
        let has = |g: &str| api_groups.iter().any(|x| x.name == g);
        // DRA by its GA version: the operator reads and writes resource.k8s.io/v1 only.
        let has_version =
            |g: &str, v: &str| api_groups.iter().any(|x| x.name == g && x.versions.iter().any(|x| x.version == v));
        let platform = if has("security.openshift.io") {
            oim::render::Platform::Openshift
        } else {
            oim::render::Platform::Kubernetes
        };
        let capabilities = oim::render::Capabilities {
            routes: has("route.openshift.io"),
            service_monitors: has("monitoring.coreos.com"),
            gateway: has("gateway.networking.k8s.io"),
            inference_pools: has("inference.networking.k8s.io"),
            kserve: has("serving.kserve.io"),
            leader_worker_sets: has(oim::render::lws::LWS_GROUP),
            dra: has_version("resource.k8s.io", "v1"),
        };
        let own = own_image(&client).await;
        let agent = if args.no_agent {
            None
        } else {
            let image = args.agent_image.clone().unwrap_or_else(|| own.clone());
            let namespace =
                args.agent_namespace.clone().unwrap_or_else(|| oim::controller::agent::DEFAULT_NAMESPACE.into());
            let mut cfg = oim::controller::agent::AgentConfig::new(namespace, image);
            cfg.without_admission_policy = args.agent_without_admission_policy;
            cfg.node_selector = node_selector;
            cfg.tolerations = tolerations.clone();
            cfg.openshift = platform == oim::render::Platform::Openshift;
            Some(cfg)
        };
        tracing::info!(?platform, ?capabilities, ?agent, "oim operator starting");
        let settings = oim::controller::Settings {
            // Empty entries mean nothing: OLM's olm.targetNamespaces is "" for AllNamespaces.
            namespaces: args.watch_namespaces.iter().filter(|n| !n.is_empty()).cloned().collect(),
            platform,
            capabilities,
            agent,
            metrics_bind,
            own_image: own,
            hf_endpoint: args.hf_endpoint.clone(),
            api_limit,
            election,
        };
        match oim::controller::run(client, sources, engines, settings).await {
            oim::controller::run::Stopped::Signal => exit::OK,
            oim::controller::run::Stopped::LeaseLost => exit::RUNTIME,
        }
    })
}

/// The operator's client, its requests in flight limited by `limit`; with `--leader-elect` also
/// the election, whose fence the client's writes go through (the election itself uses a client
/// of its own, neither fenced nor waiting behind reconciles for a slot).
async fn connect(
    args: &OperatorArgs,
    limit: &oim::controller::limit::ApiLimit,
) -> Result<(kube::Client, Option<oim::controller::leader::Election>), (u8, String)> {
    use oim::controller::leader::{Election, LeaseConfig, identity};
    let unreachable = |e: &dyn std::fmt::Display| (exit::RUNTIME, format!("cannot reach the Kubernetes API: {e}"));
    let config = kube::Config::infer().await.map_err(|e| unreachable(&e))?;
    let plain = kube::Client::try_from(config.clone()).map_err(|e| unreachable(&e))?;
    if !args.leader_elect {
        let limited = kube::client::ClientBuilder::try_from(config)
            .map_err(|e| unreachable(&e))?
            .with_layer(&limit.layer())
            .build();
        return Ok((limited, None));
    }
    let lease = LeaseConfig {
        namespace: args
            .leader_elect_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| plain.default_namespace().to_string()),
        name: args.leader_elect_lease_name.clone(),
        identity: identity(),
        lease_duration: args.leader_elect_lease_duration,
        renew_deadline: args.leader_elect_renew_deadline,
        retry_period: args.leader_elect_retry_period,
    };
    lease.validate().map_err(|e| (exit::BAD_INPUT, e))?;
    tracing::info!(namespace = %lease.namespace, lease = %lease.name, identity = %lease.identity, "leader election on");
    let election = Election::start(plain, lease);
    let fenced = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| unreachable(&e))?
        // The fence innermost: a write is checked when it leaves, after waiting for a slot.
        .with_layer(&election.fence.layer())
        .with_layer(&limit.layer())
        .build();
    Ok((fenced, Some(election)))
}

/// The operator's own image, read from its pod (POD_NAME/POD_NAMESPACE from the downward API);
/// outside a pod, the release image of this version.
/// Where the node agent runs: `--agent-node-selector KEY=VALUE...` and `--agent-tolerations JSON`.
type Placement = (std::collections::BTreeMap<String, String>, Option<Vec<k8s_openapi::api::core::v1::Toleration>>);

fn agent_placement(args: &oim::cli::OperatorArgs) -> Result<Placement, String> {
    let mut node_selector = std::collections::BTreeMap::new();
    for pair in &args.agent_node_selector {
        let (k, v) =
            pair.split_once('=').ok_or_else(|| format!("--agent-node-selector {pair:?}: expected KEY=VALUE"))?;
        node_selector.insert(k.to_string(), v.to_string());
    }
    let tolerations = match &args.agent_tolerations {
        Some(json) => Some(
            serde_json::from_str(json)
                .map_err(|e| format!("--agent-tolerations: not a JSON list of tolerations: {e}"))?,
        ),
        None => None,
    };
    Ok((node_selector, tolerations))
}

async fn own_image(client: &kube::Client) -> String {
    let fallback = oim::render::DEFAULT_IMAGE.to_string();
    let (Ok(name), Ok(ns)) = (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE")) else { return fallback };
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), &ns);
    match pods.get(&name).await {
        Ok(p) => p.spec.and_then(|s| s.containers.into_iter().next()).and_then(|c| c.image).unwrap_or(fallback),
        Err(e) => {
            tracing::warn!(error = %e, "own pod not readable; the agent uses {fallback}");
            fallback
        }
    }
}

fn node_agent(args: NodeAgentArgs) -> ExitCode {
    let Some(node_name) = args.node_name.filter(|n| !n.is_empty()) else {
        eprintln!(
            "oim node-agent: no node name; pass --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)"
        );
        return ExitCode::from(exit::BAD_INPUT);
    };
    if let Err(e) = std::fs::read_dir(&args.root) {
        eprintln!("oim node-agent: cannot read --root {}: {e}", args.root.display());
        return ExitCode::from(exit::BAD_INPUT);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oim node-agent: cannot start the async runtime: {e}");
            return ExitCode::from(exit::RUNTIME);
        }
    };
    runtime.block_on(async {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("oim node-agent: cannot reach the Kubernetes API: {e}");
                return ExitCode::from(exit::RUNTIME);
            }
        };
        let interval = std::time::Duration::from_secs(args.interval.max(1));
        oim::agent::run(client, oim::agent::AgentConfig { node_name, root: args.root, interval }).await;
        ExitCode::from(exit::OK)
    })
}

fn detect(args: &DetectArgs) -> ExitCode {
    let inventory = match oim::hardware::detect(&args.root) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("oim detect: {e}");
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    let text = match args.output {
        DocFormat::Json => serde_json::to_string_pretty(&inventory).map(|s| s + "\n").map_err(|e| e.to_string()),
        DocFormat::Yaml => serde_saphyr::to_string(&inventory).map_err(|e| e.to_string()),
    };
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("oim detect: cannot serialize the inventory: {e}");
            ExitCode::from(exit::RUNTIME)
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
