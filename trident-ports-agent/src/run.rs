//! `trident-ports-agent run`: load, attach, enforce, stream events until SIGINT or SIGTERM.
use std::io::Write;

use anyhow::Context as _;
use tokio::{io::unix::AsyncFd, signal::unix::{SignalKind, signal}};
use tracing::{info, warn};

use crate::{
    datapath::{Datapath, IngressHook, TcAttach},
    events::{Clock, Record, decode},
    policy::Policy,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Json,
    Text,
}

pub struct RunOptions {
    pub interfaces: Vec<String>,
    pub attach: TcAttach,
    pub ingress: IngressHook,
    pub output: Output,
    pub event_interval_ns: u64,
}

pub async fn run(policy: Policy, opts: RunOptions) -> anyhow::Result<()> {
    if opts.interfaces.is_empty() {
        anyhow::bail!("no interface to attach to: give --iface or `interfaces:` in the configuration");
    }
    let mut dp = Datapath::load()?;
    // Policy first, then attach: the programs never run without the policy.
    let cfg = dp.apply(&policy, opts.event_interval_ns)?;
    info!(
        entries = policy.entries.len(),
        generation = cfg.generation,
        seq = cfg.seq,
        mode = ?policy.mode,
        "policy loaded"
    );
    // Seed before attaching, and again after, for sockets opened in between.
    let mut seeded = dp.seed_flows()?;
    for iface in &opts.interfaces {
        dp.attach(iface, opts.attach, opts.ingress)?;
    }
    seeded += dp.seed_flows()?;
    for iface in &opts.interfaces {
        info!(iface, attach = ?opts.attach, ingress = ?opts.ingress, seeded, "attached");
    }
    for w in &policy.warnings {
        warn!("{w}");
    }
    let ring = dp.take_events().context("event ring buffer already taken")?;
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until it is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    let clock = Clock::new();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let stdout = std::io::stdout();
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                let mut out = stdout.lock();
                while let Some(item) = rb.next() {
                    let Some(ev) = decode(&item) else {
                        warn!(len = item.len(), "skipping a ring-buffer record of unexpected size");
                        continue;
                    };
                    let rec = Record::from_event(&ev, &clock);
                    let line = match opts.output {
                        Output::Json => serde_json::to_string(&rec)?,
                        Output::Text => rec.text(),
                    };
                    writeln!(out, "{line}")?;
                }
                out.flush()?;
                guard.clear_ready();
            }
        }
    }
    info!("stopping: detaching from all interfaces");
    drop(ring);
    drop(dp);
    Ok(())
}
