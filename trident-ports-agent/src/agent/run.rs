//! `trident-ports-agent run`: start-up (load, apply, attach, start the servers), then signals
//! and file changes turned into reconcile requests until SIGINT or SIGTERM.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use super::{
    cluster::{Cluster, ClusterArgs, Unreachable, connect},
    metrics::Metrics,
    reconcile::{Reconciler, Trigger},
    sources::{FileSources, Snapshot, Sources},
};
use crate::{
    datapath::{Datapath, IngressHook, Persistence, TcAttach},
    events::{
        Output,
        hub::{Hub, RotatingFile},
        pump::Pump,
        socket,
    },
    policy::Policy,
};

/// `run`'s options: the command line and the library share this one struct.
#[derive(Debug, clap::Args)]
pub struct RunOptions {
    /// Node configuration (YAML); without it, built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Backend definition files or directories, added to the configuration's sources.
    #[arg(long = "backends")]
    pub extra_backends: Vec<PathBuf>,
    /// Interface to attach to (repeatable); added to the configuration's `interfaces`.
    #[arg(long = "iface")]
    pub interfaces: Vec<String>,
    /// How to attach the TC programs.
    #[arg(long, value_enum, default_value_t)]
    pub attach: TcAttach,
    /// Which hook judges inbound packets.
    #[arg(long, value_enum, default_value_t)]
    pub ingress: IngressHook,
    /// Event format on stdout.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    /// The local socket `flows` and `mode` talk to ("none" to disable).
    #[arg(long, default_value = socket::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// A group whose members may use the socket besides root.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Address of the Prometheus metrics and health endpoints ("none" to disable).
    #[arg(long, default_value = super::metrics::DEFAULT_LISTEN)]
    pub metrics: String,
    /// Also write events as JSON lines to this file, rotated by size.
    #[arg(long)]
    pub events_file: Option<PathBuf>,
    /// Rotate the events file at this size.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub events_file_max_bytes: u64,
    /// Rotated events files to keep.
    #[arg(long, default_value_t = 3)]
    pub events_file_keep: usize,
    /// Events kept in memory for `flows --since`.
    #[arg(long, default_value_t = 10_000)]
    pub history: usize,
    /// How often to look for changed configuration and backend files (host names are resolved
    /// again every `backends.resolveInterval`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub watch_interval: Duration,
    /// Override the configuration's role (the DaemonSets set it from the node label).
    #[arg(long, value_enum)]
    pub role: Option<crate::config::Role>,
    /// Pin maps and attachments in this directory (on a BPF filesystem): enforcement then
    /// outlives the agent, and the next agent adopts it. `none`: stopping detaches (demos,
    /// tests); on a node, enforcement that vanishes with a crash would be a silent gap.
    #[arg(long, default_value = "/sys/fs/bpf/trident-ports")]
    pub pin_dir: PathBuf,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl RunOptions {
    fn pin_path(&self) -> Option<&std::path::Path> {
        (self.pin_dir.as_os_str() != "none").then_some(self.pin_dir.as_path())
    }

    fn files(&self) -> FileSources {
        FileSources::new(self.config.as_deref(), &self.extra_backends, self.role)
    }

    fn socket_path(&self) -> Option<&PathBuf> {
        (self.socket.as_os_str() != "none").then_some(&self.socket)
    }

    fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.metrics.as_str() {
            "none" => Ok(None),
            a => a
                .parse()
                .map(Some)
                .with_context(|| format!("--metrics `{a}` is not an address:port")),
        }
    }
}

/// The interfaces to attach to: the configuration's, then the command line's, each once.
fn interfaces(configured: &[String], given: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in configured.iter().chain(given) {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while the agent loads and attaches is held for the
    // loop below instead of taking the default action (SIGHUP would kill the agent).
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let files = opts.files();
    let k = apart(|| files.snapshot().map(|s| s.config.kubernetes))?;
    let cluster = connect(&k, &opts.cluster, true, Unreachable::Restore).await?;
    let sources = Sources { files, cluster };
    let snapshot = snapshot(&sources)?.with_node_state();
    let policy = snapshot.compile();
    let metrics = Arc::new(Metrics::new());
    let mut dp = enforce(&opts, &snapshot, &policy, &metrics)?;
    let ring = dp
        .take_events()
        .context("event ring buffer already taken")?;
    let (notices, notices_rx) = tokio::sync::mpsc::unbounded_channel();
    if let Some(c) = &sources.cluster {
        c.save();
    }
    let reconciler = Arc::new(Reconciler::new(dp, policy, metrics.clone(), notices));
    crate::memory::give_back();
    let hub = Arc::new(Hub::new(opts.history, 4096));
    let ready = Arc::new(AtomicBool::new(true));
    serve_socket(&opts, &reconciler, &hub)?;
    let node_events = sources
        .cluster
        .as_ref()
        .and_then(|c| c.post_node_events(&hub));
    serve_metrics(
        &opts,
        &reconciler,
        &metrics,
        &ready,
        sources.cluster.clone(),
    )?;
    let file = match &opts.events_file {
        Some(p) => Some(
            RotatingFile::open(p.clone(), opts.events_file_max_bytes, opts.events_file_keep)
                .with_context(|| format!("opening {}", p.display()))?,
        ),
        None => None,
    };
    let mut pump = tokio::spawn(
        Pump {
            ring,
            notices: notices_rx,
            explainers: reconciler.explainers(),
            hub,
            output: opts.output,
            file,
        }
        .run(),
    );
    let resolve_interval = snapshot.config.backends.resolve_interval;
    let roots = snapshot.session_roots();
    let (requests, worker) = reconcile_worker(&reconciler, &sources, snapshot)?;
    let debouncer = sources
        .cluster
        .as_ref()
        .map(|c| c.debounce(requests.clone()));

    // The first look comes one interval from now: the policy was just compiled from these files.
    let mut watch = tokio::time::interval_at(
        tokio::time::Instant::now() + opts.watch_interval,
        opts.watch_interval,
    );
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Host names (and the node's own addresses) are looked at again on their own, slower clock.
    let mut resolve = tokio::time::interval_at(
        tokio::time::Instant::now() + resolve_interval,
        resolve_interval.max(Duration::from_millis(100)),
    );
    resolve.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fingerprint = apart(|| sources.files.fingerprint());
    let mut live = crate::sessions::read(&roots).sessions;
    let stopped = loop {
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            _ = sighup.recv() => {
                info!("SIGHUP: reloading");
                let _ = requests.send(Trigger::Changed);
            }
            _ = watch.tick() => {
                let now = sources.files.fingerprint();
                let sessions = crate::sessions::read(&roots).sessions;
                if now != fingerprint {
                    info!("configuration or backend files changed: reloading");
                    fingerprint = now;
                    live = sessions;
                    let _ = requests.send(Trigger::Changed);
                } else if sessions != live {
                    // A mount or session came or went: what live sessions need changes with it.
                    info!(sessions = sessions.len(), "live storage sessions changed: reloading");
                    live = sessions;
                    let _ = requests.send(Trigger::Periodic);
                }
            }
            _ = resolve.tick() => {
                // Host names may resolve differently now: recompile, apply only a change.
                let _ = requests.send(Trigger::Periodic);
            }
            ended = &mut pump => break ended.context("the event pump")?,
        }
    };
    // A reconcile under way finishes; the datapath is then dropped (and detached) with the
    // reconciler, after the event pump has let go of the ring buffer.
    if let Some(t) = node_events {
        t.abort();
    }
    if let Some(d) = debouncer {
        d.abort();
        let _ = d.await;
    }
    drop(requests);
    let _ = worker.join();
    pump.abort();
    let _ = pump.await;
    match reconciler.persistence() {
        Persistence::Pinned => {
            info!(pin_dir = %opts.pin_dir.display(), "stopping: enforcement stays in place (pinned); `uninstall` removes it");
        }
        Persistence::Ephemeral(why) => warn!("stopping: enforcement ends with this process: {why}"),
        Persistence::Unpinned => info!("stopping: detaching from all interfaces"),
    }
    ready.store(false, Ordering::Relaxed);
    if let Some(p) = opts.socket_path() {
        let _ = std::fs::remove_file(p);
    }
    drop(reconciler);
    stopped
}

/// Runs `f` on a thread of its own. Parsing a large configuration churns through many times
/// its size in small allocations (100 MB for 100,000 allow entries); on this thread, what lives
/// on would sit among them and pin their pages, which `malloc_trim` then cannot give back. The
/// other thread's heap empties when what `f` returns is copied and dropped.
/// A panic in `f` carries on here, as if `f` had run on this thread.
fn apart<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Reads the sources apart (see `apart`) and copies onto this thread what lives on: the
/// snapshot, and what the memo of cluster objects kept from this reading.
fn snapshot(sources: &Sources) -> crate::error::Result<Snapshot> {
    let s = apart(|| sources.snapshot())?;
    sources.files.settle();
    #[expect(clippy::redundant_clone, reason = "the copy is the point")]
    Ok(s.clone())
}

/// Loads the datapath, applies `policy`, then attaches: the programs never run without it.
fn enforce(
    opts: &RunOptions,
    snapshot: &Snapshot,
    policy: &Policy,
    metrics: &Metrics,
) -> anyhow::Result<Datapath> {
    let interfaces = interfaces(&snapshot.config.interfaces, &opts.interfaces);
    if interfaces.is_empty() {
        anyhow::bail!(
            "no interface to attach to: give --iface or `interfaces:` in the configuration"
        );
    }
    let interval_ns = snapshot.config.events.interval.as_nanos() as u64;
    let mut dp = Datapath::load_pinned(opts.pin_path())?;
    dp.set_event_rate(snapshot.config.events.rate_per_cpu)?;
    let applied = dp.apply(policy, interval_ns)?;
    info!(
        entries = policy.entries.len(),
        kernel_entries = applied.sizes.total(),
        generation = applied.config.generation,
        seq = applied.config.seq,
        mode = ?policy.mode,
        "policy loaded"
    );
    metrics.reload(true, Some(&applied.sizes));
    metrics.policy(policy);
    // Seed before attaching, and again after, for sockets opened (and flows the programs being
    // replaced tracked) in between.
    let mut seeded = dp.seed_flows()?;
    for iface in &interfaces {
        dp.attach(iface, opts.attach, opts.ingress)?;
    }
    seeded += dp.seed_flows()?;
    dp.release_previous_flows();
    for iface in &interfaces {
        info!(iface, attach = ?opts.attach, ingress = ?opts.ingress, seeded, "attached");
    }
    for w in &policy.warnings {
        warn!("{w}");
    }
    Ok(dp)
}

/// Reconciles run one after another on a thread of their own: compiling resolves host names,
/// and a slow resolver must not hold up the runtime (the event pump would fall behind). Each
/// snapshot keeps the last good form of a definition that turned bad.
fn reconcile_worker(
    reconciler: &Arc<Reconciler>,
    sources: &Sources,
    first: Snapshot,
) -> anyhow::Result<(
    std::sync::mpsc::Sender<Trigger>,
    std::thread::JoinHandle<()>,
)> {
    let (requests, queue) = std::sync::mpsc::channel::<Trigger>();
    let (reconciler, sources) = (reconciler.clone(), sources.clone());
    // What keeps a definition's last good form: the backends, not the whole snapshot.
    let mut last = first.inventory.backends;
    let worker = std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || {
            for trigger in queue {
                // A cluster change waiting out its debounce is applied whole shortly: a periodic
                // look now would apply what it takes away before the debounce does.
                if trigger == Trigger::Periodic
                    && sources.cluster.as_ref().is_some_and(|c| c.pending())
                {
                    continue;
                }
                let started = std::time::Instant::now();
                let next = snapshot(&sources).map(|s| {
                    let mut s = s.with_node_state();
                    s.keep_last_good(&last);
                    s
                });
                if let Some(applied) = reconciler.reconcile(next, trigger, started) {
                    last = applied.inventory.backends;
                    if let Some(c) = &sources.cluster {
                        c.save();
                    }
                }
                crate::memory::give_back();
            }
        })?;
    Ok((requests, worker))
}

fn serve_socket(
    opts: &RunOptions,
    reconciler: &Arc<Reconciler>,
    hub: &Arc<Hub>,
) -> anyhow::Result<()> {
    let Some(path) = opts.socket_path() else {
        return Ok(());
    };
    let listener = socket::bind(path, opts.socket_group.as_deref())?;
    info!(socket = %path.display(), "serving flows");
    let r = reconciler.clone();
    let control: socket::ModeControl = Arc::new(move |m| r.set_mode(m));
    tokio::spawn(socket::serve(listener, hub.clone(), control));
    Ok(())
}

fn serve_metrics(
    opts: &RunOptions,
    reconciler: &Arc<Reconciler>,
    metrics: &Arc<Metrics>,
    ready: &Arc<AtomicBool>,
    cluster: Option<Arc<Cluster>>,
) -> anyhow::Result<()> {
    let Some(addr) = opts.metrics_addr()? else {
        return Ok(());
    };
    let (r, m) = (reconciler.clone(), metrics.clone());
    let scrape: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        r.scrape();
        if let Some(c) = &cluster {
            m.cluster(&c.status());
        }
    });
    let (m, ready) = (metrics.clone(), ready.clone());
    // Bind now, so that a taken address is a startup error rather than a silent gap.
    let probe = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("metrics address {addr}: {e}"))?;
    drop(probe);
    tokio::spawn(async move {
        if let Err(e) = super::metrics::serve(addr, m, ready, scrape).await {
            error!("metrics: {e:#}");
        }
    });
    info!(%addr, "serving metrics");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_interface_named_twice_is_attached_once() {
        let cfg = ["eth0".to_string(), "eth1".to_string()];
        let cli = ["eth2".to_string(), "eth0".to_string(), "eth2".to_string()];
        assert_eq!(super::interfaces(&cfg, &cli), ["eth0", "eth1", "eth2"]);
    }
}
