//! `cargo xtask bench soak [--minutes N]` (root): the storage lab's NFS and iSCSI clients and an
//! iperf3 stream through a pinned agent for N minutes (default 10), with a policy reload every
//! second, a switch to audit and back every 10 s, and kill -9 plus restart every minute; then
//! (part `flood`) a flood of distinct denied flows from many sources beside the iperf3 stream.
//!
//! Reports: allowed operations that failed (target 0), denied probes that passed while
//! enforcing (target 0), the agent's resident memory and open descriptors over each life, events
//! lost, and for the flood: memory before and after, and iperf3 throughput with and without it.
//! Correctness targets fail the run; the rest is reported.
use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use trident_ports_tests::{
    agent::{Agent, binary, uninstall},
    bpffs::BpfFs,
    lab::Lab,
    metrics,
    netns::NetNs,
    node::NodeDir,
    traffic::{sa, tcp_echo},
};

const BACKENDS: &str = "\
version: 1
storageDriverName: ontap-nas
backendName: nas
managementLIF: 192.0.2.3
dataLIF: 192.0.2.2
---
version: 1
storageDriverName: ontap-san
backendName: san
managementLIF: 192.0.2.3
useCHAP: true
";

/// The node configuration; `extra` alternates between reloads.
fn config(extra: &str) -> String {
    format!(
        "backends:\n  sources: [backends]\n  dataAddresses: {{san: [192.0.2.2/32]}}\n\
         events: {{interval: 1s}}\nallow:\n  - {{dst: 192.0.2.2, ports: 5201, proto: tcp, reason: iperf3}}\n{extra}"
    )
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    fn record(&self, ok: bool) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn get(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// The agent's own process: `Agent` runs it under `ip netns exec`, whose child it is.
fn agent_pid(a: &Agent) -> u32 {
    let wrapper = a.pid();
    std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(wrapper)
}

fn iperf3(ns: &NetNs, args: &[&str]) -> Child {
    iperf3_on(ns, None, args)
}

/// iperf3, on one CPU when `cpu` names it.
fn iperf3_on(ns: &NetNs, cpu: Option<usize>, args: &[&str]) -> Child {
    let mut c = match cpu {
        Some(n) => {
            let mut c = ns.command("taskset");
            c.args(["-c", &n.to_string(), "iperf3"]);
            c
        }
        None => ns.command("iperf3"),
    };
    c.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iperf3")
}

/// A server that is stopped (and reaped) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn set_mode(socket: &Path, mode: &str) {
    let out = Command::new(binary())
        .args(["mode", mode, "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mode {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One agent's life: (age, RSS KiB, descriptors) samples, and events it lost.
struct Life {
    samples: Vec<(Duration, u64, u64)>,
    lost: u64,
}

fn soak(minutes: f64) -> bool {
    let run = Duration::from_secs_f64(minutes * 60.0);
    let lab = Lab::start();
    let fs = BpfFs::mount();
    let pin = fs.0.join("trident-ports");
    let node = NodeDir::at(lab.dir.join("agent-soak"))
        .backend("backends.yaml", BACKENDS)
        .raw_config(&config(""));
    let pin_args = ["--pin-dir", pin.to_str().unwrap(), "--watch-interval", "1h"];
    let start = || Agent::run(&lab.pair, &node.config_path(), &pin_args);
    let mut agent = start();
    let mut born = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let enforcing = Arc::new(AtomicBool::new(true));
    let (nfs, iscsi, probes) = (
        Arc::new(Counts::default()),
        Arc::new(Counts::default()),
        Arc::new(AtomicU64::new(0)),
    );
    let _server = Server(iperf3(
        &lab.pair.storage,
        &["-s", "-B", "192.0.2.2", "-p", "5201"],
    ));
    std::thread::sleep(Duration::from_millis(300));
    let secs = run.as_secs().max(5).to_string();
    let client = iperf3(
        &lab.pair.node,
        &[
            "-c",
            "192.0.2.2",
            "-p",
            "5201",
            "-t",
            &secs,
            "-b",
            "200M",
            "-J",
        ],
    );
    let ok = std::thread::scope(|s| {
        s.spawn(|| {
            let mut v = 3;
            while !stop.load(Ordering::Relaxed) {
                nfs.record(
                    lab.nfs_ls("192.0.2.2", v)
                        .is_ok_and(|o| o.contains("hello.txt")),
                );
                v = if v == 3 { 4 } else { 3 };
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                iscsi.record(
                    lab.iscsi_inq("192.0.2.2")
                        .is_ok_and(|o| o.contains("DIRECT_ACCESS")),
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        s.spawn(|| {
            // A port no backend needs: it must never open while enforcing.
            while !stop.load(Ordering::Relaxed) {
                let was = enforcing.load(Ordering::SeqCst);
                let opened = tcp_echo(
                    &lab.pair.node,
                    sa("192.0.2.2:2050"),
                    Duration::from_millis(100),
                )
                .is_ok();
                if opened && was && enforcing.load(Ordering::SeqCst) {
                    probes.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });

        let started = Instant::now();
        let mut lives = vec![Life {
            samples: Vec::new(),
            lost: 0,
        }];
        let mut tick = 0u64;
        while started.elapsed() < run {
            std::thread::sleep(Duration::from_secs(1));
            tick += 1;
            let extra = if tick.is_multiple_of(2) {
                ""
            } else {
                "  - {dst: 198.51.100.9, ports: 80, proto: tcp, reason: soak reload}\n"
            };
            // The allow list gets the extra entry on odd ticks (it sits under `allow:`).
            std::fs::write(node.config_path(), config(extra)).unwrap();
            // SAFETY: kill(2) on the agent this bench started; no memory is involved.
            unsafe { libc::kill(agent_pid(&agent) as i32, libc::SIGHUP) };
            if tick.is_multiple_of(5) {
                let pid = agent_pid(&agent);
                lives
                    .last_mut()
                    .unwrap()
                    .samples
                    .push((born.elapsed(), rss_kib(pid), fds(pid)));
            }
            if tick.is_multiple_of(10) {
                enforcing.store(false, Ordering::SeqCst);
                set_mode(&agent.socket, "audit");
                std::thread::sleep(Duration::from_millis(500));
                set_mode(&agent.socket, "enforce");
                std::thread::sleep(Duration::from_millis(200));
                enforcing.store(true, Ordering::SeqCst);
            }
            if tick.is_multiple_of(60) && started.elapsed() + Duration::from_secs(5) < run {
                lives.last_mut().unwrap().lost = lost(&lab.pair.node);
                // SAFETY: as above.
                unsafe { libc::kill(agent_pid(&agent) as i32, libc::SIGKILL) };
                agent = start();
                born = Instant::now();
                lives.push(Life {
                    samples: Vec::new(),
                    lost: 0,
                });
            }
        }
        lives.last_mut().unwrap().lost = lost(&lab.pair.node);
        stop.store(true, Ordering::Relaxed);
        let out = client.wait_with_output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let iperf_ok = out.status.success() && json.get("error").is_none();
        let gbits = json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9;
        let retrans = json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);

        let (nfs_ok, nfs_failed) = nfs.get();
        let (iscsi_ok, iscsi_failed) = iscsi.get();
        let passed = probes.load(Ordering::Relaxed);
        println!(
            "## Soak: {minutes} min, {tick} reloads, {} mode switches, {} restarts (kill -9)\n",
            tick / 10,
            lives.len() - 1
        );
        println!("| what | result | target |\n|---|---|---|");
        println!("| NFS v3/v4 listings | {nfs_ok} ok, {nfs_failed} failed | 0 failed |");
        println!("| iSCSI inquiries | {iscsi_ok} ok, {iscsi_failed} failed | 0 failed |");
        println!(
            "| iperf3 stream (200 Mbit/s offered) | {}, {gbits:.2} Gbit/s, {retrans} retransmits | completes |",
            if iperf_ok { "completed" } else { "FAILED" }
        );
        println!("| denied probes that passed while enforcing | {passed} | 0 |");
        for (i, l) in lives.iter().enumerate() {
            let first = l
                .samples
                .iter()
                .find(|s| s.0 >= Duration::from_secs(10))
                .or(l.samples.first());
            let last = l.samples.last();
            if let (Some(f), Some(z)) = (first, last) {
                let growth = |a: u64, b: u64| {
                    if a == 0 {
                        0.0
                    } else {
                        (b as f64 - a as f64) * 100.0 / a as f64
                    }
                };
                println!(
                    "| agent life {i}: RSS, descriptors from {:.0} s to {:.0} s | {} -> {} KiB ({:+.1}%), {} -> {} ({:+.1}%); {} events lost | no growth beyond 5% |",
                    f.0.as_secs_f64(),
                    z.0.as_secs_f64(),
                    f.1,
                    z.1,
                    growth(f.1, z.1),
                    f.2,
                    z.2,
                    growth(f.2, z.2),
                    l.lost
                );
            }
        }
        println!();
        nfs_failed == 0 && iscsi_failed == 0 && passed == 0 && iperf_ok
    });
    drop(agent);
    uninstall(&lab.pair.node, &pin);
    ok
}

fn lost(node: &NetNs) -> u64 {
    let text = metrics::scrape(node);
    ["egress", "ingress"]
        .iter()
        .filter_map(|d| {
            metrics::metric(
                &text,
                &format!("trident_ports_events_total{{direction=\"{d}\",result=\"lost\"}}"),
            )
        })
        .sum()
}

/// A flood of distinct denied flows (many sources, a protected one among them, every datagram
/// its own flow) beside an iperf3 stream: memory must stay flat and the stream keep its pace.
fn flood(seconds: u64) -> bool {
    let lab = Lab::start_with(NetNs::new("tpn"), &[]);
    // No callbacks, and 192.0.2.16/28 protected (a KDC range): every datagram from storage to
    // the node is unsolicited, and denied. Port 5202: the stream of the pinned runs.
    let node = NodeDir::at(lab.dir.join("agent-flood"))
        .backend("backends.yaml", BACKENDS)
        .raw_config(&config(
            "  - {dst: 192.0.2.16/28, ports: 88, proto: tcp, reason: flood sources}\n  - {dst: 192.0.2.2, ports: 5202, proto: tcp, reason: iperf3 pinned}\nnfs: {callbacks: false}\n",
        ));
    let agent = Agent::run(&lab.pair, &node.config_path(), &[]);
    let pid = agent_pid(&agent);
    let _server = Server(iperf3(
        &lab.pair.storage,
        &["-s", "-B", "192.0.2.2", "-p", "5201"],
    ));
    // The same stream with its client and server on CPU 0 and the flood's sender on the last
    // CPU: what the flood costs the stream through the datapath rather than through a shared CPU.
    let last_cpu = std::thread::available_parallelism().map_or(1, |n| n.get() - 1);
    let _pinned_server = Server(iperf3_on(
        &lab.pair.storage,
        Some(0),
        &["-s", "-B", "192.0.2.2", "-p", "5202"],
    ));
    std::thread::sleep(Duration::from_millis(300));
    let throughput = |secs: u64, pinned: bool| -> f64 {
        let out = iperf3_on(
            &lab.pair.node,
            pinned.then_some(0),
            &[
                "-c",
                "192.0.2.2",
                "-p",
                if pinned { "5202" } else { "5201" },
                "-t",
                &secs.to_string(),
                "-J",
            ],
        )
        .wait_with_output()
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9
    };
    let quiet = throughput(seconds.min(10), false);
    let quiet_pinned = throughput(seconds.min(10), true);
    let rss_before = rss_kib(pid);
    // Storage addresses flood the node's ports: unsolicited, denied, each (port pair) a new flow.
    let sources: Vec<String> = std::iter::once("192.0.2.2".to_string())
        .chain((16..32).map(|i| format!("192.0.2.{i}")))
        .collect();
    for a in &sources[1..] {
        lab.pair.storage.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            &lab.pair.storage_if,
        ]);
    }
    let flooder = Flooder::start(&lab.pair.storage, &sources, None);
    let started = Instant::now();
    // RSS through the flood: the event history fills to its bound, then stays.
    let sampler = std::thread::spawn(move || {
        let mut samples = Vec::new();
        for i in 1..=4 {
            let at = Duration::from_secs(seconds) * i / 4;
            std::thread::sleep(at.saturating_sub(started.elapsed()));
            samples.push(rss_kib(pid));
        }
        samples
    });
    let flooded = throughput(seconds, false);
    let rss_during = sampler.join().unwrap();
    let n = flooder.finish();
    let pinned_flooder = Flooder::start(&lab.pair.storage, &sources, Some(last_cpu));
    let flooded_pinned = throughput(seconds.min(10), true);
    let n_pinned = pinned_flooder.finish();
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib(pid);
    let text = metrics::scrape(&lab.pair.node);
    let m = |name: &str| metrics::metric(&text, name).unwrap_or(0);
    let denied = m("trident_ports_packets_total{direction=\"ingress\",verdict=\"denied\"}");
    let emitted = m("trident_ports_events_total{direction=\"ingress\",result=\"emitted\"}");
    let lost = m("trident_ports_events_total{direction=\"ingress\",result=\"lost\"}");
    let limited = m("trident_ports_events_total{direction=\"ingress\",result=\"rate_limited\"}");
    // The control: the same flood and stream with no filter at all. On two CPUs the flooding
    // process itself competes with iperf3; this separates its share from the filter's.
    drop(agent);
    std::thread::sleep(Duration::from_millis(300));
    let control = Flooder::start(&lab.pair.storage, &sources, None);
    let unfiltered = throughput(seconds.min(10), false);
    control.finish();
    let control = Flooder::start(&lab.pair.storage, &sources, Some(last_cpu));
    let unfiltered_pinned = throughput(seconds.min(10), true);
    control.finish();
    let pct = |x: f64, of: f64| x * 100.0 / of.max(1e-9);
    println!("## Flood: {seconds} s of distinct denied flows beside one iperf3 stream\n");
    println!("| what | result | target |\n|---|---|---|");
    let distinct = n.min(sources.len() as u64 * 64_000);
    println!(
        "| datagrams sent | {n} ({:.0}/s), {distinct} distinct flows | 1,000,000 flows in 60 s |",
        n as f64 / seconds as f64
    );
    println!("| denied by the kernel | {denied} (with the pinned run's {n_pinned}) | all sent |");
    println!(
        "| events emitted, over the per-CPU budget, lost | {emitted}, {limited}, {lost} | gated per flow and budgeted per CPU (10,000/s); a verdict never waits on them |"
    );
    println!(
        "| agent RSS before; at each quarter of the flood; after | {rss_before}; {rss_during:?}; {rss_after} KiB | flat once the bounded history (10,000 events) is full |"
    );
    println!(
        "| iperf3 without, with the flood | {quiet:.2}, {flooded:.2} Gbit/s ({:.0}%) | within 10% |",
        pct(flooded, quiet)
    );
    println!(
        "| control: iperf3 with the same flood and no filter | {unfiltered:.2} Gbit/s ({:.0}%) | the generator's own share |",
        pct(unfiltered, quiet)
    );
    println!(
        "| iperf3 on CPU 0, the flood's sender on CPU {last_cpu}: without, with the flood; with it and no filter | {quiet_pinned:.2}, {flooded_pinned:.2} ({:.0}%); {unfiltered_pinned:.2} Gbit/s ({:.0}%) | within 10% |",
        pct(flooded_pinned, quiet_pinned),
        pct(unfiltered_pinned, quiet_pinned)
    );
    println!();
    denied > 0 && flooded > 0.0
}

/// Distinct UDP datagrams from `sources` to the node's ports, each (source, port) a new flow,
/// as fast as one thread sends them.
struct Flooder {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Flooder {
    /// Starts the flood, on one CPU when `cpu` names it.
    fn start(storage: &NetNs, sources: &[String], cpu: Option<usize>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, c, sources) = (stop.clone(), sent.clone(), sources.to_vec());
        let thread = storage.run(move || {
            if let Some(n) = cpu {
                // SAFETY: sched_setaffinity on the calling thread with an owned, sized set.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(n, &mut set);
                    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
                }
            }
            let socks: Vec<UdpSocket> = sources
                .iter()
                .map(|a| UdpSocket::bind(format!("{a}:0")).unwrap())
                .collect();
            let k = socks.len() as u64;
            let mut n: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                let sock = &socks[(n % k) as usize];
                let port = 1024 + (n / k % 64_000) as u16;
                let _ = sock.send_to(b"x", SocketAddr::from(([192, 0, 2, 1], port)));
                n += 1;
            }
            c.store(n, Ordering::Relaxed);
        });
        Flooder { stop, sent, thread }
    }

    /// Stops the flood; the number of datagrams sent.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.sent.load(Ordering::Relaxed)
    }
}

fn main() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "the soak runs agents and namespaces: run as root"
    );
    let mut minutes = 10.0;
    let mut flood_secs = 60;
    let mut parts: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--minutes" => {
                minutes = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--minutes N");
            }
            "--flood-seconds" => {
                flood_secs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--flood-seconds N");
            }
            "--bench" => {}
            p => parts.push(p.to_string()),
        }
    }
    let all = parts.is_empty();
    let mut ok = true;
    if all || parts.iter().any(|p| p == "soak") {
        ok &= soak(minutes);
    }
    if all || parts.iter().any(|p| p == "flood") {
        ok &= flood(flood_secs);
    }
    assert!(
        ok,
        "the soak missed a correctness target (see the table above)"
    );
}
