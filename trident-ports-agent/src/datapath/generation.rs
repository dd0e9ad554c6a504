//! Policy switches by generation: the new policy is written beside the running one, one store
//! to the configuration entry switches, then the old generation is removed.
use std::collections::BTreeMap;

use aya::maps::{IterableMap, lpm_trie::Key};
use trident_ports_common::{
    Config, GUARD_WORDS_PER_SET, GuardKey, MODE_AUDIT, MODE_ENFORCE, OPTION_UPDATING, PROTO_TCP,
    PROTO_UDP, PeerInfo, PeerKey, RangeKey, RuleKey, limits, maps,
};

use super::{Datapath, Tables, batch, compile, delta, incremental, map_err};
use crate::{
    error::{Error, Result},
    policy::{Mode, Policy},
};

/// What `apply` switched to.
pub struct Applied {
    pub config: Config,
    /// The entries the generation in force holds, per map.
    pub sizes: Sizes,
    /// From the start of `apply` to the switch: the new policy is in force from then on (the
    /// rest of `apply` removes the previous generation).
    pub in_force: std::time::Duration,
    /// `Some(n)`: written into the running generation in `n` steps; `None`: a generation switch.
    pub steps: Option<usize>,
    /// Only the changed entries were compiled (`delta`), not the whole policy.
    pub compiled_alone: bool,
    /// Why a switch, in force, could not empty the generation it left. The policy is in force
    /// regardless: the leftovers are in the generation no packet looks at, and the next switch
    /// walks that generation and empties it before writing there.
    pub leftover: Option<Error>,
}

/// Entries per policy map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    pub peers: usize,
    pub prefixes: usize,
    pub rules: usize,
    pub ranges: usize,
    pub guards: usize,
    pub guard_addrs: usize,
}

impl Sizes {
    pub fn total(&self) -> usize {
        self.peers + self.prefixes + self.rules + self.ranges + self.guards + self.guard_addrs
    }
}

impl From<&Tables> for Sizes {
    fn from(t: &Tables) -> Self {
        Sizes {
            peers: t.peers.len(),
            prefixes: t.prefixes.len(),
            rules: t.rules.len(),
            ranges: t.ranges.len(),
            guards: t.guards.len(),
            guard_addrs: t.guard_addrs.len(),
        }
    }
}

/// What [`Datapath::entries_by_generation`] finds, indexed by generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenerationCounts {
    pub entries: [usize; 2],
    pub guard_words: [usize; 2],
}

/// The guard bitmap's words of `t`, with their bits.
pub(super) fn guard_words(t: &Tables) -> BTreeMap<u32, u64> {
    let mut words: BTreeMap<u32, u64> = BTreeMap::new();
    for (word, bit) in t.guards.iter().filter_map(GuardKey::slot) {
        *words.entry(word).or_default() |= bit;
    }
    words
}

impl Datapath {
    /// Writes `policy` as the inactive generation, then switches to it with one store to the
    /// configuration entry, then removes the previous generation. A packet sees either the old
    /// policy or the new one, never a mixture.
    ///
    /// A small change is written into the running generation instead (`incremental`): changes
    /// of host entries compile only those entries (`delta`), others compile the whole policy
    /// and write the difference.
    ///
    /// The inactive generation must be empty before it is written: a stale entry there would
    /// allow what the new policy does not. It is known empty when this process removed it in a
    /// switch that completed; otherwise (the first switch after loading or adopting pinned
    /// maps, or after a failed switch) it is found by walking the maps.
    pub fn apply(&mut self, policy: &Policy, event_interval_ns: u64) -> Result<Applied> {
        self.apply_observed(policy, event_interval_ns, |_| {})
    }

    /// `apply`, calling `in_force` with the configuration written the moment the kernel judges
    /// by `policy`: before a switch empties the generation it left (for a large policy, as
    /// long again as writing the new one). The agent puts the new policy's explainer in place
    /// there, under the new sequence, so that no denial of the new policy is explained by the
    /// old one. Not called when the apply fails before.
    pub fn apply_announced(
        &mut self,
        policy: &Policy,
        event_interval_ns: u64,
        in_force: impl FnOnce(&Config),
    ) -> Result<Applied> {
        self.apply_inner(policy, event_interval_ns, |_| {}, in_force)
    }

    /// `apply`, calling `between` after each write of an incremental update (tests judge
    /// packets there: every intermediate state must give the old policy's verdict or the new
    /// one's).
    pub fn apply_observed(
        &mut self,
        policy: &Policy,
        event_interval_ns: u64,
        between: impl FnMut(&mut Datapath),
    ) -> Result<Applied> {
        self.apply_inner(policy, event_interval_ns, between, |_| {})
    }

    fn apply_inner(
        &mut self,
        policy: &Policy,
        event_interval_ns: u64,
        mut between: impl FnMut(&mut Datapath),
        in_force: impl FnOnce(&Config),
    ) -> Result<Applied> {
        let current = self.config()?;
        let started = std::time::Instant::now();
        let mode = match policy.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        };
        if let Some(running) = self.running.take_if(|r| r.generation == current.generation) {
            let delta = running
                .index
                .as_ref()
                .and_then(|index| delta::plan(&running, index, policy));
            if let Some(delta) = delta {
                let mut running = running;
                let bits = running.present_after(&delta.steps);
                let at = (current, mode, event_interval_ns);
                let next = self.in_place(at, &mut running, &delta.steps, bits, &mut between)?;
                in_force(&next);
                let steps = delta.steps.len();
                if let Some(index) = running.index.as_mut() {
                    index.commit(delta);
                }
                return Ok(self.keep(running, next, started, Some(steps), true));
            }
            self.running = Some(running);
        }
        let mut tables = compile(policy, current.generation);
        Self::check_limits(&tables)?;
        if let Some(running) = self.running.take_if(|r| r.generation == current.generation) {
            match incremental::plan(&running, tables) {
                Ok((steps, t)) => {
                    let mut running = running;
                    let at = (current, mode, event_interval_ns);
                    let next =
                        self.in_place(at, &mut running, &steps, t.present(), &mut between)?;
                    in_force(&next);
                    running.index = Some(delta::Index::of(policy));
                    return Ok(self.keep(running, next, started, Some(steps.len()), false));
                }
                Err(t) => {
                    self.running = Some(running);
                    tables = *t;
                }
            }
        }
        let next_gen = current.generation ^ 1;
        tables.set_generation(next_gen);
        if !std::mem::take(&mut self.idle_clean) {
            self.walk_remove_generation(next_gen)?;
        }
        self.write(&tables)?;
        let next = Config {
            // 0 marks seeded flows as unchecked, so the sequence skips it.
            seq: current.seq.wrapping_add(1).max(1),
            generation: next_gen,
            mode,
            tables: tables.present(),
            // An update in place that failed half-way left the flag set.
            options: current.options & !OPTION_UPDATING,
            event_interval_ns,
            event_cost_ns: current.event_cost_ns,
            _pad: 0,
        };
        self.write_config(next)?;
        let in_force_after = started.elapsed();
        in_force(&next);
        let emptied = match self.running.take() {
            Some(r) if r.generation == current.generation => self.remove_running(&r),
            _ => self.walk_remove_generation(current.generation),
        };
        let mut running = incremental::Running::of(&tables, next_gen);
        running.index = Some(delta::Index::of(policy));
        self.running = Some(running);
        self.idle_clean = emptied.is_ok();
        Ok(Applied {
            config: next,
            sizes: Sizes::from(&tables),
            in_force: in_force_after,
            steps: None,
            compiled_alone: false,
            leftover: emptied.err(),
        })
    }

    /// Writes `steps` into `running` and the maps, from the configuration `current` to one with
    /// `mode`, the optional `tables` bits and `event_interval_ns`, which it returns.
    fn in_place(
        &mut self,
        (current, mode, event_interval_ns): (Config, u8, u64),
        running: &mut incremental::Running,
        steps: &[incremental::Step],
        tables: u8,
        between: &mut impl FnMut(&mut Datapath),
    ) -> Result<Config> {
        let next = Config {
            seq: current.seq.wrapping_add(1).max(1),
            mode,
            tables,
            event_interval_ns,
            options: current.options & !OPTION_UPDATING,
            ..current
        };
        self.write_steps(current, steps, next, between)?;
        running.apply(steps);
        Ok(next)
    }

    /// Keeps `running` as the generation in force and reports the update.
    fn keep(
        &mut self,
        running: incremental::Running,
        config: Config,
        started: std::time::Instant,
        steps: Option<usize>,
        compiled_alone: bool,
    ) -> Applied {
        let sizes = running.sizes();
        self.running = Some(running);
        Applied {
            config,
            sizes,
            in_force: started.elapsed(),
            steps,
            compiled_alone,
            leftover: None,
        }
    }

    /// Writes an incremental update's steps into the running generation (see `incremental`),
    /// between a configuration that widens the optional tables looked up and `next`. A failure
    /// leaves the generation's contents unknown to this process: the next apply switches
    /// generations and walks the maps.
    fn write_steps(
        &mut self,
        current: Config,
        steps: &[incremental::Step],
        next: Config,
        between: &mut impl FnMut(&mut Datapath),
    ) -> Result<()> {
        use incremental::Step;
        self.idle_clean = false;
        // Audit passes every packet: going to audit it is in force from the start (every
        // intermediate state then passes, as the new policy does); leaving it, at the end. The
        // recent-pass cache rests while the maps move (`OPTION_UPDATING`).
        let widened = Config {
            tables: current.tables | next.tables,
            mode: if next.mode == MODE_AUDIT {
                MODE_AUDIT
            } else {
                current.mode
            },
            options: current.options | OPTION_UPDATING,
            ..current
        };
        self.write_config(widened)?;
        for step in steps {
            match step {
                Step::AddClass { rules, ranges } => {
                    batch::update(fd(&self.rules), rules, &vec![1u32; rules.len()])
                        .map_err(batch_err(maps::RULES))?;
                    for (bits, k) in ranges {
                        self.ranges
                            .insert(&Key::new(*bits, *k), 1, 0)
                            .map_err(map_err(maps::RANGES))?;
                    }
                }
                Step::Put {
                    bits: None,
                    key,
                    info,
                } => {
                    self.peers
                        .insert(key, info, 0)
                        .map_err(map_err(maps::PEERS))?;
                }
                Step::Put {
                    bits: Some(b),
                    key,
                    info,
                } => {
                    self.prefixes
                        .insert(&Key::new(*b, *key), info, 0)
                        .map_err(map_err(maps::PEER_PREFIXES))?;
                }
                Step::Delete { bits: None, key } => {
                    self.peers.remove(key).map_err(map_err(maps::PEERS))?;
                }
                Step::Delete { bits: Some(b), key } => {
                    self.prefixes
                        .remove(&Key::new(*b, *key))
                        .map_err(map_err(maps::PEER_PREFIXES))?;
                }
                Step::DropClass { rules, ranges } => {
                    batch::delete(fd(&self.rules), rules).map_err(batch_err(maps::RULES))?;
                    for (bits, k) in ranges {
                        self.ranges
                            .remove(&Key::new(*bits, *k))
                            .map_err(map_err(maps::RANGES))?;
                    }
                }
            }
            between(self);
        }
        self.write_config(next)?;
        self.idle_clean = true;
        Ok(())
    }

    /// Entries per generation in the policy maps (peers, prefixes, rules, ranges, guard
    /// addresses), and guard bitmap words with bits set, found by walking every map: what a
    /// switch leaves behind, for tests and diagnostics.
    pub fn entries_by_generation(&self) -> Result<GenerationCounts> {
        let mut c = GenerationCounts::default();
        let mut count = |g: u8| c.entries[usize::from(g & 1)] += 1;
        self.peers
            .keys()
            .filter_map(std::result::Result::ok)
            .for_each(|k| count(k.generation));
        self.prefixes
            .keys()
            .filter_map(std::result::Result::ok)
            .for_each(|k| count(k.data().generation));
        self.rules
            .keys()
            .filter_map(std::result::Result::ok)
            .for_each(|k| count(k.generation));
        self.ranges
            .keys()
            .filter_map(std::result::Result::ok)
            .for_each(|k| count(k.data().generation));
        self.guard_addrs
            .keys()
            .filter_map(std::result::Result::ok)
            .for_each(|k| count(k.generation));
        for generation in [0u8, 1] {
            for word in guard_word_range(generation) {
                if self.guards.get(&word, 0).map_err(map_err(maps::GUARDS))? != 0 {
                    c.guard_words[usize::from(generation)] += 1;
                }
            }
        }
        Ok(c)
    }

    fn check_limits(t: &Tables) -> Result<()> {
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
            (
                maps::GUARD_ADDRS,
                t.guard_addrs.len(),
                limits::GUARD_ADDRS / 2,
            ),
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
        let (keys, values): (Vec<PeerKey>, Vec<PeerInfo>) = t.peers.iter().copied().unzip();
        batch::update(fd(&self.peers), &keys, &values).map_err(batch_err(maps::PEERS))?;
        for (bits, k, v) in &t.prefixes {
            self.prefixes
                .insert(&Key::new(*bits, *k), v, 0)
                .map_err(map_err(maps::PEER_PREFIXES))?;
        }
        batch::update(fd(&self.rules), &t.rules, &vec![1u32; t.rules.len()])
            .map_err(batch_err(maps::RULES))?;
        for (bits, k) in &t.ranges {
            self.ranges
                .insert(&Key::new(*bits, *k), 1, 0)
                .map_err(map_err(maps::RANGES))?;
        }
        batch::update(
            fd(&self.guard_addrs),
            &t.guard_addrs,
            &vec![1u8; t.guard_addrs.len()],
        )
        .map_err(batch_err(maps::GUARD_ADDRS))?;
        // The generation's words were cleared when it was removed: only set bits are written.
        for (word, bits) in guard_words(t) {
            self.guards
                .set(word, bits, 0)
                .map_err(map_err(maps::GUARDS))?;
        }
        Ok(())
    }

    /// Removes a generation this process wrote, by its keys.
    fn remove_running(&mut self, g: &incremental::Running) -> Result<()> {
        let peers: Vec<PeerKey> = g.peers.keys().copied().collect();
        batch::delete(fd(&self.peers), &peers).map_err(batch_err(maps::PEERS))?;
        for (bits, k) in g.prefixes.keys() {
            let _ = self.prefixes.remove(&Key::new(*bits, *k));
        }
        let rules: Vec<RuleKey> = g.rules.iter().copied().collect();
        batch::delete(fd(&self.rules), &rules).map_err(batch_err(maps::RULES))?;
        for (bits, k) in &g.ranges {
            let _ = self.ranges.remove(&Key::new(*bits, *k));
        }
        let addrs: Vec<PeerKey> = g.guard_addrs.iter().copied().collect();
        batch::delete(fd(&self.guard_addrs), &addrs).map_err(batch_err(maps::GUARD_ADDRS))?;
        for &word in &g.guard_words {
            self.guards.set(word, 0, 0).map_err(map_err(maps::GUARDS))?;
        }
        Ok(())
    }

    /// Removes every entry of `generation`, found by walking each map (one system call per key).
    fn walk_remove_generation(&mut self, generation: u8) -> Result<()> {
        let peers: Vec<PeerKey> = self
            .peers
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.generation == generation)
            .collect();
        batch::delete(fd(&self.peers), &peers).map_err(batch_err(maps::PEERS))?;
        let prefixes: Vec<Key<PeerKey>> = self
            .prefixes
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.data().generation == generation)
            .collect();
        for k in prefixes {
            let _ = self.prefixes.remove(&k);
        }
        let addrs: Vec<PeerKey> = self
            .guard_addrs
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.generation == generation)
            .collect();
        batch::delete(fd(&self.guard_addrs), &addrs).map_err(batch_err(maps::GUARD_ADDRS))?;
        let rules: Vec<RuleKey> = self
            .rules
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.generation == generation)
            .collect();
        batch::delete(fd(&self.rules), &rules).map_err(batch_err(maps::RULES))?;
        let ranges: Vec<Key<RangeKey>> = self
            .ranges
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.data().generation == generation)
            .collect();
        for k in ranges {
            let _ = self.ranges.remove(&k);
        }
        // Every word of the generation's bitmap: an array has no keys to find.
        for word in guard_word_range(generation) {
            self.guards.set(word, 0, 0).map_err(map_err(maps::GUARDS))?;
        }
        Ok(())
    }
}

/// The guard bitmap's words of `generation`, TCP and UDP.
fn guard_word_range(generation: u8) -> impl Iterator<Item = u32> {
    [PROTO_TCP, PROTO_UDP].into_iter().flat_map(move |proto| {
        let first = GuardKey {
            generation,
            proto,
            port: 0,
        };
        first
            .slot()
            .map(|(start, _)| start..start + GUARD_WORDS_PER_SET)
            .into_iter()
            .flatten()
    })
}

/// A hash map's file descriptor, for the batch commands.
fn fd<M: IterableMap<K, V>, K: aya::Pod, V>(map: &M) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd as _;
    map.map().fd().as_fd()
}

fn batch_err(map: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::Batch { map, source: e }
}
