//! The denied-flow stream: explained events, flood control in the kernel, the `flows` command
//! with followers and filters, a slow follower that is told what it missed, and metrics that
//! match the traffic (checked with promtool).
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, UdpSocket},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use trident_ports_tests::{
    agent::{Agent, binary},
    metrics::{self, METRICS, scrape},
    netns::{NetNs, Pair},
    node::NodeDir,
    require_root,
    traffic::{sa, tcp_echo, udp_echo},
};

/// The node's one backend: an NFSv4.1 SVM at 192.0.2.2.
const NAS: &str = "apiVersion: trident.netapp.io/v1\nkind: TridentBackendConfig\nmetadata: {name: nas-prod}\n\
     spec: {version: 1, storageDriverName: ontap-nas, managementLIF: 192.0.2.2, dataLIF: 192.0.2.2, \
     nfsMountOptions: nfsvers=4.1}\n";

fn nas_node(name: &str, interval: &str) -> (Pair, NodeDir) {
    let node = NodeDir::new(name)
        .backend("nas.yaml", NAS)
        .config(&format!("events: {{interval: {interval}}}\n"));
    (Pair::standard(), node)
}

fn start(pair: &Pair, node: &NodeDir) -> Agent {
    let file = node.path("events.json");
    Agent::run(
        pair,
        &node.config_path(),
        &[
            "--metrics",
            METRICS,
            "--events-file",
            file.to_str().unwrap(),
        ],
    )
}

/// Sends `n` UDP datagrams from one source port (one flow) as fast as possible.
fn blast(ns: &NetNs, from_port: u16, to: SocketAddr, n: usize) {
    ns.within(move || {
        let u = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], from_port))).unwrap();
        for _ in 0..n {
            // A dropped datagram is an EPERM-free success for UDP; the kernel drops it in TC.
            let _ = u.send_to(b"x", to);
        }
    });
}

fn metric(text: &str, name_and_labels: &str) -> u64 {
    metrics::metric(text, name_and_labels)
        .unwrap_or_else(|| panic!("no {name_and_labels} in:\n{text}"))
}

#[test]
fn events_explain_themselves() {
    if !require_root("events_explain_themselves") {
        return;
    }
    let (pair, dir) = nas_node("explain", "0s");
    let mut agent = start(&pair, &dir);
    udp_echo(&pair.node, sa("192.0.2.2:111"), Duration::from_millis(300)).unwrap_err();
    tcp_echo(&pair.node, sa("192.0.2.2:3260"), Duration::from_millis(300)).unwrap_err();
    let events = agent.wait_events(2, Duration::from_secs(3));
    let rpc = events
        .iter()
        .find(|e| e["dst"] == "192.0.2.2:111")
        .expect("rpcbind event");
    assert_eq!(rpc["backend"], "nas-prod");
    assert_eq!(rpc["purpose"], "RPCBIND/portmapper, needed only for NFSv3");
    let hint = rpc["hint"].as_str().unwrap();
    assert!(
        hint.contains("backend nas-prod mounts NFSv4 (nfsvers=4.1)"),
        "{hint}"
    );
    assert!(
        hint.contains("192.0.2.2 is storage of backend nas-prod"),
        "{hint}"
    );
    let iscsi = events
        .iter()
        .find(|e| e["dst"] == "192.0.2.2:3260")
        .expect("iscsi event");
    assert_eq!(iscsi["purpose"], "iSCSI target (discovery/data/CHAP)");
    assert!(
        iscsi["hint"]
            .as_str()
            .unwrap()
            .contains("no backend needs 3260/tcp there"),
        "{iscsi}"
    );
    // The events file holds the same JSON lines as stdout.
    let file: Vec<serde_json::Value> = std::fs::read_to_string(dir.path("events.json"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!file.is_empty());
    assert_eq!(file, agent.wait_events(0, Duration::ZERO));
    agent.stop(libc::SIGTERM);
}

/// 100,000 denied packets of one flow, and 100 of each of 20 more flows, yield a bounded
/// number of events whose suppressed counts add up to every packet denied.
#[test]
fn flood_of_denied_packets_is_bounded_and_counted() {
    if !require_root("flood_of_denied_packets_is_bounded_and_counted") {
        return;
    }
    let (pair, dir) = nas_node("flood", "1s");
    let mut agent = start(&pair, &dir);
    let started = Instant::now();
    blast(&pair.node, 50_000, sa("192.0.2.2:4045"), 100_000);
    for p in 0..20 {
        blast(&pair.node, 50_001 + p, sa("192.0.2.2:4045"), 100);
    }
    let blasted = started.elapsed();
    // One more packet per flow after the interval carries the last suppressed counts out.
    std::thread::sleep(Duration::from_millis(1100));
    blast(&pair.node, 50_000, sa("192.0.2.2:4045"), 1);
    for p in 0..20 {
        blast(&pair.node, 50_001 + p, sa("192.0.2.2:4045"), 1);
    }
    let sent: u64 = 100_001 + 20 * 101;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut events;
    loop {
        events = agent.wait_events(0, Duration::ZERO);
        let total: u64 = events
            .iter()
            .map(|e| 1 + e["suppressed"].as_u64().unwrap())
            .sum();
        if total >= sent || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let total: u64 = events
        .iter()
        .map(|e| 1 + e["suppressed"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total, sent,
        "events plus suppressed counts equal the packets denied"
    );
    // At most one event per flow per second: 21 flows, over the blast and the final packet.
    let windows = blasted.as_secs() + 2;
    assert!(
        events.len() as u64 <= 21 * windows,
        "{} events for 21 flows in {blasted:?}",
        events.len()
    );
    let text = scrape(&pair.node);
    assert_eq!(
        metric(
            &text,
            "trident_ports_packets_total{direction=\"egress\",verdict=\"denied\"}"
        ),
        sent
    );
    assert_eq!(
        metric(
            &text,
            "trident_ports_dropped_packets_total{direction=\"egress\",reason=\"no-rule\"}"
        ),
        sent
    );
    let emitted = metric(
        &text,
        "trident_ports_events_total{direction=\"egress\",result=\"emitted\"}",
    );
    let suppressed = metric(
        &text,
        "trident_ports_events_total{direction=\"egress\",result=\"suppressed\"}",
    );
    assert_eq!(emitted + suppressed, sent);
    assert_eq!(emitted, events.len() as u64);
    assert_eq!(
        metric(
            &text,
            "trident_ports_events_total{direction=\"egress\",result=\"lost\"}"
        ),
        0
    );
    agent.stop(libc::SIGTERM);
}

fn flows(agent: &Agent, args: &[&str]) -> std::process::Child {
    Command::new(binary())
        .arg("flows")
        .args(["--socket", agent.socket.to_str().unwrap(), "-o", "json"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn read_lines(
    child: &mut std::process::Child,
    n: usize,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx
                .send(serde_json::from_str::<serde_json::Value>(&l).unwrap())
                .is_err()
            {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut v = Vec::new();
    while v.len() < n {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(x) => v.push(x),
            Err(_) => break,
        }
    }
    v
}

#[test]
fn flows_followers_filters_history_and_metrics() {
    if !require_root("flows_followers_filters_history_and_metrics") {
        return;
    }
    let (pair, dir) = nas_node("flows", "0s");
    let mut agent = start(&pair, &dir);
    // Before any follower: two events into the history.
    blast(&pair.node, 40_000, sa("192.0.2.2:111"), 1);
    blast(&pair.node, 40_001, sa("192.0.2.2:635"), 1);
    agent.wait_events(2, Duration::from_secs(2));
    let mut iscsi = flows(&agent, &["--follow", "--port", "3260"]);
    let mut egress = flows(
        &agent,
        &[
            "--follow",
            "--direction",
            "egress",
            "--dst",
            "192.0.2.0/24",
            "--since",
            "1ms",
        ],
    );
    let mut backend = flows(
        &agent,
        &["--follow", "--backend", "nas-prod", "--proto", "udp"],
    );
    std::thread::sleep(Duration::from_millis(300));
    blast(&pair.node, 40_002, sa("192.0.2.2:3260"), 1);
    blast(&pair.node, 40_003, sa("192.0.2.2:2050"), 1);
    let a = read_lines(&mut iscsi, 1, Duration::from_secs(3));
    let b = read_lines(&mut egress, 2, Duration::from_secs(3));
    let c = read_lines(&mut backend, 4, Duration::from_secs(3));
    assert_eq!(
        a.iter()
            .map(|e| e["dst"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["192.0.2.2:3260"]
    );
    assert_eq!(
        b.iter()
            .map(|e| e["dst"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["192.0.2.2:3260", "192.0.2.2:2050"]
    );
    // No --since: the whole history first, then live.
    assert_eq!(
        c.iter()
            .map(|e| e["dst"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![
            "192.0.2.2:111",
            "192.0.2.2:635",
            "192.0.2.2:3260",
            "192.0.2.2:2050"
        ]
    );
    for mut ch in [iscsi, egress, backend] {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    // Without --follow: history only, then exit.
    let out = Command::new(binary())
        .args([
            "flows",
            "--socket",
            agent.socket.to_str().unwrap(),
            "--port",
            "635",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("192.0.2.2:635") && text.contains("no-rule") && text.contains("mountd")
            || text.contains("Mount daemon"),
        "{text}"
    );
    // Metrics match what was sent: 4 denied, then 3 allowed exchanges (6 packets).
    let before = scrape(&pair.node);
    assert_eq!(
        metric(
            &before,
            "trident_ports_packets_total{direction=\"egress\",verdict=\"denied\"}"
        ),
        4
    );
    assert_eq!(
        metric(
            &before,
            "trident_ports_events_total{direction=\"egress\",result=\"emitted\"}"
        ),
        4
    );
    assert_eq!(
        metric(&before, "trident_ports_reloads_total{result=\"success\"}"),
        1
    );
    assert!(metric(&before, "trident_ports_policy_entries{kind=\"peers\"}") >= 1);
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut promtool =
        promtool.expect("promtool (Debian package prometheus) is installed by .ci/run");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(before.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    agent.stop(libc::SIGTERM);
}

/// A follower that stops reading is told how many events it missed, and never stalls the agent
/// or the other followers.
#[test]
fn slow_follower_is_told_what_it_missed() {
    if !require_root("slow_follower_is_told_what_it_missed") {
        return;
    }
    let (pair, dir) = nas_node("slow", "0s");
    let mut agent = start(&pair, &dir);
    let mut slow = UnixStream::connect(&agent.socket).unwrap();
    slow.write_all(b"{\"since_ms\": 0, \"follow\": true}\n")
        .unwrap();
    let mut fast = flows(&agent, &["--follow", "--port", "7777"]);
    std::thread::sleep(Duration::from_millis(200));
    // 20,000 denied packets from distinct source ports: 20,000 events, far beyond what the slow
    // follower's socket and the agent's 4,096-event follower buffer hold.
    pair.node.within(|| {
        for p in 0..20_000u16 {
            let u = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 30_000 + p))).unwrap();
            let _ = u.send_to(b"x", "192.0.2.2:9".parse::<SocketAddr>().unwrap());
        }
    });
    // Let the agent drain the burst (one this size can overflow the ring buffer; such events
    // are counted as lost in the kernel and reach no follower), then send one marked packet.
    let mut published = 0;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = agent.wait_events(0, Duration::ZERO).len();
        if now == published {
            break;
        }
        published = now;
    }
    assert!(published > 10_000, "{published}");
    blast(&pair.node, 7777, sa("192.0.2.2:9"), 1);
    let got = read_lines(&mut fast, 1, Duration::from_secs(10));
    assert_eq!(
        got.len(),
        1,
        "the fast follower got its event while another follower was stuck"
    );
    let published = agent
        .wait_events(published + 1, Duration::from_secs(5))
        .len() as u64;
    // Now read the slow follower: a `missed` notice, and the count of what it got adds up.
    slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut received = 0u64;
    let mut missed = 0u64;
    for line in BufReader::new(slow).lines().map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        match v.get("missed") {
            Some(m) => missed += m.as_u64().unwrap(),
            None => received += 1,
        }
    }
    assert!(missed > 0, "the slow follower was told it missed events");
    assert_eq!(
        received + missed,
        published,
        "received {received} + missed {missed}"
    );
    let _ = fast.kill();
    agent.stop(libc::SIGTERM);
}
