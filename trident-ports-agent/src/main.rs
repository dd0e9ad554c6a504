use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use trident_ports_agent::{
    compiler,
    config::parse_net,
    metrics, socket,
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
        /// The local socket `flows` talks to ("none" to disable).
        #[arg(long, default_value = socket::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// A group whose members may use the socket besides root.
        #[arg(long)]
        socket_group: Option<String>,
        /// Address of the Prometheus metrics and health endpoints ("none" to disable).
        #[arg(long, default_value = metrics::DEFAULT_LISTEN)]
        metrics: String,
        /// Also write events as JSON lines to this file, rotated by size.
        #[arg(long)]
        events_file: Option<PathBuf>,
        /// Rotate the events file at this size.
        #[arg(long, default_value_t = 10 * 1024 * 1024)]
        events_file_max_bytes: u64,
        /// Rotated events files to keep.
        #[arg(long, default_value_t = 3)]
        events_file_keep: usize,
        /// Events kept in memory for `flows --since`.
        #[arg(long, default_value_t = 10_000)]
        history: usize,
        /// How often to look for changed configuration and backend files.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        watch_interval: std::time::Duration,
        /// Override the configuration's role (the DaemonSets set it from the node label).
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// Pin maps and attachments in this directory (on a BPF filesystem): enforcement then
        /// outlives the agent, and the next agent adopts it. Without it, stopping detaches.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
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
        #[arg(long, value_parser = ["denied", "audit"])]
        verdict: Option<String>,
        #[arg(long, value_parser = ["egress", "ingress"])]
        direction: Option<String>,
        /// Destination address or CIDR.
        #[arg(long, value_parser = parse_net)]
        dst: Option<ipnet::IpNet>,
        /// Source address or CIDR.
        #[arg(long, value_parser = parse_net)]
        src: Option<ipnet::IpNet>,
        /// Source or destination port.
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, value_parser = ["tcp", "udp", "icmp", "icmpv6"])]
        proto: Option<String>,
        #[arg(long)]
        backend: Option<String>,
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
    },
}

const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/trident-ports";

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
            socket,
            socket_group,
            metrics,
            events_file,
            events_file_max_bytes,
            events_file_keep,
            history,
            watch_interval,
            role,
            pin_dir,
        } => {
            let metrics = match metrics.as_str() {
                "none" => None,
                a => Some(a.parse().with_context(|| format!("--metrics `{a}` is not an address:port"))?),
            };
            let opts = RunOptions {
                config,
                extra_backends: backends,
                interfaces: ifaces,
                attach,
                ingress,
                output,
                socket: (socket.as_os_str() != "none").then_some(socket),
                socket_group,
                metrics,
                events_file,
                events_file_max_bytes,
                events_file_keep,
                history,
                watch_interval,
                role,
                pin_dir,
            };
            run(opts).await.context("run")
        }
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
            verdict,
            direction,
            dst,
            src,
            port,
            proto,
            backend,
            since,
            output,
            socket,
        } => {
            let filter = socket::Filter { verdict, direction, dst, src, port, proto, backend };
            socket::flows(socket, since, follow, filter, output).await
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
