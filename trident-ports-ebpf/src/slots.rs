//! The per-CPU direct-mapped slots the recent-pass and recent-denial caches share: a flow's slot
//! holds both caches' entries for its hash, so one array lookup serves both questions.
use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::{denied::DeniedFlow, passing::PassingFlow, recent};

#[map(name = "TP_SLOTS")]
pub(crate) static SLOTS: PerCpuArray<Slot> = PerCpuArray::with_max_entries(2 * SLOTS_PER_DIR, 0);

/// Slots per CPU and direction (a power of two). A flood of one flow needs one; a node's busy
/// flows that are not Trident's are few per CPU at a time, and two that collide only send each
/// other to the full path.
pub(crate) const SLOTS_PER_DIR: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    pub denial: DeniedFlow,
    pub pass: PassingFlow,
}

/// This CPU's slot for a flow travelling in `dir`, at its `recent::hash`.
#[inline(always)]
pub(crate) fn slot_for(dir: u8, hash: u32) -> Option<*mut Slot> {
    SLOTS.get_ptr_mut(recent::index(dir, hash, SLOTS_PER_DIR))
}

/// The recent-pass entry of `slot`.
#[inline(always)]
pub(crate) fn pass(slot: *mut Slot) -> *mut PassingFlow {
    // SAFETY: a field of a valid map value; no reference is made, only its address.
    unsafe { core::ptr::addr_of_mut!((*slot).pass) }
}

/// The recent-denial entry of `slot`.
#[inline(always)]
pub(crate) fn denial(slot: *mut Slot) -> *mut DeniedFlow {
    // SAFETY: as in `pass`.
    unsafe { core::ptr::addr_of_mut!((*slot).denial) }
}
