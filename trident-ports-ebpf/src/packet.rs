//! Reading packet bytes, the one thing that differs between TC and XDP.
use aya_ebpf::{
    EbpfContext,
    programs::{TcContext, XdpContext},
};

/// Offsets beyond this are never read: it bounds every offset for the verifier and is far past
/// any header chain we accept (two VLAN tags, IPv6 with eight extension headers, an ICMP error).
pub(crate) const MAX_OFFSET: usize = 1024;

pub(crate) trait Packet {
    /// Copies `len` bytes at `off` from the start of the frame to `to` (the load-bytes helper
    /// of the program type); 0 on success.
    ///
    /// # Safety
    /// `to` must be valid for writes of `len` bytes.
    unsafe fn load_bytes(&self, off: u32, to: *mut core::ffi::c_void, len: u32) -> i64;
    fn ifindex(&self) -> u32;
    /// The start and end of the bytes the program can read directly: for TC, the skb's linear
    /// area, which holds the headers of nearly every packet.
    fn direct(&self) -> (usize, usize);
    /// The program's context, for helpers that take it.
    fn ctx(&self) -> *mut core::ffi::c_void;

    /// Reads a `T` at `off` bytes from the start of the frame; false when the frame is shorter,
    /// and the value is then zero. Never an `Option`: LLVM computes an `Option`'s payload before
    /// testing its tag, and a `None`'s undefined payload can sit in any register, even one that
    /// holds a pointer, which verifiers before 6.x reject on paths they cannot prune.
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> (bool, T) {
        let mut out = zeroed::<T>();
        if off > MAX_OFFSET {
            return (false, out);
        }
        // SAFETY: `out` is a `T`, valid for size_of::<T>() bytes.
        let ret = unsafe {
            self.load_bytes(
                off as u32,
                (&raw mut out).cast::<core::ffi::c_void>(),
                size_of::<T>() as u32,
            )
        };
        (ret == 0, out)
    }

    /// As `read`, into `out`: an address read in place into the parse's scratch, where `read`'s
    /// returned pair would be copied out byte by byte.
    #[inline(always)]
    fn read_into<T: Copy>(&self, off: usize, out: &mut T) -> bool {
        // SAFETY: `out` is a `T`, valid for size_of::<T>() bytes.
        let ok = off <= MAX_OFFSET
            && unsafe {
                self.load_bytes(
                    off as u32,
                    core::ptr::from_mut(out).cast::<core::ffi::c_void>(),
                    size_of::<T>() as u32,
                )
            } == 0;
        if !ok {
            *out = zeroed();
        }
        ok
    }
}

#[inline(always)]
fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for the plain integer and byte-array types the parser reads (and
    // `parse::Addr`, a byte array): all bytes zero is a valid value of each.
    unsafe { core::mem::MaybeUninit::<T>::zeroed().assume_init() }
}

impl Packet for TcContext {
    /// bpf_skb_load_bytes also reads non-linear (paged) skb data.
    #[inline(always)]
    unsafe fn load_bytes(&self, off: u32, to: *mut core::ffi::c_void, len: u32) -> i64 {
        // SAFETY: the skb pointer is valid for the program run; the caller vouches for `to`.
        unsafe {
            aya_ebpf::helpers::generated::bpf_skb_load_bytes(
                self.skb.skb as *const core::ffi::c_void,
                off,
                to,
                len,
            )
        }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the whole program run.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn direct(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    fn ctx(&self) -> *mut core::ffi::c_void {
        self.as_ptr()
    }
}

impl Packet for XdpContext {
    /// bpf_xdp_load_bytes (Linux 5.18) rather than direct access: the verifier cannot bound
    /// direct reads at offsets that depend on header lengths, and the helper also reads
    /// multi-buffer frames. (`parse::common` reads fixed offsets directly.)
    #[inline(always)]
    unsafe fn load_bytes(&self, off: u32, to: *mut core::ffi::c_void, len: u32) -> i64 {
        // SAFETY: the context pointer is valid for the program run; the caller vouches for `to`.
        unsafe { aya_ebpf::helpers::generated::bpf_xdp_load_bytes(self.ctx, off, to, len) }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the whole program run.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn direct(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    fn ctx(&self) -> *mut core::ffi::c_void {
        self.as_ptr()
    }
}
