//! The node's live storage sessions against a policy: what each session needs (an NFSv3 mount
//! needs rpcbind, mountd, NLM and NSM besides its 2049 connection; an iSCSI or NVMe/TCP
//! connection its portal's port), which entries cover that, and, with `protectLiveSessions`
//! (the default), entries for what they do not, for as long as the session exists. A policy
//! never silently cuts a mount that works.
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Direction, Entry, Policy, PortRange, Proto};
use crate::{config::NodeConfig, model::Model, sessions::Session};

/// One thing a session needs through the firewall.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Need {
    direction: Direction,
    peer: IpAddr,
    ports: PortRange,
    proto: Proto,
    purpose: String,
}

/// How a live session fares under a policy (`plan --live`, the log, metrics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveReport {
    pub session: String,
    pub protocol: String,
    pub peer: IpAddr,
    /// `direction peer ports/proto` of the entries that cover it (`unpoliced` when its peer is
    /// not a protected address).
    pub covered_by: Vec<String>,
    /// What the policy lacks for it: `NOT COVERED` in `plan --live`.
    pub missing: Vec<String>,
    /// The missing needs are allowed while the session exists (protectLiveSessions).
    pub protected: bool,
}

impl LiveReport {
    pub fn coverage(&self) -> &'static str {
        match (self.missing.is_empty(), self.protected) {
            (true, _) => "covered",
            (false, true) => "protected",
            (false, false) => "cut",
        }
    }
}

/// What `s` needs, with the ports an SVM moved its NFSv3 services to (by the backend that owns
/// the address, as the policy says).
fn needs(s: &Session, config: &NodeConfig, policy: &Policy) -> Vec<Need> {
    let model = Model::get();
    let purpose = |id: &str| model.by_id(id).purpose.clone();
    let mut out = Vec::new();
    let mut egress = |port: u16, protos: &[Proto], what: String| {
        for &proto in protos {
            out.push(Need {
                direction: Direction::Egress,
                peer: s.peer(),
                ports: PortRange::single(port),
                proto,
                purpose: what.clone(),
            });
        }
    };
    match s {
        Session::Nfs { server, mount, .. } => {
            let owner = policy
                .entries
                .iter()
                .find(|e| e.peer.contains(server) && e.backend.is_some())
                .and_then(|e| e.backend.clone());
            let moved = owner
                .and_then(|b| config.backends.nfs_ports.get(&*b).copied())
                .unwrap_or_default();
            let both = [Proto::Tcp, Proto::Udp];
            if mount.rdma {
                egress(mount.port.unwrap_or(20049), &both, purpose("nfs-rdma"));
            }
            if mount.major == 3 {
                if !mount.rdma {
                    egress(mount.port.unwrap_or(2049), &both, purpose("nfs"));
                }
                egress(111, &both, purpose("rpcbind"));
                egress(
                    mount.mountport.or(moved.mountd).unwrap_or(635),
                    &both,
                    purpose("mountd"),
                );
                egress(moved.nlm.unwrap_or(4045), &both, purpose("nlm"));
                egress(moved.nsm.unwrap_or(4046), &both, purpose("nsm"));
            } else if !mount.rdma {
                egress(mount.port.unwrap_or(2049), &[Proto::Tcp], purpose("nfs"));
            }
            let callbacks = config.nfs.callbacks && (mount.major == 3 || mount.v40);
            if callbacks {
                let protos: &[Proto] = if mount.major == 3 {
                    &both
                } else {
                    &[Proto::Tcp]
                };
                for &proto in protos {
                    out.push(Need {
                        direction: Direction::Ingress,
                        peer: *server,
                        ports: PortRange {
                            from: 1024,
                            to: 65535,
                        },
                        proto,
                        purpose: "callbacks from the server".into(),
                    });
                }
            }
        }
        Session::Iscsi { port, .. } => egress(*port, &[Proto::Tcp], purpose("iscsi")),
        Session::Nvme { port, .. } => egress(*port, &[Proto::Tcp], purpose("nvme-tcp")),
    }
    out
}

fn covering<'a>(policy: &'a Policy, n: &Need) -> Option<&'a Entry> {
    policy.entries.iter().find(|e| {
        e.direction == n.direction
            && e.proto == n.proto
            && e.peer.contains(&n.peer)
            && e.ports.from <= n.ports.from
            && n.ports.to <= e.ports.to
    })
}

fn show(direction: Direction, peer: IpNet, ports: PortRange, proto: Proto) -> String {
    format!("{direction} {peer} {ports}/{proto}")
}

/// Reports every session against `policy` and, when `protect`, adds what they lack. The
/// reports go to `policy.live`; a warning names each session the policy alone would cut.
pub fn apply(policy: &mut Policy, config: &NodeConfig, sessions: &[Session], protect: bool) {
    let mut reports = Vec::new();
    let mut added = Vec::new();
    for s in sessions {
        let mut r = LiveReport {
            session: s.to_string(),
            protocol: s.protocol().into(),
            peer: s.peer(),
            covered_by: Vec::new(),
            missing: Vec::new(),
            protected: false,
        };
        for n in needs(s, config, policy) {
            let net = IpNet::from(n.peer);
            if !policy.protected_nets().any(|p| p.contains(&n.peer)) {
                if !r.covered_by.iter().any(|c| c == "unpoliced") {
                    r.covered_by.push("unpoliced".into());
                }
                continue;
            }
            if let Some(e) = covering(policy, &n) {
                let c = show(e.direction, e.peer, e.ports, e.proto);
                if !r.covered_by.contains(&c) {
                    r.covered_by.push(c);
                }
                continue;
            }
            r.missing.push(show(n.direction, net, n.ports, n.proto));
            if protect {
                added.push(Entry {
                    direction: n.direction,
                    peer: net,
                    ports: n.ports,
                    proto: n.proto,
                    purpose: format!("{} (a live session uses it)", n.purpose).into(),
                    backend: None,
                    source: format!("live: {s}").into(),
                });
            }
        }
        if !r.missing.is_empty() {
            r.protected = protect;
            policy.warnings.push(if protect {
                format!(
                    "live session {s} needs what this policy does not allow ({}): allowed for as long as \
                     it exists (protectLiveSessions)",
                    r.missing.join(", ")
                )
            } else {
                format!(
                    "live session {s} needs what this policy does not allow ({}): it will be cut \
                     (protectLiveSessions is off)",
                    r.missing.join(", ")
                )
            });
        }
        reports.push(r);
    }
    for e in added {
        if !policy.entries.contains(&e) {
            policy.entries.push(e);
        }
    }
    policy.live = Some(reports);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{policy::Protected, sessions::MountFacts};

    fn entry(direction: Direction, peer: &str, port: u16, proto: Proto) -> Entry {
        Entry {
            direction,
            peer: peer.parse().unwrap(),
            ports: PortRange::single(port),
            proto,
            purpose: "".into(),
            backend: Some("nas".into()),
            source: "b.yaml: dataLIF".into(),
        }
    }

    fn v4_only() -> Policy {
        Policy {
            entries: vec![entry(Direction::Egress, "192.0.2.2/32", 2049, Proto::Tcp)],
            protected: vec![Protected {
                addr: "192.0.2.2/32".parse().unwrap(),
                why: "backend nas dataLIF".into(),
            }],
            ..Policy::default()
        }
    }

    fn nfs(major: u8, server: &str) -> Session {
        Session::Nfs {
            mountpoint: "/mnt/a".into(),
            source: format!("{server}:/vol"),
            server: server.parse().unwrap(),
            mount: MountFacts {
                major,
                v40: false,
                port: None,
                mountport: None,
                rdma: false,
            },
        }
    }

    #[test]
    fn an_nfsv3_mount_under_an_nfsv4_policy_keeps_every_port_it_uses() {
        let cfg = NodeConfig::default();
        let mut p = v4_only();
        apply(&mut p, &cfg, &[nfs(3, "192.0.2.2")], true);
        let r = &p.live.as_ref().unwrap()[0];
        assert_eq!(r.coverage(), "protected");
        assert_eq!(r.covered_by, ["egress 192.0.2.2/32 2049/tcp"]);
        for want in ["111/udp", "635/tcp", "4045/udp", "4046/tcp", "2049/udp"] {
            assert!(
                r.missing.iter().any(|m| m.ends_with(want)),
                "{want}: {:?}",
                r.missing
            );
            let (port, proto) = want.split_once('/').unwrap();
            assert!(
                p.entries.iter().any(|e| e.ports.from.to_string() == port
                    && e.proto.to_string() == proto
                    && &*e.source == "live: NFSv3 mount /mnt/a (192.0.2.2:/vol)"),
                "{want}"
            );
        }
        assert!(
            !r.missing.iter().any(|m| m.contains("4049")),
            "rquotad is not needed to work"
        );
        assert!(
            p.entries.iter().any(|e| e.direction == Direction::Ingress),
            "callbacks"
        );
        assert!(p.warnings[0].contains("live session NFSv3 mount /mnt/a"));
    }

    #[test]
    fn covered_unpoliced_and_cut_sessions() {
        let cfg = NodeConfig::default();
        let mut p = v4_only();
        let iscsi = Session::Iscsi {
            session: "session1".into(),
            target: "iqn.x".into(),
            portal: "192.0.2.2".parse().unwrap(),
            port: 3260,
        };
        apply(
            &mut p,
            &cfg,
            &[nfs(4, "192.0.2.2"), nfs(4, "198.51.100.9"), iscsi],
            false,
        );
        let live = p.live.clone().unwrap();
        assert_eq!(live[0].coverage(), "covered");
        assert_eq!(
            live[1].covered_by,
            ["unpoliced"],
            "not a storage address of the policy"
        );
        assert_eq!(live[2].coverage(), "cut");
        assert_eq!(p.entries.len(), 1, "protectLiveSessions off adds nothing");
        assert!(p.warnings[0].contains("it will be cut"));
    }
}
