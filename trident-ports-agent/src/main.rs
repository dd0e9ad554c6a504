use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use trident_ports_agent::{
    compiler,
    config::Role,
    plan::{Format, render},
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
        /// Backend definition files or directories, added to the configuration's sources.
        #[arg(long = "backends")]
        backends: Vec<PathBuf>,
    },
    /// Print the node's allow list: every entry with the reason it exists.
    Plan {
        /// Node configuration (YAML); without it, built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Backend definition files or directories, added to the configuration's sources.
        #[arg(long = "backends")]
        backends: Vec<PathBuf>,
        /// Override the configuration's role.
        #[arg(long, value_enum)]
        role: Option<Role>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(real_main()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> anyhow::Result<()> {
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
            backends,
        } => {
            let (cfg, policy) = compiler::load(config.as_deref(), &backends, None)?;
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
        Command::Plan {
            config,
            backends,
            role,
            format,
        } => {
            let (_, policy) = compiler::load(config.as_deref(), &backends, role)?;
            print!("{}", render(&policy, format));
            Ok(())
        }
    }
}
