//! The cluster source at scale: a real API server holding N backends (TridentBackendConfigs)
//! and M PersistentVolumes of Trident's driver, the agent watching it, and the time from an
//! object change (one backend's management LIF) to the new policy in force: the request sent
//! until the agent logs the reload, which follows the kernel maps' switch. Then the agent's
//! resident memory with that cluster cached.
use std::time::{Duration, Instant};

use serde_json::json;
use trident_ports_tests::{
    agent::Agent,
    apiserver::ApiServer,
    kube::{Kubectl, install_crds},
    netns::Pair,
    node::NodeDir,
};

fn backend(i: usize, mgmt: &str) -> serde_json::Value {
    json!({
        "apiVersion": "trident.netapp.io/v1",
        "kind": "TridentBackendConfig",
        "metadata": {"name": format!("tbc-{i}"), "namespace": "trident"},
        "spec": {
            "version": 1,
            "storageDriverName": "ontap-nas",
            "backendName": format!("nas-{i}"),
            "managementLIF": mgmt,
            "dataLIF": format!("2001:db8:d::{i:x}"),
            "nfsMountOptions": "nfsvers=4.1",
        },
        "status": {"backendInfo": {"backendName": format!("nas-{i}"), "backendUUID": format!("uuid-{i}")}},
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The `took` of the last line in `log` that says `what` (a `Duration`'s debug form).
fn last_took(log: &str, what: &str) -> Option<Duration> {
    let line = log.lines().rev().find(|l| l.contains(what))?;
    let v = line.split("took=").nth(1)?.split_whitespace().next()?;
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')?);
    let num: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => num,
        "ms" => num / 1e3,
        "µs" => num / 1e6,
        "ns" => num / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

pub(crate) fn cluster(smoke: bool) {
    let (backends, pvs, rounds) = if smoke {
        (100, 1_000, 5)
    } else {
        (1_000, 10_000, 40)
    };
    println!("## Cluster source\n");
    let pair = Pair::standard();
    let Some(api) = ApiServer::start_in("bench-cluster", Some(&pair.node.name)) else {
        panic!("the cluster benchmark needs TP_KUBE_APISERVER (`cargo xtask bench` sets it)");
    };
    let k = Kubectl::admin(&api);
    install_crds(&k);
    k.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: trident}\n");
    let t = Instant::now();
    let mut objects: Vec<serde_json::Value> = (0..backends)
        .map(|i| backend(i, &format!("2001:db8:a::{i:x}")))
        .collect();
    for c in 0..10 {
        objects.push(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": format!("class-{c}")},
            "provisioner": "csi.trident.netapp.io",
            "mountOptions": [if c % 2 == 0 { "nfsvers=4.1" } else { "nfsvers=3" }],
            "parameters": {"backendType": "ontap-nas"},
        }));
    }
    for j in 0..pvs {
        objects.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("pvc-{j:05}")},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": format!("class-{}", j % 10),
                "mountOptions": [if j % 2 == 0 { "nfsvers=4.1" } else { "nfsvers=3" }],
                "csi": {
                    "driver": "csi.trident.netapp.io",
                    "volumeHandle": format!("pvc-{j:05}"),
                    "volumeAttributes": {"backendUUID": format!("uuid-{}", j % backends), "protocol": "file"},
                },
            },
        }));
    }
    k.create_many(&objects);
    let populated = t.elapsed();
    drop(objects);
    let node = NodeDir::new("bench-cluster").config(&format!(
        "kubernetes: {{stateFile: {}}}\nevents: {{interval: 1s}}\n",
        api.dir.join("state.json").display()
    ));
    let kc = api.admin_kubeconfig();
    let t = Instant::now();
    let mut agent = Agent::run(
        &pair,
        &node.config_path(),
        &[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--node-name",
            "node-1",
        ],
    );
    let started = t.elapsed();
    const WIDENED: &str = "policy widened";
    const RELOADED: &str = "policy reloaded";
    let count = |a: &Agent, what: &str| a.log().matches(what).count();
    // Per change: the new address in force (widened), the old one gone (reloaded after the
    // debounce), and the agent's own share of each.
    let (mut opened, mut took) = (Vec::new(), Vec::new());
    let (mut agent_opened, mut agent_took) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        std::thread::sleep(Duration::from_millis(700));
        let before = (count(&agent, WIDENED), count(&agent, RELOADED));
        let t = Instant::now();
        k.apply(&serde_json::to_string(&backend(r, &format!("2001:db8:c::{r:x}"))).unwrap());
        let mut widened = None;
        while count(&agent, RELOADED) == before.1 {
            if widened.is_none() && count(&agent, WIDENED) > before.0 {
                widened = Some(t.elapsed());
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no reload for change {r}:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        took.push(t.elapsed());
        let log = agent.log();
        opened.push(widened.unwrap_or_else(|| panic!("change {r} was not widened first:\n{log}")));
        agent_opened
            .push(last_took(&log, WIDENED).expect("the widening log says how long it took"));
        agent_took.push(last_took(&log, RELOADED).expect("the reload log says how long it took"));
    }
    opened.sort();
    agent_opened.sort();
    took.sort();
    agent_took.sort();
    std::thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    agent.stop(libc::SIGTERM);
    println!(
        "{backends} TridentBackendConfigs, 10 StorageClasses and {pvs} PersistentVolumes of Trident's driver \
         (created in {populated:.1?}); the agent (release) attached {started:.2?} after start, its first \
         policy compiled from the complete list.\n"
    );
    println!("| from an object change to enforcement ({rounds} changes) | p50 | p99 | max |");
    println!("|---|---|---|---|");
    let row = |what: &str, d: &[Duration]| {
        println!(
            "| {what} | {:.1?} | {:.1?} | {:.1?} |",
            percentile(d, 0.5),
            percentile(d, 0.99),
            d[d.len() - 1]
        );
    };
    row(
        "one backend's managementLIF changed: the new address allowed (`policy widened`)",
        &opened,
    );
    row(
        "of which the agent: from reading its sources to the widened policy in force (`took`)",
        &agent_opened,
    );
    row(
        "the old address gone (`policy reloaded`, after the 500 ms debounce)",
        &took,
    );
    row(
        "of which the agent: from reading its sources to the policy in force (`took`)",
        &agent_took,
    );
    println!(
        "\nAgent resident memory with that cluster cached: {:.1} MiB.\n",
        rss_kib / 1024.0
    );
}
