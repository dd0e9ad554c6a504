//! Pinned state under one directory on a BPF filesystem, so that enforcement outlives the agent:
//!
//! ```text
//! <dir>/maps/<MAP>                 every map (policy, connection table, events, counters)
//! <dir>/links/<iface>.<hook>       tcx and XDP links (bpf_link), hook = tc-egress|tc-ingress|xdp
//! <dir>/links/<iface>.<hook>.nl    legacy cls_bpf filters: "priority handle"
//! ```
//!
//! A restarted or upgraded agent reuses the maps and moves the links to its own programs with one
//! atomic update each, so no packet meets an unattached interface.
use std::{
    io,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// Checks that `dir` is on a BPF filesystem and creates its layout.
    pub fn open(dir: &Path) -> Result<Self> {
        let fs_root = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
        if !is_bpffs(fs_root) {
            return Err(Error::Config {
                path: dir.to_path_buf(),
                message: "the pin directory must be on a BPF filesystem (mount -t bpf bpf /sys/fs/bpf)".into(),
            });
        }
        for d in [dir.join("maps"), dir.join("links")] {
            std::fs::create_dir_all(&d).map_err(|e| Error::Config { path: d.clone(), message: e.to_string() })?;
        }
        Ok(Pins { dir: dir.to_path_buf() })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn link(&self, iface: &str, hook: &str) -> PathBuf {
        self.dir.join("links").join(format!("{iface}.{hook}"))
    }

    pub fn netlink(&self, iface: &str, hook: &str) -> PathBuf {
        self.dir.join("links").join(format!("{iface}.{hook}.nl"))
    }

    pub fn read_netlink(&self, iface: &str, hook: &str) -> Option<(u16, u32)> {
        let text = std::fs::read_to_string(self.netlink(iface, hook)).ok()?;
        let mut it = text.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }

    pub fn write_netlink(&self, iface: &str, hook: &str, priority: u16, handle: u32) -> io::Result<()> {
        std::fs::write(self.netlink(iface, hook), format!("{priority} {handle}\n"))
    }
}

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == BPF_FS_MAGIC
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
        if let Some(base) = name.strip_suffix(".nl") {
            let Some((iface, hook)) = base.rsplit_once('.') else { continue };
            let pins = Pins { dir: dir.to_path_buf() };
            if let Some((priority, handle)) = pins.read_netlink(iface, hook) {
                let kind = if hook == "tc-egress" { TcAttachType::Egress } else { TcAttachType::Ingress };
                if let Ok(link) = SchedClassifierLink::attached(iface, kind, priority, TcHandle::from(handle), None) {
                    let _ = link.detach();
                }
            }
        } else if let Ok(p) = PinnedLink::from_pin(&path) {
            // Unpinned and closed: the kernel detaches the link.
            if let Ok(fd) = p.unpin() {
                drop::<FdLink>(fd);
            }
        }
        let _ = std::fs::remove_file(&path);
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
