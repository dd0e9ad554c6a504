//! A packet as the generator means it (`Spec`), the frame built from it, and where each field
//! landed (`Layout`): the reference model judges from the spec and the layout, never from the
//! bytes, so that it shares no code with the datapath's parser.
use std::net::IpAddr;

use crate::packet::{ICMP, ICMPV6, TCP, UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    TcEgress,
    TcIngress,
    XdpIngress,
}

impl Prog {
    pub fn egress(self) -> bool {
        self == Prog::TcEgress
    }
}

#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop (0), routing (43) or destination options (60): `(units + 1) * 8` bytes.
    Options {
        kind: u8,
        units: u8,
    },
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Authentication header: `(units + 2) * 4` bytes.
    Auth {
        units: u8,
    },
}

impl Ext {
    fn number(&self) -> u8 {
        match self {
            Ext::Options { kind, .. } => *kind,
            Ext::Fragment { .. } => 44,
            Ext::Auth { .. } => 51,
        }
    }
}

/// The flow an ICMP error quotes, as that packet was sent.
#[derive(Clone, Debug)]
pub struct Quote {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 header words of the quoted header (5 = no options; below 5 is malformed).
    pub ihl: u8,
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: usize,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: usize,
    },
    Icmp {
        ty: u8,
        quote: Option<Quote>,
    },
    /// Any other protocol number, with `len` bytes of payload.
    Other {
        proto: u8,
        len: usize,
    },
}

impl L4 {
    pub fn proto(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => TCP,
            L4::Udp { .. } => UDP,
            L4::Icmp { .. } if v6 => ICMPV6,
            L4::Icmp { .. } => ICMP,
            L4::Other { proto, .. } => *proto,
        }
    }
}

#[derive(Clone, Debug)]
pub enum L3 {
    NotIp {
        ethertype: u16,
        len: usize,
    },
    V4 {
        src: IpAddr,
        dst: IpAddr,
        /// Header words (5 = no options); the version nibble is `version`.
        ihl: u8,
        version: u8,
        /// Flags and fragment offset (0x2000 = more fragments).
        frag: u16,
        /// The protocol byte (normally `l4.proto()`, sometimes ICMPv6 over IPv4).
        proto: u8,
        l4: L4,
    },
    V6 {
        src: IpAddr,
        dst: IpAddr,
        ext: Vec<Ext>,
        l4: L4,
    },
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub prog: Prog,
    /// 802.1Q/802.1ad tags before the ethertype (3 is more than the datapath walks).
    pub tags: u8,
    pub l3: L3,
    /// The frame is cut to this many bytes (never below the 14 of an Ethernet header).
    pub cut: Option<usize>,
}

/// Where fields are in the built frame: `(offset, length)`.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub len: usize,
    /// The ethertype after the tags.
    pub ethertype: (usize, usize),
    /// For each tag, where the next ethertype is.
    pub tags: Vec<(usize, usize)>,
    pub ip: usize,
    /// The transport header (after IPv4 options or IPv6 extension headers).
    pub l4: usize,
    /// IPv6 extension headers: where each is and how many bytes of it the walk reads.
    pub ext: Vec<(usize, usize)>,
    /// The ICMP error's quoted IP header.
    pub quote: usize,
    /// The quoted transport header.
    pub quote_l4: usize,
}

impl Layout {
    /// All of `(offset, length)` is in the frame.
    pub fn has(&self, (off, n): (usize, usize)) -> bool {
        off + n <= self.len
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn l4_bytes(l4: &L4, v6: bool, layout: &mut Layout, base: usize) -> Vec<u8> {
    match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            payload,
        } => {
            let mut h = crate::packet::tcp(*sport, *dport, *flags);
            h.resize(20 + payload, 0xab);
            h
        }
        L4::Udp {
            sport,
            dport,
            payload,
        } => {
            let mut h = crate::packet::udp(*sport, *dport);
            h.resize(8 + payload, 0xcd);
            h
        }
        L4::Icmp { ty, quote } => {
            let mut h = vec![*ty, 0, 0, 0, 0, 0, 0, 0];
            if let Some(q) = quote {
                layout.quote = base + 8;
                let mut qh: Vec<u8>;
                match (q.src, q.dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) if !v6 => {
                        // At least the 20 bytes with the addresses; a header that says it is
                        // shorter is malformed, and the datapath reads no ports behind it.
                        let bytes = (q.ihl as usize * 4).max(20);
                        qh = vec![0u8; bytes];
                        qh[0] = 0x40 | (q.ihl & 0x0f);
                        qh[9] = q.proto;
                        qh[12..16].copy_from_slice(&s.octets());
                        qh[16..20].copy_from_slice(&d.octets());
                        layout.quote_l4 = layout.quote + q.ihl as usize * 4;
                    }
                    (s, d) => {
                        qh = vec![0u8; 40];
                        qh[0] = 0x60;
                        qh[6] = q.proto;
                        qh[8..24].copy_from_slice(&addr_bytes(s));
                        qh[24..40].copy_from_slice(&addr_bytes(d));
                        layout.quote_l4 = layout.quote + 40;
                    }
                }
                qh.extend_from_slice(&q.sport.to_be_bytes());
                qh.extend_from_slice(&q.dport.to_be_bytes());
                qh.extend_from_slice(&[0u8; 4]);
                h.extend_from_slice(&qh);
            }
            h
        }
        L4::Other { len, .. } => vec![0x5a; *len],
    }
}

/// The frame for `spec`, and where its fields are.
pub fn build(spec: &Spec) -> (Vec<u8>, Layout) {
    let mut layout = Layout::default();
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    let ethertype = match &spec.l3 {
        L3::NotIp { ethertype, .. } => *ethertype,
        L3::V4 { .. } => 0x0800,
        L3::V6 { .. } => 0x86dd,
    };
    for i in 0..spec.tags {
        let tpid: u16 = if i % 2 == 0 { 0x8100 } else { 0x88a8 };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + u16::from(i)).to_be_bytes());
        // The next ethertype is read 2 bytes after this tag's TPID.
        layout.tags.push((f.len(), 2));
    }
    layout.ethertype = (12, 2);
    f.extend_from_slice(&ethertype.to_be_bytes());
    // With tags, the ethertype the walk ends on is the last 2 bytes before the payload.
    if let Some(last) = layout.tags.last_mut() {
        *last = (f.len() - 2, 2);
    }
    let ip = f.len();
    layout.ip = ip;
    match &spec.l3 {
        L3::NotIp { len, .. } => f.extend(std::iter::repeat_n(0x11, *len)),
        L3::V4 {
            src,
            dst,
            ihl,
            version,
            frag,
            proto,
            l4,
        } => {
            let words = (*ihl).max(5) as usize;
            let mut h = vec![0u8; words * 4];
            h[0] = (version << 4) | (ihl & 0x0f);
            h[6..8].copy_from_slice(&frag.to_be_bytes());
            h[8] = 64;
            h[9] = *proto;
            h[12..16].copy_from_slice(&addr_bytes(*src));
            h[16..20].copy_from_slice(&addr_bytes(*dst));
            layout.l4 = ip + (*ihl as usize) * 4;
            let body = l4_bytes(l4, false, &mut layout, ip + words * 4);
            h.extend_from_slice(&body);
            let total = h.len() as u16;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&h);
        }
        L3::V6 { src, dst, ext, l4 } => {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[6] = ext.first().map_or_else(|| l4.proto(true), Ext::number);
            h[7] = 64;
            h[8..24].copy_from_slice(&addr_bytes(*src));
            h[24..40].copy_from_slice(&addr_bytes(*dst));
            for (i, e) in ext.iter().enumerate() {
                let next = ext.get(i + 1).map_or_else(|| l4.proto(true), Ext::number);
                let at = ip + h.len();
                let bytes = match e {
                    Ext::Options { units, .. } => {
                        layout.ext.push((at, 2));
                        let mut b = crate::packet::ext(next, *units);
                        b[0] = next;
                        b
                    }
                    Ext::Fragment { offset, more } => {
                        layout.ext.push((at, 4));
                        crate::packet::frag6(next, *offset, *more)
                    }
                    Ext::Auth { units } => {
                        layout.ext.push((at, 2));
                        let mut b = vec![0u8; (*units as usize + 2) * 4];
                        b[0] = next;
                        b[1] = *units;
                        b
                    }
                };
                h.extend_from_slice(&bytes);
            }
            layout.l4 = ip + h.len();
            let at = layout.l4;
            let body = l4_bytes(l4, true, &mut layout, at);
            h.extend_from_slice(&body);
            let payload = (h.len() - 40) as u16;
            h[4..6].copy_from_slice(&payload.to_be_bytes());
            f.extend_from_slice(&h);
        }
    }
    if let Some(n) = spec.cut {
        f.truncate(n.max(14));
    }
    layout.len = f.len();
    (f, layout)
}
