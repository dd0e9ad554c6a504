//! The policy compiler: the port model, the node configuration and the backends to a [`Policy`].
//! What `plan` prints is exactly what `run` enforces.
use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::{
    backends::{Backend, Dest, Mgmt},
    config::{NodeConfig, Role},
    model::{Condition, Model, Peer, Port},
    policy::{BackendInfo, Direction, Entry, Guard, Policy, PortRange, Protected, Proto},
};

pub fn compile(config: &NodeConfig, backends: &[Backend]) -> Policy {
    let model = Model::get();
    let role = config.role.to_string();
    let mut p = Policy {
        role: role.clone(),
        mode: config.mode,
        ..Default::default()
    };
    for b in backends {
        compile_backend(model, config, b, &mut p);
        p.backends.push(backend_info(b));
    }
    for name in config.backends.data_addresses.keys() {
        if !backends.iter().any(|b| &b.name == name) {
            p.warnings.push(format!(
                "backends.dataAddresses names `{name}`, which is not a backend in the sources"
            ));
        }
    }
    compile_directory(model, config, &mut p);
    compile_node_ports(model, config, &role, &mut p);
    for a in &config.allow {
        p.entries.push(Entry {
            direction: Direction::Egress,
            peer: a.dst,
            ports: a.ports,
            proto: a.proto,
            purpose: a.reason.clone(),
            backend: None,
            source: "config: allow".into(),
        });
    }
    dedup(&mut p.entries);
    p
}

fn egress(
    dst: IpNet,
    ports: PortRange,
    proto: Proto,
    port: &Port,
    backend: Option<&str>,
    source: String,
) -> Entry {
    Entry {
        direction: Direction::Egress,
        peer: dst,
        ports,
        proto,
        purpose: port.explain(),
        backend: backend.map(str::to_string),
        source,
    }
}

fn add_port(
    p: &mut Policy,
    port: &Port,
    dests: &[Dest],
    b: Option<&Backend>,
    protos: &[Proto],
    origin: &str,
) {
    for d in dests {
        let ports = match d.port {
            Some(n) if port.port_to.is_none() => PortRange::single(n),
            _ => port.ports(),
        };
        for &proto in protos {
            let source = format!("{origin}: {}", d.field);
            let backend = b.map(|b| b.name.as_str());
            if port.direction.starts_with("Inbound") {
                p.entries.push(Entry {
                    direction: Direction::Ingress,
                    peer: d.net,
                    ports,
                    proto,
                    purpose: port.explain(),
                    backend: backend.map(str::to_string),
                    source,
                });
            } else {
                p.entries
                    .push(egress(d.net, ports, proto, port, backend, source));
            }
        }
    }
}

fn mgmt_port(model: &Model, kind: Mgmt, role: Role) -> &Port {
    model.by_id(match (kind, role) {
        (Mgmt::Ontap, Role::Worker) => "worker-ontap-mgmt",
        (Mgmt::Ontap, Role::Controller) => "ctrl-ontap-mgmt",
        (Mgmt::Eseries { http: false }, Role::Worker) => "worker-eseries-proxy",
        (Mgmt::Eseries { http: false }, Role::Controller) => "ctrl-eseries-proxy",
        (Mgmt::Eseries { http: true }, _) => "eseries-proxy-http",
        (Mgmt::Solidfire, _) => "solidfire-mgmt",
    })
}

fn compile_backend(model: &Model, config: &NodeConfig, b: &Backend, p: &mut Policy) {
    let origin = b.origin.as_str();
    for n in &b.notes {
        p.warnings
            .push(format!("backend {} ({}): {n}", b.name, b.driver.name()));
    }
    if let Some(kind) = b.mgmt_kind {
        let port = mgmt_port(model, kind, config.role);
        add_port(p, port, &b.mgmt, Some(b), &port.protocols, origin);
    }
    if config.role == Role::Controller {
        return;
    }
    let declared: Vec<Dest> = config
        .backends
        .data_addresses
        .get(&b.name)
        .into_iter()
        .flatten()
        .map(|net| Dest {
            net: *net,
            port: None,
            field: format!("backends.dataAddresses.{}", b.name),
        })
        .collect();
    let mut data = b.data.clone();
    if declared.is_empty() {
        if let Some(why) = &b.data_discovered {
            // An ONTAP SVM's management LIF often serves data too: give it the data ports rather
            // than break mounts that go to it. Other drivers' management hosts are not arrays'
            // data ports (E-Series proxy, SolidFire MVIP).
            if data.is_empty() && b.mgmt_kind == Some(Mgmt::Ontap) {
                p.warnings.push(format!(
                    "backend {} ({}): data addresses unknown ({why}); declare them under backends.dataAddresses.{}. \
                     Until then the management address also gets the data ports, and traffic to other data \
                     addresses is not policed",
                    b.name,
                    b.driver.name(),
                    b.name
                ));
                data = b
                    .mgmt
                    .iter()
                    .map(|d| Dest {
                        port: None,
                        ..d.clone()
                    })
                    .collect();
            } else if data.is_empty() {
                p.warnings.push(format!(
                    "backend {} ({}): data addresses unknown ({why}); declare them under backends.dataAddresses.{} \
                     to police them. Until then its data traffic is not policed",
                    b.name,
                    b.driver.name(),
                    b.name
                ));
            } else {
                p.warnings.push(format!(
                    "backend {} ({}): {why}; declare them under backends.dataAddresses.{} if they differ from the dataLIF",
                    b.name,
                    b.driver.name(),
                    b.name
                ));
            }
        }
    }
    data.extend(declared);
    let pr = &b.protocols;
    let mut conditions = Vec::new();
    if let Some(nfs) = pr.nfs {
        conditions.push(Condition::Nfs);
        if nfs.v3 {
            conditions.push(Condition::Nfsv3);
            if config.nfs.callbacks {
                conditions.push(Condition::Nfsv3Callbacks);
            }
        }
        if !nfs.pinned {
            p.warnings.push(format!(
                "backend {} ({}): no NFS version pinned in nfsMountOptions, so clients may fall back to NFSv3: \
                 allowing both the NFSv3 and NFSv4 port sets. Pin nfsvers=4.1 (or 3) to allow only what is used",
                b.name,
                b.driver.name()
            ));
        }
    }
    if pr.smb {
        conditions.push(Condition::Smb);
    }
    if pr.iscsi {
        conditions.push(Condition::Iscsi);
    }
    if pr.nvme {
        conditions.push(Condition::Nvme);
    }
    let nfs_v3 = pr.nfs.is_some_and(|n| n.v3);
    for c in conditions {
        for port in model
            .needed("worker", c)
            .filter(|e| e.peer == Peer::StorageData)
        {
            // SolidFire's iSCSI is its own model entry (SVIP); ONTAP/E-Series use the generic one.
            let solidfire = b.mgmt_kind == Some(Mgmt::Solidfire);
            if (port.id == "solidfire-iscsi") != solidfire && c == Condition::Iscsi {
                continue;
            }
            // NFSv4 runs over TCP only (RFC 7530, section 3.1); UDP 2049 is an NFSv3 need.
            let protos: Vec<Proto> = if port.id == "nfs" && !nfs_v3 {
                vec![Proto::Tcp]
            } else {
                port.protocols.clone()
            };
            add_port(p, port, &data, Some(b), &protos, origin);
        }
    }
    for d in &data {
        p.protected.push(Protected {
            addr: d.net,
            why: format!("backend {} {}", b.name, d.field),
        });
    }
}

fn backend_info(b: &Backend) -> BackendInfo {
    let nfs = b.protocols.nfs.map(|n| {
        let opts = b
            .nfs_options
            .as_deref()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default();
        match (n.v3, n.v4, n.pinned) {
            (_, _, false) => "NFSv3 or NFSv4 (no version pinned)".to_string(),
            (true, true, true) => format!("NFSv3 and NFSv4{opts}"),
            (true, false, true) => format!("NFSv3{opts}"),
            _ => format!("NFSv4{opts}"),
        }
    });
    BackendInfo {
        name: b.name.clone(),
        driver: b.driver.name().to_string(),
        nfs,
    }
}

fn compile_directory(model: &Model, config: &NodeConfig, p: &mut Policy) {
    for (servers, id, key) in [
        (&config.directory.kerberos, "kerberos", "directory.kerberos"),
        (&config.directory.ldap, "ldap", "directory.ldap"),
    ] {
        let port = model.by_id(id);
        let dests: Vec<Dest> = servers
            .iter()
            .map(|s| Dest {
                net: *s,
                port: None,
                field: key.into(),
            })
            .collect();
        add_port(p, port, &dests, None, &port.protocols, "config");
    }
}

fn compile_node_ports(model: &Model, config: &NodeConfig, role: &str, p: &mut Policy) {
    for port in model
        .all()
        .filter(|e| e.role == role && matches!(e.peer, Peer::Cluster | Peer::Local))
    {
        let wanted = match port.condition {
            Condition::Metrics => config.trident.metrics,
            _ => true,
        };
        if !wanted {
            continue;
        }
        let number = if port.condition == Condition::Probe {
            config.trident.probe_port
        } else {
            port.port
        };
        for &proto in &port.protocols {
            p.guarded.push(Guard {
                port: number,
                proto,
                purpose: port.purpose.clone(),
            });
            // The probe port is local only: guarded with no allowed source, and loopback, where
            // kubelet's probes arrive, is never an enforced interface.
            if port.peer == Peer::Cluster {
                for cidr in &config.cluster.cidrs {
                    p.entries.push(Entry {
                        direction: Direction::Ingress,
                        peer: *cidr,
                        ports: PortRange::single(number),
                        proto,
                        purpose: port.purpose.clone(),
                        backend: None,
                        source: "config: cluster.cidrs".into(),
                    });
                }
            }
        }
    }
    if config.cluster.cidrs.is_empty() {
        p.warnings.push(
            "cluster.cidrs is empty: Trident's node ports (8000, 8443, 8001) accept no source on enforced interfaces".into(),
        );
    }
}

fn dedup(entries: &mut Vec<Entry>) {
    let mut seen = BTreeSet::new();
    entries.retain(|e| seen.insert((e.direction, e.peer, e.ports, e.proto, e.backend.clone())));
}
