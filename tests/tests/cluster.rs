//! The cluster source against a real kube-apiserver (built from Debian's sources; see
//! `tests/src/apiserver.rs`): plans from the cluster's objects, enforcement that follows them,
//! and the faults (the API server gone, RBAC).
use serde_json::Value;
use trident_ports_tests::{
    agent,
    apiserver::ApiServer,
    kube::{Kubectl, install_crds},
};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("kube")
            .join(name),
    )
    .unwrap()
}

/// `plan --format json` with `args`; the parsed plan.
fn plan(args: &[&str]) -> Value {
    let out = std::process::Command::new(agent::binary())
        .args(["plan", "--format", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plan: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn entries_to<'a>(plan: &'a Value, addr: &str) -> Vec<&'a Value> {
    plan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["dst"].as_str().is_some_and(|d| d.starts_with(addr)))
        .collect()
}

#[test]
fn plan_reads_what_trident_knows_from_the_api_server() {
    let Some(api) = ApiServer::start("plan_reads_what_trident_knows_from_the_api_server") else {
        return;
    };
    let k = Kubectl::admin(&api);
    install_crds(&k);
    k.apply(&fixture("cluster.yaml"));
    let kc = api.admin_kubeconfig();
    let p = plan(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--node-name",
        "node-1",
    ]);
    let text = serde_json::to_string_pretty(&p).unwrap();
    let sources = |addr: &str| -> Vec<(String, u64, String)> {
        entries_to(&p, addr)
            .iter()
            .map(|e| {
                (
                    e["source"].as_str().unwrap().to_string(),
                    e["ports"][0].as_u64().unwrap(),
                    e["proto"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // The management LIF from the definition, the data LIF Trident chose, both named by the
    // object and field they come from; the TridentBackend supersedes its TridentBackendConfig.
    assert!(
        sources("192.0.2.2/").iter().any(|(s, port, _)| s
            == "tridentbackend/trident/tbe-nas: managementLIF"
            && *port == 443),
        "{text}"
    );
    assert!(
        sources("192.0.2.3/")
            .iter()
            .any(|(s, port, _)| s == "tridentbackend/trident/tbe-nas: dataLIF" && *port == 2049),
        "{text}"
    );
    // The volume published to node-1 is mounted over NFSv4.1: exactly 2049/tcp to its address.
    assert_eq!(
        sources("192.0.2.4/"),
        [(
            "tridentvolume/trident/pvc-1: config.accessInformation.nfsServerIp".to_string(),
            2049,
            "tcp".to_string()
        )],
        "{text}"
    );
    // node-2's volume is not this node's business.
    assert!(sources("198.51.100.20/").is_empty(), "{text}");
    // The iSCSI portals only the publish context names, on 3260/tcp, for a backend the
    // cluster does not show (said so).
    for (addr, key) in [("198.51.100.30/", "p1"), ("198.51.100.31/", "p2")] {
        assert_eq!(
            sources(addr),
            [(
                format!("volumeattachment/csi-san-1: status.attachmentMetadata.{key}"),
                3260,
                "tcp".to_string()
            )],
            "{text}"
        );
    }
    let warnings = p["warnings"].to_string();
    assert!(
        warnings.contains("volume pvc-3 is on backend uuid-san, which the sources do not show"),
        "{warnings}"
    );
    assert!(
        warnings.contains("supersedes the definition in tridentbackendconfig/trident/tbc-nas"),
        "{warnings}"
    );

    // The same cluster seen from node-2: its volume, not node-1's.
    let p2 = plan(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--node-name",
        "node-2",
    ]);
    assert!(!entries_to(&p2, "198.51.100.20/").is_empty());
    assert!(entries_to(&p2, "192.0.2.4/").is_empty());
    assert!(entries_to(&p2, "198.51.100.30/").is_empty());

    // Topology: a backend whose supportedTopologies exclude zone-a is left out on node-1 (its
    // Node object's labels), and its definition says why.
    k.apply(
        "apiVersion: trident.netapp.io/v1\nkind: TridentBackendConfig\nmetadata: {name: tbc-east, namespace: trident}\n\
         spec:\n  version: 1\n  storageDriverName: ontap-san\n  backendName: east\n  managementLIF: 192.0.2.50\n  \
         supportedTopologies: [{topology.kubernetes.io/zone: zone-b}]\n",
    );
    let p = plan(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--node-name",
        "node-1",
    ]);
    assert!(entries_to(&p, "192.0.2.50/").is_empty());
    assert!(
        p["warnings"]
            .to_string()
            .contains("backend east (ontap-san): not planned on this node")
    );
    let p = plan(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--node-name",
        "node-2",
    ]);
    assert!(
        !entries_to(&p, "192.0.2.50/").is_empty(),
        "node-2 has no Node object: labels unknown"
    );
}
