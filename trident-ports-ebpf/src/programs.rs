//! Program entry points: attach-specific return codes around the shared decision.
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use trident_ports_common::{DIR_EGRESS, DIR_INGRESS};

use crate::verdict::{Action, decide};

/// TC_ACT_UNSPEC is TCX_NEXT under tcx and "continue" under cls_bpf direct-action, so a pass
/// leaves any later program on the interface in charge.
#[inline(always)]
fn tc_code(action: Action) -> i32 {
    match action {
        Action::Pass => TC_ACT_UNSPEC,
        Action::Drop => TC_ACT_SHOT,
    }
}

#[classifier]
pub(crate) fn tp_tc_egress(ctx: TcContext) -> i32 {
    tc_code(decide(&ctx, DIR_EGRESS))
}

#[classifier]
pub(crate) fn tp_tc_ingress(ctx: TcContext) -> i32 {
    tc_code(decide(&ctx, DIR_INGRESS))
}

#[xdp]
pub(crate) fn tp_xdp_ingress(ctx: XdpContext) -> u32 {
    match decide(&ctx, DIR_INGRESS) {
        Action::Pass => xdp_action::XDP_PASS,
        Action::Drop => xdp_action::XDP_DROP,
    }
}
