//! A small change compiled on its own: the policy's entries are compared with the running
//! policy's in one pass, and only the host peers whose entries changed are compiled again, so
//! a change of one backend costs that pass (a few ns an entry) and not a whole compile.
//!
//! The result is the same steps `incremental::plan` makes from a whole compile, in the same
//! safe order (see `incremental`); it is used only where it gives the whole compile's result:
//! every changed entry names a host (a /32 or /128: the longest prefix, so no other peer's
//! longest match moves), the guards did not change, and what the index says about each touched
//! peer agrees with the running generation. Anything else returns `None` and takes the whole
//! compile.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use trident_ports_common::{DIR_EGRESS, DIR_INGRESS, PEER_PROTECTED, PeerInfo, PeerKey, limits};

use super::{
    incremental::{ClassId, ClassKeys, Fingerprint, MAX_STEPS, Running, Step, fingerprints},
    tables::{Prefix, class_keys, dir_code, guard_keys},
};
use crate::policy::{Policy, PortRange};

/// `proto` of a protected address's key: protected both ways, no port of its own.
const PROTECTED: u8 = 0;

/// What one policy entry (or protected address) puts in the tables. Ordered by direction and
/// prefix first, so one peer's keys are one range of the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    dir: u8,
    addr: [u8; 16],
    len: u8,
    proto: u8,
    from: u16,
    to: u16,
}

impl Key {
    fn first(dir: u8, addr: [u8; 16], len: u8) -> Key {
        Key {
            dir,
            addr,
            len,
            proto: 0,
            from: 0,
            to: 0,
        }
    }

    fn last(dir: u8, addr: [u8; 16], len: u8) -> Key {
        Key {
            dir,
            addr,
            len,
            proto: u8::MAX,
            from: u16::MAX,
            to: u16::MAX,
        }
    }

    fn is_host(&self) -> bool {
        self.len == 128
    }
}

/// How many keys `policy` has: one per entry, then one per protected address.
fn key_count(policy: &Policy) -> usize {
    policy.entries.len() + policy.protected.len()
}

/// The `j`th key of `policy`, `j` below [`key_count`].
fn key_at(policy: &Policy, j: usize) -> Key {
    if let Some(e) = policy.entries.get(j) {
        let p = Prefix::from_net(&e.peer);
        Key {
            dir: dir_code(e.direction),
            addr: p.addr,
            len: p.len,
            proto: e.proto.number(),
            from: e.ports.from,
            to: e.ports.to,
        }
    } else {
        let p = Prefix::from_net(&policy.protected[j - policy.entries.len()].addr);
        Key::first(DIR_EGRESS, p.addr, p.len)
    }
}

/// After a difference, how many equal keys in a row count as agreeing again, and how many
/// keys of both policies together may be skipped to find that (beyond a pure addition or
/// removal): a backend's entries change together, and the rest of the policy keeps its order.
const RESYNC_RUN: usize = 4;
const RESYNC_WITHIN: usize = 64;
/// Comparisons allowed while looking for agreement, over the whole walk.
const RESYNC_BUDGET: usize = 500_000;

/// Where a new policy's keys differ from the running one's: at `at` in the running order,
/// `gone` keys make way for `came`.
#[derive(Debug)]
struct Edit {
    at: usize,
    gone: usize,
    came: Vec<Key>,
}

/// How the `new_len` keys `new(j)` differ from `old`, found by walking both in order and, at
/// each difference, skipping the fewest keys after which both agree again for [`RESYNC_RUN`]
/// keys (or both end): a few changes anywhere in the policy, or a block of entries added or
/// removed, cost one pass, and the new keys are made once each, not stored. `None` beyond
/// `limit` keys or when no agreement is found near a difference. Whatever the alignment, `old`
/// minus what is gone plus what came is the new keys, counted.
fn changed(
    old: &[Key],
    new_len: usize,
    new: impl Fn(usize) -> Key,
    limit: usize,
) -> Option<Vec<Edit>> {
    // Comparisons allowed while looking for agreement: about a millisecond's worth, so that a
    // policy changed everywhere is found out quickly and compiled whole.
    let budget = std::cell::Cell::new(RESYNC_BUDGET);
    let agree = |i: usize, j: usize| {
        budget.set(budget.get().saturating_sub(1));
        if i == old.len() && j == new_len {
            return true;
        }
        let run = RESYNC_RUN.min(old.len() - i).min(new_len - j);
        let ends = i + run == old.len() && j + run == new_len;
        run > 0 && (run == RESYNC_RUN || ends) && (0..run).all(|r| old[i + r] == new(j + r))
    };
    let mut edits = Vec::new();
    let mut size = 0;
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < new_len {
        if old[i] == new(j) {
            i += 1;
            j += 1;
            continue;
        }
        // A block only removed or only added, up to the limit; then both, near.
        let removed = || {
            (1..=limit.min(old.len() - i))
                .find(|a| agree(i + a, j))
                .map(|a| (a, 0))
        };
        let added = || {
            (1..=limit.min(new_len - j))
                .find(|b| agree(i, j + b))
                .map(|b| (0, b))
        };
        let both = || {
            (2..=RESYNC_WITHIN).find_map(|s| {
                (1..s)
                    .map(|a| (a, s - a))
                    .find(|&(a, b)| i + a <= old.len() && j + b <= new_len && agree(i + a, j + b))
            })
        };
        let (a, b) = removed().or_else(added).or_else(both)?;
        size += a + b;
        if budget.get() == 0 || size > limit {
            return None;
        }
        edits.push(Edit {
            at: i,
            gone: a,
            came: (j..j + b).map(&new).collect(),
        });
        (i, j) = (i + a, j + b);
    }
    size += old.len() - i + new_len - j;
    if size > limit {
        return None;
    }
    if i < old.len() || j < new_len {
        edits.push(Edit {
            at: i,
            gone: old.len() - i,
            came: (j..new_len).map(&new).collect(),
        });
    }
    Some(edits)
}

/// A prefix wider than a host, with what the hosts inside it inherit.
#[derive(Debug, PartialEq, Eq)]
struct Wide {
    prefix: Prefix,
    /// (protocol number, ports), by direction (egress 0, ingress 1).
    rules: [Vec<(u8, PortRange)>; 2],
    protected: bool,
}

/// The running policy's keys, as `plan` needs them: in the policy's order (to find what
/// changed) and counted (to find one peer's): 5.3 MB at 100,000 entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Index {
    order: Vec<Key>,
    counts: BTreeMap<Key, u32>,
    wide: Vec<Wide>,
}

/// A host peer's effective grant in both directions: own keys plus every wider prefix's.
#[derive(Debug, Default)]
struct Host {
    rules: [BTreeSet<(u8, PortRange)>; 2],
    present: [bool; 2],
    protected: bool,
}

impl Index {
    pub(super) fn of(policy: &Policy) -> Self {
        let order: Vec<Key> = (0..key_count(policy)).map(|j| key_at(policy, j)).collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        // Sorted and counted first: the map is then built in one pass, its nodes full.
        let counts: BTreeMap<Key, u32> = sorted
            .chunk_by(|a, b| a == b)
            .map(|run| (run[0], run.len() as u32))
            .collect();
        drop(sorted);
        let mut wide: BTreeMap<([u8; 16], u8), Wide> = BTreeMap::new();
        for k in counts.keys().filter(|k| !k.is_host()) {
            let w = wide.entry((k.addr, k.len)).or_insert_with(|| Wide {
                prefix: Prefix {
                    addr: k.addr,
                    len: k.len,
                },
                rules: Default::default(),
                protected: false,
            });
            if k.dir == DIR_EGRESS {
                w.protected = true;
            }
            if k.proto != PROTECTED {
                w.rules[usize::from(k.dir & 1)].push((k.proto, port_range(k)));
            }
        }
        Index {
            order,
            counts,
            wide: wide.into_values().collect(),
        }
    }

    /// `addr`'s grant with `change` (key → count difference) applied to the counts.
    fn host(&self, addr: [u8; 16], change: &BTreeMap<Key, i64>) -> Host {
        let mut h = Host::default();
        for dir in [DIR_EGRESS, DIR_INGRESS] {
            let range = Key::first(dir, addr, 128)..=Key::last(dir, addr, 128);
            let mut own: BTreeMap<Key, i64> = self
                .counts
                .range(range.clone())
                .map(|(k, n)| (*k, i64::from(*n)))
                .collect();
            for (k, d) in change.range(range) {
                *own.entry(*k).or_default() += d;
            }
            let d = usize::from(dir & 1);
            for k in own.iter().filter(|(_, n)| **n > 0).map(|(k, _)| k) {
                h.present[d] = true;
                if dir == DIR_EGRESS {
                    h.protected = true;
                }
                if k.proto != PROTECTED {
                    h.rules[d].insert((k.proto, port_range(k)));
                }
            }
        }
        // Protected peers are policed both ways.
        h.present[1] |= h.protected;
        let host = Prefix { addr, len: 128 };
        for w in self.wide.iter().filter(|w| w.prefix.contains(&host)) {
            for d in 0..2 {
                h.rules[d].extend(w.rules[d].iter().copied());
            }
            h.protected |= w.protected;
        }
        h
    }

    /// The index after `delta` is written.
    pub(super) fn commit(&mut self, delta: Delta) {
        // From the last edit back, so that each one's position is still the running order's.
        for e in delta.edits.into_iter().rev() {
            self.order.splice(e.at..e.at + e.gone, e.came);
        }
        for (k, d) in delta.change {
            let n = self.counts.entry(k).or_default();
            match u32::try_from(i64::from(*n) + d) {
                Ok(0) | Err(_) => {
                    self.counts.remove(&k);
                }
                Ok(a) => *n = a,
            }
        }
    }
}

fn port_range(k: &Key) -> PortRange {
    PortRange {
        from: k.from,
        to: k.to,
    }
}

/// An update `plan` found, to write with `steps`, then `Index::commit`.
pub(super) struct Delta {
    edits: Vec<Edit>,
    change: BTreeMap<Key, i64>,
    pub(super) steps: Vec<Step>,
}

/// Class numbers for the grants of one update: the running class that allows the same, or a
/// fresh one (added as a step), the same for equal grants.
struct Classes<'a> {
    running: &'a Running,
    generation: u8,
    next: [u32; 2],
    fresh: HashMap<(u8, Fingerprint), u32>,
    added: Vec<Step>,
}

impl Classes<'_> {
    fn keys(&self, dir: u8, class: u32, rules: &BTreeSet<(u8, PortRange)>) -> ClassKeys {
        let (mut r, mut g) = (Vec::new(), Vec::new());
        class_keys(
            dir,
            class,
            self.generation,
            rules.iter().copied(),
            &mut r,
            &mut g,
        );
        (r, g)
    }

    /// What `rules` hash to, none for no rules.
    fn fingerprint(&self, dir: u8, rules: &BTreeSet<(u8, PortRange)>) -> Option<Fingerprint> {
        let (r, g) = self.keys(dir, 0, rules);
        fingerprints(r.iter(), g.iter()).get(&(dir, 0)).copied()
    }

    fn class(&mut self, dir: u8, rules: &BTreeSet<(u8, PortRange)>) -> u32 {
        let d = usize::from(dir & 1);
        let fp = self.fingerprint(dir, rules);
        let running = match fp {
            Some(fp) => self.running.by_fingerprint.get(&(dir, fp)).copied(),
            None => self.running.empty_class[d],
        };
        if let Some(c) = running {
            return c;
        }
        let key = (dir, fp.unwrap_or_default());
        if let Some(c) = self.fresh.get(&key) {
            return *c;
        }
        let c = self.next[d];
        self.next[d] += 1;
        self.fresh.insert(key, c);
        let (rules, ranges) = self.keys(dir, c, rules);
        if !rules.is_empty() || !ranges.is_empty() {
            self.added.push(Step::AddClass { rules, ranges });
        }
        c
    }
}

/// The steps that take the running generation from `index`'s policy to `policy`, or `None`
/// when the whole compile must make them (see the module's comment).
pub(super) fn plan(running: &Running, index: &Index, policy: &Policy) -> Option<Delta> {
    let generation = running.generation;
    let (guards, guard_addrs) = guard_keys(policy, generation);
    let same_guards = guards.len() == running.guards.len()
        && guards.iter().all(|g| running.guards.contains(g))
        && guard_addrs.len() == running.guard_addrs.len()
        && guard_addrs.iter().all(|a| running.guard_addrs.contains(a));
    if !same_guards {
        return None;
    }
    let edits = changed(
        &index.order,
        key_count(policy),
        |j| key_at(policy, j),
        MAX_STEPS,
    )?;
    let mut change: BTreeMap<Key, i64> = BTreeMap::new();
    for e in &edits {
        for k in &index.order[e.at..e.at + e.gone] {
            *change.entry(*k).or_default() -= 1;
        }
        for k in &e.came {
            *change.entry(*k).or_default() += 1;
        }
    }
    change.retain(|_, d| *d != 0);
    if change.keys().any(|k| !k.is_host()) {
        return None;
    }
    let hosts: BTreeSet<[u8; 16]> = change.keys().map(|k| k.addr).collect();
    let mut classes = Classes {
        running,
        generation,
        next: running.next_class,
        fresh: HashMap::new(),
        added: Vec::new(),
    };
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    let mut refs: HashMap<ClassId, i64> = HashMap::new();
    // The rules of each class an entry stops naming, to drop it when none names it any more.
    let mut left: HashMap<ClassId, BTreeSet<(u8, PortRange)>> = HashMap::new();
    let no_change = BTreeMap::new();
    for addr in hosts {
        let (before, after) = (index.host(addr, &no_change), index.host(addr, &change));
        for dir in [DIR_EGRESS, DIR_INGRESS] {
            let d = usize::from(dir & 1);
            let key = PeerKey {
                generation,
                dir,
                _pad: [0; 2],
                addr,
            };
            let old = running.peers.get(&key).copied();
            // The index must describe the running generation; if it does not, the whole
            // compile (which trusts nothing but the policy) decides.
            if old.is_some() != before.present[d]
                || old.is_some_and(|o| {
                    classes.fingerprint(dir, &before.rules[d])
                        != running.fingerprint.get(&(dir, o.class)).copied()
                        || (o.flags & PEER_PROTECTED != 0) != before.protected
                })
            {
                return None;
            }
            let new = after.present[d].then(|| PeerInfo {
                class: classes.class(dir, &after.rules[d]),
                flags: if after.protected { PEER_PROTECTED } else { 0 },
            });
            if old == new {
                continue;
            }
            if let Some(o) = old {
                *refs.entry((dir, o.class)).or_default() -= 1;
                left.entry((dir, o.class))
                    .or_insert_with(|| before.rules[d].clone());
            }
            match new {
                Some(n) => {
                    *refs.entry((dir, n.class)).or_default() += 1;
                    puts.push(Step::Put {
                        bits: None,
                        key,
                        info: n,
                    });
                }
                None => deletes.push(Step::Delete { bits: None, key }),
            }
        }
    }
    let mut dropped = Vec::new();
    for ((dir, class), rules) in left {
        let now = i64::from(running.refs.get(&(dir, class)).copied().unwrap_or(0))
            + refs.get(&(dir, class)).copied().unwrap_or(0);
        if now == 0 && running.fingerprint.contains_key(&(dir, class)) {
            let (rules, ranges) = classes.keys(dir, class, &rules);
            dropped.push(Step::DropClass { rules, ranges });
        }
    }
    let mut steps = std::mem::take(&mut classes.added);
    let peers = running.peers.len() + puts.len();
    steps.extend(puts);
    steps.extend(deletes);
    steps.extend(dropped);
    let (rules, ranges) = steps.iter().fold((0, 0), |(r, g), s| match s {
        Step::AddClass { rules, ranges } => (r + rules.len(), g + ranges.len()),
        _ => (r, g),
    });
    let within = peers <= limits::PEERS as usize / 2
        && running.rules.len() + rules <= limits::RULES as usize / 2
        && running.ranges.len() + ranges <= limits::RANGES as usize / 2;
    (within && steps.len() <= MAX_STEPS).then_some(Delta {
        edits,
        change,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use trident_ports_common::{PeerInfo, PeerKey, RuleKey};

    use super::*;
    use crate::{
        datapath::{Tables, compile, incremental},
        policy::{Direction, Entry, Mode, Protected, Proto},
    };

    /// A peer's verdicts: its flags and what its class allows, by (protocol, port or block).
    type Meaning = BTreeMap<(u8, Option<u32>, [u8; 16]), (u32, Allows)>;

    /// A class's rules and blocks: (protocol, block bits or 0 for a rule, port).
    type Allows = BTreeSet<(u8, u32, u16)>;

    fn meaning<'a>(
        peers: impl Iterator<Item = (Option<u32>, &'a PeerKey, &'a PeerInfo)>,
        rules: impl Iterator<Item = &'a RuleKey>,
        ranges: impl Iterator<Item = &'a (u32, trident_ports_common::RangeKey)>,
    ) -> Meaning {
        let mut by_class: BTreeMap<(u8, u32), Allows> = BTreeMap::new();
        for r in rules {
            by_class
                .entry((r.dir, r.class))
                .or_default()
                .insert((r.proto, 0, r.port));
        }
        for (bits, r) in ranges {
            by_class
                .entry((r.dir, u32::from_be_bytes(r.class_be)))
                .or_default()
                .insert((r.proto, *bits, u16::from_be_bytes(r.port_be)));
        }
        peers
            .map(|(bits, k, v)| {
                let rules = by_class.get(&(k.dir, v.class)).cloned().unwrap_or_default();
                ((k.dir, bits, k.addr), (v.flags, rules))
            })
            .collect()
    }

    fn of_tables(t: &Tables) -> Meaning {
        let peers = t.peers.iter().map(|(k, v)| (None, k, v));
        let prefixes = t.prefixes.iter().map(|(b, k, v)| (Some(*b), k, v));
        meaning(peers.chain(prefixes), t.rules.iter(), t.ranges.iter())
    }

    fn of_running(r: &Running) -> Meaning {
        let peers = r.peers.iter().map(|(k, v)| (None, k, v));
        let prefixes = r.prefixes.iter().map(|((b, k), v)| (Some(*b), k, v));
        meaning(peers.chain(prefixes), r.rules.iter(), r.ranges.iter())
    }

    /// What `Datapath::apply` does, without the maps: which way it took.
    fn apply(r: &mut Running, p: &Policy, mut between: impl FnMut(&Running)) -> &'static str {
        if let Some(d) = plan(r, r.index.as_ref().unwrap(), p) {
            for s in &d.steps {
                // What the kernel refuses: deleting what is not there.
                match s {
                    Step::DropClass { rules, ranges } => {
                        let (mut r2, mut g2) = (rules.clone(), ranges.clone());
                        r2.dedup();
                        g2.dedup();
                        assert_eq!((r2.len(), g2.len()), (rules.len(), ranges.len()), "{s:?}");
                        assert!(rules.iter().all(|k| r.rules.contains(k)), "{s:?}");
                        assert!(ranges.iter().all(|k| r.ranges.contains(k)), "{s:?}");
                    }
                    Step::Delete { bits: None, key } => assert!(r.peers.contains_key(key)),
                    _ => {}
                }
                r.apply(std::slice::from_ref(s));
                between(r);
            }
            r.index.as_mut().unwrap().commit(d);
            assert!(
                r.index.as_ref() == Some(&Index::of(p)),
                "the index after a commit"
            );
            return "delta";
        }
        match incremental::plan(r, compile(p, r.generation)) {
            Ok((steps, _)) => {
                r.apply(&steps);
                r.index = Some(Index::of(p));
                "whole"
            }
            Err(t) => {
                *r = Running::of(&t, r.generation);
                r.index = Some(Index::of(p));
                "switch"
            }
        }
    }

    /// A deterministic generator (xorshift), so a failure names its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const PEERS: [&str; 10] = [
        "192.0.2.1/32",
        "192.0.2.2/32",
        "192.0.2.130/32",
        "198.51.100.7/32",
        "198.51.100.8/32",
        "203.0.113.9/32",
        "2001:db8::1/128",
        "2001:db8::2/128",
        "2001:db8:1::9/128",
        "192.0.2.0/25",
    ];
    /// 4045-4049 and 4046-4049 share port blocks.
    const PORTS: [(u16, u16); 7] = [
        (2049, 2049),
        (111, 111),
        (3260, 3260),
        (4045, 4049),
        (4046, 4049),
        (443, 443),
        (1024, 65535),
    ];

    fn random_entry(g: &mut Rng, hosts_only: bool) -> Entry {
        let peers = if hosts_only {
            PEERS.len() - 1
        } else {
            PEERS.len()
        };
        let (from, to) = PORTS[g.below(PORTS.len())];
        Entry {
            direction: if g.below(4) == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            peer: PEERS[g.below(peers)].parse().unwrap(),
            ports: PortRange { from, to },
            proto: if g.below(3) == 0 {
                Proto::Udp
            } else {
                Proto::Tcp
            },
            purpose: "".into(),
            backend: None,
            source: "".into(),
        }
    }

    fn random_policy(g: &mut Rng) -> Policy {
        let mut p = Policy {
            role: "worker".into(),
            mode: Mode::Enforce,
            ..Policy::default()
        };
        for _ in 0..g.below(12) {
            p.entries.push(random_entry(g, false));
        }
        if g.below(2) == 0 {
            p.protected.push(Protected {
                addr: "192.0.2.0/24".parse().unwrap(),
                why: String::new(),
            });
        }
        p
    }

    /// Small changes of host entries and protected hosts: what the delta takes.
    fn mutate(p: &Policy, g: &mut Rng) -> Policy {
        let mut q = p.clone();
        for _ in 0..=g.below(3) {
            match g.below(5) {
                0 if !q.entries.is_empty() => {
                    let i = g.below(q.entries.len());
                    if q.entries[i].peer.prefix_len() == q.entries[i].peer.max_prefix_len() {
                        q.entries.remove(i);
                    }
                }
                1 if !q.entries.is_empty() => {
                    let i = g.below(q.entries.len());
                    if q.entries[i].peer.prefix_len() == q.entries[i].peer.max_prefix_len() {
                        q.entries[i] = random_entry(g, true);
                    }
                }
                2 => {
                    let addr = PEERS[g.below(PEERS.len() - 1)].parse().unwrap();
                    q.protected.push(Protected {
                        addr,
                        why: String::new(),
                    });
                }
                3 => {
                    let host = |x: &Protected| x.addr.prefix_len() == x.addr.max_prefix_len();
                    if let Some(i) = q.protected.iter().position(host) {
                        q.protected.remove(i);
                    }
                }
                _ => {
                    let at = g.below(q.entries.len() + 1);
                    q.entries.insert(at, random_entry(g, true));
                }
            }
        }
        q
    }

    fn key(i: u64) -> Key {
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&i.to_be_bytes());
        Key::first(DIR_EGRESS, addr, 128)
    }

    fn counted(keys: impl IntoIterator<Item = Key>) -> BTreeMap<Key, i64> {
        let mut m = BTreeMap::new();
        for k in keys {
            *m.entry(k).or_default() += 1;
        }
        m
    }

    #[test]
    fn a_few_changes_anywhere_are_found_in_one_pass() {
        let mut g = Rng(7);
        for round in 0..200 {
            let old: Vec<Key> = (0..10_000).map(key).collect();
            let mut new = old.clone();
            let mut fresh = 1_000_000;
            let mut edited = 0;
            // Up to five edits, apart (one per 2,000 keys), from the last, so that each
            // position is still the old one.
            for slot in (0..5).rev() {
                if g.below(2) == 0 {
                    continue;
                }
                let at = slot * 2_000 + g.below(1_500);
                let most = if g.below(4) == 0 { 300 } else { 8 };
                let n = 1 + g.below(most);
                match g.below(3) {
                    0 => {
                        new.drain(at..at + n);
                        edited += n;
                    }
                    1 => {
                        new.splice(at..at, (0..n).map(|k| key(fresh + k as u64)));
                        fresh += n as u64;
                        edited += n;
                    }
                    _ => {
                        let n = n.min(30);
                        for k in &mut new[at..at + n] {
                            *k = key(fresh);
                            fresh += 1;
                        }
                        edited += 2 * n;
                    }
                }
            }
            let edits = changed(&old, new.len(), |j| new[j], MAX_STEPS).expect("found");
            let gone: Vec<Key> = edits
                .iter()
                .flat_map(|e| old[e.at..e.at + e.gone].iter().copied())
                .collect();
            let came: Vec<Key> = edits.iter().flat_map(|e| e.came.iter().copied()).collect();
            let mut after = counted(old.iter().copied());
            for k in &gone {
                *after.get_mut(k).unwrap() -= 1;
            }
            for k in &came {
                *after.entry(*k).or_default() += 1;
            }
            after.retain(|_, n| *n != 0);
            assert_eq!(after, counted(new.iter().copied()), "round {round}");
            assert!(
                gone.len() + came.len() <= edited,
                "round {round}: {} for {edited}",
                gone.len() + came.len()
            );
        }
        // Reordered throughout: no near agreement, so the whole compile.
        let old: Vec<Key> = (0..10_000).map(key).collect();
        let new: Vec<Key> = old
            .chunks(2)
            .flat_map(|c| c.iter().rev().copied())
            .collect();
        assert!(changed(&old, new.len(), |j| new[j], MAX_STEPS).is_none());
    }

    #[test]
    fn changes_compiled_alone_mean_what_the_whole_compile_means() {
        let mut ways: BTreeMap<&str, usize> = BTreeMap::new();
        for seed in 1..=300u64 {
            let mut g = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut policy = random_policy(&mut g);
            let mut running = Running::empty(0);
            apply(&mut running, &policy, |_| {});
            for round in 0..20 {
                let next = if g.below(8) == 0 {
                    random_policy(&mut g)
                } else {
                    mutate(&policy, &mut g)
                };
                let (old, new) = (
                    of_tables(&compile(&policy, 0)),
                    of_tables(&compile(&next, 0)),
                );
                // Every state in between: each peer means what it meant or what it will.
                let way = apply(&mut running, &next, |r| {
                    let now = of_running(r);
                    for k in now.keys().chain(old.keys()).chain(new.keys()) {
                        let m = now.get(k);
                        assert!(
                            old.get(k) == m || new.get(k) == m,
                            "seed {seed} round {round}: {k:?} means {m:?}\nold {policy:?}\nnew {next:?}"
                        );
                    }
                });
                *ways.entry(way).or_default() += 1;
                assert_eq!(
                    of_running(&running),
                    new,
                    "seed {seed} round {round} ({way})\nold {policy:?}\nnew {next:?}"
                );
                // Every class the maps hold is named, and the counts say so.
                let named: BTreeSet<(u8, u32)> = running
                    .peers
                    .iter()
                    .map(|(k, v)| (k.dir, v.class))
                    .collect();
                for r in &running.rules {
                    assert!(
                        named.contains(&(r.dir, r.class))
                            || running
                                .prefixes
                                .iter()
                                .any(|((_, k), v)| (k.dir, v.class) == (r.dir, r.class)),
                        "seed {seed} round {round}: class {} left behind",
                        r.class
                    );
                }
                let mut counted: HashMap<ClassId, u32> = HashMap::new();
                for (d, c) in running
                    .peers
                    .iter()
                    .map(|(k, v)| (k.dir, v.class))
                    .chain(running.prefixes.iter().map(|((_, k), v)| (k.dir, v.class)))
                {
                    *counted.entry((d, c)).or_default() += 1;
                }
                assert_eq!(
                    counted,
                    running.refs.clone().into_iter().collect(),
                    "seed {seed} round {round}"
                );
                policy = next;
            }
        }
        // Most small changes take the delta; wide prefixes and fresh policies the whole compile.
        assert!(ways["delta"] > 3000, "{ways:?}");
        assert!(ways.get("whole").is_some_and(|n| *n > 100), "{ways:?}");
    }
}
