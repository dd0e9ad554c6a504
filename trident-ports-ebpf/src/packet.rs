//! Reading packet bytes, the one thing that differs between TC and XDP.
use aya_ebpf::programs::{TcContext, XdpContext};

/// Offsets beyond this are never read: it bounds every offset for the verifier and is far past
/// any header chain we accept (two VLAN tags, IPv6 with eight extension headers, an ICMP error).
pub const MAX_OFFSET: usize = 1024;

pub trait Packet {
    /// Reads a `T` at `off` bytes from the start of the frame, or `None` if the frame is shorter.
    fn load<T: Copy>(&self, off: usize) -> Option<T>;
    fn ifindex(&self) -> u32;
}

impl Packet for TcContext {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        if off > MAX_OFFSET {
            return None;
        }
        // bpf_skb_load_bytes also reads non-linear (paged) skb data.
        TcContext::load::<T>(self, off).ok()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the whole program run.
        unsafe { (*self.skb.skb).ifindex }
    }
}

impl Packet for XdpContext {
    /// bpf_xdp_load_bytes (Linux 5.18) rather than direct access: the verifier cannot bound
    /// direct reads at offsets that depend on header lengths, and the helper also reads
    /// multi-buffer frames.
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        if off > MAX_OFFSET {
            return None;
        }
        let mut out = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes or fails.
        let ret = unsafe {
            aya_ebpf::helpers::generated::bpf_xdp_load_bytes(
                self.ctx,
                off as u32,
                out.as_mut_ptr() as *mut core::ffi::c_void,
                core::mem::size_of::<T>() as u32,
            )
        };
        if ret == 0 {
            // SAFETY: the helper succeeded, so every byte is written.
            Some(unsafe { out.assume_init() })
        } else {
            None
        }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the whole program run.
        unsafe { (*self.ctx).ingress_ifindex }
    }
}
