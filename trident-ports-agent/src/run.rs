//! `trident-ports-agent run`: load, attach, enforce; stream explained events to stdout, a file,
//! the flows socket and metrics; reload on SIGHUP and when the configuration or a backend file
//! changes; stop on SIGINT or SIGTERM.
use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info, warn};

use crate::{
    compiler,
    datapath::{Datapath, IngressHook, TcAttach},
    events::{Clock, IfNames, Record, decode},
    explain::Explainer,
    hub::{Hub, RotatingFile},
    metrics::Metrics,
    policy::{Mode, Policy},
    socket,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Json,
    Text,
}

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
    #[arg(long, default_value = crate::metrics::DEFAULT_LISTEN)]
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
    /// How often to look for changed configuration and backend files (and re-resolve names).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub watch_interval: Duration,
    /// Override the configuration's role (the DaemonSets set it from the node label).
    #[arg(long, value_enum)]
    pub role: Option<crate::config::Role>,
    /// Pin maps and attachments in this directory (on a BPF filesystem): enforcement then
    /// outlives the agent, and the next agent adopts it. Without it, stopping detaches.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
}

impl RunOptions {
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

struct Shared {
    dp: Mutex<Datapath>,
    /// A per-node mode set with `trident-ports-agent mode`, over the configuration's.
    mode_override: Mutex<Option<Mode>>,
    /// The configuration's mode.
    config_mode: Mutex<Mode>,
    explainer: RwLock<Explainer>,
    policy: Mutex<Policy>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while the agent loads and attaches is held for the
    // event loop below instead of taking the default action (SIGHUP would kill the agent).
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let opts = Arc::new(opts);
    let (cfg, policy) = compiler::load(opts.config.as_deref(), &opts.extra_backends, opts.role)?;
    let mut interfaces = cfg.interfaces.clone();
    interfaces.extend(opts.interfaces.iter().cloned());
    interfaces.dedup();
    if interfaces.is_empty() {
        anyhow::bail!(
            "no interface to attach to: give --iface or `interfaces:` in the configuration"
        );
    }
    let interval_ns = cfg.events.interval.as_nanos() as u64;
    let mut dp = Datapath::load_pinned(opts.pin_dir.as_deref())?;
    // Policy first, then attach: the programs never run without the policy.
    let applied = dp.apply(&policy, interval_ns)?;
    info!(
        entries = policy.entries.len(),
        kernel_entries = applied.tables.len(),
        generation = applied.config.generation,
        seq = applied.config.seq,
        mode = ?policy.mode,
        "policy loaded"
    );
    let metrics = Arc::new(Metrics::new());
    metrics.reload(true, Some(&applied.tables));
    // Seed before attaching, and again after, for sockets opened in between.
    let mut seeded = dp.seed_flows()?;
    for iface in &interfaces {
        dp.attach(iface, opts.attach, opts.ingress)?;
    }
    seeded += dp.seed_flows()?;
    for iface in &interfaces {
        info!(iface, attach = ?opts.attach, ingress = ?opts.ingress, seeded, "attached");
    }
    for w in &policy.warnings {
        warn!("{w}");
    }
    let ring = dp
        .take_events()
        .context("event ring buffer already taken")?;
    let shared = Arc::new(Shared {
        dp: Mutex::new(dp),
        mode_override: Mutex::new(None),
        config_mode: Mutex::new(policy.mode),
        explainer: RwLock::new(Explainer::new(&policy)),
        policy: Mutex::new(policy),
        hub: Arc::new(Hub::new(opts.history, 4096)),
        metrics: metrics.clone(),
    });
    let ready = Arc::new(AtomicBool::new(true));
    if let Some(path) = opts.socket_path() {
        let listener = socket::bind(path, opts.socket_group.as_deref())?;
        info!(socket = %path.display(), "serving flows");
        let s = shared.clone();
        let control: socket::ModeControl = Arc::new(move |m| set_mode(&s, m));
        tokio::spawn(socket::serve(listener, shared.hub.clone(), control));
    }
    if let Some(addr) = opts.metrics_addr()? {
        let s = shared.clone();
        let scrape: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Ok(c) = s.dp.lock().unwrap().counters() {
                s.metrics.update(&c);
            }
        });
        let (m, r) = (metrics.clone(), ready.clone());
        // Bind now, so that a taken address is a startup error rather than a silent gap.
        let probe = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("metrics address {addr}: {e}"))?;
        drop(probe);
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m, r, scrape).await {
                error!("metrics: {e:#}");
            }
        });
        info!(%addr, "serving metrics");
    }
    let mut file = match &opts.events_file {
        Some(p) => Some(
            RotatingFile::open(p.clone(), opts.events_file_max_bytes, opts.events_file_keep)
                .with_context(|| format!("opening {}", p.display()))?,
        ),
        None => None,
    };

    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until it is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    let clock = Clock::new();
    let mut names = IfNames::default();
    // The first look comes one interval from now: the policy was just compiled from these files.
    let mut watch = tokio::time::interval_at(
        tokio::time::Instant::now() + opts.watch_interval,
        opts.watch_interval,
    );
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fingerprint = sources_fingerprint(&opts);
    // Reloads run one after another on their own thread: compiling resolves host names, and a
    // slow resolver must not hold up the event stream below (the ring buffer would overflow).
    let (reloads, requests) = std::sync::mpsc::channel::<bool>();
    let reloader = {
        let (shared, opts) = (shared.clone(), opts.clone());
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                for always in requests {
                    reload(&shared, &opts, always);
                }
            })?
    };
    let stdout = std::io::stdout();
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                info!("SIGHUP: reloading");
                let _ = reloads.send(true);
            }
            _ = watch.tick() => {
                let now = sources_fingerprint(&opts);
                if now != fingerprint {
                    info!("configuration or backend files changed: reloading");
                    fingerprint = now;
                    let _ = reloads.send(true);
                } else {
                    // Host names may resolve differently now: recompile, apply only a change.
                    let _ = reloads.send(false);
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                let explainer = shared.explainer.read().unwrap();
                // Stdout is line-buffered: a batch goes out in few writes, not one per event.
                let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
                while let Some(item) = rb.next() {
                    let Some(ev) = decode(&item) else {
                        warn!(len = item.len(), "skipping a ring-buffer record of unexpected size");
                        continue;
                    };
                    let mut rec = Record::from_event(&ev, &clock, &mut names);
                    explainer.explain(&ev, &mut rec);
                    let json = serde_json::to_string(&rec)?;
                    match opts.output {
                        Output::Json => writeln!(out, "{json}")?,
                        Output::Text => writeln!(out, "{}", rec.text())?,
                    }
                    if let Some(f) = file.as_mut() {
                        if let Err(e) = f.write_line(&json) {
                            warn!("writing the events file: {e}");
                        }
                    }
                    shared.hub.publish(rec);
                }
                out.flush()?;
                drop(explainer);
                guard.clear_ready();
            }
        }
    }
    // A reload under way finishes; the datapath is then dropped (and detached) with `shared`.
    drop(reloads);
    let _ = reloader.join();
    let pinned = shared.dp.lock().unwrap().pinned();
    if pinned {
        info!(pin_dir = %opts.pin_dir.as_ref().unwrap().display(), "stopping: enforcement stays in place (pinned); `uninstall` removes it");
    } else {
        info!("stopping: detaching from all interfaces");
    }
    ready.store(false, Ordering::Relaxed);
    drop(ring);
    if let Some(p) = opts.socket_path() {
        let _ = std::fs::remove_file(p);
    }
    drop(shared);
    Ok(())
}

/// Recompiles and, when the policy changed (or `always`), switches the kernel to it. A failure
/// keeps the running policy, logs why and counts it.
fn reload(shared: &Shared, opts: &RunOptions, always: bool) {
    let compiled = compiler::load(opts.config.as_deref(), &opts.extra_backends, opts.role);
    let (cfg, mut policy) = match compiled {
        Ok(x) => x,
        Err(e) => {
            if always {
                error!("reload failed, keeping the running policy: {e}");
                shared.metrics.reload(false, None);
            }
            return;
        }
    };
    *shared.config_mode.lock().unwrap() = policy.mode;
    if let Some(m) = *shared.mode_override.lock().unwrap() {
        policy.mode = m;
    }
    let mut current = shared.policy.lock().unwrap();
    if !always && *current == policy {
        return;
    }
    let applied = shared
        .dp
        .lock()
        .unwrap()
        .apply(&policy, cfg.events.interval.as_nanos() as u64);
    match applied {
        Ok(a) => {
            info!(entries = policy.entries.len(), generation = a.config.generation, seq = a.config.seq, mode = ?policy.mode, "policy reloaded");
            for w in &policy.warnings {
                warn!("{w}");
            }
            shared.metrics.reload(true, Some(&a.tables));
            *shared.explainer.write().unwrap() = Explainer::new(&policy);
            *current = policy;
        }
        Err(e) => {
            error!("reload failed, keeping the running policy: {e}");
            shared.metrics.reload(false, None);
        }
    }
}

/// Sets (or with `None` clears) the per-node mode override; returns the mode now in force.
/// Only the configuration entry changes: programs and policy maps stay as they are.
fn set_mode(shared: &Shared, mode: Option<Mode>) -> Result<Mode, String> {
    let mut policy = shared.policy.lock().unwrap();
    *shared.mode_override.lock().unwrap() = mode;
    let effective = mode.unwrap_or(*shared.config_mode.lock().unwrap());
    shared
        .dp
        .lock()
        .unwrap()
        .set_mode(effective)
        .map_err(|e| e.to_string())?;
    policy.mode = effective;
    info!(mode = ?effective, "mode switched");
    Ok(effective)
}

/// Size, mtime and resolved path of the configuration and every backend file: a Kubernetes
/// ConfigMap update swaps the `..data` symlink, which changes the resolved paths.
fn sources_fingerprint(opts: &RunOptions) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut paths: Vec<PathBuf> = opts.config.iter().cloned().collect();
    let mut sources = opts.extra_backends.clone();
    if let Some(c) = &opts.config {
        if let Ok(cfg) = crate::config::NodeConfig::load(c) {
            let base = c
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            sources.extend(cfg.backends.sources.iter().map(|s| {
                if s.is_absolute() {
                    s.clone()
                } else {
                    base.join(s)
                }
            }));
        }
    }
    for s in sources {
        match std::fs::read_dir(&s) {
            Ok(rd) => paths.extend(rd.filter_map(|e| e.ok().map(|e| e.path()))),
            Err(_) => paths.push(s),
        }
    }
    let mut out: Vec<_> = paths
        .into_iter()
        .filter_map(|p| {
            let real = std::fs::canonicalize(&p).ok()?;
            let m = std::fs::metadata(&real).ok()?;
            Some((real, m.len(), m.modified().ok()?))
        })
        .collect();
    out.sort();
    out
}
