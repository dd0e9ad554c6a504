//! The maps the datapath shares with the agent. Names come from the common crate.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use trident_ports_common::{
    COUNTER_BLOCKS, Config, CounterBlock, EventGate, FlowKey, FlowState, GUARD_WORDS, GateKey,
    PeerInfo, PeerKey, RangeKey, RuleKey, limits,
};

use crate::parse::Parsed;

#[map(name = "TP_CONFIG")]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Policy maps allocate on demand (BPF_F_NO_PREALLOC): they are sized for two generations of
/// the largest policy, which a typical node never comes near.
const NO_PREALLOC: u32 = 1;

#[map(name = "TP_PEERS")]
pub(crate) static PEERS: HashMap<PeerKey, PeerInfo> =
    HashMap::with_max_entries(limits::PEERS, NO_PREALLOC);

#[map(name = "TP_PEER_PREFIXES")]
pub(crate) static PEER_PREFIXES: LpmTrie<PeerKey, PeerInfo> =
    LpmTrie::with_max_entries(limits::PEER_PREFIXES, NO_PREALLOC);

#[map(name = "TP_RULES")]
pub(crate) static RULES: HashMap<RuleKey, u32> =
    HashMap::with_max_entries(limits::RULES, NO_PREALLOC);

#[map(name = "TP_RANGES")]
pub(crate) static RANGES: LpmTrie<RangeKey, u32> =
    LpmTrie::with_max_entries(limits::RANGES, NO_PREALLOC);

/// Guarded node ports, a bitmap (see `GuardKey::slot`).
#[map(name = "TP_GUARDS")]
pub(crate) static GUARDS: Array<u64> = Array::with_max_entries(GUARD_WORDS, 0);

/// Where the guarded ports are guarded: packets to other addresses (pods routed through the
/// node) are not Trident's.
#[map(name = "TP_GUARD_ADDRS")]
pub(crate) static GUARD_ADDRS: HashMap<PeerKey, u8> =
    HashMap::with_max_entries(limits::GUARD_ADDRS, NO_PREALLOC);

#[map(name = "TP_FLOWS")]
pub(crate) static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(limits::FLOWS, 0);

/// See `trident_ports_common::maps::FLOW_EPOCH`.
#[map(name = "TP_FLOW_EPOCH")]
pub(crate) static FLOW_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "TP_GATES")]
pub(crate) static GATES: LruHashMap<GateKey, EventGate> =
    LruHashMap::with_max_entries(limits::GATES, 0);

#[map(name = "TP_EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(limits::EVENTS_BYTES, 0);

#[map(name = "TP_COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<CounterBlock> =
    PerCpuArray::with_max_entries(COUNTER_BLOCKS, 0);

/// Scratch space for the parsed headers, one slot per direction: the 512-byte BPF stack cannot
/// hold them beside the lookup keys. Programs do not nest on one CPU within one direction.
#[map(name = "TP_SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<Parsed> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
pub(crate) fn count(dir: u8, counter: u32) {
    count_all(dir, [counter]);
}

/// Bumps each of `counters` of direction `dir` by one, with one lookup of the block.
#[inline(always)]
pub(crate) fn count_all<const N: usize>(dir: u8, counters: [u32; N]) {
    let Some(block) = COUNTERS.get_ptr_mut(u32::from(dir & 1)) else {
        return;
    };
    // SAFETY: this CPU's block for this direction, valid for the program run; programs do not
    // nest on one CPU within one direction, so nothing writes it meanwhile.
    let block = unsafe { &mut *block };
    for c in counters {
        if let Some(v) = block.get_mut(c as usize) {
            *v += 1;
        }
    }
}
