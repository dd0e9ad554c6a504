//! Random policies and packets, drawn where verdicts change: addresses at and around CIDR edges,
//! ports at and around range ends, flows and their replies, ICMP errors quoting them, and the
//! shapes the datapath must refuse or walk (tags, options, fragments, extension-header chains
//! short and over the limit, other protocols, truncation at any byte).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use trident_ports_agent::policy::{
    Direction, Entry, Guard, Mode, Policy, PortRange, Protected, Proto,
};

use super::{
    model::Flow,
    spec::{Ext, L3, L4, Prog, Quote, Spec},
};
use crate::packet::{ACK, ICMP, ICMPV6, RST, SYN, TCP, UDP};

/// splitmix64: small, fast, and the same sequence for the same seed everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

/// The node's own addresses in every generated policy.
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The storage the node's real sockets are connected to (see `differential::NodeSockets`).
pub const STORAGE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const STORAGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

fn v4(rng: &mut Rng) -> Ipv4Addr {
    let net = rng.pick(&[[192u8, 0, 2], [198, 51, 100], [203, 0, 113]]);
    Ipv4Addr::new(net[0], net[1], net[2], rng.below(256) as u8)
}

fn v6(rng: &mut Rng) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0,
        rng.below(4) as u16,
        0,
        0,
        0,
        rng.below(300) as u16,
    )
}

fn net(rng: &mut Rng, v6only: bool) -> IpNet {
    if v6only || rng.chance(30) {
        let len = rng.pick(&[128u8, 128, 126, 120, 112, 64]);
        IpNet::new(IpAddr::V6(v6(rng)), len).unwrap().trunc()
    } else {
        let len = rng.pick(&[32u8, 32, 30, 28, 24]);
        IpNet::new(IpAddr::V4(v4(rng)), len).unwrap().trunc()
    }
}

fn ports(rng: &mut Rng) -> PortRange {
    if rng.chance(60) {
        PortRange::single(rng.pick(&[2049u16, 111, 635, 3260, 443, 4045, 445, 1, 65535]))
    } else {
        let from = rng.pick(&[1u16, 1024, 4045, 5000, 40000, 65000]);
        let to = from.saturating_add(rng.pick(&[1u16, 2, 63, 100, 1000, 65535]));
        PortRange { from, to }
    }
}

fn entry(direction: Direction, peer: IpNet, ports: PortRange, proto: Proto) -> Entry {
    Entry {
        direction,
        peer,
        ports,
        proto,
        purpose: "fuzz".into(),
        backend: None,
        source: "fuzz".into(),
    }
}

/// A policy of a few storage peers (egress), callbacks and cluster sources (ingress), extra
/// protected addresses, guarded ports on the node's addresses, in enforce or audit mode.
pub fn policy(rng: &mut Rng) -> Policy {
    let mut p = Policy {
        role: "worker".into(),
        mode: if rng.chance(20) {
            Mode::Audit
        } else {
            Mode::Enforce
        },
        guard_addresses: vec![
            IpNet::from(IpAddr::V4(NODE_V4)),
            IpNet::from(IpAddr::V6(NODE_V6)),
        ],
        ..Policy::default()
    };
    // Now and then the storage the node's sockets are connected to, on their ports.
    for (peer, port, proto) in [
        (IpAddr::V4(STORAGE_V4), 2049, Proto::Tcp),
        (IpAddr::V6(STORAGE_V6), 2049, Proto::Tcp),
        (IpAddr::V4(STORAGE_V4), 111, Proto::Udp),
    ] {
        if rng.chance(40) {
            p.entries.push(entry(
                Direction::Egress,
                IpNet::from(peer),
                PortRange::single(port),
                proto,
            ));
        }
    }
    for _ in 0..=rng.below(6) {
        let peer = net(rng, false);
        let proto = if rng.chance(70) {
            Proto::Tcp
        } else {
            Proto::Udp
        };
        p.entries
            .push(entry(Direction::Egress, peer, ports(rng), proto));
        if rng.chance(30) {
            // The same peer with a second rule, or a callback range from it.
            p.entries
                .push(entry(Direction::Ingress, peer, ports(rng), proto));
        }
    }
    for _ in 0..rng.below(3) {
        let peer = net(rng, false);
        p.entries
            .push(entry(Direction::Ingress, peer, ports(rng), Proto::Tcp));
    }
    for _ in 0..rng.below(3) {
        p.protected.push(Protected {
            addr: net(rng, false),
            why: "fuzz".into(),
        });
    }
    for _ in 0..rng.below(4) {
        p.guarded.push(Guard {
            port: rng.pick(&[8000u16, 8443, 8001, 17546, 2049, 22]),
            proto: if rng.chance(80) {
                Proto::Tcp
            } else {
                Proto::Udp
            },
            purpose: "fuzz".into(),
        });
    }
    p
}

/// A small change of `p` that keeps its guards (so that the datapath updates the running
/// generation in place): entries added, removed, re-ported, or moved to a wider or narrower
/// prefix of the same address; protected addresses added or removed; now and then the mode.
pub fn mutate(p: &Policy, rng: &mut Rng) -> Policy {
    let mut q = p.clone();
    for _ in 0..=rng.below(3) {
        match rng.below(7) {
            0 if !q.entries.is_empty() => {
                let i = rng.below(q.entries.len() as u64) as usize;
                q.entries.remove(i);
            }
            1 => {
                let dir = if rng.chance(70) {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                let proto = if rng.chance(70) {
                    Proto::Tcp
                } else {
                    Proto::Udp
                };
                q.entries
                    .push(entry(dir, net(rng, false), ports(rng), proto));
            }
            2 if !q.entries.is_empty() => {
                let i = rng.below(q.entries.len() as u64) as usize;
                q.entries[i].ports = ports(rng);
            }
            3 | 4 if !q.entries.is_empty() => {
                // The same address under a wider or narrower prefix: longest-match order.
                let i = rng.below(q.entries.len() as u64) as usize;
                let e = q.entries[i].clone();
                let len = match e.peer {
                    IpNet::V4(_) => rng.pick(&[32u8, 30, 28, 24, 16]),
                    IpNet::V6(_) => rng.pick(&[128u8, 126, 120, 112, 64]),
                };
                let peer = IpNet::new(e.peer.addr(), len).unwrap().trunc();
                if rng.chance(50) {
                    q.entries[i].peer = peer;
                } else {
                    q.entries.push(Entry { peer, ..e });
                }
            }
            5 => {
                if !q.protected.is_empty() && rng.chance(50) {
                    let i = rng.below(q.protected.len() as u64) as usize;
                    q.protected.remove(i);
                } else {
                    q.protected.push(Protected {
                        addr: net(rng, false),
                        why: "fuzz".into(),
                    });
                }
            }
            _ => {
                if rng.chance(30) {
                    q.mode = match q.mode {
                        Mode::Enforce => Mode::Audit,
                        Mode::Audit => Mode::Enforce,
                    };
                }
            }
        }
    }
    q
}

/// The interesting addresses of a policy: each net's first and last address and their
/// neighbours inside and outside, of `v6`'s family.
fn edges(p: &Policy, v6: bool) -> Vec<IpAddr> {
    let nets = p
        .entries
        .iter()
        .map(|e| e.peer)
        .chain(p.protected.iter().map(|x| x.addr))
        .filter(|n| matches!(n, IpNet::V6(_)) == v6);
    let mut out = Vec::new();
    for n in nets {
        let (first, last) = (n.network(), n.broadcast());
        out.extend([first, last]);
        match (first, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let (a, b) = (u32::from(a), u32::from(b));
                for x in [
                    a.wrapping_sub(1),
                    a.wrapping_add(1),
                    b.wrapping_sub(1),
                    b.wrapping_add(1),
                ] {
                    out.push(IpAddr::V4(Ipv4Addr::from(x)));
                }
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let (a, b) = (u128::from(a), u128::from(b));
                for x in [
                    a.wrapping_sub(1),
                    a.wrapping_add(1),
                    b.wrapping_sub(1),
                    b.wrapping_add(1),
                ] {
                    out.push(IpAddr::V6(Ipv6Addr::from(x)));
                }
            }
            _ => {}
        }
    }
    out
}

fn port_edges(p: &Policy) -> Vec<u16> {
    let mut out: Vec<u16> = vec![2049, 111, 3260, 22, 40000, 54321];
    for e in &p.entries {
        let r = e.ports;
        out.extend([
            r.from,
            r.to,
            r.from.saturating_sub(1),
            r.to.saturating_add(1),
        ]);
    }
    out.extend(p.guarded.iter().map(|g| g.port));
    out.retain(|&x| x != 0);
    out
}

/// A flow the generator remembers, to send its replies, continuations and ICMP errors.
#[derive(Clone, Debug)]
struct Sent {
    prog: Prog,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
}

pub struct Generator {
    pub rng: Rng,
    recent: Vec<Sent>,
    /// The packet generated last, sent again now and then: a retransmission, or the next
    /// datagram of a flood.
    last: Option<Spec>,
    xdp: bool,
    /// The node's connected sockets, as flows from the node's side: their packets (with any
    /// flags), replies and ICMP errors are drawn too.
    sockets: Vec<Flow>,
}

impl Generator {
    pub fn new(seed: u64, xdp: bool) -> Self {
        Generator {
            rng: Rng::new(seed),
            recent: Vec::new(),
            last: None,
            xdp,
            sockets: Vec::new(),
        }
    }

    /// The same generator, drawing packets of the node's connected `sockets` too.
    #[must_use]
    pub fn with_sockets(mut self, sockets: &[Flow]) -> Self {
        self.sockets = sockets.to_vec();
        self
    }

    fn address(&mut self, p: &Policy, v6: bool) -> IpAddr {
        let edges = edges(p, v6);
        if !edges.is_empty() && self.rng.chance(75) {
            return self.rng.pick(&edges);
        }
        if v6 {
            IpAddr::V6(v6_addr(&mut self.rng))
        } else {
            IpAddr::V4(v4(&mut self.rng))
        }
    }

    fn node(&mut self, v6: bool) -> IpAddr {
        match (v6, self.rng.chance(85)) {
            (false, true) => IpAddr::V4(NODE_V4),
            (true, true) => IpAddr::V6(NODE_V6),
            // A pod routed through the node, or another of its addresses.
            (false, false) => IpAddr::V4(v4(&mut self.rng)),
            (true, false) => IpAddr::V6(v6_addr(&mut self.rng)),
        }
    }

    fn ingress_prog(&mut self) -> Prog {
        if self.xdp && self.rng.chance(40) {
            Prog::XdpIngress
        } else {
            Prog::TcIngress
        }
    }

    fn l4(&mut self, proto: u8, sport: u16, dport: u16) -> L4 {
        if proto == TCP {
            L4::Tcp {
                sport,
                dport,
                flags: self.rng.pick(&[SYN, ACK, SYN | ACK, 0x18]),
                payload: self.rng.pick(&[0usize, 0, 1, 100]),
            }
        } else {
            L4::Udp {
                sport,
                dport,
                payload: self.rng.pick(&[0usize, 4, 6, 100]),
            }
        }
    }

    fn ip(src: IpAddr, dst: IpAddr, l4: L4) -> L3 {
        if src.is_ipv6() {
            L3::V6 {
                src,
                dst,
                ext: Vec::new(),
                l4,
            }
        } else {
            let proto = l4.proto(false);
            L3::V4 {
                src,
                dst,
                ihl: 5,
                version: 4,
                frag: 0,
                proto,
                l4,
            }
        }
    }

    /// The next packet to judge under `p`.
    pub fn packet(&mut self, p: &Policy) -> Spec {
        if let Some(last) = &self.last
            && self.rng.chance(10)
        {
            return last.clone();
        }
        // The same flow's next segment with other flags: a cache keyed by the flow must not
        // answer it with a verdict that rested on the flags (a SYN's denial for the ACKs of
        // the node's connection).
        if let Some(mut spec) = self.last.clone()
            && self.rng.chance(5)
            && let Some(L4::Tcp { flags, .. }) = l4_mut(&mut spec.l3)
        {
            *flags = self.rng.pick(&ANY_FLAGS);
            self.last = Some(spec.clone());
            return spec;
        }
        let spec = self.new_packet(p);
        self.last = Some(spec.clone());
        spec
    }

    fn new_packet(&mut self, p: &Policy) -> Spec {
        let roll = self.rng.below(100);
        let mut spec = if roll < 10 && !self.sockets.is_empty() {
            self.on_socket()
        } else if roll < 30 && !self.recent.is_empty() {
            self.follow_up()
        } else if roll < 40 && !self.recent.is_empty() {
            self.icmp_error()
        } else {
            self.fresh(p)
        };
        if self.rng.chance(25) {
            self.oddity(&mut spec, p);
        }
        if self.rng.chance(10) {
            let (frame, _) = super::spec::build(&spec);
            // BPF_PROG_TEST_RUN refuses skb frames of an IP ethertype shorter than the IP
            // header (EINVAL), so TC runs cut after it; XDP runs take every cut.
            let floor = match (&spec.l3, spec.prog, spec.tags) {
                (L3::V4 { .. }, Prog::TcEgress | Prog::TcIngress, 0) => 34,
                (L3::V6 { .. }, Prog::TcEgress | Prog::TcIngress, 0) => 54,
                _ => 14,
            };
            let span = frame.len().saturating_sub(floor) as u64 + 1;
            spec.cut = Some(floor + self.rng.below(span) as usize);
        }
        spec
    }

    /// A packet an entry of `p` allows, nearly: its peer's edges, its ports' ends.
    fn aimed(&mut self, p: &Policy) -> (Prog, IpAddr, IpAddr, u8, u16, u16) {
        let e = self.rng.pick(&p.entries);
        let v6 = matches!(e.peer, IpNet::V6(_));
        let (first, last) = (e.peer.network(), e.peer.broadcast());
        let peer = if self.rng.chance(50) { first } else { last };
        let dport = self.rng.pick(&[
            e.ports.from,
            e.ports.to,
            e.ports.from,
            e.ports.to.saturating_add(1),
        ]);
        let sport = self.rng.pick(&[40000u16, 40001, 700, 1023, 2049]);
        let proto = e.proto.number();
        if e.direction == Direction::Egress {
            (Prog::TcEgress, self.node(v6), peer, proto, sport, dport)
        } else {
            let prog = self.ingress_prog();
            (prog, peer, self.node(v6), proto, sport, dport)
        }
    }

    fn fresh(&mut self, p: &Policy) -> Spec {
        let v6 = self.rng.chance(30);
        let proto = if self.rng.chance(65) { TCP } else { UDP };
        let ports = port_edges(p);
        let (sport, dport) = if self.rng.chance(50) {
            (
                self.rng.pick(&[40000u16, 40001, 700, 1023]),
                self.rng.pick(&ports),
            )
        } else {
            (self.rng.pick(&ports), self.rng.pick(&ports))
        };
        let aimed = (self.rng.chance(45) && !p.entries.is_empty()).then(|| self.aimed(p));
        let (prog, src, dst, proto, sport, dport) = aimed.unwrap_or_else(|| {
            if self.rng.chance(55) {
                (
                    Prog::TcEgress,
                    self.node(v6),
                    self.address(p, v6),
                    proto,
                    sport,
                    dport,
                )
            } else {
                (
                    self.ingress_prog(),
                    self.address(p, v6),
                    self.node(v6),
                    proto,
                    sport,
                    dport,
                )
            }
        });
        let l4 = self.l4(proto, sport, dport);
        self.send(
            Sent {
                prog,
                src,
                dst,
                proto,
                sport,
                dport,
            },
            l4,
        )
    }

    /// The packet `s` describes, with transport header `l4`, remembered for follow-ups.
    fn send(&mut self, s: Sent, l4: L4) -> Spec {
        let spec = Spec {
            prog: s.prog,
            tags: 0,
            l3: Self::ip(s.src, s.dst, l4),
            cut: None,
        };
        self.remember(s);
        spec
    }

    /// A packet of one of the node's connections: mostly from storage, with any flags.
    fn on_socket(&mut self) -> Spec {
        let f = self.rng.pick(&self.sockets);
        let (prog, src, dst, sport, dport) = if self.rng.chance(80) {
            (self.ingress_prog(), f.remote, f.local, f.rport, f.lport)
        } else {
            (Prog::TcEgress, f.local, f.remote, f.lport, f.rport)
        };
        let l4 = if f.proto == TCP {
            L4::Tcp {
                sport,
                dport,
                flags: self.rng.pick(&ANY_FLAGS),
                payload: self.rng.pick(&[0usize, 0, 1, 100]),
            }
        } else {
            self.l4(f.proto, sport, dport)
        };
        self.send(
            Sent {
                prog,
                src,
                dst,
                proto: f.proto,
                sport,
                dport,
            },
            l4,
        )
    }

    fn remember(&mut self, s: Sent) {
        if self.recent.len() >= 64 {
            let i = self.rng.below(64) as usize;
            self.recent[i] = s;
        } else {
            self.recent.push(s);
        }
    }

    /// A reply to a flow sent earlier (the other direction), or its next packet.
    fn follow_up(&mut self) -> Spec {
        let s = self.rng.pick(&self.recent);
        let reply = self.rng.chance(70);
        let (prog, src, dst, sport, dport) = match (reply, s.prog.egress()) {
            (true, true) => (self.ingress_prog(), s.dst, s.src, s.dport, s.sport),
            (true, false) => (Prog::TcEgress, s.dst, s.src, s.dport, s.sport),
            (false, _) => (s.prog, s.src, s.dst, s.sport, s.dport),
        };
        let l4 = self.l4(s.proto, sport, dport);
        Spec {
            prog,
            tags: 0,
            l3: Self::ip(src, dst, l4),
            cut: None,
        }
    }

    /// An ICMP error about a flow sent earlier: from its far end (towards the node) or from the
    /// node (about a packet it received).
    fn icmp_error(&mut self) -> Spec {
        let s = self.rng.pick(&self.recent);
        let v6 = s.src.is_ipv6();
        let ty = if v6 {
            self.rng.pick(&[1u8, 2, 3, 4, 137, 128])
        } else {
            self.rng.pick(&[3u8, 11, 12, 5, 0])
        };
        let quote = Quote {
            src: s.src,
            dst: s.dst,
            proto: s.proto,
            sport: s.sport,
            dport: s.dport,
            ihl: if self.rng.chance(5) { 4 } else { 5 },
        };
        // Whoever received the quoted packet reports it: its destination (or a router near it).
        let (prog, src, dst) = if s.prog.egress() {
            (self.ingress_prog(), s.dst, s.src)
        } else {
            (Prog::TcEgress, s.dst, s.src)
        };
        let l4 = L4::Icmp {
            ty,
            quote: Some(quote),
        };
        Spec {
            prog,
            tags: 0,
            l3: Self::ip(src, dst, l4),
            cut: None,
        }
    }

    /// Makes `spec` one of the shapes the fast path does not take.
    fn oddity(&mut self, spec: &mut Spec, p: &Policy) {
        match self.rng.below(9) {
            0 => spec.tags = 1 + self.rng.below(3) as u8,
            1 => {
                if let L3::V4 { ihl, .. } = &mut spec.l3 {
                    *ihl = self.rng.pick(&[6u8, 15, 4, 0]);
                }
            }
            2 => {
                if let L3::V4 { frag, .. } = &mut spec.l3 {
                    *frag = self.rng.pick(&[0x2000u16, 0x2000 | 0xb9, 0xb9, 0x4000, 1]);
                }
            }
            3 => {
                if let L3::V6 { ext, .. } = &mut spec.l3 {
                    let n = self.rng.pick(&[1usize, 2, 7, 8, 9]);
                    for _ in 0..n {
                        let e = match self.rng.below(5) {
                            0 => Ext::Fragment {
                                offset: self.rng.pick(&[0u16, 0, 185]),
                                more: true,
                            },
                            1 => Ext::Auth {
                                units: self.rng.pick(&[1u8, 4]),
                            },
                            _ => Ext::Options {
                                kind: self.rng.pick(&[0u8, 43, 60]),
                                units: self.rng.pick(&[0u8, 1, 3]),
                            },
                        };
                        ext.push(e);
                    }
                }
            }
            4 => {
                let (src, dst) = ends(&spec.l3);
                let proto = self.rng.pick(&[132u8, 47, 50, 2]);
                spec.l3 = Self::ip(src, dst, L4::Other { proto, len: 16 });
            }
            5 => {
                let (src, dst) = ends(&spec.l3);
                let ty = self.rng.pick(&[8u8, 0, 5, 128, 129, 135, 3]);
                spec.l3 = Self::ip(src, dst, L4::Icmp { ty, quote: None });
            }
            6 => {
                spec.l3 = L3::NotIp {
                    ethertype: self.rng.pick(&[0x0806u16, 0x88cc, 0x8847]),
                    len: 28,
                }
            }
            7 => {
                // ICMPv6's number over IPv4: another protocol there.
                if let L3::V4 { proto, l4, .. } = &mut spec.l3 {
                    *proto = ICMPV6;
                    *l4 = L4::Other {
                        proto: ICMPV6,
                        len: 8,
                    };
                }
            }
            _ => {
                // A peer the policy names in the other direction only, or a protected one.
                let (src, dst) = ends(&spec.l3);
                let v6 = src.is_ipv6();
                let other = self.address(p, v6);
                let dport = self.rng.pick(&port_edges(p));
                let l4 = self.l4(TCP, 40000, dport);
                spec.l3 = if spec.prog.egress() {
                    Self::ip(src, other, l4)
                } else {
                    Self::ip(other, dst, l4)
                };
            }
        }
        let _ = ICMP;
    }
}

fn v6_addr(rng: &mut Rng) -> Ipv6Addr {
    v6(rng)
}

fn ends(l3: &L3) -> (IpAddr, IpAddr) {
    match l3 {
        L3::V4 { src, dst, .. } | L3::V6 { src, dst, .. } => (*src, *dst),
        L3::NotIp { .. } => (IpAddr::V4(NODE_V4), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))),
    }
}

/// TCP flags a segment of any flow may carry, with and without ACK (0x18: PSH and ACK).
const ANY_FLAGS: [u8; 7] = [SYN, ACK, SYN | ACK, RST, RST | ACK, 0x18, 0];

/// The transport header of `l3`, to change in place.
fn l4_mut(l3: &mut L3) -> Option<&mut L4> {
    match l3 {
        L3::V4 { l4, .. } | L3::V6 { l4, .. } => Some(l4),
        L3::NotIp { .. } => None,
    }
}
