//! What the node really uses: its live storage sessions, read from the host's `/proc` and
//! `/sys`. NFS mounts from mountinfo (the kernel records the server's resolved address in
//! `addr=`), iSCSI connections from `iscsi_connection`, NVMe-oF controllers from `nvme`.
//! Whatever a policy says, a session that works is not cut (see `policy::live`).
//!
//! Odd entries (a session mid-teardown, an unknown transport, a mount whose server is not an
//! address) are skipped with a note: reading them never stops enforcement.
mod iscsi;
mod mounts;
mod nvme;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

pub use mounts::parse_mountinfo;

use crate::backends::Mount;

/// One live session and what it talks to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Session {
    /// An NFS mount: where, from which server, with which options.
    Nfs {
        mountpoint: String,
        source: String,
        server: IpAddr,
        mount: MountFacts,
    },
    /// One connection of an iSCSI session.
    Iscsi {
        session: String,
        target: String,
        portal: IpAddr,
        port: u16,
    },
    /// An NVMe-oF controller over TCP (or RDMA).
    Nvme {
        controller: String,
        transport: String,
        address: IpAddr,
        port: u16,
    },
}

/// The NFS options that decide ports, as mountinfo shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MountFacts {
    /// 3 or 4.
    pub major: u8,
    /// NFSv4.0: the server calls back.
    pub v40: bool,
    pub port: Option<u16>,
    pub mountport: Option<u16>,
    pub rdma: bool,
}

impl From<Mount> for MountFacts {
    fn from(m: Mount) -> Self {
        MountFacts {
            major: if m.v3() && !m.v4() { 3 } else { 4 },
            v40: m.v40(),
            port: m.port,
            mountport: m.mountport,
            rdma: m.rdma,
        }
    }
}

impl Session {
    pub fn protocol(&self) -> &'static str {
        match self {
            Session::Nfs { mount, .. } if mount.major == 3 => "nfsv3",
            Session::Nfs { .. } => "nfsv4",
            Session::Iscsi { .. } => "iscsi",
            Session::Nvme { .. } => "nvme",
        }
    }

    /// The storage address the session talks to.
    pub fn peer(&self) -> IpAddr {
        match self {
            Session::Nfs { server, .. } => *server,
            Session::Iscsi { portal, .. } => *portal,
            Session::Nvme { address, .. } => *address,
        }
    }
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Session::Nfs {
                mountpoint,
                source,
                mount,
                ..
            } => write!(f, "NFSv{} mount {mountpoint} ({source})", mount.major),
            Session::Iscsi {
                session,
                target,
                portal,
                port,
            } => write!(f, "iSCSI {session} ({target} at {})", sock(*portal, *port)),
            Session::Nvme {
                controller,
                transport,
                address,
                port,
            } => write!(
                f,
                "NVMe/{transport} {controller} ({})",
                sock(*address, *port)
            ),
        }
    }
}

fn sock(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// Where the host's `/proc` and `/sys` are (in a pod: the host's, mounted read-only).
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// The live sessions, and notes on entries that were skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    pub sessions: Vec<Session>,
    pub notes: Vec<String>,
}

/// Reads every kind of session. Mounts come from the mount namespace of the host's init
/// (`<proc>/1/mountinfo`), where kubelet mounts volumes.
pub fn read(roots: &Roots) -> Sessions {
    let mut out = Sessions::default();
    match std::fs::read_to_string(roots.proc.join("1/mountinfo")) {
        Ok(text) => parse_mountinfo(&text, &mut out),
        Err(e) => out.notes.push(format!(
            "{}: {e}; NFS mounts are not known",
            roots.proc.join("1/mountinfo").display()
        )),
    }
    iscsi::read(&roots.sys, &mut out);
    nvme::read(&roots.sys, &mut out);
    out.sessions.sort();
    out.sessions.dedup();
    out
}

/// The first line of a sysfs attribute, trimmed; `None` when it cannot be read (a session that
/// ended while it was being read).
fn attr(dir: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// The entries of a sysfs class directory, sorted; none when the class does not exist (the
/// module is not loaded).
fn class_entries(sys: &Path, class: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(sys.join("class").join(class)) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    v
}
