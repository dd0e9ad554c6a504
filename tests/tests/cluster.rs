//! The cluster source against a real kube-apiserver (built from Debian's sources; see
//! `tests/src/apiserver.rs`): plans from the cluster's objects, enforcement that follows them,
//! and the faults (the API server gone, RBAC).
use std::time::{Duration, Instant};

use serde_json::Value;
use trident_ports_tests::{
    agent::{self, Agent},
    apiserver::{self, ApiServer},
    kube::{Kubectl, install_crds},
    metrics,
    netns::{NetNs, Pair},
    node::NodeDir,
    require_root,
    traffic::{Echo, sa, tcp_echo},
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

    // A malformed definition is a warning naming its object; everything else is planned. The
    // Trident controller pod on node-1 makes it a controller node with its address guarded.
    k.apply(
        "apiVersion: trident.netapp.io/v1\nkind: TridentBackendConfig\nmetadata: {name: tbc-bad, namespace: trident}\n\
         spec: {version: 1, storageDriverName: ontap-nass, backendName: bad, managementLIF: 192.0.2.60}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: trident-controller-1, namespace: trident, labels: {app: controller.csi.trident.netapp.io}}\n\
         spec: {nodeName: node-1, containers: [{name: trident-main, image: netapp/trident}]}\n\
         status: {phase: Running, podIP: 198.51.100.77, podIPs: [{ip: 198.51.100.77}]}\n",
    );
    let p = plan(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--node-name",
        "node-1",
    ]);
    let warnings = p["warnings"].to_string();
    assert!(
        warnings.contains("backend bad (tridentbackendconfig/trident/tbc-bad) skipped: storageDriverName: unknown driver"),
        "{warnings}"
    );
    assert!(
        !entries_to(&p, "192.0.2.4/").is_empty(),
        "the rest is planned"
    );
    assert_eq!(p["role"], "controller", "the controller pod runs here");
    let guards = p.to_string();
    assert!(guards.contains("198.51.100.77"), "{guards}");
    let p2 = plan(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--node-name",
        "node-2",
    ]);
    assert_eq!(p2["role"], "worker");

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

    // SolidFire's MVIP lives only in a Secret: read with kubernetes.readSecrets, never shown.
    k.apply(
        &fixture("../../trident-ports-agent/tests/fixtures/backends/solidfire.yaml").replace(
            "metadata:\n  name: ",
            "metadata:\n  namespace: trident\n  name: ",
        ),
    );
    let dir = api.dir.join("secrets");
    std::fs::create_dir_all(&dir).unwrap();
    let with = dir.join("with.yaml");
    std::fs::write(&with, "kubernetes: {readSecrets: true}\n").unwrap();
    let args = [
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--node-name",
        "node-1",
    ];
    let p = plan(&[&["--config", with.to_str().unwrap()], &args[..]].concat());
    let text = p.to_string();
    assert!(!entries_to(&p, "198.51.100.70/").is_empty(), "{text}");
    assert!(
        !text.contains("fixture-password") && !text.contains("fixture-user"),
        "{text}"
    );
    let p = plan(&args);
    assert!(entries_to(&p, "198.51.100.70/").is_empty());
    assert!(
        p["warnings"].to_string().contains("solidfire-tbc"),
        "without readSecrets the SolidFire backend is named as not planned: {}",
        p["warnings"]
    );
}

const T: Duration = Duration::from_millis(400);

/// A volume published to node-1 whose access information is `access` (YAML flow mapping).
fn volume(access: &str) -> String {
    format!(
        "apiVersion: trident.netapp.io/v1\nkind: TridentVolume\nmetadata: {{name: pvc-9, namespace: trident}}\n\
         backendUUID: uuid-nas\nconfig:\n  name: pvc-9\n  accessInformation: {access}\n"
    )
}

const PUBLICATION: &str = "apiVersion: trident.netapp.io/v1\nkind: TridentVolumePublication\n\
     metadata: {name: pvc-9.node-1, namespace: trident}\nvolumeID: pvc-9\nnodeID: node-1\nreadOnly: false\n";

/// The agent as node-1 of the cluster `kubeconfig` reaches.
fn node_1(pair: &Pair, node: &NodeDir, kubeconfig: &std::path::Path) -> Agent {
    let args = [
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "node-1",
    ];
    Agent::run(pair, &node.config_path(), &args)
}

/// Whether the node reaches the storage end's echo on 192.0.2.4:`port`.
fn reaches(pair: &Pair, port: u16) -> bool {
    tcp_echo(&pair.node, sa(&format!("192.0.2.4:{port}")), T).is_ok()
}

/// Polls until `cond` holds; the time it took, or a panic naming `what` after `limit`.
fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The deploy/ manifests the agent's identity comes from (namespace, ServiceAccount, RBAC,
/// the DaemonSets and their ConfigMaps), applied to the API server: a real RBAC check.
fn apply_deploy(k: &Kubectl<'_>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for f in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "rbac.yaml",
        "configmap.yaml",
        "daemonset-worker.yaml",
        "daemonset-controller.yaml",
    ] {
        k.apply(&std::fs::read_to_string(dir.join(f)).unwrap());
    }
}

#[test]
fn enforcement_follows_the_cluster_and_outlives_the_api_server() {
    let test = "enforcement_follows_the_cluster_and_outlives_the_api_server";
    if !require_root(test) {
        return;
    }
    let Some(bin) = apiserver::binary(test) else {
        return;
    };
    let pair = Pair::standard();
    let _echo = Echo::start(&pair.storage, &[sa("192.0.2.4:2049"), sa("192.0.2.4:3260")]);
    // The API server on the node namespace's loopback, where the agent reaches it.
    let mut api = ApiServer::start_in(test, Some(&pair.node.name)).unwrap();
    let k = Kubectl::admin(&api);
    install_crds(&k);
    k.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: trident}\n");
    apply_deploy(&k);
    // The agent runs as the DaemonSets' ServiceAccount: every list and watch goes through RBAC.
    let kc = api.kubeconfig("trident-ports", &k.token("trident-ports", "trident-ports"));
    let node = NodeDir::new("cluster-enforce").config(&format!(
        "kubernetes: {{stateFile: {}, startTimeout: 3s, nodeEventInterval: 1s}}\n",
        api.dir.join("state.json").display()
    ));
    // The agent may not write Events yet (granted below, after its first writes failed).
    const EVENTS_BINDING: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
        metadata: {name: trident-ports-node-events, namespace: default}\n\
        roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: trident-ports-node-events}\n\
        subjects: [{kind: ServiceAccount, name: trident-ports, namespace: trident-ports}]\n";
    k.delete(EVENTS_BINDING);
    let mut agent = node_1(&pair, &node, &kc);
    let ok = |port: u16| reaches(&pair, port);
    // Nothing names 192.0.2.4 yet: it is not storage, and not policed.
    assert!(ok(3260) && ok(2049));

    // A volume published to this node over NFSv4.1: its address is protected and allowed on
    // 2049 only, within 2 s of the objects' creation.
    k.apply(&volume(
        "{nfsServerIp: 192.0.2.4, mountOptions: nfsvers=4.1}",
    ));
    k.apply(PUBLICATION);
    let took = until("NFS volume enforced", Duration::from_secs(2), || {
        !ok(3260) && ok(2049)
    });
    eprintln!("object created -> enforced: {took:?}");

    // The denials are Events on the Node, one per flow, counted up as they repeat.
    let events = |k: &Kubectl<'_>| -> Vec<Value> {
        let (code, body) = k.request(
            "GET",
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dnode-1,reason%3DStorageFlowDenied",
            "application/json",
            "",
        );
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["items"]
            .as_array()
            .unwrap()
            .clone()
    };
    // One Event for the denied flow. The switch may add one more: an echo to 3260 that left
    // before 192.0.2.4 became storage has its reply or its close judged after, unsolicited
    // (one CI run saw it first). Its port is not in the Event; the agent's own events show it.
    const EGRESS_3260: &str = "egress 192.0.2.1 -> 192.0.2.4:3260/tcp denied (no-rule)";
    let is_3260 = |e: &Value| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(EGRESS_3260))
    };
    let expected = |e: &Value| {
        is_3260(e)
            || e["message"].as_str().is_some_and(|m| {
                m.starts_with("ingress 192.0.2.4 -> 192.0.2.1:")
                    && m.contains("denied (unsolicited-inbound)")
            })
    };
    // The flow's Event is refused (403) while the agent may not write Events, and kept: once
    // it may, the Event is written without another packet of the flow.
    agent.wait_for_log(
        "write(s) failed, kept for the next interval",
        Duration::from_secs(10),
    );
    assert!(events(&k).is_empty());
    k.apply(EVENTS_BINDING);
    let mut first = Value::Null;
    let started = Instant::now();
    while first.is_null() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a Node event: not within 10 s; the agent's log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
        first = events(&k).into_iter().find(is_3260).unwrap_or(Value::Null);
    }
    assert_eq!(first["involvedObject"]["kind"], "Node");
    assert_eq!(first["type"], "Warning");
    let count = first["count"].as_i64().unwrap();
    for _ in 0..3 {
        assert!(!ok(3260));
        std::thread::sleep(Duration::from_millis(1100));
    }
    until("the Node event counted up", Duration::from_secs(10), || {
        let now = events(&k);
        let same = now.iter().filter(|e| is_3260(e)).collect::<Vec<_>>();
        assert!(now.iter().all(expected), "{now:?}");
        same.len() == 1
            && same[0]["metadata"]["name"] == first["metadata"]["name"]
            && same[0]["count"].as_i64().unwrap() > count
    });
    let denied = agent.wait_events(0, Duration::ZERO);
    assert!(
        denied.iter().any(|e| e["dst"] == "192.0.2.4:3260"),
        "the agent's own events hold the denied flow: {denied:?}"
    );
    assert!(
        denied.iter().all(|e| e["src"] != "192.0.2.4:2049"),
        "a packet of the allowed NFS flow was denied: {denied:?}"
    );

    // Changed (the volume moves to iSCSI), deleted (it leaves the node) and back: each within
    // 2 s.
    k.apply(&volume("{iscsiTargetPortal: '192.0.2.4:3260'}"));
    let took = until("volume changed", Duration::from_secs(2), || {
        ok(3260) && !ok(2049)
    });
    eprintln!("object changed -> enforced: {took:?}");
    k.delete(PUBLICATION);
    let took = until("publication deleted", Duration::from_secs(2), || {
        ok(3260) && ok(2049)
    });
    eprintln!("object deleted -> enforced: {took:?}");
    k.apply(&volume(
        "{nfsServerIp: 192.0.2.4, mountOptions: nfsvers=4.1}",
    ));
    k.apply(PUBLICATION);
    until("published again", Duration::from_secs(2), || {
        !ok(3260) && ok(2049)
    });

    // The API server goes away: enforcement stays exactly as it was.
    api.stop_apiserver();
    agent.wait_for_log(
        "the running policy stays, retrying",
        Duration::from_secs(15),
    );
    for _ in 0..3 {
        assert!(
            ok(2049) && !ok(3260),
            "enforcement changed without the API server"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let health = NetNs::within(&pair.node, || {
        let mut c = std::net::TcpStream::connect("127.0.0.1:9964").unwrap();
        std::io::Write::write_all(&mut c, b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut c, &mut s).unwrap();
        s
    });
    assert!(health.contains("kubernetes: not answering for"), "{health}");
    let m = metrics::scrape(&pair.node);
    assert_eq!(
        metrics::metric(&m, "trident_ports_kubernetes_connected"),
        Some(0),
        "{m}"
    );

    // Back again: a change made meanwhile is picked up (the volume moves to iSCSI).
    api.start_apiserver(&bin);
    let k = Kubectl::admin(&api);
    k.apply(&volume("{iscsiTargetPortal: '192.0.2.4:3260'}"));
    let took = until("change after the outage", Duration::from_secs(30), || {
        ok(3260) && !ok(2049)
    });
    eprintln!("API server back -> change enforced: {took:?}");
    // Every watcher lists again (each on its own backoff), and the source says so.
    until("connected again", Duration::from_secs(60), || {
        metrics::metric(
            &metrics::scrape(&pair.node),
            "trident_ports_kubernetes_connected",
        ) == Some(1)
    });
    let m = metrics::scrape(&pair.node);
    assert_eq!(
        metrics::metric(&m, "trident_ports_kubernetes_stale_seconds"),
        Some(0),
        "{m}"
    );
    assert!(
        m.contains("trident_ports_policy_entry_changes_total{backend=\"nas\",change=\"added\"}")
            || m.contains("trident_ports_policy_entry_changes_total{backend=\"backend uuid-nas\",change=\"added\"}"),
        "{m}"
    );
    agent.stop(libc::SIGTERM);

    // A start while the API server is down begins from the state saved with the last applied
    // policy, and says so.
    api.stop_apiserver();
    let mut agent = node_1(&pair, &node, &kc);
    assert!(
        agent
            .log()
            .contains("starting from the cluster state saved"),
        "{}",
        agent.log()
    );
    assert!(ok(3260) && !ok(2049), "the saved state is enforced");

    // The publication goes (the volume left the node) once the API server answers.
    api.start_apiserver(&bin);
    Kubectl::admin(&api).delete(PUBLICATION);
    until("publication removed", Duration::from_secs(30), || {
        ok(3260) && ok(2049)
    });
    agent.stop(libc::SIGTERM);
}

/// What a cluster change adds is enforced as soon as the agent reads it; what it takes away
/// waits out the debounce (`policy::widen`). Here a volume moves from NFS to iSCSI on one
/// address, with a debounce of 2 s: iSCSI opens well before it, and NFS closes only after it,
/// though the agent looks at its sources again every 100 ms meanwhile (host names).
#[test]
fn a_change_opens_at_once_and_closes_after_the_debounce() {
    let test = "a_change_opens_at_once_and_closes_after_the_debounce";
    if !require_root(test) {
        return;
    }
    let pair = Pair::standard();
    let _echo = Echo::start(&pair.storage, &[sa("192.0.2.4:2049"), sa("192.0.2.4:3260")]);
    let Some(api) = ApiServer::start_in(test, Some(&pair.node.name)) else {
        return;
    };
    let k = Kubectl::admin(&api);
    install_crds(&k);
    k.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: trident}\n");
    let node = NodeDir::new("cluster-widen").raw_config(
        "kubernetes: {debounce: 2s, stateFile: none}\n\
         backends: {sources: [backends], resolveInterval: 100ms}\n",
    );
    let kc = api.admin_kubeconfig();
    let mut agent = node_1(&pair, &node, &kc);
    let ok = |port: u16| reaches(&pair, port);
    k.apply(&volume(
        "{nfsServerIp: 192.0.2.4, mountOptions: nfsvers=4.1}",
    ));
    k.apply(PUBLICATION);
    until("NFS volume enforced", Duration::from_secs(10), || {
        !ok(3260) && ok(2049)
    });
    // The change below comes while the debounce the volume and its publication started still
    // runs: it must still be widened at once, and what it takes away must wait a whole
    // debounce after it, not what is left of that one.
    std::thread::sleep(Duration::from_millis(300));

    let changed = Instant::now();
    k.apply(&volume("{iscsiTargetPortal: '192.0.2.4:3260'}"));
    let opened = until("iSCSI open", Duration::from_millis(1500), || ok(3260));
    assert!(ok(2049), "NFS closed before the debounce ran out");
    until("NFS closed", Duration::from_secs(10), || !ok(2049));
    let closed = changed.elapsed();
    eprintln!("opened after {opened:?}, closed after {closed:?}");
    assert!(
        closed >= Duration::from_millis(1900),
        "NFS closed {closed:?} after the change, before the 2 s debounce"
    );
    assert!(ok(3260));
    let log = agent.log();
    assert!(log.contains("policy widened"), "{log}");
    agent.stop(libc::SIGTERM);
}

#[test]
fn rbac_refusal_names_the_verb_and_resource() {
    let test = "rbac_refusal_names_the_verb_and_resource";
    let Some(api) = ApiServer::start(test) else {
        return;
    };
    let k = Kubectl::admin(&api);
    install_crds(&k);
    k.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: trident}\n");
    apply_deploy(&k);
    // The deploy/ identity may do all the agent does.
    let token = k.token("trident-ports", "trident-ports");
    let kc = api.kubeconfig("trident-ports", &token);
    plan(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--node-name",
        "node-1",
    ]);
    // As in its pod: no kubeconfig, the service account's token and CA where the kubelet
    // mounts them, the API server from KUBERNETES_SERVICE_HOST/PORT, the node from NODE_NAME.
    // A mount namespace of its own holds /run/secrets (/var/run is /run).
    if require_root(test) {
        let sa = api.dir.join("serviceaccount");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("token"), &token).unwrap();
        std::fs::copy(api.dir.join("ca.crt"), sa.join("ca.crt")).unwrap();
        std::fs::write(sa.join("namespace"), "trident-ports").unwrap();
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io && \
             ln -s {} /run/secrets/kubernetes.io/serviceaccount && \
             exec {} plan --kubernetes --format json",
            sa.display(),
            agent::binary().display()
        );
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", api.port.to_string())
            .env("NODE_NAME", "node-1")
            .env_remove("KUBECONFIG")
            .env("HOME", &api.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "in-cluster plan: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(p["entries"].is_array());
    }
    // An identity without the bindings is refused, with the verb and resource named.
    k.apply("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: nobody, namespace: trident-ports}\n");
    let kc = api.kubeconfig("nobody", &k.token("trident-ports", "nobody"));
    let out = std::process::Command::new(agent::binary())
        .args([
            "plan",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--node-name",
            "node-1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("RBAC refuses `list` on "), "{err}");
    assert!(
        [
            "tridentbackendconfigs.trident.netapp.io in namespace trident",
            "storageclasses.storage.k8s.io",
            "persistentvolumes",
            "nodes",
            "volumeattachments.storage.k8s.io",
            "pods in namespace trident",
            "tridentbackends.trident.netapp.io",
            "tridentvolumes.trident.netapp.io",
            "tridentvolumepublications.trident.netapp.io"
        ]
        .iter()
        .any(|r| err.contains(r)),
        "{err}"
    );
    assert!(
        err.contains("system:serviceaccount:trident-ports:nobody"),
        "{err}"
    );
}
