//! The plan against what Trident really does on a node, one fixture directory per rule
//! (`tests/fixtures/cases`), read through `plan`'s own path and checked in its JSON, the shape
//! tools consume. docs/plan.md lists each rule with the Trident code it follows.
use std::path::{Path, PathBuf};

use serde_json::Value;
use trident_ports_agent::{
    agent::FileSources,
    config::Role,
    policy::render::{Format, render},
};

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cases")
        .join(name)
}

/// `plan --backends DIR [--config DIR/node.yaml] --role ROLE --format json`, parsed.
fn plan(name: &str, role: Role) -> Value {
    plan_with(name, role, &[])
}

fn plan_with(name: &str, role: Role, more: &[PathBuf]) -> Value {
    let dir = case(name);
    let config = dir.join("node.yaml");
    let (mut sources, config) = if config.exists() {
        (vec![], Some(config))
    } else {
        (vec![dir], None)
    };
    sources.extend(more.iter().cloned());
    let (_, p) = FileSources::new(config.as_deref(), &sources, Some(role))
        .plan()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&render(&p, Format::Json)).unwrap()
}

fn entries<'a>(p: &'a Value, backend: &str) -> Vec<&'a Value> {
    p["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["backend"] == backend)
        .collect()
}

/// (direction, peer, first port, last port, proto, source) of a backend's entries.
fn rows(p: &Value, backend: &str) -> Vec<(String, String, u64, u64, String, String)> {
    let mut v: Vec<_> = entries(p, backend)
        .into_iter()
        .map(|e| {
            let peer = if e["direction"] == "egress" {
                &e["dst"]
            } else {
                &e["src"]
            };
            (
                e["direction"].as_str().unwrap().to_string(),
                peer.as_str().unwrap().to_string(),
                e["ports"][0].as_u64().unwrap(),
                e["ports"][1].as_u64().unwrap(),
                e["proto"].as_str().unwrap().to_string(),
                e["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// An egress entry to `peer` allows `port`.
fn has_port(p: &Value, backend: &str, peer: &str, port: u64, proto: &str) -> bool {
    rows(p, backend)
        .iter()
        .any(|r| r.0 == "egress" && r.1 == peer && r.2 <= port && port <= r.3 && r.4 == proto)
}

fn source_of(p: &Value, backend: &str, peer: &str, port: u64, proto: &str) -> String {
    rows(p, backend)
        .into_iter()
        .find(|r| r.1 == peer && r.2 == port && r.4 == proto)
        .unwrap_or_else(|| panic!("{backend}: no {port}/{proto} to {peer}"))
        .5
}

fn warned(p: &Value, needle: &[&str]) -> bool {
    p["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| needle.iter().all(|n| w.as_str().unwrap().contains(n)))
}

#[test]
fn a_storage_class_mount_option_replaces_the_backends_and_is_planned() {
    let p = plan("mount-options", Role::Worker);
    let data = "192.0.2.71/32";
    // The backend pins 4.1, its class mounts NFSv3: the NFSv3 ports are open, from the class.
    for (port, proto) in [
        (2049, "tcp"),
        (111, "tcp"),
        (111, "udp"),
        (635, "udp"),
        (4045, "udp"),
    ] {
        assert!(
            has_port(&p, "nas-gold", data, port, proto),
            "{port}/{proto}"
        );
    }
    assert_eq!(
        source_of(&p, "nas-gold", data, 111, "udp"),
        "storageclass/gold: mountOptions"
    );
    assert!(
        source_of(&p, "nas-gold", data, 2049, "tcp").ends_with("backend.yaml#1: dataLIF"),
        "shared needs name the backend's field"
    );
    // The other backend's class and a foreign class leave it NFSv4.1 only ...
    assert!(!has_port(&p, "nas-other", "192.0.2.73/32", 111, "udp"));
    // ... but a PV of its class mounts NFSv4.0, whose server calls back into the node.
    let cb = rows(&p, "nas-other")
        .into_iter()
        .find(|r| r.0 == "ingress")
        .expect("an NFSv4.0 callback entry");
    assert_eq!(
        (cb.1.as_str(), cb.2, cb.3, cb.4.as_str(), cb.5.as_str()),
        (
            "192.0.2.73/32",
            1024,
            65535,
            "tcp",
            "persistentvolume/pv-legacy: mountOptions"
        )
    );
}

#[test]
fn every_input_form_is_read_and_trident_state_supersedes_its_definition() {
    let p = plan("inputs", Role::Worker);
    // kind: List of TBCs, with the resolved dataLIF from `tridentctl get backend -o json`.
    assert!(has_port(&p, "nas-listed", "198.51.100.11/32", 2049, "tcp"));
    assert!(
        source_of(&p, "nas-listed", "198.51.100.11/32", 2049, "tcp")
            .contains("tridentctl.json items[0]: dataLIF")
    );
    assert!(warned(&p, &["nas-listed", "supersedes"]));
    // A TridentBackend (config under ontap_config) and `tridentctl get backend -o yaml`.
    assert!(
        has_port(&p, "nas-tbe", "198.51.100.31/32", 4045, "udp"),
        "NFSv3 backend"
    );
    assert!(has_port(&p, "san-resolved", "198.51.100.40/32", 443, "tcp"));
    assert!(has_port(&p, "san-listed", "198.51.100.20/32", 443, "tcp"));
    assert!(
        !p["warnings"].to_string().contains("also defined"),
        "a superseded definition is not a duplicate"
    );
}

#[test]
fn one_bad_definition_never_stops_the_node() {
    let p = plan_with("faults", Role::Worker, &[case("faults/empty")]);
    assert!(has_port(&p, "good", "203.0.113.11/32", 2049, "tcp"));
    for (name, why) in [
        (
            "placeholder",
            "managementLIF: `<mvip>` is not an address or host name",
        ),
        ("unresolvable", "does not resolve"),
        ("fsx", "aws.fsxFilesystemID"),
        ("gcnv-ontap", "gcnv.proxyURL"),
        ("mystery", "unknown driver `nimble-nfs`"),
    ] {
        assert!(
            warned(&p, &[&format!("backend {name} ("), "skipped", why]),
            "{name}: {p:#}"
        );
        assert!(entries(&p, name).is_empty(), "{name}");
    }
    assert!(warned(&p, &["empty", "defines no backend"]), "{p:#}");
}

#[test]
fn nfs_options_move_ports_and_need_what_they_use() {
    let p = plan("nfs-details", Role::Worker);
    let moved = "192.0.2.81/32";
    for (port, proto) in [
        (2050, "tcp"),
        (2050, "udp"),
        (20048, "tcp"),
        (4001, "udp"),
        (4002, "udp"),
        (4003, "tcp"),
    ] {
        assert!(has_port(&p, "moved", moved, port, proto), "{port}/{proto}");
    }
    for (port, proto) in [
        (2049, "tcp"),
        (635, "tcp"),
        (4045, "udp"),
        (4046, "udp"),
        (4049, "tcp"),
    ] {
        assert!(
            !has_port(&p, "moved", moved, port, proto),
            "{port}/{proto} moved away"
        );
    }
    // `v4.1` is a version as much as `vers=4.1`.
    assert!(!has_port(&p, "v41-form", "192.0.2.83/32", 111, "tcp"));
    assert!(has_port(&p, "v41-form", "192.0.2.83/32", 2049, "tcp"));
    // NFS over RDMA.
    assert!(has_port(&p, "rdma", "192.0.2.85/32", 20049, "tcp"));
    // Kerberos without a KDC in the configuration.
    assert!(warned(
        &p,
        &["backend krb (", "Kerberos", "directory.kerberos"]
    ));
    // NFSv4.0 (minorversion=0): the callback connection comes from the data address.
    assert!(
        rows(&p, "v40")
            .iter()
            .any(|r| r.0 == "ingress" && r.1 == "192.0.2.89/32" && r.4 == "tcp")
    );
    assert!(
        !rows(&p, "v41-form").iter().any(|r| r.0 == "ingress"),
        "4.1 needs no callback path"
    );
    // ANF: NFSv3 by default, NFSv4.1 with Kerberos; GCNV: whatever the host negotiates.
    assert!(has_port(&p, "anf-default", "192.0.2.90/32", 4045, "udp"));
    assert!(!has_port(&p, "anf-krb", "192.0.2.91/32", 111, "tcp"));
    assert!(warned(&p, &["backend anf-krb (", "Kerberos"]));
    assert!(has_port(&p, "gcnv-nfs", "192.0.2.92/32", 111, "tcp"));
    assert!(warned(&p, &["backend gcnv-nfs (", "pin no NFS version"]));
}

#[test]
fn backends_whose_topology_cannot_match_this_node_are_left_out() {
    let p = plan("topology", Role::Worker);
    assert!(has_port(&p, "east", "192.0.2.101/32", 2049, "tcp"));
    assert!(has_port(&p, "anywhere", "192.0.2.107/32", 2049, "tcp"));
    // A pool of its own topology brings `pools` onto this node.
    assert!(has_port(&p, "pools", "192.0.2.105/32", 2049, "tcp"));
    assert!(entries(&p, "west").is_empty());
    assert!(warned(
        &p,
        &[
            "backend west (",
            "not planned on this node",
            "topology.kubernetes.io/region=us-west1"
        ]
    ));
    // Without node.labels nothing is left out.
    let (_, all) = FileSources::new(None, &[case("topology").join("backends.yaml")], None)
        .plan()
        .unwrap();
    assert!(
        all.entries
            .iter()
            .any(|e| e.backend.as_deref() == Some("west"))
    );
}

#[test]
fn live_sessions_are_shown_with_what_covers_them_and_kept_when_the_policy_lacks_it() {
    let dir = case("live");
    let (_, p) = FileSources::new(Some(&dir.join("node.yaml")), &[], None)
        .plan_live()
        .unwrap();
    let v: Value = serde_json::from_str(&render(&p, Format::Json)).unwrap();
    let live = v["live"].as_array().expect("plan --live adds `live`");
    let by = |needle: &str| {
        live.iter()
            .find(|r| r["session"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("{needle}: {live:#?}"))
    };
    let v4 = by("pvc-v4");
    assert_eq!(v4["missing"], serde_json::json!([]));
    assert_eq!(v4["covered_by"][0], "egress 192.0.2.71/32 2049/tcp");
    let v3 = by("pvc-v3");
    assert_eq!(v3["protected"], true, "{v3}");
    let missing: Vec<&str> = v3["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for want in ["111/tcp", "635/udp", "4045/udp", "4046/tcp"] {
        assert!(
            missing.iter().any(|m| m.ends_with(want)),
            "{want}: {missing:?}"
        );
    }
    assert_eq!(
        by("session3")["covered_by"][0],
        "egress 192.0.2.75/32 3260/tcp"
    );
    assert_eq!(by("nvme1")["covered_by"][0], "unpoliced");
    // The mount keeps its NFSv3 ports while it exists, each entry naming it.
    let kept = entries(&v, "")
        .into_iter()
        .chain(v["entries"].as_array().unwrap().iter())
        .filter(|e| {
            e["source"]
                .as_str()
                .unwrap()
                .starts_with("live: NFSv3 mount /var/lib/kubelet/pods/p2")
        })
        .count();
    assert!(kept >= 8, "{kept}");
    assert!(warned(
        &v,
        &[
            "live session NFSv3 mount",
            "pvc-v3",
            "allowed for as long as it exists"
        ]
    ));
    // Without --live the plan is the backends' alone, and has no `live` key.
    let plain = plan_with("live", Role::Worker, &[]);
    assert!(plain.get("live").is_none());
    assert!(!has_port(&plain, "nas-gold", "192.0.2.71/32", 111, "tcp"));
    // The table says NOT COVERED for the mount, and what happens.
    let table = render(&p, Format::Table);
    assert!(
        table.contains("NOT COVERED: ") && table.contains("allowed while the session exists"),
        "{table}"
    );
}
