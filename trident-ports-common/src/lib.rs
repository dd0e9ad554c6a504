//! Types shared by the kernel programs and the agent.
//!
//! Every type is `#[repr(C)]` with explicit padding fields, so that the kernel and user space agree
//! byte for byte and hashing never sees uninitialised bytes. Addresses are always 16 bytes: IPv4
//! is stored IPv4-mapped (`::ffff:a.b.c.d`), so one set of maps serves both families.
#![no_std]

pub const DIR_EGRESS: u8 = 0;
pub const DIR_INGRESS: u8 = 1;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const MODE_ENFORCE: u8 = 0;
pub const MODE_AUDIT: u8 = 1;

pub const VERDICT_DENIED: u8 = 0;
pub const VERDICT_AUDIT: u8 = 1;

/// Why a packet was (or, in audit mode, would have been) dropped.
pub mod reason {
    /// The peer is a protected address but no rule allows this protocol and port.
    pub const NO_RULE: u8 = 1;
    /// Inbound from a protected address that matches no allowed flow and no callback rule.
    pub const UNSOLICITED: u8 = 2;
    /// Inbound to a guarded node port from a source outside its allowed sources.
    pub const SOURCE_NOT_ALLOWED: u8 = 3;
    /// The packet to or from a protected address is too short to find its ports.
    pub const MALFORMED: u8 = 4;
    /// An IP protocol other than TCP, UDP and ICMP to or from a protected address.
    pub const PROTOCOL: u8 = 5;
    /// An ICMP error or redirect from a protected address that belongs to no known flow.
    pub const ICMP_UNRELATED: u8 = 6;
    pub const MAX: u8 = 6;
}

/// Indices into a direction's block of per-CPU counters (`CounterBlock`).
pub mod counter {
    /// Allowed by a rule (or an ICMP error quoting a tracked flow). Packets allowed by the
    /// connection table count under `CONNTRACK_HIT`, those of a flow the CPU allowed recently
    /// under `RECENT_HIT`: one increment per packet.
    pub const ALLOWED: u32 = 0;
    /// Dropped.
    pub const DENIED: u32 = 1;
    /// Would have been dropped, passed because the node is in audit mode.
    pub const AUDITED: u32 = 2;
    /// Not subject to policy: the peer is not protected, or the packet is not IP.
    pub const PASSED: u32 = 3;
    /// Allowed by the connection table.
    pub const CONNTRACK_HIT: u32 = 4;
    /// Non-first fragments to or from protected peers, passed (see the datapath docs).
    pub const FRAGMENT: u32 = 5;
    pub const EVENTS_EMITTED: u32 = 6;
    /// Events not emitted because the same flow had one less than an interval ago.
    pub const EVENTS_SUPPRESSED: u32 = 7;
    /// Events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 8;
    /// Allowed as a flow this CPU allowed recently, before any parsing or lookup.
    pub const RECENT_HIT: u32 = 9;
    /// Denied or audited packets (counted under `DENIED` or `AUDITED` too) of a flow this CPU
    /// denied and reported less than an event interval ago, answered before any parsing or
    /// lookup.
    pub const RECENT_DENIAL: u32 = 10;
    /// Events not emitted because this CPU had used its event budget (`Config::event_cost_ns`);
    /// the flow's gate stays open and counts the packet, so its next event stands for it.
    pub const EVENTS_RATE_LIMITED: u32 = 11;
    /// Packets of a flow to or from an unprotected address (counted under `PASSED`, or
    /// `ALLOWED` when a rule allows it) that this CPU judged lately, answered before any
    /// parsing or lookup.
    pub const RECENT_PASS: u32 = 12;
    /// Allowed from a protected peer because the node has a socket connected to it on this
    /// flow, which the connection table had lost (evicted) or never learned (opened before the
    /// peer was protected); the flow is in the table again.
    pub const NODE_SOCKET: u32 = 13;
    /// Denied or audited packets by reason: `REASON_BASE + reason::*`.
    pub const REASON_BASE: u32 = 14;
    /// Reasons, counting the unused 0.
    const REASONS: u32 = super::reason::MAX as u32 + 1;
    /// The kernel's own counters of recent denials by verdict and reason (`recent_denial`),
    /// which the agent folds into the counters above as it reads them (`fold_recent_denials`).
    const RECENT_DENIED_BASE: u32 = REASON_BASE + REASONS;
    const RECENT_AUDITED_BASE: u32 = RECENT_DENIED_BASE + REASONS;
    pub const COUNT: u32 = RECENT_AUDITED_BASE + REASONS;

    /// The one counter a recent denial bumps. A packet the recent-denial cache answers counts
    /// under four counters (`DENIED` or `AUDITED`, its reason, `RECENT_DENIAL` and
    /// `EVENTS_SUPPRESSED`); under a flood of one flow each increment weighs (1 ns of about 5
    /// above a program that only drops), so the kernel bumps this one and the reader adds it to
    /// the four.
    pub const fn recent_denial(audit: bool, why: u8) -> u32 {
        let base = if audit {
            RECENT_AUDITED_BASE
        } else {
            RECENT_DENIED_BASE
        };
        base + why as u32 % REASONS
    }

    /// Adds the kernel's per-verdict, per-reason recent-denial counters of one direction's block
    /// to the counters they stand for, and empties them, so that every counter of the block reads
    /// as if the kernel had bumped all four.
    pub fn fold_recent_denials(block: &mut super::CounterBlock) {
        for why in 0..REASONS {
            for (audit, verdict) in [(false, DENIED), (true, AUDITED)] {
                let i = recent_denial(audit, why as u8) as usize;
                let n = core::mem::take(&mut block[i]);
                for c in [verdict, REASON_BASE + why, RECENT_DENIAL, EVENTS_SUPPRESSED] {
                    block[c as usize] += n;
                }
            }
        }
    }
}

/// One direction's counters on one CPU, indexed by `counter::*`. The per-CPU counter map holds
/// one block per direction (`COUNTER_BLOCKS`, indexed by `DIR_*`): a path that bumps several
/// counters looks its block up once.
pub type CounterBlock = [u64; counter::COUNT as usize];

/// Entries of the per-CPU counter map: one block per direction.
pub const COUNTER_BLOCKS: u32 = 2;

/// Key of the exact-peer hash map and data of the peer LPM trie.
///
/// `gen` selects the policy generation (0 or 1) so that a new policy can be written beside the
/// running one and switched to with one store.
///
/// Aligned to four bytes (no change of layout): the kernel builds it on its stack, and only a
/// known alignment lets it copy the address in words rather than byte by byte.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PeerKey {
    pub generation: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
}

/// Number of leading bits of a [`PeerKey`] before the address: LPM prefixes add this.
pub const PEER_KEY_HEADER_BITS: u32 = 32;

pub const PEER_PROTECTED: u32 = 1;

/// What the datapath knows about a peer address or prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerInfo {
    /// The address class: all addresses of one class share one set of rules.
    pub class: u32,
    /// `PEER_PROTECTED`: every TCP/UDP packet with this peer is policed, not only guarded ports.
    pub flags: u32,
}

/// Exact (class, protocol, port) rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RuleKey {
    pub generation: u8,
    pub dir: u8,
    pub proto: u8,
    pub _pad: u8,
    pub class: u32,
    pub port: u16,
    pub _pad2: [u8; 2],
}

/// LPM data for port ranges: a range is split into prefix blocks of the big-endian port.
/// All multi-byte fields are big-endian so that prefix order is byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RangeKey {
    pub generation: u8,
    pub dir: u8,
    pub proto: u8,
    pub _pad: u8,
    pub class_be: [u8; 4],
    pub port_be: [u8; 2],
}

/// Bits of a [`RangeKey`] before the port: LPM prefixes add the port prefix length to this.
pub const RANGE_KEY_HEADER_BITS: u32 = 64;

/// A node port that only listed sources may reach (Trident's 8000, 8443, 8001, the probe port),
/// in one policy generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct GuardKey {
    pub generation: u8,
    pub proto: u8,
    pub port: u16,
}

/// Words of the guarded-port bitmap per generation and protocol: one bit per port.
pub const GUARD_WORDS_PER_SET: u32 = 65_536 / 64;

/// Words of the guarded-port bitmap: two generations, TCP and UDP. Every ingress packet from an
/// address outside the policy asks it, so it is an array read rather than a hash lookup.
pub const GUARD_WORDS: u32 = 2 * 2 * GUARD_WORDS_PER_SET;

impl GuardKey {
    /// The bitmap word and bit of this port; `None` for a protocol that has no guarded ports.
    #[inline(always)]
    pub fn slot(&self) -> Option<(u32, u64)> {
        let set = match self.proto {
            PROTO_TCP => 0,
            PROTO_UDP => 1,
            _ => return None,
        };
        let word = ((self.generation as u32 & 1) * 2 + set) * GUARD_WORDS_PER_SET
            + (self.port as u32 >> 6);
        Some((word, 1u64 << (self.port & 63)))
    }
}

/// One flow, seen from the node: the same key whichever direction a packet goes. Aligned to four
/// bytes, as `PeerKey` is, and for the same reason (not eight: `GateKey` would grow).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// A connection-table entry: valid while `seq` equals the running policy's sequence number;
/// an older entry is checked against the rules again before it is trusted.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowState {
    pub seq: u32,
    pub _pad: u32,
}

/// Per-flow event flood control.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventGate {
    pub last_ns: u64,
    pub suppressed: u32,
    pub _pad: u32,
}

/// Key of the flood-control map: the flow and the direction the denied packet went.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct GateKey {
    pub flow: FlowKey,
    pub dir: u8,
    pub _pad: [u8; 3],
}

/// The running configuration: one entry in an array map, read once per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Policy sequence number, bumped on every policy switch.
    pub seq: u32,
    /// Active generation, 0 or 1.
    pub generation: u8,
    /// `MODE_ENFORCE` or `MODE_AUDIT`.
    pub mode: u8,
    /// `TABLE_*` bits: which optional tables the active generation has entries in, so that
    /// packets skip lookups that cannot match.
    pub tables: u8,
    /// `OPTION_*` bits.
    pub options: u8,
    /// At most one event per flow and direction per this many nanoseconds (0: every packet).
    pub event_interval_ns: u64,
    /// Each CPU earns one nanosecond of event budget per nanosecond, up to one second's worth,
    /// and an event spends this many: at most 1e9 / `event_cost_ns` events per second and CPU
    /// (0: no limit). Bounds what a flood of distinct denied flows costs the agent.
    pub event_cost_ns: u32,
    pub _pad: u32,
}

/// `Config::options`: do not use the per-CPU recent-flow cache; every packet of an established
/// flow goes to the connection table. For measuring the table, and for ruling the cache out.
pub const OPTION_NO_RECENT_FLOWS: u8 = 1;

/// `Config::options`: do not use the per-CPU recent-denial cache; every denied packet takes the
/// full path (parse, lookups, event gate). For measuring that path, and for ruling the cache out.
pub const OPTION_NO_RECENT_DENIALS: u8 = 2;

/// `Config::options`: do not use the per-CPU recent-pass cache; every packet of a flow to or
/// from an unprotected address takes the full path. For measuring it, and for ruling the cache
/// out.
pub const OPTION_NO_RECENT_PASSES: u8 = 4;

/// `Config::options`: the agent is writing a change into the running generation, entry by
/// entry. The recent-pass cache is neither read nor filled meanwhile. Each packet then gets the
/// verdict of the maps as they are, which only move from the old policy towards the new one.
/// A cached pass would repeat the old policy after the maps moved on: a flow to an address that
/// is becoming storage would pass without the connection-table entry that the new policy's
/// verdict makes, and its reply would then be judged unsolicited.
pub const OPTION_UPDATING: u8 = 8;

/// The `Config::tables` bit that says the generation has subnet peers (`PEER_PREFIXES`) for
/// direction `dir`.
pub const fn table_peer_prefixes(dir: u8) -> u8 {
    1 << dir
}

/// The `Config::tables` bit that says the generation has port ranges (`RANGES`) for `dir`.
pub const fn table_ranges(dir: u8) -> u8 {
    4 << dir
}

/// A denied (or audited) packet, as written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub ifindex: u32,
    pub proto: u8,
    pub dir: u8,
    pub verdict: u8,
    pub reason: u8,
    pub tcp_flags: u8,
    /// 4 or 6.
    pub family: u8,
    /// The low 16 bits of the policy sequence (`Config::seq`) the packet was judged under: the
    /// agent explains the event by that policy, even when it reads the event after a switch.
    pub seq: u16,
    /// Events of this flow suppressed since the previous one.
    pub suppressed: u32,
    /// The peer's class, or `u32::MAX` when the peer is not a known address.
    pub class: u32,
}

pub const NO_CLASS: u32 = u32::MAX;

/// Map names, shared so that the loader and pinning agree with the kernel object.
pub mod maps {
    pub const CONFIG: &str = "TP_CONFIG";
    pub const PEERS: &str = "TP_PEERS";
    pub const PEER_PREFIXES: &str = "TP_PEER_PREFIXES";
    pub const RULES: &str = "TP_RULES";
    pub const RANGES: &str = "TP_RANGES";
    pub const GUARDS: &str = "TP_GUARDS";
    /// The addresses where guarded ports are guarded (the node's own, the controller pod's),
    /// keyed by `PeerKey` with `dir` = `DIR_INGRESS`; the value is 1.
    pub const GUARD_ADDRS: &str = "TP_GUARD_ADDRS";
    pub const FLOWS: &str = "TP_FLOWS";
    /// One u64, the epoch, bumped after every insert into `FLOWS` (by the datapath or the
    /// agent) and after every write of `CONFIG` (by the agent): a flow denied before either may
    /// be allowed after it, so cached denials (in `TP_SLOTS`) made under an older value are not
    /// trusted. They check nothing else.
    pub const FLOW_EPOCH: &str = "TP_FLOW_EPOCH";
    pub const GATES: &str = "TP_GATES";
    pub const EVENTS: &str = "TP_EVENTS";
    pub const COUNTERS: &str = "TP_COUNTERS";
}

/// Program names in the kernel object.
pub mod programs {
    pub const TC_EGRESS: &str = "tp_tc_egress";
    pub const TC_INGRESS: &str = "tp_tc_ingress";
    pub const XDP_INGRESS: &str = "tp_xdp_ingress";
}

/// Map sizes. Policy maps are sized for two generations of the largest policy we accept.
pub mod limits {
    pub const PEERS: u32 = 524_288;
    pub const PEER_PREFIXES: u32 = 65_536;
    pub const RULES: u32 = 524_288;
    pub const RANGES: u32 = 65_536;
    pub const GUARD_ADDRS: u32 = 1_024;
    pub const FLOWS: u32 = 65_536;
    pub const GATES: u32 = 16_384;
    pub const EVENTS_BYTES: u32 = 1 << 20;
}

const _: () = {
    assert!(size_of::<PeerKey>() == 20);
    assert!(size_of::<PeerInfo>() == 8);
    assert!(size_of::<RuleKey>() == 12);
    assert!(size_of::<RangeKey>() == 10);
    assert!(size_of::<GuardKey>() == 4);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<FlowState>() == 8);
    assert!(size_of::<EventGate>() == 16);
    assert!(size_of::<GateKey>() == 44);
    assert!(size_of::<Config>() == 24);
    assert!(size_of::<Event>() == 64);
};

/// The last of the five flow words the datapath reads straight from a packet's headers (see
/// `flow_words` in the kernel crate): the two transport ports exactly as they sit in the header,
/// the IP protocol above them, the IP family (4 or 6) above that, and above that a TCP
/// segment's ACK flag. A zeroed word has no protocol, so it matches no flow.
///
/// The ACK flag is the one bit of a packet past its flow that a verdict rests on: a segment
/// without it from a protected peer is never a connection of the node's, while one with it may
/// be (the datapath asks the node's sockets). The caches keyed by these words must tell the two
/// apart, or a denied SYN would deny the node's connection on the same ports.
pub mod flow_word {
    pub const PROTO_SHIFT: u32 = 32;
    pub const FAMILY_SHIFT: u32 = 40;
    /// Where the TCP header's ACK flag (0x10 in its flags byte) lands in the word.
    pub const ACK_SHIFT: u32 = 48;
    /// The TCP header's ACK flag in its flags byte.
    pub const TCP_ACK: u8 = 0x10;

    #[inline(always)]
    pub const fn meta(raw_ports: u32, proto: u8, family: u8) -> u64 {
        raw_ports as u64 | (proto as u64) << PROTO_SHIFT | (family as u64) << FAMILY_SHIFT
    }

    #[inline(always)]
    pub const fn proto(meta: u64) -> u8 {
        (meta >> PROTO_SHIFT) as u8
    }

    #[inline(always)]
    pub const fn family(meta: u64) -> u8 {
        (meta >> FAMILY_SHIFT) as u8
    }

    /// A TCP segment's flags byte reduced to the word's ACK bit.
    #[inline(always)]
    pub const fn ack(tcp_flags: u8) -> u64 {
        ((tcp_flags & TCP_ACK) as u64) << (ACK_SHIFT - 4)
    }

    /// The ports as the header holds them (network byte order), source first.
    #[inline(always)]
    pub const fn raw_ports(meta: u64) -> [u8; 4] {
        (meta as u32).to_ne_bytes()
    }
}

/// IPv4-mapped IPv6 form of an IPv4 address (network byte order in, 16 bytes out).
///
/// Built from an integer rather than an array literal: the literal's run of zero bytes makes
/// LLVM call `memset`, whose pointer arithmetic kernels before 6.x reject in BPF.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    ((0xffff_u128 << 32) | u32::from_be_bytes(octets) as u128).to_be_bytes()
}

#[cfg(feature = "user")]
mod pod {
    use super::{
        Config, Event, EventGate, FlowKey, FlowState, GateKey, PeerInfo, PeerKey, RangeKey, RuleKey,
    };
    // SAFETY: #[repr(C)], explicit padding (sizes asserted above), no pointers.
    unsafe impl aya::Pod for PeerKey {}
    // SAFETY: #[repr(C)], explicit padding (sizes asserted above), no pointers.
    unsafe impl aya::Pod for PeerInfo {}
    // SAFETY: #[repr(C)], explicit padding (sizes asserted above), no pointers.
    unsafe impl aya::Pod for RuleKey {}
    // SAFETY: #[repr(C)], explicit padding (sizes asserted above), no pointers.
    unsafe impl aya::Pod for RangeKey {}
    // SAFETY: #[repr(C)], explicit padding (sizes asserted above), no pointers.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: #[repr(C)], explicit padding (sizes asserted above), no pointers.
    unsafe impl aya::Pod for FlowState {}
    // SAFETY: #[repr(C)], explicit padding (sizes asserted above), no pointers.
    unsafe impl aya::Pod for EventGate {}
    // SAFETY: #[repr(C)], explicit padding (sizes asserted above), no pointers.
    unsafe impl aya::Pod for GateKey {}
    // SAFETY: #[repr(C)], explicit padding (sizes asserted above), no pointers.
    unsafe impl aya::Pod for Config {}
    // SAFETY: #[repr(C)], explicit padding (sizes asserted above), no pointers.
    unsafe impl aya::Pod for Event {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    #[test]
    fn flow_words_unpack_what_they_pack() {
        use super::flow_word::*;
        let ports = u32::from_ne_bytes([0x9c, 0x40, 0x08, 0x01]); // 40000 -> 2049, as on the wire
        let m = meta(ports, super::PROTO_TCP, 6);
        assert_eq!(proto(m), super::PROTO_TCP);
        assert_eq!(family(m), 6);
        assert_eq!(raw_ports(m), [0x9c, 0x40, 0x08, 0x01]);
        assert_eq!(proto(0), 0, "a zeroed word has no protocol");
        // The ACK bit is a bit of its own: it changes the word, and nothing read from it.
        let acked = m | ack(0x10 | 0x02);
        assert_ne!(acked, m);
        assert_eq!(ack(0x02 | 0x04 | 0x01), 0, "SYN, RST, FIN are not ACK");
        assert_eq!(
            (proto(acked), family(acked), raw_ports(acked)),
            (proto(m), family(m), raw_ports(m))
        );
    }

    #[test]
    fn recent_denials_fold_into_the_four_counters_they_stand_for() {
        use super::{counter::*, reason};
        let mut block = [0u64; COUNT as usize];
        block[DENIED as usize] = 1;
        block[recent_denial(false, reason::NO_RULE) as usize] = 3;
        block[recent_denial(true, reason::UNSOLICITED) as usize] = 5;
        fold_recent_denials(&mut block);
        let at = |c: u32| block[c as usize];
        assert_eq!((at(DENIED), at(AUDITED)), (4, 5));
        assert_eq!(at(REASON_BASE + u32::from(reason::NO_RULE)), 3);
        assert_eq!(at(REASON_BASE + u32::from(reason::UNSOLICITED)), 5);
        assert_eq!((at(RECENT_DENIAL), at(EVENTS_SUPPRESSED)), (8, 8));
        assert_eq!(
            block.iter().sum::<u64>(),
            1 + 3 * 4 + 5 * 4,
            "nothing else moved, and the kernel's own counters were emptied"
        );
        // Every verdict and reason has a counter of its own, inside the block.
        let mut all: std::vec::Vec<u32> = (0..=reason::MAX)
            .flat_map(|r| [recent_denial(false, r), recent_denial(true, r)])
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 2 * (usize::from(reason::MAX) + 1));
        assert!(
            all.iter()
                .all(|&c| c > REASON_BASE + u32::from(reason::MAX) && c < COUNT)
        );
    }

    #[test]
    fn v4_mapped_matches_the_standard_library() {
        let a = std::net::Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(super::v4_mapped(a.octets()), a.to_ipv6_mapped().octets());
    }
}
