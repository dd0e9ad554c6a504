//! Egress enforcement with real TCP and UDP traffic between two namespaces, through the agent
//! binary, and the JSON events it writes.
use std::time::Duration;

use trident_ports_tests::{
    agent::Agent,
    netns::Pair,
    require_root,
    traffic::{Echo, sa, tcp_echo, udp_echo},
};

const T: Duration = Duration::from_millis(700);

fn write_config(dir: &std::path::Path, text: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("node.yaml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tp-test-{}-{name}", std::process::id()))
}

#[test]
fn egress_allow_list_with_events_and_clean_detach() {
    if !require_root("egress_allow_list_with_events_and_clean_detach") {
        return;
    }
    let pair = Pair::standard();
    let _echo = Echo::start(
        &pair.storage,
        &[
            sa("192.0.2.2:2049"),
            sa("192.0.2.2:3260"),
            sa("192.0.2.3:3260"),
            sa("192.0.2.2:111"),
        ],
    );
    let cfg = write_config(
        &tmpdir("egress"),
        "allow:\n\
         \x20 - {dst: 192.0.2.2, ports: 2049, proto: tcp, reason: nfs}\n\
         \x20 - {dst: 192.0.2.2, ports: 111, proto: udp, reason: rpcbind}\n\
         events: {interval: 0s}\n",
    );
    // Before the agent, everything flows.
    tcp_echo(&pair.node, sa("192.0.2.2:3260"), T).unwrap();

    let mut agent = Agent::run(&pair, std::path::Path::new(&cfg), &[]);
    // Allowed (ip, port, proto) connects and exchanges data, TCP and UDP.
    tcp_echo(&pair.node, sa("192.0.2.2:2049"), T).unwrap();
    udp_echo(&pair.node, sa("192.0.2.2:111"), T).unwrap();
    // A port not allowed on a protected address fails...
    let err = tcp_echo(&pair.node, sa("192.0.2.2:3260"), T).unwrap_err();
    assert!(err.contains("connect"), "{err}");
    // ...and so does the right port with the wrong protocol.
    udp_echo(&pair.node, sa("192.0.2.2:2049"), T).unwrap_err();
    // An address that is not protected is untouched.
    tcp_echo(&pair.node, sa("192.0.2.3:3260"), T).unwrap();

    let events = agent.wait_events(2, Duration::from_secs(3));
    let tcp: Vec<_> = events
        .iter()
        .filter(|e| e["dst"] == "192.0.2.2:3260")
        .collect();
    assert!(
        !tcp.is_empty(),
        "no event for the denied TCP connect: {events:?}"
    );
    let e = tcp[0].as_object().unwrap();
    assert_eq!(e["verdict"], "denied");
    assert_eq!(e["direction"], "egress");
    assert_eq!(e["iface"], pair.node_if.as_str());
    assert_eq!(e["proto"], "tcp");
    assert_eq!(e["reason"], "no-rule");
    assert_eq!(e["tcp_flags"], "SYN");
    assert!(
        e["src"].as_str().unwrap().starts_with("192.0.2.1:"),
        "{e:?}"
    );
    let ts = e["ts"].as_str().unwrap();
    humantime_check(ts);
    assert!(
        events
            .iter()
            .any(|e| e["dst"] == "192.0.2.2:2049" && e["proto"] == "udp"),
        "{events:?}"
    );
    // Nothing for allowed or unprotected traffic.
    assert!(
        !events
            .iter()
            .any(|e| e["dst"] == "192.0.2.2:2049" && e["proto"] == "tcp"),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["dst"].as_str().unwrap().starts_with("192.0.2.3")),
        "{events:?}"
    );

    agent.stop(libc::SIGTERM);
    // Nothing stays attached: the denied port works again and no tc/tcx/xdp program remains.
    tcp_echo(&pair.node, sa("192.0.2.2:3260"), T).unwrap();
    assert_nothing_attached(&pair);
}

fn humantime_check(ts: &str) {
    // RFC 3339 in UTC: 2026-11-27T09:21:00.649036Z
    assert_eq!(&ts[4..5], "-", "{ts}");
    assert_eq!(&ts[10..11], "T", "{ts}");
    assert!(ts.ends_with('Z'), "{ts}");
}

pub fn assert_nothing_attached(pair: &Pair) {
    for dir in ["egress", "ingress"] {
        let filters = pair
            .node
            .exec(&["tc", "filter", "show", "dev", &pair.node_if, dir]);
        assert!(
            filters.trim().is_empty(),
            "tc {dir} filters remain: {filters}"
        );
    }
    let link = pair.node.exec(&["ip", "-d", "link", "show", &pair.node_if]);
    assert!(!link.contains("xdp"), "xdp remains: {link}");
    // Kernels before 6.6 have no tcx, so nothing can remain attached there.
    if !trident_ports_agent::datapath::tcx_supported() {
        return;
    }
    let iface = pair.node_if.clone();
    let tcx = pair.node.within(move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        let mut n = 0;
        for t in [TcAttachType::Egress, TcAttachType::Ingress] {
            let (_, progs) = SchedClassifier::query_tcx(&iface, t).expect("query tcx");
            n += progs.len();
        }
        n
    });
    assert_eq!(tcx, 0, "tcx programs remain");
}

/// The errors a user meets first are clear: missing privileges, an unknown interface.
#[test]
fn clear_errors_for_privileges_and_interfaces() {
    if !require_root("clear_errors_for_privileges_and_interfaces") {
        return;
    }
    let pair = Pair::standard();
    let cfg = write_config(
        &tmpdir("errors"),
        "allow:\n  - {dst: 192.0.2.2, ports: 2049, proto: tcp, reason: nfs}\n",
    );
    let agent = trident_ports_tests::agent::binary();
    // As an unprivileged user: no capabilities at all.
    let out = pair
        .node
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&agent)
        .args([
            "run",
            "--config",
            &cfg,
            "--iface",
            &pair.node_if,
            "--pin-dir",
            "none",
            "--socket",
            "none",
            "--metrics",
            "none",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs root or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
        "{err}"
    );
    assert!(err.contains("missing: CAP_NET_ADMIN"), "{err}");
    // An interface that does not exist: named, and nothing is left attached anywhere.
    let out = pair
        .node
        .command(agent.to_str().unwrap())
        .args([
            "run",
            "--config",
            &cfg,
            "--iface",
            "nosuchif0",
            "--pin-dir",
            "none",
            "--socket",
            "none",
            "--metrics",
            "none",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown interface `nosuchif0`"), "{err}");
    assert_nothing_attached(&pair);
}
