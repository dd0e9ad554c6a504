//! Drains the kernel's event ring buffer: every record decoded, explained, written to stdout
//! (and the events file) and published to the hub, one batch per wake-up.
use std::{
    io::Write,
    sync::{Arc, RwLock},
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracing::warn;

use super::{
    Clock, IfNames, Output, Record, decode,
    explain::Explainers,
    hub::{Hub, RotatingFile},
};

/// How often an idle pump looks for a previous explainer to let go.
const IDLE_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Pump {
    pub ring: RingBuf<MapData>,
    /// Notices from the agent itself (a backend it could not plan), written like events.
    pub notices: tokio::sync::mpsc::UnboundedReceiver<Record>,
    /// The explainers of the policy in force and the one before (see `Explainers`).
    pub explainers: Arc<RwLock<Explainers>>,
    pub hub: Arc<Hub>,
    pub output: Output,
    pub file: Option<RotatingFile>,
}

impl Pump {
    /// Runs until stdout fails (or the task is aborted).
    pub async fn run(self) -> anyhow::Result<()> {
        // SAFETY: the ring buffer owns its fd, which stays open and the same for as long as the
        // AsyncFd holds the ring buffer; nothing here swaps the inner value.
        let mut ring =
            unsafe { AsyncFd::register_with_interest(self.ring, tokio::io::Interest::READABLE) }
                .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
        let clock = Clock::new();
        let mut names = IfNames::default();
        let stdout = std::io::stdout();
        let mut file = self.file;
        let mut notices = self.notices;
        loop {
            // The previous policy's explainer is let go once no event of it can be due. A reload
            // installs one while this waits, so an idle pump looks again every `IDLE_LOOK`.
            let look = self
                .explainers
                .read()
                .unwrap()
                .expiry()
                .unwrap_or_else(|| std::time::Instant::now() + IDLE_LOOK);
            let mut guard = tokio::select! {
                guard = ring.readable_mut() => guard?,
                Some(rec) = notices.recv() => {
                    emit(&mut stdout.lock(), file.as_mut(), self.output, &self.hub, rec)?;
                    continue;
                }
                () = tokio::time::sleep_until(look.into()) => {
                    if self.explainers.write().unwrap().expire(std::time::Instant::now()) {
                        crate::memory::give_back();
                    }
                    continue;
                }
            };
            let rb = guard.get_inner_mut();
            let explainers = self.explainers.read().unwrap();
            // Stdout is line-buffered: a batch goes out in few writes, not one per event.
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            while let Some(item) = rb.next() {
                let Some(ev) = decode(&item) else {
                    warn!(
                        len = item.len(),
                        "skipping a ring-buffer record of unexpected size"
                    );
                    continue;
                };
                let mut rec = Record::from_event(&ev, &clock, &mut names);
                explainers.for_event(&ev).explain(&ev, &mut rec);
                emit(&mut out, file.as_mut(), self.output, &self.hub, rec)?;
            }
            out.flush()?;
            drop(explainers);
            guard.clear_ready();
        }
    }
}

/// One record to stdout (in `output`'s form), the events file and the hub.
fn emit(
    out: &mut impl Write,
    file: Option<&mut RotatingFile>,
    output: Output,
    hub: &Hub,
    rec: Record,
) -> anyhow::Result<()> {
    let json = serde_json::to_string(&rec)?;
    match output {
        Output::Json => writeln!(out, "{json}")?,
        Output::Text => writeln!(out, "{}", rec.text())?,
    }
    if let Some(f) = file {
        if let Err(e) = f.write_line(&json) {
            warn!("writing the events file: {e}");
        }
    }
    hub.publish(rec);
    Ok(())
}
