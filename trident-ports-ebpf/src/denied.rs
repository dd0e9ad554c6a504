//! The per-CPU recent-denial cache: flows this CPU denied (or audited) and reported less than an
//! event interval ago. Until the flow's event gate opens again its packets would only be counted
//! and suppressed, so they get the same verdict from one array read (and a clock read once per
//! scheduler tick), with no parsing and no lookup: a flood of a denied flow costs about what an
//! allowed flow does.
//!
//! An entry is trusted only while the epoch (`maps::FLOW_EPOCH`) holds the value it was made
//! under, and nothing else is checked on a packet: the agent bumps the epoch after every write of
//! the configuration (a policy change, a mode switch, the cache turned off), the datapath and the
//! agent after every insert into the connection table (which may be this flow's other
//! direction). Either sends the flow back to the full path. What the cache suppressed is handed
//! to the flow's gate, so the next event still says how many packets it stands for.
//!
//! For that, an entry must rest on a configuration read after its epoch: the full path copies
//! the configuration before it reads the epoch, so `remember` reads the configuration once more
//! and keeps the entry only if it is still the one the verdict was made under. A write the
//! copy missed is then either seen by that read (no entry) or followed by a bump after it.
//!
//! An entry stands for every packet with its flow words, and those carry a TCP segment's ACK
//! flag, the one flag a verdict rests on: a SYN from storage denied on a connection of the
//! node's that the table lost is not the connection's own segments, which its socket lets in.
//!
//! It is asked before the recent-flow cache, and the order cannot change a verdict: an entry
//! here and a recent flow never both hold under one sequence and epoch. A flow the full path
//! denies is not answered by the recent-flow cache (or the packet would not have got there), and
//! a protected flow that the full path allows after a denial was put in the connection table
//! after that denial read the epoch (the denial found it absent), which bumped the epoch.
use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_ns};
use trident_ports_common::{Config, MODE_AUDIT, OPTION_NO_RECENT_DENIALS, counter};

use crate::{
    events,
    maps::{CONFIG, FLOW_EPOCH, count},
    recent::{copy_words, same_words},
    verdict::Action,
};

/// A flow as `parse::flow_words` gives it, and the verdict it got. A zeroed entry matches no
/// packet: the last word of a flow carries its protocol.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct DeniedFlow {
    pub words: [u64; 5],
    /// The flow's event gate is closed until then (bpf_ktime_get_ns).
    pub until_ns: u64,
    /// The scheduler tick (jiffies) in which `until_ns` was last found to lie ahead.
    pub tick: u64,
    /// The epoch read before the verdict's lookups.
    pub epoch: u64,
    /// Packets this entry answered: suppressed events the flow's gate has not counted yet.
    pub suppressed: u32,
    pub mode: u8,
    /// The counter this entry's packets bump: `counter::recent_denial` of its verdict and reason.
    pub counter: u8,
    pub _pad: [u8; 2],
}

/// The epoch. Read before any lookup a cached verdict rests on: an insert (or a configuration
/// write) after this read bumps the epoch after it, so the entry made from those lookups is never
/// trusted.
#[inline(always)]
pub(crate) fn epoch() -> u64 {
    match FLOW_EPOCH.get_ptr(0) {
        // SAFETY: an array slot, valid for the program run; a torn read cannot happen for an
        // aligned u64, and any value read is only compared.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// Called after every insert into the connection table.
#[inline(always)]
pub(crate) fn flow_added() {
    if let Some(p) = FLOW_EPOCH.get_ptr_mut(0) {
        // SAFETY: `p` is an aligned u64 in an array map value, valid for the program run. This is
        // BPF_XADD, the atomic add every BPF kernel accepts (Rust's `fetch_add` is not available
        // on this target, and the 5.12+ fetch form is not needed); the x86 JIT emits `lock add`,
        // a full barrier, so the insert is visible before the new epoch is.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({p} + 0) += {one}",
                p = in(reg) p,
                one = in(reg) 1u64,
                options(nostack),
            );
        }
    }
}

/// True when denials are kept in this cache under `cfg`: events are gated by an interval, and
/// the cache is not turned off.
#[inline(always)]
pub(crate) fn cached(cfg: &Config) -> bool {
    cfg.event_interval_ns != 0 && cfg.options & OPTION_NO_RECENT_DENIALS == 0
}

/// The verdict for a packet of a flow this CPU denied moments ago, or `None` for the full path.
/// Asked first of all, before the caller has read the configuration: the flow is compared
/// first, so that other flows leave at once, and only then is the epoch read.
#[inline(always)]
pub(crate) fn answer(slot: *mut DeniedFlow, dir: u8, words: &[u64; 5]) -> Option<Action> {
    // SAFETY: this CPU's slot, valid for the program run; programs do not nest on one CPU within
    // one direction, so nothing writes it meanwhile.
    let e = unsafe { &mut *slot };
    if !same_words(&e.words, words) || e.epoch != epoch() {
        return None;
    }
    // The clock is read once per tick: jiffies cost a load, the clock 20-40 ns (in a VM). An
    // entry can outlive its gate by less than a tick, which delays the flow's next event by as
    // much, never a verdict.
    // SAFETY: helpers without arguments or preconditions (jiffies: Linux 5.5).
    let tick = unsafe { bpf_jiffies64() };
    if tick != e.tick {
        // SAFETY: as above.
        let now = unsafe { bpf_ktime_get_ns() };
        if e.until_ns.wrapping_sub(now) as i64 <= 0 {
            return None;
        }
        e.tick = tick;
    }
    e.suppressed = e.suppressed.wrapping_add(1);
    // One counter for the four this packet counts under (see `counter::recent_denial`).
    count(dir, u32::from(e.counter));
    Some(if e.mode == MODE_AUDIT {
        Action::Pass
    } else {
        Action::Drop
    })
}

/// Empties the slot before the full path reports a denial of `words`: returns the suppressed
/// count when the slot held this flow, and hands another flow's to that flow's gate.
#[inline(always)]
pub(crate) fn take(slot: *mut DeniedFlow, dir: u8, words: &[u64; 5]) -> u32 {
    // SAFETY: as in `answer`.
    let e = unsafe { &mut *slot };
    let n = e.suppressed;
    if n == 0 {
        return 0;
    }
    e.suppressed = 0;
    if same_words(&e.words, words) {
        n
    } else {
        events::add_suppressed(dir, &e.words, n);
        0
    }
}

/// Remembers a denial the full path just reported under `cfg`, its copy of the configuration;
/// the gate is closed until `until_ns`. `epoch` was read after `cfg` was copied and before the
/// verdict's lookups.
#[inline(always)]
pub(crate) fn remember(
    slot: *mut DeniedFlow,
    cfg: &Config,
    epoch: u64,
    words: &[u64; 5],
    until_ns: u64,
    reason: u8,
) {
    // The configuration now, read after the epoch: unless the verdict's copy is still in force,
    // a write came between them that the epoch may not show (see the module's docs).
    // SAFETY: the array's one entry, valid for the program run; the agent rewrites it whole,
    // and a read across a rewrite differs from the copy, which only leaves the slot alone.
    let Some(now) = CONFIG.get_ptr(0).map(|c| unsafe { &*c }) else {
        return;
    };
    if !(cached(now) && now.seq == cfg.seq && now.mode == cfg.mode) {
        return;
    }
    // SAFETY: as in `answer`; `take` has handed on the previous entry's count.
    let e = unsafe { &mut *slot };
    copy_words(&mut e.words, words);
    e.until_ns = until_ns;
    // SAFETY: a helper without arguments or preconditions. The full path has just read the clock
    // and `until_ns` lies ahead of it.
    e.tick = unsafe { bpf_jiffies64() };
    e.epoch = epoch;
    e.suppressed = 0;
    e.mode = cfg.mode;
    e.counter = counter::recent_denial(cfg.mode == MODE_AUDIT, reason) as u8;
}
