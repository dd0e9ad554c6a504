//! The policy decision. Every lookup is a hash or an LPM lookup: nothing here loops over policy.
use core::ptr::NonNull;

use aya_ebpf::maps::lpm_trie::Key;
use trident_ports_common::{
    Config, DIR_EGRESS, DIR_INGRESS, FlowKey, FlowState, GuardKey, MODE_AUDIT, NO_CLASS,
    OPTION_NO_RECENT_FLOWS, OPTION_NO_RECENT_PASSES, OPTION_UPDATING, PEER_KEY_HEADER_BITS,
    PEER_PROTECTED, PROTO_TCP, PeerInfo, PeerKey, RANGE_KEY_HEADER_BITS, RangeKey, RuleKey,
    VERDICT_AUDIT, VERDICT_DENIED, counter, flow_word, reason, table_peer_prefixes, table_ranges,
};

use crate::{
    denied, events,
    maps::{
        CONFIG, FLOWS, GUARD_ADDRS, GUARDS, PEER_PREFIXES, PEERS, RANGES, RULES, SCRATCH, count,
        count_all,
    },
    packet::Packet,
    parse::{Addr, Parsed, addresses, common, flow_words, kind, parse, ports},
    passing, recent, slots, sockets,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pass,
    Drop,
}

/// What the policy says about one packet, before the mode (enforce or audit) is applied.
enum Judgement {
    /// Not subject to policy.
    Untouched(u32),
    /// Allowed by a rule (`ALLOWED`) or by the connection table (`CONNTRACK_HIT`).
    Allowed(u32),
    Denied(u8),
}

/// Judges one packet travelling in `dir`, counts it, emits an event when it is denied, and
/// returns the action. The event is emitted after the verdict is fixed and cannot change it.
#[inline(always)]
pub(crate) fn decide<P: Packet>(pkt: &P, dir: u8) -> Action {
    let (common_shape, words) = flow_words(pkt);
    // Only the common shapes have flow words; the others are never cached.
    let hash = recent::hash(&words);
    // The flow's slot of the recent-denial and recent-pass caches, one lookup for both.
    // `NonNull`s, not `Option`s of raw pointers: an `Option`'s tag and pointer are two values,
    // and the verifiers of 5.10 and 6.1 lost which one vouched for the other (a slot pointer
    // they took for a number); a `NonNull`'s `None` is the null pointer itself.
    let slot = if common_shape {
        slots::slot_for(dir, hash).and_then(NonNull::new)
    } else {
        None
    };
    // A packet of a flow this CPU denied and reported moments ago: the same verdict, no lookup.
    // First, and before the configuration is copied: a flood is where every nanosecond counts,
    // while a packet of an allowed flow pays one compare for it (at most one of these caches
    // holds a flow under the running policy and table epoch: see `denied`).
    if let Some(slot) = slot
        && let Some(action) = denied::answer(slots::denial(slot.as_ptr()), dir, &words)
    {
        return action;
    }
    // Only a flow of a common shape has a slot (the lookup of an index in range does not fail):
    // asked from the slot rather than kept, it leaves a register to the path above.
    let common_shape = slot.is_some();
    let cfg = match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    };
    let pass_on = cfg.options & (OPTION_NO_RECENT_PASSES | OPTION_UPDATING) == 0;
    let deny_on = denied::cached(&cfg);
    let denied_slot = slot
        .filter(|_| deny_on)
        .and_then(|s| NonNull::new(slots::denial(s.as_ptr())));
    // A packet of a flow this CPU allowed recently: no parsing, no lookup.
    let recent = if common_shape && cfg.options & OPTION_NO_RECENT_FLOWS == 0 {
        recent::set_for(dir, hash)
    } else {
        None
    };
    if let Some(set) = recent
        && let Some(way) = recent::holding(set, cfg.seq, &words)
    {
        if recent::answered(way) {
            keep_in_table(&cfg, dir, &words);
        }
        count(dir, counter::RECENT_HIT);
        return Action::Pass;
    }
    // A packet of a flow to or from an unprotected address this CPU judged lately: most of a
    // node's traffic.
    let passing = slot
        .filter(|_| pass_on)
        .and_then(|s| NonNull::new(slots::pass(s.as_ptr())));
    if let Some(p) = passing
        && let Some(c) = passing::answer(p.as_ptr(), cfg.seq, &words)
    {
        count_all(dir, [c, counter::RECENT_PASS]);
        return Action::Pass;
    }
    // Read before any lookup a denial to be remembered rests on (see `denied::epoch`): the
    // caches above look nothing up.
    let epoch = if denied_slot.is_some() {
        denied::epoch()
    } else {
        0
    };
    // Scratch space only now: the caches above answer without it.
    let Some(slot) = SCRATCH.get_ptr_mut(dir as u32) else {
        count(dir, counter::PASSED);
        return Action::Pass;
    };
    // SAFETY: this CPU's slot for this direction, used by this program run only.
    let parsed = unsafe { &mut *slot };
    parsed.kind = kind::TRUNCATED;
    parsed.tcp_flags = 0;
    parsed.sport = 0;
    parsed.dport = 0;
    if common_shape {
        common(pkt, &words, parsed);
    } else if !parse(pkt, parsed) {
        count(dir, counter::PASSED);
        return Action::Pass;
    }
    // The caches' pointers are not carried across the judgement: each of them, null or not,
    // made every path through it a state of its own to the verifier (TC egress, TC ingress and
    // XDP verified 52,060, 95,576 and 97,904 instructions; 35,812, 44,549 and 44,549 now, and
    // the three load in half the time: `cargo xtask bench load`). The flags go through the
    // scratch record, whose contents the verifier does not track, and the paths that write to
    // a cache look its slot up again after the judgement (the same per-CPU entry: the program
    // cannot migrate). That is one array lookup more on the full path only, where `bench
    // packet` saw no change beyond its noise; the caches' answers above are untouched.
    parsed.caches = caches::of(denied_slot.is_some(), passing.is_some(), recent.is_some());
    let (local, remote) = if dir == DIR_EGRESS {
        (&parsed.src, &parsed.dst)
    } else {
        (&parsed.dst, &parsed.src)
    };
    let peer = lookup_peer(&cfg, dir, remote);
    let judgement = judge(pkt, &cfg, dir, parsed, local, remote, peer);
    // Only a flow's words, the policy and (for protected peers) the connection table decide
    // a verdict with ports: the caches may keep it under the policy's sequence.
    let ports = parsed.kind == kind::PORTS;
    let protected = peer.flags & PEER_PROTECTED != 0;
    let wanted = parsed.caches;
    let slot_if = |cache: u8| {
        if wanted & cache == 0 {
            return None;
        }
        slots::slot_for(dir, hash).and_then(NonNull::new)
    };
    let passing = || slot_if(caches::PASS).and_then(|s| NonNull::new(slots::pass(s.as_ptr())));
    match judgement {
        Judgement::Untouched(c) => {
            // With ports, only an unprotected peer's packet is untouched; checked all the same,
            // since a protected peer's verdict may rest on the connection table.
            if ports
                && !protected
                && let Some(slot) = passing()
            {
                passing::remember(slot.as_ptr(), cfg.seq, &words, c);
            }
            count(dir, c);
            Action::Pass
        }
        Judgement::Allowed(c) => {
            if ports {
                if protected {
                    if wanted & caches::RECENT != 0
                        && let Some(set) = recent::set_for(dir, hash)
                    {
                        recent::remember(set, cfg.seq, words);
                    }
                } else if let Some(slot) = passing() {
                    // Allowed by a rule alone: the connection table was not consulted.
                    passing::remember(slot.as_ptr(), cfg.seq, &words, c);
                }
            }
            count(dir, c);
            Action::Pass
        }
        Judgement::Denied(why) => {
            let audit = cfg.mode == MODE_AUDIT;
            let (verdict, action, c) = if audit {
                (VERDICT_AUDIT, Action::Pass, counter::AUDITED)
            } else {
                (VERDICT_DENIED, Action::Drop, counter::DENIED)
            };
            count_all(dir, [c, counter::REASON_BASE + u32::from(why)]);
            let denial = events::Denial {
                cfg: &cfg,
                parsed,
                ifindex: pkt.ifindex(),
                class: peer.class,
                dir,
                verdict,
                reason: why,
            };
            let denied_slot =
                slot_if(caches::DENIAL).and_then(|s| NonNull::new(slots::denial(s.as_ptr())));
            let carried = match denied_slot {
                Some(slot) => denied::take(slot.as_ptr(), dir, &words),
                None => 0,
            };
            let until = events::report(&denial, carried);
            // Only common shapes have a slot, and their verdict rests on nothing but the flow's
            // words (with a TCP segment's ACK flag), the policy, the mode, the connection table
            // and the node's sockets (whose connections enter the table with a packet).
            if let Some(slot) = denied_slot {
                denied::remember(slot.as_ptr(), &cfg, epoch, &words, until, why);
            }
            action
        }
    }
}

/// The flags of `Parsed::caches`.
mod caches {
    pub(super) const DENIAL: u8 = 1;
    pub(super) const PASS: u8 = 2;
    pub(super) const RECENT: u8 = 4;

    #[inline(always)]
    pub(super) fn of(denial: bool, pass: bool, recent: bool) -> u8 {
        (u8::from(denial) * DENIAL) | (u8::from(pass) * PASS) | (u8::from(recent) * RECENT)
    }
}

#[inline(always)]
fn judge<P: Packet>(
    pkt: &P,
    cfg: &Config,
    dir: u8,
    parsed: &Parsed,
    local: &Addr,
    remote: &Addr,
    peer: PeerInfo,
) -> Judgement {
    let protected = peer.flags & PEER_PROTECTED != 0;
    match parsed.kind {
        kind::PORTS => judge_ports(pkt, cfg, dir, parsed, local, remote, peer),
        // Only the first fragment carries ports, and it is judged; without it the datagram cannot
        // be reassembled, so a later fragment on its own delivers nothing.
        kind::LATER_FRAGMENT if protected => Judgement::Untouched(counter::FRAGMENT),
        kind::TRUNCATED if protected => Judgement::Denied(reason::MALFORMED),
        kind::OTHER if protected => Judgement::Denied(reason::PROTOCOL),
        kind::ICMP_OTHER if protected => Judgement::Denied(reason::ICMP_UNRELATED),
        kind::ICMP_ERROR => {
            // The quoted packet went the opposite way to this error.
            let flow = if dir == DIR_INGRESS {
                flow_key(
                    &parsed.q_src,
                    &parsed.q_dst,
                    parsed.q_sport,
                    parsed.q_dport,
                    parsed.q_proto,
                )
            } else {
                flow_key(
                    &parsed.q_dst,
                    &parsed.q_src,
                    parsed.q_dport,
                    parsed.q_sport,
                    parsed.q_proto,
                )
            };
            if flow_is_known(cfg, &flow) {
                Judgement::Allowed(counter::ALLOWED)
            } else if !protected {
                Judgement::Untouched(counter::PASSED)
            } else if dir == DIR_INGRESS && node_connection(pkt, cfg, parsed.family, &flow) {
                // From storage, about a connection of the node's that the table lost or never
                // learned: it goes where the connection's own packets would.
                Judgement::Allowed(counter::NODE_SOCKET)
            } else {
                Judgement::Denied(reason::ICMP_UNRELATED)
            }
        }
        _ => Judgement::Untouched(counter::PASSED),
    }
}

#[inline(always)]
fn judge_ports<P: Packet>(
    pkt: &P,
    cfg: &Config,
    dir: u8,
    parsed: &Parsed,
    local: &Addr,
    remote: &Addr,
    peer: PeerInfo,
) -> Judgement {
    let proto = parsed.proto;
    let (local_port, remote_port) = if dir == DIR_EGRESS {
        (parsed.sport, parsed.dport)
    } else {
        (parsed.dport, parsed.sport)
    };
    if known(&peer) {
        let p = peer;
        if p.flags & PEER_PROTECTED != 0 {
            let flow = flow_key(local, remote, local_port, remote_port, proto);
            if flow_is_known(cfg, &flow) {
                return Judgement::Allowed(counter::CONNTRACK_HIT);
            }
            if rule_allows(cfg, dir, p.class, proto, parsed.dport) {
                learn(cfg, &flow);
                return Judgement::Allowed(counter::ALLOWED);
            }
            if dir == DIR_EGRESS {
                return Judgement::Denied(reason::NO_RULE);
            }
            // Perhaps a connection of the node's that the table lost or never learned. A TCP
            // segment without ACK opens a connection (or resets one it never saw): it is never
            // the node's, and a SYN flood pays nothing more.
            if (proto != PROTO_TCP || parsed.tcp_flags & flow_word::TCP_ACK != 0)
                && node_connection(pkt, cfg, parsed.family, &flow)
            {
                return Judgement::Allowed(counter::NODE_SOCKET);
            }
            return Judgement::Denied(reason::UNSOLICITED);
        }
        if rule_allows(cfg, dir, p.class, proto, parsed.dport) {
            return Judgement::Allowed(counter::ALLOWED);
        }
    }
    if dir == DIR_INGRESS
        && is_guarded(cfg.generation, proto, parsed.dport)
        && is_guarded_address(cfg.generation, local)
    {
        return Judgement::Denied(reason::SOURCE_NOT_ALLOWED);
    }
    Judgement::Untouched(counter::PASSED)
}

/// Touches a flow the recent-flow cache answers for in the connection table, so that its LRU sees
/// it used, or puts it back if the LRU evicted it: the cache holds the flow under the running
/// sequence only if the table held it so (or a rule allowed it) when it was cached. Without it,
/// a full table evicts the node's busiest flows first, since their packets never reach it; a
/// connection of the node's own comes back through its socket (`sockets`), one routed through
/// the node from a pod would not.
#[inline(always)]
fn keep_in_table(cfg: &Config, dir: u8, words: &[u64; 5]) {
    let (src, dst) = addresses(words);
    let (sport, dport) = ports(words[4]);
    let proto = flow_word::proto(words[4]);
    let flow = if dir == DIR_EGRESS {
        flow_key(&src, &dst, sport, dport, proto)
    } else {
        flow_key(&dst, &src, dport, sport, proto)
    };
    // SAFETY: only the presence of the value is read; the lookup marks the entry used.
    if unsafe { FLOWS.get(flow) }.is_none() {
        learn(cfg, &flow);
    }
}

/// A flow of the node's that the connection table does not know (see `sockets`), judged as a
/// flow seeded from the node's sockets is: by the egress rule for the peer's port, asked first
/// as the cheaper question, then by the node's socket tables. Learned again when it is one.
#[inline(always)]
fn node_connection<P: Packet>(pkt: &P, cfg: &Config, family: u8, flow: &FlowKey) -> bool {
    let out = lookup_peer(cfg, DIR_EGRESS, &Addr(flow.remote));
    let yes = known(&out)
        && rule_allows(cfg, DIR_EGRESS, out.class, flow.proto, flow.remote_port)
        && sockets::node_is_connected(pkt, family, flow);
    if yes {
        learn(cfg, flow);
    }
    yes
}

/// Adds an allowed flow to the connection table under the running policy.
#[inline(always)]
fn learn(cfg: &Config, flow: &FlowKey) {
    let state = FlowState {
        seq: cfg.seq,
        _pad: 0,
    };
    // A full table evicts its least recently used flow; a failed insert only means this flow
    // is judged by the rules again on its next packet.
    let _ = FLOWS.insert(flow, state, 0);
    denied::flow_added();
}

#[inline(always)]
fn flow_key(local: &Addr, remote: &Addr, lport: u16, rport: u16, proto: u8) -> FlowKey {
    FlowKey {
        local: local.0,
        remote: remote.0,
        local_port: lport,
        remote_port: rport,
        proto,
        _pad: [0; 3],
    }
}

/// A flow in the connection table is trusted while the policy it was admitted under runs. After a
/// policy switch (or when the agent seeded it from existing sockets) it is checked against the
/// running rules once, in both directions, and either refreshed or forgotten.
#[inline(always)]
fn flow_is_known(cfg: &Config, flow: &FlowKey) -> bool {
    let Some(state) = FLOWS.get_ptr_mut(flow) else {
        return false;
    };
    // SAFETY: a map value pointer stays valid for this program run; a CPU racing on the same
    // flow can only write the same `seq`.
    if unsafe { (*state).seq } == cfg.seq {
        return true;
    }
    let out = lookup_peer(cfg, DIR_EGRESS, &Addr(flow.remote));
    let inb =
        (known(&out) && rule_allows(cfg, DIR_EGRESS, out.class, flow.proto, flow.remote_port)) || {
            let p = lookup_peer(cfg, DIR_INGRESS, &Addr(flow.remote));
            known(&p) && rule_allows(cfg, DIR_INGRESS, p.class, flow.proto, flow.local_port)
        };
    if inb {
        // SAFETY: as above.
        unsafe { (*state).seq = cfg.seq };
        true
    } else {
        let _ = FLOWS.remove(flow);
        false
    }
}

/// The peer's class and flags; an unknown peer is `UNKNOWN`. Not an `Option`: copying a `None`
/// copies undefined payload bytes, which LLVM may take from a clobbered register and which the
/// verifier then rejects.
#[inline(always)]
pub(crate) fn lookup_peer(cfg: &Config, dir: u8, addr: &Addr) -> PeerInfo {
    let key = PeerKey {
        generation: cfg.generation,
        dir,
        _pad: [0; 2],
        addr: addr.0,
    };
    // SAFETY: values are plain data written by the agent.
    if let Some(info) = unsafe { PEERS.get(key) } {
        return *info;
    }
    if cfg.tables & table_peer_prefixes(dir) == 0 {
        return UNKNOWN;
    }
    match PEER_PREFIXES.get(Key::new(PEER_KEY_HEADER_BITS + 128, key)) {
        Some(info) => *info,
        None => UNKNOWN,
    }
}

pub(crate) const UNKNOWN: PeerInfo = PeerInfo {
    class: NO_CLASS,
    flags: 0,
};

#[inline(always)]
fn known(p: &PeerInfo) -> bool {
    p.class != NO_CLASS
}

#[inline(always)]
fn rule_allows(cfg: &Config, dir: u8, class: u32, proto: u8, port: u16) -> bool {
    let generation = cfg.generation;
    let exact = RuleKey {
        generation,
        dir,
        proto,
        _pad: 0,
        class,
        port,
        _pad2: [0; 2],
    };
    // SAFETY: only the presence of the value is read.
    if unsafe { RULES.get(exact) }.is_some() {
        return true;
    }
    if cfg.tables & table_ranges(dir) == 0 {
        return false;
    }
    let range = RangeKey {
        generation,
        dir,
        proto,
        _pad: 0,
        class_be: class.to_be_bytes(),
        port_be: port.to_be_bytes(),
    };
    RANGES
        .get(Key::new(RANGE_KEY_HEADER_BITS + 16, range))
        .is_some()
}

/// True when `addr` is one where Trident listens: only then is a guarded port Trident's. Looked
/// up only for packets to a guarded port.
#[inline(always)]
fn is_guarded_address(generation: u8, addr: &Addr) -> bool {
    let key = PeerKey {
        generation,
        dir: DIR_INGRESS,
        _pad: [0; 2],
        addr: addr.0,
    };
    // SAFETY: only the presence of the value is read.
    unsafe { GUARD_ADDRS.get(key) }.is_some()
}

#[inline(always)]
fn is_guarded(generation: u8, proto: u8, port: u16) -> bool {
    let key = GuardKey {
        generation,
        proto,
        port,
    };
    let Some((word, bit)) = key.slot() else {
        return false;
    };
    match GUARDS.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}
