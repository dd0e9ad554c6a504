//! The reference model: what the datapath must answer for one packet, written from the
//! datapath's documented semantics in plain Rust, with no maps, classes or port blocks: a
//! compiled [`Policy`], the mode, a connection table, and the packet as its `Spec` and `Layout`
//! describe it.
//!
//! - Headers: Ethernet with up to two VLAN tags; IPv4 (options, fragments) and IPv6 (at most
//!   seven extension headers walked: hop-by-hop, routing, destination options, fragment, AH);
//!   TCP needs its ports and flags, UDP its ports; ICMP errors quote a TCP/UDP flow.
//! - A peer is what entries (of the packet's direction) and protected addresses name; every
//!   prefix that holds an address adds its rules (the union). Protected peers are policed whole.
//! - An allowed packet of a protected peer opens its flow in the connection table, under the
//!   running policy's sequence; after a switch a flow is checked against the new rules once.
//! - The node's connected sockets (`Model::sockets`): an inbound packet from a protected peer
//!   that neither the table nor a rule allows is the node's connection, and learned, when a
//!   socket of the node's holds exactly its flow, the egress rules allow the flow as they would
//!   a seeded one, and it is not a TCP segment without ACK; so is an ICMP error quoting it.
use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;
use trident_ports_agent::policy::{Direction, Mode, Policy, Proto};
use trident_ports_common::{counter, reason};

use super::spec::{Ext, L3, L4, Layout, Spec};
use crate::packet::{ACK, ICMP, ICMPV6, TCP, UDP};

/// What the kernel must do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub pass: bool,
    /// The counter that moves: `counter::*`. Packets of a known flow may count under
    /// `CONNTRACK_HIT` or `RECENT_HIT` (the per-CPU cache in front of the table), which the
    /// model does not tell apart: it says `CONNTRACK_HIT` for both.
    pub counter: u32,
    /// The reason of a denied (or audited) packet.
    pub reason: Option<u8>,
}

/// A flow as the connection table keys it: from the node's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub lport: u16,
    pub rport: u16,
    pub proto: u8,
}

pub struct Model {
    pub policy: Policy,
    /// The running policy's sequence; flows carry the one they were allowed under.
    pub seq: u32,
    pub flows: HashMap<Flow, u32>,
    /// The node's connected sockets, as flows from the node's side (each bound to its address).
    pub sockets: Vec<Flow>,
}

/// What the parser makes of the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// Not IP, or too short for the addresses: not the policy's business.
    NotJudged,
    Ports {
        proto: u8,
        sport: u16,
        dport: u16,
        /// A TCP segment's ACK flag (false for UDP).
        ack: bool,
    },
    LaterFragment,
    Truncated,
    IcmpInformational,
    IcmpError(Flow),
    IcmpOther,
    Other,
}

fn v4_mapped(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V6(v.to_ipv6_mapped()),
        v6 @ IpAddr::V6(_) => v6,
    }
}

/// The kernel keeps one address space: IPv4 as `::ffff:a.b.c.d`.
fn holds(net: &IpNet, addr: IpAddr) -> bool {
    let a = v4_mapped(addr);
    match net {
        IpNet::V4(n) => {
            let mapped: IpNet = format!("{}/{}", n.network().to_ipv6_mapped(), 96 + n.prefix_len())
                .parse()
                .unwrap();
            mapped.contains(&a)
        }
        IpNet::V6(n) => IpNet::V6(*n).contains(&a),
    }
}

impl Model {
    pub fn new(policy: Policy, seq: u32) -> Self {
        Model {
            policy,
            seq,
            flows: HashMap::new(),
            sockets: Vec::new(),
        }
    }

    /// The same model with the node's connected sockets.
    #[must_use]
    pub fn with_sockets(mut self, sockets: &[Flow]) -> Self {
        self.sockets = sockets.to_vec();
        self
    }

    /// An inbound flow that is a connection of the node's (see the module's docs): learned.
    fn node_connection(&mut self, f: &Flow) -> bool {
        let yes = self.sockets.contains(f)
            && self.known(Direction::Egress, f.remote)
            && self.allows(Direction::Egress, f.remote, f.proto, f.rport);
        if yes {
            self.flows.insert(*f, self.seq);
        }
        yes
    }

    /// A policy switch: a new sequence, and every flow to be checked again.
    pub fn switch(&mut self, policy: Policy, seq: u32) {
        self.policy = policy;
        self.seq = seq;
    }

    fn protected(&self, addr: IpAddr) -> bool {
        self.policy.protected.iter().any(|p| holds(&p.addr, addr))
            || self
                .policy
                .entries
                .iter()
                .any(|e| e.direction == Direction::Egress && holds(&e.peer, addr))
    }

    /// The peer is named by an entry of this direction or is protected.
    fn known(&self, dir: Direction, addr: IpAddr) -> bool {
        self.protected(addr)
            || self
                .policy
                .entries
                .iter()
                .any(|e| e.direction == dir && holds(&e.peer, addr))
    }

    fn allows(&self, dir: Direction, addr: IpAddr, proto: u8, port: u16) -> bool {
        self.policy.entries.iter().any(|e| {
            e.direction == dir
                && holds(&e.peer, addr)
                && e.proto.number() == proto
                && e.ports.contains(port)
        })
    }

    /// A flow the table holds under the running policy, or held under an earlier one and still
    /// allowed (either way) by the running rules: refreshed, or else forgotten.
    fn known_flow(&mut self, f: &Flow) -> bool {
        let Some(&seq) = self.flows.get(f) else {
            return false;
        };
        if seq == self.seq {
            return true;
        }
        let still = (self.known(Direction::Egress, f.remote)
            && self.allows(Direction::Egress, f.remote, f.proto, f.rport))
            || (self.known(Direction::Ingress, f.remote)
                && self.allows(Direction::Ingress, f.remote, f.proto, f.lport));
        if still {
            self.flows.insert(*f, self.seq);
        } else {
            self.flows.remove(f);
        }
        still
    }

    fn guarded(&self, proto: u8, port: u16, local: IpAddr) -> bool {
        self.policy
            .guarded
            .iter()
            .any(|g| g.proto.number() == proto && g.port == port)
            && self
                .policy
                .guard_addresses
                .iter()
                .any(|a| a.prefix_len() == a.max_prefix_len() && holds(a, local))
    }

    /// Judges one packet and applies what it does to the connection table.
    pub fn judge(&mut self, spec: &Spec, layout: &Layout) -> Verdict {
        let dir = if spec.prog.egress() {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let (kind, src, dst) = parse(spec, layout);
        let pass = |counter| Verdict {
            pass: true,
            counter,
            reason: None,
        };
        if kind == Kind::NotJudged {
            return pass(counter::PASSED);
        }
        let (local, remote) = if dir == Direction::Egress {
            (src, dst)
        } else {
            (dst, src)
        };
        let known = self.known(dir, remote);
        let protected = self.protected(remote);
        let outcome: Result<u32, u8> = match kind {
            Kind::NotJudged => unreachable!(),
            Kind::Ports {
                proto,
                sport,
                dport,
                ack,
            } => {
                let (lport, rport) = if dir == Direction::Egress {
                    (sport, dport)
                } else {
                    (dport, sport)
                };
                let flow = Flow {
                    local,
                    remote,
                    lport,
                    rport,
                    proto,
                };
                if known && protected {
                    if self.known_flow(&flow) {
                        Ok(counter::CONNTRACK_HIT)
                    } else if self.allows(dir, remote, proto, dport) {
                        self.flows.insert(flow, self.seq);
                        Ok(counter::ALLOWED)
                    } else if dir == Direction::Egress {
                        Err(reason::NO_RULE)
                    } else if (proto != TCP || ack) && self.node_connection(&flow) {
                        Ok(counter::NODE_SOCKET)
                    } else {
                        Err(reason::UNSOLICITED)
                    }
                } else if known && self.allows(dir, remote, proto, dport) {
                    Ok(counter::ALLOWED)
                } else if dir == Direction::Ingress && self.guarded(proto, dport, local) {
                    Err(reason::SOURCE_NOT_ALLOWED)
                } else {
                    Ok(counter::PASSED)
                }
            }
            Kind::LaterFragment if protected => Ok(counter::FRAGMENT),
            Kind::Truncated if protected => Err(reason::MALFORMED),
            Kind::Other if protected => Err(reason::PROTOCOL),
            Kind::IcmpOther if protected => Err(reason::ICMP_UNRELATED),
            Kind::IcmpError(quoted) => {
                // The quoted packet went the other way: from the node's side, its ends swap
                // when the error comes from outside.
                let flow = if dir == Direction::Ingress {
                    quoted
                } else {
                    Flow {
                        local: quoted.remote,
                        remote: quoted.local,
                        lport: quoted.rport,
                        rport: quoted.lport,
                        proto: quoted.proto,
                    }
                };
                if self.known_flow(&flow) {
                    Ok(counter::ALLOWED)
                } else if !protected {
                    Ok(counter::PASSED)
                } else if dir == Direction::Ingress && self.node_connection(&flow) {
                    Ok(counter::NODE_SOCKET)
                } else {
                    Err(reason::ICMP_UNRELATED)
                }
            }
            _ => Ok(counter::PASSED),
        };
        match outcome {
            Ok(c) => pass(c),
            Err(why) if self.policy.mode == Mode::Audit => Verdict {
                pass: true,
                counter: counter::AUDITED,
                reason: Some(why),
            },
            Err(why) => Verdict {
                pass: false,
                counter: counter::DENIED,
                reason: Some(why),
            },
        }
    }
}

/// What the parser sees: the kind, and the outer addresses (unspecified when not judged).
fn parse(spec: &Spec, l: &Layout) -> (Kind, IpAddr, IpAddr) {
    let none = (
        Kind::NotJudged,
        IpAddr::from([0u8; 4]),
        IpAddr::from([0u8; 4]),
    );
    if !l.has(l.ethertype) {
        return none;
    }
    // The walk reads the next ethertype of at most two tags; a third tag is not IP.
    if spec.tags > 0 && !l.tags.iter().take(2).all(|t| l.has(*t)) {
        return none;
    }
    if spec.tags > 2 {
        return none;
    }
    let ip = l.ip;
    match &spec.l3 {
        L3::NotIp { .. } => none,
        L3::V4 {
            src,
            dst,
            ihl,
            version,
            frag,
            proto,
            l4,
        } => {
            // vihl, protocol, source and destination must be there.
            if !l.has((ip, 20)) {
                return none;
            }
            let (src, dst) = (*src, *dst);
            if *version != 4 || *ihl < 5 {
                return (Kind::Truncated, src, dst);
            }
            if frag & 0x1fff != 0 {
                return (Kind::LaterFragment, src, dst);
            }
            (transport(*proto, false, l4, l), src, dst)
        }
        L3::V6 { src, dst, ext, l4 } => {
            if !l.has((ip, 40)) {
                return none;
            }
            let (src, dst) = (*src, *dst);
            // The walk reads at most eight headers; what follows the eighth is never reached.
            for (i, e) in ext.iter().take(8).enumerate() {
                if !l.has(l.ext[i]) {
                    return (Kind::Truncated, src, dst);
                }
                if let Ext::Fragment { offset, .. } = e {
                    if *offset != 0 {
                        return (Kind::LaterFragment, src, dst);
                    }
                }
            }
            if ext.len() >= 8 {
                return (Kind::Truncated, src, dst);
            }
            (transport(l4.proto(true), true, l4, l), src, dst)
        }
    }
}

fn transport(proto: u8, v6: bool, l4: &L4, l: &Layout) -> Kind {
    let at = l.l4;
    match (proto, l4) {
        (
            TCP,
            L4::Tcp {
                sport,
                dport,
                flags,
                ..
            },
        ) if l.has((at, 4)) && l.has((at + 13, 1)) => Kind::Ports {
            proto,
            sport: *sport,
            dport: *dport,
            ack: flags & ACK != 0,
        },
        (UDP, L4::Udp { sport, dport, .. }) if l.has((at, 4)) => Kind::Ports {
            proto,
            sport: *sport,
            dport: *dport,
            ack: false,
        },
        (TCP | UDP, _) => Kind::Truncated,
        (ICMP, L4::Icmp { ty, quote }) if !v6 => icmp(*ty, false, quote.as_ref(), l),
        (ICMPV6, L4::Icmp { ty, quote }) if v6 => icmp(*ty, true, quote.as_ref(), l),
        _ => Kind::Other,
    }
}

fn icmp(ty: u8, v6: bool, quote: Option<&super::spec::Quote>, l: &Layout) -> Kind {
    if !l.has((l.l4, 1)) {
        return Kind::Truncated;
    }
    let (informational, error) = if v6 {
        (matches!(ty, 128..=137 | 143), matches!(ty, 1..=4))
    } else {
        (matches!(ty, 0 | 8), matches!(ty, 3 | 11 | 12))
    };
    if informational {
        return Kind::IcmpInformational;
    }
    let Some(q) = quote.filter(|_| error) else {
        return Kind::IcmpOther;
    };
    let header_read = if v6 {
        l.has((l.quote, 40))
    } else {
        l.has((l.quote, 20)) && q.ihl >= 5
    };
    if !header_read || (q.proto != TCP && q.proto != UDP) || !l.has((l.quote_l4, 4)) {
        return Kind::IcmpOther;
    }
    Kind::IcmpError(Flow {
        local: q.src,
        remote: q.dst,
        lport: q.sport,
        rport: q.dport,
        proto: q.proto,
    })
}

/// `Proto` from a protocol number, for building entries.
pub fn proto(n: u8) -> Proto {
    Proto::from_number(n).expect("TCP or UDP")
}
