//! Pinned state under one directory on a BPF filesystem, so that enforcement outlives the agent:
//!
//! ```text
//! <dir>/maps/<MAP>                          every map (policy, connection table, events, counters)
//! <dir>/links/<iface>_<hook>                tcx and XDP links (bpf_link); hook = tc-egress|tc-ingress|xdp
//! <dir>/links/<iface>_<hook>_nl_<prio>_<h>  legacy cls_bpf filters: an empty directory whose name
//!                                           keeps the filter's priority and handle
//! ```
//!
//! bpffs reserves dots in names (EPERM) and holds no regular files, hence `_` separators, a dot
//! in an interface name written as `:` (which interface names cannot contain), and the legacy
//! filter's details in a directory name.
//!
//! A restarted or upgraded agent reuses the maps and moves the links to its own programs with one
//! atomic update each, so no packet meets an unattached interface.
use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use aya::maps::MapData;
use trident_ports_common::maps;

use crate::error::{Error, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What programs compiled against a map rely on. A map pinned by an agent of another version
/// may differ: this build's programs cannot share it (the verifier rejects them, or their
/// lookups miss).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for MapLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
    /// Why pins here will not outlive this process, when they will not.
    ephemeral: Option<String>,
}

impl Pins {
    /// Checks that `dir` is on a BPF filesystem and creates its layout. The conventional
    /// /sys/fs/bpf is mounted when it is missing, as Cilium and Calico do.
    pub fn open(dir: &Path) -> Result<Self> {
        let conventional = Path::new("/sys/fs/bpf");
        let mut mounted_here = false;
        if dir.starts_with(conventional) && conventional.exists() && !is_bpffs(conventional) {
            mounted_here = mount_bpffs(conventional);
        }
        let fs_root = dir
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        if !is_bpffs(fs_root) {
            return Err(Error::Config {
                path: dir.to_path_buf(),
                message:
                    "the pin directory must be on a BPF filesystem (mount -t bpf bpf /sys/fs/bpf)"
                        .into(),
            });
        }
        for d in [dir.join("maps"), dir.join("links")] {
            std::fs::create_dir_all(&d).map_err(Error::io("creating", &d))?;
        }
        let ephemeral = if mounted_here {
            Some(format!(
                "no BPF filesystem was mounted at {}, so this agent mounted one of its own, which \
                 goes with its mount namespace",
                conventional.display()
            ))
        } else {
            private_mount(fs_root)
        };
        Ok(Pins {
            dir: dir.to_path_buf(),
            ephemeral,
        })
    }

    /// Why pins here will not outlive this process (`None`: they will).
    pub fn ephemeral(&self) -> Option<&str> {
        self.ephemeral.as_deref()
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    /// The layout of the map pinned as `name`, if one is.
    fn pinned_layout(&self, name: &str) -> Result<Option<MapLayout>> {
        let path = self.map(name);
        if !path.exists() {
            return Ok(None);
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| Error::Load {
            what: format!("the pinned map {}", path.display()),
            source: e.into(),
        })?;
        Ok(Some(MapLayout {
            // A type this aya does not know cannot be the one the programs were built for.
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        }))
    }

    /// Unpins every map in `names` whose pinned layout is not the one `object` defines, and
    /// with the configuration also the connection table, whose entries count as checked only
    /// under the configuration's policy sequence: a fresh configuration restarts that sequence,
    /// and old entries could then pass as checked against a policy they never met. Returns the
    /// maps unpinned, with the layout each had, and the retired connection table itself when
    /// its layout is this build's: its flows can be carried over, unchecked (`Datapath::
    /// inherit_flows`), so that none of them looks unsolicited to the new programs.
    pub fn retire_other_layouts(
        &self,
        object: &[u8],
        names: &[&str],
    ) -> Result<(Vec<Retired>, Option<MapData>)> {
        let want = object_layouts(object, names)?;
        let mut have = BTreeMap::new();
        for name in names {
            if let Some(layout) = self.pinned_layout(name)? {
                have.insert((*name).to_string(), layout);
            }
        }
        let retired = retirements(&want, &have);
        let mut flows = None;
        for (name, old) in &retired {
            if name == maps::FLOWS && old.is_none() {
                // Opened before it is unpinned; a failure only loses what it would carry over.
                flows = MapData::from_pin(self.map(name)).ok();
            }
            self.retire_map(name)?;
        }
        Ok((retired, flows))
    }

    /// Unpins `name`, so that the loader creates and pins a fresh map in its place. Programs
    /// still using the old map (through links an earlier agent pinned) keep it until their
    /// links move to this build's programs, so enforcement does not pause.
    fn retire_map(&self, name: &str) -> Result<()> {
        let path = self.map(name);
        std::fs::remove_file(&path)
            .map_err(Error::io("unpinning a map of another layout at", &path))
    }

    pub fn link(&self, iface: &str, hook: &str) -> PathBuf {
        self.dir
            .join("links")
            .join(format!("{}_{hook}", iface.replace('.', ":")))
    }

    fn netlink_prefix(iface: &str, hook: &str) -> String {
        format!("{}_{hook}_nl_", iface.replace('.', ":"))
    }

    pub fn read_netlink(&self, iface: &str, hook: &str) -> Option<(u16, u32)> {
        let prefix = Self::netlink_prefix(iface, hook);
        std::fs::read_dir(self.dir.join("links"))
            .ok()?
            .flatten()
            .find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (prio, handle) = name.strip_prefix(&prefix)?.split_once('_')?;
                Some((prio.parse().ok()?, handle.parse().ok()?))
            })
    }

    pub fn write_netlink(
        &self,
        iface: &str,
        hook: &str,
        priority: u16,
        handle: u32,
    ) -> io::Result<()> {
        if let Some((p, h)) = self.read_netlink(iface, hook) {
            let _ = std::fs::remove_dir(
                self.dir
                    .join("links")
                    .join(format!("{}{p}_{h}", Self::netlink_prefix(iface, hook))),
            );
        }
        std::fs::create_dir(self.dir.join("links").join(format!(
            "{}{priority}_{handle}",
            Self::netlink_prefix(iface, hook)
        )))
    }
}

/// A map unpinned because this build cannot share it, with the layout it had (`None`: a map
/// retired with the configuration, `TIED_TO_CONFIG`).
pub type Retired = (String, Option<MapLayout>);

/// The layouts the eBPF object defines for `names`.
pub fn object_layouts(object: &[u8], names: &[&str]) -> Result<BTreeMap<String, MapLayout>> {
    let obj = aya_obj::Object::parse(object).map_err(|e| Error::Load {
        what: "the eBPF object".into(),
        source: e.into(),
    })?;
    names
        .iter()
        .map(|name| {
            let def = obj
                .maps
                .get(*name)
                .ok_or_else(|| Error::Object(format!("map {name}")))?;
            let layout = MapLayout {
                map_type: def.map_type(),
                key_size: def.key_size(),
                value_size: def.value_size(),
                max_entries: def.max_entries(),
                flags: def.map_flags(),
            };
            Ok(((*name).to_string(), layout))
        })
        .collect()
}

/// Maps whose entries mean something only beside the configuration they were written under:
/// the connection table (its entries count as checked under the configuration's sequence) and
/// the policy maps (keyed by the configuration's generation). A replaced configuration takes
/// them along. Shared with the old programs, which enforce the old configuration until their
/// attachments move, the policy maps would be rewritten under them: the new configuration
/// starts at generation 0, so the new agent writes generation 1, and clears it first. When the
/// old programs ran generation 1, every storage address was unprotected for that moment and
/// a denied port passed (`an_upgrade_replaces_pinned_maps_of_another_layout`, seen on a slow
/// machine; nineteenth session).
const TIED_TO_CONFIG: &[&str] = &[
    maps::FLOWS,
    maps::PEERS,
    maps::PEER_PREFIXES,
    maps::RULES,
    maps::RANGES,
    maps::GUARDS,
    maps::GUARD_ADDRS,
];

/// The pinned maps (`have`) this build cannot share, with the layout each had: every one whose
/// layout differs from the object's (`want`), and with the configuration also the maps tied
/// to it (`TIED_TO_CONFIG`; `None`: their layout was fine).
fn retirements(
    want: &BTreeMap<String, MapLayout>,
    have: &BTreeMap<String, MapLayout>,
) -> Vec<(String, Option<MapLayout>)> {
    let mut retired: Vec<(String, Option<MapLayout>)> = have
        .iter()
        .filter(|(name, layout)| want.get(*name) != Some(layout))
        .map(|(name, layout)| (name.clone(), Some(*layout)))
        .collect();
    if retired.iter().any(|(r, _)| r == maps::CONFIG) {
        for name in TIED_TO_CONFIG {
            if have.contains_key(*name) && !retired.iter().any(|(r, _)| r == name) {
                retired.push(((*name).to_string(), None));
            }
        }
    }
    retired
}

/// Why the BPF filesystem at `path` ends with this process, if it does: this agent runs in a
/// mount namespace of its own, and the host's (that of PID 1) has no mount of the same
/// filesystem instance (the same device in mountinfo): an instance mounted only here goes with
/// the namespace. Under `ip netns exec`, which remounts /sys, /sys/fs/bpf is one of these; a
/// host mount seen through the namespace, or a pod's hostPath, is not.
fn private_mount(path: &Path) -> Option<String> {
    let ns = |p: &str| std::fs::read_link(p).ok();
    if ns("/proc/self/ns/mnt") == ns("/proc/1/ns/mnt") {
        return None;
    }
    let ours = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The mount that holds `path`: the longest mount point that is a prefix of it.
    let (_, dev) = bpf_mounts(&ours)
        .filter(|(point, _)| path.starts_with(point))
        .max_by_key(|(point, _)| point.components().count())?;
    let host = std::fs::read_to_string("/proc/1/mountinfo").ok()?;
    (!bpf_mounts(&host).any(|(_, d)| d == dev)).then(|| {
        format!(
            "the BPF filesystem at {} is mounted only in this agent's mount namespace, not the host's",
            path.display()
        )
    })
}

/// (mount point, device) of each BPF filesystem in a mountinfo text.
fn bpf_mounts(info: &str) -> impl Iterator<Item = (PathBuf, String)> + '_ {
    info.lines().filter_map(|l| {
        let (head, tail) = l.split_once(" - ")?;
        let fields: Vec<&str> = head.split_whitespace().collect();
        if !tail.starts_with("bpf ") {
            return None;
        }
        Some((PathBuf::from(fields.get(4)?), (*fields.get(2)?).to_string()))
    })
}

/// Mounts a BPF filesystem at `at`; true when it did.
fn mount_bpffs(at: &Path) -> bool {
    let (Ok(src), Ok(target), Ok(fstype)) = (
        std::ffi::CString::new("bpf"),
        std::ffi::CString::new(at.as_os_str().as_encoded_bytes()),
        std::ffi::CString::new("bpf"),
    ) else {
        return false;
    };
    // SAFETY: valid NUL-terminated strings; a failure leaves the check below to report it.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        tracing::info!(path = %at.display(), "mounted a BPF filesystem");
    }
    rc == 0
}

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &raw mut s) == 0 && s.f_type as i64 == BPF_FS_MAGIC
    }
}

/// What `uninstall` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<String>,
    pub maps: usize,
}

/// Detaches every pinned link and legacy filter and removes every pinned map and the directory.
pub fn uninstall(dir: &Path) -> Result<Removed> {
    use aya::programs::{
        TcAttachType,
        links::{FdLink, Link as _, PinnedLink},
        tc::{SchedClassifierLink, TcHandle},
    };
    let mut removed = Removed::default();
    if !dir.exists() {
        return Ok(removed);
    }
    let links = dir.join("links");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&links)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            // <iface>_<hook>_nl_<priority>_<handle>
            let fields: Vec<&str> = name.rsplitn(5, '_').collect();
            if let [handle, priority, "nl", hook, iface] = fields[..] {
                let iface = iface.replace(':', ".");
                let kind = if hook == "tc-egress" {
                    TcAttachType::Egress
                } else {
                    TcAttachType::Ingress
                };
                if let (Ok(priority), Ok(handle)) = (priority.parse::<u16>(), handle.parse::<u32>())
                {
                    if let Ok(link) = SchedClassifierLink::attached(
                        &iface,
                        kind,
                        priority,
                        TcHandle::from(handle),
                        None,
                    ) {
                        let _ = link.detach();
                    }
                }
            }
            let _ = std::fs::remove_dir(&path);
        } else {
            if let Ok(p) = PinnedLink::from_pin(&path) {
                // Unpinned and closed: the kernel detaches the link.
                if let Ok(fd) = p.unpin() {
                    drop::<FdLink>(fd);
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        removed.links.push(name);
    }
    if let Ok(rd) = std::fs::read_dir(dir.join("maps")) {
        for e in rd.flatten() {
            if std::fs::remove_file(e.path()).is_ok() {
                removed.maps += 1;
            }
        }
    }
    for d in [dir.join("links"), dir.join("maps"), dir.to_path_buf()] {
        let _ = std::fs::remove_dir(&d);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layouts() -> BTreeMap<String, MapLayout> {
        object_layouts(
            super::super::OBJECT,
            &[maps::CONFIG, maps::FLOWS, maps::PEERS],
        )
        .unwrap()
    }

    #[test]
    fn the_same_build_shares_every_pinned_map() {
        let want = layouts();
        assert!(retirements(&want, &want).is_empty());
        assert!(
            retirements(&want, &BTreeMap::new()).is_empty(),
            "nothing pinned, nothing to replace"
        );
    }

    #[test]
    fn a_map_of_another_layout_is_replaced_and_the_configuration_takes_the_table() {
        let want = layouts();
        let mut have = want.clone();
        let peers = have.get_mut(maps::PEERS).unwrap();
        peers.max_entries /= 2;
        let old_peers = *peers;
        assert_eq!(
            retirements(&want, &have),
            vec![(maps::PEERS.to_string(), Some(old_peers))],
            "only the map that differs"
        );
        let config = have.get_mut(maps::CONFIG).unwrap();
        config.value_size -= 4;
        let old_config = *config;
        let r = retirements(&want, &have);
        assert!(
            r.contains(&(maps::CONFIG.to_string(), Some(old_config))),
            "{r:?}"
        );
        assert!(r.contains(&(maps::FLOWS.to_string(), None)), "{r:?}");
        assert!(
            r.contains(&(maps::PEERS.to_string(), Some(old_peers))),
            "a map of another layout keeps its own reason: {r:?}"
        );
        let mut same_peers = have.clone();
        same_peers.insert(maps::PEERS.to_string(), want[maps::PEERS]);
        assert!(
            retirements(&want, &same_peers).contains(&(maps::PEERS.to_string(), None)),
            "the policy maps go with the configuration"
        );
        have.remove(maps::FLOWS);
        assert!(
            !retirements(&want, &have)
                .iter()
                .any(|(n, _)| n == maps::FLOWS),
            "no table pinned, none to replace"
        );
    }

    #[test]
    fn the_object_defines_every_map_the_agent_pins() {
        assert!(matches!(
            object_layouts(super::super::OBJECT, &["TP_NO_SUCH_MAP"]),
            Err(Error::Object(_))
        ));
        let l = layouts();
        assert_eq!(l[maps::CONFIG].max_entries, 1);
        assert_eq!(
            l[maps::CONFIG].value_size as usize,
            size_of::<trident_ports_common::Config>()
        );
    }

    #[test]
    fn link_names_and_legacy_filters_round_trip() {
        let dir = std::env::temp_dir().join(format!("tp-pins-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("links")).unwrap();
        let pins = Pins {
            dir: dir.clone(),
            ephemeral: None,
        };
        assert!(pins.link("eth0.100", "xdp").ends_with("links/eth0:100_xdp"));
        assert_eq!(pins.read_netlink("eth0", "tc-egress"), None);
        pins.write_netlink("eth0", "tc-egress", 49152, 0x1_0001)
            .unwrap();
        assert_eq!(
            pins.read_netlink("eth0", "tc-egress"),
            Some((49152, 0x1_0001))
        );
        pins.write_netlink("eth0", "tc-egress", 1, 2).unwrap();
        assert_eq!(
            pins.read_netlink("eth0", "tc-egress"),
            Some((1, 2)),
            "a new filter replaces the record"
        );
        assert_eq!(pins.read_netlink("eth0", "tc-ingress"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
