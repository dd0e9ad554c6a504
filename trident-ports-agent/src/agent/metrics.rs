//! Prometheus metrics and the health endpoints, on one small HTTP listener (loopback by default;
//! never 8001, which is Trident's).
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::warn;
use trident_ports_common::{DIR_EGRESS, DIR_INGRESS, counter, reason};

use crate::{
    datapath::{Counters, Sizes},
    events::reason_name,
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9964";

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    packets: Family<Labels, Counter>,
    denied_by_reason: Family<Labels, Counter>,
    events: Family<Labels, Counter>,
    cache_answers: Family<Labels, Counter>,
    recovered: Family<Labels, Counter>,
    entries: Family<Labels, Gauge>,
    reloads: Family<Labels, Counter>,
    skipped: Gauge,
    live: Family<Labels, Gauge>,
    last_reload: Gauge<f64, std::sync::atomic::AtomicU64>,
    changes: Family<Labels, Counter>,
    kube_up: Gauge,
    kube_stale: Gauge<f64, std::sync::atomic::AtomicU64>,
    kube_objects: Family<Labels, Gauge>,
    /// What /healthz adds about the cluster source.
    health: Mutex<String>,
    /// Kernel totals at the last scrape, to turn them into counter increments.
    last: Mutex<Counters>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn dir_name(d: u8) -> &'static str {
    if d == DIR_EGRESS { "egress" } else { "ingress" }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trident_ports");
        let packets = Family::<Labels, Counter>::default();
        registry.register(
            "packets",
            "Packets judged, by direction and verdict",
            packets.clone(),
        );
        let denied_by_reason = Family::<Labels, Counter>::default();
        registry.register(
            "dropped_packets",
            "Packets denied (enforce) or audited (audit), by direction and reason",
            denied_by_reason.clone(),
        );
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "events",
            "Denied-flow events, by direction and result (emitted, suppressed, lost, rate_limited)",
            events.clone(),
        );
        let cache_answers = Family::<Labels, Counter>::default();
        registry.register(
            "cache_answers",
            "Packets answered by a per-CPU cache before any parsing or lookup, by direction and \
             cache (recent_flow: allowed flows; recent_denial: repeats of a denied flow reported \
             less than events.interval ago; recent_pass: flows to and from unprotected addresses); \
             they count under packets too",
            cache_answers.clone(),
        );
        let recovered = Family::<Labels, Counter>::default();
        registry.register(
            "flows_recovered",
            "Packets from storage allowed because the node has a socket connected to the sender on \
             that flow, which the connection table had lost (evicted) or never learned (opened \
             before the address was storage); each puts its flow back into the table and counts \
             under packets as allowed too",
            recovered.clone(),
        );
        let entries = Family::<Labels, Gauge>::default();
        registry.register(
            "policy_entries",
            "Kernel policy entries by kind",
            entries.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        registry.register("reloads", "Policy loads by result", reloads.clone());
        let skipped = Gauge::default();
        registry.register(
            "backends_skipped",
            "Backend definitions the running policy could not plan (see the log for why)",
            skipped.clone(),
        );
        let live = Family::<Labels, Gauge>::default();
        registry.register(
            "live_sessions",
            "The node's live storage sessions, by protocol and coverage (covered, protected: allowed \
             only because they exist, cut: not allowed, protectLiveSessions off)",
            live.clone(),
        );
        let last_reload = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "last_reload_timestamp_seconds",
            "Time of the last successful policy load",
            last_reload.clone(),
        );
        let changes = Family::<Labels, Counter>::default();
        registry.register(
            "policy_entry_changes",
            "Policy entries added or removed by reloads, by backend (`-` for entries of no backend)",
            changes.clone(),
        );
        let kube_up = Gauge::default();
        registry.register(
            "kubernetes_connected",
            "1 when every watcher of the cluster source has its complete list and no error since",
            kube_up.clone(),
        );
        let kube_stale = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "kubernetes_stale_seconds",
            "How long the cluster source has been failing to watch (0 when connected): the running \
             policy is this old at most",
            kube_stale.clone(),
        );
        let kube_objects = Family::<Labels, Gauge>::default();
        registry.register(
            "kubernetes_objects",
            "Objects the cluster source keeps, by kind",
            kube_objects.clone(),
        );
        let build = Family::<Labels, Gauge>::default();
        registry.register("build_info", "Build information", build.clone());
        build
            .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
            .set(1);
        Metrics {
            registry,
            packets,
            denied_by_reason,
            events,
            cache_answers,
            recovered,
            entries,
            reloads,
            skipped,
            live,
            last_reload,
            changes,
            kube_up,
            kube_stale,
            kube_objects,
            health: Mutex::new(String::new()),
            last: Mutex::new(Counters::default()),
        }
    }

    /// What the policy now in force left out, and how the node's live sessions fare under it.
    pub fn policy(&self, p: &crate::policy::Policy) {
        self.skipped.set(p.skipped.len() as i64);
        self.live.clear();
        for r in p.live.iter().flatten() {
            self.live
                .get_or_create(&labels(&[
                    ("protocol", &r.protocol),
                    ("coverage", r.coverage()),
                ]))
                .inc();
        }
    }

    pub fn reload(&self, ok: bool, sizes: Option<&Sizes>) {
        self.reloads
            .get_or_create(&labels(&[(
                "result",
                if ok { "success" } else { "failure" },
            )]))
            .inc();
        if let Some(t) = sizes {
            self.last_reload.set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
            for (kind, n) in [
                ("peers", t.peers),
                ("prefixes", t.prefixes),
                ("rules", t.rules),
                ("port_ranges", t.ranges),
                ("guarded_ports", t.guards),
            ] {
                self.entries
                    .get_or_create(&labels(&[("kind", kind)]))
                    .set(n as i64);
            }
        }
    }

    /// Entries a reload added and removed, by backend.
    pub fn changed(&self, by_backend: &[(String, usize, usize)]) {
        for (backend, added, removed) in by_backend {
            for (change, n) in [("added", added), ("removed", removed)] {
                if *n > 0 {
                    self.changes
                        .get_or_create(&labels(&[("backend", backend), ("change", change)]))
                        .inc_by(*n as u64);
                }
            }
        }
    }

    /// How the cluster source stands.
    pub fn cluster(&self, st: &crate::agent::cluster::Status) {
        self.kube_up.set(i64::from(st.connected));
        self.kube_stale.set(st.stale.as_secs_f64());
        self.kube_objects.clear();
        for (kind, n) in &st.objects {
            self.kube_objects
                .get_or_create(&labels(&[("kind", kind)]))
                .set(*n as i64);
        }
        let note = if st.connected {
            "kubernetes: connected\n".to_string()
        } else if st.from_disk {
            format!(
                "kubernetes: not answering since start-up ({}s): enforcing the saved cluster state\n",
                st.stale.as_secs()
            )
        } else {
            format!(
                "kubernetes: not answering for {}s: enforcing the last applied policy\n",
                st.stale.as_secs()
            )
        };
        let mut note = note;
        for r in &st.refused {
            note.push_str(r);
            note.push('\n');
        }
        *self.health.lock().unwrap() = note;
    }

    /// Brings the counters up to the kernel's totals.
    pub fn update(&self, now: &Counters) {
        let mut last = self.last.lock().unwrap();
        let delta = |d: u8, c: u32| now.get(d, c).saturating_sub(last.get(d, c));
        for d in [DIR_EGRESS, DIR_INGRESS] {
            // The kernel counts connection-table, recent-flow and node-socket answers apart from rule
            // matches.
            self.packets
                .get_or_create(&labels(&[
                    ("direction", dir_name(d)),
                    ("verdict", "allowed"),
                ]))
                .inc_by(
                    delta(d, counter::CONNTRACK_HIT)
                        + delta(d, counter::RECENT_HIT)
                        + delta(d, counter::NODE_SOCKET),
                );
            self.recovered
                .get_or_create(&labels(&[("direction", dir_name(d))]))
                .inc_by(delta(d, counter::NODE_SOCKET));
            for (c, verdict) in [
                (counter::ALLOWED, "allowed"),
                (counter::DENIED, "denied"),
                (counter::AUDITED, "audited"),
                (counter::PASSED, "unpoliced"),
                (counter::FRAGMENT, "later_fragment"),
            ] {
                self.packets
                    .get_or_create(&labels(&[("direction", dir_name(d)), ("verdict", verdict)]))
                    .inc_by(delta(d, c));
            }
            for r in 1..=reason::MAX {
                self.denied_by_reason
                    .get_or_create(&labels(&[
                        ("direction", dir_name(d)),
                        ("reason", reason_name(r)),
                    ]))
                    .inc_by(delta(d, counter::REASON_BASE + r as u32));
            }
            for (c, result) in [
                (counter::EVENTS_EMITTED, "emitted"),
                (counter::EVENTS_SUPPRESSED, "suppressed"),
                (counter::EVENTS_LOST, "lost"),
                (counter::EVENTS_RATE_LIMITED, "rate_limited"),
            ] {
                self.events
                    .get_or_create(&labels(&[("direction", dir_name(d)), ("result", result)]))
                    .inc_by(delta(d, c));
            }
            for (c, cache) in [
                (counter::RECENT_HIT, "recent_flow"),
                (counter::RECENT_DENIAL, "recent_denial"),
                (counter::RECENT_PASS, "recent_pass"),
            ] {
                self.cache_answers
                    .get_or_create(&labels(&[("direction", dir_name(d)), ("cache", cache)]))
                    .inc_by(delta(d, c));
            }
        }
        *last = now.clone();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("encoding to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves GET /metrics, /healthz and /readyz. `scrape` refreshes the metrics from the kernel.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    scrape: Arc<dyn Fn() + Send + Sync>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics address {addr}: {e}"))?;
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("metrics accept: {e}");
                continue;
            }
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let Ok(Ok(n)) =
                tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await
            else {
                return;
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => {
                    scrape();
                    (
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics.encode(),
                    )
                }
                // Always 200: restarting the agent would not bring the API server back.
                "/healthz" => {
                    scrape();
                    let note = metrics.health.lock().unwrap().clone();
                    ("200 OK", "text/plain", format!("ok\n{note}"))
                }
                "/readyz" if ready.load(Ordering::Relaxed) => {
                    ("200 OK", "text/plain", "ready\n".to_string())
                }
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_string(),
                ),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}
