//! Packets from storage on a connection of the node's that the connection table does not know:
//! evicted by the table's LRU, forgotten while a policy did not allow it, or opened before the
//! peer was storage. The datapath asks the node's socket tables before it calls such a packet
//! unsolicited (`trident-ports-ebpf/src/sockets.rs`), and keeps busy flows in the table
//! although the per-CPU cache answers their packets (`verdict::keep_in_table`). In the kernel, with real sockets in a
//! node namespace and frames run through the programs with BPF_PROG_TEST_RUN, whose packets
//! belong to the namespace of the thread that runs them.
use std::net::{TcpListener, UdpSocket};

use trident_ports_agent::policy::{Direction, Mode, Policy, Proto};
use trident_ports_common::{DIR_INGRESS, counter, limits, programs};
use trident_ports_tests::{
    netns::{Addrs, Pair},
    packet::*,
    require_root,
    sockets::Sockets,
};

/// Storage 192.0.2.2 and 2001:db8::2: NFS over TCP, rpcbind over UDP. Not 3260.
fn policy(nfs: bool) -> Policy {
    let mut entries = vec![
        entry(Direction::Egress, "192.0.2.2/32", 111, 111, Proto::Udp),
        entry(Direction::Egress, "192.0.2.2/32", 443, 443, Proto::Tcp),
        entry(Direction::Egress, "2001:db8::2/128", 2049, 2049, Proto::Tcp),
    ];
    if nfs {
        entries.push(entry(
            Direction::Egress,
            "192.0.2.2/32",
            2049,
            2049,
            Proto::Tcp,
        ));
    }
    Policy {
        role: "worker".into(),
        mode: Mode::Enforce,
        entries,
        ..Policy::default()
    }
}

fn pair() -> Pair {
    Pair::new(Addrs {
        node: &["192.0.2.1/24", "2001:db8::1/64"],
        storage: &["192.0.2.2/24", "2001:db8::2/64"],
    })
}

/// The node's connections to storage, by the node's port: NFS over IPv4 and IPv6, iSCSI (which
/// the policy does not allow), and a UDP socket connected to rpcbind.
struct Connections {
    nfs: u16,
    nfs6: u16,
    iscsi: u16,
    rpcbind: u16,
    _sockets: Sockets,
}

impl Connections {
    fn open(pair: &Pair) -> Self {
        let s = Sockets::open(
            pair,
            &["192.0.2.2:2049", "[2001:db8::2]:2049", "192.0.2.2:3260"],
            &["192.0.2.2:111"],
        );
        Connections {
            nfs: s.tcp_port(0),
            nfs6: s.tcp_port(1),
            iscsi: s.tcp_port(2),
            rpcbind: s.udp_port(0),
            _sockets: s,
        }
    }
}

/// A port of the node's with no socket: below the ephemeral range, where every socket of the
/// tests' fresh namespaces lies.
const NO_SOCKET: u16 = 9;

fn from_storage_v4(sport: u16, dport: u16, proto: u8) -> Vec<u8> {
    let l4 = if proto == TCP {
        tcp(sport, dport, ACK)
    } else {
        udp(sport, dport)
    };
    v4(ipv4("192.0.2.2", "192.0.2.1", proto, 0, &l4))
}

/// Which inbound packets the node's sockets let in, and which they do not: a connection's,
/// yes, and from then on by the connection table; a SYN, a port with no socket, a listener
/// (what a handshake in progress is found as), an unconnected UDP socket, or a connection the
/// rules do not allow, no.
#[test]
fn the_nodes_own_connections_are_let_in_and_nothing_else() {
    if !require_root("the_nodes_own_connections_are_let_in_and_nothing_else") {
        return;
    }
    let pair = pair();
    let c = Connections::open(&pair);
    let (nfs, nfs6, iscsi, rpcbind) = (c.nfs, c.nfs6, c.iscsi, c.rpcbind);
    pair.node.within(|| {
        // Ports the kernel picks: a fixed one could be a connection's above.
        let listener = TcpListener::bind("192.0.2.1:0").unwrap();
        let unconnected = UdpSocket::bind("192.0.2.1:0").unwrap();
        let (listening, unconnected_port) = (
            listener.local_addr().unwrap().port(),
            unconnected.local_addr().unwrap().port(),
        );
        // Each program on its own datapath: the first packet of a flow is the one that asks.
        for (prog, drop, pass) in ingress_programs() {
            let mut node = Programs::load(&policy(true));
            // The recent-flow cache would answer the repeats: the table's answer is wanted.
            node.dp.set_recent_flows(false).unwrap();
            let mut check = |what: &str, frame: &[u8], verdict, ctr| {
                node.check(&format!("{prog}: {what}"), prog, frame, verdict, ctr);
            };
            // Storage may not open a connection on the node's: a SYN is never a reply.
            let syn = v4(ipv4("192.0.2.2", "192.0.2.1", TCP, 0, &tcp(2049, nfs, SYN)));
            check(
                "a SYN on the node's connection",
                &syn,
                drop,
                counter::DENIED,
            );
            let reply = from_storage_v4(2049, nfs, TCP);
            check(
                "the node's NFS connection",
                &reply,
                pass,
                counter::NODE_SOCKET,
            );
            check(
                "... then in the table",
                &reply,
                pass,
                counter::CONNTRACK_HIT,
            );
            let reply6 = v6(ipv6(
                "2001:db8::2",
                "2001:db8::1",
                TCP,
                &tcp(2049, nfs6, ACK),
            ));
            check("the same over IPv6", &reply6, pass, counter::NODE_SOCKET);
            let udp_reply = from_storage_v4(111, rpcbind, UDP);
            check(
                "a connected UDP socket",
                &udp_reply,
                pass,
                counter::NODE_SOCKET,
            );
            let denied = [
                (
                    "no socket on that port",
                    from_storage_v4(2049, NO_SOCKET, TCP),
                ),
                ("a listener", from_storage_v4(2049, listening, TCP)),
                (
                    "an unconnected UDP socket",
                    from_storage_v4(111, unconnected_port, UDP),
                ),
                (
                    "a connection the rules do not allow",
                    from_storage_v4(3260, iscsi, TCP),
                ),
            ];
            for (what, frame) in denied {
                check(what, &frame, drop, counter::DENIED);
                check(&format!("{what}, again"), &frame, drop, counter::DENIED);
            }
        }
        drop((listener, unconnected));
    });
}

/// With events gated per flow, a denied packet's flow is remembered for the gate's interval and
/// its next packets get the same verdict without a lookup (`denied.rs`). A segment without ACK
/// on a connection of the node's that the table does not know is denied for its flags alone:
/// the connection's own segments from storage, on the same four-tuple, must still be let in.
#[test]
fn a_denied_segment_without_ack_does_not_deny_its_connection() {
    if !require_root("a_denied_segment_without_ack_does_not_deny_its_connection") {
        return;
    }
    let pair = pair();
    let c = Connections::open(&pair);
    let nfs = c.nfs;
    pair.node.within(|| {
        let reply = from_storage_v4(2049, nfs, TCP);
        for (what, flags) in [("a SYN", SYN), ("a RST without ACK", RST)] {
            let segment = v4(ipv4(
                "192.0.2.2",
                "192.0.2.1",
                TCP,
                0,
                &tcp(2049, nfs, flags),
            ));
            for (prog, drop, pass) in ingress_programs() {
                // A fresh table each time: it must not know the connection yet.
                let mut node = Programs::gated(&policy(true), 60_000_000_000);
                let what = format!("{prog}: {what}");
                node.check(&what, prog, &segment, drop, counter::DENIED);
                node.check(
                    &format!("{what}, again"),
                    prog,
                    &segment,
                    drop,
                    counter::DENIED,
                );
                node.check(
                    &format!("{what}, then the connection's own segment"),
                    prog,
                    &reply,
                    pass,
                    counter::NODE_SOCKET,
                );
            }
        }
    });
}

/// An ICMP error from storage about a connection of the node's that the table does not know
/// goes where the connection's own packets would (the socket tables are asked for the flow the
/// error quotes); one about a port the node has no connection on, or about a connection the
/// rules do not allow, is still unrelated.
#[test]
fn icmp_errors_about_the_nodes_own_connections_are_let_in() {
    if !require_root("icmp_errors_about_the_nodes_own_connections_are_let_in") {
        return;
    }
    let pair = pair();
    let c = Connections::open(&pair);
    let (nfs, nfs6, iscsi, rpcbind) = (c.nfs, c.nfs6, c.iscsi, c.rpcbind);
    // An error from storage quoting the node's packet to it.
    let error4 = |ty, code, proto, sport, dport| {
        let l4 = if proto == TCP {
            tcp(sport, dport, ACK)
        } else {
            udp(sport, dport)
        };
        let quoted = ipv4("192.0.2.1", "192.0.2.2", proto, 0, &l4);
        v4(ipv4(
            "192.0.2.2",
            "192.0.2.1",
            ICMP,
            0,
            &icmp(ty, code, &quoted),
        ))
    };
    pair.node.within(|| {
        for (prog, drop, pass) in ingress_programs() {
            let mut node = Programs::load(&policy(true));
            node.dp.set_recent_flows(false).unwrap();
            let mut check = |what: &str, frame: &[u8], verdict, ctr| {
                node.check(&format!("{prog}: {what}"), prog, frame, verdict, ctr);
            };
            let unreachable = error4(3, 3, UDP, rpcbind, 111);
            check(
                "port unreachable for the node's rpcbind query",
                &unreachable,
                pass,
                counter::NODE_SOCKET,
            );
            check(
                "... then for a flow the table knows",
                &unreachable,
                pass,
                counter::ALLOWED,
            );
            check(
                "fragmentation needed on the node's NFS connection",
                &error4(3, 4, TCP, nfs, 2049),
                pass,
                counter::NODE_SOCKET,
            );
            let quoted6 = ipv6("2001:db8::1", "2001:db8::2", TCP, &tcp(nfs6, 2049, ACK));
            check(
                "packet too big on the node's NFS connection over IPv6",
                &v6(ipv6(
                    "2001:db8::2",
                    "2001:db8::1",
                    ICMPV6,
                    &icmp(2, 0, &quoted6),
                )),
                pass,
                counter::NODE_SOCKET,
            );
            for (what, frame) in [
                ("no socket on that port", error4(3, 4, TCP, NO_SOCKET, 2049)),
                (
                    "a connection the rules do not allow",
                    error4(3, 4, TCP, iscsi, 3260),
                ),
            ] {
                check(what, &frame, drop, counter::DENIED);
            }
        }
    });
}

/// A policy that briefly does not allow NFS forgets the node's NFS connection (its next packet
/// is judged again, and denied); when NFS is allowed again, storage's next packet is let in
/// although the node has not sent since.
#[test]
fn a_connection_forgotten_by_a_policy_comes_back_with_it() {
    if !require_root("a_connection_forgotten_by_a_policy_comes_back_with_it") {
        return;
    }
    let pair = pair();
    let s = Sockets::open(&pair, &["192.0.2.2:2049"], &[]);
    let nfs = s.tcp_port(0);
    pair.node.within(|| {
        for (prog, drop, pass) in ingress_programs() {
            let mut node = Programs::load(&policy(true));
            let request = v4(ipv4("192.0.2.1", "192.0.2.2", TCP, 0, &tcp(nfs, 2049, ACK)));
            let e = programs::TC_EGRESS;
            node.check("the node sends", e, &request, TC_PASS, counter::ALLOWED);
            let reply = from_storage_v4(2049, nfs, TCP);
            node.check(
                "storage replies",
                prog,
                &reply,
                pass,
                counter::CONNTRACK_HIT,
            );
            node.dp.apply(&policy(false), 0).unwrap();
            node.check("NFS not allowed", prog, &reply, drop, counter::DENIED);
            node.dp.apply(&policy(true), 0).unwrap();
            node.check(
                "NFS allowed again",
                prog,
                &reply,
                pass,
                counter::NODE_SOCKET,
            );
        }
    });
}

/// The connection table is an LRU, and a flow whose packets the per-CPU caches answer never
/// touches it: when the table fills, the node's oldest connections go first, busy or not. Their
/// next packet from storage on a CPU that did not cache them asks the node's sockets.
#[test]
fn connections_evicted_from_a_full_table_stay_open() {
    if !require_root("connections_evicted_from_a_full_table_stay_open") {
        return;
    }
    let pair = pair();
    let s = Sockets::open(&pair, &["192.0.2.2:2049"], &[]);
    let nfs = s.tcp_port(0);
    pair.node.within(|| {
        let mut node = Programs::load(&policy(true));
        let e = programs::TC_EGRESS;
        let out =
            |sport: u16, dst: &str| v4(ipv4("192.0.2.1", dst, TCP, 0, &tcp(sport, 2049, SYN)));
        node.check(
            "the node's connection",
            e,
            &out(nfs, "192.0.2.2"),
            TC_PASS,
            counter::ALLOWED,
        );
        // A flow of no socket, learned just after it: the witness that eviction happened.
        let ghost = NO_SOCKET;
        node.check(
            "a flow of no socket",
            e,
            &out(ghost, "192.0.2.2"),
            TC_PASS,
            counter::ALLOWED,
        );
        // More new flows than the table holds (over two destinations: ports run out).
        let mut filled = 0;
        'fill: for dst in ["192.0.2.2", "2001:db8::2"] {
            for sport in 1..=u16::MAX {
                if filled > limits::FLOWS + limits::FLOWS / 8 {
                    break 'fill;
                }
                let frame = if dst.contains(':') {
                    v6(ipv6("2001:db8::1", dst, TCP, &tcp(sport, 2049, SYN)))
                } else if sport == nfs || sport == ghost {
                    continue;
                } else {
                    out(sport, dst)
                };
                assert_eq!(run(&mut node.dp, e, &frame), TC_PASS);
                filled += 1;
            }
        }
        // The table's answers are wanted, not this CPU's cache's.
        node.dp.set_recent_flows(false).unwrap();
        for (prog, drop, pass) in ingress_programs() {
            let ghost_reply = from_storage_v4(2049, ghost, TCP);
            node.check(
                "the evicted ghost",
                prog,
                &ghost_reply,
                drop,
                counter::DENIED,
            );
            let reply = from_storage_v4(2049, nfs, TCP);
            let what = "the evicted connection";
            let ctr = if prog == programs::TC_INGRESS {
                counter::NODE_SOCKET
            } else {
                // Back in the table since the TC program's packet.
                counter::CONNTRACK_HIT
            };
            node.check(what, prog, &reply, pass, ctr);
        }
    });
    drop(s);
}

/// A flow whose packets the per-CPU recent-flow cache answers is touched in the connection table
/// every `TOUCH_EVERY` answers, so that a full table evicts idle flows before it. This one has
/// no socket of the node's (a pod's, routed through the node): nothing else would bring it back.
#[test]
fn busy_flows_stay_in_a_full_table() {
    if !require_root("busy_flows_stay_in_a_full_table") {
        return;
    }
    let pair = pair();
    pair.node.within(|| {
        let mut node = Programs::load(&policy(true));
        let e = programs::TC_EGRESS;
        let i = programs::TC_INGRESS;
        let out = |sport: u16| {
            v4(ipv4(
                "192.0.2.1",
                "192.0.2.2",
                TCP,
                0,
                &tcp(sport, 2049, ACK),
            ))
        };
        let (busy, ghost) = (50_000, 50_001);
        node.check("the busy flow", e, &out(busy), TC_PASS, counter::ALLOWED);
        let reply = from_storage_v4(2049, busy, TCP);
        node.check("its reply", i, &reply, TC_PASS, counter::CONNTRACK_HIT);
        node.check(
            "a flow that goes idle",
            e,
            &out(ghost),
            TC_PASS,
            counter::ALLOWED,
        );
        let mut sport = 0u16;
        let mut filled = 0;
        while filled < limits::FLOWS + limits::FLOWS / 4 {
            // New flows, each with a reply that the table answers, as a real flow's first
            // reply is: the LRU sees them used once. Past the cache, which would otherwise push
            // the busy flow out of its set and back to the table on its own.
            node.dp.set_recent_flows(false).unwrap();
            for _ in 0..2_048 {
                sport += 1;
                if sport == busy || sport == ghost {
                    sport += 2;
                }
                let v4_flow = (out(sport), from_storage_v4(2049, sport, TCP));
                let (a, b) = ("2001:db8::1", "2001:db8::2");
                let v6_flow = (
                    v6(ipv6(a, b, TCP, &tcp(sport, 2049, SYN))),
                    v6(ipv6(b, a, TCP, &tcp(2049, sport, ACK))),
                );
                for (request, reply) in [v4_flow, v6_flow] {
                    assert_eq!(run(&mut node.dp, e, &request), TC_PASS);
                    assert_eq!(run(&mut node.dp, i, &reply), TC_PASS);
                    filled += 1;
                }
            }
            // The busy flow's replies, every one answered by the cache.
            node.dp.set_recent_flows(true).unwrap();
            let before = node.dp.counter(DIR_INGRESS, counter::RECENT_HIT).unwrap();
            for _ in 0..256 {
                assert_eq!(run(&mut node.dp, i, &reply), TC_PASS);
            }
            let hits = node.dp.counter(DIR_INGRESS, counter::RECENT_HIT).unwrap() - before;
            assert_eq!(hits, 256, "the cache answered the busy flow");
        }
        node.dp.set_recent_flows(false).unwrap();
        let ghost_reply = from_storage_v4(2049, ghost, TCP);
        node.check(
            "the idle flow, evicted",
            i,
            &ghost_reply,
            TC_DROP,
            counter::DENIED,
        );
        node.check(
            "the busy flow, kept",
            i,
            &reply,
            TC_PASS,
            counter::CONNTRACK_HIT,
        );
    });
}
