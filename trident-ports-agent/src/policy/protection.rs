//! Which addresses a policy protects: the datapath polices their traffic both ways and lets in
//! from them only replies to flows in its connection table. They are the policy's protected
//! addresses and every egress entry's peer (the node only opens ports towards storage and
//! directory servers); `datapath::tables` marks the same ones `PEER_PROTECTED`.
//!
//! The connection table learns a flow from its allowed packets, and only for protected peers.
//! A connection the node opened while its peer was not protected is therefore unknown to it when
//! the peer becomes protected (a backend added or moved to an address the node already talks
//! to), and the peer's next packet would look unsolicited if it spoke first. The reconcile seeds
//! such connections from the node's sockets; this index says which ones.
use std::{collections::HashSet, net::IpAddr};

use ipnet::IpNet;

use super::{Direction, Policy};

impl Policy {
    /// The networks this policy protects; an address may appear more than once.
    pub fn protected_nets(&self) -> impl Iterator<Item = IpNet> + '_ {
        let egress = self
            .entries
            .iter()
            .filter(|e| e.direction == Direction::Egress)
            .map(|e| e.peer);
        self.protected.iter().map(|p| p.addr).chain(egress)
    }
}

/// A policy's protected networks, indexed: hosts by address, the few wider prefixes in a list.
#[derive(Debug, Default)]
pub struct Protection {
    hosts: HashSet<IpAddr>,
    nets: Vec<IpNet>,
}

impl Protection {
    pub fn of(policy: &Policy) -> Self {
        let mut p = Protection::default();
        for net in policy.protected_nets() {
            if net.prefix_len() == net.max_prefix_len() {
                p.hosts.insert(net.addr());
            } else if !p.nets.contains(&net) {
                p.nets.push(net);
            }
        }
        p
    }

    pub fn covers(&self, ip: IpAddr) -> bool {
        self.hosts.contains(&ip) || self.nets.iter().any(|n| n.contains(&ip))
    }

    /// True when `after` may protect an address this does not. May say yes when several of
    /// these prefixes together cover one of `after`'s, never no when an address is added.
    pub fn grows_to(&self, after: &Policy) -> bool {
        after.protected_nets().any(|n| !self.covers_net(&n))
    }

    fn covers_net(&self, n: &IpNet) -> bool {
        (n.prefix_len() == n.max_prefix_len() && self.hosts.contains(&n.addr()))
            || self.nets.iter().any(|m| m.contains(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Entry, PortRange, Protected, Proto};

    fn policy(egress: &[&str], ingress: &[&str], protected: &[&str]) -> Policy {
        let entry = |direction, peer: &&str| Entry {
            direction,
            peer: peer.parse().unwrap(),
            ports: PortRange::from([2049, 2049]),
            proto: Proto::Tcp,
            purpose: "nfs".into(),
            backend: None,
            source: "test".into(),
        };
        Policy {
            entries: egress
                .iter()
                .map(|p| entry(Direction::Egress, p))
                .chain(ingress.iter().map(|p| entry(Direction::Ingress, p)))
                .collect(),
            protected: protected
                .iter()
                .map(|a| Protected {
                    addr: a.parse().unwrap(),
                    why: "test".into(),
                })
                .collect(),
            ..Policy::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn egress_peers_and_protected_addresses_are_protected_ingress_peers_are_not() {
        let p = Protection::of(&policy(
            &["192.0.2.2/32", "2001:db8::/64"],
            &["192.0.2.3/32"],
            &["198.51.100.0/24"],
        ));
        assert!(p.covers(ip("192.0.2.2")));
        assert!(p.covers(ip("2001:db8::5")));
        assert!(p.covers(ip("198.51.100.7")));
        assert!(!p.covers(ip("192.0.2.3")), "a cluster peer on ingress only");
        assert!(!p.covers(ip("192.0.2.4")));
        assert!(!p.covers(ip("2001:db8:1::5")));
    }

    #[test]
    fn growth_is_any_address_not_protected_before() {
        let before = Protection::of(&policy(&["192.0.2.2/32"], &[], &["198.51.100.0/24"]));
        // The same, or less, or more inside a protected prefix: no new address.
        assert!(!before.grows_to(&policy(&["192.0.2.2/32"], &[], &["198.51.100.0/24"])));
        assert!(!before.grows_to(&policy(&[], &[], &[])));
        assert!(!before.grows_to(&policy(&["198.51.100.9/32"], &["192.0.2.9/32"], &[])));
        assert!(!before.grows_to(&policy(&[], &[], &["198.51.100.128/25"])));
        // A new host, a new prefix, a wider one.
        assert!(before.grows_to(&policy(&["192.0.2.3/32"], &[], &[])));
        assert!(before.grows_to(&policy(&[], &[], &["203.0.113.0/24"])));
        assert!(before.grows_to(&policy(&[], &[], &["198.51.100.0/23"])));
        assert!(before.grows_to(&policy(&["2001:db8::2/128"], &[], &[])));
    }
}
