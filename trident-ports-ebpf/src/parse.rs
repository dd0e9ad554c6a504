//! Header parsing: Ethernet (up to two 802.1Q/802.1ad tags), IPv4, IPv6 with a bounded walk of
//! extension headers, TCP, UDP, ICMP and ICMPv6 (with the flow an error message quotes).
//!
//! The result is one flat, always fully initialised record written in place: BPF calls cannot
//! return aggregates, the stack is 512 bytes, and copying an enum whose payload bytes are
//! undefined makes LLVM emit reads of unset registers that the verifier rejects.
use trident_ports_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, flow_word, v4_mapped};

use crate::packet::Packet;

/// Reads a `$t` at `$off`, or evaluates `$fail` (a `return`) when the frame is shorter.
macro_rules! read {
    ($pkt:expr, $t:ty, $off:expr, $fail:expr) => {{
        let (ok, v) = $pkt.read::<$t>($off);
        if !ok {
            $fail
        }
        v
    }};
}

const ETH_HLEN: usize = 14;
/// The ethertype's offset: the last two bytes of the Ethernet header.
const ETH_TYPE: usize = 12;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const MAX_VLAN_TAGS: usize = 2;
const MAX_IPV6_EXT: usize = 8;

/// IPv4 header fields (RFC 791), as offsets from the header's start.
const IPV4_FRAG: usize = 6;
const IPV4_PROTO: usize = 9;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const IPV4_MIN_HLEN: usize = 20;
/// Version 4 with a 5-word header: no options.
const IPV4_VIHL_NO_OPTIONS: u8 = 0x45;
/// The fragment offset: the low 13 bits of the flags-and-offset word.
const IPV4_FRAG_OFFSET: u16 = 0x1fff;

/// IPv6 header fields (RFC 8200).
const IPV6_NEXT: usize = 6;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
const IPV6_HLEN: usize = 40;
/// Extension headers the walk steps over (IANA protocol numbers).
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// TCP's flags byte, and the header length up to and including it.
const TCP_FLAGS: usize = 13;
const TCP_THROUGH_FLAGS: usize = 14;
/// ICMP and ICMPv6 headers are 8 bytes before the quoted packet of an error.
const ICMP_HLEN: usize = 8;

/// What follows the IP header.
pub(crate) mod kind {
    /// TCP or UDP with both ports.
    pub(crate) const PORTS: u8 = 0;
    /// A fragment other than the first: it carries no transport header.
    pub(crate) const LATER_FRAGMENT: u8 = 1;
    /// Addresses are known but the transport header is cut short or the header chain is invalid.
    pub(crate) const TRUNCATED: u8 = 2;
    /// ICMP/ICMPv6 that is left alone: echo, neighbour and router discovery, MLD.
    pub(crate) const ICMP_INFORMATIONAL: u8 = 3;
    /// ICMP/ICMPv6 error quoting a TCP or UDP flow (the `q_*` fields).
    pub(crate) const ICMP_ERROR: u8 = 4;
    /// Any other ICMP type (redirects among them), or an error whose quote cannot be read.
    pub(crate) const ICMP_OTHER: u8 = 5;
    /// Any other IP protocol.
    pub(crate) const OTHER: u8 = 6;
}

/// Aligned so that address copies are word stores, not `memcpy`/`memset` calls.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct Parsed {
    pub src: Addr,
    pub dst: Addr,
    /// The packet an ICMP error quotes, as that packet was sent.
    pub q_src: Addr,
    pub q_dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub q_sport: u16,
    pub q_dport: u16,
    pub family: u8,
    pub proto: u8,
    pub kind: u8,
    pub tcp_flags: u8,
    pub q_proto: u8,
    /// Which per-CPU caches this packet's verdict goes to (`verdict::caches`), kept here rather
    /// than in a register: see `verdict::decide`.
    pub caches: u8,
    pub _pad: [u8; 2],
}

/// Fills `out` as `parse` would for a packet whose `flow_words` were found: the common shapes
/// need no further header reads but the TCP flags.
#[inline(always)]
pub(crate) fn common<P: Packet>(pkt: &P, words: &[u64; 5], out: &mut Parsed) {
    let meta = words[4];
    out.proto = flow_word::proto(meta);
    (out.sport, out.dport) = ports(meta);
    (out.src, out.dst) = addresses(words);
    let l4 = if flow_word::family(meta) == 4 {
        out.family = 4;
        ETH_HLEN + IPV4_MIN_HLEN
    } else {
        out.family = 6;
        ETH_HLEN + IPV6_HLEN
    };
    out.tcp_flags = 0;
    if out.proto == PROTO_TCP {
        // `flow_words` checked this bound; the verifier needs to see it again here.
        let (data, end) = pkt.direct();
        if data + l4 + TCP_THROUGH_FLAGS <= end {
            out.tcp_flags = load::<u8>(data + l4 + TCP_FLAGS);
        }
    }
    out.kind = kind::PORTS;
}

/// An address (IPv4 mapped into IPv6), aligned to a word. A key built from a bare `&[u8; 16]`
/// (alignment 1) is copied byte by byte, since BPF has no unaligned loads: 32 instructions a
/// key, where this takes 8.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct Addr(pub [u8; 16]);

/// The source and destination that `flow_words` packed, an IPv4 pair mapped into IPv6.
#[inline(always)]
pub(crate) fn addresses(words: &[u64; 5]) -> (Addr, Addr) {
    if flow_word::family(words[4]) == 4 {
        let a = words[0].to_ne_bytes();
        (
            Addr(v4_mapped([a[0], a[1], a[2], a[3]])),
            Addr(v4_mapped([a[4], a[5], a[6], a[7]])),
        )
    } else {
        // SAFETY: two u64s and sixteen bytes have the same size and no invalid values.
        let src = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([words[0], words[1]]) };
        // SAFETY: as above.
        let dst = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([words[2], words[3]]) };
        (Addr(src), Addr(dst))
    }
}

/// The source and destination ports that `flow_words` packed.
#[inline(always)]
pub(crate) fn ports(meta: u64) -> (u16, u16) {
    let p = flow_word::raw_ports(meta);
    (
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    )
}

/// The word's ACK bit of the transport header at `l4` (see `flow_word`): a TCP segment's, none
/// for UDP, whose byte there is payload. The caller has checked the bytes through the flags.
#[inline(always)]
fn ack_bit(l4: usize, proto: u8) -> u64 {
    if proto == PROTO_TCP {
        flow_word::ack(load::<u8>(l4 + TCP_FLAGS))
    } else {
        0
    }
}

/// The shapes nearly all storage traffic has, read straight from the packet at fixed offsets
/// behind one bounds check: untagged Ethernet, then IPv4 without options that is not a later
/// fragment, or IPv6 whose next header is TCP or UDP, then TCP or UDP (and at least as many
/// bytes as a TCP header up to its flags). Returns the flow as five words taken from the headers
/// without conversion: the addresses, then ports, protocol, family and a TCP segment's ACK flag.
/// Two packets have equal words exactly when they belong to the same flow in the same direction
/// and, for TCP, both carry ACK or neither does. False for any other
/// shape, or headers not all in the directly readable bytes: `parse` reads those with a helper
/// call per field.
#[inline(always)]
pub(crate) fn flow_words<P: Packet>(pkt: &P) -> (bool, [u64; 5]) {
    let (data, end) = pkt.direct();
    let none = (false, [0; 5]);
    if data + ETH_HLEN + IPV4_MIN_HLEN + TCP_THROUGH_FLAGS > end {
        return none;
    }
    let ethertype = load::<u16>(data + ETH_TYPE);
    let ip = data + ETH_HLEN;
    if ethertype == ETH_P_IP.to_be() {
        // No options, and not a later fragment (big-endian loads, so the constants are too).
        if load::<u8>(ip) != IPV4_VIHL_NO_OPTIONS
            || load::<u16>(ip + IPV4_FRAG) & IPV4_FRAG_OFFSET.to_be() != 0
        {
            return none;
        }
        let proto = load::<u8>(ip + IPV4_PROTO);
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return none;
        }
        // Source and destination are adjacent: one word holds both.
        let addrs = load::<u64>(ip + IPV4_SRC);
        let ports = load::<u32>(ip + IPV4_MIN_HLEN);
        let ack = ack_bit(ip + IPV4_MIN_HLEN, proto);
        (
            true,
            [addrs, 0, 0, 0, flow_word::meta(ports, proto, 4) | ack],
        )
    } else if ethertype == ETH_P_IPV6.to_be() {
        if data + ETH_HLEN + IPV6_HLEN + TCP_THROUGH_FLAGS > end {
            return none;
        }
        let proto = load::<u8>(ip + IPV6_NEXT);
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return none;
        }
        // Source and destination are adjacent: four words hold both.
        let a = load::<[u64; 4]>(ip + IPV6_SRC);
        let ports = load::<u32>(ip + IPV6_HLEN);
        let ack = ack_bit(ip + IPV6_HLEN, proto);
        (
            true,
            [
                a[0],
                a[1],
                a[2],
                a[3],
                flow_word::meta(ports, proto, 6) | ack,
            ],
        )
    } else {
        none
    }
}

/// A load from packet memory that the caller has bounds-checked. Word-sized: the x86-64 and arm64
/// JITs load packet data at any alignment, where a byte-wise read would cost a load per byte.
#[inline(always)]
fn load<T: Copy>(addr: usize) -> T {
    // SAFETY: callers read only inside the range their bounds check proved.
    unsafe { core::ptr::read(addr as *const T) }
}

/// Fills `out` (which starts zeroed) and returns true; false when the frame is not IPv4/IPv6 or
/// too short to hold the IP addresses (the IP layer discards the latter itself, and without
/// addresses there is no peer to protect).
#[inline(always)]
pub(crate) fn parse<P: Packet>(pkt: &P, out: &mut Parsed) -> bool {
    let mut off = ETH_TYPE;
    let mut ethertype = u16::from_be(read!(pkt, u16, off, return false));
    off += 2;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // A tag is 2 bytes of TCI followed by the next ethertype.
        ethertype = u16::from_be(read!(pkt, u16, off + 2, return false));
        off += 4;
    }
    out.kind = kind::TRUNCATED;
    match ethertype {
        ETH_P_IP => parse_ipv4(pkt, off, out),
        ETH_P_IPV6 => parse_ipv6(pkt, off, out),
        _ => false,
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet>(pkt: &P, off: usize, out: &mut Parsed) -> bool {
    let vihl = read!(pkt, u8, off, return false);
    let proto = read!(pkt, u8, off + IPV4_PROTO, return false);
    let src = read!(pkt, [u8; 4], off + IPV4_SRC, return false);
    let dst = read!(pkt, [u8; 4], off + IPV4_DST, return false);
    out.family = 4;
    out.src = Addr(v4_mapped(src));
    out.dst = Addr(v4_mapped(dst));
    out.proto = proto;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return true;
    }
    let frag = read!(pkt, u16, off + IPV4_FRAG, return true);
    if u16::from_be(frag) & IPV4_FRAG_OFFSET != 0 {
        out.kind = kind::LATER_FRAGMENT;
        return true;
    }
    parse_l4(pkt, off + ihl, out);
    true
}

#[inline(always)]
fn parse_ipv6<P: Packet>(pkt: &P, off: usize, out: &mut Parsed) -> bool {
    if !(pkt.read_into(off + IPV6_SRC, &mut out.src) && pkt.read_into(off + IPV6_DST, &mut out.dst))
    {
        return false;
    }
    out.family = 6;
    let mut next = read!(pkt, u8, off + IPV6_NEXT, return true);
    let mut cur = off + IPV6_HLEN;
    let mut found = false;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let hdr = read!(pkt, [u8; 2], cur, return true);
                next = hdr[0];
                cur += (hdr[1] as usize + 1) * 8;
            }
            // Fragment header: 8 bytes; offset in the upper 13 bits of bytes 2..4.
            IPPROTO_FRAGMENT => {
                let hdr = read!(pkt, [u8; 4], cur, return true);
                next = hdr[0];
                if u16::from_be_bytes([hdr[2], hdr[3]]) >> 3 != 0 {
                    out.proto = next;
                    out.kind = kind::LATER_FRAGMENT;
                    return true;
                }
                cur += 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            IPPROTO_AH => {
                let hdr = read!(pkt, [u8; 2], cur, return true);
                next = hdr[0];
                cur += (hdr[1] as usize + 2) * 4;
            }
            _ => {
                found = true;
                break;
            }
        }
    }
    out.proto = next;
    // A chain longer than we walk stays TRUNCATED: a defined verdict.
    if found {
        parse_l4(pkt, cur, out);
    }
    true
}

#[inline(always)]
fn parse_l4<P: Packet>(pkt: &P, off: usize, out: &mut Parsed) {
    match out.proto {
        PROTO_TCP => {
            let (ok_ports, p) = pkt.read::<[u8; 4]>(off);
            let (ok_flags, flags) = pkt.read::<u8>(off + TCP_FLAGS);
            if ok_ports && ok_flags {
                out.sport = u16::from_be_bytes([p[0], p[1]]);
                out.dport = u16::from_be_bytes([p[2], p[3]]);
                out.tcp_flags = flags;
                out.kind = kind::PORTS;
            }
        }
        PROTO_UDP => {
            let (ok, p) = pkt.read::<[u8; 4]>(off);
            if ok {
                out.sport = u16::from_be_bytes([p[0], p[1]]);
                out.dport = u16::from_be_bytes([p[2], p[3]]);
                out.kind = kind::PORTS;
            }
        }
        PROTO_ICMP if out.family == 4 => parse_icmp(pkt, off, false, out),
        PROTO_ICMPV6 if out.family == 6 => parse_icmp(pkt, off, true, out),
        _ => out.kind = kind::OTHER,
    }
}

#[inline(always)]
fn parse_icmp<P: Packet>(pkt: &P, off: usize, v6: bool, out: &mut Parsed) {
    let ty = read!(pkt, u8, off, return);
    let (informational, error) = if v6 {
        // 1-4: errors; 128/129 echo; 130-137 MLD, router/neighbour discovery; 143 MLDv2.
        (matches!(ty, 128..=137 | 143), matches!(ty, 1..=4))
    } else {
        // 0/8 echo; 3 unreachable, 11 time exceeded, 12 parameter problem.
        (matches!(ty, 0 | 8), matches!(ty, 3 | 11 | 12))
    };
    out.kind = if informational {
        kind::ICMP_INFORMATIONAL
    } else if error && parse_quoted(pkt, off + ICMP_HLEN, v6, out) {
        kind::ICMP_ERROR
    } else {
        kind::ICMP_OTHER
    };
}

/// The quoted header of an ICMP error: the IP header and at least 8 bytes of what followed.
#[inline(always)]
fn parse_quoted<P: Packet>(pkt: &P, off: usize, v6: bool, out: &mut Parsed) -> bool {
    let l4off;
    if v6 {
        if !(pkt.read_into(off + IPV6_SRC, &mut out.q_src)
            && pkt.read_into(off + IPV6_DST, &mut out.q_dst))
        {
            return false;
        }
        out.q_proto = read!(pkt, u8, off + IPV6_NEXT, return false);
        l4off = off + IPV6_HLEN;
    } else {
        let vihl = read!(pkt, u8, off, return false);
        let src = read!(pkt, [u8; 4], off + IPV4_SRC, return false);
        let dst = read!(pkt, [u8; 4], off + IPV4_DST, return false);
        let proto = read!(pkt, u8, off + IPV4_PROTO, return false);
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < IPV4_MIN_HLEN {
            return false;
        }
        out.q_src = Addr(v4_mapped(src));
        out.q_dst = Addr(v4_mapped(dst));
        out.q_proto = proto;
        l4off = off + ihl;
    }
    if out.q_proto != PROTO_TCP && out.q_proto != PROTO_UDP {
        return false;
    }
    let p = read!(pkt, [u8; 4], l4off, return false);
    out.q_sport = u16::from_be_bytes([p[0], p[1]]);
    out.q_dport = u16::from_be_bytes([p[2], p[3]]);
    true
}
