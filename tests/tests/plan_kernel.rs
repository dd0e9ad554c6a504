//! `plan` and `run` agree, host names resolve through the namespace's /etc/hosts, and the
//! nftables form loads in the kernel's nftables (`nft -c`).
use std::{path::PathBuf, process::Command, time::Duration};

use trident_ports_tests::{
    agent::{Agent, binary},
    netns::{NetNs, Pair},
    require_root,
    traffic::{Echo, sa, tcp_echo, udp_echo},
};

const T: Duration = Duration::from_millis(700);

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../trident-ports-agent/tests/fixtures/backends")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tp-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn nftables_plan_loads_with_nft_check() {
    if !require_root("nftables_plan_loads_with_nft_check") {
        return;
    }
    let ns = NetNs::new("tpf");
    let dir = tmpdir("nft");
    let cfg = dir.join("node.yaml");
    std::fs::write(
        &cfg,
        "cluster: {cidrs: [192.0.2.0/24, 2001:db8::/64]}\n\
         directory: {kerberos: [192.0.2.60], ldap: [2001:db8::61]}\n\
         backends:\n  dataAddresses:\n    anf-prod: [203.0.113.64/26]\n    gcnv-smb: [2001:db8:1::/64]\n\
         allow:\n  - {dst: 198.51.100.10, ports: \"8000-8010\", proto: tcp, reason: test}\n",
    )
    .unwrap();
    for role in ["worker", "controller"] {
        let out = Command::new(binary())
            .args([
                "plan",
                "--config",
                cfg.to_str().unwrap(),
                "--backends",
                fixtures().to_str().unwrap(),
                "--role",
                role,
                "--format",
                "nftables",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.join(format!("{role}.nft"));
        std::fs::write(&file, &out.stdout).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("ipv4_addr . inet_proto . inet_service"),
            "{text}"
        );
        let check = ns.try_exec(&["nft", "-c", "-f", file.to_str().unwrap()]);
        assert!(
            check.status.success(),
            "nft -c rejects the {role} plan: {}\n{text}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    // And a plan with a broken set element would be rejected: the check can fail.
    let bad = dir.join("bad.nft");
    std::fs::write(&bad, "table inet t { set s { type ipv4_addr . inet_proto . inet_service; elements = { 192.0.2.1 . tcp } } }\n").unwrap();
    assert!(
        !ns.try_exec(&["nft", "-c", "-f", bad.to_str().unwrap()])
            .status
            .success()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn host_names_resolve_through_the_namespace_hosts_file() {
    if !require_root("host_names_resolve_through_the_namespace_hosts_file") {
        return;
    }
    let ns = NetNs::new("tph");
    // `ip netns exec` bind-mounts /etc/netns/<name>/hosts over /etc/hosts.
    let etc = PathBuf::from("/etc/netns").join(&ns.name);
    std::fs::create_dir_all(&etc).unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _c = Cleanup(etc.clone());
    std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n192.0.2.90 svm-mgmt.storage.test\n2001:db8::91 svm-data.storage.test\n").unwrap();
    let dir = tmpdir("hosts");
    let backend = dir.join("nas.yaml");
    std::fs::write(
        &backend,
        "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas-hosts\nmanagementLIF: svm-mgmt.storage.test\n\
         dataLIF: svm-data.storage.test\nnfsMountOptions: nfsvers=4.1\n",
    )
    .unwrap();
    let out = ns
        .command(binary().to_str().unwrap())
        .args([
            "plan",
            "--backends",
            backend.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = v["entries"].as_array().unwrap();
    let mgmt = entries
        .iter()
        .find(|e| e["ports"][0] == 443)
        .expect("mgmt entry");
    assert_eq!(mgmt["dst"], "192.0.2.90/32");
    assert!(
        mgmt["source"]
            .as_str()
            .unwrap()
            .contains("managementLIF (svm-mgmt.storage.test -> 192.0.2.90)"),
        "{mgmt}"
    );
    let data = entries
        .iter()
        .find(|e| e["ports"][0] == 2049)
        .expect("data entry");
    assert_eq!(data["dst"], "2001:db8::91/128");
    // Outside the namespace the name does not resolve: the backend is skipped, and the plan
    // says which field and why.
    let out = Command::new(binary())
        .args(["plan", "--backends", backend.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: backend nas-hosts (")
            && text.contains("skipped: managementLIF")
            && text.contains("does not resolve"),
        "{text}"
    );
    assert!(!text.contains("nas-hosts  "), "no entries for it: {text}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `run` enforces the compiled plan: an NFSv4.1 backend reaches 2049 and management, and the
/// NFSv3 ports on the same storage address are denied with events.
#[test]
fn run_enforces_the_plan_compiled_from_backends() {
    if !require_root("run_enforces_the_plan_compiled_from_backends") {
        return;
    }
    let pair = Pair::standard();
    let _echo = Echo::start(
        &pair.storage,
        &[
            sa("192.0.2.2:443"),
            sa("192.0.2.2:2049"),
            sa("192.0.2.2:111"),
            sa("192.0.2.2:635"),
            sa("[2001:db8::2]:2049"),
            sa("[2001:db8::2]:111"),
        ],
    );
    let dir = tmpdir("run-plan");
    std::fs::create_dir_all(dir.join("backends")).unwrap();
    std::fs::write(
        dir.join("backends/nas.yaml"),
        "version: 1\nstorageDriverName: ontap-nas\nbackendName: nas-v4\nmanagementLIF: 192.0.2.2\ndataLIF: 192.0.2.2\n\
         nfsMountOptions: nfsvers=4.1\n---\n\
         version: 1\nstorageDriverName: ontap-nas\nbackendName: nas-v4-ipv6\nmanagementLIF: \"[2001:db8::2]\"\n\
         dataLIF: \"[2001:db8::2]\"\nnfsMountOptions: nfsvers=4\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("node.yaml"),
        "backends: {sources: [backends]}\nevents: {interval: 0s}\n",
    )
    .unwrap();
    let cfg = dir.join("node.yaml");
    let mut agent = Agent::run(&pair, &cfg, &[]);
    tcp_echo(&pair.node, sa("192.0.2.2:443"), T).unwrap();
    tcp_echo(&pair.node, sa("192.0.2.2:2049"), T).unwrap();
    tcp_echo(&pair.node, sa("[2001:db8::2]:2049"), T).unwrap();
    tcp_echo(&pair.node, sa("192.0.2.2:111"), T).unwrap_err();
    udp_echo(&pair.node, sa("192.0.2.2:111"), T).unwrap_err();
    tcp_echo(&pair.node, sa("192.0.2.2:635"), T).unwrap_err();
    udp_echo(&pair.node, sa("[2001:db8::2]:111"), T).unwrap_err();
    udp_echo(&pair.node, sa("192.0.2.2:2049"), T).unwrap_err();
    let events = agent.wait_events(5, Duration::from_secs(3));
    for (dst, proto) in [
        ("192.0.2.2:111", "tcp"),
        ("192.0.2.2:111", "udp"),
        ("192.0.2.2:635", "tcp"),
        ("[2001:db8::2]:111", "udp"),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["dst"] == dst && e["proto"] == proto && e["reason"] == "no-rule"),
            "no event for {proto} {dst}: {events:?}"
        );
    }
    agent.stop(libc::SIGINT);
    std::fs::remove_dir_all(dir).unwrap();
}
