//! `oim`: one binary for the operator, the node agent and the offline tools (DESIGN §6).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use oim::cli::{Cli, Command, DetectArgs, DocFormat, LogFormat, NodeAgentArgs, OperatorArgs, ProfilesCommand, exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    // One crypto provider for kube and oci-client alike; ignore "already installed".
    let _ = rustls::crypto::ring::default_provider().install_default();

    if let Some((name, issue)) = cli.command.pending_issue() {
        eprintln!("oim {name}: not implemented yet (lands with issue #{issue}); nothing was done");
        return ExitCode::from(exit::RUNTIME);
    }
    match cli.command {
        Command::Crds => print_crds(),
        Command::Detect(args) => detect(&args),
        Command::NodeAgent(args) => node_agent(args),
        Command::Profiles(ProfilesCommand::List(args)) => block_on(oim::cli::profiles::list(args)),
        Command::Profiles(ProfilesCommand::Push(args)) => block_on(oim::cli::profiles::push(args)),
        Command::Profiles(ProfilesCommand::Select(args)) => block_on(oim::cli::profiles::select(args)),
        Command::Render(args) => block_on(oim::cli::render::run(args)),
        Command::Operator(args) => operator(args),
        _ => unreachable!("pending_issue covers every other subcommand"),
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
    let catalog = match (&args.catalog, &args.profile_registry) {
        (Some(dir), _) => match oim::profile::catalog::DirCatalog::load(dir) {
            Ok(c) => oim::profile::catalog::Catalog::Dir(c),
            Err(e) => {
                eprintln!("oim operator: --catalog: {e}");
                return ExitCode::from(exit::BAD_INPUT);
            }
        },
        (None, Some(reg)) => {
            match oim::cli::profiles::registry_catalog(reg, args.insecure, args.registry_config.as_deref()) {
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
    let namespace = match args.watch_namespaces.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        _ => {
            eprintln!("oim operator: --watch-namespaces takes one namespace for now (or none for all)");
            return ExitCode::from(exit::BAD_INPUT);
        }
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
    block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("oim operator: cannot reach the Kubernetes API: {e}");
                return exit::RUNTIME;
            }
        };
        // OpenShift is recognised by its security API group.
        let openshift = client
            .list_api_groups()
            .await
            .map(|g| g.groups.iter().any(|g| g.name == "security.openshift.io"))
            .unwrap_or(false);
        let platform = if openshift { oim::render::Platform::Openshift } else { oim::render::Platform::Kubernetes };
        tracing::info!(?platform, "oim operator starting");
        oim::controller::run(client, catalog, engines, platform, namespace).await;
        exit::OK
    })
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
