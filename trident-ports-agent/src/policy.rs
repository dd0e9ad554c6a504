//! The compiled policy: what `plan` prints and what `run` enforces, one and the same value.
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => trident_ports_common::PROTO_TCP,
            Proto::Udp => trident_ports_common::PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            trident_ports_common::PROTO_TCP => Some(Proto::Tcp),
            trident_ports_common::PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        })
    }
}

/// An inclusive port range; a single port is `from == to`. Serialised as `[from, to]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "[u16; 2]", into = "[u16; 2]")]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

impl From<[u16; 2]> for PortRange {
    fn from([from, to]: [u16; 2]) -> Self {
        PortRange { from, to }
    }
}

impl From<PortRange> for [u16; 2] {
    fn from(r: PortRange) -> Self {
        [r.from, r.to]
    }
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        PortRange {
            from: port,
            to: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.from <= port && port <= self.to
    }

    /// Parses `"2049"` or `"1024-65535"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s, s),
        };
        let p = |x: &str| {
            x.parse::<u16>()
                .map_err(|_| format!("`{s}` is not a port or a port range (1-65535)"))
        };
        let (from, to) = (p(a)?, p(b)?);
        if from == 0 || from > to {
            return Err(format!("`{s}` is not a port or a port range (1-65535)"));
        }
        Ok(PortRange { from, to })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

/// One allow entry. On egress `peer` is the destination; on ingress it is the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub direction: Direction,
    /// Destination of egress entries; `None` on ingress entries, whose destination is this node.
    pub dst: Option<IpNet>,
    /// Source of ingress entries; `None` on egress entries, whose source is this node.
    pub src: Option<IpNet>,
    pub ports: PortRange,
    pub proto: Proto,
    /// What the port is for, from the port model.
    pub purpose: String,
    /// The Trident backend the entry serves, if any.
    pub backend: Option<String>,
    /// Where the address came from: a backend file and field, or a node configuration key.
    pub source: String,
}

impl Entry {
    pub fn peer(&self) -> IpNet {
        match self.direction {
            Direction::Egress => self.dst,
            Direction::Ingress => self.src,
        }
        .expect("an entry always names its peer")
    }
}

/// A node port that only the ingress entries listing it may reach (Trident's 8000, 8443, 8001
/// from the cluster, the probe port from nobody outside the node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub port: u16,
    pub proto: Proto,
    pub purpose: String,
}

/// An address whose traffic is policed whole: storage and directory servers. Packets to it need
/// an egress entry; packets from it need a flow the node started or an ingress entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protected {
    pub addr: IpNet,
    pub why: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// What explanations need to know about a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub name: String,
    pub driver: String,
    /// "NFSv4 (nfsvers=4.1)", "NFSv3", "NFSv3 or NFSv4 (not pinned)", or none for non-NFS.
    pub nfs: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Policy {
    pub role: String,
    pub mode: Mode,
    pub entries: Vec<Entry>,
    pub guarded: Vec<Guard>,
    pub protected: Vec<Protected>,
    pub warnings: Vec<String>,
    #[serde(default)]
    pub backends: Vec<BackendInfo>,
}
