//! Denied-packet events, with per-flow flood control. Nothing here can change a verdict.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use trident_ports_common::{Config, DIR_EGRESS, Event, EventGate, FlowKey, GateKey, counter};

use crate::{
    maps::{EVENTS, GATES, count},
    parse::Parsed,
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

/// Reports a denial, at most once per flow and direction per interval (`pass_gate`). Called
/// after the verdict is fixed: whether an event can be written never changes it.
#[inline(always)]
pub(crate) fn report(d: &Denial) {
    let parsed = d.parsed;
    let (sport, dport, flags) = (parsed.sport, parsed.dport, parsed.tcp_flags);
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(suppressed) = pass_gate(d, sport, dport, now) else {
        count(d.dir, counter::EVENTS_SUPPRESSED);
        return;
    };
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(d.dir, counter::EVENTS_LOST);
        return;
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
}

/// At most one event per flow and direction per interval. Returns the number of events suppressed
/// since the last one, or `None` when this one is suppressed too.
#[inline(always)]
fn pass_gate(d: &Denial, sport: u16, dport: u16, now: u64) -> Option<u32> {
    if d.cfg.event_interval_ns == 0 {
        return Some(0);
    }
    let p = d.parsed;
    let egress = d.dir == DIR_EGRESS;
    let key = GateKey {
        flow: FlowKey {
            local: if egress { p.src } else { p.dst },
            remote: if egress { p.dst } else { p.src },
            local_port: if egress { sport } else { dport },
            remote_port: if egress { dport } else { sport },
            proto: p.proto,
            _pad: [0; 3],
        },
        dir: d.dir,
        _pad: [0; 3],
    };
    if let Some(gate) = GATES.get_ptr_mut(key) {
        // SAFETY: valid for this run; CPUs racing on one flow can only shift a suppressed
        // count between two consecutive events of that flow.
        let gate = unsafe { &mut *gate };
        if now.wrapping_sub(gate.last_ns) < d.cfg.event_interval_ns {
            gate.suppressed = gate.suppressed.wrapping_add(1);
            return None;
        }
        let suppressed = gate.suppressed;
        gate.suppressed = 0;
        gate.last_ns = now;
        Some(suppressed)
    } else {
        let fresh = EventGate {
            last_ns: now,
            suppressed: 0,
            _pad: 0,
        };
        let _ = GATES.insert(key, fresh, 0);
        Some(0)
    }
}
