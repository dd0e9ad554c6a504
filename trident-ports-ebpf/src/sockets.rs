//! The node's own connections, asked of the kernel's socket tables. The connection table learns a
//! flow from the node's allowed packets, and can lose or miss it: the kernel's LRU evicts flows
//! whose packets the per-CPU caches answer (they never touch the table), and a connection the
//! node opened while its peer was not protected was never learned. A packet from storage on such
//! a flow would be dropped as unsolicited, and the flow's next packets with it: a mount hangs.
//! Before that verdict, the datapath asks whether the node has a socket connected to exactly
//! this peer and port; asked only on that path, so it costs the allowed paths nothing. An ICMP
//! error from storage about such a flow (port unreachable, fragmentation needed) is asked about
//! the flow it quotes in the same way before it is called unrelated.
use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_CLOSE, BPF_TCP_LISTEN, bpf_sock, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::generated::{bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
};
use trident_ports_common::{FlowKey, PROTO_TCP, PROTO_UDP};

use crate::packet::Packet;

/// True when the network namespace of the packet's interface has a connected socket for `flow`
/// (of address `family`), seen from the node: a TCP connection in any state but listening, or a
/// connected UDP socket. A listener (also what a handshake in progress is found as) or an
/// unconnected UDP socket does not count: storage may not open connections to the node.
#[inline(always)]
pub(crate) fn node_is_connected<P: Packet>(pkt: &P, family: u8, flow: &FlowKey) -> bool {
    if flow.proto != PROTO_TCP && flow.proto != PROTO_UDP {
        return false;
    }
    // The tuple as an inbound packet of the flow carries it: the peer is the source. One call
    // per family, each with its own tuple: choosing between the two shapes of one union made
    // LLVM spill a register in a way the verifier rejects.
    let (sport, dport) = (flow.remote_port.to_be(), flow.local_port.to_be());
    let sk = if family == 4 {
        let mut t = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: word(&flow.remote, 3),
            daddr: word(&flow.local, 3),
            sport,
            dport,
        };
        lookup(pkt, flow.proto, (&raw mut t).cast(), size_of_val(&t))
    } else {
        let mut t = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: words(&flow.remote),
            daddr: words(&flow.local),
            sport,
            dport,
        };
        lookup(pkt, flow.proto, (&raw mut t).cast(), size_of_val(&t))
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a non-null socket from the lookup is valid until released; `state` is one of the
    // fields the verifier lets a program read.
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference the lookup took, once.
    unsafe { bpf_sk_release(sk.cast()) };
    state != BPF_TCP_LISTEN && state != BPF_TCP_CLOSE
}

/// The socket for `tuple` (`size` bytes) in the packet's namespace, or null.
#[inline(always)]
fn lookup<P: Packet>(pkt: &P, proto: u8, tuple: *mut bpf_sock_tuple, size: usize) -> *mut bpf_sock {
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: `tuple` points to `size` readable bytes on the caller's stack frame; the helpers
    // only read them. A socket they return is a counted reference the caller releases.
    unsafe {
        if proto == PROTO_TCP {
            bpf_sk_lookup_tcp(pkt.ctx(), tuple, size as u32, netns, 0)
        } else {
            bpf_sk_lookup_udp(pkt.ctx(), tuple, size as u32, netns, 0)
        }
    }
}

/// Word `i` of a 16-byte address, in network order (as the kernel stores addresses).
#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u32 {
    let b = i * 4;
    u32::from_ne_bytes([a[b], a[b + 1], a[b + 2], a[b + 3]])
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [word(a, 0), word(a, 1), word(a, 2), word(a, 3)]
}
