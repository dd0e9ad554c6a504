//! `cargo xtask run`: the agent enforcing the built-in demo policy between two test namespaces,
//! with traffic that it allows and traffic that it denies, and its events on the terminal.
use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::workspace_root;

const NODE: &str = "tp-demo-node";
const STORAGE: &str = "tp-demo-storage";
const NODE_IF: &str = "tpdemo-n";
const STORAGE_IF: &str = "tpdemo-s";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// What the demo's client tries, what the demo policy should say, and whether it should pass.
const TARGETS: &[(&str, &str, &str, bool)] = &[
    ("tcp", "192.0.2.2:2049", "NFS (allowed)", true),
    (
        "tcp",
        "192.0.2.2:443",
        "ONTAP management HTTPS (allowed)",
        true,
    ),
    (
        "tcp",
        "192.0.2.2:3260",
        "iSCSI (denied: the backend is NFS only)",
        false,
    ),
    (
        "udp",
        "192.0.2.2:4045",
        "NFSv3 lock manager (denied: the backend pins NFSv4.1)",
        false,
    ),
    (
        "tcp",
        "192.0.2.3:8080",
        "an address that is not storage (untouched)",
        true,
    ),
];

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn cleanup() {
    for ns in [NODE, STORAGE] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

struct Topology;

impl Drop for Topology {
    fn drop(&mut self) {
        cleanup();
        eprintln!("demo: namespaces removed");
    }
}

fn topology() -> anyhow::Result<Topology> {
    cleanup();
    ip(&["netns", "add", NODE])?;
    let topo = Topology;
    ip(&["netns", "add", STORAGE])?;
    ip(&[
        "link", "add", NODE_IF, "netns", NODE, "type", "veth", "peer", "name", STORAGE_IF, "netns",
        STORAGE,
    ])?;
    ip(&["-n", NODE, "addr", "add", "192.0.2.1/24", "dev", NODE_IF])?;
    for a in ["192.0.2.2/24", "192.0.2.3/24"] {
        ip(&["-n", STORAGE, "addr", "add", a, "dev", STORAGE_IF])?;
    }
    for (ns, dev) in [
        (NODE, NODE_IF),
        (STORAGE, STORAGE_IF),
        (NODE, "lo"),
        (STORAGE, "lo"),
    ] {
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    Ok(topo)
}

pub(crate) fn run(agent: &Path, seconds: Option<u64>) -> anyhow::Result<()> {
    // SAFETY: installing an async-signal-safe handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let _topo = topology()?;
    let me = std::env::current_exe()?;
    let servers: Vec<&str> = TARGETS.iter().map(|(_, a, _, _)| *a).collect();
    let mut serve = Command::new("ip")
        .args(["netns", "exec", STORAGE])
        .arg(&me)
        .arg("demo-serve")
        .args(&servers)
        .process_group(0)
        .spawn()
        .context("starting the demo servers")?;
    let config = workspace_root().join("config/demo.yaml");
    eprintln!(
        "demo: agent enforcing {} on {NODE_IF} in namespace {NODE}",
        config.display()
    );
    let socket =
        std::env::temp_dir().join(format!("trident-ports-demo-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let mut agent = Command::new("ip")
        .args(["netns", "exec", NODE])
        .arg(agent)
        .args(["run", "--config"])
        .arg(&config)
        .args([
            "--iface",
            NODE_IF,
            "-o",
            "text",
            "--pin-dir",
            "none",
            "--socket",
        ])
        .arg(&socket)
        .process_group(0)
        .spawn()
        .context("starting the agent")?;
    // The agent opens its flows socket once it enforces: the first round is then judged by it.
    let started = Instant::now();
    while !socket.exists() && !STOP.load(Ordering::SeqCst) {
        if let Some(status) = agent.try_wait()? {
            let _ = serve.kill();
            bail!("the agent exited with {status} before it enforced");
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = (agent.kill(), serve.kill());
            bail!("the agent did not start enforcing within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let node = File::open(format!("/run/netns/{NODE}"))?;
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let client = std::thread::spawn(move || {
        // SAFETY: valid namespace fd; affects this thread only.
        unsafe { libc::setns(node.as_raw_fd(), libc::CLONE_NEWNET) };
        let mut tally = Tally::default();
        'rounds: while !STOP.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
            for (proto, addr, what, expected) in TARGETS {
                let to: SocketAddr = addr.parse().unwrap();
                let ok = if *proto == "tcp" {
                    tcp_try(to)
                } else {
                    udp_try(to)
                };
                // A try that Ctrl-C interrupted says nothing about the policy.
                if STOP.load(Ordering::SeqCst) {
                    break 'rounds;
                }
                tally.count(ok == *expected);
                eprintln!(
                    "traffic: {proto} {addr:<16} {:<7} {what}",
                    if ok { "ok" } else { "BLOCKED" }
                );
            }
            tally.rounds += 1;
            for _ in 0..20 {
                if STOP.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        STOP.store(true, Ordering::SeqCst);
        tally
    });
    let tally = client.join().expect("the demo client does not panic");
    // The servers and the agent run in process groups of their own, so that Ctrl-C reaches only
    // this process: the traffic loop has stopped before they do.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let status = agent.wait()?;
    let _ = serve.kill();
    let _ = serve.wait();
    eprintln!(
        "demo: {} round(s), {} of {} tries as the policy says{}",
        tally.rounds,
        tally.as_expected,
        tally.as_expected + tally.unexpected,
        if tally.unexpected == 0 {
            String::new()
        } else {
            format!(" ({} NOT as the policy says)", tally.unexpected)
        }
    );
    if !status.success() {
        bail!("the agent exited with {status}");
    }
    if tally.unexpected > 0 {
        bail!("{} tries did not go as the policy says", tally.unexpected);
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    rounds: u32,
    as_expected: u32,
    unexpected: u32,
}

impl Tally {
    fn count(&mut self, as_expected: bool) {
        if as_expected {
            self.as_expected += 1;
        } else {
            self.unexpected += 1;
        }
    }
}

fn tcp_try(to: SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect_timeout(&to, Duration::from_millis(300)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_millis(300)));
    let mut b = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut b).is_ok()
}

fn udp_try(to: SocketAddr) -> bool {
    let Ok(u) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let _ = u.set_read_timeout(Some(Duration::from_millis(300)));
    let mut b = [0u8; 8];
    u.send_to(b"ping", to).is_ok() && u.recv_from(&mut b).is_ok()
}

/// Echo servers for the demo, TCP and UDP on each address, until killed.
pub(crate) fn serve(addrs: &[String]) -> anyhow::Result<()> {
    let mut threads = Vec::new();
    for a in addrs {
        let addr: SocketAddr = a.parse().with_context(|| format!("bad address {a}"))?;
        let l = TcpListener::bind(addr).with_context(|| format!("binding tcp {addr}"))?;
        threads.push(std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    while let Ok(n) = c.read(&mut b) {
                        if n == 0 || c.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
        let u = UdpSocket::bind(addr).with_context(|| format!("binding udp {addr}"))?;
        threads.push(std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok((n, from)) = u.recv_from(&mut b) {
                let _ = u.send_to(&b[..n], from);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
