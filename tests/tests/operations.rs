//! Running it for real: kill -9 under traffic keeps enforcement, a new agent adopts it with no
//! allowed flow dropped, uninstall leaves nothing; 100 reloads under traffic with no drop of
//! allowed traffic and no pass of denied traffic; a bad reload keeps the running policy; a
//! ConfigMap-style symlink swap reloads; audit and enforce switch live; a reload that waits on
//! a slow resolver does not hold up the event stream.
use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use trident_ports_tests::{
    agent::{Agent, binary, uninstall},
    bpffs::{BpfFs, pin_map},
    metrics::{self, scrape},
    netns::Pair,
    node::NodeDir,
    require_root,
    traffic::{Echo, sa, tcp_echo},
};

const T: Duration = Duration::from_millis(500);

/// Allowed and denied TCP attempts in a loop, counting what went wrong.
struct Traffic {
    stop: Arc<AtomicBool>,
    allowed_ok: Arc<AtomicU64>,
    allowed_failed: Arc<AtomicU64>,
    denied_passed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(pair: &Pair) -> Self {
        Self::start_with(pair, T)
    }

    /// `allowed_timeout` bounds one allowed exchange: past it the exchange counts as failed.
    fn start_with(pair: &Pair, allowed_timeout: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed, passed) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (node, node2) = (pair.node.borrow(), pair.node.borrow());
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let allowed = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp_echo(&node, sa("192.0.2.2:2049"), allowed_timeout) {
                    Ok(()) => o.fetch_add(1, Ordering::Relaxed),
                    Err(_) => f.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let (s, p) = (stop.clone(), passed.clone());
        let denied = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if tcp_echo(&node2, sa("192.0.2.2:3260"), Duration::from_millis(100)).is_ok() {
                    p.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Traffic {
            stop,
            allowed_ok: ok,
            allowed_failed: failed,
            denied_passed: passed,
            threads: vec![allowed, denied],
        }
    }

    fn finish(mut self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        (
            self.allowed_ok.load(Ordering::Relaxed),
            self.allowed_failed.load(Ordering::Relaxed),
            self.denied_passed.load(Ordering::Relaxed),
        )
    }
}

fn nas_node_with_servers(name: &str) -> (Pair, NodeDir, Echo) {
    let pair = Pair::standard();
    let echo = Echo::start(
        &pair.storage,
        &[
            sa("192.0.2.2:2049"),
            sa("192.0.2.2:3260"),
            sa("192.0.2.2:111"),
        ],
    );
    let dir = NodeDir::new(name).config("events: {interval: 0s}\n");
    write_backend(&dir, "4.1");
    (pair, dir, echo)
}

fn write_backend(dir: &NodeDir, nfsvers: &str) {
    dir.write_backend(
        "nas.yaml",
        &format!("version: 1\nstorageDriverName: ontap-nas\nbackendName: nas\nmanagementLIF: 192.0.2.2\ndataLIF: 192.0.2.2\nnfsMountOptions: nfsvers={nfsvers}\n"),
    );
}

fn attached_programs(pair: &Pair) -> usize {
    let iface = pair.node_if.clone();
    let tcx = pair.node.within(move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        [TcAttachType::Egress, TcAttachType::Ingress]
            .into_iter()
            .map(|t| SchedClassifier::query_tcx(&iface, t).map_or(0, |(_, p)| p.len()))
            .sum::<usize>()
    });
    let filters: usize = ["egress", "ingress"]
        .iter()
        .map(|d| {
            pair.node
                .exec(&["tc", "filter", "show", "dev", &pair.node_if, d])
                .lines()
                .filter(|l| l.contains("tp_tc_"))
                .count()
        })
        .sum();
    let xdp = pair
        .node
        .exec(&["ip", "-d", "link", "show", &pair.node_if])
        .contains("prog/xdp") as usize;
    tcx + filters + xdp
}

/// An upgrade whose maps changed shape: the new agent must not share the old pinned maps with
/// its programs (the verifier would reject them, or lookups would miss), and enforcement must
/// not pause while it replaces them.
#[test]
fn an_upgrade_replaces_pinned_maps_of_another_layout() {
    if !require_root("an_upgrade_replaces_pinned_maps_of_another_layout") {
        return;
    }
    use trident_ports_common::{
        COUNTER_BLOCKS, Config, CounterBlock, FlowKey, FlowState, PROTO_TCP, maps, v4_mapped,
    };
    let fs = BpfFs::mount();
    let pin = fs.0.join("trident-ports");
    let (pair, dir, _echo) = nas_node_with_servers("upgrade");
    let cfg = dir.path("node.yaml");
    let args = ["--pin-dir", pin.to_str().unwrap()];
    let a = Agent::run(&pair, &cfg, &args);
    // A handshake whose SYN leaves through the old program just before the new one attaches
    // has its SYN-ACK judged by the new program: the new connection table inherits the old
    // one's flows, before the attach and once after. Exchanges must complete within 900 ms,
    // before TCP would resend a lost SYN (1 s): a dropped SYN-ACK fails the test.
    let traffic = Traffic::start_with(&pair, Duration::from_millis(900));
    std::thread::sleep(Duration::from_millis(700));
    // A flow only the old connection table knows (no socket has it): the new table must
    // inherit it, unchecked.
    let flows_at = |p: &std::path::Path| {
        let m = aya::maps::MapData::from_pin(p).unwrap();
        aya::maps::HashMap::<_, FlowKey, FlowState>::try_from(aya::maps::Map::HashMap(m)).unwrap()
    };
    let only_old = FlowKey {
        local: v4_mapped([192, 0, 2, 1]),
        remote: v4_mapped([192, 0, 2, 2]),
        local_port: 50_123,
        remote_port: 2049,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    flows_at(&pin.join("maps").join(maps::FLOWS))
        .insert(only_old, FlowState { seq: 7, _pad: 0 }, 0)
        .unwrap();
    // SAFETY: kill(2) on a child this test started; no memory is involved.
    unsafe { libc::kill(a.pid() as i32, libc::SIGKILL) };
    drop(a);
    // The old agent's programs stay attached with their maps; the pins now name maps of an
    // older shape: a smaller configuration record and fewer counters.
    const ARRAY: u32 = 2;
    const PERCPU_ARRAY: u32 = 6;
    for (name, map_type, value_size, entries) in [
        (maps::CONFIG, ARRAY, 8, 1),
        (maps::COUNTERS, PERCPU_ARRAY, 8, 4),
    ] {
        let path = pin.join("maps").join(name);
        std::fs::remove_file(&path).unwrap();
        pin_map(&path, map_type, 4, value_size, entries);
    }
    let peers_id = || {
        aya::maps::MapInfo::from_pin(pin.join("maps").join(maps::PEERS))
            .unwrap()
            .id()
    };
    let old_peers = peers_id();
    let mut b = Agent::run(&pair, &cfg, &args);
    b.wait_for_log("adopted the pinned attachment", Duration::from_secs(5));
    // The old programs enforce from the old policy maps until their attachments move: the new
    // agent must write its policy into maps of its own, not clear and rewrite theirs.
    assert_ne!(
        peers_id(),
        old_peers,
        "the policy maps go with the configuration"
    );
    let log = b.log();
    for name in [maps::CONFIG, maps::COUNTERS] {
        assert!(
            log.lines()
                .any(|l| l.contains("another layout") && l.contains(name)),
            "{name} replaced:\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("connection table") && l.contains(maps::FLOWS)),
        "the connection table goes with the configuration:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("another layout") && l.contains(maps::PEERS)),
        "a policy map is not said to be of another layout:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("policy map") && l.contains(maps::PEERS)),
        "the policy maps go with the configuration:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains(maps::GATES) || l.contains(maps::EVENTS)),
        "maps of the same layout that the configuration does not key are kept:\n{log}"
    );
    let info = |name: &str| aya::maps::MapInfo::from_pin(pin.join("maps").join(name)).unwrap();
    assert_eq!(
        info(maps::CONFIG).value_size() as usize,
        size_of::<Config>()
    );
    assert_eq!(info(maps::COUNTERS).max_entries(), COUNTER_BLOCKS);
    assert_eq!(
        info(maps::COUNTERS).value_size() as usize,
        size_of::<CounterBlock>()
    );
    assert_eq!(
        flows_at(&pin.join("maps").join(maps::FLOWS))
            .get(&only_old, 0)
            .ok()
            .map(|s| s.seq),
        Some(0),
        "the new connection table inherited the old one's flow, to be judged again"
    );
    std::thread::sleep(Duration::from_millis(700));
    let events = b.wait_events(1, Duration::from_secs(3));
    assert!(
        events.iter().any(|e| e["dst"] == "192.0.2.2:3260"),
        "the new agent enforces and reports: {events:?}"
    );
    b.stop(libc::SIGTERM);
    let (ok, failed, passed) = traffic.finish();
    assert!(ok > 10, "allowed exchanges: {ok}");
    assert_eq!(failed, 0, "no allowed exchange failed across the upgrade");
    assert_eq!(passed, 0, "the denied port never passed");
    uninstall(&pair.node, &pin);
    std::fs::remove_dir_all(dir).unwrap();
}

fn restart_cycle(extra: &[&str], name: &str, expected_attachments: usize) {
    let fs = BpfFs::mount();
    let pin = fs.0.join("trident-ports");
    let (pair, dir, _echo) = nas_node_with_servers(name);
    let cfg = dir.path("node.yaml");
    let mut args = vec!["--pin-dir", pin.to_str().unwrap()];
    args.extend_from_slice(extra);
    let a = Agent::run(&pair, &cfg, &args);
    let traffic = Traffic::start(&pair);
    std::thread::sleep(Duration::from_millis(700));
    // kill -9: no chance to clean up, and enforcement must hold.
    // SAFETY: kill(2) on a child this test started; no memory is involved.
    unsafe { libc::kill(a.pid() as i32, libc::SIGKILL) };
    drop(a);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        attached_programs(&pair),
        expected_attachments,
        "attachments survive kill -9"
    );
    assert!(
        tcp_echo(&pair.node, sa("192.0.2.2:3260"), Duration::from_millis(300)).is_err(),
        "still enforced after kill -9"
    );
    // A new agent adopts the pinned state.
    let peers_id = || {
        let peers = pin.join("maps").join(trident_ports_common::maps::PEERS);
        aya::maps::MapInfo::from_pin(peers).unwrap().id()
    };
    let old_peers = peers_id();
    let mut b = Agent::run(&pair, &cfg, &args);
    b.wait_for_log("adopted the pinned attachment", Duration::from_secs(5));
    assert_eq!(
        peers_id(),
        old_peers,
        "the same build keeps the pinned policy maps"
    );
    assert!(
        !b.log().contains("will NOT outlive"),
        "a BPF filesystem the host mounted lasts:\n{}",
        b.log()
    );
    assert!(
        !b.log().contains("another layout"),
        "the same build reuses every pinned map:\n{}",
        b.log()
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        attached_programs(&pair),
        expected_attachments,
        "adoption replaced, not added"
    );
    let events = b.wait_events(1, Duration::from_secs(3));
    assert!(
        events.iter().any(|e| e["dst"] == "192.0.2.2:3260"),
        "the new agent reads the pinned event stream: {events:?}"
    );
    // SIGTERM with pins: enforcement stays.
    b.stop(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, passed) = traffic.finish();
    assert!(ok > 10, "allowed exchanges: {ok}");
    assert_eq!(
        failed, 0,
        "no allowed exchange failed across kill -9 and adoption ({ok} succeeded)"
    );
    assert_eq!(passed, 0, "the denied port never passed");
    assert_eq!(
        attached_programs(&pair),
        expected_attachments,
        "SIGTERM of a pinned agent leaves enforcement in place"
    );
    // uninstall: nothing left.
    let out = uninstall(&pair.node, &pin);
    assert!(
        out.contains(&format!("removed {expected_attachments} attachment(s)")),
        "{out}"
    );
    assert_eq!(attached_programs(&pair), 0);
    assert!(!pin.exists(), "the pin directory is gone");
    tcp_echo(&pair.node, sa("192.0.2.2:3260"), T).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Under `ip netns exec` (which remounts /sys) the default pin directory is on a BPF filesystem
/// the agent has to mount itself, private to its mount namespace: the agent says at start that
/// enforcement will not outlive it, and at stop that it ends, instead of claiming it stays.
#[test]
fn a_pin_directory_that_will_not_last_is_named_as_such() {
    if !require_root("a_pin_directory_that_will_not_last_is_named_as_such") {
        return;
    }
    let (pair, dir, _echo) = nas_node_with_servers("ephemeral-pins");
    let mut a = Agent::run(
        &pair,
        &dir.config_path(),
        &["--pin-dir", "/sys/fs/bpf/trident-ports"],
    );
    assert!(
        a.log()
            .contains("pinned enforcement will NOT outlive this agent"),
        "{}",
        a.log()
    );
    a.stop(libc::SIGTERM);
    let log = a.log();
    assert!(
        log.contains("stopping: enforcement ends with this process"),
        "{log}"
    );
    assert!(!log.contains("stays in place"), "{log}");
    assert_eq!(attached_programs(&pair), 0, "and indeed nothing stays");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A start-up that fails over a pinned previous agent never leaves the interface without a
/// program: a configuration that does not parse stops the new agent before it touches the
/// datapath, and one that fails while attaching leaves the adopted attachment in place.
#[test]
fn a_failed_start_over_pinned_enforcement_keeps_it() {
    if !require_root("a_failed_start_over_pinned_enforcement_keeps_it") {
        return;
    }
    let fs = BpfFs::mount();
    let pin = fs.0.join("trident-ports");
    let (pair, dir, _echo) = nas_node_with_servers("failed-start");
    let cfg = dir.config_path();
    let pin_args = ["--pin-dir", pin.to_str().unwrap()];
    let a = Agent::run(&pair, &cfg, &pin_args);
    // SAFETY: kill(2) on a child this test started; no memory is involved.
    unsafe { libc::kill(a.pid() as i32, libc::SIGKILL) };
    drop(a);
    let traffic = Traffic::start(&pair);
    let start = |extra: &[&str]| {
        pair.node
            .command(binary().to_str().unwrap())
            .args([
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--iface",
                &pair.node_if,
            ])
            .args(pin_args)
            .args(["--socket", "none", "--metrics", "none"])
            .args(extra)
            .output()
            .unwrap()
    };
    // A backend file that does not parse.
    let good = std::fs::read_to_string(dir.path("backends/nas.yaml")).unwrap();
    dir.write_backend("nas.yaml", "version: [1\n");
    let out = start(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nas.yaml"));
    assert_eq!(attached_programs(&pair), 2, "the pinned attachments stay");
    // An interface that does not exist, after the real one was adopted.
    dir.write_backend("nas.yaml", &good);
    let out = start(&["--iface", "nosuchif0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown interface `nosuchif0`"));
    assert_eq!(attached_programs(&pair), 2, "still enforced");
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, passed) = traffic.finish();
    assert!(ok > 5, "allowed exchanges: {ok}");
    assert_eq!(
        failed, 0,
        "no allowed exchange failed across the failed starts"
    );
    assert_eq!(passed, 0, "the denied port never passed");
    uninstall(&pair.node, &pin);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn kill_9_adopt_uninstall_tcx() {
    if require_root("kill_9_adopt_uninstall_tcx") {
        restart_cycle(&[], "restart-tcx", 2);
    }
}

#[test]
fn kill_9_adopt_uninstall_legacy_tc() {
    if require_root("kill_9_adopt_uninstall_legacy_tc") {
        restart_cycle(&["--attach", "netlink"], "restart-nl", 2);
    }
}

#[test]
fn kill_9_adopt_uninstall_xdp() {
    if require_root("kill_9_adopt_uninstall_xdp") {
        restart_cycle(&["--ingress", "xdp"], "restart-xdp", 2);
    }
}

fn metric(pair: &Pair, name: &str) -> u64 {
    metrics::metric(&scrape(&pair.node), name).unwrap_or(0)
}

#[test]
fn hundred_reloads_under_traffic_and_a_bad_one() {
    if !require_root("hundred_reloads_under_traffic_and_a_bad_one") {
        return;
    }
    let (pair, dir, _echo) = nas_node_with_servers("reloads");
    let cfg = dir.path("node.yaml");
    let mut agent = Agent::run(&pair, &cfg, &["--watch-interval", "1h"]);
    let traffic = Traffic::start(&pair);
    for i in 1..=100 {
        // Alternate between two policies that both allow 2049 and deny 3260.
        let extra = if i % 2 == 0 {
            ""
        } else {
            "allow:\n  - {dst: 198.51.100.9, ports: 80, proto: tcp, reason: reload test}\n"
        };
        std::fs::write(
            &cfg,
            format!("backends: {{sources: [backends]}}\nevents: {{interval: 0s}}\n{extra}"),
        )
        .unwrap();
        // SAFETY: kill(2) on a child this test started; no memory is involved.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while agent
            .stderr
            .lock()
            .unwrap()
            .matches("policy reloaded")
            .count()
            < i
        {
            assert!(Instant::now() < deadline, "reload {i} did not happen");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Spread the reloads over a few seconds of traffic.
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, failed, passed) = traffic.finish();
    // One allow entry added or removed: each reload compiles only it (`datapath::delta`).
    let alone = agent
        .stderr
        .lock()
        .unwrap()
        .matches("compiled_alone=true")
        .count();
    assert!(alone >= 100, "reloads compiled alone: {alone} of 101");
    assert!(ok > 10, "allowed exchanges during the reloads: {ok}");
    assert_eq!(
        failed, 0,
        "an allowed exchange failed during 100 reloads ({ok} succeeded)"
    );
    assert_eq!(passed, 0, "the denied port passed during a reload");
    assert_eq!(
        metric(&pair, "trident_ports_reloads_total{result=\"success\"}"),
        101
    );
    // A bad edit of the backend: it is skipped and said so, and keeps its last good form, so
    // the policy in force does not weaken.
    std::fs::write(
        dir.path("backends/nas.yaml"),
        "version: 1\nstorageDriverName: ontap-nass\nmanagementLIF: 192.0.2.2\n",
    )
    .unwrap();
    // SAFETY: kill(2) on a child this test started; no memory is involved.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    agent.wait_for_log("keeping its last good form", Duration::from_secs(5));
    assert!(
        agent
            .stderr
            .lock()
            .unwrap()
            .contains("unknown driver `ontap-nass`")
    );
    assert_eq!(metric(&pair, "trident_ports_backends_skipped"), 1);
    // ... and the event stream carries a notice, beside the denials it may explain.
    let notice = |e: &serde_json::Value| {
        e["verdict"] == "notice"
            && e["reason"] == "backend-skipped"
            && e["hint"].as_str().unwrap_or("").contains("ontap-nass")
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while !agent.wait_events(0, Duration::ZERO).iter().any(notice) {
        assert!(
            Instant::now() < deadline,
            "no backend-skipped notice in the event stream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    tcp_echo(&pair.node, sa("192.0.2.2:2049"), T).unwrap();
    tcp_echo(&pair.node, sa("192.0.2.2:3260"), T).unwrap_err();
    // A file that does not parse at all: the reload fails and the running policy stays.
    std::fs::write(dir.path("backends/nas.yaml"), "version: [1\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    agent.wait_for_log(
        "reload failed, keeping the running policy",
        Duration::from_secs(5),
    );
    assert_eq!(
        metric(&pair, "trident_ports_reloads_total{result=\"failure\"}"),
        1
    );
    tcp_echo(&pair.node, sa("192.0.2.2:2049"), T).unwrap();
    tcp_echo(&pair.node, sa("192.0.2.2:3260"), T).unwrap_err();
    agent.stop(libc::SIGTERM);
    std::fs::remove_dir_all(dir).unwrap();
}

/// An update in place that fails part-way leaves the kernel with some of its changes (each entry
/// the old policy's or the new one's). When the sources then return to the policy in force, a
/// cluster change or a periodic look must still write that policy, or the half-applied entries
/// stay until something else changes. Here the subnets' trie is filled by the test (junk of a
/// generation no packet looks at) until one of two new subnets fits.
#[test]
fn a_failed_update_is_written_whole_when_the_sources_return_to_the_policy() {
    use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
    use trident_ports_agent::{
        agent::{
            metrics::Metrics,
            reconcile::{Reconciler, Trigger},
            sources::Snapshot,
        },
        backends::Inventory,
        config::NodeConfig,
        datapath::Datapath,
    };
    use trident_ports_common::{PeerInfo, PeerKey, limits, maps};
    if !require_root("a_failed_update_is_written_whole_when_the_sources_return_to_the_policy") {
        return;
    }
    let fs = BpfFs::mount();
    let pin = fs.0.join("in-doubt");
    let snapshot = |allow: &str| {
        Snapshot {
        config: NodeConfig::from_yaml(
            std::path::Path::new("node.yaml"),
            &format!("role: worker\nallow:\n  - {{dst: 192.0.2.10, ports: 2049, proto: tcp, reason: nfs}}\n{allow}"),
        )
        .unwrap(),
        inventory: Inventory::default(),
        local_addresses: vec![],
        sessions: None,
    }
    };
    let before = snapshot("");
    let after = snapshot(
        "  - {dst: 198.51.100.0/24, ports: 3260, proto: tcp, reason: iscsi}\n  \
         - {dst: 203.0.113.0/24, ports: 3260, proto: tcp, reason: iscsi}\n",
    );
    let mut dp = Datapath::load_pinned(Some(&pin)).unwrap();
    let policy = before.compile();
    dp.apply(&policy, 0).unwrap();
    let (notices, _rx) = tokio::sync::mpsc::unbounded_channel();
    let reconciler = Reconciler::new(dp, policy, Arc::new(Metrics::new()), notices);
    let mut trie: LpmTrie<_, PeerKey, PeerInfo> = LpmTrie::try_from(Map::LpmTrie(
        MapData::from_pin(pin.join("maps").join(maps::PEER_PREFIXES)).unwrap(),
    ))
    .unwrap();
    let policy_prefixes = |t: &LpmTrie<MapData, PeerKey, PeerInfo>| {
        t.keys()
            .filter(|k| k.as_ref().unwrap().data().generation < 2)
            .count()
    };
    assert_eq!(policy_prefixes(&trie), 0);
    let junk: Vec<Key<PeerKey>> = (0..limits::PEER_PREFIXES - 1)
        .map(|i| {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&i.to_be_bytes());
            Key::new(
                160,
                PeerKey {
                    generation: 2,
                    dir: 0,
                    _pad: [0; 2],
                    addr,
                },
            )
        })
        .collect();
    for k in &junk {
        trie.insert(k, PeerInfo { class: 0, flags: 0 }, 0).unwrap();
    }
    assert!(
        reconciler
            .reconcile(Ok(after), Trigger::Cluster, Instant::now())
            .is_none(),
        "the update fails"
    );
    assert_eq!(policy_prefixes(&trie), 1, "one subnet written in place");
    for k in &junk {
        trie.remove(k).unwrap();
    }
    // The cluster returns to the policy in force: it is written whole.
    assert!(
        reconciler
            .reconcile(Ok(before), Trigger::Cluster, Instant::now())
            .is_some()
    );
    assert_eq!(policy_prefixes(&trie), 0, "the half-applied subnet is gone");
    drop(trie);
    drop(reconciler);
    trident_ports_agent::datapath::pins::uninstall(&pin).unwrap();
}

/// Kubernetes mounts a ConfigMap as files that link through `..data`, and updates it by swapping
/// that one symlink: the agent notices and reloads.
#[test]
fn configmap_symlink_swap_reloads() {
    if !require_root("configmap_symlink_swap_reloads") {
        return;
    }
    use std::os::unix::fs::symlink;
    let (pair, dir, _echo) = nas_node_with_servers("configmap");
    let cm = dir.path("cm");
    for (version, nfsvers) in [("..v1", "4.1"), ("..v2", "3")] {
        std::fs::create_dir_all(cm.join(version)).unwrap();
        std::fs::write(
            cm.join(version).join("nas.yaml"),
            format!("version: 1\nstorageDriverName: ontap-nas\nbackendName: nas\nmanagementLIF: 192.0.2.2\ndataLIF: 192.0.2.2\nnfsMountOptions: nfsvers={nfsvers}\n"),
        )
        .unwrap();
    }
    symlink("..v1", cm.join("..data")).unwrap();
    symlink("..data/nas.yaml", cm.join("nas.yaml")).unwrap();
    std::fs::write(
        dir.path("node.yaml"),
        "backends: {sources: [cm]}\nevents: {interval: 0s}\n",
    )
    .unwrap();
    let cfg = dir.path("node.yaml");
    let mut agent = Agent::run(&pair, &cfg, &["--watch-interval", "200ms"]);
    tcp_echo(&pair.node, sa("192.0.2.2:111"), T).unwrap_err();
    // The atomic swap Kubernetes does: a new symlink renamed over ..data.
    symlink("..v2", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    agent.wait_for_log(
        "configuration or backend files changed",
        Duration::from_secs(5),
    );
    agent.wait_for_log("policy reloaded", Duration::from_secs(5));
    tcp_echo(&pair.node, sa("192.0.2.2:111"), T).unwrap();
    agent.stop(libc::SIGTERM);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn audit_and_enforce_switch_live() {
    if !require_root("audit_and_enforce_switch_live") {
        return;
    }
    let (pair, dir, _echo) = nas_node_with_servers("audit");
    let cfg = dir.path("node.yaml");
    std::fs::write(
        &cfg,
        "mode: audit\nbackends: {sources: [backends]}\nevents: {interval: 0s}\n",
    )
    .unwrap();
    let mut agent = Agent::run(&pair, &cfg, &[]);
    let mode = |m: &str| {
        let out = Command::new(binary())
            .args(["mode", m, "--socket", agent.socket.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Audit: passes, and reports what enforce would drop.
    tcp_echo(&pair.node, sa("192.0.2.2:3260"), T).unwrap();
    let ev = agent.wait_events(1, Duration::from_secs(2));
    assert_eq!(ev[0]["verdict"], "audit");
    assert_eq!(ev[0]["dst"], "192.0.2.2:3260");
    assert_eq!(mode("enforce"), "mode: enforce");
    tcp_echo(&pair.node, sa("192.0.2.2:3260"), T).unwrap_err();
    let ev = agent.wait_events(2, Duration::from_secs(2));
    assert!(ev.iter().any(|e| e["verdict"] == "denied"), "{ev:?}");
    tcp_echo(&pair.node, sa("192.0.2.2:2049"), T).unwrap();
    // Back to the configuration's mode.
    assert_eq!(mode("config"), "mode: audit");
    tcp_echo(&pair.node, sa("192.0.2.2:3260"), T).unwrap();
    assert!(
        agent
            .stderr
            .lock()
            .unwrap()
            .matches("policy loaded")
            .count()
            == 1,
        "no program or policy reload"
    );
    agent.stop(libc::SIGTERM);
    std::fs::remove_dir_all(dir).unwrap();
}

/// /etc/netns/<namespace>, which `ip netns exec` bind-mounts over /etc; removed on drop.
struct NetnsEtc(PathBuf);

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_slow_resolver_does_not_hold_up_events() {
    if !require_root("a_slow_resolver_does_not_hold_up_events") {
        return;
    }
    let (pair, dir, _echo) = nas_node_with_servers("slowdns");
    // The node's resolver asks an on-link documentation address that nobody answers: every
    // lookup of a name not in its hosts file waits out the timeout.
    let etc = NetnsEtc(PathBuf::from("/etc/netns").join(&pair.node.name));
    std::fs::create_dir_all(&etc.0).unwrap();
    std::fs::write(etc.0.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(
        etc.0.join("resolv.conf"),
        "nameserver 192.0.2.53\noptions timeout:4 attempts:1\n",
    )
    .unwrap();
    let cfg = dir.path("node.yaml");
    let mut agent = Agent::run(&pair, &cfg, &["--watch-interval", "1h"]);
    std::fs::write(
        dir.path("backends/named.yaml"),
        "version: 1\nstorageDriverName: ontap-nas\nbackendName: named\nmanagementLIF: filer.lab.test\n",
    )
    .unwrap();
    // SAFETY: kill(2) on a child this test started; no memory is involved.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    agent.wait_for_log("SIGHUP: reloading", Duration::from_secs(2));
    let started = Instant::now();
    // While the reload waits on the resolver, a denied connection is reported at once.
    assert!(tcp_echo(&pair.node, sa("192.0.2.2:3260"), T).is_err());
    let events = agent.wait_events(1, Duration::from_secs(2));
    assert!(
        events.iter().any(|e| e["dst"] == "192.0.2.2:3260"),
        "{events:?}"
    );
    let reported = started.elapsed();
    assert!(
        !agent.stderr.lock().unwrap().contains("policy reloaded"),
        "the reload was meant to still be resolving"
    );
    assert!(
        reported < Duration::from_secs(3),
        "the event took {reported:?}, behind the 4 s lookup"
    );
    // The lookup fails in the end: that backend is skipped, and the log says why.
    agent.wait_for_log("policy reloaded", Duration::from_secs(20));
    let log = agent.stderr.lock().unwrap().clone();
    assert!(
        log.lines().any(|l| l.contains("backend named")
            && l.contains("skipped")
            && l.contains("filer.lab.test")),
        "{log}"
    );
    assert!(tcp_echo(&pair.node, sa("192.0.2.2:2049"), T).is_ok());
    agent.stop(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(dir);
}
