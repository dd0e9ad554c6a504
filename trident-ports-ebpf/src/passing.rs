//! The per-CPU recent-pass cache: flows to and from unprotected addresses this CPU judged
//! lately (kept in `slots`, beside the recent-denial entry). Most of a node's packets are not
//! Trident's (pods, kubelet, the API server): before this cache each of them paid the parse and
//! the peer lookups (65-80 ns) to be passed untouched; a flow's later packets now cost one array
//! read.
//!
//! Sound because such a verdict rests on nothing but the flow's words and the policy: the
//! remote address is not protected, so neither the connection table nor the mode is consulted
//! (the verdict is "not subject to policy", or allowed by a rule, as from a cluster subnet to a
//! node port), and a denial (a guarded port) is never kept here. Every policy change, in place
//! or by a generation switch, writes a new sequence last, which empties the cache logically:
//! an address that becomes protected is policed from its next packet on. While a change is
//! written in place the cache rests (`OPTION_UPDATING`): the maps then move from the old policy
//! to the new one, and a cached pass would repeat the old policy after they moved.
use crate::recent::{copy_words, same_words};

/// A flow as `parse::flow_words` gives it, the policy sequence it was judged under and the
/// counter its verdict bumps (`PASSED` or `ALLOWED`). A zeroed entry matches no packet: the
/// last word of a flow carries its protocol.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct PassingFlow {
    pub words: [u64; 5],
    pub seq: u32,
    pub counter: u32,
}

/// The counter to bump when `slot` holds this flow, judged under the running policy `seq`.
#[inline(always)]
pub(crate) fn answer(slot: *mut PassingFlow, seq: u32, words: &[u64; 5]) -> Option<u32> {
    // SAFETY: this CPU's slot, valid for the program run; programs do not nest on one CPU
    // within one direction, so nothing writes it meanwhile.
    let e = unsafe { &*slot };
    (e.seq == seq && same_words(&e.words, words)).then_some(e.counter)
}

/// Remembers that the full path passed this flow under `seq`, counting it under `counter`.
#[inline(always)]
pub(crate) fn remember(slot: *mut PassingFlow, seq: u32, words: &[u64; 5], counter: u32) {
    // SAFETY: as in `answer`.
    let e = unsafe { &mut *slot };
    copy_words(&mut e.words, words);
    e.seq = seq;
    e.counter = counter;
}
