//! Crafted frames for BPF_PROG_TEST_RUN: Ethernet with optional VLAN tags, IPv4 (with fragment
//! fields), IPv6 with extension headers, TCP, UDP, ICMP and ICMPv6. Checksums are left zero: the
//! programs never read them.
use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}

pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&8u16.to_be_bytes());
    h
}

/// An ICMP/ICMPv6 message: type, code, 4 bytes of rest-of-header, then `body`.
pub fn icmp(ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0, 0, 0, 0, 0];
    h.extend_from_slice(body);
    h
}

/// IPv4 header + payload. `frag` is the flags/offset field (0x2000 = MF; low 13 bits offset).
pub fn ipv4(src: &str, dst: &str, proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.parse::<Ipv4Addr>().unwrap().octets());
    h[16..20].copy_from_slice(&dst.parse::<Ipv4Addr>().unwrap().octets());
    h.extend_from_slice(payload);
    h
}

/// IPv6 header + `rest` (extension headers and payload); `next` is the first next-header.
pub fn ipv6(src: &str, dst: &str, next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
    h[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
    h.extend_from_slice(rest);
    h
}

/// A hop-by-hop (0), routing (43) or destination-options (60) header of `(units + 1) * 8` bytes.
pub fn ext(next: u8, units: u8) -> Vec<u8> {
    let mut h = vec![0u8; (units as usize + 1) * 8];
    h[0] = next;
    h[1] = units;
    h
}

/// An IPv6 fragment header; `offset` in 8-byte units.
pub fn frag6(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0] = next;
    h[2..4].copy_from_slice(&((offset << 3) | more as u16).to_be_bytes());
    h[4..8].copy_from_slice(&0x1234u32.to_be_bytes());
    h
}

/// Ethernet frame; `tags` are TPIDs (0x8100, 0x88a8) of VLAN tags before the ethertype.
pub fn ether(tags: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (i, tpid) in tags.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

pub fn v4(l3: Vec<u8>) -> Vec<u8> {
    ether(&[], 0x0800, &l3)
}

pub fn v6(l3: Vec<u8>) -> Vec<u8> {
    ether(&[], 0x86dd, &l3)
}

/// One BPF_PROG_TEST_RUN of the datapath's program `prog` on `frame`; its return code.
pub fn run(dp: &mut trident_ports_agent::datapath::Datapath, prog: &str, frame: &[u8]) -> u32 {
    use aya::programs::{Program, SchedClassifier, TestRun, TestRunOptions, Xdp};
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..Default::default()
    };
    match dp.program_mut(prog).expect("program") {
        Program::SchedClassifier(p) => SchedClassifier::test_run(p, opts),
        Program::Xdp(p) => Xdp::test_run(p, opts),
        _ => unreachable!("the object has TC and XDP programs only"),
    }
    .unwrap_or_else(|e| {
        panic!(
            "test run of {prog} with {} bytes ({}): {e:?}",
            frame.len(),
            hex(frame)
        )
    })
    .return_value
}

/// A frame in hex, to paste into a regression test.
pub fn hex(frame: &[u8]) -> String {
    use std::fmt::Write as _;
    frame.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// TC_ACT_UNSPEC (-1): the next program, or the default action.
pub const TC_PASS: u32 = u32::MAX;
/// TC_ACT_SHOT.
pub const TC_DROP: u32 = 2;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The ingress programs this kernel runs, each with its drop and pass return values.
pub fn ingress_programs() -> Vec<(&'static str, u32, u32)> {
    use trident_ports_common::programs;
    let mut out = vec![(programs::TC_INGRESS, TC_DROP, TC_PASS)];
    if crate::kernel() >= crate::XDP_KERNEL {
        out.push((programs::XDP_INGRESS, XDP_DROP, XDP_PASS));
    }
    out
}

/// A policy entry to `peer` (a CIDR) on ports `from..=to`, for tests.
pub fn entry(
    direction: trident_ports_agent::policy::Direction,
    peer: &str,
    from: u16,
    to: u16,
    proto: trident_ports_agent::policy::Proto,
) -> trident_ports_agent::policy::Entry {
    trident_ports_agent::policy::Entry {
        direction,
        peer: peer.parse().unwrap(),
        ports: trident_ports_agent::policy::PortRange { from, to },
        proto,
        purpose: "test".into(),
        backend: None,
        source: "test".into(),
    }
}

/// The datapath's programs, loaded (not attached) with a policy, for frames run through them in
/// the network namespace of the calling thread: the one whose sockets they may ask.
pub struct Programs {
    pub dp: trident_ports_agent::datapath::Datapath,
    _cpu: crate::OnCpu0,
}

impl Programs {
    /// Every denial reports an event (no per-flow gate, so no recent-denial cache).
    pub fn load(p: &trident_ports_agent::policy::Policy) -> Self {
        Programs::gated(p, 0)
    }

    /// At most one event per flow and `interval_ns`.
    pub fn gated(p: &trident_ports_agent::policy::Policy, interval_ns: u64) -> Self {
        // The recent-flow cache is per CPU: one CPU keeps which path answers predictable.
        let cpu = crate::OnCpu0::pin();
        let mut dp = trident_ports_agent::datapath::Datapath::load().expect("load");
        if crate::kernel() >= crate::XDP_KERNEL {
            dp.load_xdp().expect("load the XDP program");
        }
        dp.apply(p, interval_ns).expect("apply");
        Programs { dp, _cpu: cpu }
    }

    /// Runs `frame` through `prog` and checks its return code and that `ctr` moved by one.
    pub fn check(&mut self, what: &str, prog: &str, frame: &[u8], verdict: u32, ctr: u32) {
        use trident_ports_common::{DIR_EGRESS, DIR_INGRESS, programs};
        let dir = if prog == programs::TC_EGRESS {
            DIR_EGRESS
        } else {
            DIR_INGRESS
        };
        let before = self.dp.counters().unwrap().get(dir, ctr);
        assert_eq!(run(&mut self.dp, prog, frame), verdict, "{what}: verdict");
        let after = self.dp.counters().unwrap().get(dir, ctr);
        assert_eq!(after - before, 1, "{what}: counter {ctr}");
    }
}
