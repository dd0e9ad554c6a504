//! The policy compiler: the port model, the node configuration and what the sources say
//! (backends, StorageClasses, PVs) to a [`Policy`]. What `plan` prints is exactly what `run`
//! enforces. The rules and the Trident code they follow are listed in docs/plan.md.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use ipnet::IpNet;

use crate::{
    backends::{Access, Backend, Dest, Inventory, Mgmt, Mount, StorageClass, Topology, Volume},
    config::{NfsPorts, NodeConfig, Role},
    model::{Condition, Model, Peer, Port},
    policy::{BackendInfo, Direction, Entry, Guard, Policy, PortRange, Protected, Proto},
};

/// Compiles for this node. `local_addresses` are the node's own addresses as `run` finds them
/// (none for `plan`): with `node.addresses` and `trident.controllerAddresses` they are where
/// Trident's ports are guarded.
pub fn compile(config: &NodeConfig, inv: &Inventory, local_addresses: &[IpNet]) -> Policy {
    let model = Model::get();
    let mut p = Policy {
        role: config.role.to_string(),
        mode: config.mode,
        ..Default::default()
    };
    for s in &inv.skipped {
        p.warnings.push(s.to_string());
        p.skipped
            .push(s.name.clone().unwrap_or_else(|| s.origin.clone()));
    }
    p.warnings.extend(inv.warnings.iter().cloned());
    check_classes(inv, &mut p);
    let index = VolumeIndex::new(inv);
    for b in &inv.backends {
        if let Some(why) = not_on_this_node(config, b) {
            p.warnings.push(format!(
                "backend {} ({}): not planned on this node: {why}",
                b.name,
                b.driver.name()
            ));
            continue;
        }
        let uses = nfs_uses(b, &index);
        compile_backend(model, config, b, &uses, &mut p);
        p.backends.push(backend_info(b, &uses));
    }
    compile_published(model, config, inv, &index, &mut p);
    for name in config
        .backends
        .data_addresses
        .keys()
        .chain(config.backends.nfs_ports.keys())
    {
        if !inv.backends.iter().any(|b| &b.name == name) {
            p.warnings.push(format!(
                "backends: `{name}` is named in the configuration but is not a backend in the sources"
            ));
        }
    }
    compile_directory(model, config, &mut p);
    compile_node_ports(model, config, &mut p);
    p.guard_addresses = guard_addresses(config, local_addresses);
    for a in p
        .guard_addresses
        .iter()
        .filter(|a| a.prefix_len() != a.max_prefix_len())
    {
        p.warnings.push(format!(
            "{a}: node.addresses and trident.controllerAddresses take single addresses; a prefix guards nothing"
        ));
    }
    let source: Arc<str> = "config: allow".into();
    for a in &config.allow {
        p.entries.push(Entry {
            direction: Direction::Egress,
            peer: a.dst,
            ports: a.ports,
            proto: a.proto,
            purpose: a.reason.clone(),
            backend: None,
            source: source.clone(),
        });
    }
    dedup(&mut p.entries);
    share_texts(&mut p.entries);
    // Held for the life of the policy: no growth slack (a quarter more at 100,000 entries).
    p.entries.shrink_to_fit();
    let mut seen = BTreeSet::new();
    p.warnings.retain(|w| seen.insert(w.clone()));
    p
}

/// Trident's ports listen on the node's own addresses (its node pod uses the host network,
/// `cli/k8s_client/yaml_factory.go` `hostNetwork: true`) and on the controller pod's.
fn guard_addresses(config: &NodeConfig, local: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = config
        .node
        .addresses
        .iter()
        .chain(local)
        .chain(&config.trident.controller_addresses)
        .copied()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Why `b` cannot be used on this node, if its `supportedTopologies` cannot match the node's
/// labels: a volume is only accessible where one term matches (CSI AccessibleTopology, set from
/// the pool's supportedTopologies in `frontend/csi/controller_server.go` CreateVolume).
fn not_on_this_node(config: &NodeConfig, b: &Backend) -> Option<String> {
    let labels = config.node.labels.as_ref()?;
    let terms = b.topologies.as_ref()?;
    let matches = |t: &Topology| t.iter().all(|(k, v)| labels.get(k) == Some(v));
    if terms.iter().any(matches) {
        return None;
    }
    let shown: Vec<String> = terms
        .iter()
        .map(|t| {
            let kv: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{{{}}}", kv.join(", "))
        })
        .collect();
    Some(format!(
        "its supportedTopologies [{}] do not match node.labels",
        shown.join(", ")
    ))
}

/// One way a backend's volumes are mounted: the options, and the object they come from
/// (`None` for the backend's own, whose entries name the address's field instead).
struct NfsUse {
    mount: Mount,
    from: Option<String>,
}

/// Which volumes can land on which backend, built once per compilation (a cluster holds
/// thousands of PVs and hundreds of backends): a volume goes to the backend of its
/// `backendUUID` when a backend has it, else to its class's backends, else to any NAS backend.
struct VolumeIndex<'a> {
    by_uuid: HashMap<&'a str, Vec<&'a Volume>>,
    by_class: Vec<(&'a StorageClass, Vec<&'a Volume>)>,
    anywhere: Vec<&'a Volume>,
}

impl<'a> VolumeIndex<'a> {
    fn new(inv: &'a Inventory) -> Self {
        let uuids: HashSet<&str> = inv
            .backends
            .iter()
            .filter_map(|b| b.uuid.as_deref())
            .collect();
        let classes: HashMap<&str, usize> = inv
            .classes
            .iter()
            .enumerate()
            .rev()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let mut ix = VolumeIndex {
            by_uuid: HashMap::new(),
            by_class: inv.classes.iter().map(|c| (c, Vec::new())).collect(),
            anywhere: Vec::new(),
        };
        for v in inv.volumes.iter().filter(|v| v.mount_options.is_some()) {
            match (&v.backend_uuid, &v.class) {
                (Some(u), _) if uuids.contains(u.as_str()) => {
                    ix.by_uuid.entry(u.as_str()).or_default().push(v);
                }
                (_, Some(c)) if classes.contains_key(c.as_str()) => {
                    ix.by_class[classes[c.as_str()]].1.push(v);
                }
                _ => ix.anywhere.push(v),
            }
        }
        ix
    }
}

/// The mounts a NAS backend's volumes can see: its own options, and those of every class and
/// volume that can land on it, since a class's `mountOptions` replace the backend's. Each
/// distinct set of options once, named by the first object that has it.
fn nfs_uses(b: &Backend, index: &VolumeIndex<'_>) -> Vec<NfsUse> {
    if !b.protocols.nfs {
        return Vec::new();
    }
    let mut uses = vec![NfsUse {
        mount: b.mount(),
        from: None,
    }];
    // Named by the first object that brings a mount; `from` is only formatted then.
    let mut add = |mount: Option<Mount>, from: &dyn Fn() -> String| {
        if let Some(m) = mount {
            if !uses.iter().any(|u| u.mount == m) {
                uses.push(NfsUse {
                    mount: m,
                    from: Some(from()),
                });
            }
        }
    };
    let parse = |o: &Option<String>| o.as_deref().and_then(|o| Mount::parse(o).ok());
    let selected: Vec<&(&StorageClass, Vec<&Volume>)> = index
        .by_class
        .iter()
        .filter(|(c, _)| c.selection.selects(b))
        .collect();
    for (c, _) in &selected {
        add(parse(&c.mount_options), &|| {
            format!("storageclass/{}: mountOptions", c.name)
        });
    }
    let own = b.uuid.as_deref().and_then(|u| index.by_uuid.get(u));
    let volumes = own
        .into_iter()
        .flatten()
        .chain(selected.iter().flat_map(|(_, vs)| vs.iter()))
        .chain(index.anywhere.iter());
    // Thousands of volumes share a few option texts: a text seen once can add nothing new.
    let mut seen: HashSet<&str> = HashSet::new();
    for v in volumes {
        if v.mount_options.as_deref().is_some_and(|o| !seen.insert(o)) {
            continue;
        }
        add(parse(&v.mount_options), &|| {
            format!("persistentvolume/{}: mountOptions", v.name)
        });
    }
    uses
}

/// Classes and volumes whose mount options do not parse are named once; the backends they
/// select keep their own options.
fn check_classes(inv: &Inventory, p: &mut Policy) {
    let objects = inv
        .classes
        .iter()
        .map(|c| (format!("storageclass/{}", c.name), &c.mount_options))
        .chain(
            inv.volumes
                .iter()
                .map(|v| (format!("persistentvolume/{}", v.name), &v.mount_options)),
        );
    for (what, opts) in objects {
        if let Some(Err(e)) = opts.as_deref().map(Mount::parse) {
            p.warnings.push(format!(
                "{what}: mountOptions: {e}; its volumes are planned with their backend's options"
            ));
        }
    }
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
        purpose: port.explain().into(),
        backend: backend.map(Arc::from),
        source: source.into(),
    }
}

/// Entries for `port` towards each of `dests`, on `number` when the caller moves it. `from`
/// names the object the need comes from; without it each entry names its address's field.
#[allow(clippy::too_many_arguments)]
fn add_port(
    p: &mut Policy,
    port: &Port,
    dests: &[Dest],
    b: Option<&Backend>,
    protos: &[Proto],
    origin: &str,
    number: Option<u16>,
    from: Option<&str>,
) {
    for d in dests {
        let ports = match (number, d.port) {
            (Some(n), _) => PortRange::single(n),
            (None, Some(n)) if port.port_to.is_none() => PortRange::single(n),
            _ => port.ports(),
        };
        for &proto in protos {
            let source = match from {
                Some(f) => f.to_string(),
                None => format!("{origin}: {}", d.field),
            };
            let backend = b.map(|b| b.name.as_str());
            if port.direction.starts_with("Inbound") {
                p.entries.push(Entry {
                    direction: Direction::Ingress,
                    peer: d.net,
                    ports,
                    proto,
                    purpose: port.explain().into(),
                    backend: backend.map(Arc::from),
                    source: source.into(),
                });
            } else {
                p.entries
                    .push(egress(d.net, ports, proto, port, backend, source));
            }
        }
    }
}

fn mgmt_ports(model: &Model, kind: Mgmt, role: Role) -> Vec<&Port> {
    // Every node runs Trident's node plugin; a controller node runs the controller as well.
    let roles: &[Role] = match role {
        Role::Worker => &[Role::Worker],
        Role::Controller => &[Role::Worker, Role::Controller],
    };
    roles
        .iter()
        .map(|r| {
            model.by_id(match (kind, r) {
                (Mgmt::Ontap, Role::Worker) => "worker-ontap-mgmt",
                (Mgmt::Ontap, Role::Controller) => "ctrl-ontap-mgmt",
                (Mgmt::Eseries { http: false }, Role::Worker) => "worker-eseries-proxy",
                (Mgmt::Eseries { http: false }, Role::Controller) => "ctrl-eseries-proxy",
                (Mgmt::Eseries { http: true }, _) => "eseries-proxy-http",
                (Mgmt::Solidfire, _) => "solidfire-mgmt",
            })
        })
        .collect()
}

/// The data addresses: the definition's, then the configuration's `dataAddresses`.
fn data_addresses(config: &NodeConfig, b: &Backend, p: &mut Policy) -> Vec<Dest> {
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
    if let (true, Some(why)) = (declared.is_empty(), &b.data_discovered) {
        let (name, driver) = (&b.name, b.driver.name());
        if data.is_empty() && b.mgmt_kind == Some(Mgmt::Ontap) {
            // An ONTAP SVM's management LIF often serves data too: give it the data ports
            // rather than break mounts that go to it. Other drivers' management hosts are not
            // arrays' data ports (E-Series proxy, SolidFire MVIP).
            p.warnings.push(format!(
                "backend {name} ({driver}): data addresses unknown ({why}); declare them under \
                 backends.dataAddresses.{name}. Until then the management address also gets the data \
                 ports, and traffic to other data addresses is not policed"
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
                "backend {name} ({driver}): data addresses unknown ({why}); declare them under \
                 backends.dataAddresses.{name} to police them. Until then its data traffic is not policed"
            ));
        } else {
            p.warnings.push(format!(
                "backend {name} ({driver}): {why}; declare them under backends.dataAddresses.{name} \
                 if they differ"
            ));
        }
    }
    data.extend(declared);
    data
}

fn compile_backend(
    model: &Model,
    config: &NodeConfig,
    b: &Backend,
    uses: &[NfsUse],
    p: &mut Policy,
) {
    let origin = b.origin.as_str();
    for n in &b.notes {
        p.warnings
            .push(format!("backend {} ({}): {n}", b.name, b.driver.name()));
    }
    if let Some(kind) = b.mgmt_kind {
        for port in mgmt_ports(model, kind, config.role) {
            add_port(
                p,
                port,
                &b.mgmt,
                Some(b),
                &port.protocols,
                origin,
                None,
                None,
            );
        }
    }
    let data = data_addresses(config, b, p);
    let pr = &b.protocols;
    for (on, c) in [
        (pr.smb, Condition::Smb),
        (pr.iscsi, Condition::Iscsi),
        (pr.nvme, Condition::Nvme),
    ] {
        if !on {
            continue;
        }
        for port in model
            .needed("worker", c)
            .filter(|e| e.peer == Peer::StorageData)
        {
            // SolidFire's iSCSI is its own model entry (SVIP); ONTAP/E-Series use the generic one.
            let solidfire = b.mgmt_kind == Some(Mgmt::Solidfire);
            if c == Condition::Iscsi && (port.id == "solidfire-iscsi") != solidfire {
                continue;
            }
            add_port(p, port, &data, Some(b), &port.protocols, origin, None, None);
        }
    }
    let moved = moved_ports(config, b);
    for u in uses {
        nfs_entries(model, config, b, &data, u, moved, p);
    }
    let kerberos = uses.iter().any(|u| u.mount.kerberos) || (b.kerberos && !uses.is_empty());
    if kerberos && config.directory.kerberos.is_empty() {
        p.warnings.push(format!(
            "backend {} ({}): volumes mount with Kerberos (sec=krb5*), which needs the KDC on port 88: \
             list it under directory.kerberos",
            b.name,
            b.driver.name()
        ));
    }
    for d in &data {
        p.protected.push(Protected {
            addr: d.net,
            why: format!("backend {} {}", b.name, d.field),
        });
    }
}

/// The addresses Trident mounts this node's volumes with (see `backends::published`): each
/// gets exactly its protocol's data ports, with the versions the volume mounts with for NFS.
/// A volume published here is used here, so its backend's topology does not leave it out; a
/// volume whose backend the sources do not show is planned as an ONTAP volume of its protocol.
fn compile_published(
    model: &Model,
    config: &NodeConfig,
    inv: &Inventory,
    index: &VolumeIndex<'_>,
    p: &mut Policy,
) {
    for pb in &inv.published {
        let known = pb
            .backend_uuid
            .as_ref()
            .and_then(|u| inv.backends.iter().find(|b| b.uuid.as_ref() == Some(u)));
        let stand_in;
        let b = if let Some(b) = known {
            b
        } else {
            stand_in = Backend::stand_in(pb);
            p.warnings.push(format!(
                "{}: volume {} is on backend {}, which the sources do not show: its addresses get \
                 the {} ports of an ONTAP backend",
                pb.origin,
                pb.volume,
                pb.backend_uuid.as_deref().unwrap_or("(not named)"),
                pb.access.name()
            ));
            &stand_in
        };
        let dest = std::slice::from_ref(&pb.dest);
        let condition = match pb.access {
            Access::Nfs => {
                let own = pb
                    .mount_options
                    .as_deref()
                    .and_then(|o| Mount::parse(o).ok());
                let mounts: Vec<Mount> = match own {
                    Some(m) => vec![m],
                    None if known.is_some() => {
                        nfs_uses(b, index).into_iter().map(|u| u.mount).collect()
                    }
                    None => vec![Mount::default()],
                };
                let moved = moved_ports(config, b);
                // The entries name the volume's object and field, not the backend's.
                let from = format!("{}: {}", pb.origin, pb.dest.field);
                for mount in mounts {
                    let u = NfsUse {
                        mount,
                        from: Some(from.clone()),
                    };
                    nfs_entries(model, config, b, dest, &u, moved, p);
                }
                None
            }
            Access::Smb => Some(Condition::Smb),
            Access::Iscsi => Some(Condition::Iscsi),
            Access::Nvme => Some(Condition::Nvme),
        };
        if let Some(c) = condition {
            let solidfire = b.mgmt_kind == Some(Mgmt::Solidfire);
            for port in model
                .needed("worker", c)
                .filter(|e| e.peer == Peer::StorageData)
                .filter(|e| c != Condition::Iscsi || (e.id == "solidfire-iscsi") == solidfire)
            {
                add_port(
                    p,
                    port,
                    dest,
                    Some(b),
                    &port.protocols,
                    &pb.origin,
                    None,
                    None,
                );
            }
        }
        p.protected.push(Protected {
            addr: pb.dest.net,
            why: format!("volume {} {}: {}", pb.volume, pb.origin, pb.dest.field),
        });
    }
}

/// The ports `b`'s SVM moved its NFSv3 services to (`backends.nfsPorts`).
fn moved_ports(config: &NodeConfig, b: &Backend) -> NfsPorts {
    config
        .backends
        .nfs_ports
        .get(&b.name)
        .copied()
        .unwrap_or_default()
}

/// What one way of mounting needs towards the backend's data addresses.
fn nfs_entries(
    model: &Model,
    config: &NodeConfig,
    b: &Backend,
    data: &[Dest],
    u: &NfsUse,
    moved: NfsPorts,
    p: &mut Policy,
) {
    let m = &u.mount;
    let mut conditions = vec![Condition::Nfs];
    if m.v3() {
        conditions.push(Condition::Nfsv3);
        if config.nfs.callbacks {
            conditions.push(Condition::Nfsv3Callbacks);
        }
    }
    if m.v40() && config.nfs.callbacks {
        conditions.push(Condition::Nfsv40Callbacks);
    }
    if m.rdma {
        conditions.push(Condition::NfsRdma);
    }
    if !m.pinned() {
        let whose = u.from.as_deref().map_or_else(
            || "nfsMountOptions".to_string(),
            |f| f.replace(": mountOptions", "'s mountOptions"),
        );
        p.warnings.push(format!(
            "backend {} ({}): {whose} pin no NFS version, so clients may fall back to NFSv3: allowing both \
             the NFSv3 and NFSv4 port sets. Pin nfsvers=4.1 (or 3) to allow only what is used",
            b.name,
            b.driver.name()
        ));
    }
    for c in conditions {
        for port in model
            .needed("worker", c)
            .filter(|e| e.peer == Peer::StorageData)
        {
            let number = match port.id.as_str() {
                "nfs" if !m.rdma => m.port,
                "nfs-rdma" => m.port,
                "mountd" => m.mountport.or(moved.mountd),
                "nlm" | "nlm-tcp" => moved.nlm,
                "nsm" | "nsm-tcp" => moved.nsm,
                "rquotad" | "rquotad-tcp" => moved.rquota,
                _ => None,
            };
            // NFSv4 runs over TCP only (RFC 7530, section 3.1); UDP 2049 is an NFSv3 need.
            let protos: Vec<Proto> = if port.id == "nfs" && !m.v3() {
                vec![Proto::Tcp]
            } else {
                port.protocols.clone()
            };
            add_port(
                p,
                port,
                data,
                Some(b),
                &protos,
                &b.origin,
                number,
                u.from.as_deref(),
            );
        }
    }
}

fn backend_info(b: &Backend, uses: &[NfsUse]) -> BackendInfo {
    let nfs = (!uses.is_empty()).then(|| {
        let (v3, v4) = (
            uses.iter().any(|u| u.mount.v3()),
            uses.iter().any(|u| u.mount.v4()),
        );
        let opts: Vec<String> = uses
            .iter()
            .filter(|u| u.mount.pinned())
            .map(|u| match &u.from {
                None => b.nfs_options.clone().unwrap_or_default(),
                Some(f) => f.replace("mountOptions", "its options"),
            })
            .collect();
        let opts = if opts.is_empty() {
            String::new()
        } else {
            format!(" ({})", opts.join("; "))
        };
        if uses.iter().any(|u| !u.mount.pinned()) {
            "NFSv3 or NFSv4 (no version pinned)".to_string()
        } else if v3 && v4 {
            format!("NFSv3 and NFSv4{opts}")
        } else if v3 {
            format!("NFSv3{opts}")
        } else {
            format!("NFSv4{opts}")
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
        add_port(p, port, &dests, None, &port.protocols, "config", None, None);
    }
}

/// Trident's own listening ports: the node plugin's on every node, the controller's on a
/// controller node.
fn compile_node_ports(model: &Model, config: &NodeConfig, p: &mut Policy) {
    let roles: &[&str] = match config.role {
        Role::Worker => &["worker"],
        Role::Controller => &["worker", "controller"],
    };
    for port in model.all().filter(|e| {
        roles.contains(&e.role.as_str()) && matches!(e.peer, Peer::Cluster | Peer::Local)
    }) {
        let wanted = match port.condition {
            Condition::Metrics => config.trident.metrics,
            Condition::HttpsMetrics => config.trident.https_metrics,
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
            if !p
                .guarded
                .iter()
                .any(|g| g.port == number && g.proto == proto)
            {
                p.guarded.push(Guard {
                    port: number,
                    proto,
                    purpose: port.purpose.clone(),
                });
            }
            // The probe port is local only: guarded with no allowed source, and loopback, where
            // kubelet's probes arrive, is never an enforced interface.
            if port.peer == Peer::Cluster {
                for cidr in &config.cluster.cidrs {
                    p.entries.push(Entry {
                        direction: Direction::Ingress,
                        peer: *cidr,
                        ports: PortRange::single(number),
                        proto,
                        purpose: port.purpose.as_str().into(),
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

fn share_texts(entries: &mut [Entry]) {
    let mut texts = crate::text::Texts::default();
    for e in entries {
        texts.share(&mut e.purpose);
        texts.share(&mut e.source);
        if let Some(b) = &mut e.backend {
            texts.share(b);
        }
    }
}

fn dedup(entries: &mut Vec<Entry>) {
    let mut seen = BTreeSet::new();
    entries.retain(|e| seen.insert((e.direction, e.peer, e.ports, e.proto, e.backend.clone())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::{Driver, Protocols};

    fn config(yaml: &str) -> NodeConfig {
        NodeConfig::from_yaml(std::path::Path::new("t.yaml"), yaml).unwrap()
    }

    fn nas(name: &str, topologies: Option<Vec<Topology>>) -> Backend {
        Backend {
            name: name.into(),
            driver: Driver::OntapNas,
            origin: "b.yaml".into(),
            uuid: None,
            resolved: false,
            mgmt_kind: Some(Mgmt::Ontap),
            mgmt: vec![Dest {
                net: "192.0.2.5/32".parse().unwrap(),
                port: None,
                field: "managementLIF".into(),
            }],
            data: vec![Dest {
                net: "192.0.2.6/32".parse().unwrap(),
                port: None,
                field: "dataLIF".into(),
            }],
            protocols: Protocols {
                nfs: true,
                ..Protocols::default()
            },
            nfs_options: Some("nfsvers=4.1".into()),
            kerberos: false,
            topologies,
            data_discovered: None,
            notes: vec![],
        }
    }

    #[test]
    fn guards_apply_on_the_nodes_controllers_and_found_addresses_only() {
        let c = config(
            "node: {addresses: [192.0.2.1, 198.51.100.0/24]}\ntrident: {controllerAddresses: [203.0.113.7]}\n",
        );
        let local = [
            "2001:db8::1/128".parse().unwrap(),
            "192.0.2.1/32".parse().unwrap(),
        ];
        let p = compile(&c, &Inventory::default(), &local);
        let got: Vec<String> = p.guard_addresses.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "192.0.2.1/32",
                "198.51.100.0/24",
                "203.0.113.7/32",
                "2001:db8::1/128"
            ]
        );
        assert!(
            p.warnings
                .iter()
                .any(|w| w.starts_with("198.51.100.0/24") && w.contains("guards nothing")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn topologies_match_when_every_label_of_one_term_does() {
        let term = |kv: &[(&str, &str)]| -> Topology {
            kv.iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect()
        };
        let c = config("node: {labels: {zone: a, region: r1}}\n");
        let fits = nas(
            "fits",
            Some(vec![
                term(&[("zone", "b")]),
                term(&[("zone", "a"), ("region", "r1")]),
            ]),
        );
        let other = nas(
            "other",
            Some(vec![term(&[("zone", "a"), ("region", "r2")])]),
        );
        assert_eq!(not_on_this_node(&c, &fits), None);
        assert!(not_on_this_node(&c, &other).unwrap().contains("region=r2"));
        assert_eq!(not_on_this_node(&c, &nas("free", None)), None);
        assert_eq!(
            not_on_this_node(&config(""), &other),
            None,
            "labels unknown"
        );
    }

    #[test]
    fn a_controller_guards_the_union_of_both_roles() {
        let inv = Inventory {
            backends: vec![nas("nas", None)],
            ..Inventory::default()
        };
        let worker = compile(&config(""), &inv, &[]);
        let controller = compile(&config("role: controller\n"), &inv, &[]);
        assert!(
            worker
                .entries
                .iter()
                .all(|e| controller.entries.contains(e))
        );
        assert_eq!(worker.guarded.len(), 4, "8000, 8443, 8001, probe");
        assert_eq!(
            controller.guarded.len(),
            4,
            "the same ports, each guarded once"
        );
    }
}
