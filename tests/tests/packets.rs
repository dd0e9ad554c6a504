//! Packet-level tests in the kernel through BPF_PROG_TEST_RUN: crafted frames, each with its
//! expected verdict, counter and event, for the TC egress, TC ingress and XDP programs.
use trident_ports_agent::{
    datapath::Datapath,
    events::decode,
    policy::{Direction, Guard, Mode, Policy, Proto},
};
use trident_ports_common::{DIR_EGRESS, DIR_INGRESS, counter, programs, reason};
use trident_ports_tests::{XDP_KERNEL, kernel_has, packet::*, require_root};

/// Storage 192.0.2.2 and 2001:db8::2 (NFS, HTTPS, NFSv3 callbacks), an iSCSI subnet
/// 198.51.100.0/24, a port range on 192.0.2.5, the cluster 203.0.113.0/24 for node port 8000,
/// and the probe port 17546 guarded with no source.
fn policy() -> Policy {
    use Direction::*;
    Policy {
        role: "worker".into(),
        mode: Mode::Enforce,
        entries: vec![
            entry(Egress, "192.0.2.2/32", 2049, 2049, Proto::Tcp),
            entry(Egress, "192.0.2.2/32", 443, 443, Proto::Tcp),
            entry(Egress, "2001:db8::2/128", 2049, 2049, Proto::Tcp),
            entry(Egress, "198.51.100.0/24", 3260, 3260, Proto::Tcp),
            entry(Egress, "192.0.2.5/32", 5000, 5100, Proto::Tcp),
            entry(Ingress, "192.0.2.2/32", 1024, 65535, Proto::Udp),
            entry(Ingress, "203.0.113.0/24", 8000, 8000, Proto::Tcp),
        ],
        guarded: vec![
            Guard {
                port: 8000,
                proto: Proto::Tcp,
                purpose: "rest".into(),
            },
            Guard {
                port: 17546,
                proto: Proto::Tcp,
                purpose: "probe".into(),
            },
        ],
        protected: vec![],
        warnings: vec![],
        backends: vec![],
        // The node's own addresses: Trident listens there (host network).
        guard_addresses: vec![
            "192.0.2.1/32".parse().unwrap(),
            "2001:db8::1/128".parse().unwrap(),
        ],
        skipped: vec![],
        live: None,
    }
}

struct Lab {
    programs: Programs,
    events: aya::maps::RingBuf<aya::maps::MapData>,
}

impl Lab {
    /// Every denial reports an event (no per-flow gate, so no recent-denial cache).
    fn new(mode: Mode) -> Self {
        Lab::gated(mode, 0)
    }

    /// At most one event per flow and `interval_ns`.
    fn gated(mode: Mode, interval_ns: u64) -> Self {
        let mut p = policy();
        p.mode = mode;
        let mut programs = Programs::gated(&p, interval_ns);
        let events = programs.dp.take_events().unwrap();
        Lab { programs, events }
    }

    fn run(&mut self, prog: &str, frame: &[u8]) -> u32 {
        run(&mut self.programs.dp, prog, frame)
    }

    fn reasons(&mut self) -> Vec<u8> {
        self.events().iter().map(|e| e.reason).collect()
    }

    fn events(&mut self) -> Vec<trident_ports_common::Event> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(decode(&item).expect("event"));
        }
        out
    }

    /// Runs a frame and checks verdict, the one counter that must move, and the event.
    fn check(
        &mut self,
        what: &str,
        prog: &str,
        frame: &[u8],
        verdict: u32,
        ctr: u32,
        ev: Option<u8>,
    ) {
        self.programs.check(what, prog, frame, verdict, ctr);
        assert_eq!(
            self.reasons(),
            ev.into_iter().collect::<Vec<_>>(),
            "{what}: events"
        );
    }
}

fn egress_syn(dst: &str, dport: u16) -> Vec<u8> {
    v4(ipv4("192.0.2.1", dst, TCP, 0, &tcp(40000, dport, SYN)))
}

#[test]
fn egress_verdicts_ipv4_cidr_ranges_and_unprotected() {
    if !require_root("egress_verdicts_ipv4_cidr_ranges_and_unprotected") {
        return;
    }
    let mut lab = Lab::new(Mode::Enforce);
    let e = programs::TC_EGRESS;
    lab.check(
        "allowed port",
        e,
        &egress_syn("192.0.2.2", 2049),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check(
        "denied port",
        e,
        &egress_syn("192.0.2.2", 3260),
        TC_DROP,
        counter::DENIED,
        Some(reason::NO_RULE),
    );
    lab.check(
        "udp to a tcp-only port",
        e,
        &v4(ipv4("192.0.2.1", "192.0.2.2", UDP, 0, &udp(700, 2049))),
        TC_DROP,
        counter::DENIED,
        Some(reason::NO_RULE),
    );
    lab.check(
        "subnet member",
        e,
        &egress_syn("198.51.100.77", 3260),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check(
        "subnet, other port",
        e,
        &egress_syn("198.51.100.77", 2049),
        TC_DROP,
        counter::DENIED,
        Some(reason::NO_RULE),
    );
    lab.check(
        "range start",
        e,
        &egress_syn("192.0.2.5", 5000),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check(
        "range end",
        e,
        &egress_syn("192.0.2.5", 5100),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check(
        "past the range",
        e,
        &egress_syn("192.0.2.5", 5101),
        TC_DROP,
        counter::DENIED,
        Some(reason::NO_RULE),
    );
    lab.check(
        "unprotected address",
        e,
        &egress_syn("192.0.2.3", 3260),
        TC_PASS,
        counter::PASSED,
        None,
    );
    lab.check(
        "ARP",
        e,
        &ether(&[], 0x0806, &[0u8; 28]),
        TC_PASS,
        counter::PASSED,
        None,
    );
    lab.check(
        "other protocol to storage",
        e,
        &v4(ipv4("192.0.2.1", "192.0.2.2", 132, 0, &[0u8; 12])),
        TC_DROP,
        counter::DENIED,
        Some(reason::PROTOCOL),
    );
    lab.check(
        "ping to storage",
        e,
        &v4(ipv4("192.0.2.1", "192.0.2.2", ICMP, 0, &icmp(8, 0, &[]))),
        TC_PASS,
        counter::PASSED,
        None,
    );
}

#[test]
fn truncated_at_every_layer() {
    if !require_root("truncated_at_every_layer") {
        return;
    }
    let mut lab = Lab::new(Mode::Enforce);
    let e = programs::TC_EGRESS;
    let full = egress_syn("192.0.2.2", 3260);
    // Frames cut inside the IP header go through XDP: the skb test run refuses them, and XDP
    // runs the same parser. Up to 14+19 bytes the addresses are incomplete: no peer, and the IP
    // layer drops such frames itself.
    let x = programs::XDP_INGRESS;
    let xdp = kernel_has(
        "truncated_at_every_layer (XDP part)",
        XDP_KERNEL,
        "bpf_xdp_load_bytes",
    );
    let inbound = v4(ipv4("192.0.2.2", "192.0.2.1", TCP, 0, &tcp(2049, 22, SYN)));
    for len in [14, 15, 20, 33] {
        if xdp {
            lab.check(
                &format!("cut at {len}"),
                x,
                &inbound[..len],
                XDP_PASS,
                counter::PASSED,
                None,
            );
        }
    }
    if xdp {
        lab.check(
            "inbound cut at 36",
            x,
            &inbound[..36],
            XDP_DROP,
            counter::DENIED,
            Some(reason::MALFORMED),
        );
    }
    // Addresses known, transport cut short: a protected peer gets a defined drop.
    for len in [34, 36, 47] {
        lab.check(
            &format!("cut at {len}"),
            e,
            &full[..len],
            TC_DROP,
            counter::DENIED,
            Some(reason::MALFORMED),
        );
    }
    // The same cuts towards an unprotected address pass.
    let other = egress_syn("192.0.2.3", 3260);
    lab.check(
        "cut, unprotected",
        e,
        &other[..36],
        TC_PASS,
        counter::PASSED,
        None,
    );
    // IPv4 header length below 20.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    lab.check(
        "ihl 4",
        e,
        &bad_ihl,
        TC_DROP,
        counter::DENIED,
        Some(reason::MALFORMED),
    );
    // A VLAN tag with nothing behind it.
    lab.check(
        "bare vlan tag",
        e,
        &ether(&[0x8100], 0x0800, &[])[..16],
        TC_PASS,
        counter::PASSED,
        None,
    );
    // IPv6 cut inside the fixed header, and inside an extension header.
    let v6full = v6(ipv6(
        "2001:db8::1",
        "2001:db8::2",
        0,
        &[ext(TCP, 0), tcp(700, 3260, SYN)].concat(),
    ));
    let v6in = v6(ipv6("2001:db8::2", "2001:db8::1", TCP, &tcp(2049, 22, SYN)));
    if xdp {
        lab.check(
            "ipv6 cut at 50",
            x,
            &v6in[..50],
            XDP_PASS,
            counter::PASSED,
            None,
        );
        lab.check(
            "ipv6 cut at 56",
            x,
            &v6in[..56],
            XDP_DROP,
            counter::DENIED,
            Some(reason::MALFORMED),
        );
    }
    lab.check(
        "ipv6 cut in ext header",
        e,
        &v6full[..55],
        TC_DROP,
        counter::DENIED,
        Some(reason::MALFORMED),
    );
}

#[test]
fn ipv6_extension_headers_and_fragments() {
    if !require_root("ipv6_extension_headers_and_fragments") {
        return;
    }
    let mut lab = Lab::new(Mode::Enforce);
    let e = programs::TC_EGRESS;
    let chain = |dport: u16| [ext(43, 1), ext(60, 0), ext(TCP, 2), tcp(700, dport, SYN)].concat();
    lab.check(
        "hbh+routing+dstopts, allowed",
        e,
        &v6(ipv6("2001:db8::1", "2001:db8::2", 0, &chain(2049))),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check(
        "hbh+routing+dstopts, denied",
        e,
        &v6(ipv6("2001:db8::1", "2001:db8::2", 0, &chain(4045))),
        TC_DROP,
        counter::DENIED,
        Some(reason::NO_RULE),
    );
    // Nine extension headers: more than the walk takes; a defined drop towards storage.
    let mut long = tcp(700, 2049, SYN);
    let mut next = TCP;
    for _ in 0..9 {
        long = [ext(next, 0), long].concat();
        next = 60;
    }
    lab.check(
        "nine ext headers",
        e,
        &v6(ipv6("2001:db8::1", "2001:db8::2", 60, &long)),
        TC_DROP,
        counter::DENIED,
        Some(reason::MALFORMED),
    );
    // Fragments: the first carries the ports and is judged; later ones carry none and pass.
    lab.check(
        "v6 first fragment, denied port",
        e,
        &v6(ipv6(
            "2001:db8::1",
            "2001:db8::2",
            44,
            &[frag6(UDP, 0, true), udp(700, 4045)].concat(),
        )),
        TC_DROP,
        counter::DENIED,
        Some(reason::NO_RULE),
    );
    lab.check(
        "v6 later fragment",
        e,
        &v6(ipv6(
            "2001:db8::1",
            "2001:db8::2",
            44,
            &[frag6(UDP, 185, false), vec![0u8; 16]].concat(),
        )),
        TC_PASS,
        counter::FRAGMENT,
        None,
    );
    lab.check(
        "v4 first fragment, denied port",
        e,
        &v4(ipv4("192.0.2.1", "192.0.2.2", UDP, 0x2000, &udp(700, 4045))),
        TC_DROP,
        counter::DENIED,
        Some(reason::NO_RULE),
    );
    lab.check(
        "v4 first fragment, allowed",
        e,
        &v4(ipv4(
            "192.0.2.1",
            "192.0.2.2",
            TCP,
            0x2000,
            &tcp(700, 2049, ACK),
        )),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check(
        "v4 later fragment",
        e,
        &v4(ipv4(
            "192.0.2.1",
            "192.0.2.2",
            UDP,
            0x2000 | 0xb9, // more fragments, offset 185 (8-byte units)
            &[0u8; 16],
        )),
        TC_PASS,
        counter::FRAGMENT,
        None,
    );
    lab.check(
        "v4 last fragment",
        e,
        &v4(ipv4("192.0.2.1", "192.0.2.2", UDP, 185, &[0u8; 16])),
        TC_PASS,
        counter::FRAGMENT,
        None,
    );
    lab.check(
        "v4 later fragment, unprotected",
        e,
        &v4(ipv4("192.0.2.1", "192.0.2.3", UDP, 185, &[0u8; 16])),
        TC_PASS,
        counter::PASSED,
        None,
    );
}

#[test]
fn vlan_tagged_frames_are_judged() {
    if !require_root("vlan_tagged_frames_are_judged") {
        return;
    }
    let mut lab = Lab::new(Mode::Enforce);
    let e = programs::TC_EGRESS;
    for tags in [vec![0x8100], vec![0x88a8, 0x8100]] {
        // A new flow each time, judged by the rules rather than found in the connection table.
        let sport = 40000 + tags.len() as u16;
        let ok = ether(
            &tags,
            0x0800,
            &ipv4("192.0.2.1", "192.0.2.2", TCP, 0, &tcp(sport, 2049, SYN)),
        );
        let bad = ether(
            &tags,
            0x0800,
            &ipv4("192.0.2.1", "192.0.2.2", TCP, 0, &tcp(40000, 111, SYN)),
        );
        let bad6 = ether(
            &tags,
            0x86dd,
            &ipv6("2001:db8::1", "2001:db8::2", TCP, &tcp(700, 111, SYN)),
        );
        lab.check(
            &format!("{tags:x?} allowed"),
            e,
            &ok,
            TC_PASS,
            counter::ALLOWED,
            None,
        );
        lab.check(
            &format!("{tags:x?} denied"),
            e,
            &bad,
            TC_DROP,
            counter::DENIED,
            Some(reason::NO_RULE),
        );
        lab.check(
            &format!("{tags:x?} denied v6"),
            e,
            &bad6,
            TC_DROP,
            counter::DENIED,
            Some(reason::NO_RULE),
        );
    }
}

#[test]
fn ingress_replies_callbacks_guards_and_icmp_errors() {
    if !require_root("ingress_replies_callbacks_guards_and_icmp_errors") {
        return;
    }
    let mut lab = Lab::new(Mode::Enforce);
    let (e, i) = (programs::TC_EGRESS, programs::TC_INGRESS);
    let syn_ack = v4(ipv4(
        "192.0.2.2",
        "192.0.2.1",
        TCP,
        0,
        &tcp(2049, 40000, SYN | ACK),
    ));
    lab.check(
        "reply before any request",
        i,
        &syn_ack,
        TC_DROP,
        counter::DENIED,
        Some(reason::UNSOLICITED),
    );
    lab.check(
        "request",
        e,
        &egress_syn("192.0.2.2", 2049),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check("reply", i, &syn_ack, TC_PASS, counter::CONNTRACK_HIT, None);
    lab.check(
        "egress again: recent flow",
        e,
        &egress_syn("192.0.2.2", 2049),
        TC_PASS,
        counter::RECENT_HIT,
        None,
    );
    lab.check(
        "unsolicited from storage",
        i,
        &v4(ipv4("192.0.2.2", "192.0.2.1", TCP, 0, &tcp(2049, 22, SYN))),
        TC_DROP,
        counter::DENIED,
        Some(reason::UNSOLICITED),
    );
    lab.check(
        "from storage to a subnet member port",
        i,
        &v4(ipv4(
            "198.51.100.9",
            "192.0.2.1",
            TCP,
            0,
            &tcp(3260, 50000, SYN),
        )),
        TC_DROP,
        counter::DENIED,
        Some(reason::UNSOLICITED),
    );
    lab.check(
        "NFSv3 callback",
        i,
        &v4(ipv4("192.0.2.2", "192.0.2.1", UDP, 0, &udp(4045, 33000))),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    // The callback's reply goes out through the table.
    lab.check(
        "callback reply",
        e,
        &v4(ipv4("192.0.2.1", "192.0.2.2", UDP, 0, &udp(33000, 4045))),
        TC_PASS,
        counter::CONNTRACK_HIT,
        None,
    );
    lab.check(
        "cluster to 8000",
        i,
        &v4(ipv4(
            "203.0.113.7",
            "192.0.2.1",
            TCP,
            0,
            &tcp(50000, 8000, SYN),
        )),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check(
        "outsider to 8000",
        i,
        &v4(ipv4(
            "192.0.2.99",
            "192.0.2.1",
            TCP,
            0,
            &tcp(50000, 8000, SYN),
        )),
        TC_DROP,
        counter::DENIED,
        Some(reason::SOURCE_NOT_ALLOWED),
    );
    lab.check(
        "cluster to the probe port",
        i,
        &v4(ipv4(
            "203.0.113.7",
            "192.0.2.1",
            TCP,
            0,
            &tcp(50000, 17546, SYN),
        )),
        TC_DROP,
        counter::DENIED,
        Some(reason::SOURCE_NOT_ALLOWED),
    );
    lab.check(
        "outsider to 8000 on a pod routed through the node",
        i,
        &v4(ipv4(
            "192.0.2.99",
            "192.0.2.77",
            TCP,
            0,
            &tcp(50000, 8000, SYN),
        )),
        TC_PASS,
        counter::PASSED,
        None,
    );
    lab.check(
        "outsider to an unguarded port",
        i,
        &v4(ipv4(
            "192.0.2.99",
            "192.0.2.1",
            TCP,
            0,
            &tcp(50000, 22, SYN),
        )),
        TC_PASS,
        counter::PASSED,
        None,
    );
    // ICMP errors: fragmentation needed for the allowed flow passes (PMTU discovery); for an
    // unknown flow it is dropped; a redirect from storage is dropped; neighbour discovery passes.
    let quoted = ipv4("192.0.2.1", "192.0.2.2", TCP, 0, &tcp(40000, 2049, ACK));
    lab.check(
        "frag needed, known flow",
        i,
        &v4(ipv4(
            "192.0.2.2",
            "192.0.2.1",
            ICMP,
            0,
            &icmp(3, 4, &quoted),
        )),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    let unknown = ipv4("192.0.2.1", "192.0.2.2", TCP, 0, &tcp(40001, 2049, ACK));
    lab.check(
        "frag needed, unknown flow",
        i,
        &v4(ipv4(
            "192.0.2.2",
            "192.0.2.1",
            ICMP,
            0,
            &icmp(3, 4, &unknown),
        )),
        TC_DROP,
        counter::DENIED,
        Some(reason::ICMP_UNRELATED),
    );
    lab.check(
        "redirect from storage",
        i,
        &v4(ipv4(
            "192.0.2.2",
            "192.0.2.1",
            ICMP,
            0,
            &icmp(5, 1, &quoted),
        )),
        TC_DROP,
        counter::DENIED,
        Some(reason::ICMP_UNRELATED),
    );
    lab.check(
        "echo reply from storage",
        i,
        &v4(ipv4("192.0.2.2", "192.0.2.1", ICMP, 0, &icmp(0, 0, &[]))),
        TC_PASS,
        counter::PASSED,
        None,
    );
    // IPv6: the same flow rules, packet-too-big for a known flow, neighbour advertisement.
    lab.check(
        "v6 request",
        e,
        &v6(ipv6(
            "2001:db8::1",
            "2001:db8::2",
            TCP,
            &tcp(700, 2049, SYN),
        )),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check(
        "v6 reply",
        i,
        &v6(ipv6(
            "2001:db8::2",
            "2001:db8::1",
            TCP,
            &tcp(2049, 700, SYN | ACK),
        )),
        TC_PASS,
        counter::CONNTRACK_HIT,
        None,
    );
    let q6 = ipv6("2001:db8::1", "2001:db8::2", TCP, &tcp(700, 2049, ACK));
    lab.check(
        "v6 packet too big",
        i,
        &v6(ipv6("2001:db8::2", "2001:db8::1", ICMPV6, &icmp(2, 0, &q6))),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check(
        "v6 neighbour advertisement",
        i,
        &v6(ipv6(
            "2001:db8::2",
            "2001:db8::1",
            ICMPV6,
            &icmp(136, 0, &[0u8; 16]),
        )),
        TC_PASS,
        counter::PASSED,
        None,
    );
    lab.check(
        "v6 unsolicited",
        i,
        &v6(ipv6(
            "2001:db8::2",
            "2001:db8::1",
            TCP,
            &tcp(2049, 9999, SYN),
        )),
        TC_DROP,
        counter::DENIED,
        Some(reason::UNSOLICITED),
    );
}

#[test]
fn xdp_ingress_uses_the_same_policy() {
    if !require_root("xdp_ingress_uses_the_same_policy")
        || !kernel_has(
            "xdp_ingress_uses_the_same_policy",
            XDP_KERNEL,
            "bpf_xdp_load_bytes",
        )
    {
        return;
    }
    let mut lab = Lab::new(Mode::Enforce);
    let x = programs::XDP_INGRESS;
    lab.check(
        "xdp unsolicited",
        x,
        &v4(ipv4("192.0.2.2", "192.0.2.1", TCP, 0, &tcp(2049, 22, SYN))),
        XDP_DROP,
        counter::DENIED,
        Some(reason::UNSOLICITED),
    );
    lab.check(
        "xdp callback",
        x,
        &v4(ipv4("192.0.2.2", "192.0.2.1", UDP, 0, &udp(4045, 33000))),
        XDP_PASS,
        counter::ALLOWED,
        None,
    );
    lab.check(
        "xdp outsider to 8000",
        x,
        &v4(ipv4(
            "192.0.2.99",
            "192.0.2.1",
            TCP,
            0,
            &tcp(50000, 8000, SYN),
        )),
        XDP_DROP,
        counter::DENIED,
        Some(reason::SOURCE_NOT_ALLOWED),
    );
    lab.check(
        "xdp vlan v6 unsolicited",
        x,
        &ether(
            &[0x8100],
            0x86dd,
            &ipv6("2001:db8::2", "2001:db8::1", TCP, &tcp(2049, 9999, SYN)),
        ),
        XDP_DROP,
        counter::DENIED,
        Some(reason::UNSOLICITED),
    );
    lab.check(
        "xdp truncated",
        x,
        &v4(ipv4("192.0.2.2", "192.0.2.1", TCP, 0, &tcp(2049, 22, SYN)))[..36],
        XDP_DROP,
        counter::DENIED,
        Some(reason::MALFORMED),
    );
    lab.check(
        "xdp arp",
        x,
        &ether(&[], 0x0806, &[0u8; 28]),
        XDP_PASS,
        counter::PASSED,
        None,
    );
}

#[test]
fn audit_mode_passes_and_reports() {
    if !require_root("audit_mode_passes_and_reports") {
        return;
    }
    let mut lab = Lab::new(Mode::Audit);
    let e = programs::TC_EGRESS;
    lab.check(
        "audited",
        e,
        &egress_syn("192.0.2.2", 3260),
        TC_PASS,
        counter::AUDITED,
        Some(reason::NO_RULE),
    );
    lab.check(
        "allowed stays allowed",
        e,
        &egress_syn("192.0.2.2", 2049),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
    // Switching to enforce takes effect at once, without reloading programs.
    lab.programs.dp.set_mode(Mode::Enforce).unwrap();
    lab.check(
        "enforced",
        e,
        &egress_syn("192.0.2.2", 3260),
        TC_DROP,
        counter::DENIED,
        Some(reason::NO_RULE),
    );
}

/// A denial carries the sequence of the policy that judged it, so that the agent explains it by
/// that policy even when it reads the event after a switch: here 192.0.2.2 moves from backend
/// nas-a to nas-b, and a denial judged before the move but read after it still names nas-a.
#[test]
fn events_are_explained_by_the_policy_that_judged_them() {
    use std::sync::Arc;

    use trident_ports_agent::events::{
        Clock, IfNames, Record,
        explain::{Explainer, Explainers},
    };
    if !require_root("events_are_explained_by_the_policy_that_judged_them") {
        return;
    }
    let owned_by = |backend: &str| {
        let mut p = policy();
        for e in &mut p.entries {
            if e.peer == "192.0.2.2/32".parse().unwrap() {
                e.backend = Some(backend.into());
            }
        }
        Arc::new(p)
    };
    let (a, b) = (owned_by("nas-a"), owned_by("nas-b"));
    let mut lab = Lab::new(Mode::Enforce);
    let first = lab.programs.dp.apply(&a, 0).unwrap().config.seq;
    let mut explainers = Explainers::new(first, Explainer::new(a.clone()));
    let denied = egress_syn("192.0.2.2", 3260);
    assert_eq!(lab.run(programs::TC_EGRESS, &denied), TC_DROP);
    let second = lab
        .programs
        .dp
        .apply_announced(&b, 0, |cfg| {
            explainers.install(cfg.seq, Explainer::new(b.clone()));
        })
        .unwrap()
        .config
        .seq;
    assert_ne!(first, second);
    assert_eq!(lab.run(programs::TC_EGRESS, &denied), TC_DROP);
    let events = lab.events();
    let seqs: Vec<u16> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [first as u16, second as u16], "the events' sequences");
    let backend = |x: &Explainers, ev: &trident_ports_common::Event| {
        let mut rec = Record::from_event(ev, &Clock::new(), &mut IfNames::default());
        x.for_event(ev).explain(ev, &mut rec);
        rec.backend
    };
    let (before, after) = (&events[0], &events[1]);
    assert_eq!(backend(&explainers, before).as_deref(), Some("nas-a"));
    assert_eq!(backend(&explainers, after).as_deref(), Some("nas-b"));
    // Once the previous policy's explainer is let go, its events read as the policy in force.
    assert!(
        !explainers.expire(std::time::Instant::now()),
        "kept for a while"
    );
    assert!(explainers.expire(std::time::Instant::now() + std::time::Duration::from_secs(60)));
    assert_eq!(explainers.expiry(), None);
    assert_eq!(backend(&explainers, before).as_deref(), Some("nas-b"));
}

/// Runs an inbound `frame` through `prog`, expecting `verdict` from the full path: counted as
/// denied, not as the recent-denial cache's answer (which counts as denied too).
fn denied_by_the_full_path(lab: &mut Lab, prog: &str, frame: &[u8], verdict: u32, what: &str) {
    let before = lab.programs.dp.counters().unwrap();
    assert_eq!(lab.run(prog, frame), verdict, "{what}");
    let after = lab.programs.dp.counters().unwrap();
    let grew = |c| after.get(DIR_INGRESS, c) - before.get(DIR_INGRESS, c);
    assert_eq!(
        (grew(counter::DENIED), grew(counter::RECENT_DENIAL)),
        (1, 0),
        "{what}: denied by the full path"
    );
}

/// Repeats of a denied flow within its event interval are answered by the per-CPU recent-denial
/// cache with the same verdict; the next event counts them; the cache switched off (and on
/// again), a mode switch, and a connection the node opens to the same flow, send it back to the
/// full path at once.
#[test]
fn recent_denials_repeat_the_verdict_until_anything_changes() {
    if !require_root("recent_denials_repeat_the_verdict_until_anything_changes") {
        return;
    }
    let interval = std::time::Duration::from_millis(300);
    let mut lab = Lab::gated(Mode::Enforce, interval.as_nanos() as u64);
    for (i, (prog, drop, pass)) in ingress_programs().into_iter().enumerate() {
        let port = 40_100 + i as u16;
        // The storage address answering a connection the node never opened.
        let reply = v4(ipv4(
            "192.0.2.2",
            "192.0.2.1",
            TCP,
            0,
            &tcp(2049, port, SYN | ACK),
        ));
        let what = |s: &str| format!("{prog}: {s}");
        lab.check(
            &what("unsolicited"),
            prog,
            &reply,
            drop,
            counter::DENIED,
            Some(reason::UNSOLICITED),
        );
        let before = lab.programs.dp.counters().unwrap();
        for _ in 0..20 {
            lab.check(
                &what("repeated"),
                prog,
                &reply,
                drop,
                counter::RECENT_DENIAL,
                None,
            );
        }
        // The cache's answer counts what the full path would, and what it suppressed.
        let after = lab.programs.dp.counters().unwrap();
        for c in [
            counter::DENIED,
            counter::REASON_BASE + u32::from(reason::UNSOLICITED),
            counter::EVENTS_SUPPRESSED,
        ] {
            let grew = after.get(DIR_INGRESS, c) - before.get(DIR_INGRESS, c);
            assert_eq!(grew, 20, "{}: counter {c}", what("repeated"));
        }
        // Turned off, the cache does not answer, though its entry still matches the flow, the
        // policy and the table (the option leaves the sequence as it is): the write bumped the
        // epoch, the one thing an entry is checked against.
        lab.programs.dp.set_recent_denials(false).unwrap();
        denied_by_the_full_path(&mut lab, prog, &reply, drop, &what("cache off"));
        // On again, the old entry stays untrusted (another write, another epoch): the full path
        // judges the next packet and caches it anew.
        lab.programs.dp.set_recent_denials(true).unwrap();
        denied_by_the_full_path(&mut lab, prog, &reply, drop, &what("cache on again"));
        lab.check(
            &what("cache on again"),
            prog,
            &reply,
            drop,
            counter::RECENT_DENIAL,
            None,
        );
        // Audit passes it at once; the audited verdict is cached the same way.
        lab.programs.dp.set_mode(Mode::Audit).unwrap();
        lab.check(&what("audit"), prog, &reply, pass, counter::AUDITED, None);
        lab.check(
            &what("audit, repeated"),
            prog,
            &reply,
            pass,
            counter::RECENT_DENIAL,
            None,
        );
        lab.programs.dp.set_mode(Mode::Enforce).unwrap();
        lab.check(
            &what("enforce again"),
            prog,
            &reply,
            drop,
            counter::DENIED,
            None,
        );
        // After the gate opens, the event stands for every packet since the last one: the 21
        // the cache answered, the one with the cache off, the one after it came on again, the
        // audited pair and the one just before.
        std::thread::sleep(interval);
        let before = lab
            .programs
            .dp
            .counter(DIR_INGRESS, counter::DENIED)
            .unwrap();
        assert_eq!(lab.run(prog, &reply), drop, "{}", what("gate open"));
        assert_eq!(
            lab.programs
                .dp
                .counter(DIR_INGRESS, counter::DENIED)
                .unwrap(),
            before + 1
        );
        let events = lab.events();
        assert_eq!(events.len(), 1, "{}: {events:?}", what("gate open"));
        assert_eq!(events[0].reason, reason::UNSOLICITED);
        assert_eq!(
            events[0].suppressed,
            26,
            "{}: suppressed",
            what("gate open")
        );
        lab.check(
            &what("gate open, repeated"),
            prog,
            &reply,
            drop,
            counter::RECENT_DENIAL,
            None,
        );
        // The node opens that very connection: the reply is its flow's from now on.
        let open = v4(ipv4(
            "192.0.2.1",
            "192.0.2.2",
            TCP,
            0,
            &tcp(port, 2049, SYN),
        ));
        lab.check(
            &what("the node connects"),
            programs::TC_EGRESS,
            &open,
            TC_PASS,
            counter::ALLOWED,
            None,
        );
        lab.check(
            &what("its reply"),
            prog,
            &reply,
            pass,
            counter::CONNTRACK_HIT,
            None,
        );
    }
}

/// Each CPU emits at most its event budget; denials past it are counted and their flow's gate
/// stays open, so the flow's next event carries them. Verdicts never change.
#[test]
fn events_past_the_budget_are_counted_and_carried() {
    if !require_root("events_past_the_budget_are_counted_and_carried") {
        return;
    }
    let mut lab = Lab::gated(Mode::Enforce, 10_000_000_000);
    // 10 events per second: a burst of 10, then one per 100 ms.
    lab.programs.dp.set_event_rate(10).unwrap();
    let unsolicited = |port: u16| {
        v4(ipv4(
            "192.0.2.2",
            "192.0.2.1",
            TCP,
            0,
            &tcp(2049, port, SYN | ACK),
        ))
    };
    let before = lab.programs.dp.counters().unwrap();
    for port in 41_000..41_012 {
        assert_eq!(lab.run(programs::TC_INGRESS, &unsolicited(port)), TC_DROP);
    }
    let after = lab.programs.dp.counters().unwrap();
    let moved = |c| after.get(DIR_INGRESS, c) - before.get(DIR_INGRESS, c);
    assert_eq!(moved(counter::DENIED), 12, "every packet dropped");
    assert_eq!(lab.events().len(), 10, "the burst");
    assert_eq!(moved(counter::EVENTS_EMITTED), 10);
    assert_eq!(moved(counter::EVENTS_RATE_LIMITED), 2);
    // A tenth of a second earns one event: the first flow left out reports, counting the packet
    // that went unreported.
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert_eq!(lab.run(programs::TC_INGRESS, &unsolicited(41_010)), TC_DROP);
    let events = lab.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].dst_port, events[0].suppressed), (41_010, 1));
    // No limit: every flow reports again at once.
    lab.programs.dp.set_event_rate(0).unwrap();
    for port in 42_000..42_050 {
        assert_eq!(lab.run(programs::TC_INGRESS, &unsolicited(port)), TC_DROP);
    }
    assert_eq!(lab.events().len(), 50);
}

/// Guarded ports live in a per-generation bitmap: a switch must clear what the previous policy
/// guarded, in both generations, and TCP and UDP ports are separate.
#[test]
fn guarded_ports_follow_policy_switches() {
    if !require_root("guarded_ports_follow_policy_switches") {
        return;
    }
    let mut lab = Lab::new(Mode::Enforce);
    let i = programs::TC_INGRESS;
    let outsider = |proto: u8, port: u16| {
        let l4 = if proto == TCP {
            tcp(50000, port, SYN)
        } else {
            udp(50000, port)
        };
        v4(ipv4("192.0.2.99", "192.0.2.1", proto, 0, &l4))
    };
    let guard = |proto, port| Guard {
        port,
        proto,
        purpose: "test".into(),
    };
    let expect = |lab: &mut Lab, what: &str, guarded: &[(u8, u16)], open: &[(u8, u16)]| {
        for &(proto, port) in guarded {
            lab.check(
                &format!("{what}: {proto}/{port} guarded"),
                i,
                &outsider(proto, port),
                TC_DROP,
                counter::DENIED,
                Some(reason::SOURCE_NOT_ALLOWED),
            );
        }
        for &(proto, port) in open {
            lab.check(
                &format!("{what}: {proto}/{port} open"),
                i,
                &outsider(proto, port),
                TC_PASS,
                counter::PASSED,
                None,
            );
        }
    };
    expect(
        &mut lab,
        "first policy",
        &[(TCP, 8000), (TCP, 17546)],
        &[(UDP, 8000), (TCP, 8001), (TCP, 7999), (TCP, 8064)],
    );
    // The other generation: 8000 and 17546 no longer guarded, UDP 8001 and TCP 63 now.
    let mut p = policy();
    p.guarded = vec![guard(Proto::Udp, 8001), guard(Proto::Tcp, 63)];
    lab.programs.dp.apply(&p, 0).unwrap();
    expect(
        &mut lab,
        "second policy",
        &[(UDP, 8001), (TCP, 63)],
        &[(TCP, 8000), (TCP, 17546), (TCP, 8001), (TCP, 64)],
    );
    // Back to the first generation's slot: nothing of the first policy may remain there.
    p.guarded = vec![guard(Proto::Tcp, 8000)];
    lab.programs.dp.apply(&p, 0).unwrap();
    expect(
        &mut lab,
        "third policy",
        &[(TCP, 8000)],
        &[(TCP, 17546), (UDP, 8001), (TCP, 63)],
    );
    // Where the guards apply follows the switch too: the node moved to 192.0.2.77.
    p.guard_addresses = vec!["192.0.2.77/32".parse().unwrap()];
    lab.programs.dp.apply(&p, 0).unwrap();
    expect(&mut lab, "fourth policy, old address", &[], &[(TCP, 8000)]);
    lab.check(
        "fourth policy, new address",
        i,
        &v4(ipv4(
            "192.0.2.99",
            "192.0.2.77",
            TCP,
            0,
            &tcp(50000, 8000, SYN),
        )),
        TC_DROP,
        counter::DENIED,
        Some(reason::SOURCE_NOT_ALLOWED),
    );
}

/// The recent-pass cache answers the later packets of a flow to or from an unprotected address
/// with what the full path counts. Any policy change, written in place or by a generation
/// switch, sends the flow back to the full path: an address that becomes protected is policed
/// from its next packet on, and a rule taken away stops allowing at once.
#[test]
fn recent_passes_follow_every_policy_change() {
    if !require_root("recent_passes_follow_every_policy_change") {
        return;
    }
    let mut lab = Lab::new(Mode::Enforce);
    let (e, i) = (programs::TC_EGRESS, programs::TC_INGRESS);
    // A node's web request to an address the policy does not name, and the cluster to the
    // guarded node port 8000 (allowed by a rule, from a peer that is not storage).
    let web = v4(ipv4("192.0.2.1", "192.0.2.9", TCP, 0, &tcp(40200, 80, ACK)));
    let cluster = v4(ipv4(
        "203.0.113.5",
        "192.0.2.1",
        TCP,
        0,
        &tcp(50200, 8000, ACK),
    ));
    let ingress = ingress_programs();
    // Runs `frame` and checks that it passed under `want`, and whether the cache answered.
    let passes = |lab: &mut Lab, what: &str, prog: &str, frame: &[u8], want: u32, cached: bool| {
        let dir = if prog == e { DIR_EGRESS } else { DIR_INGRESS };
        let pass = if prog == programs::XDP_INGRESS {
            XDP_PASS
        } else {
            TC_PASS
        };
        let before = lab.programs.dp.counters().unwrap();
        assert_eq!(lab.run(prog, frame), pass, "{what}: verdict");
        let after = lab.programs.dp.counters().unwrap();
        let grew = |c| after.get(dir, c) - before.get(dir, c);
        assert_eq!(grew(want), 1, "{what}: counter {want}");
        assert_eq!(
            grew(counter::RECENT_PASS),
            u64::from(cached),
            "{what}: answered by the cache"
        );
        assert!(lab.reasons().is_empty(), "{what}: no event");
    };
    passes(&mut lab, "web, first", e, &web, counter::PASSED, false);
    passes(&mut lab, "web, next", e, &web, counter::PASSED, true);
    for &(prog, _, _) in &ingress {
        passes(&mut lab, prog, prog, &cluster, counter::ALLOWED, prog != i);
        passes(&mut lab, prog, prog, &cluster, counter::ALLOWED, true);
    }
    // 192.0.2.9 becomes storage (NFS only), written in place: the web flow is now denied.
    let mut storage = policy();
    storage.entries.push(entry(
        Direction::Egress,
        "192.0.2.9/32",
        2049,
        2049,
        Proto::Tcp,
    ));
    // While the change is written the cache rests: it would repeat the old policy's pass after
    // the maps moved on, without the connection-table entry the new verdict makes.
    let mut states = 0;
    let applied = lab
        .programs
        .dp
        .apply_observed(&storage, 0, |dp: &mut Datapath| {
            let before = dp.counters().unwrap().get(DIR_EGRESS, counter::RECENT_PASS);
            run(dp, e, &web);
            let after = dp.counters().unwrap().get(DIR_EGRESS, counter::RECENT_PASS);
            assert_eq!(after, before, "state {states}: answered by the cache");
            states += 1;
        })
        .unwrap();
    assert!(applied.steps.is_some(), "a change written in place");
    assert!(states > 0, "states in between");
    // The states that already had the new peer entry denied the flow, and reported it.
    assert!(lab.reasons().iter().all(|r| *r == reason::NO_RULE));
    let denied = |lab: &mut Lab, what: &str, prog: &str, frame: &[u8], drop: u32, why: u8| {
        lab.check(what, prog, frame, drop, counter::DENIED, Some(why));
    };
    denied(
        &mut lab,
        "web, 192.0.2.9 now storage",
        e,
        &web,
        TC_DROP,
        reason::NO_RULE,
    );
    // Not storage again, in place: the flow passes, and is cached again.
    let applied = lab.programs.dp.apply(&policy(), 0).unwrap();
    assert!(applied.steps.is_some(), "a change written in place");
    passes(
        &mut lab,
        "web, storage no more",
        e,
        &web,
        counter::PASSED,
        false,
    );
    passes(
        &mut lab,
        "web, storage no more, next",
        e,
        &web,
        counter::PASSED,
        true,
    );
    // Storage again, with another guard: a generation switch.
    storage.guarded.push(Guard {
        port: 8001,
        proto: Proto::Tcp,
        purpose: "test".into(),
    });
    let applied = lab.programs.dp.apply(&storage, 0).unwrap();
    assert!(applied.steps.is_none(), "a generation switch");
    denied(
        &mut lab,
        "web, storage by a switch",
        e,
        &web,
        TC_DROP,
        reason::NO_RULE,
    );
    // The cluster's rule taken away, in place: port 8000 stays guarded, so it is denied.
    for &(prog, _, _) in &ingress {
        passes(&mut lab, prog, prog, &cluster, counter::ALLOWED, prog != i);
        passes(&mut lab, prog, prog, &cluster, counter::ALLOWED, true);
    }
    storage
        .entries
        .retain(|x| x.peer != "203.0.113.0/24".parse().unwrap());
    let applied = lab.programs.dp.apply(&storage, 0).unwrap();
    assert!(applied.steps.is_some(), "a change written in place");
    for &(prog, drop, _) in &ingress {
        denied(
            &mut lab,
            &format!("{prog}: the cluster without its rule"),
            prog,
            &cluster,
            drop,
            reason::SOURCE_NOT_ALLOWED,
        );
    }
    // With the cache off every packet takes the full path.
    lab.programs.dp.set_recent_passes(false).unwrap();
    let other = v4(ipv4("192.0.2.1", "192.0.2.10", UDP, 0, &udp(40201, 53)));
    for what in ["cache off, first", "cache off, next"] {
        passes(&mut lab, what, e, &other, counter::PASSED, false);
    }
}

#[test]
fn established_flows_are_judged_again_after_a_policy_switch() {
    if !require_root("established_flows_are_judged_again_after_a_policy_switch") {
        return;
    }
    // With the cache, and with the connection table alone.
    for cache in [true, false] {
        judged_again_after_a_switch(cache);
    }
}

fn judged_again_after_a_switch(cache: bool) {
    let mut lab = Lab::new(Mode::Enforce);
    lab.programs.dp.set_recent_flows(cache).unwrap();
    let e = programs::TC_EGRESS;
    let first = v4(ipv4(
        "192.0.2.1",
        "192.0.2.2",
        TCP,
        0,
        &tcp(40001, 443, ACK),
    ));
    let six = v6(ipv6(
        "2001:db8::1",
        "2001:db8::2",
        TCP,
        &tcp(40003, 2049, ACK),
    ));
    let (rule, table) = (counter::ALLOWED, counter::CONNTRACK_HIT);
    let recent = if cache { counter::RECENT_HIT } else { table };
    lab.check(
        &format!("new flow, by rule, cache {cache}"),
        e,
        &first,
        TC_PASS,
        rule,
        None,
    );
    lab.check(
        &format!("the same flow next (recent flow), cache {cache}"),
        e,
        &first,
        TC_PASS,
        recent,
        None,
    );
    // Flows to the same port until the first flow has to be answered by the connection table:
    // the second new flow in its set of two pushed it out.
    let other = (50_000..52_000u16)
        .map(|sport| {
            v4(ipv4(
                "192.0.2.1",
                "192.0.2.2",
                TCP,
                0,
                &tcp(sport, 443, ACK),
            ))
        })
        .find(|candidate| {
            lab.check(
                &format!("another flow, by rule, cache {cache}"),
                e,
                candidate,
                TC_PASS,
                rule,
                None,
            );
            let before = lab.programs.dp.counters().unwrap();
            assert_eq!(lab.run(e, &first), TC_PASS, "the first flow again");
            let after = lab.programs.dp.counters().unwrap();
            let grew = |c| after.get(DIR_EGRESS, c) - before.get(DIR_EGRESS, c);
            if grew(table) == 1 {
                return true;
            }
            assert_eq!(grew(recent), 1, "the first flow again: recent or table");
            false
        })
        .expect("flows that share the first flow's cache set");
    // The first flow went back into the set beside the one that pushed it out: both are served
    // by the cache from now on.
    for (what, frame, ctr) in [
        ("the flow that pushed it out (recent flow)", &other, recent),
        ("the first flow next (recent flow)", &first, recent),
        ("an IPv6 flow, by rule", &six, rule),
        ("the IPv6 flow next (recent flow)", &six, recent),
        ("the first flow again (recent flow)", &first, recent),
    ] {
        lab.check(
            &format!("{what}, cache {cache}"),
            e,
            frame,
            TC_PASS,
            ctr,
            None,
        );
    }
    // The same policy without IPv4 443, and with IPv6 2050 instead of 2049 (so that the peer
    // stays protected): neither the table nor the shortcut may keep those flows alive.
    let mut p = policy();
    p.entries[2] = entry(Direction::Egress, "2001:db8::2/128", 2050, 2050, Proto::Tcp);
    p.entries.remove(1);
    lab.programs.dp.apply(&p, 0).unwrap();
    for (what, frame) in [
        ("the IPv6 flow under a policy without its port", &six),
        ("the last flow under a policy without its port", &first),
        ("the other flow too", &other),
    ] {
        lab.check(
            what,
            e,
            frame,
            TC_DROP,
            counter::DENIED,
            Some(reason::NO_RULE),
        );
    }
    lab.check(
        "the port the policy still has",
        e,
        &egress_syn("192.0.2.2", 2049),
        TC_PASS,
        counter::ALLOWED,
        None,
    );
}

/// A switch removes the previous generation by the keys it wrote (batch deletes), or, on the
/// first switch of a process that adopted pinned maps, by walking them. Either way the idle
/// generation is left empty: an entry left there would allow, after the next switch, what the
/// new policy does not.
#[test]
fn switches_leave_only_the_running_generation() {
    if !require_root("switches_leave_only_the_running_generation") {
        return;
    }
    use trident_ports_agent::datapath::GenerationCounts;
    let sized = |n: u16| {
        let mut p = policy();
        for i in 0..n {
            let a = format!("2001:db8:7::{i:x}/128");
            p.entries
                .push(entry(Direction::Egress, &a, 2000 + i, 2000 + i, Proto::Tcp));
            p.entries
                .push(entry(Direction::Egress, &a, 9000, 9100, Proto::Udp));
        }
        p
    };
    let check = |dp: &Datapath, a: &trident_ports_agent::datapath::Applied, what: &str| {
        let t = &a.sizes;
        let g = usize::from(a.config.generation);
        let want = t.peers + t.prefixes + t.rules + t.ranges + t.guard_addrs;
        let c: GenerationCounts = dp.entries_by_generation().unwrap();
        assert_eq!(c.entries[g], want, "{what}: running generation {c:?}");
        assert_eq!(c.entries[1 - g], 0, "{what}: idle generation {c:?}");
        assert_eq!(c.guard_words[1 - g], 0, "{what}: idle guard words {c:?}");
        assert!(c.guard_words[g] > 0, "{what}: {c:?}");
    };
    let fs = trident_ports_tests::bpffs::BpfFs::mount();
    let pin = fs.0.join("switches");
    // What the maps hold when `apply_announced` says the policy is in force, read through the
    // pins: the configuration's seq, and how many peers the other generation still has.
    let at_in_force = || {
        let maps = pin.join("maps");
        let config: aya::maps::Array<_, trident_ports_common::Config> =
            aya::maps::Array::try_from(aya::maps::Map::Array(
                aya::maps::MapData::from_pin(maps.join(trident_ports_common::maps::CONFIG))
                    .unwrap(),
            ))
            .unwrap();
        let config = config.get(&0, 0).unwrap();
        let peers: aya::maps::HashMap<
            _,
            trident_ports_common::PeerKey,
            trident_ports_common::PeerInfo,
        > = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
            aya::maps::MapData::from_pin(maps.join(trident_ports_common::maps::PEERS)).unwrap(),
        ))
        .unwrap();
        let left = peers
            .keys()
            .filter(|k| k.as_ref().unwrap().generation != config.generation)
            .count();
        (config.seq, left)
    };
    {
        let mut dp = Datapath::load_pinned(Some(&pin)).unwrap();
        for (i, n) in [3000, 10, 2000, 0, 500].into_iter().enumerate() {
            let mut seen = Vec::new();
            let a = dp
                .apply_announced(&sized(n), 0, |cfg| seen.push((cfg.seq, at_in_force())))
                .unwrap();
            check(&dp, &a, &format!("{n} addresses"));
            // Announced once, with the new policy in force and, for a switch, the generation
            // it left not yet emptied (the agent's explainer changes there).
            assert_eq!(seen.len(), 1, "{n} addresses: announced {seen:?}");
            assert_eq!(seen[0].0, a.config.seq, "{n} addresses: announced");
            assert_eq!(seen[0].1.0, a.config.seq, "{n} addresses: in the map");
            if a.steps.is_none() && i > 0 {
                assert!(
                    seen[0].1.1 > 0,
                    "{n} addresses: the old generation already gone"
                );
            }
        }
    }
    // An interrupted switch leaves entries in the idle generation; a new process adopting the
    // pinned maps must find and remove them before it writes there.
    let running = {
        let dp = Datapath::load_pinned(Some(&pin)).unwrap();
        dp.config().unwrap().generation
    };
    let idle = running ^ 1;
    let stale = trident_ports_common::PeerKey {
        generation: idle,
        dir: DIR_EGRESS,
        _pad: [0; 2],
        addr: "2001:db8:9::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    };
    {
        let data =
            aya::maps::MapData::from_pin(pin.join("maps").join(trident_ports_common::maps::PEERS))
                .unwrap();
        let mut peers: aya::maps::HashMap<
            _,
            trident_ports_common::PeerKey,
            trident_ports_common::PeerInfo,
        > = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
        peers
            .insert(
                stale,
                trident_ports_common::PeerInfo { class: 1, flags: 1 },
                0,
            )
            .unwrap();
    }
    let mut dp = Datapath::load_pinned(Some(&pin)).unwrap();
    assert_eq!(
        dp.entries_by_generation().unwrap().entries[usize::from(idle)],
        1
    );
    let a = dp.apply(&sized(100), 0).unwrap();
    check(&dp, &a, "after adopting maps with a stale entry");
    let a = dp.apply(&sized(7), 0).unwrap();
    check(&dp, &a, "and the switch after");
    drop(dp);
    trident_ports_agent::datapath::pins::uninstall(&pin).unwrap();
}

/// A switch is done once the configuration names the new generation: if the generation it left
/// cannot be emptied then (here the guard bitmap, frozen by the test at that moment, refuses the
/// writes), the apply still reports the new policy in force and names what is left over. The
/// next switch would write into that generation, so it fails before writing and the policy in
/// force stays.
#[test]
fn a_switch_in_force_reports_what_it_could_not_empty() {
    if !require_root("a_switch_in_force_reports_what_it_could_not_empty") {
        return;
    }
    let fs = trident_ports_tests::bpffs::BpfFs::mount();
    let pin = fs.0.join("leftover");
    let guards = pin.join("maps").join(trident_ports_common::maps::GUARDS);
    // 8443 guarded (no source allowed) is a change of the guards: a switch, not an update in place.
    let mut guarded = policy();
    guarded.guarded.push(Guard {
        port: 8443,
        proto: Proto::Tcp,
        purpose: "backchannel".into(),
    });
    let to_8443 = v4(ipv4(
        "192.0.2.9",
        "192.0.2.1",
        TCP,
        0,
        &tcp(40000, 8443, SYN),
    ));
    let mut dp = Datapath::load_pinned(Some(&pin)).unwrap();
    let first = dp.apply(&policy(), 0).unwrap();
    assert!(first.leftover.is_none());
    assert_eq!(run(&mut dp, programs::TC_INGRESS, &to_8443), TC_PASS);
    let a = dp
        .apply_announced(&guarded, 0, |_| trident_ports_tests::bpffs::freeze(&guards))
        .unwrap();
    assert!(a.steps.is_none(), "a switch");
    let leftover = a.leftover.as_ref().map(ToString::to_string);
    assert!(
        leftover
            .as_deref()
            .is_some_and(|e| e.contains(trident_ports_common::maps::GUARDS)),
        "{leftover:?}"
    );
    assert_eq!(dp.config().unwrap(), a.config, "the new policy is in force");
    assert_eq!(run(&mut dp, programs::TC_INGRESS, &to_8443), TC_DROP);
    let left = dp.entries_by_generation().unwrap();
    assert!(
        left.guard_words[usize::from(first.config.generation)] > 0,
        "{left:?}"
    );
    // Back to the first policy: a switch into the generation that was not emptied, which
    // cannot be emptied now either.
    assert!(dp.apply(&policy(), 0).is_err());
    assert_eq!(dp.config().unwrap(), a.config, "the policy in force stays");
    assert_eq!(run(&mut dp, programs::TC_INGRESS, &to_8443), TC_DROP);
    drop(dp);
    trident_ports_agent::datapath::pins::uninstall(&pin).unwrap();
}
