//! The compiled policy: what `plan` prints and what `run` enforces, one and the same value.
//! `compile` makes it from the model, the configuration and the backends; `render` prints it.
pub mod compile;
pub mod render;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::net::{Direction, PortRange, Proto};

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
