//! The policy compiler: node configuration (and, with the port model, backends) to a [`Policy`].
use crate::{
    config::NodeConfig,
    policy::{Direction, Entry, Guard, Policy, PortRange, Proto, Protected},
};

/// Trident's node ports that only the cluster may reach.
const CLUSTER_PORTS: [(u16, &str); 3] = [
    (8000, "Trident REST server"),
    (8443, "Trident backchannel HTTPS"),
    (8001, "Trident Prometheus metrics"),
];

pub fn compile_node(config: &NodeConfig) -> Policy {
    let mut p = Policy {
        role: config.role.to_string(),
        mode: config.mode,
        ..Default::default()
    };
    for a in &config.allow {
        p.entries.push(Entry {
            direction: Direction::Egress,
            dst: Some(a.dst),
            src: None,
            ports: a.ports,
            proto: a.proto,
            purpose: a.reason.clone(),
            backend: None,
            source: "config: allow".into(),
        });
    }
    for (servers, port, what) in [
        (&config.directory.kerberos, 88, "Kerberos"),
        (&config.directory.ldap, 389, "LDAP"),
    ] {
        for s in servers {
            for proto in [Proto::Tcp, Proto::Udp] {
                p.entries.push(Entry {
                    direction: Direction::Egress,
                    dst: Some(*s),
                    src: None,
                    ports: PortRange::single(port),
                    proto,
                    purpose: format!("{what} (AD server)"),
                    backend: None,
                    source: format!("config: directory.{}", what.to_lowercase()),
                });
            }
            p.protected.push(Protected {
                addr: *s,
                why: format!("{what} server"),
            });
        }
    }
    for (port, purpose) in CLUSTER_PORTS {
        if port == 8001 && !config.trident.metrics {
            continue;
        }
        p.guarded.push(Guard {
            port,
            proto: Proto::Tcp,
            purpose: purpose.into(),
        });
        for cidr in &config.cluster.cidrs {
            p.entries.push(Entry {
                direction: Direction::Ingress,
                dst: None,
                src: Some(*cidr),
                ports: PortRange::single(port),
                proto: Proto::Tcp,
                purpose: purpose.into(),
                backend: None,
                source: "config: cluster.cidrs".into(),
            });
        }
    }
    // The probe port is local only: it is guarded with no allowed source, and loopback, where
    // kubelet's probes arrive, is never an enforced interface.
    p.guarded.push(Guard {
        port: config.trident.probe_port,
        proto: Proto::Tcp,
        purpose: "Trident CSI node liveness/readiness probe (local only)".into(),
    });
    p
}
