//! Explains a denied packet in Trident's terms: which backend and field the address belongs to,
//! what the port is for, and what to do about it.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use trident_ports_common::{Event, reason};

use crate::{
    events::{Record, addr},
    model::Model,
    policy::{BackendInfo, Direction, Policy, Proto},
};

/// How long the previous policy's explainer outlives a switch. The kernel writes an event while
/// it judges the packet, so events of the previous policy are all in the ring within
/// microseconds of the switch; the pump reads them as soon as it gets to them, which takes
/// longer only when it is backed up (stdout slow, the ring full). Such a late event is explained
/// by the policy in force, as every event was before events carried their sequence.
const KEEP_PREVIOUS: Duration = Duration::from_secs(5);

/// The explainers of the policy in force and of the one before it, by policy sequence: a denial
/// is explained by the policy that judged it (`Event::seq`), also when the pump reads it after a
/// switch. The previous one is dropped `KEEP_PREVIOUS` after the switch: for a large policy it
/// holds as much memory as the policy itself.
pub struct Explainers {
    current: (u16, Explainer),
    previous: Option<(u16, Explainer, Instant)>,
}

impl Explainers {
    pub fn new(seq: u32, explainer: Explainer) -> Self {
        Explainers {
            current: (seq as u16, explainer),
            previous: None,
        }
    }

    /// Puts the explainer of the policy now in force, under sequence `seq`, in place.
    pub fn install(&mut self, seq: u32, explainer: Explainer) {
        let old = std::mem::replace(&mut self.current, (seq as u16, explainer));
        self.previous = Some((old.0, old.1, Instant::now()));
    }

    /// Replaces the explainer in force without a new sequence (a mode switch: the same
    /// entries judged, only the verdict's consequence changes).
    pub fn replace_current(&mut self, explainer: Explainer) {
        self.current.1 = explainer;
    }

    /// The explainer of the policy that judged `ev`: the previous one if `ev` carries its
    /// sequence, otherwise the one in force.
    pub fn for_event(&self, ev: &Event) -> &Explainer {
        match &self.previous {
            Some((seq, previous, _)) if *seq == ev.seq && *seq != self.current.0 => previous,
            _ => &self.current.1,
        }
    }

    /// When the previous explainer is due to be dropped, if one is kept.
    pub fn expiry(&self) -> Option<Instant> {
        self.previous.as_ref().map(|p| p.2 + KEEP_PREVIOUS)
    }

    /// Drops the previous explainer if it is due by `now`; says whether it did.
    pub fn expire(&mut self, now: Instant) -> bool {
        let due = self.expiry().is_some_and(|at| at <= now);
        if due {
            self.previous = None;
        }
        due
    }
}

/// Who names an address: an entry or a protected address of the policy, by index. The strings
/// stay in the policy, which the explainer shares: a 100,000-entry policy is kept once.
#[derive(Clone, Copy)]
enum Owner {
    Entry(u32),
    Protected(u32),
}

#[derive(Default)]
pub struct Explainer {
    policy: Arc<Policy>,
    exact: HashMap<IpAddr, Owner>,
    nets: Vec<(IpNet, Owner)>,
    backends: HashMap<String, BackendInfo>,
    guarded: HashMap<(Proto, u16), String>,
}

impl Explainer {
    pub fn new(policy: Arc<Policy>) -> Self {
        let mut x = Explainer::default();
        let owners = policy
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.peer, Owner::Entry(i as u32)))
            .chain(
                policy
                    .protected
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.addr, Owner::Protected(i as u32))),
            );
        for (net, owner) in owners {
            if net.prefix_len() == net.max_prefix_len() {
                x.exact.entry(net.addr()).or_insert(owner);
            } else if !x.nets.iter().any(|(n, _)| *n == net) {
                x.nets.push((net, owner));
            }
        }
        // Longest prefix first, so that the first match is the most specific.
        x.nets
            .sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        x.backends = policy
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.clone()))
            .collect();
        x.guarded = policy
            .guarded
            .iter()
            .map(|g| ((g.proto, g.port), g.purpose.clone()))
            .collect();
        x.policy = policy;
        x
    }

    /// (backend, source of the address) of whoever names `ip`.
    fn owner(&self, ip: IpAddr) -> Option<(Option<&str>, &str)> {
        let o = self.exact.get(&ip).copied().or_else(|| {
            self.nets
                .iter()
                .find(|(n, _)| n.contains(&ip))
                .map(|(_, o)| *o)
        })?;
        Some(match o {
            Owner::Entry(i) => {
                let e = &self.policy.entries[i as usize];
                (e.backend.as_deref(), &*e.source)
            }
            Owner::Protected(i) => (None, self.policy.protected[i as usize].why.as_str()),
        })
    }

    /// Fills `backend`, `purpose` and `hint` of a record.
    pub fn explain(&self, ev: &Event, rec: &mut Record) {
        let egress = rec.direction == Direction::Egress.to_string();
        let remote = addr(if egress { ev.dst } else { ev.src });
        let proto = Proto::from_number(ev.proto);
        let owner = self.owner(remote);
        rec.backend = owner.and_then(|(b, _)| b.map(str::to_string));
        let backend = rec.backend.as_ref().and_then(|b| self.backends.get(b));
        let port_purpose = proto.and_then(|p| Model::get().purpose_of(ev.dst_port, p));
        rec.purpose = match (ev.reason, proto) {
            (reason::SOURCE_NOT_ALLOWED, Some(p)) => self.guarded.get(&(p, ev.dst_port)).cloned(),
            _ => port_purpose.map(super::super::model::Port::explain),
        };
        let port = format!("{}/{}", ev.dst_port, rec.proto);
        let whose = match (&rec.backend, owner) {
            (Some(b), Some((_, src))) => format!("{remote} is storage of backend {b} ({src})"),
            (None, Some((_, src))) => format!("{remote} is protected ({src})"),
            _ => format!("{remote}"),
        };
        rec.hint = Some(match ev.reason {
            reason::NO_RULE => {
                let v3_only = port_purpose.is_some_and(|p| {
                    matches!(
                        p.condition,
                        crate::model::Condition::Nfsv3 | crate::model::Condition::Nfsv3Callbacks
                    )
                }) || (ev.dst_port == 2049 && proto == Some(Proto::Udp));
                match backend.and_then(|b| b.nfs.as_deref()) {
                    Some(nfs) if v3_only && nfs.starts_with("NFSv4") => format!(
                        "{whose}; backend {} mounts {nfs}, so NFSv3 ports are closed: an NFSv3 mount or tool \
                         (rpcinfo, showmount) is at work. Mount with the backend's version, or pin nfsvers=3 in \
                         its nfsMountOptions if NFSv3 is intended",
                        backend.unwrap().name
                    ),
                    _ => format!(
                        "{whose}; no backend needs {port} there. If something does, add it under `allow:` with a reason"
                    ),
                }
            }
            reason::UNSOLICITED => format!(
                "{whose}; storage opened a connection to the node on {port}: only replies to what the node \
                 opened, and NFSv3 callbacks when nfs.callbacks is on, may come in"
            ),
            reason::SOURCE_NOT_ALLOWED => match &rec.purpose {
                Some(p) if p.contains("probe") => {
                    format!("{port} ({p}) is local only: nothing outside the node may reach it")
                }
                _ => format!(
                    "{port} accepts only cluster.cidrs; add {remote}'s subnet there if it is part of the cluster"
                ),
            },
            reason::MALFORMED => format!(
                "{whose}; the packet is too short or its header chain invalid, so its ports cannot be checked"
            ),
            reason::PROTOCOL => {
                format!("{whose}; IP protocol {} is not TCP, UDP or ICMP", ev.proto)
            }
            reason::ICMP_UNRELATED => format!(
                "{whose}; an ICMP error or redirect that belongs to no flow the node has open"
            ),
            _ => String::new(),
        });
    }
}
