//! Turns a [`Policy`] into the contents of the kernel maps for one generation.
//!
//! Addresses are grouped into classes: every address or prefix whose effective rules are the
//! same shares one class, so 100,000 storage addresses with the same ports cost 100,000 peer
//! entries and one set of rules. An address inside a wider prefix inherits the wider prefix's
//! rules, because the kernel only sees the longest match.
use std::collections::BTreeSet;

use ipnet::IpNet;
use trident_ports_common::{
    DIR_EGRESS, DIR_INGRESS, GuardKey, PEER_KEY_HEADER_BITS, PEER_PROTECTED, PeerInfo, PeerKey,
    RANGE_KEY_HEADER_BITS, RangeKey, RuleKey, table_peer_prefixes, table_ranges,
};

use crate::policy::{Direction, Policy, PortRange, Proto};

/// A prefix in the kernel's address space: 16 bytes, IPv4 mapped into `::ffff:0:0/96`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: [u8; 16],
    pub len: u8,
}

impl Prefix {
    pub fn from_net(net: &IpNet) -> Self {
        // Nearly every entry is a host, which has nothing to truncate.
        let net = if net.prefix_len() == net.max_prefix_len() {
            *net
        } else {
            net.trunc()
        };
        match net {
            IpNet::V4(n) => Prefix {
                addr: n.addr().to_ipv6_mapped().octets(),
                len: 96 + n.prefix_len(),
            },
            IpNet::V6(n) => Prefix {
                addr: n.addr().octets(),
                len: n.prefix_len(),
            },
        }
    }

    pub(super) fn contains(&self, other: &Prefix) -> bool {
        if other.len < self.len {
            return false;
        }
        let a = u128::from_be_bytes(self.addr);
        let b = u128::from_be_bytes(other.addr);
        let mask = if self.len == 0 {
            0
        } else {
            u128::MAX << (128 - self.len as u32)
        };
        a & mask == b & mask
    }
}

/// Everything the kernel needs for one generation of a policy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tables {
    pub peers: Vec<(PeerKey, PeerInfo)>,
    /// (LPM prefix length in bits, key, value).
    pub prefixes: Vec<(u32, PeerKey, PeerInfo)>,
    pub rules: Vec<RuleKey>,
    pub ranges: Vec<(u32, RangeKey)>,
    pub guards: Vec<GuardKey>,
    /// Where the guards apply (`PeerKey` with `dir` = ingress).
    pub guard_addrs: Vec<PeerKey>,
}

impl Tables {
    /// The `Config::tables` bits for these tables.
    pub fn present(&self) -> u8 {
        let prefixes = self
            .prefixes
            .iter()
            .map(|(_, k, _)| table_peer_prefixes(k.dir));
        let ranges = self.ranges.iter().map(|(_, k)| table_ranges(k.dir));
        prefixes.chain(ranges).fold(0, |bits, b| bits | b)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
            + self.prefixes.len()
            + self.rules.len()
            + self.ranges.len()
            + self.guards.len()
            + self.guard_addrs.len()
    }

    /// The same tables for the other generation.
    pub fn set_generation(&mut self, generation: u8) {
        for (k, _) in &mut self.peers {
            k.generation = generation;
        }
        for (_, k, _) in &mut self.prefixes {
            k.generation = generation;
        }
        for k in &mut self.rules {
            k.generation = generation;
        }
        for (_, k) in &mut self.ranges {
            k.generation = generation;
        }
        for k in &mut self.guards {
            k.generation = generation;
        }
        for k in &mut self.guard_addrs {
            k.generation = generation;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::Egress => DIR_EGRESS,
        Direction::Ingress => DIR_INGRESS,
    }
}

pub fn compile(policy: &Policy, generation: u8) -> Tables {
    let mut t = Tables::default();
    for dir in [Direction::Egress, Direction::Ingress] {
        compile_direction(policy, dir, generation, &mut t);
    }
    (t.guards, t.guard_addrs) = guard_keys(policy, generation);
    t
}

/// The guarded ports and the addresses where they are guarded, for `generation`.
pub(super) fn guard_keys(policy: &Policy, generation: u8) -> (Vec<GuardKey>, Vec<PeerKey>) {
    let guards: BTreeSet<(Proto, u16)> = policy.guarded.iter().map(|g| (g.proto, g.port)).collect();
    let guards = guards
        .into_iter()
        .map(|(proto, port)| GuardKey {
            generation,
            proto: proto.number(),
            port,
        })
        .collect();
    let addrs = policy
        .guard_addresses
        .iter()
        .filter(|a| a.prefix_len() == a.max_prefix_len())
        .map(|a| PeerKey {
            generation,
            dir: DIR_INGRESS,
            _pad: [0; 2],
            addr: Prefix::from_net(a).addr,
        })
        .collect();
    (guards, addrs)
}

/// One item of a peer's grant: (prefix, protocol number or [`PROTECTED`], ports). Sorted, a
/// peer's items are one run with its protection first, and the run without the prefix is the
/// peer's grant as a class is known by.
type Item = (Prefix, u8, u16, u16);

/// The protocol of the item that marks a peer protected.
const PROTECTED: u8 = 0;

/// A grant: (protocol number or [`PROTECTED`], ports), sorted.
type Grant = Vec<(u8, u16, u16)>;

type FxBuild = std::hash::BuildHasherDefault<super::incremental::Fx>;

fn grant_item(&(_, proto, from, to): &Item) -> (u8, u16, u16) {
    (proto, from, to)
}

fn compile_direction(policy: &Policy, dir: Direction, generation: u8, t: &mut Tables) {
    let d = dir_code(dir);
    let own = policy.entries.iter().filter(|e| e.direction == dir);
    let mut items: Vec<Item> = own
        .map(|e| {
            let p = Prefix::from_net(&e.peer);
            (p, e.proto.number(), e.ports.from, e.ports.to)
        })
        .collect();
    // Protected addresses are policed both ways: to them on egress, from them on ingress. Every
    // egress destination is one: the node only opens ports towards storage and directory servers.
    for net in policy.protected_nets() {
        items.push((Prefix::from_net(&net), PROTECTED, 0, 0));
    }
    // Sorting, not a map of sets: at 100,000 entries the sets' allocations were most of it.
    items.sort_unstable();
    items.dedup();
    let runs: Vec<&[Item]> = items.chunk_by(|a, b| a.0 == b.0).collect();
    // Inherit from every wider prefix. Wide prefixes are few (subnets, cluster CIDRs), so this is
    // the number of peers times the number of subnets.
    let wide: Vec<&[Item]> = runs.iter().filter(|r| r[0].0.len < 128).copied().collect();
    let mut classes: std::collections::HashMap<Grant, u32, FxBuild> =
        std::collections::HashMap::default();
    let mut grants: Vec<Grant> = Vec::new();
    let mut merged: Grant = Vec::new();
    for run in &runs {
        let prefix = run[0].0;
        merged.clear();
        merged.extend(run.iter().map(grant_item));
        let mut inherits = false;
        for w in wide
            .iter()
            .filter(|w| w[0].0 != prefix && w[0].0.contains(&prefix))
        {
            merged.extend(w.iter().map(grant_item));
            inherits = true;
        }
        if inherits {
            merged.sort_unstable();
            merged.dedup();
        }
        let class = if let Some(c) = classes.get(merged.as_slice()) {
            *c
        } else {
            let c = grants.len() as u32;
            classes.insert(merged.clone(), c);
            grants.push(merged.clone());
            c
        };
        let key = PeerKey {
            generation,
            dir: d,
            _pad: [0; 2],
            addr: prefix.addr,
        };
        let protected = merged.first().is_some_and(|i| i.0 == PROTECTED);
        let info = PeerInfo {
            class,
            flags: if protected { PEER_PROTECTED } else { 0 },
        };
        if prefix.len == 128 {
            t.peers.push((key, info));
        } else {
            t.prefixes
                .push((PEER_KEY_HEADER_BITS + prefix.len as u32, key, info));
        }
    }
    for (class, grant) in grants.iter().enumerate() {
        let rules = grant
            .iter()
            .filter(|i| i.0 != PROTECTED)
            .map(|(p, from, to)| {
                (
                    *p,
                    PortRange {
                        from: *from,
                        to: *to,
                    },
                )
            });
        class_keys(
            d,
            class as u32,
            generation,
            rules,
            &mut t.rules,
            &mut t.ranges,
        );
    }
}

/// Appends the map keys of class `class` in direction `dir`, which allows `rules` ((protocol
/// number, ports)): a rule for a single port, aligned port blocks for a range. The one place
/// a class's keys are made, so a class written whole and one written later match key for key.
pub(super) fn class_keys(
    dir: u8,
    class: u32,
    generation: u8,
    rules: impl IntoIterator<Item = (u8, PortRange)>,
    out_rules: &mut Vec<RuleKey>,
    out_ranges: &mut Vec<(u32, RangeKey)>,
) {
    let first_range = out_ranges.len();
    for (proto, ports) in rules {
        if ports.from == ports.to {
            out_rules.push(RuleKey {
                generation,
                dir,
                proto,
                _pad: 0,
                class,
                port: ports.from,
                _pad2: [0; 2],
            });
            continue;
        }
        for (start, bits) in port_blocks(ports) {
            out_ranges.push((
                RANGE_KEY_HEADER_BITS + bits as u32,
                RangeKey {
                    generation,
                    dir,
                    proto,
                    _pad: 0,
                    class_be: class.to_be_bytes(),
                    port_be: start.to_be_bytes(),
                },
            ));
        }
    }
    // Overlapping ranges share blocks: the map holds each once, and deleting one twice fails.
    let mut mine = out_ranges.split_off(first_range);
    mine.sort_unstable_by_key(|(bits, k)| (*bits, k.proto, k.port_be));
    mine.dedup();
    out_ranges.append(&mut mine);
}

/// Splits an inclusive port range into aligned power-of-two blocks: (first port, prefix bits).
/// At most 30 blocks for any range of 16-bit ports.
pub fn port_blocks(r: PortRange) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut cur = r.from as u32;
    let end = r.to as u32;
    while cur <= end {
        let mut size: u32 = if cur == 0 {
            1 << 16
        } else {
            cur & cur.wrapping_neg()
        };
        while cur + size - 1 > end {
            size >>= 1;
        }
        out.push((cur as u16, 16 - size.trailing_zeros() as u8));
        cur += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Entry, Protected};

    fn egress(dst: &str, ports: PortRange, proto: Proto) -> Entry {
        Entry {
            direction: Direction::Egress,
            peer: dst.parse().unwrap(),
            ports,
            proto,
            purpose: "".into(),
            backend: None,
            source: "".into(),
        }
    }

    fn covered(blocks: &[(u16, u8)]) -> Vec<u16> {
        let mut v = Vec::new();
        for &(start, bits) in blocks {
            let size = 1u32 << (16 - bits);
            for p in start as u32..start as u32 + size {
                v.push(p as u16);
            }
        }
        v
    }

    #[test]
    fn port_blocks_cover_exactly_the_range() {
        for (a, b) in [
            (1, 1),
            (1024, 65535),
            (4045, 4049),
            (1, 65535),
            (0, 65535),
            (8000, 8001),
            (3, 17),
        ] {
            let blocks = port_blocks(PortRange { from: a, to: b });
            assert!(blocks.len() <= 32, "{a}-{b}: {} blocks", blocks.len());
            let got = covered(&blocks);
            let want: Vec<u16> = (a..=b).collect();
            assert_eq!(got, want, "{a}-{b}");
        }
    }

    #[test]
    fn addresses_with_equal_rules_share_a_class() {
        let mut policy = Policy::default();
        for i in 1..=50 {
            policy.entries.push(egress(
                &format!("192.0.2.{i}/32"),
                PortRange::single(2049),
                Proto::Tcp,
            ));
            policy.entries.push(egress(
                &format!("192.0.2.{i}/32"),
                PortRange::single(111),
                Proto::Udp,
            ));
        }
        let t = compile(&policy, 0);
        let egress: Vec<_> = t
            .peers
            .iter()
            .filter(|(k, _)| k.dir == DIR_EGRESS)
            .collect();
        assert_eq!(egress.len(), 50);
        assert!(
            egress
                .iter()
                .all(|(_, i)| i.class == egress[0].1.class && i.flags == PEER_PROTECTED)
        );
        // Egress destinations are policed on ingress too (unsolicited inbound), with no rules.
        assert_eq!(
            t.peers.iter().filter(|(k, _)| k.dir == DIR_INGRESS).count(),
            50
        );
        assert_eq!(t.rules.len(), 2);
    }

    #[test]
    fn host_inside_subnet_inherits_subnet_rules_and_protection() {
        let mut policy = Policy::default();
        policy.entries.push(egress(
            "198.51.100.0/24",
            PortRange::single(3260),
            Proto::Tcp,
        ));
        policy.entries.push(egress(
            "198.51.100.7/32",
            PortRange::single(443),
            Proto::Tcp,
        ));
        policy.protected.push(Protected {
            addr: "198.51.100.0/24".parse().unwrap(),
            why: String::new(),
        });
        let t = compile(&policy, 1);
        let host = t
            .peers
            .iter()
            .find(|(k, _)| k.addr[15] == 7 && k.dir == DIR_EGRESS)
            .unwrap();
        assert_eq!(host.0.generation, 1);
        assert_eq!(host.1.flags, PEER_PROTECTED);
        let host_ports: BTreeSet<u16> = t
            .rules
            .iter()
            .filter(|r| r.class == host.1.class && r.dir == DIR_EGRESS)
            .map(|r| r.port)
            .collect();
        assert_eq!(host_ports, BTreeSet::from([443, 3260]));
        // The subnet is an LPM entry of /24 in mapped space plus the key header.
        let net = t
            .prefixes
            .iter()
            .find(|(_, k, _)| k.dir == DIR_EGRESS)
            .unwrap();
        assert_eq!(net.0, PEER_KEY_HEADER_BITS + 96 + 24);
        // Ingress: the protected subnet and host are known, with no rules.
        assert!(
            t.prefixes
                .iter()
                .any(|(_, k, i)| k.dir == DIR_INGRESS && i.flags == PEER_PROTECTED)
        );
    }
}
