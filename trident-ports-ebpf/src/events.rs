//! Denied-packet events, with per-flow flood control. Nothing here can change a verdict.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use trident_ports_common::{
    Config, DIR_EGRESS, Event, EventGate, FlowKey, GateKey, counter, flow_word,
};

use crate::{
    maps::{EVENTS, GATES, count},
    parse::{Parsed, addresses, ports},
};

/// Everything an event needs, passed by reference: BPF functions take at most five arguments.
pub(crate) struct Denial<'a> {
    pub cfg: &'a Config,
    pub parsed: &'a Parsed,
    pub ifindex: u32,
    pub class: u32,
    pub dir: u8,
    pub verdict: u8,
    pub reason: u8,
}

/// Reports a denial, at most once per flow and direction per interval (`pass_gate`), standing
/// for `carried` earlier packets the recent-denial cache answered. Called after the verdict is
/// fixed: whether an event can be written never changes it. Returns when the flow's gate opens
/// again (0 when events are not gated).
#[inline(always)]
pub(crate) fn report(d: &Denial, carried: u32) -> u64 {
    let parsed = d.parsed;
    let (sport, dport, flags) = (parsed.sport, parsed.dport, parsed.tcp_flags);
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = gate_key(d.dir, &parsed.src, &parsed.dst, sport, dport, parsed.proto);
    let (suppressed, until) = pass_gate(d.cfg.event_interval_ns, &key, now, carried);
    let Some(suppressed) = suppressed else {
        count(d.dir, counter::EVENTS_SUPPRESSED);
        return until;
    };
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(d.dir, counter::EVENTS_LOST);
        return until;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reservation is sizeof(Event) bytes; every field is written before submit.
    unsafe {
        (*ev).ts_ns = now;
        (*ev).src = parsed.src;
        (*ev).dst = parsed.dst;
        (*ev).src_port = sport;
        (*ev).dst_port = dport;
        (*ev).ifindex = d.ifindex;
        (*ev).proto = parsed.proto;
        (*ev).dir = d.dir;
        (*ev).verdict = d.verdict;
        (*ev).reason = d.reason;
        (*ev).tcp_flags = flags;
        (*ev).family = parsed.family;
        (*ev)._pad = [0; 2];
        (*ev).suppressed = suppressed;
        (*ev).class = d.class;
    }
    entry.submit(0);
    count(d.dir, counter::EVENTS_EMITTED);
    until
}

/// Adds `n` suppressed packets to the gate of the flow `words` packed (one the recent-denial
/// cache answered and is now forgetting), so that its next event counts them.
#[inline(always)]
pub(crate) fn add_suppressed(dir: u8, words: &[u64; 5], n: u32) {
    let (src, dst) = addresses(words);
    let (sport, dport) = ports(words[4]);
    let key = gate_key(dir, &src, &dst, sport, dport, flow_word::proto(words[4]));
    if let Some(gate) = GATES.get_ptr_mut(key) {
        // SAFETY: valid for this run; a racing CPU can only shift a count between two events.
        unsafe { (*gate).suppressed = (*gate).suppressed.wrapping_add(n) };
    }
}

#[inline(always)]
fn gate_key(dir: u8, src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16, proto: u8) -> GateKey {
    let egress = dir == DIR_EGRESS;
    GateKey {
        flow: FlowKey {
            local: if egress { *src } else { *dst },
            remote: if egress { *dst } else { *src },
            local_port: if egress { sport } else { dport },
            remote_port: if egress { dport } else { sport },
            proto,
            _pad: [0; 3],
        },
        dir,
        _pad: [0; 3],
    }
}

/// At most one event per flow and direction per interval. Returns the number of events
/// suppressed since the last one (`carried` included), or `None` when this one is suppressed
/// too; and when the gate opens next.
#[inline(always)]
fn pass_gate(interval: u64, key: &GateKey, now: u64, carried: u32) -> (Option<u32>, u64) {
    if interval == 0 {
        return (Some(carried), 0);
    }
    if let Some(gate) = GATES.get_ptr_mut(key) {
        // SAFETY: valid for this run; CPUs racing on one flow can only shift a suppressed
        // count between two consecutive events of that flow.
        let gate = unsafe { &mut *gate };
        if now.wrapping_sub(gate.last_ns) < interval {
            gate.suppressed = gate.suppressed.wrapping_add(1).wrapping_add(carried);
            return (None, gate.last_ns.wrapping_add(interval));
        }
        let suppressed = gate.suppressed.wrapping_add(carried);
        gate.suppressed = 0;
        gate.last_ns = now;
        (Some(suppressed), now.wrapping_add(interval))
    } else {
        let fresh = EventGate {
            last_ns: now,
            suppressed: 0,
            _pad: 0,
        };
        let _ = GATES.insert(key, fresh, 0);
        (Some(carried), now.wrapping_add(interval))
    }
}
