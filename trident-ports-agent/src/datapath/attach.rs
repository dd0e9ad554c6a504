//! Attaching the programs: TC through tcx links or the legacy clsact qdisc and cls_bpf filter,
//! XDP ingress; with a pin directory, attachments are pinned, or adopted from a previous agent.
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc,
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    xdp::XdpLink,
};
use trident_ports_common::programs;

use super::{Datapath, program};
use crate::error::{Error, Result, Source};

/// An attachment step that failed, with the error underneath.
fn failed<E: Into<Source>>(
    program: &'static str,
    iface: &str,
    step: &str,
) -> impl FnOnce(E) -> Error + use<E> {
    let (iface, step) = (iface.to_string(), step.to_string());
    move |e| Error::Attach {
        program,
        iface,
        step,
        source: e.into(),
    }
}

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TcAttach {
    /// tcx where the kernel has it (6.6+), else clsact and cls_bpf.
    #[default]
    Auto,
    /// tcx links only.
    Tcx,
    /// The legacy path: a clsact qdisc and a cls_bpf filter over netlink.
    Netlink,
}

/// Which hook judges inbound packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IngressHook {
    #[default]
    Tc,
    Xdp,
}

impl Datapath {
    /// Attaches egress and ingress enforcement to `iface`. The attachments live as long as this
    /// value: dropping it detaches everything.
    pub fn attach(&mut self, iface: &str, attach: TcAttach, ingress: IngressHook) -> Result<()> {
        if nix_if_index(iface) == 0 {
            return Err(Error::UnknownInterface(iface.to_string()));
        }
        self.attach_tc(iface, programs::TC_EGRESS, TcAttachType::Egress, attach)?;
        match ingress {
            IngressHook::Tc => {
                self.attach_tc(iface, programs::TC_INGRESS, TcAttachType::Ingress, attach)?;
            }
            IngressHook::Xdp => self.attach_xdp(iface)?,
        }
        Ok(())
    }

    /// Loads the XDP ingress program (Linux 5.18+ for bpf_xdp_load_bytes). Idempotent.
    pub fn load_xdp(&mut self) -> Result<()> {
        let xdp: &mut Xdp = program(&mut self.ebpf, programs::XDP_INGRESS)?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| Error::Load {
                what: programs::XDP_INGRESS.into(),
                source: e.into(),
            })?;
        if xdp.fd().is_ok() {
            return Ok(());
        }
        xdp.load().map_err(|e| Error::KernelFeature {
            feature: "XDP ingress (needs Linux 5.18 for bpf_xdp_load_bytes; use --ingress tc)",
            source: e.into(),
        })
    }

    fn attach_xdp(&mut self, iface: &str) -> Result<()> {
        self.load_xdp()?;
        let pins = self.pins.clone();
        let xdp: &mut Xdp = program(&mut self.ebpf, programs::XDP_INGRESS)?
            .try_into()
            .map_err(failed(
                programs::XDP_INGRESS,
                iface,
                "the program is of another type",
            ))?;
        let Some(pins) = pins else {
            xdp.attach(iface, XdpMode::default()).map_err(failed(
                programs::XDP_INGRESS,
                iface,
                "attaching",
            ))?;
            return Ok(());
        };
        let path = pins.link(iface, "xdp");
        if path.exists() {
            // Adopt: move the pinned link to this program in one atomic update.
            let pinned = PinnedLink::from_pin(&path).map_err(failed(
                programs::XDP_INGRESS,
                iface,
                &format!("opening {}", path.display()),
            ))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(failed(
                programs::XDP_INGRESS,
                iface,
                "handling the link",
            ))?;
            let id = xdp.attach_to_link(link).map_err(failed(
                programs::XDP_INGRESS,
                iface,
                "updating the pinned link",
            ))?;
            // The pin keeps the link; this process's handle may go.
            drop(xdp.take_link(id).map_err(failed(
                programs::XDP_INGRESS,
                iface,
                "handling the link",
            ))?);
            tracing::info!(iface, hook = "xdp", "adopted the pinned attachment");
        } else {
            let id = xdp.attach(iface, XdpMode::default()).map_err(failed(
                programs::XDP_INGRESS,
                iface,
                "attaching",
            ))?;
            let link = xdp.take_link(id).map_err(failed(
                programs::XDP_INGRESS,
                iface,
                "handling the link",
            ))?;
            let fd = FdLink::try_from(link).map_err(failed(
                programs::XDP_INGRESS,
                iface,
                "not a bpf_link (kernel without XDP links?)",
            ))?;
            fd.pin(&path).map_err(failed(
                programs::XDP_INGRESS,
                iface,
                &format!("pinning at {}", path.display()),
            ))?;
        }
        Ok(())
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        name: &'static str,
        kind: TcAttachType,
        attach: TcAttach,
    ) -> Result<()> {
        let use_tcx = match attach {
            // Probe: tcx is what the kernel accepts, not what its version number suggests
            // (backports move features between versions).
            TcAttach::Auto => tcx_works(iface, kind),
            TcAttach::Tcx => true,
            TcAttach::Netlink => false,
        };
        if !use_tcx {
            // A clsact qdisc already there is what we need (EEXIST, reported by newer kernels
            // as "Exclusivity flag on, cannot modify").
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                let text = e.to_string();
                if !text.contains("exists") && !text.contains("Exclusivity flag on") {
                    return Err(failed(name, iface, "adding the clsact qdisc")(e));
                }
            }
        }
        let pins = self.pins.clone();
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?
            .try_into()
            .map_err(failed(name, iface, "the program is of another type"))?;
        let options = if use_tcx {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            TcAttachOptions::Netlink(NlOptions::default())
        };
        let Some(pins) = pins else {
            prog.attach_with_options(iface, kind, options)
                .map_err(failed(name, iface, "attaching"))?;
            return Ok(());
        };
        let hook = if kind == TcAttachType::Egress {
            "tc-egress"
        } else {
            "tc-ingress"
        };
        let (link_path, nl) = (pins.link(iface, hook), pins.read_netlink(iface, hook));
        let adopt = if use_tcx && link_path.exists() {
            let pinned = PinnedLink::from_pin(&link_path).map_err(failed(
                name,
                iface,
                &format!("opening {}", link_path.display()),
            ))?;
            Some(
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(failed(
                    name,
                    iface,
                    "adopting the pinned link",
                ))?,
            )
        } else if let (false, Some((priority, handle))) = (use_tcx, nl) {
            Some(
                SchedClassifierLink::attached(iface, kind, priority, TcHandle::from(handle), None)
                    .map_err(failed(name, iface, "adopting the cls_bpf filter"))?,
            )
        } else {
            None
        };
        let adopted = adopt.is_some();
        let id = match adopt {
            // One atomic replacement: bpf_link_update for tcx, a netlink filter replace for
            // cls_bpf. The interface is never without a program.
            Some(link) => prog.attach_to_link(link).map_err(failed(
                name,
                iface,
                "replacing the pinned attachment",
            ))?,
            None => prog
                .attach_with_options(iface, kind, options)
                .map_err(failed(name, iface, "attaching"))?,
        };
        let link = prog
            .take_link(id)
            .map_err(failed(name, iface, "handling the link"))?;
        if use_tcx {
            if !adopted {
                let fd =
                    FdLink::try_from(link).map_err(failed(name, iface, "handling the link"))?;
                fd.pin(&link_path).map_err(failed(
                    name,
                    iface,
                    &format!("pinning at {}", link_path.display()),
                ))?;
            }
        } else {
            let (priority, handle) = (
                link.priority()
                    .map_err(failed(name, iface, "handling the link"))?,
                link.handle()
                    .map_err(failed(name, iface, "handling the link"))?,
            );
            pins.write_netlink(iface, hook, priority, u32::from(handle))
                .map_err(failed(
                    name,
                    iface,
                    "recording the cls_bpf filter in the pin directory",
                ))?;
            // A cls_bpf filter stays until it is deleted: never let a drop delete it.
            std::mem::forget(link);
        }
        if adopted {
            tracing::info!(iface, hook, "adopted the pinned attachment");
        }
        Ok(())
    }
}

pub fn nix_if_index(iface: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(iface) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Whether the kernel takes tcx links on `iface`: asks it (BPF_PROG_QUERY on the tcx hook,
/// which kernels without tcx refuse).
fn tcx_works(iface: &str, kind: TcAttachType) -> bool {
    SchedClassifier::query_tcx(iface, kind).is_ok()
}

/// Whether this kernel has tcx (probed on the loopback interface of the calling namespace).
pub fn tcx_supported() -> bool {
    tcx_works("lo", TcAttachType::Ingress)
}
