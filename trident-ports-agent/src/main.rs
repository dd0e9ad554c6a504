use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use trident_ports_agent::{
    compiler,
    config::NodeConfig,
    datapath::{IngressHook, TcAttach},
    run::{Output, RunOptions, run},
};

#[derive(Parser)]
#[command(name = "trident-ports-agent", version, about = "eBPF firewall for NetApp Trident storage traffic")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the node's policy on the given interfaces and stream denied-flow events.
    Run {
        /// Node configuration (YAML); without it, built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Interface to attach to (repeatable); added to the configuration's `interfaces`.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// How to attach the TC programs.
        #[arg(long, value_enum, default_value_t)]
        attach: TcAttach,
        /// Which hook judges inbound packets.
        #[arg(long, value_enum, default_value_t)]
        ingress: IngressHook,
        /// Event format on stdout.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<NodeConfig> {
    Ok(match path {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            ifaces,
            attach,
            ingress,
            output,
        } => {
            let cfg = load_config(config.as_ref())?;
            let policy = compiler::compile_node(&cfg);
            let mut interfaces = cfg.interfaces.clone();
            interfaces.extend(ifaces);
            let opts = RunOptions {
                interfaces,
                attach,
                ingress,
                output,
                event_interval_ns: cfg.events.interval.as_nanos() as u64,
            };
            run(policy, opts).await.context("run")
        }
    }
}
