//! The per-CPU recent-flow cache: flows of each direction this CPU allowed lately, found again
//! from the packet's raw header words (`parse::flow_words`) with no parsing and no map lookup
//! but this one array read. A policy switch changes the sequence, which empties it logically.
use aya_ebpf::{macros::map, maps::PerCpuArray};

/// Flows of each direction this CPU allowed recently (from the connection table or a rule), in
/// two-way sets chosen by a hash of the flow, with the policy sequence each was allowed under:
/// the next packets of a node's few busy storage connections (bulk I/O, interleaved or not)
/// need neither parsing nor lookups. Two ways keep two busy flows that share a set from
/// evicting each other on every packet; a third only sends the oldest back to the connection
/// table.
#[map(name = "TP_RECENT")]
pub(crate) static RECENT: PerCpuArray<RecentSet> =
    PerCpuArray::with_max_entries(2 * RECENT_SETS, 0);

/// Sets of recent flows per CPU and direction (a power of two).
pub(crate) const RECENT_SETS: u32 = 128;

/// A flow as `parse::flow_words` gives it, the policy sequence it was allowed under, and how
/// many packets this entry answered. A zeroed entry matches no packet: the last word of a flow
/// carries its protocol.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct LastFlow {
    pub words: [u64; 5],
    pub seq: u32,
    pub hits: u32,
}

/// Every this many answers (a power of two), an entry's answer also touches the flow in the
/// connection table (see `verdict::keep_in_table`). The cache keeps a busy flow's packets away
/// from the table, whose LRU would otherwise take it for the least used and evict it first.
pub(crate) const TOUCH_EVERY: u32 = 256;

/// One set: `ways[0]` is the flow inserted last, `ways[1]` the one before it.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RecentSet {
    pub ways: [LastFlow; 2],
}

/// This CPU's set for a flow: its direction's half, at the flow's `hash`.
#[inline(always)]
pub(crate) fn set_for(dir: u8, hash: u32) -> Option<*mut RecentSet> {
    RECENT.get_ptr_mut(index(dir, hash, RECENT_SETS))
}

/// A hash of a flow's words, for the per-CPU caches (this one and `denied`).
#[inline(always)]
pub(crate) fn hash(w: &[u64; 5]) -> u32 {
    let mut x = w[0] ^ w[1] ^ w[2] ^ w[3] ^ w[4];
    x ^= x >> 32;
    x ^= x >> 16;
    x ^= x >> 8;
    x as u32
}

/// A flow's slot in a per-CPU array of `slots` (a power of two) per direction, directions after
/// one another.
#[inline(always)]
pub(crate) fn index(dir: u8, hash: u32, slots: u32) -> u32 {
    (dir as u32 & 1) * slots + (hash & (slots - 1))
}

/// The way of `set` that holds this flow, allowed under the running policy `seq` (the
/// connection table would say the same), or `None`.
#[inline(always)]
pub(crate) fn holding(set: *mut RecentSet, seq: u32, words: &[u64; 5]) -> Option<*mut LastFlow> {
    // SAFETY: `set` points into this CPU's array slot, valid for the program run; programs do not
    // nest on one CPU within one direction, so nothing writes it meanwhile.
    let ways = unsafe { &mut (*set).ways };
    if same_flow(&ways[0], seq, words) {
        Some(&raw mut ways[0])
    } else if same_flow(&ways[1], seq, words) {
        Some(&raw mut ways[1])
    } else {
        None
    }
}

/// Counts an answer of `way`; true every `TOUCH_EVERY` answers.
#[inline(always)]
pub(crate) fn answered(way: *mut LastFlow) -> bool {
    // SAFETY: as in `holding`.
    let hits = unsafe { &mut (*way).hits };
    *hits = hits.wrapping_add(1);
    *hits & (TOUCH_EVERY - 1) == 0
}

/// Makes this flow the set's newest way; the older of the two ways leaves.
#[inline(always)]
pub(crate) fn remember(set: *mut RecentSet, seq: u32, words: [u64; 5]) {
    // SAFETY: as in `holding`.
    unsafe {
        (*set).ways[1] = (*set).ways[0];
        let way = &mut (*set).ways[0];
        copy_words(&mut way.words, &words);
        way.seq = seq;
        way.hits = 0;
    }
}

#[inline(always)]
fn same_flow(entry: &LastFlow, seq: u32, w: &[u64; 5]) -> bool {
    entry.seq == seq && same_words(&entry.words, w)
}

/// Word by word: comparing or copying the arrays whole makes LLVM call `memcmp` or `memmove`,
/// byte loops in BPF, and keeps the words in stack memory on every path. The last word first:
/// it holds the ports, where two flows of a node differ most (an IPv6 flow's first words are
/// the addresses' common prefix).
#[inline(always)]
pub(crate) fn same_words(a: &[u64; 5], b: &[u64; 5]) -> bool {
    a[4] == b[4] && a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// See `same_words`.
#[inline(always)]
pub(crate) fn copy_words(to: &mut [u64; 5], from: &[u64; 5]) {
    to[0] = from[0];
    to[1] = from[1];
    to[2] = from[2];
    to[3] = from[3];
    to[4] = from[4];
}
