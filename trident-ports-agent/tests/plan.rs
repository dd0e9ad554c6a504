//! The policy compiler against backend definitions written from Trident's published samples:
//! every driver and form, the NFS version rules, virtual pools, IPv6, SAN, bad input, and the
//! invariant that an NFSv4-only backend never opens the NFSv3 ports.
use std::path::{Path, PathBuf};

use trident_ports_agent::{
    agent::FileSources,
    backends::{self, Backend, Inventory},
    config::{NodeConfig, Role},
    policy::{
        Direction, Entry, Policy, Proto,
        compile::compile,
        render::{Format, render},
    },
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn all() -> Inventory {
    backends::load(&[fixtures().join("backends")]).expect("fixtures load")
}

fn all_backends() -> Vec<Backend> {
    all().backends
}

fn worker() -> NodeConfig {
    NodeConfig::default()
}

fn entries_for<'a>(p: &'a Policy, backend: &str) -> Vec<&'a Entry> {
    p.entries
        .iter()
        .filter(|e| e.backend.as_deref() == Some(backend))
        .collect()
}

/// (direction, peer, from, to, proto) of a backend's entries, sorted.
fn shape(p: &Policy, backend: &str) -> Vec<(Direction, String, u16, u16, Proto)> {
    let mut v: Vec<_> = entries_for(p, backend)
        .into_iter()
        .map(|e| {
            (
                e.direction,
                e.peer.to_string(),
                e.ports.from,
                e.ports.to,
                e.proto,
            )
        })
        .collect();
    v.sort();
    v
}

fn ports_to(p: &Policy, backend: &str, peer: &str) -> Vec<(u16, Proto)> {
    let mut v: Vec<_> = entries_for(p, backend)
        .into_iter()
        .filter(|e| e.direction == Direction::Egress && e.peer.to_string() == peer)
        .map(|e| (e.ports.from, e.proto))
        .collect();
    v.sort();
    v.dedup();
    v
}

use Proto::{Tcp, Udp};

#[test]
fn every_driver_and_form_is_read() {
    let b = all_backends();
    let mut names: Vec<(&str, &str)> = b
        .iter()
        .map(|b| (b.name.as_str(), b.driver.name()))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        vec![
            ("anf-prod", "azure-netapp-files"),
            ("eseries-http", "eseries-iscsi"),
            ("eseries-proxy", "eseries-iscsi"),
            ("gcnv-san", "google-cloud-netapp-volumes-san"),
            ("gcnv-smb", "google-cloud-netapp-volumes"),
            ("nas-eco", "ontap-nas-economy"),
            ("nas-v3", "ontap-nas"),
            ("nas-v4", "ontap-nas"),
            ("san-chap", "ontap-san"),
            ("san-eco-nvme", "ontap-san-economy"),
            ("san-fcp", "ontap-san"),
            ("san-nvme", "ontap-san"),
            ("solidfire-json", "solidfire-san"),
            ("solidfire-tbc", "solidfire-san"),
            // A TridentBackendConfig without backendName takes its metadata name.
            ("backend-tbc-ontap-flexgroup", "ontap-nas-flexgroup"),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
}

#[test]
fn nfsv4_pinned_backend_gets_mgmt_and_2049_tcp_only() {
    let p = compile(&worker(), &all(), &[]);
    assert_eq!(
        shape(&p, "nas-v4"),
        vec![
            (Direction::Egress, "192.0.2.10/32".into(), 443, 443, Tcp),
            (Direction::Egress, "192.0.2.11/32".into(), 2049, 2049, Tcp),
        ]
    );
    let e = entries_for(&p, "nas-v4")
        .into_iter()
        .find(|e| e.ports.from == 2049)
        .unwrap();
    assert!(
        e.source.ends_with("ontap-nas-v4.yaml#2: dataLIF"),
        "{}",
        e.source
    );
    assert_eq!(&*e.purpose, "NFS daemon");
}

#[test]
fn nfsv3_backend_gets_v3_ports_and_callbacks() {
    let p = compile(&worker(), &all(), &[]);
    let want: Vec<(u16, Proto)> = vec![
        (111, Tcp),
        (111, Udp),
        (635, Tcp),
        (635, Udp),
        (2049, Tcp),
        (2049, Udp),
        (4045, Tcp),
        (4045, Udp),
        (4046, Tcp),
        (4046, Udp),
        (4049, Tcp),
        (4049, Udp),
    ];
    assert_eq!(ports_to(&p, "nas-v3", "192.0.2.21/32"), want);
    // Callbacks from the data LIF: ephemeral ports and the NSM notification to rpcbind.
    let inbound: Vec<_> = shape(&p, "nas-v3")
        .into_iter()
        .filter(|s| s.0 == Direction::Ingress)
        .collect();
    assert_eq!(
        inbound,
        vec![
            (Direction::Ingress, "192.0.2.21/32".into(), 111, 111, Udp),
            (Direction::Ingress, "192.0.2.21/32".into(), 1024, 65535, Tcp),
            (Direction::Ingress, "192.0.2.21/32".into(), 1024, 65535, Udp),
        ]
    );
    // Callbacks off: none.
    let mut cfg = worker();
    cfg.nfs.callbacks = false;
    let p = compile(&cfg, &all(), &[]);
    assert!(shape(&p, "nas-v3").iter().all(|s| s.0 == Direction::Egress));
}

#[test]
fn unpinned_nfs_allows_both_sets_with_a_warning_and_no_datalif_uses_the_mgmt_lif() {
    let p = compile(&worker(), &all(), &[]);
    let to = ports_to(&p, "nas-eco", "192.0.2.30/32");
    for port in [443, 111, 635, 2049, 4045, 4046, 4049] {
        assert!(to.iter().any(|(p, _)| *p == port), "{port} missing: {to:?}");
    }
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("nas-eco") && w.contains("pin no NFS version")),
        "{:?}",
        p.warnings
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("nas-eco") && w.contains("dataAddresses.nas-eco")),
        "{:?}",
        p.warnings
    );
    // Declaring the data addresses moves the data ports there.
    let mut cfg = worker();
    cfg.backends
        .data_addresses
        .insert("nas-eco".into(), vec!["198.51.100.32/28".parse().unwrap()]);
    let p = compile(&cfg, &all(), &[]);
    assert_eq!(ports_to(&p, "nas-eco", "192.0.2.30/32"), vec![(443, Tcp)]);
    assert!(ports_to(&p, "nas-eco", "198.51.100.32/28").contains(&(2049, Tcp)));
}

/// ONTAP virtual pools have no nasType of their own (storage_drivers/types.go,
/// OntapStorageDriverPool): the pool that says `nasType: smb` is still NFS, and the plan says so.
#[test]
fn ontap_virtual_pools_cannot_change_the_protocol() {
    let p = compile(&worker(), &all(), &[]);
    let to = ports_to(&p, "backend-tbc-ontap-flexgroup", "192.0.2.41/32");
    assert_eq!(to, vec![(2049, Tcp)]);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("backend-tbc-ontap-flexgroup")
                && w.contains("storage[1].nasType is ignored")),
        "{:?}",
        p.warnings
    );
}

/// Trident ignores dataLIF on SAN backends (ontap_common.go, ValidateSANDriver): the portals
/// are the SVM's iSCSI LIFs, so until they are declared the management LIF carries 3260.
#[test]
fn san_backends() {
    let p = compile(&worker(), &all(), &[]);
    assert!(
        ports_to(&p, "san-chap", "192.0.2.51/32").is_empty(),
        "dataLIF ignored"
    );
    assert_eq!(
        ports_to(&p, "san-chap", "192.0.2.50/32"),
        vec![(443, Tcp), (3260, Tcp)]
    );
    for want in ["dataLIF is ignored", "discover"] {
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("san-chap") && w.contains(want)),
            "{want}: {:?}",
            p.warnings
        );
    }
    let mut cfg = worker();
    cfg.backends
        .data_addresses
        .insert("san-chap".into(), vec!["192.0.2.51/32".parse().unwrap()]);
    let p2 = compile(&cfg, &all(), &[]);
    assert_eq!(
        ports_to(&p2, "san-chap", "192.0.2.51/32"),
        vec![(3260, Tcp)]
    );
    assert_eq!(ports_to(&p2, "san-chap", "192.0.2.50/32"), vec![(443, Tcp)]);
    // ontap-san-economy is iSCSI whatever sanType says.
    assert_eq!(
        ports_to(&p, "san-eco-nvme", "2001:db8::50/128"),
        vec![(3260, Tcp), (8443, Tcp)]
    );
    // NVMe/TCP, IPv6 management LIF in brackets with a port.
    assert_eq!(
        ports_to(&p, "san-nvme", "2001:db8::60/128"),
        vec![(4420, Tcp), (8443, Tcp)]
    );
    // Fibre channel: management only, and a note.
    assert_eq!(
        shape(&p, "san-fcp"),
        vec![(Direction::Egress, "192.0.2.55/32".into(), 443, 443, Tcp)]
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("san-fcp") && w.contains("fibre-channel data needs no IP rules"))
    );
}

#[test]
fn cloud_backends_need_declared_data_addresses() {
    let p = compile(&worker(), &all(), &[]);
    for name in ["anf-prod", "gcnv-smb", "gcnv-san"] {
        assert!(
            entries_for(&p, name).is_empty(),
            "{name}: nothing is known yet"
        );
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains(name) && w.contains("not policed")),
            "{name}: {:?}",
            p.warnings
        );
    }
    let mut cfg = worker();
    cfg.backends
        .data_addresses
        .insert("anf-prod".into(), vec!["203.0.113.64/26".parse().unwrap()]);
    cfg.backends
        .data_addresses
        .insert("gcnv-smb".into(), vec!["2001:db8:1::/64".parse().unwrap()]);
    cfg.backends
        .data_addresses
        .insert("gcnv-san".into(), vec!["203.0.113.128/26".parse().unwrap()]);
    let p = compile(&cfg, &all(), &[]);
    assert!(
        ports_to(&p, "anf-prod", "203.0.113.64/26").contains(&(4045, Udp)),
        "ANF sample pins nfsvers=3"
    );
    assert_eq!(
        ports_to(&p, "gcnv-smb", "2001:db8:1::/64"),
        vec![(445, Tcp)]
    );
    assert_eq!(
        ports_to(&p, "gcnv-san", "203.0.113.128/26"),
        vec![(3260, Tcp)]
    );
}

#[test]
fn solidfire_endpoint_and_svip() {
    let p = compile(&worker(), &all(), &[]);
    assert_eq!(
        ports_to(&p, "solidfire-tbc", "198.51.100.70/32"),
        vec![(443, Tcp)],
        "host from the Secret"
    );
    assert_eq!(
        ports_to(&p, "solidfire-tbc", "198.51.100.71/32"),
        vec![(3260, Tcp)]
    );
    assert_eq!(
        ports_to(&p, "solidfire-json", "198.51.100.80/32"),
        vec![(8443, Tcp)],
        "port from the URL"
    );
    assert_eq!(
        ports_to(&p, "solidfire-json", "198.51.100.81/32"),
        vec![(3261, Tcp)],
        "port from SVIP"
    );
}

#[test]
fn eseries_proxy_ports() {
    let p = compile(&worker(), &all(), &[]);
    assert_eq!(
        ports_to(&p, "eseries-proxy", "203.0.113.10/32"),
        vec![(8443, Tcp)]
    );
    assert_eq!(
        ports_to(&p, "eseries-http", "203.0.113.20/32"),
        vec![(8088, Tcp)],
        "webProxyPort overrides 8080"
    );
    // hostDataIP is the array's iSCSI portal (eseries_iscsi.go: IscsiTargetPortal =
    // HostDataIP); the proxy gets no iSCSI.
    assert_eq!(
        ports_to(&p, "eseries-proxy", "203.0.113.100/32"),
        vec![(3260, Tcp)]
    );
    assert!(!ports_to(&p, "eseries-proxy", "203.0.113.10/32").contains(&(3260, Tcp)));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("eseries-proxy") && w.contains("dataAddresses.eseries-proxy"))
    );
}

#[test]
fn nfsv4_only_backends_never_open_nfsv3_ports() {
    let inv = all();
    let mut cfg = worker();
    for b in &inv.backends {
        cfg.backends
            .data_addresses
            .insert(b.name.clone(), vec!["198.51.100.0/24".parse().unwrap()]);
    }
    let p = compile(&cfg, &inv, &[]);
    let v4_only: Vec<&Backend> = inv
        .backends
        .iter()
        .filter(|b| b.protocols.nfs && b.mount().v4() && !b.mount().v3())
        .collect();
    assert!(v4_only.len() >= 2, "fixtures include NFSv4-only backends");
    for b in v4_only {
        for e in entries_for(&p, &b.name) {
            for port in [111, 635, 4045, 4046, 4049] {
                assert!(!e.ports.contains(port), "{}: {:?}", b.name, e);
            }
            assert!(
                !(e.ports.contains(2049) && e.proto == Udp),
                "{}: NFSv4 is TCP only: {e:?}",
                b.name
            );
        }
    }
}

/// Trident's node plugin runs on every node (a DaemonSet), the controller's node too: a
/// controller node keeps every data port a worker has and adds the controller's.
#[test]
fn controller_nodes_keep_the_data_ports_and_add_the_controllers() {
    let load = |role| {
        FileSources::new(None, &[fixtures().join("backends")], Some(role))
            .plan()
            .unwrap()
            .1
    };
    let (worker, controller) = (load(Role::Worker), load(Role::Controller));
    assert_eq!(controller.role, "controller");
    for e in &worker.entries {
        assert!(controller.entries.contains(e), "the controller lacks {e:?}");
    }
    assert_eq!(
        ports_to(&controller, "nas-v4", "192.0.2.11/32"),
        vec![(2049, Tcp)]
    );
    let mut guarded: Vec<u16> = controller.guarded.iter().map(|g| g.port).collect();
    guarded.sort_unstable();
    assert_eq!(
        guarded,
        vec![8000, 8001, 8443, 17546],
        "node plugin and controller"
    );
    let mut cfg = worker_config_with_https_metrics();
    cfg.role = Role::Controller;
    let p = compile(&cfg, &all(), &[]);
    assert!(p.guarded.iter().any(|g| g.port == 8444), "--https_metrics");
    cfg.role = Role::Worker;
    let p = compile(&cfg, &all(), &[]);
    assert!(
        !p.guarded.iter().any(|g| g.port == 8444),
        "a controller port"
    );
}

fn worker_config_with_https_metrics() -> NodeConfig {
    NodeConfig::from_yaml(Path::new("t.yaml"), "trident: {httpsMetrics: true}\n").unwrap()
}

/// A file that cannot be parsed is an error naming the file and line; anything wrong inside one
/// definition skips that definition with the file and field, and the rest is still planned.
#[test]
fn bad_input_names_file_and_field() {
    let bad = fixtures().join("bad");
    for (file, want) in [
        ("broken.yaml", "line 4 column 1"),
        ("broken.json", "line 1"),
    ] {
        let path = bad.join(file);
        let e = backends::load(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&path.display().to_string()), "{file}: {e}");
        assert!(e.contains(want), "{file}: {e}");
    }
    let skipped = [
        (
            "unknown-driver.yaml",
            "storageDriverName: unknown driver `ontap-nass`; known drivers: ontap-nas, ontap-nas-economy",
        ),
        (
            "bad-nfsvers.yaml",
            "nfsMountOptions: `nfsvers=2` is not NFS version 3 or 4",
        ),
        ("no-mgmt.yaml", "managementLIF: missing"),
        ("bad-endpoint.yaml", "Endpoint: not an http(s) URL"),
    ];
    for (file, want) in skipped {
        let path = bad.join(file);
        let inv = backends::load(std::slice::from_ref(&path)).unwrap();
        assert!(inv.backends.is_empty(), "{file}");
        let s = inv.skipped[0].to_string();
        assert!(s.contains(&path.display().to_string()), "{file}: {s}");
        assert!(s.contains(want), "{file}: {s}");
        assert!(
            !s.contains("fixture-password"),
            "{file}: leaks a credential: {s}"
        );
    }
    // A directory with one bad definition: the good one is planned, the bad one named.
    let dir = std::env::temp_dir().join(format!("tp-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixtures().join("backends/ontap-nas-v3.json"),
        dir.join("a.json"),
    )
    .unwrap();
    std::fs::copy(bad.join("unknown-driver.yaml"), dir.join("b.yaml")).unwrap();
    let (_, p) = FileSources::new(None, std::slice::from_ref(&dir), None)
        .plan()
        .unwrap();
    assert!(ports_to(&p, "nas-v3", "192.0.2.21/32").contains(&(2049, Tcp)));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("b.yaml skipped") && w.contains("ontap-nass")),
        "{:?}",
        p.warnings
    );
    assert_eq!(p.skipped.len(), 1);
    // A broken file still stops the whole plan: it cannot say what it meant.
    std::fs::copy(bad.join("broken.yaml"), dir.join("c.yaml")).unwrap();
    assert!(
        FileSources::new(None, std::slice::from_ref(&dir), None)
            .plan()
            .is_err()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn credentials_never_reach_the_plan() {
    let (_, p) = FileSources::new(None, &[fixtures().join("backends")], None)
        .plan()
        .unwrap();
    for format in [Format::Table, Format::Json, Format::Nftables] {
        let out = render(&p, format);
        for secret in [
            "fixture-password",
            "fixture-user",
            "fixture-chap",
            "fixture-client",
            "fixture-private",
        ] {
            assert!(!out.contains(secret), "{format:?} output contains {secret}");
        }
    }
}

#[test]
fn json_plan_has_the_documented_schema() {
    let (_, p) = FileSources::new(None, &[fixtures().join("backends/ontap-nas-v4.yaml")], None)
        .plan()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&render(&p, Format::Json)).unwrap();
    assert_eq!(v["role"], "worker");
    let e = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ports"][0] == 2049)
        .unwrap();
    assert_eq!(e["direction"], "egress");
    assert_eq!(e["dst"], "192.0.2.11/32");
    assert_eq!(e["src"], serde_json::Value::Null);
    assert_eq!(e["ports"], serde_json::json!([2049, 2049]));
    assert_eq!(e["proto"], "tcp");
    assert_eq!(e["purpose"], "NFS daemon");
    assert_eq!(e["backend"], "nas-v4");
    assert!(e["source"].as_str().unwrap().contains("dataLIF"));
    assert!(v["warnings"].is_array());
}
