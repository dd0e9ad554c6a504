use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use trident_ports_agent::{
    agent::{
        FileSources, RunOptions,
        cluster::{ClusterArgs, Unreachable, connect},
        run,
        sources::Sources,
    },
    config::Role,
    events::{Output, socket},
    policy::render::{Format, render},
};

#[derive(Parser)]
#[command(
    name = "trident-ports-agent",
    version,
    about = "eBPF firewall for NetApp Trident storage traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the node's policy on the given interfaces and stream denied-flow events.
    Run(RunOptions),
    /// Remove everything a pinned agent left: attachments, maps, the pin directory.
    Uninstall {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Switch this node's running agent to audit or enforce, or back to its configuration.
    Mode {
        #[arg(value_parser = ["audit", "enforce", "config"])]
        mode: String,
        #[arg(long, default_value = socket::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print the agent's recent and live denied-flow events.
    Flows {
        /// Keep printing new events.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        filter: socket::Filter,
        /// Only events of the last DURATION (e.g. 5m); default: all the agent keeps.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
        #[arg(long, default_value = socket::DEFAULT_SOCKET)]
        socket: PathBuf,
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
        /// Also read this node's live storage sessions (NFS mounts, iSCSI and NVMe-oF
        /// sessions) and show what covers each, or NOT COVERED.
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/trident-ports";

fn main() -> std::process::ExitCode {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(opts) => run(opts).await.context("run"),
        Command::Uninstall { pin_dir } => {
            let removed = trident_ports_agent::datapath::pins::uninstall(&pin_dir)?;
            println!(
                "removed {} attachment(s) and {} map(s) from {}",
                removed.links.len(),
                removed.maps,
                pin_dir.display()
            );
            Ok(())
        }
        Command::Mode { mode, socket } => {
            let now = socket::mode(socket, &mode).await?;
            println!("mode: {}", format!("{now:?}").to_lowercase());
            Ok(())
        }
        Command::Flows {
            follow,
            filter,
            since,
            output,
            socket,
        } => socket::flows(socket, since, follow, filter, output).await,
        Command::Plan {
            config,
            backends,
            role,
            format,
            live,
            cluster,
        } => {
            let files = FileSources::new(config.as_deref(), &backends, role);
            let k = files.snapshot()?.config.kubernetes;
            let cluster = connect(&k, &cluster, false, Unreachable::Fail).await?;
            let sources = Sources { files, cluster };
            let mut snapshot = sources.snapshot()?;
            if live {
                snapshot.sessions = Some(snapshot.read_sessions());
            }
            let policy = snapshot.compile();
            print!("{}", render(&policy, format));
            Ok(())
        }
    }
}
