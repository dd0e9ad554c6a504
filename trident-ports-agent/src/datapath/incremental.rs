//! Small policy changes written into the running generation, entry by entry, in an order in
//! which every packet, at every moment, gets the old policy's verdict or the new one's; a
//! change that cannot be made so (the guards, a large diff) takes a full generation switch.
//!
//! Why the order is safe. A packet's verdict depends on the one peer entry that matches its
//! remote address (longest prefix; /128 peers are the longest) and on the rules of that entry's
//! class. Classes are immutable: a rule set the running generation lacks gets a fresh class
//! number, written before any entry names it and deleted only after none does. Then:
//! 1. entries that are new or changed are written longest prefix first: when an entry of
//!    length L takes its new value, every new entry longer than L is already in place, so an
//!    address that matches it matches its new longest entry; an address whose longest match is
//!    an entry not yet written gets that entry's old value, which is its old longest match;
//! 2. entries the new policy lacks are deleted shortest first: an address whose longest match
//!    is such an entry has no longer old entry left to uncover (they go later), so the entry
//!    is its old longest match; an address matching a new entry matches its new longest one.
//!
//! The configuration entry is written first to widen which optional tables are looked up (a
//! lookup that finds nothing changes nothing), to rest the recent-pass cache (which would repeat
//! the old policy's passes after the maps moved on: `OPTION_UPDATING`) and, when the new policy
//! audits, to audit (every state in between then passes every packet, as the new policy does);
//! and last to wake the cache, narrow the
//! tables, enforce when the new policy enforces (every state in between audited, as the old
//! policy did) and bump the policy sequence, which makes connections re-checked against the new
//! rules, as a switch does. `tests/tests/packets.rs` checks every intermediate state against both policies.
use trident_ports_common::{
    DIR_EGRESS, DIR_INGRESS, GuardKey, PeerInfo, PeerKey, RangeKey, RuleKey, table_peer_prefixes,
    table_ranges,
};

use super::Tables;

/// FxHash (rustc's) with a final mix: the keys are the policy's own, not a packet's, so a fast non-keyed hash
/// is safe, and std's SipHash was most of an update's time at 100,000 entries.
#[derive(Clone, Copy, Default)]
pub(super) struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        // The multiply carries low bits up, not high bits down: an address that differs only
        // in its last bytes (the high bits of its last word) would land in one bucket without
        // a final mix.
        mix(self.0)
    }
}

type FxBuild = std::hash::BuildHasherDefault<Fx>;
type HashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;
type HashSet<K> = std::collections::HashSet<K, FxBuild>;

/// More changes than this take a full switch: written one by one they would be slower.
pub(super) const MAX_STEPS: usize = 2048;

/// A class by direction and number.
pub(super) type ClassId = (u8, u32);

/// A class's rules and port ranges, as written to the maps.
pub(super) type ClassKeys = (Vec<RuleKey>, Vec<(u32, RangeKey)>);

/// What a class allows, without its number: two order-independent 64-bit sums of its rules and
/// ranges, mixed, and their count. Equal fingerprints are taken as equal rule sets (a false
/// match needs two 64-bit sums to collide at once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Fingerprint(u64, u64, u32);

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Fingerprint {
    fn add(&mut self, item: u64) {
        self.0 = self.0.wrapping_add(mix(item));
        self.1 = self.1.wrapping_add(mix(item ^ 0x9e37_79b9_7f4a_7c15));
        self.2 += 1;
    }
}

fn rule_class(r: &RuleKey) -> ClassId {
    (r.dir, r.class)
}

fn rule_item(r: &RuleKey) -> u64 {
    (u64::from(r.proto) << 16) | u64::from(r.port)
}

fn range_class(r: &(u32, RangeKey)) -> ClassId {
    (r.1.dir, u32::from_be_bytes(r.1.class_be))
}

fn range_item(r: &(u32, RangeKey)) -> u64 {
    (1 << 63)
        | (u64::from(r.0) << 32)
        | (u64::from(r.1.proto) << 16)
        | u64::from(u16::from_be_bytes(r.1.port_be))
}

/// Fingerprints of the classes that have rules or ranges.
pub(super) fn fingerprints<'a>(
    rules: impl Iterator<Item = &'a RuleKey>,
    ranges: impl Iterator<Item = &'a (u32, RangeKey)>,
) -> HashMap<ClassId, Fingerprint> {
    let mut out: HashMap<ClassId, Fingerprint> = HashMap::default();
    for r in rules {
        out.entry(rule_class(r)).or_default().add(rule_item(r));
    }
    for r in ranges {
        out.entry(range_class(r)).or_default().add(range_item(r));
    }
    out
}

/// What the running generation holds, as this process wrote it, with an index of its classes
/// by what they allow.
pub(super) struct Running {
    pub(super) generation: u8,
    pub(super) peers: HashMap<PeerKey, PeerInfo>,
    /// By (LPM prefix length in bits, key).
    pub(super) prefixes: HashMap<(u32, PeerKey), PeerInfo>,
    pub(super) rules: HashSet<RuleKey>,
    pub(super) ranges: HashSet<(u32, RangeKey)>,
    pub(super) guards: HashSet<GuardKey>,
    pub(super) guard_addrs: HashSet<PeerKey>,
    /// The guard bitmap's words that have bits set.
    pub(super) guard_words: Vec<u32>,
    /// Classes with rules, by fingerprint, and back.
    pub(super) fingerprint: HashMap<ClassId, Fingerprint>,
    pub(super) by_fingerprint: HashMap<(u8, Fingerprint), u32>,
    /// Above every class number in use, per direction.
    pub(super) next_class: [u32; 2],
    /// A class without rules that entries name, per direction (protected peers with no port
    /// open in that direction): the number the new ones reuse.
    pub(super) empty_class: [Option<u32>; 2],
    /// How many peer and prefix entries name each class.
    pub(super) refs: HashMap<ClassId, u32>,
    /// Port ranges per direction: whether the direction's range table is looked up.
    ranges_by_dir: [usize; 2],
    /// The policy's keys, for changes compiled on their own (`delta`); none until the first
    /// whole compile writes the generation, or after an update that did not keep it.
    pub(super) index: Option<super::delta::Index>,
}

impl Running {
    pub(super) fn empty(generation: u8) -> Self {
        let mut r = Self::of(&Tables::default(), generation);
        r.index = Some(super::delta::Index::default());
        r
    }

    pub(super) fn of(t: &Tables, generation: u8) -> Self {
        let fingerprint = fingerprints(t.rules.iter(), t.ranges.iter());
        let mut r = Running {
            generation,
            peers: t.peers.iter().copied().collect(),
            prefixes: t.prefixes.iter().map(|(b, k, v)| ((*b, *k), *v)).collect(),
            rules: t.rules.iter().copied().collect(),
            ranges: t.ranges.iter().copied().collect(),
            guards: t.guards.iter().copied().collect(),
            guard_addrs: t.guard_addrs.iter().copied().collect(),
            guard_words: super::generation::guard_words(t).into_keys().collect(),
            by_fingerprint: fingerprint
                .iter()
                .map(|(&(d, c), &f)| ((d, f), c))
                .collect(),
            fingerprint,
            next_class: [0; 2],
            empty_class: [None; 2],
            refs: HashMap::default(),
            ranges_by_dir: [0; 2],
            index: None,
        };
        for (_, k) in &r.ranges {
            r.ranges_by_dir[usize::from(k.dir & 1)] += 1;
        }
        let named = t
            .peers
            .iter()
            .map(|(k, v)| (k.dir, v.class))
            .chain(t.prefixes.iter().map(|(_, k, v)| (k.dir, v.class)));
        for (dir, class) in named {
            *r.refs.entry((dir, class)).or_default() += 1;
            r.bump((dir, class));
            r.note_empty((dir, class));
        }
        for id in r.fingerprint.keys().copied().collect::<Vec<_>>() {
            r.bump(id);
        }
        r
    }

    /// The `Config::tables` bits after `steps`, before they are applied here.
    pub(super) fn present_after(&self, steps: &[Step]) -> u8 {
        let mut ranges = self.ranges_by_dir;
        let mut prefixes = [0i64; 2];
        for (_, k) in self.prefixes.keys() {
            prefixes[usize::from(k.dir & 1)] += 1;
        }
        for s in steps {
            match s {
                Step::AddClass { ranges: r, .. } => {
                    for (_, k) in r {
                        ranges[usize::from(k.dir & 1)] += 1;
                    }
                }
                Step::DropClass { ranges: r, .. } => {
                    for (_, k) in r {
                        ranges[usize::from(k.dir & 1)] -= 1;
                    }
                }
                Step::Put {
                    bits: Some(b), key, ..
                } if !self.prefixes.contains_key(&(*b, *key)) => {
                    prefixes[usize::from(key.dir & 1)] += 1;
                }
                Step::Delete { bits: Some(_), key } => prefixes[usize::from(key.dir & 1)] -= 1,
                _ => {}
            }
        }
        let mut bits = 0;
        for d in [DIR_EGRESS, DIR_INGRESS] {
            if prefixes[usize::from(d & 1)] > 0 {
                bits |= table_peer_prefixes(d);
            }
            if ranges[usize::from(d & 1)] > 0 {
                bits |= table_ranges(d);
            }
        }
        bits
    }

    pub(super) fn sizes(&self) -> super::Sizes {
        super::Sizes {
            peers: self.peers.len(),
            prefixes: self.prefixes.len(),
            rules: self.rules.len(),
            ranges: self.ranges.len(),
            guards: self.guards.len(),
            guard_addrs: self.guard_addrs.len(),
        }
    }

    fn named(&mut self, id: ClassId) {
        *self.refs.entry(id).or_default() += 1;
        self.bump(id);
        self.note_empty(id);
    }

    fn unnamed(&mut self, old: Option<PeerInfo>, dir: u8) {
        if let Some(o) = old {
            if let Some(n) = self.refs.get_mut(&(dir, o.class)) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(&(dir, o.class));
                }
            }
        }
    }

    /// Remembers `id` as the direction's class without rules, when it is one and none is known.
    fn note_empty(&mut self, id: ClassId) {
        if !self.fingerprint.contains_key(&id) {
            self.empty_class[usize::from(id.0 & 1)].get_or_insert(id.1);
        }
    }

    fn bump(&mut self, (dir, class): ClassId) {
        let n = &mut self.next_class[usize::from(dir & 1)];
        *n = (*n).max(class + 1);
    }

    /// What the generation holds after `steps`.
    pub(super) fn apply(&mut self, steps: &[Step]) {
        for s in steps {
            match s {
                Step::AddClass { rules, ranges } => {
                    let f = fingerprints(rules.iter(), ranges.iter());
                    for (&(dir, class), &fp) in &f {
                        self.fingerprint.insert((dir, class), fp);
                        self.by_fingerprint.entry((dir, fp)).or_insert(class);
                        self.bump((dir, class));
                    }
                    self.rules.extend(rules.iter().copied());
                    for r in ranges {
                        if self.ranges.insert(*r) {
                            self.ranges_by_dir[usize::from(r.1.dir & 1)] += 1;
                        }
                    }
                }
                Step::Put {
                    bits: None,
                    key,
                    info,
                } => {
                    self.named((key.dir, info.class));
                    let old = self.peers.insert(*key, *info);
                    self.unnamed(old, key.dir);
                }
                Step::Put {
                    bits: Some(b),
                    key,
                    info,
                } => {
                    self.named((key.dir, info.class));
                    let old = self.prefixes.insert((*b, *key), *info);
                    self.unnamed(old, key.dir);
                }
                Step::Delete { bits: None, key } => {
                    let old = self.peers.remove(key);
                    self.unnamed(old, key.dir);
                }
                Step::Delete { bits: Some(b), key } => {
                    let old = self.prefixes.remove(&(*b, *key));
                    self.unnamed(old, key.dir);
                }
                Step::DropClass { rules, ranges } => {
                    for id in rules
                        .iter()
                        .map(rule_class)
                        .chain(ranges.iter().map(range_class))
                    {
                        if let Some(fp) = self.fingerprint.remove(&id) {
                            if self.by_fingerprint.get(&(id.0, fp)) == Some(&id.1) {
                                self.by_fingerprint.remove(&(id.0, fp));
                            }
                        }
                    }
                    for r in rules {
                        self.rules.remove(r);
                    }
                    for r in ranges {
                        if self.ranges.remove(r) {
                            self.ranges_by_dir[usize::from(r.1.dir & 1)] -= 1;
                        }
                    }
                }
            }
        }
    }
}

/// One write of an incremental update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Rules and port ranges of a class no entry names yet.
    AddClass {
        rules: Vec<RuleKey>,
        ranges: Vec<(u32, RangeKey)>,
    },
    /// A peer (`bits` `None`) or prefix entry written.
    Put {
        bits: Option<u32>,
        key: PeerKey,
        info: PeerInfo,
    },
    Delete {
        bits: Option<u32>,
        key: PeerKey,
    },
    /// Rules and ranges of a class no entry names any more.
    DropClass {
        rules: Vec<RuleKey>,
        ranges: Vec<(u32, RangeKey)>,
    },
}

/// The steps that take `running` to `t` (compiled for the running generation), and `t` with its
/// classes renumbered to the running ones; `Err(t)` when a full switch is needed: the guards or
/// where they apply change, or there are more than [`MAX_STEPS`] steps.
pub(super) fn plan(running: &Running, mut t: Tables) -> Result<(Vec<Step>, Tables), Box<Tables>> {
    let same_guards = running.guards.len() == t.guards.len()
        && t.guards.iter().all(|g| running.guards.contains(g))
        && running.guard_addrs.len() == t.guard_addrs.len()
        && t.guard_addrs
            .iter()
            .all(|a| running.guard_addrs.contains(a));
    if !same_guards {
        return Err(Box::new(t));
    }
    // Each new class: the running class that allows the same (for a class without rules, the
    // running one without rules), or a fresh number. `compile` numbers classes densely from 0 in each direction, so the new ones are
    // indexed by number rather than hashed.
    let mut size = [0usize; 2];
    let ids = t
        .peers
        .iter()
        .map(|(k, v)| (k.dir, v.class))
        .chain(t.prefixes.iter().map(|(_, k, v)| (k.dir, v.class)))
        .chain(t.rules.iter().map(rule_class))
        .chain(t.ranges.iter().map(range_class));
    for (dir, class) in ids {
        let n = &mut size[usize::from(dir & 1)];
        *n = (*n).max(class as usize + 1);
    }
    let mut prints: [Vec<Option<Fingerprint>>; 2] = [vec![None; size[0]], vec![None; size[1]]];
    for r in &t.rules {
        prints[usize::from(r.dir & 1)][r.class as usize]
            .get_or_insert_default()
            .add(rule_item(r));
    }
    for r in &t.ranges {
        let (dir, class) = range_class(r);
        prints[usize::from(dir & 1)][class as usize]
            .get_or_insert_default()
            .add(range_item(r));
    }
    let mut next = running.next_class;
    let mut fresh: HashSet<ClassId> = HashSet::default();
    let mut renumber: [Vec<u32>; 2] = [vec![0; size[0]], vec![0; size[1]]];
    for d in 0..2u8 {
        let dir = if d == 0 { DIR_EGRESS } else { DIR_INGRESS };
        for (class, fp) in prints[usize::from(d)].iter().enumerate() {
            let reused = match fp {
                Some(fp) => running.by_fingerprint.get(&(dir, *fp)).copied(),
                None => running.empty_class[usize::from(d)],
            };
            renumber[usize::from(d)][class] = reused.unwrap_or_else(|| {
                let c = next[usize::from(d)];
                next[usize::from(d)] += 1;
                fresh.insert((dir, c));
                c
            });
        }
    }
    if fresh.len() > MAX_STEPS {
        return Err(Box::new(t));
    }
    let map = |(dir, class): ClassId| renumber[usize::from(dir & 1)][class as usize];
    for (k, v) in &mut t.peers {
        v.class = map((k.dir, v.class));
    }
    for (_, k, v) in &mut t.prefixes {
        v.class = map((k.dir, v.class));
    }
    for r in &mut t.rules {
        r.class = map(rule_class(r));
    }
    for r in &mut t.ranges {
        r.1.class_be = map(range_class(r)).to_be_bytes();
    }
    let mut steps = Vec::new();
    // 0. Classes the running generation lacks, before anything names them.
    let mut added: HashMap<ClassId, ClassKeys> = HashMap::default();
    for r in t.rules.iter().filter(|r| fresh.contains(&rule_class(r))) {
        added.entry(rule_class(r)).or_default().0.push(*r);
    }
    for r in t.ranges.iter().filter(|r| fresh.contains(&range_class(r))) {
        added.entry(range_class(r)).or_default().1.push(*r);
    }
    steps.extend(
        added
            .into_values()
            .map(|(rules, ranges)| Step::AddClass { rules, ranges }),
    );
    // 1. New and changed entries, longest prefix first (peers are /128).
    let mut puts: Vec<(u32, Option<u32>, PeerKey, PeerInfo)> = Vec::new();
    let mut present = 0;
    for (k, v) in &t.peers {
        match running.peers.get(k) {
            Some(old) => {
                present += 1;
                if old != v {
                    puts.push((u32::MAX, None, *k, *v));
                }
            }
            None => puts.push((u32::MAX, None, *k, *v)),
        }
    }
    for (bits, k, v) in &t.prefixes {
        match running.prefixes.get(&(*bits, *k)) {
            Some(old) => {
                present += 1;
                if old != v {
                    puts.push((*bits, Some(*bits), *k, *v));
                }
            }
            None => puts.push((*bits, Some(*bits), *k, *v)),
        }
    }
    if steps.len() + puts.len() > MAX_STEPS {
        return Err(Box::new(t));
    }
    puts.sort_by_key(|p| std::cmp::Reverse(p.0));
    steps.extend(
        puts.into_iter()
            .map(|(_, bits, key, info)| Step::Put { bits, key, info }),
    );
    // 2. Entries the new policy lacks, shortest prefix first; none when every running entry
    // is also a new one.
    let mut deletes: Vec<(u32, Option<u32>, PeerKey)> = Vec::new();
    if present < running.peers.len() + running.prefixes.len() {
        let new_prefixes: HashSet<(u32, &PeerKey)> =
            t.prefixes.iter().map(|(b, k, _)| (*b, k)).collect();
        deletes.extend(
            running
                .prefixes
                .keys()
                .filter(|(b, k)| !new_prefixes.contains(&(*b, k)))
                .map(|(b, k)| (*b, Some(*b), *k)),
        );
        deletes.sort_by_key(|d| d.0);
        let new_peers: HashSet<&PeerKey> = t.peers.iter().map(|(k, _)| k).collect();
        deletes.extend(
            running
                .peers
                .keys()
                .filter(|k| !new_peers.contains(k))
                .map(|k| (u32::MAX, None, *k)),
        );
    }
    steps.extend(
        deletes
            .into_iter()
            .map(|(_, bits, key)| Step::Delete { bits, key }),
    );
    // 3. Classes no entry names any more: running classes no new class reused.
    let mut used: [Vec<bool>; 2] = [
        vec![false; running.next_class[0] as usize],
        vec![false; running.next_class[1] as usize],
    ];
    for d in 0..2 {
        for &c in &renumber[d] {
            if let Some(u) = used[d].get_mut(c as usize) {
                *u = true;
            }
        }
    }
    let kept = |(dir, class): ClassId| {
        used[usize::from(dir & 1)]
            .get(class as usize)
            .copied()
            .unwrap_or(true)
    };
    let mut dropped: HashMap<ClassId, ClassKeys> = HashMap::default();
    if running.fingerprint.keys().any(|id| !kept(*id)) {
        for r in running.rules.iter().filter(|r| !kept(rule_class(r))) {
            dropped.entry(rule_class(r)).or_default().0.push(*r);
        }
        for r in running.ranges.iter().filter(|r| !kept(range_class(r))) {
            dropped.entry(range_class(r)).or_default().1.push(*r);
        }
    }
    steps.extend(
        dropped
            .into_values()
            .map(|(rules, ranges)| Step::DropClass { rules, ranges }),
    );
    if steps.len() > MAX_STEPS {
        return Err(Box::new(t));
    }
    Ok((steps, t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::compile,
        policy::{Direction, Entry, Mode, Policy, PortRange, Proto},
    };

    fn entry(peer: &str, from: u16, to: u16) -> Entry {
        Entry {
            direction: Direction::Egress,
            peer: peer.parse().unwrap(),
            ports: PortRange { from, to },
            proto: Proto::Tcp,
            purpose: "".into(),
            backend: None,
            source: "".into(),
        }
    }

    fn with(entries: Vec<Entry>) -> Policy {
        Policy {
            role: "worker".into(),
            mode: Mode::Enforce,
            entries,
            ..Policy::default()
        }
    }

    fn policy(entries: &[(&str, u16, u16)]) -> Policy {
        with(entries.iter().map(|(p, f, t)| entry(p, *f, *t)).collect())
    }

    /// `n` peers whose ports repeat every 12,000 (so that peers share classes); `changed`
    /// moves one to port 9.
    fn big(n: usize, changed: Option<usize>) -> Policy {
        let base = u128::from("2001:db8:100::".parse::<std::net::Ipv6Addr>().unwrap());
        with(
            (0..n)
                .map(|i| {
                    let port = if Some(i) == changed {
                        9
                    } else {
                        1024 + (i % 12_000) as u16
                    };
                    let peer = format!("{}/128", std::net::Ipv6Addr::from(base + i as u128));
                    entry(&peer, port, port)
                })
                .collect(),
        )
    }

    #[test]
    fn the_same_policy_is_no_step_and_one_change_a_few() {
        let p = policy(&[
            ("192.0.2.2/32", 2049, 2049),
            ("192.0.2.3/32", 443, 443),
            ("198.51.100.0/24", 3260, 3260),
            ("2001:db8::5/128", 5000, 5100),
        ]);
        let running = Running::of(&compile(&p, 0), 0);
        let (steps, _) = plan(&running, compile(&p, 0)).ok().unwrap();
        assert!(steps.is_empty(), "{steps:?}");
        let mut q = p.clone();
        q.entries[1].ports = PortRange::single(8443);
        let (steps, t) = plan(&running, compile(&q, 0)).ok().unwrap();
        // The class of 192.0.2.3 is new (added), the peer points at it, the old class goes.
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert!(matches!(steps[0], Step::AddClass { .. }));
        assert!(matches!(steps[1], Step::Put { bits: None, .. }));
        assert!(matches!(steps[2], Step::DropClass { .. }));
        let mut after = running;
        after.apply(&steps);
        let (steps, _) = plan(&after, t).ok().unwrap();
        assert!(
            steps.is_empty(),
            "applied steps leave nothing to do: {steps:?}"
        );
    }

    #[test]
    fn prefixes_go_longest_first_and_leave_shortest_first() {
        let p = policy(&[("192.0.2.0/24", 80, 80), ("192.0.2.5/32", 443, 443)]);
        let q = policy(&[("192.0.2.0/28", 80, 80), ("192.0.2.5/32", 22, 22)]);
        let running = Running::of(&compile(&p, 0), 0);
        let (steps, _) = plan(&running, compile(&q, 0)).ok().unwrap();
        let order: Vec<String> = steps
            .iter()
            .map(|s| match s {
                Step::AddClass { .. } => "add".into(),
                Step::Put { bits, .. } => format!("put {}", bits.unwrap_or(128 + 32)),
                Step::Delete { bits, .. } => format!("delete {}", bits.unwrap_or(128 + 32)),
                Step::DropClass { .. } => "drop".into(),
            })
            .collect();
        let pos = |s: &str| order.iter().position(|o| o == s).unwrap();
        assert!(pos("put 160") < pos("put 156"), "{order:?}");
        assert!(pos("put 156") < pos("delete 152"), "{order:?}");
        assert!(order.first().is_some_and(|o| o == "add"), "{order:?}");
        assert!(order.last().is_some_and(|o| o == "drop"), "{order:?}");
    }

    /// Classes shared by several peers (ports repeat), and a policy too large to write in
    /// place from nothing: the switch's generation then takes one peer's change in place.
    #[test]
    fn after_a_full_switch_a_small_change_is_in_place() {
        let n = 20_000;
        let empty = Running::empty(0);
        let Err(t) = plan(&empty, compile(&big(n, None), 0)) else {
            panic!("20,000 entries from nothing take a switch");
        };
        let mut t = *t;
        t.set_generation(1);
        let running = Running::of(&t, 1);
        let r = plan(&running, compile(&big(n, Some(10_000)), 1));
        let Ok((steps, _)) = r else {
            panic!("one peer's change takes a switch");
        };
        // A class for port 9, the peer moved to it, and its old class (no other peer has it).
        assert_eq!(steps.len(), 3, "{steps:?}");
    }
}
