//! Real storage protocols through the enforcing agent: the storage lab's NFS (v3 and v4),
//! iSCSI with CHAP, SMB and HTTPS servers, reached by real clients from the node namespace, under
//! a plan compiled from backend definitions that point at the lab.
use std::time::Duration;

use trident_ports_tests::{
    agent::Agent,
    lab::{Lab, assert_nfsv3_block_explained},
    node::NodeDir,
    require_root,
};

const NODE: &str = "backends: {sources: [backends]}\nevents: {interval: 1s}\n";

/// Runs the agent in the lab's node namespace with `node` as its configuration and `backends`
/// as its one backend file.
fn agent(lab: &Lab, name: &str, backends: &str, node: &str) -> (Agent, NodeDir) {
    agent_with(lab, name, backends, node, &[])
}

fn agent_with(
    lab: &Lab,
    name: &str,
    backends: &str,
    node: &str,
    args: &[&str],
) -> (Agent, NodeDir) {
    let node = NodeDir::at(lab.dir.join(format!("agent-{name}")))
        .backend("backends.yaml", backends)
        .raw_config(node);
    let a = Agent::run(&lab.pair, &node.config_path(), args);
    (a, node)
}

const EVERYTHING: &str = "\
version: 1
storageDriverName: ontap-nas
backendName: nas
managementLIF: 192.0.2.3
dataLIF: 192.0.2.2
---
version: 1
storageDriverName: ontap-nas
backendName: smb
managementLIF: 192.0.2.3
dataLIF: 192.0.2.2
nasType: smb
---
version: 1
storageDriverName: ontap-san
backendName: san
managementLIF: 192.0.2.3
useCHAP: true
---
version: 1
storageDriverName: eseries-iscsi
backendName: eseries
webProxyHostname: 192.0.2.2
hostDataIP: 192.0.2.2
controllerA: 198.51.100.1
controllerB: 198.51.100.2
---
version: 1
storageDriverName: ontap-nas
backendName: nas6
managementLIF: \"[2001:db8::2]\"
dataLIF: \"[2001:db8::2]\"
nfsMountOptions: nfsvers=4.1
---
version: 1
storageDriverName: ontap-san
backendName: san6
managementLIF: \"[2001:db8::2]\"
";

/// Trident ignores `dataLIF` on SAN backends: the SVM's iSCSI portal is declared.
const NODE_SAN: &str = "backends:\n  sources: [backends]\n  dataAddresses: {san: [192.0.2.2/32], san-prod: [192.0.2.2/32]}\n\
                        events: {interval: 1s}\n";

#[test]
fn every_protocol_the_backends_need_works() {
    if !require_root("every_protocol_the_backends_need_works") {
        return;
    }
    let lab = Lab::start();
    let (mut a, _) = agent(&lab, "all", EVERYTHING, NODE_SAN);
    let ok = |what: &str, r: Result<String, String>| r.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(ok("NFSv3", lab.nfs_ls("192.0.2.2", 3)).contains("hello.txt"));
    assert!(ok("NFSv4", lab.nfs_ls("192.0.2.2", 4)).contains("hello.txt"));
    assert!(ok("iSCSI with CHAP", lab.iscsi_inq("192.0.2.2")).contains("DIRECT_ACCESS"));
    assert!(ok("SMB", lab.smb_ls("192.0.2.2")).contains("smb.txt"));
    assert_eq!(
        ok("ONTAP management", lab.https("https://192.0.2.3/")),
        "200"
    );
    assert_eq!(
        ok("E-Series proxy", lab.https("https://192.0.2.2:8443/")),
        "200"
    );
    // IPv6.
    assert!(ok("NFSv4 over IPv6", lab.nfs_ls("2001:db8::2", 4)).contains("hello.txt"));
    assert!(ok("iSCSI over IPv6", lab.iscsi_inq("[2001:db8::2]")).contains("DIRECT_ACCESS"));
    assert_eq!(
        ok("management over IPv6", lab.https("https://[2001:db8::2]/")),
        "200"
    );
    // What no backend needs stays closed: management HTTPS on a data-only address.
    lab.https("https://192.0.2.2/").unwrap_err();
    let events = a.wait_events(1, Duration::from_secs(3));
    assert!(
        events.iter().any(|e| e["dst"] == "192.0.2.2:443"),
        "{events:?}"
    );
    assert!(
        events.iter().all(|e| e["dst"] == "192.0.2.2:443"),
        "nothing the backends need was denied: {events:?}"
    );
    a.stop(libc::SIGTERM);
}

#[test]
fn nfsv4_only_backend_blocks_an_nfsv3_mount_with_explained_events() {
    if !require_root("nfsv4_only_backend_blocks_an_nfsv3_mount_with_explained_events") {
        return;
    }
    let lab = Lab::start();
    let backend = "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas-prod\nmanagementLIF: 192.0.2.3\n\
                   dataLIF: 192.0.2.2\nnfsMountOptions: nfsvers=4.1\n";
    let (mut a, _) = agent(&lab, "v4only", backend, NODE);
    assert!(lab.nfs_ls("192.0.2.2", 4).unwrap().contains("hello.txt"));
    lab.nfs_ls("192.0.2.2", 3).unwrap_err();
    // libnfs straight to mountd's port, without the portmapper: the next NFSv3 port closed.
    lab.client(&[
        "nfs-ls",
        "nfs://192.0.2.2/export?version=3&mountport=635&nfsport=2049",
    ])
    .unwrap_err();
    let events = a.wait_events(2, Duration::from_secs(5));
    assert_nfsv3_block_explained(&events, "nas-prod");
    a.stop(libc::SIGTERM);
}

/// Trident's node plugin runs on the controller's node too: with `--role controller` the node
/// keeps its NFS (v3 and v4), on top of the controller's ports.
#[test]
fn a_controller_node_mounts_nfs() {
    if !require_root("a_controller_node_mounts_nfs") {
        return;
    }
    let lab = Lab::start();
    let backend = "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas-prod\nmanagementLIF: 192.0.2.3\n\
                   dataLIF: 192.0.2.2\nnfsMountOptions: nfsvers=3\n";
    let (mut a, _) = agent_with(&lab, "controller", backend, NODE, &["--role", "controller"]);
    assert!(lab.nfs_ls("192.0.2.2", 3).unwrap().contains("hello.txt"));
    lab.iscsi_inq("192.0.2.2").unwrap_err();
    let events = a.wait_events(1, Duration::from_secs(5));
    assert!(
        events.iter().all(|e| e["dst"] == "192.0.2.2:3260"),
        "only what no backend needs is denied: {events:?}"
    );
    a.stop(libc::SIGTERM);
}

#[test]
fn san_only_node_cannot_reach_nfs() {
    if !require_root("san_only_node_cannot_reach_nfs") {
        return;
    }
    let lab = Lab::start();
    let backend = "version: 1\nstorageDriverName: ontap-san\nbackendName: san-prod\nmanagementLIF: 192.0.2.3\n";
    let (mut a, _) = agent(&lab, "san", backend, NODE_SAN);
    assert!(
        lab.iscsi_inq("192.0.2.2")
            .unwrap()
            .contains("DIRECT_ACCESS")
    );
    lab.nfs_ls("192.0.2.2", 4).unwrap_err();
    let events = a.wait_events(1, Duration::from_secs(5));
    let nfs = events
        .iter()
        .find(|e| e["dst"] == "192.0.2.2:2049")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(nfs["purpose"], "NFS daemon");
    assert_eq!(nfs["backend"], "san-prod");
    a.stop(libc::SIGTERM);
}

#[test]
fn iscsi_login_works_only_to_declared_portals() {
    if !require_root("iscsi_login_works_only_to_declared_portals") {
        return;
    }
    let lab = Lab::start();
    // No dataLIF: Trident would discover the portals; the operator declares 192.0.2.2 only.
    let backend = "version: 1\nstorageDriverName: ontap-san\nbackendName: san-prod\nmanagementLIF: 192.0.2.3\n";
    let node = "backends:\n  sources: [backends]\n  dataAddresses: {san-prod: [192.0.2.2/32]}\nevents: {interval: 1s}\n";
    let (mut a, _) = agent(&lab, "portals", backend, node);
    assert!(
        lab.iscsi_inq("192.0.2.2")
            .unwrap()
            .contains("DIRECT_ACCESS")
    );
    lab.iscsi_inq("192.0.2.3").unwrap_err();
    let events = a.wait_events(1, Duration::from_secs(5));
    assert!(
        events
            .iter()
            .any(|e| e["dst"] == "192.0.2.3:3260" && e["reason"] == "no-rule"),
        "{events:?}"
    );
    a.stop(libc::SIGTERM);
}
