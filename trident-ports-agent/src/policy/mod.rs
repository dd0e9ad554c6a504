//! The compiled policy: what `plan` prints and what `run` enforces, one and the same value.
//! `compile` makes it from the model, the configuration and the backends; `render` prints it.
pub mod compile;
pub mod live;
pub mod render;
pub mod widen;

use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::net::{Direction, PortRange, Proto};

/// One allow entry between this node and a peer: on egress the peer is the destination, on
/// ingress the source. One address field, so an entry cannot name the wrong end; `plan`'s JSON
/// keeps its documented `dst`/`src` shape (docs/plan.md).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "EntryJson", try_from = "EntryJson")]
pub struct Entry {
    pub direction: Direction,
    pub peer: IpNet,
    pub ports: PortRange,
    pub proto: Proto,
    /// What the port is for, from the port model.
    pub purpose: Arc<str>,
    /// The Trident backend the entry serves, if any.
    pub backend: Option<Arc<str>>,
    /// Where the address came from: a backend file and field, or a node configuration key.
    pub source: Arc<str>,
}

impl Entry {
    /// The destination of an egress entry.
    pub fn dst(&self) -> Option<IpNet> {
        (self.direction == Direction::Egress).then_some(self.peer)
    }

    /// The source of an ingress entry.
    pub fn src(&self) -> Option<IpNet> {
        (self.direction == Direction::Ingress).then_some(self.peer)
    }
}

/// [`Entry`] as `plan --format json` writes it.
#[derive(Serialize, Deserialize)]
struct EntryJson {
    direction: Direction,
    dst: Option<IpNet>,
    src: Option<IpNet>,
    ports: PortRange,
    proto: Proto,
    purpose: String,
    backend: Option<String>,
    source: String,
}

impl From<Entry> for EntryJson {
    fn from(e: Entry) -> Self {
        EntryJson {
            direction: e.direction,
            dst: e.dst(),
            src: e.src(),
            ports: e.ports,
            proto: e.proto,
            purpose: e.purpose.to_string(),
            backend: e.backend.map(|b| b.to_string()),
            source: e.source.to_string(),
        }
    }
}

impl TryFrom<EntryJson> for Entry {
    type Error = String;

    fn try_from(j: EntryJson) -> Result<Self, String> {
        let peer = match (j.direction, j.dst, j.src) {
            (Direction::Egress, Some(dst), None) => dst,
            (Direction::Ingress, None, Some(src)) => src,
            (d, ..) => {
                return Err(format!(
                    "an {d} entry names exactly its {} and not the other end",
                    if d == Direction::Egress { "dst" } else { "src" }
                ));
            }
        };
        Ok(Entry {
            direction: j.direction,
            peer,
            ports: j.ports,
            proto: j.proto,
            purpose: j.purpose.into(),
            backend: j.backend.map(Into::into),
            source: j.source.into(),
        })
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
    /// Where the guarded ports are guarded: the node's own addresses and the controller pod's.
    /// Packets to other addresses (other pods routed through the node) pass untouched.
    #[serde(default)]
    pub guard_addresses: Vec<IpNet>,
    /// Definitions left out (by name, or origin), for metrics.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// The node's live sessions against this policy, when they were read (`run`, `plan --live`).
    #[serde(default)]
    pub live: Option<Vec<live::LiveReport>>,
}

impl Policy {
    /// The networks whose traffic the datapath polices both ways, admitting from them only
    /// replies to flows in its connection table: the protected addresses and every egress
    /// entry's peer (the node only opens ports towards storage and directory servers). An
    /// address may appear more than once.
    pub fn protected_nets(&self) -> impl Iterator<Item = IpNet> + '_ {
        let egress = self
            .entries
            .iter()
            .filter(|e| e.direction == Direction::Egress)
            .map(|e| e.peer);
        self.protected.iter().map(|p| p.addr).chain(egress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_the_documented_json_shape() {
        let e = Entry {
            direction: Direction::Ingress,
            peer: "198.51.100.0/24".parse().unwrap(),
            ports: PortRange::single(8443),
            proto: Proto::Tcp,
            purpose: "p".into(),
            backend: None,
            source: "s".into(),
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["dst"], serde_json::Value::Null);
        assert_eq!(j["src"], "198.51.100.0/24");
        assert_eq!(j["ports"], serde_json::json!([8443, 8443]));
        assert_eq!(serde_json::from_value::<Entry>(j).unwrap(), e);
        let wrong = serde_json::json!({"direction": "egress", "dst": null, "src": "192.0.2.1/32",
            "ports": [1, 1], "proto": "tcp", "purpose": "", "backend": null, "source": ""});
        assert!(serde_json::from_value::<Entry>(wrong).is_err());
    }
}
