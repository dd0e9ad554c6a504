//! The kernel side as the agent sees it: load the programs, attach them, and switch policies.
pub mod compile;
pub mod pins;
pub mod seed;

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc,
        tc::{SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
    },
};
use trident_ports_common::{
    COUNTER_SLOTS, Config, FlowKey, FlowState, GuardKey, MODE_AUDIT, MODE_ENFORCE,
    OPTION_NO_RECENT_FLOWS, PeerInfo, PeerKey, RangeKey, RuleKey, counter, limits, maps, programs,
};

use crate::{
    error::{Error, Result},
    policy::{Mode, Policy},
};
pub use compile::{Tables, compile};

/// The kernel object, built by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trident-ports"));

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

/// What `apply` switched to.
pub struct Applied {
    pub config: Config,
    pub tables: Tables,
}

pub struct Datapath {
    ebpf: Ebpf,
    pins: Option<pins::Pins>,
    config: Array<MapData, Config>,
    peers: HashMap<MapData, PeerKey, PeerInfo>,
    prefixes: LpmTrie<MapData, PeerKey, PeerInfo>,
    rules: HashMap<MapData, RuleKey, u32>,
    ranges: LpmTrie<MapData, RangeKey, u32>,
    guards: HashMap<MapData, GuardKey, u32>,
    counters: PerCpuArray<MapData, u64>,
    flows: HashMap<MapData, FlowKey, FlowState>,
    events: Option<RingBuf<MapData>>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| Error::Load(format!("map {name} missing from the object")))
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |e| Error::Map {
        map,
        detail: e.to_string(),
    }
}

impl Datapath {
    /// Loads the programs and maps into the kernel (nothing is attached yet).
    pub fn load() -> Result<Self> {
        Self::load_pinned(None)
    }

    /// Like `load`, but with `pin_dir` the maps are pinned there, or reused when a previous
    /// agent pinned them, and attachments are pinned or adopted (see `pins`).
    pub fn load_pinned(pin_dir: Option<&std::path::Path>) -> Result<Self> {
        crate::privileges::check()?;
        let pins = pin_dir.map(pins::Pins::open).transpose()?;
        let mut loader = EbpfLoader::new();
        let names = [
            maps::CONFIG,
            maps::PEERS,
            maps::PEER_PREFIXES,
            maps::RULES,
            maps::RANGES,
            maps::GUARDS,
            maps::FLOWS,
            maps::GATES,
            maps::EVENTS,
            maps::COUNTERS,
        ];
        if let Some(p) = &pins {
            for name in names {
                loader.map_pin_path(name, p.map(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| {
            let detail = format!("{e:#}");
            if detail.contains("RINGBUF") || detail.contains("ring") {
                Error::KernelFeature {
                    feature: "BPF ring buffers (Linux 5.8+)",
                    detail,
                }
            } else {
                Error::Load(detail)
            }
        })?;
        for name in [programs::TC_EGRESS, programs::TC_INGRESS] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?
                .try_into()
                .map_err(|e| Error::Load(format!("{name}: {e}")))?;
            prog.load()
                .map_err(|e| Error::Load(format!("{name}: {e:#}")))?;
        }
        // The XDP program is loaded only when asked for (`load_xdp`): it needs Linux 5.18, and
        // TC-only nodes should not depend on that.

        macro_rules! typed {
            ($name:expr) => {
                take(&mut ebpf, $name)?
                    .try_into()
                    .map_err(|e: aya::maps::MapError| Error::Load(format!("{}: {e}", $name)))?
            };
        }
        Ok(Datapath {
            config: typed!(maps::CONFIG),
            peers: typed!(maps::PEERS),
            prefixes: typed!(maps::PEER_PREFIXES),
            rules: typed!(maps::RULES),
            ranges: typed!(maps::RANGES),
            guards: typed!(maps::GUARDS),
            counters: typed!(maps::COUNTERS),
            flows: typed!(maps::FLOWS),
            events: Some(typed!(maps::EVENTS)),
            ebpf,
            pins,
        })
    }

    /// True when maps and attachments outlive this process.
    pub fn pinned(&self) -> bool {
        self.pins.is_some()
    }

    /// Attaches egress and ingress enforcement to `iface`. The attachments live as long as this
    /// value: dropping it detaches everything.
    pub fn attach(&mut self, iface: &str, attach: TcAttach, ingress: IngressHook) -> Result<()> {
        if nix_if_index(iface) == 0 {
            return Err(Error::UnknownInterface(iface.to_string()));
        }
        self.attach_tc(iface, programs::TC_EGRESS, TcAttachType::Egress, attach)?;
        match ingress {
            IngressHook::Tc => {
                self.attach_tc(iface, programs::TC_INGRESS, TcAttachType::Ingress, attach)?
            }
            IngressHook::Xdp => self.attach_xdp(iface)?,
        }
        Ok(())
    }

    /// Loads the XDP ingress program (Linux 5.18+ for bpf_xdp_load_bytes). Idempotent.
    pub fn load_xdp(&mut self) -> Result<()> {
        let xdp: &mut Xdp = program(&mut self.ebpf, programs::XDP_INGRESS)?
            .try_into()
            .map_err(|e| Error::Load(format!("{}: {e}", programs::XDP_INGRESS)))?;
        if xdp.fd().is_ok() {
            return Ok(());
        }
        xdp.load().map_err(|e| Error::KernelFeature {
            feature: "XDP ingress (needs Linux 5.18 for bpf_xdp_load_bytes; use --ingress tc)",
            detail: format!("{e:#}"),
        })
    }

    fn attach_xdp(&mut self, iface: &str) -> Result<()> {
        self.load_xdp()?;
        let err = |detail: String| Error::Attach {
            program: programs::XDP_INGRESS,
            iface: iface.to_string(),
            detail,
        };
        let pins = self.pins.clone();
        let xdp: &mut Xdp = program(&mut self.ebpf, programs::XDP_INGRESS)?
            .try_into()
            .map_err(|e| err(format!("{e}")))?;
        let Some(pins) = pins else {
            xdp.attach(iface, XdpMode::default())
                .map_err(|e| err(format!("{e:#}")))?;
            return Ok(());
        };
        let path = pins.link(iface, "xdp");
        if path.exists() {
            // Adopt: move the pinned link to this program in one atomic update.
            let pinned = PinnedLink::from_pin(&path)
                .map_err(|e| err(format!("opening {}: {e}", path.display())))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| err(format!("{e}")))?;
            let id = xdp
                .attach_to_link(link)
                .map_err(|e| err(format!("updating the pinned link: {e:#}")))?;
            // The pin keeps the link; this process's handle may go.
            drop(xdp.take_link(id).map_err(|e| err(format!("{e}")))?);
            tracing::info!(iface, hook = "xdp", "adopted the pinned attachment");
        } else {
            let id = xdp
                .attach(iface, XdpMode::default())
                .map_err(|e| err(format!("{e:#}")))?;
            let link = xdp.take_link(id).map_err(|e| err(format!("{e}")))?;
            let fd = FdLink::try_from(link)
                .map_err(|e| err(format!("not a bpf_link (kernel without XDP links?): {e}")))?;
            fd.pin(&path)
                .map_err(|e| err(format!("pinning at {}: {e}", path.display())))?;
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
        let err = |detail: String| Error::Attach {
            program: name,
            iface: iface.to_string(),
            detail,
        };
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
                    return Err(err(format!("adding the clsact qdisc: {text}")));
                }
            }
        }
        let pins = self.pins.clone();
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?
            .try_into()
            .map_err(|e| err(format!("{e}")))?;
        let options = if use_tcx {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            TcAttachOptions::Netlink(Default::default())
        };
        let Some(pins) = pins else {
            prog.attach_with_options(iface, kind, options)
                .map_err(|e| err(format!("{e:#}")))?;
            return Ok(());
        };
        let hook = if kind == TcAttachType::Egress {
            "tc-egress"
        } else {
            "tc-ingress"
        };
        let (link_path, nl) = (pins.link(iface, hook), pins.read_netlink(iface, hook));
        let adopt = if use_tcx && link_path.exists() {
            let pinned = PinnedLink::from_pin(&link_path)
                .map_err(|e| err(format!("opening {}: {e}", link_path.display())))?;
            Some(
                SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|e| err(format!("{e}")))?,
            )
        } else if let (false, Some((priority, handle))) = (use_tcx, nl) {
            Some(
                SchedClassifierLink::attached(iface, kind, priority, TcHandle::from(handle), None)
                    .map_err(|e| err(format!("{e}")))?,
            )
        } else {
            None
        };
        let adopted = adopt.is_some();
        let id = match adopt {
            // One atomic replacement: bpf_link_update for tcx, a netlink filter replace for
            // cls_bpf. The interface is never without a program.
            Some(link) => prog
                .attach_to_link(link)
                .map_err(|e| err(format!("replacing the pinned attachment: {e:#}")))?,
            None => prog
                .attach_with_options(iface, kind, options)
                .map_err(|e| err(format!("{e:#}")))?,
        };
        let link = prog.take_link(id).map_err(|e| err(format!("{e}")))?;
        if use_tcx {
            if !adopted {
                let fd = FdLink::try_from(link).map_err(|e| err(format!("{e}")))?;
                fd.pin(&link_path)
                    .map_err(|e| err(format!("pinning at {}: {e}", link_path.display())))?;
            }
        } else {
            let (priority, handle) = (
                link.priority().map_err(|e| err(format!("{e}")))?,
                link.handle().map_err(|e| err(format!("{e}")))?,
            );
            pins.write_netlink(iface, hook, priority, u32::from(handle))
                .map_err(|e| err(format!("{e}")))?;
            // A cls_bpf filter stays until it is deleted: never let a drop delete it.
            std::mem::forget(link);
        }
        if adopted {
            tracing::info!(iface, hook, "adopted the pinned attachment");
        }
        Ok(())
    }

    /// Writes `policy` as the inactive generation, then switches to it with one store to the
    /// configuration entry, then removes the previous generation. A packet sees either the old
    /// policy or the new one, never a mixture.
    pub fn apply(&mut self, policy: &Policy, event_interval_ns: u64) -> Result<Applied> {
        let current = self.config()?;
        let next_gen = current.generation ^ 1;
        let tables = compile(policy, next_gen);
        self.check_limits(&tables)?;
        // Leftovers of an interrupted earlier switch.
        self.remove_generation(next_gen)?;
        self.write(&tables)?;
        let next = Config {
            // 0 marks seeded flows as unchecked, so the sequence skips it.
            seq: current.seq.wrapping_add(1).max(1),
            generation: next_gen,
            mode: match policy.mode {
                Mode::Enforce => MODE_ENFORCE,
                Mode::Audit => MODE_AUDIT,
            },
            tables: tables.present(),
            options: current.options,
            event_interval_ns,
        };
        self.config.set(0, next, 0).map_err(map_err(maps::CONFIG))?;
        self.remove_generation(current.generation)?;
        Ok(Applied {
            config: next,
            tables,
        })
    }

    /// Adds this namespace's existing connections to the connection table (see `seed`). Flows
    /// already known are left as they are. Returns how many were added.
    pub fn seed_flows(&mut self) -> Result<usize> {
        let mut added = 0;
        for f in seed::current_flows() {
            if self.flows.get(&f, 0).is_ok() {
                continue;
            }
            // seq 0 is never a running policy's sequence: the first packet re-checks the flow.
            let state = FlowState { seq: 0, _pad: 0 };
            // BPF_NOEXIST: never overwrite an entry the datapath wrote meanwhile.
            if self.flows.insert(f, state, 1).is_ok() {
                added += 1;
            }
        }
        Ok(added)
    }

    /// Turns the per-CPU recent-flow cache off or on (`OPTION_NO_RECENT_FLOWS`); on by default.
    pub fn set_recent_flows(&mut self, on: bool) -> Result<()> {
        let mut cfg = self.config()?;
        cfg.options = if on {
            cfg.options & !OPTION_NO_RECENT_FLOWS
        } else {
            cfg.options | OPTION_NO_RECENT_FLOWS
        };
        self.config.set(0, cfg, 0).map_err(map_err(maps::CONFIG))
    }

    /// Switches between enforce and audit without touching the policy.
    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        let mut cfg = self.config()?;
        cfg.mode = match mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        };
        self.config.set(0, cfg, 0).map_err(map_err(maps::CONFIG))
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err(maps::CONFIG))
    }

    fn check_limits(&self, t: &Tables) -> Result<()> {
        // Two generations live side by side during a switch.
        let checks = [
            (maps::PEERS, t.peers.len(), limits::PEERS / 2),
            (
                maps::PEER_PREFIXES,
                t.prefixes.len(),
                limits::PEER_PREFIXES / 2,
            ),
            (maps::RULES, t.rules.len(), limits::RULES / 2),
            (maps::RANGES, t.ranges.len(), limits::RANGES / 2),
            (maps::GUARDS, t.guards.len(), limits::GUARDS / 2),
        ];
        for (map, entries, limit) in checks {
            if entries > limit as usize {
                return Err(Error::TooLarge {
                    map,
                    entries,
                    limit,
                });
            }
        }
        Ok(())
    }

    fn write(&mut self, t: &Tables) -> Result<()> {
        for (k, v) in &t.peers {
            self.peers.insert(k, v, 0).map_err(map_err(maps::PEERS))?;
        }
        for (bits, k, v) in &t.prefixes {
            self.prefixes
                .insert(&Key::new(*bits, *k), v, 0)
                .map_err(map_err(maps::PEER_PREFIXES))?;
        }
        for k in &t.rules {
            self.rules.insert(k, 1, 0).map_err(map_err(maps::RULES))?;
        }
        for (bits, k) in &t.ranges {
            self.ranges
                .insert(&Key::new(*bits, *k), 1, 0)
                .map_err(map_err(maps::RANGES))?;
        }
        for k in &t.guards {
            self.guards.insert(k, 1, 0).map_err(map_err(maps::GUARDS))?;
        }
        Ok(())
    }

    fn remove_generation(&mut self, generation: u8) -> Result<()> {
        let peers: Vec<PeerKey> = self
            .peers
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.generation == generation)
            .collect();
        for k in peers {
            let _ = self.peers.remove(&k);
        }
        let prefixes: Vec<Key<PeerKey>> = self
            .prefixes
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.data().generation == generation)
            .collect();
        for k in prefixes {
            let _ = self.prefixes.remove(&k);
        }
        let rules: Vec<RuleKey> = self
            .rules
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.generation == generation)
            .collect();
        for k in rules {
            let _ = self.rules.remove(&k);
        }
        let ranges: Vec<Key<RangeKey>> = self
            .ranges
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.data().generation == generation)
            .collect();
        for k in ranges {
            let _ = self.ranges.remove(&k);
        }
        let guards: Vec<GuardKey> = self
            .guards
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.generation == generation)
            .collect();
        for k in guards {
            let _ = self.guards.remove(&k);
        }
        Ok(())
    }

    /// Counter totals over all CPUs, by (direction, counter index).
    pub fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        for slot in 0..COUNTER_SLOTS {
            let values = self
                .counters
                .get(&slot, 0)
                .map_err(map_err(maps::COUNTERS))?;
            let sum: u64 = values.iter().sum();
            out.values.insert(slot, sum);
        }
        Ok(out)
    }

    /// The ring buffer of denied-packet events; it can be taken once.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// A loaded program by name, for packet-level tests (BPF_PROG_TEST_RUN) and benchmarks.
    pub fn program_mut(&mut self, name: &str) -> Option<&mut aya::programs::Program> {
        self.ebpf.program_mut(name)
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Load(format!("program {name} missing from the object")))
}

#[derive(Debug, Default, Clone)]
pub struct Counters {
    values: BTreeMap<u32, u64>,
}

impl Counters {
    pub fn get(&self, dir: u8, c: u32) -> u64 {
        self.values
            .get(&(dir as u32 * counter::COUNT + c))
            .copied()
            .unwrap_or(0)
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
