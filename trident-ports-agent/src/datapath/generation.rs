//! Policy switches by generation: the new policy is written beside the running one, one store
//! to the configuration entry switches, then the old generation is removed.
use std::collections::BTreeMap;

use aya::maps::lpm_trie::Key;
use trident_ports_common::{
    Config, GUARD_WORDS_PER_SET, GuardKey, MODE_AUDIT, MODE_ENFORCE, PROTO_TCP, PROTO_UDP, PeerKey,
    RangeKey, RuleKey, limits, maps,
};

use super::{Datapath, Tables, compile, map_err};
use crate::{
    error::{Error, Result},
    policy::{Mode, Policy},
};

/// What `apply` switched to.
pub struct Applied {
    pub config: Config,
    pub tables: Tables,
}

impl Datapath {
    /// Writes `policy` as the inactive generation, then switches to it with one store to the
    /// configuration entry, then removes the previous generation. A packet sees either the old
    /// policy or the new one, never a mixture.
    pub fn apply(&mut self, policy: &Policy, event_interval_ns: u64) -> Result<Applied> {
        let current = self.config()?;
        let next_gen = current.generation ^ 1;
        let tables = compile(policy, next_gen);
        Self::check_limits(&tables)?;
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
        for k in &t.guard_addrs {
            self.guard_addrs
                .insert(k, 1, 0)
                .map_err(map_err(maps::GUARD_ADDRS))?;
        }
        // The generation's words were cleared by `remove_generation`: only set bits are written.
        let mut words: BTreeMap<u32, u64> = BTreeMap::new();
        for (word, bit) in t.guards.iter().filter_map(GuardKey::slot) {
            *words.entry(word).or_default() |= bit;
        }
        for (word, bits) in words {
            self.guards
                .set(word, bits, 0)
                .map_err(map_err(maps::GUARDS))?;
        }
        Ok(())
    }

    fn remove_generation(&mut self, generation: u8) -> Result<()> {
        let peers: Vec<PeerKey> = self
            .peers
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.generation == generation)
            .collect();
        for k in peers {
            let _ = self.peers.remove(&k);
        }
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
        for k in addrs {
            let _ = self.guard_addrs.remove(&k);
        }
        let rules: Vec<RuleKey> = self
            .rules
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.generation == generation)
            .collect();
        for k in rules {
            let _ = self.rules.remove(&k);
        }
        let ranges: Vec<Key<RangeKey>> = self
            .ranges
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.data().generation == generation)
            .collect();
        for k in ranges {
            let _ = self.ranges.remove(&k);
        }
        // Every word of the generation's bitmap, TCP and UDP: an array has no keys to find.
        for proto in [PROTO_TCP, PROTO_UDP] {
            let first = GuardKey {
                generation,
                proto,
                port: 0,
            };
            let Some((start, _)) = first.slot() else {
                continue;
            };
            for word in start..start + GUARD_WORDS_PER_SET {
                self.guards.set(word, 0, 0).map_err(map_err(maps::GUARDS))?;
            }
        }
        Ok(())
    }
}
