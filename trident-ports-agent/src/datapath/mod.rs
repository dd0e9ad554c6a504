//! The kernel side as the agent sees it: load the programs and maps (here), attach them
//! (`attach`), switch policies (`generation`), read counters and events (here).
mod attach;
mod batch;
mod delta;
mod generation;
mod incremental;
pub mod pins;
pub mod privileges;
pub mod seed;
pub mod tables;

pub use attach::{IngressHook, TcAttach, nix_if_index, tcx_supported};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::SchedClassifier,
};
pub use generation::{Applied, GenerationCounts, Sizes};
pub use tables::{Tables, compile};
use trident_ports_common::{
    COUNTER_BLOCKS, Config, CounterBlock, FlowKey, FlowState, MODE_AUDIT, MODE_ENFORCE,
    OPTION_NO_RECENT_DENIALS, OPTION_NO_RECENT_FLOWS, OPTION_NO_RECENT_PASSES, PeerInfo, PeerKey,
    RangeKey, RuleKey, counter, maps, programs,
};

use crate::{
    error::{Error, Result},
    policy::Mode,
};

/// The kernel object, built by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trident-ports"));

/// Whether the object has CO-RE relocations, the one use aya's loader has for the kernel's own
/// BTF. Without them, parsing /sys/kernel/btf/vmlinux (about 5 MB), which `EbpfLoader::new`
/// does on every load, bought nothing: 24-38 ms of a 170 ms load on CI's machine type, and in
/// the emulated test guests about 7% of the suites' time (6.12: 187 s with it, 175 s without).
fn needs_kernel_btf() -> bool {
    static NEEDS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // An object that does not parse fails the load itself, with its error; the kernel's BTF
    // cannot help it.
    *NEEDS.get_or_init(|| aya_obj::Object::parse(OBJECT).is_ok_and(|o| o.has_btf_relocations()))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persistence {
    Pinned,
    Ephemeral(String),
    Unpinned,
}

pub struct Datapath {
    ebpf: Ebpf,
    pins: Option<pins::Pins>,
    config: Array<MapData, Config>,
    peers: HashMap<MapData, PeerKey, PeerInfo>,
    prefixes: LpmTrie<MapData, PeerKey, PeerInfo>,
    rules: HashMap<MapData, RuleKey, u32>,
    ranges: LpmTrie<MapData, RangeKey, u32>,
    guards: Array<MapData, u64>,
    guard_addrs: HashMap<MapData, PeerKey, u8>,
    counters: PerCpuArray<MapData, CounterBlock>,
    flows: HashMap<MapData, FlowKey, FlowState>,
    flow_epoch: Array<MapData, u64>,
    /// The connection table an agent of another configuration layout left, while its flows are
    /// carried over (`inherit_flows`).
    previous_flows: Option<HashMap<MapData, FlowKey, FlowState>>,
    events: Option<RingBuf<MapData>>,
    /// The keys of the generation in force, when this process wrote it.
    running: Option<incremental::Running>,
    /// The idle generation is known to be empty (this process removed it).
    idle_clean: bool,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| Error::Object(format!("map {name}")))
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, source }
}

impl Datapath {
    /// Loads the programs and maps into the kernel (nothing is attached yet).
    pub fn load() -> Result<Self> {
        Self::load_pinned(None)
    }

    /// Like `load`, but with `pin_dir` the maps are pinned there, or reused when a previous
    /// agent pinned them, and attachments are pinned or adopted (see `pins`).
    pub fn load_pinned(pin_dir: Option<&std::path::Path>) -> Result<Self> {
        privileges::check()?;
        let pins = pin_dir.map(pins::Pins::open).transpose()?;
        if let Some(why) = pins.as_ref().and_then(pins::Pins::ephemeral) {
            tracing::warn!(
                "pinned enforcement will NOT outlive this agent: {why}. Mount the host's BPF \
                 filesystem (mount -t bpf bpf /sys/fs/bpf on the host; hostPath in a pod)"
            );
        }
        let kernel_btf = needs_kernel_btf()
            .then(|| aya::Btf::from_sys_fs().ok())
            .flatten();
        let mut loader = EbpfLoader::new();
        loader.btf(kernel_btf.as_ref());
        let names = [
            maps::CONFIG,
            maps::PEERS,
            maps::PEER_PREFIXES,
            maps::RULES,
            maps::RANGES,
            maps::GUARDS,
            maps::GUARD_ADDRS,
            maps::FLOWS,
            maps::FLOW_EPOCH,
            maps::GATES,
            maps::EVENTS,
            maps::COUNTERS,
        ];
        let mut previous_flows = None;
        if let Some(p) = &pins {
            let (retired, flows) = p.retire_other_layouts(OBJECT, &names)?;
            previous_flows = flows
                .map(|m| HashMap::try_from(Map::HashMap(m)))
                .transpose()
                .map_err(map_err(maps::FLOWS))?;
            for (name, old) in retired {
                if let Some(layout) = old {
                    tracing::warn!(
                        map = name,
                        pinned = %layout,
                        "the pinned map has another layout (an agent of another version pinned \
                         it): replaced with a new one"
                    );
                } else if name == maps::FLOWS {
                    tracing::warn!(
                        map = name,
                        "the pinned connection table belongs to the replaced configuration: \
                     replaced with a new one that inherits its flows, unchecked"
                    );
                } else {
                    tracing::warn!(
                        map = name,
                        "the pinned policy map belongs to the replaced configuration: replaced \
                         with a new one, written whole before the attachments move"
                    );
                }
            }
            for name in names {
                loader.map_pin_path(name, p.map(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| match e {
            // The one map type older kernels refuse: the event ring buffer (Linux 5.8).
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { ref name, .. })
                if name == maps::EVENTS =>
            {
                Error::KernelFeature {
                    feature: "BPF ring buffers (Linux 5.8+)",
                    source: e.into(),
                }
            }
            e => Error::Load {
                what: "the eBPF programs and maps".into(),
                source: e.into(),
            },
        })?;
        for name in [programs::TC_EGRESS, programs::TC_INGRESS] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?.try_into().map_err(
                |e: aya::programs::ProgramError| Error::Load {
                    what: name.into(),
                    source: e.into(),
                },
            )?;
            prog.load().map_err(|e| Error::Load {
                what: name.into(),
                source: e.into(),
            })?;
        }
        // The XDP program is loaded only when asked for (`load_xdp`): it needs Linux 5.18, and
        // TC-only nodes should not depend on that.

        macro_rules! typed {
            ($name:expr) => {
                take(&mut ebpf, $name)?
                    .try_into()
                    .map_err(|e: aya::maps::MapError| Error::Map {
                        map: $name,
                        source: e,
                    })?
            };
        }
        let fresh = pins.is_none();
        let mut dp = Datapath {
            config: typed!(maps::CONFIG),
            peers: typed!(maps::PEERS),
            prefixes: typed!(maps::PEER_PREFIXES),
            rules: typed!(maps::RULES),
            ranges: typed!(maps::RANGES),
            guards: typed!(maps::GUARDS),
            guard_addrs: typed!(maps::GUARD_ADDRS),
            counters: typed!(maps::COUNTERS),
            flows: typed!(maps::FLOWS),
            flow_epoch: typed!(maps::FLOW_EPOCH),
            previous_flows,
            events: Some(typed!(maps::EVENTS)),
            ebpf,
            pins,
            running: None,
            idle_clean: false,
        };
        if fresh {
            // Maps this process just created are empty: neither generation needs a walk.
            dp.running = Some(incremental::Running::empty(dp.config()?.generation));
            dp.idle_clean = true;
        }
        Ok(dp)
    }

    /// True when maps and attachments outlive this process.
    /// Whether enforcement outlives this process: `Pinned` when the pins do, `Ephemeral(why)`
    /// when they are pinned somewhere that goes with this process, `Unpinned` without pins.
    pub fn persistence(&self) -> Persistence {
        match &self.pins {
            None => Persistence::Unpinned,
            Some(p) => match p.ephemeral() {
                None => Persistence::Pinned,
                Some(why) => Persistence::Ephemeral(why.to_string()),
            },
        }
    }

    /// Adds this namespace's existing connections to the connection table (see `seed`), and the
    /// flows of a retired connection table (`inherit_flows`). Flows already known are left as
    /// they are. Returns how many were added.
    pub fn seed_flows(&mut self) -> Result<usize> {
        let inherited = self.inherit_flows();
        let seeded = self.add_unchecked(seed::current_flows());
        self.told(inherited + seeded)
    }

    /// Copies the flows of the connection table a previous agent left (retired because the
    /// configuration's layout changed) into this one. The old programs keep filling the old
    /// table until these are attached, so `run` seeds before attaching and once after, then
    /// lets the old table go (`release_previous_flows`). Socket seeding alone left a window: a
    /// handshake whose first packet left through the old program while its answer met the new
    /// one.
    fn inherit_flows(&mut self) -> usize {
        let Some(old) = self.previous_flows.take() else {
            return 0;
        };
        let added = self.add_unchecked(old.keys().filter_map(std::result::Result::ok));
        self.previous_flows = Some(old);
        added
    }

    /// Adds `flows` the table does not have, unchecked: with sequence 0, never a running
    /// policy's, so the datapath judges each against the running rules, in both directions, on
    /// its next packet. Returns how many were added.
    fn add_unchecked(&mut self, flows: impl IntoIterator<Item = FlowKey>) -> usize {
        let state = FlowState { seq: 0, _pad: 0 };
        let mut added = 0;
        for f in flows {
            // Asked first: an LRU insert takes a free node, evicting when there is none,
            // before it finds the key present.
            if self.flows.get(&f, 0).is_ok() {
                continue;
            }
            // BPF_NOEXIST: never overwrite an entry the datapath wrote meanwhile.
            if self.flows.insert(f, state, 1).is_ok() {
                added += 1;
            }
        }
        added
    }

    /// `flows_added` when `added` flows were; returns `added`.
    fn told(&mut self, added: usize) -> Result<usize> {
        if added > 0 {
            self.flows_added()?;
        }
        Ok(added)
    }

    /// Lets go of a retired connection table (see `inherit_flows`).
    pub fn release_previous_flows(&mut self) {
        self.previous_flows = None;
    }

    /// Tells the datapath that the connection table has new entries: denials its CPUs cached
    /// before them may no longer hold (see `maps::FLOW_EPOCH`).
    fn flows_added(&mut self) -> Result<()> {
        self.bump_epoch()
    }

    /// Writes the configuration, then bumps the epoch: the recent-denial cache checks nothing
    /// else (see `maps::FLOW_EPOCH`). Should this process die between the two, denials cached
    /// under the old configuration hold until their flows' event gates open (one event
    /// interval at most), a flow is added, or the restarted agent writes the configuration.
    pub(crate) fn write_config(&mut self, cfg: Config) -> Result<()> {
        self.config.set(0, cfg, 0).map_err(map_err(maps::CONFIG))?;
        self.bump_epoch()
    }

    /// Changes the epoch. Not atomic with the datapath's own bumps, which is harmless: a
    /// datapath bump this write overwrites came after this process read the epoch, so after
    /// the write or insert that calls for this bump; an entry that read its value rests on that
    /// change, and one that read the value before sees this write change it.
    fn bump_epoch(&mut self) -> Result<()> {
        let epoch = self
            .flow_epoch
            .get(&0, 0)
            .map_err(map_err(maps::FLOW_EPOCH))?;
        self.flow_epoch
            .set(0, epoch.wrapping_add(1), 0)
            .map_err(map_err(maps::FLOW_EPOCH))
    }

    /// Turns the per-CPU recent-flow cache off or on (`OPTION_NO_RECENT_FLOWS`); on by default.
    pub fn set_recent_flows(&mut self, on: bool) -> Result<()> {
        self.set_option_off(OPTION_NO_RECENT_FLOWS, !on)
    }

    /// Turns the per-CPU recent-denial cache off or on (`OPTION_NO_RECENT_DENIALS`); on by
    /// default.
    pub fn set_recent_denials(&mut self, on: bool) -> Result<()> {
        self.set_option_off(OPTION_NO_RECENT_DENIALS, !on)
    }

    /// Turns the per-CPU recent-pass cache off or on (`OPTION_NO_RECENT_PASSES`); on by default.
    pub fn set_recent_passes(&mut self, on: bool) -> Result<()> {
        self.set_option_off(OPTION_NO_RECENT_PASSES, !on)
    }

    fn set_option_off(&mut self, bit: u8, off: bool) -> Result<()> {
        let mut cfg = self.config()?;
        cfg.options = if off {
            cfg.options | bit
        } else {
            cfg.options & !bit
        };
        self.write_config(cfg)
    }

    /// At most `per_second` events per second from each CPU (0: no limit), in bursts of up to a
    /// second's worth (`Config::event_cost_ns`). Verdicts never depend on it.
    pub fn set_event_rate(&mut self, per_second: u32) -> Result<()> {
        let mut cfg = self.config()?;
        // 0 events per second means no limit, which is cost 0.
        let cost = 1_000_000_000_u32
            .checked_div(per_second)
            .map_or(0, |c| c.max(1));
        if cfg.event_cost_ns == cost {
            return Ok(());
        }
        cfg.event_cost_ns = cost;
        self.write_config(cfg)
    }

    /// Switches between enforce and audit without touching the policy.
    pub fn set_mode(&mut self, mode: Mode) -> Result<()> {
        let mut cfg = self.config()?;
        cfg.mode = match mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        };
        self.write_config(cfg)
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err(maps::CONFIG))
    }

    /// One counter of one direction, summed over CPUs.
    pub fn counter(&self, dir: u8, c: u32) -> Result<u64> {
        Ok(self.counters()?.get(dir, c))
    }

    /// Counter totals over all CPUs, by (direction, counter index).
    pub fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        for (dir, total) in (0..COUNTER_BLOCKS).zip(&mut out.blocks) {
            let blocks = self
                .counters
                .get(&dir, 0)
                .map_err(map_err(maps::COUNTERS))?;
            for block in blocks.iter() {
                for (t, v) in total.iter_mut().zip(block) {
                    *t += v;
                }
            }
            counter::fold_recent_denials(total);
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
        .ok_or_else(|| Error::Object(format!("program {name}")))
}

#[derive(Debug, Clone)]
pub struct Counters {
    /// Indexed by `DIR_*`.
    blocks: [CounterBlock; COUNTER_BLOCKS as usize],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            blocks: [[0; counter::COUNT as usize]; COUNTER_BLOCKS as usize],
        }
    }
}

impl Counters {
    pub fn get(&self, dir: u8, c: u32) -> u64 {
        self.blocks
            .get(usize::from(dir))
            .and_then(|b| b.get(c as usize))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    /// The programs use no CO-RE relocations, so a load skips the kernel's BTF. A relocation
    /// added later makes loads parse it again, correctly; this test then fails so that the cost
    /// (see `needs_kernel_btf`) is a decision, not an accident.
    #[test]
    fn the_object_needs_no_kernel_btf() {
        let object = aya_obj::Object::parse(super::OBJECT).expect("the object parses");
        assert!(object.btf.is_some(), "the object carries its own BTF");
        assert!(!super::needs_kernel_btf());
    }
}
