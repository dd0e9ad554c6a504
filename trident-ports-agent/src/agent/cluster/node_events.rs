//! Denied storage flows as Kubernetes Events on this node's Node object, so that `kubectl
//! describe node` shows them next to the kubelet's mount errors. Aggregated per flow (direction,
//! remote address and port, protocol) and reason: one Event per flow, whose count and last
//! timestamp are patched as more packets are denied. Rate-limited: at most `budget` API writes
//! per interval, the busiest flows first; the rest wait for the next interval (up to `MAX_FLOWS`
//! kept, then dropped and counted).
//!
//! Events are written as core/v1 Events in `default`, where the kubelet writes a Node's own.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use crate::events::{Record, hub::Hub};

/// Flows waiting to be written, at most.
const MAX_FLOWS: usize = 1024;
/// The reason Events carry.
pub const REASON: &str = "StorageFlowDenied";

/// One flow as the Events aggregate it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Flow {
    direction: String,
    /// The storage side: `dst` for egress, `src` (without its port) for ingress.
    remote: String,
    /// The node's side without its ephemeral port.
    node: String,
    port_proto: String,
    reason: String,
}

struct Pending {
    packets: u64,
    first: Timestamp,
    last: Timestamp,
    hint: String,
}

struct Posted {
    name: String,
    count: i32,
}

/// Whether a record is a denied flow that involves storage: its remote end is an address of a
/// backend or otherwise protected by the policy (the explainer says which).
fn involves_storage(r: &Record) -> bool {
    r.verdict == "denied"
        && (r.backend.is_some()
            || r.hint
                .as_deref()
                .is_some_and(|h| h.contains(" is protected (")))
}

fn host(endpoint: &str) -> String {
    // `192.0.2.1:1234` or `[2001:db8::1]:1234`.
    match endpoint.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => {
            h.trim_matches(['[', ']']).to_string()
        }
        _ => endpoint.to_string(),
    }
}

fn flow(r: &Record) -> Flow {
    let egress = r.direction == "egress";
    let (node, remote) = if egress {
        (&r.src, &r.dst)
    } else {
        (&r.dst, &r.src)
    };
    let port = r.dst.rsplit_once(':').map_or("", |(_, p)| p);
    Flow {
        direction: r.direction.clone(),
        remote: host(remote),
        node: host(node),
        port_proto: format!("{port}/{}", r.proto),
        reason: r.reason.clone(),
    }
}

/// `egress 192.0.2.1 -> 192.0.2.4:3260/tcp denied (no-rule): 3 packet(s); <the hint>`.
fn message(f: &Flow, p: &Pending, total: u64) -> String {
    let bracket = |h: &str| {
        if h.contains(':') {
            format!("[{h}]")
        } else {
            h.to_string()
        }
    };
    let arrow = if f.direction == "egress" {
        format!("{} -> {}:{}", f.node, bracket(&f.remote), f.port_proto)
    } else {
        format!("{} -> {}:{}", f.remote, bracket(&f.node), f.port_proto)
    };
    let mut m = format!(
        "{} {arrow} denied ({}): {total} packet(s); {}",
        f.direction, f.reason, p.hint
    );
    if m.len() > 1000 {
        let mut cut = 1000;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
    }
    m
}

pub struct NodeEvents {
    pub client: Client,
    pub node: String,
    pub interval: Duration,
    pub budget: usize,
}

impl NodeEvents {
    /// Runs until the hub closes (or the task is aborted).
    pub async fn run(self, hub: Arc<Hub>) {
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let mut rx = hub.subscribe_none();
        let mut pending: BTreeMap<Flow, Pending> = BTreeMap::new();
        let mut posted: HashMap<Flow, Posted> = HashMap::new();
        let mut totals: HashMap<Flow, u64> = HashMap::new();
        let (mut dropped, mut lagged) = (0u64, 0u64);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok((_, rec)) if involves_storage(&rec) => {
                        let f = flow(&rec);
                        let now = Timestamp::now();
                        if let Some(p) = pending.get_mut(&f) {
                            p.packets += 1 + u64::from(rec.suppressed);
                            p.last = now;
                        } else if pending.len() < MAX_FLOWS {
                            pending.insert(f, Pending {
                                packets: 1 + u64::from(rec.suppressed),
                                first: now,
                                last: now,
                                hint: rec.hint.clone().unwrap_or_default(),
                            });
                        } else {
                            dropped += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => lagged += n,
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    if dropped + lagged > 0 {
                        warn!(dropped, lagged, "node events: more denied flows than kept; counted in the flows stream only");
                        (dropped, lagged) = (0, 0);
                    }
                    self.flush(&api, &mut pending, &mut posted, &mut totals).await;
                }
            }
        }
    }

    /// Writes the busiest pending flows, `budget` at most.
    async fn flush(
        &self,
        api: &Api<Event>,
        pending: &mut BTreeMap<Flow, Pending>,
        posted: &mut HashMap<Flow, Posted>,
        totals: &mut HashMap<Flow, u64>,
    ) {
        let mut order: Vec<(Flow, u64)> = pending
            .iter()
            .map(|(f, p)| (f.clone(), p.packets))
            .collect();
        order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut failed: Option<(usize, String)> = None;
        for (f, _) in order.into_iter().take(self.budget) {
            let p = pending.remove(&f).expect("listed");
            let total = totals.get(&f).copied().unwrap_or(0) + p.packets;
            let msg = message(&f, &p, total);
            let result = if let Some(e) = posted.get_mut(&f) {
                Self::update(api, e, &p, &msg).await
            } else {
                self.create(api, &p, &msg).await.map(|e| {
                    posted.insert(f.clone(), e);
                })
            };
            match result {
                Ok(()) => {
                    totals.insert(f, total);
                }
                // An Event the API server finds invalid stays invalid: written again, it would
                // only take a write of every interval's budget.
                Err(kube::Error::Api(s)) if s.code == 400 || s.code == 422 => {
                    warn!(
                        "node events: the event for {} {} is invalid, dropped: {s}",
                        f.remote, f.port_proto
                    );
                    posted.remove(&f);
                }
                Err(e) => {
                    let (n, _) = failed
                        .get_or_insert_with(|| (0, format!("{} {}: {e}", f.remote, f.port_proto)));
                    *n += 1;
                    // Written again next interval, with what the flow adds meanwhile: a write
                    // the API server refused or never answered loses nothing. Only an Event
                    // that vanished (its TTL) is created anew; another would be a second Event
                    // of the flow.
                    if matches!(&e, kube::Error::Api(s) if s.code == 404) {
                        posted.remove(&f);
                    }
                    pending.insert(f, p);
                }
            }
        }
        if let Some((n, first)) = failed {
            warn!(
                "node events: {n} write(s) failed, kept for the next interval; the first: {first}"
            );
        }
    }

    /// One more interval's packets of a flow already posted.
    async fn update(api: &Api<Event>, e: &mut Posted, p: &Pending, msg: &str) -> kube::Result<()> {
        // Counted only once written: a failed patch is tried again with the same packets.
        let count = e
            .count
            .saturating_add(i32::try_from(p.packets).unwrap_or(i32::MAX));
        let patch = serde_json::json!({
            "count": count,
            "lastTimestamp": Time(p.last),
            "message": msg,
        });
        api.patch(&e.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        e.count = count;
        Ok(())
    }

    /// A flow's first Event.
    async fn create(&self, api: &Api<Event>, p: &Pending, msg: &str) -> kube::Result<Posted> {
        let name = format!("{}.tp.{:x}", self.node, p.first.as_nanosecond());
        let ev = self.event(&name, msg, p);
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => info!(flow = %msg, "node event posted"),
            // A create whose answer was lost, written again: the name is the flow's first
            // denial's time, so the Event is already there, and the next write patches it.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        Ok(Posted {
            name,
            count: ev.count.unwrap_or(1),
        })
    }

    fn event(&self, name: &str, msg: &str, p: &Pending) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node.clone()),
                // The kubelet's Node events carry the node's name as its uid.
                uid: Some(self.node.clone()),
                ..ObjectReference::default()
            },
            reason: Some(REASON.into()),
            message: Some(msg.to_string()),
            type_: Some("Warning".into()),
            count: Some(i32::try_from(p.packets).unwrap_or(i32::MAX)),
            first_timestamp: Some(Time(p.first)),
            last_timestamp: Some(Time(p.last)),
            source: Some(EventSource {
                component: Some("trident-ports".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("trident-ports".into()),
            reporting_instance: Some(self.node.clone()),
            ..Event::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(direction: &str, src: &str, dst: &str, backend: Option<&str>) -> Record {
        Record {
            ts: String::new(),
            verdict: "denied".into(),
            direction: direction.into(),
            iface: "eth0".into(),
            src: src.into(),
            dst: dst.into(),
            proto: "tcp".into(),
            reason: "no-rule".into(),
            tcp_flags: None,
            suppressed: 0,
            backend: backend.map(str::to_string),
            purpose: None,
            hint: Some("192.0.2.4 is protected (volume pvc-1 ...)".into()),
        }
    }

    #[test]
    fn flows_aggregate_without_the_nodes_ephemeral_port() {
        let a = rec("egress", "192.0.2.1:40001", "192.0.2.4:3260", None);
        let b = rec("egress", "192.0.2.1:40002", "192.0.2.4:3260", None);
        assert_eq!(flow(&a), flow(&b));
        assert!(involves_storage(&a));
        let i = rec(
            "ingress",
            "[2001:db8::4]:2049",
            "[2001:db8::1]:800",
            Some("nas"),
        );
        let f = flow(&i);
        assert_eq!(
            (f.remote.as_str(), f.node.as_str(), f.port_proto.as_str()),
            ("2001:db8::4", "2001:db8::1", "800/tcp")
        );
        let mut other = rec("egress", "192.0.2.1:1", "203.0.113.9:80", None);
        other.hint = Some("203.0.113.9".into());
        assert!(!involves_storage(&other), "not storage");
        let mut audited = a.clone();
        audited.verdict = "audit".into();
        assert!(!involves_storage(&audited));
    }
}
