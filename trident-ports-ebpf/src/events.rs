//! Denied-packet events, with per-flow flood control. Nothing here can change a verdict.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use trident_ports_common::{
    Config, DIR_EGRESS, Event, EventGate, FlowKey, GateKey, counter, flow_word,
};

use crate::{
    maps::{EVENTS, GATES, count},
    parse::{Addr, Parsed, addresses, ports},
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

/// One CPU's event budget (see `Config::event_cost_ns`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Budget {
    /// Unspent budget, in nanoseconds of earning.
    credit_ns: u64,
    /// When it was last brought up to date (bpf_ktime_get_ns).
    last_ns: u64,
}

/// The most budget a CPU keeps: a burst of one second's worth of events.
const BUDGET_CAP_NS: u64 = 1_000_000_000;

#[map(name = "TP_EVENT_BUDGET")]
static BUDGET: PerCpuArray<Budget> = PerCpuArray::with_max_entries(1, 0);

/// Spends one event's worth of this CPU's budget, if it has that much.
#[inline(always)]
fn spend(cost_ns: u32, now: u64) -> bool {
    if cost_ns == 0 {
        return true;
    }
    let Some(b) = BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot; programs do not nest on one CPU within one direction, and the
    // two directions' programs at worst shift one event's budget between them.
    let b = unsafe { &mut *b };
    let earned = now.wrapping_sub(b.last_ns);
    b.last_ns = now;
    let credit = b.credit_ns.saturating_add(earned).min(BUDGET_CAP_NS);
    let cost = u64::from(cost_ns);
    if credit >= cost {
        b.credit_ns = credit - cost;
        true
    } else {
        b.credit_ns = credit;
        false
    }
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
    let (gate, until) = pass_gate(d.cfg, &key, now, carried);
    let suppressed = match gate {
        Gate::Open(n) => n,
        Gate::Closed => {
            count(d.dir, counter::EVENTS_SUPPRESSED);
            return until;
        }
        Gate::NoBudget => {
            count(d.dir, counter::EVENTS_RATE_LIMITED);
            return until;
        }
    };
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(d.dir, counter::EVENTS_LOST);
        return until;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reservation is sizeof(Event) bytes; every field is written before submit.
    unsafe {
        (*ev).ts_ns = now;
        (*ev).src = parsed.src.0;
        (*ev).dst = parsed.dst.0;
        (*ev).src_port = sport;
        (*ev).dst_port = dport;
        (*ev).ifindex = d.ifindex;
        (*ev).proto = parsed.proto;
        (*ev).dir = d.dir;
        (*ev).verdict = d.verdict;
        (*ev).reason = d.reason;
        (*ev).tcp_flags = flags;
        (*ev).family = parsed.family;
        (*ev).seq = d.cfg.seq as u16;
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
fn gate_key(dir: u8, src: &Addr, dst: &Addr, sport: u16, dport: u16, proto: u8) -> GateKey {
    let egress = dir == DIR_EGRESS;
    GateKey {
        flow: FlowKey {
            local: if egress { src.0 } else { dst.0 },
            remote: if egress { dst.0 } else { src.0 },
            local_port: if egress { sport } else { dport },
            remote_port: if egress { dport } else { sport },
            proto,
            _pad: [0; 3],
        },
        dir,
        _pad: [0; 3],
    }
}

/// What the gate says about one denial.
enum Gate {
    /// Report it, standing for this many suppressed before it.
    Open(u32),
    /// The flow had an event less than an interval ago: counted on its gate.
    Closed,
    /// The gate would open but this CPU's event budget is spent: counted on the gate, which
    /// stays open for the flow's next packet.
    NoBudget,
}

/// At most one event per flow and direction per interval, and per CPU no more than the budget
/// allows (`spend`). Also returns until when the verdict may be cached: the gate's deadline, or
/// (without budget) when one event's worth has been earned again.
#[inline(always)]
fn pass_gate(cfg: &Config, key: &GateKey, now: u64, carried: u32) -> (Gate, u64) {
    let interval = cfg.event_interval_ns;
    if interval == 0 {
        return if spend(cfg.event_cost_ns, now) {
            (Gate::Open(carried), 0)
        } else {
            (Gate::NoBudget, 0)
        };
    }
    let retry = now.wrapping_add(u64::from(cfg.event_cost_ns));
    if let Some(gate) = GATES.get_ptr_mut(key) {
        // SAFETY: valid for this run; CPUs racing on one flow can only shift a suppressed
        // count between two consecutive events of that flow.
        let gate = unsafe { &mut *gate };
        if now.wrapping_sub(gate.last_ns) < interval {
            gate.suppressed = gate.suppressed.wrapping_add(1).wrapping_add(carried);
            return (Gate::Closed, gate.last_ns.wrapping_add(interval));
        }
        if !spend(cfg.event_cost_ns, now) {
            gate.suppressed = gate.suppressed.wrapping_add(1).wrapping_add(carried);
            return (Gate::NoBudget, retry);
        }
        let suppressed = gate.suppressed.wrapping_add(carried);
        gate.suppressed = 0;
        gate.last_ns = now;
        (Gate::Open(suppressed), now.wrapping_add(interval))
    } else if spend(cfg.event_cost_ns, now) {
        let fresh = EventGate {
            last_ns: now,
            suppressed: 0,
            _pad: 0,
        };
        let _ = GATES.insert(key, fresh, 0);
        (Gate::Open(carried), now.wrapping_add(interval))
    } else {
        // An open gate that already counts this packet.
        let open = EventGate {
            last_ns: now.wrapping_sub(interval),
            suppressed: 1u32.wrapping_add(carried),
            _pad: 0,
        };
        let _ = GATES.insert(key, open, 0);
        (Gate::NoBudget, retry)
    }
}
