//! The maps the datapath shares with the agent. Names come from the common crate.
use crate::parse::Parsed;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use trident_ports_common::{
    COUNTER_SLOTS, Config, EventGate, FlowKey, FlowState, GUARD_WORDS, GateKey, PeerInfo, PeerKey,
    RangeKey, RuleKey, limits,
};

#[map(name = "TP_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Policy maps allocate on demand (BPF_F_NO_PREALLOC): they are sized for two generations of
/// the largest policy, which a typical node never comes near.
const NO_PREALLOC: u32 = 1;

#[map(name = "TP_PEERS")]
pub static PEERS: HashMap<PeerKey, PeerInfo> =
    HashMap::with_max_entries(limits::PEERS, NO_PREALLOC);

#[map(name = "TP_PEER_PREFIXES")]
pub static PEER_PREFIXES: LpmTrie<PeerKey, PeerInfo> =
    LpmTrie::with_max_entries(limits::PEER_PREFIXES, NO_PREALLOC);

#[map(name = "TP_RULES")]
pub static RULES: HashMap<RuleKey, u32> = HashMap::with_max_entries(limits::RULES, NO_PREALLOC);

#[map(name = "TP_RANGES")]
pub static RANGES: LpmTrie<RangeKey, u32> = LpmTrie::with_max_entries(limits::RANGES, NO_PREALLOC);

/// Guarded node ports, a bitmap (see `GuardKey::slot`).
#[map(name = "TP_GUARDS")]
pub static GUARDS: Array<u64> = Array::with_max_entries(GUARD_WORDS, 0);

#[map(name = "TP_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(limits::FLOWS, 0);

#[map(name = "TP_GATES")]
pub static GATES: LruHashMap<GateKey, EventGate> = LruHashMap::with_max_entries(limits::GATES, 0);

#[map(name = "TP_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(limits::EVENTS_BYTES, 0);

#[map(name = "TP_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Scratch space for the parsed headers, one slot per direction: the 512-byte BPF stack cannot
/// hold them beside the lookup keys. Programs do not nest on one CPU within one direction.
#[map(name = "TP_SCRATCH")]
pub static SCRATCH: PerCpuArray<Parsed> = PerCpuArray::with_max_entries(2, 0);

/// Flows of each direction this CPU allowed recently (from the connection table or a rule), in
/// two-way sets chosen by a hash of the flow, with the policy sequence each was allowed under:
/// the next packets of a node's few busy storage connections (bulk I/O, interleaved or not)
/// need neither parsing nor lookups. Two ways keep two busy flows that share a set from
/// evicting each other on every packet; a third only sends the oldest back to the connection
/// table.
#[map(name = "TP_RECENT")]
pub static RECENT: PerCpuArray<RecentSet> = PerCpuArray::with_max_entries(2 * RECENT_SETS, 0);

/// Sets of recent flows per CPU and direction (a power of two).
pub const RECENT_SETS: u32 = 128;

/// A flow as `parse::flow_words` gives it, and the policy sequence it was allowed under. A
/// zeroed entry matches no packet: the last word of a flow carries its protocol.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastFlow {
    pub words: [u64; 5],
    pub seq: u32,
    pub _pad: u32,
}

/// One set: `ways[0]` is the flow inserted last, `ways[1]` the one before it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RecentSet {
    pub ways: [LastFlow; 2],
}

#[inline(always)]
pub fn count(dir: u8, counter: u32) {
    let slot = dir as u32 * trident_ports_common::counter::COUNT + counter;
    if let Some(v) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *v += 1 };
    }
}
