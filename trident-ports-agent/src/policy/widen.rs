//! The policy in force while a cluster change waits out its debounce: everything the running
//! policy allows, and what the next one adds. An address keeps every entry it has in either;
//! one that only the next policy names gets exactly its entries there (an address new to the
//! policy becomes storage, policed whole, as it will be when the change is applied).
//!
//! So a new port or address is enforced as soon as the change is read, while what the change
//! takes away waits for the debounce: an object deleted and created again, or a backend
//! rewritten in two steps, never cuts a flow on the way. The guards and the mode are not
//! widened: a change to them waits too.
use std::collections::HashSet;

use ipnet::IpNet;

use super::{Direction, Entry, Policy, PortRange, Proto};

/// What makes two entries the same allowance (the compiler's dedup key).
type Allowance<'a> = (Direction, IpNet, PortRange, Proto, Option<&'a str>);

fn allowance(e: &Entry) -> Allowance<'_> {
    (e.direction, e.peer, e.ports, e.proto, e.backend.as_deref())
}

/// `current` with what `next` adds, in `current`'s order with the additions last (the
/// datapath then writes only them); `None` when `next` adds nothing, or changes the guards or
/// the mode.
pub fn widen(current: &Policy, next: Policy) -> Option<Policy> {
    if current.guarded != next.guarded
        || current.guard_addresses != next.guard_addresses
        || current.mode != next.mode
    {
        return None;
    }
    let known: HashSet<Allowance<'_>> = current.entries.iter().map(allowance).collect();
    let added: Vec<Entry> = next
        .entries
        .iter()
        .filter(|e| !known.contains(&allowance(e)))
        .cloned()
        .collect();
    let protected: Vec<_> = next
        .protected
        .iter()
        .filter(|p| !current.protected.iter().any(|c| c.addr == p.addr))
        .cloned()
        .collect();
    if added.is_empty() && protected.is_empty() {
        return None;
    }
    let mut wide = next;
    wide.entries.clone_from(&current.entries);
    wide.entries.extend(added);
    wide.protected.clone_from(&current.protected);
    wide.protected.extend(protected);
    Some(wide)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Guard, Protected};

    fn entry(peer: &str, port: u16) -> Entry {
        Entry {
            direction: Direction::Egress,
            peer: peer.parse().unwrap(),
            ports: PortRange::single(port),
            proto: Proto::Tcp,
            purpose: "p".into(),
            backend: Some("nas".into()),
            source: "s".into(),
        }
    }

    fn policy(entries: &[(&str, u16)], protected: &[&str]) -> Policy {
        Policy {
            entries: entries.iter().map(|(p, port)| entry(p, *port)).collect(),
            protected: protected
                .iter()
                .map(|a| Protected {
                    addr: a.parse().unwrap(),
                    why: "w".into(),
                })
                .collect(),
            ..Policy::default()
        }
    }

    #[test]
    fn what_the_next_policy_adds_is_added_and_nothing_is_taken() {
        let current = policy(
            &[("192.0.2.4/32", 2049), ("192.0.2.5/32", 443)],
            &["192.0.2.9/32"],
        );
        // The volume on .4 moves to iSCSI, .5 goes, .6 comes, .9 stays protected.
        let next = policy(
            &[("192.0.2.4/32", 3260), ("192.0.2.6/32", 443)],
            &["192.0.2.9/32", "192.0.2.10/32"],
        );
        let wide = widen(&current, next.clone()).unwrap();
        let has = |p: &Policy, peer: &str, port: u16| {
            p.entries
                .iter()
                .any(|e| e.peer == peer.parse().unwrap() && e.ports.contains(port))
        };
        for (peer, port) in [
            ("192.0.2.4/32", 2049),
            ("192.0.2.4/32", 3260),
            ("192.0.2.5/32", 443),
            ("192.0.2.6/32", 443),
        ] {
            assert!(has(&wide, peer, port), "{peer}:{port} missing: {wide:#?}");
        }
        assert_eq!(wide.entries.len(), 4);
        // In the running order, the additions last.
        assert_eq!(wide.entries[..2], current.entries[..]);
        let addrs: Vec<String> = wide.protected.iter().map(|p| p.addr.to_string()).collect();
        assert_eq!(addrs, ["192.0.2.9/32", "192.0.2.10/32"]);
        // Widening again adds nothing: the final policy is what takes the rest away.
        assert!(widen(&wide, next.clone()).is_none());
    }

    #[test]
    fn guards_and_mode_are_not_widened() {
        let current = policy(&[("192.0.2.4/32", 2049)], &[]);
        let mut next = policy(&[("192.0.2.4/32", 3260)], &[]);
        assert!(widen(&current, next.clone()).is_some());
        next.guarded.push(Guard {
            port: 8000,
            proto: Proto::Tcp,
            purpose: "g".into(),
        });
        assert!(widen(&current, next.clone()).is_none());
        next.guarded.clear();
        next.mode = crate::policy::Mode::Audit;
        assert!(widen(&current, next.clone()).is_none());
        next.mode = current.mode;
        next.guard_addresses.push("192.0.2.1/32".parse().unwrap());
        assert!(widen(&current, next.clone()).is_none());
    }
}
