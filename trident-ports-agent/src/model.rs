//! The Trident port model (`model/ports.yaml`, embedded): which ports a node needs, towards whom,
//! under which condition, and why.
use std::sync::OnceLock;

use serde::Deserialize;

use crate::policy::{PortRange, Proto};

static MODEL_YAML: &str = include_str!("../model/ports.yaml");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    StorageMgmt,
    StorageData,
    Directory,
    Cluster,
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    Always,
    Nfs,
    Nfsv3,
    Nfsv3Callbacks,
    Nfsv40Callbacks,
    NfsRdma,
    HttpsMetrics,
    Smb,
    Iscsi,
    Nvme,
    Eseries,
    EseriesHttp,
    Metrics,
    Kerberos,
    Ldap,
    Probe,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub id: String,
    pub role: String,
    pub port: u16,
    #[serde(default)]
    pub port_to: Option<u16>,
    pub protocols: Vec<Proto>,
    pub direction: String,
    pub peer: Peer,
    pub condition: Condition,
    pub purpose: String,
    pub drivers: String,
    pub note: String,
    #[serde(default)]
    pub source: Option<String>,
}

impl Port {
    pub fn ports(&self) -> PortRange {
        PortRange {
            from: self.port,
            to: self.port_to.unwrap_or(self.port),
        }
    }

    /// "NFS lock manager (nlockmgr), needed only for NFSv3"-style text for events and plans.
    pub fn explain(&self) -> String {
        let when = match self.condition {
            Condition::Nfsv3 | Condition::Nfsv3Callbacks => ", needed only for NFSv3",
            Condition::Nfsv40Callbacks => ", needed only for NFSv4.0",
            Condition::NfsRdma => ", needed only for NFS over RDMA",
            Condition::HttpsMetrics => ", needed only when HTTPS metrics are on",
            Condition::Kerberos => ", needed only with Kerberos",
            Condition::Ldap => ", needed only with LDAP",
            Condition::Metrics => ", needed only when metrics are on",
            _ => "",
        };
        format!("{}{when}", self.purpose)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub reference: Vec<Port>,
    pub extra: Vec<Port>,
}

impl Model {
    pub fn get() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| {
            serde_yaml::from_str(MODEL_YAML).expect("model/ports.yaml is valid (tested)")
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &Port> {
        self.reference.iter().chain(self.extra.iter())
    }

    pub fn by_id(&self, id: &str) -> &Port {
        self.all()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("model has no entry `{id}`"))
    }

    /// Entries for a role that a node must allow under `condition`.
    pub fn needed<'a>(
        &'a self,
        role: &'a str,
        condition: Condition,
    ) -> impl Iterator<Item = &'a Port> + 'a {
        self.all()
            .filter(move |p| p.role == role && p.condition == condition)
    }

    /// What the model says a port is for, for explaining an event ("NFS lock manager ...").
    pub fn purpose_of(&self, port: u16, proto: Proto) -> Option<&Port> {
        self.reference
            .iter()
            .chain(self.extra.iter())
            .filter(|p| !matches!(p.peer, Peer::Cluster | Peer::Local))
            .find(|p| {
                p.ports().contains(port) && p.protocols.contains(&proto) && p.port_to.is_none()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of the reference tables, as printed on the page.
    #[derive(Debug)]
    struct Row {
        role: &'static str,
        protocols: Vec<Proto>,
        port: u16,
        direction: String,
        purpose: String,
        drivers: String,
    }

    fn reference_rows(text: &str) -> Vec<Row> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut role = "";
        let mut rows = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if l.starts_with("Ports for controller nodes") {
                role = "controller";
            } else if l.starts_with("Ports for worker nodes") {
                role = "worker";
            }
            let Some((protos, rest)) = l.split_once(' ') else {
                continue;
            };
            let protocols = match protos {
                "TCP" => vec![Proto::Tcp],
                "UDP" => vec![Proto::Udp],
                "TCP/UDP" => vec![Proto::Tcp, Proto::Udp],
                _ => continue,
            };
            let Ok(port) = rest.trim_end_matches(" (optional)").parse::<u16>() else {
                continue;
            };
            assert!(!role.is_empty(), "row before a table heading: {l}");
            rows.push(Row {
                role,
                protocols,
                port,
                direction: lines[i + 1].to_string(),
                purpose: lines[i + 2].to_string(),
                drivers: lines[i + 3].to_string(),
            });
        }
        rows
    }

    #[test]
    fn model_matches_the_reference_tables() {
        let text = include_str!("../model/reference.txt");
        let rows = reference_rows(text);
        assert_eq!(
            rows.len(),
            21,
            "the reference has 5 controller and 16 worker rows"
        );
        let model = Model::get();
        assert_eq!(
            model.reference.len(),
            rows.len(),
            "one model entry per reference row"
        );
        for (row, entry) in rows.iter().zip(&model.reference) {
            assert_eq!(entry.role, row.role, "{}", entry.id);
            assert_eq!(entry.port, row.port, "{}", entry.id);
            assert_eq!(entry.protocols, row.protocols, "{}", entry.id);
            assert_eq!(entry.direction, row.direction, "{}", entry.id);
            assert_eq!(entry.purpose, row.purpose, "{}", entry.id);
            assert_eq!(entry.drivers, row.drivers, "{}", entry.id);
            assert!(
                entry.source.is_none(),
                "{}: reference entries need no source",
                entry.id
            );
        }
        for e in &model.extra {
            assert!(
                e.source.as_deref().is_some_and(|s| !s.is_empty()),
                "{}: extra entries name their source",
                e.id
            );
        }
    }

    #[test]
    fn vendored_reference_is_the_shared_one() {
        // In a checkout with shared/ beside it (developers, CI), the copy must not drift.
        let shared = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/reference/trident-ports.txt"
        );
        if let Ok(text) = std::fs::read_to_string(shared) {
            assert_eq!(
                text,
                include_str!("../model/reference.txt"),
                "model/reference.txt differs from {shared}"
            );
        }
    }

    #[test]
    fn ids_are_unique() {
        let mut ids: Vec<_> = Model::get().all().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }
}
