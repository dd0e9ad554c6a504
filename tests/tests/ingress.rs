//! Ingress with real traffic between namespaces: Trident's node ports from the cluster only, the
//! probe port from nobody outside, unsolicited inbound from storage denied, replies and NFSv3
//! callbacks allowed, IPv4 and IPv6, TC and XDP; and a stream that existed before the agent
//! keeps flowing with no retransmission when enforcement starts.
use std::{net::IpAddr, time::Duration};

use trident_ports_tests::{
    agent::Agent,
    metrics,
    netns::{Addrs, Pair},
    node::NodeDir,
    require_root,
    traffic::{Echo, Stream, sa, tcp_echo, tcp_echo_from, tcp_refused_from, udp_echo_from},
};

const T: Duration = Duration::from_millis(700);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Node 192.0.2.1 / 2001:db8::1; storage 192.0.2.2 / 2001:db8::2 (an NFSv3 SVM), a cluster
/// peer 192.0.2.3 and an outsider 192.0.2.4 / 2001:db8::4.
fn v3_and_v6_node(name: &str, extra_config: &str) -> (Pair, NodeDir) {
    let pair = Pair::new(Addrs {
        node: &["192.0.2.1/24", "2001:db8::1/64"],
        storage: &[
            "192.0.2.2/24",
            "192.0.2.3/24",
            "192.0.2.4/24",
            "2001:db8::2/64",
            "2001:db8::4/64",
        ],
    });
    let dir = NodeDir::new(name)
        .backend(
            "nas.yaml",
            "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas-v3\nmanagementLIF: 192.0.2.2\ndataLIF: 192.0.2.2\n\
             nfsMountOptions: nfsvers=3\n---\n\
             version: 1\nstorageDriverName: ontap-nas\nbackendName: nas-v6\nmanagementLIF: \"[2001:db8::2]\"\n\
             dataLIF: \"[2001:db8::2]\"\nnfsMountOptions: nfsvers=4.1\n",
        )
        .config(&format!(
            "cluster: {{cidrs: [192.0.2.3/32]}}\nevents: {{interval: 0s}}\n{extra_config}"
        ));
    (pair, dir)
}

fn ingress_checks(extra_args: &[&str], name: &str) {
    let (pair, dir) = v3_and_v6_node(name, "");
    let _node_servers = Echo::start(
        &pair.node,
        &[
            sa("0.0.0.0:8000"),
            sa("0.0.0.0:17546"),
            sa("0.0.0.0:22"),
            sa("0.0.0.0:40000"),
            sa("[::]:2222"),
        ],
    );
    let _storage = Echo::start(
        &pair.storage,
        &[sa("192.0.2.2:2049"), sa("[2001:db8::2]:2049")],
    );
    let cfg = dir.path("node.yaml");
    let mut agent = Agent::run(&pair, &cfg, extra_args);
    let st = &pair.storage;
    // Trident's node ports: the cluster gets in, an outsider does not, nobody reaches the probe.
    // Storage may not open connections to the node.
    tcp_echo_from(st, ip("192.0.2.3"), sa("192.0.2.1:8000"), T).unwrap();
    tcp_refused_from(
        st,
        &[
            ("an outsider to 8000", ip("192.0.2.4"), sa("192.0.2.1:8000")),
            (
                "the cluster to the probe",
                ip("192.0.2.3"),
                sa("192.0.2.1:17546"),
            ),
            ("storage to the node", ip("192.0.2.2"), sa("192.0.2.1:22")),
            (
                "storage to the node, v6",
                ip("2001:db8::2"),
                sa("[2001:db8::1]:2222"),
            ),
        ],
        T,
    );
    // Unguarded ports from non-storage sources are not this product's business.
    tcp_echo_from(st, ip("192.0.2.4"), sa("192.0.2.1:22"), T).unwrap();
    tcp_echo_from(st, ip("2001:db8::4"), sa("[2001:db8::1]:2222"), T).unwrap();
    // ...except NFSv3 callbacks to ephemeral ports, and replies to what the node opened.
    udp_echo_from(st, sa("192.0.2.2:4045"), sa("192.0.2.1:40000"), T).unwrap();
    tcp_echo(&pair.node, sa("192.0.2.2:2049"), T).unwrap();
    tcp_echo(&pair.node, sa("[2001:db8::2]:2049"), T).unwrap();
    let events = agent.wait_events(4, Duration::from_secs(3));
    let has = |dst: &str, src_prefix: &str, reason: &str| {
        events.iter().any(|e| {
            e["direction"] == "ingress"
                && e["dst"] == dst
                && e["src"].as_str().unwrap().starts_with(src_prefix)
                && e["reason"] == reason
        })
    };
    assert!(
        has("192.0.2.1:8000", "192.0.2.4:", "source-not-allowed"),
        "{events:?}"
    );
    assert!(
        has("192.0.2.1:17546", "192.0.2.3:", "source-not-allowed"),
        "{events:?}"
    );
    assert!(
        has("192.0.2.1:22", "192.0.2.2:", "unsolicited-inbound"),
        "{events:?}"
    );
    assert!(
        has(
            "[2001:db8::1]:2222",
            "[2001:db8::2]:",
            "unsolicited-inbound"
        ),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["dst"] == "192.0.2.1:40000" || e["src"] == "192.0.2.2:2049"),
        "{events:?}"
    );
    agent.stop(libc::SIGTERM);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ingress_with_tc() {
    if require_root("ingress_with_tc") {
        ingress_checks(&[], "ingress-tc");
    }
}

#[test]
fn ingress_with_xdp() {
    if require_root("ingress_with_xdp")
        && trident_ports_tests::kernel_has(
            "ingress_with_xdp",
            trident_ports_tests::XDP_KERNEL,
            "bpf_xdp_load_bytes",
        )
    {
        ingress_checks(&["--ingress", "xdp"], "ingress-xdp");
    }
}

#[test]
fn ingress_with_legacy_tc_attach() {
    if require_root("ingress_with_legacy_tc_attach") {
        ingress_checks(&["--attach", "netlink"], "ingress-netlink");
    }
}

/// A download from storage to the node that began before the agent keeps flowing with no
/// retransmission when enforcement starts; one on a port the policy does not allow stops.
#[test]
fn pre_existing_stream_survives_enforcement_start() {
    if !require_root("pre_existing_stream_survives_enforcement_start") {
        return;
    }
    // Without callbacks: with them, storage may open TCP to any node port from 1024 up, which
    // would allow the second stream too.
    let (pair, dir) = v3_and_v6_node("stream", "nfs: {callbacks: false}\n");
    let allowed = Stream::start(&pair.storage, &pair.node, sa("192.0.2.2:2049"));
    let denied = Stream::start(&pair.storage, &pair.node, sa("192.0.2.2:3260"));
    let started = std::time::Instant::now();
    while (allowed.bytes() == 0 || denied.bytes() == 0)
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Well under way before the agent starts.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        allowed.bytes() > 0 && denied.bytes() > 0,
        "streams run before the agent"
    );
    let (retrans_before, lost_before) = (allowed.retransmits(), allowed.lost());
    let cfg = dir.path("node.yaml");
    let mut agent = Agent::run(&pair, &cfg, &[]);
    let (a0, d0) = (allowed.bytes(), denied.bytes());
    // Flowing: 5 MB more than when the agent attached; a stream stalled by drops delivers
    // only what its reader had not read yet. Usually within 1.5 s; an emulated guest sharing
    // the machine's two cores with another guest has taken longer (4.6 MB in 1.5 s in one CI
    // run), so the wait is a deadline, not a measure.
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    while allowed.bytes() <= a0 + 5_000_000 && started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (a1, d1) = (allowed.bytes(), denied.bytes());
    let (retrans_after, lost_after) = (allowed.retransmits(), allowed.lost());
    assert!(
        a1 > a0 + 5_000_000,
        "the allowed stream kept flowing: {a0} -> {a1} in {:?}",
        started.elapsed()
    );
    // The denied stream stops within a moment (what was in flight may still arrive).
    std::thread::sleep(Duration::from_millis(300));
    let d2 = denied.bytes();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        denied.bytes(),
        d2,
        "the stream to a port the policy does not allow stopped ({d0} -> {d1} -> {d2})"
    );
    let events = agent.wait_events(1, Duration::from_secs(2));
    assert!(
        events
            .iter()
            .all(|e| e["src"] != "192.0.2.2:2049" && e["dst"] != "192.0.2.2:2049"),
        "allowed stream hit a drop: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["src"] == "192.0.2.2:3260" || e["dst"] == "192.0.2.2:3260"),
        "{events:?}"
    );
    // No segment of the allowed stream was lost. Retransmissions alone do not say so: the
    // agent's start (the verifier) keeps a CPU of two busy, late acknowledgements make the
    // sender retransmit what had arrived (one CI run counted two, with no drop event), and
    // the client reports each such copy as a duplicate. Checked by dropping the stream's
    // segments with nftables for 50 ms (180 lost) and its acknowledgements for 400 ms (2
    // retransmitted, 1 lost: a duplicate report dropped with them). Under emulation (the test
    // VM), timing alone loses segments between namespaces too; the drop events above are the
    // datapath's own account there.
    if std::env::var("TRIDENT_PORTS_EMULATED").is_ok() {
        eprintln!(
            "emulated guest: segments of the allowed stream lost {lost_before} -> {lost_after} \
             (retransmitted {retrans_before} -> {retrans_after}) not asserted"
        );
    } else {
        assert_eq!(
            lost_after, lost_before,
            "the allowed stream lost a segment (retransmissions {retrans_before} -> {retrans_after}, \
             not reported as duplicates {lost_before} -> {lost_after})"
        );
    }
    assert!(
        denied.retransmits() > 0,
        "the denied stream's segments were dropped and retransmitted"
    );
    drop(denied);
    agent.stop(libc::SIGTERM);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A TCP connection from the node to storage's 192.0.2.2:2049, idle until storage speaks.
struct IdleConnection {
    server: std::thread::JoinHandle<()>,
    client: std::thread::JoinHandle<Result<Duration, String>>,
    go: std::sync::mpsc::Sender<()>,
    read: std::sync::mpsc::Sender<()>,
}

impl IdleConnection {
    /// Opens the connection and waits until its handshake's last ACK has left.
    fn open(pair: &Pair) -> Self {
        use std::{
            io::{Read, Write},
            net::{TcpListener, TcpStream},
            sync::mpsc,
            time::Instant,
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let server = pair.storage.run(move || {
            let l = TcpListener::bind("192.0.2.2:2049").unwrap();
            ready_tx.send(()).unwrap();
            let (mut c, _) = l.accept().unwrap();
            go_rx.recv().unwrap();
            c.write_all(b"reply").unwrap();
            std::thread::sleep(Duration::from_secs(2));
        });
        ready_rx.recv().unwrap();
        let (conn_tx, conn_rx) = mpsc::channel();
        let (read, read_rx) = mpsc::channel::<()>();
        let client = pair.node.run(move || {
            let mut c = TcpStream::connect("192.0.2.2:2049").unwrap();
            conn_tx.send(()).unwrap();
            read_rx.recv().unwrap();
            c.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            let start = Instant::now();
            let mut buf = [0u8; 5];
            let r = c.read_exact(&mut buf).map(|()| start.elapsed());
            r.map_err(|e| e.to_string())
        });
        conn_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        IdleConnection {
            server,
            client,
            go,
            read,
        }
    }

    /// Storage speaks first; asserts that the node reads it with no retransmission, and that
    /// no event names the reply's flow.
    fn storage_speaks(self, agent: &Agent) {
        self.read.send(()).unwrap();
        self.go.send(()).unwrap();
        let took = self.client.join().unwrap().expect("the reply arrived");
        assert!(
            took < Duration::from_millis(150),
            "the reply took {took:?}: its first transmission was dropped"
        );
        let events = agent.wait_events(1, Duration::from_millis(500));
        assert!(
            events.iter().all(|e| e["src"] != "192.0.2.2:2049"),
            "{events:?}"
        );
        let _ = self.server.join();
    }
}

/// An idle connection opened before the agent, where storage speaks first after enforcement
/// starts (an RPC reply, a server-side keepalive): the node never sent a packet the datapath
/// could learn the flow from, so only the seeded connection table lets the reply in.
#[test]
fn idle_connection_where_storage_speaks_first() {
    if !require_root("idle_connection_where_storage_speaks_first") {
        return;
    }
    let (pair, dir) = v3_and_v6_node("idle", "nfs: {callbacks: false}\n");
    let idle = IdleConnection::open(&pair);
    let cfg = dir.path("node.yaml");
    let mut agent = Agent::run(&pair, &cfg, &[]);
    idle.storage_speaks(&agent);
    agent.stop(libc::SIGTERM);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A connection the node opened to an address before any backend named it, where storage speaks
/// first after a reload makes the address storage: the node's packets passed as traffic that is
/// not Trident's, so the connection table never learned the flow, and only the datapath's ask of
/// the node's sockets lets the peer's next packet in (and puts the flow in the table).
#[test]
fn a_connection_to_an_address_that_becomes_storage_keeps_flowing() {
    if !require_root("a_connection_to_an_address_that_becomes_storage_keeps_flowing") {
        return;
    }
    let pair = Pair::new(Addrs {
        node: &["192.0.2.1/24"],
        storage: &["192.0.2.2/24", "192.0.2.5/24"],
    });
    let backend = |lif: &str| {
        format!(
            "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas\nmanagementLIF: {lif}\n\
             dataLIF: {lif}\nnfsMountOptions: nfsvers=4.1\n"
        )
    };
    let dir = NodeDir::new("becomes-storage")
        .backend("nas.yaml", &backend("192.0.2.5"))
        .config("events: {interval: 0s}\n");
    let _node_server = Echo::start(&pair.node, &[sa("0.0.0.0:40000")]);
    let mut agent = Agent::run(&pair, &dir.config_path(), &["--watch-interval", "1h"]);
    let st = &pair.storage;
    // 192.0.2.2 is not Trident's yet: it may open connections to the node, and the node's
    // connection to it passes untouched.
    tcp_echo_from(st, ip("192.0.2.2"), sa("192.0.2.1:40000"), T).unwrap();
    let idle = IdleConnection::open(&pair);
    dir.write_backend("nas.yaml", &backend("192.0.2.2"));
    // SAFETY: kill(2) on a child this test started; no memory is involved.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    agent.wait_for_log("policy reloaded", Duration::from_secs(5));
    // Now it is storage: it may not open connections to the node ...
    tcp_echo_from(st, ip("192.0.2.2"), sa("192.0.2.1:40000"), T).unwrap_err();
    // ... but the connection the node opened before is the node's.
    idle.storage_speaks(&agent);
    let m = metrics::scrape(&pair.node);
    assert_eq!(
        metrics::metric(
            &m,
            "trident_ports_flows_recovered_total{direction=\"ingress\"}"
        ),
        Some(1),
        "{m}"
    );
    agent.stop(libc::SIGTERM);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Trident's ports are guarded only where Trident listens (the node's own addresses): another
/// application's pod, routed through the node, may serve 8443 to anyone (an admission webhook
/// called by a managed control plane, say).
fn guards_stop_at_the_nodes_own_addresses(extra_args: &[&str], name: &str) {
    let (pair, dir) = v3_and_v6_node(name, "");
    let pod = pair.routed_pod(
        "198.51.100.1/24",
        "198.51.100.10/24",
        "198.51.100.0/24",
        "192.0.2.1",
    );
    let _node_server = Echo::start(&pair.node, &[sa("0.0.0.0:8443")]);
    let _pod_server = Echo::start(&pod, &[sa("198.51.100.10:8443")]);
    let st = &pair.storage;
    // Routing works before the agent is there.
    tcp_echo_from(st, ip("192.0.2.4"), sa("198.51.100.10:8443"), T).unwrap();
    let mut agent = Agent::run(&pair, &dir.config_path(), extra_args);
    // The node's own 8443 takes the cluster only, also on the node's other address (the pods'
    // gateway) ...
    tcp_echo_from(st, ip("192.0.2.3"), sa("192.0.2.1:8443"), T).unwrap();
    tcp_refused_from(
        st,
        &[
            ("an outsider", ip("192.0.2.4"), sa("192.0.2.1:8443")),
            (
                "an outsider, the gateway",
                ip("192.0.2.4"),
                sa("198.51.100.1:8443"),
            ),
        ],
        T,
    );
    // ... while the pod's 8443 behind it is not Trident's and passes untouched.
    tcp_echo_from(st, ip("192.0.2.4"), sa("198.51.100.10:8443"), T).unwrap();
    let events = agent.wait_events(2, Duration::from_secs(3));
    assert!(
        events
            .iter()
            .all(|e| e["reason"] == "source-not-allowed" && e["dst"] != "198.51.100.10:8443"),
        "{events:?}"
    );
    agent.stop(libc::SIGTERM);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn guards_stop_at_the_nodes_own_addresses_tc() {
    if require_root("guards_stop_at_the_nodes_own_addresses_tc") {
        guards_stop_at_the_nodes_own_addresses(&[], "guard-tc");
    }
}

#[test]
fn guards_stop_at_the_nodes_own_addresses_xdp() {
    if require_root("guards_stop_at_the_nodes_own_addresses_xdp")
        && trident_ports_tests::kernel_has(
            "guards_stop_at_the_nodes_own_addresses_xdp",
            trident_ports_tests::XDP_KERNEL,
            "XDP ingress",
        )
    {
        guards_stop_at_the_nodes_own_addresses(&["--ingress", "xdp"], "guard-xdp");
    }
}
