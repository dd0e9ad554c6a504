//! `cargo xtask run`: the agent enforcing the built-in demo policy between two test namespaces,
//! with traffic that it allows and traffic that it denies, and its events on the terminal.
use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
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

/// What the demo's client tries, and what the demo policy should say.
const TARGETS: &[(&str, &str, &str)] = &[
    ("tcp", "192.0.2.2:2049", "NFS (allowed)"),
    ("tcp", "192.0.2.2:443", "ONTAP management HTTPS (allowed)"),
    (
        "tcp",
        "192.0.2.2:3260",
        "iSCSI (denied: the backend is NFS only)",
    ),
    (
        "udp",
        "192.0.2.2:4045",
        "NFSv3 lock manager (denied: the backend pins NFSv4.1)",
    ),
    (
        "tcp",
        "192.0.2.3:8080",
        "an address that is not storage (untouched)",
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

pub fn run(agent: &Path, seconds: Option<u64>) -> anyhow::Result<()> {
    // SAFETY: installing an async-signal-safe handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let _topo = topology()?;
    let me = std::env::current_exe()?;
    let servers: Vec<&str> = TARGETS.iter().map(|(_, a, _)| *a).collect();
    let mut serve = Command::new("ip")
        .args(["netns", "exec", STORAGE])
        .arg(&me)
        .arg("demo-serve")
        .args(&servers)
        .spawn()
        .context("starting the demo servers")?;
    let config = workspace_root().join("config/demo.yaml");
    eprintln!(
        "demo: agent enforcing {} on {NODE_IF} in namespace {NODE}",
        config.display()
    );
    let mut agent = Command::new("ip")
        .args(["netns", "exec", NODE])
        .arg(agent)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--iface", NODE_IF, "-o", "text"])
        .spawn()
        .context("starting the agent")?;
    std::thread::sleep(Duration::from_secs(2));
    let node = File::open(format!("/run/netns/{NODE}"))?;
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let client = std::thread::spawn(move || {
        // SAFETY: valid namespace fd; affects this thread only.
        unsafe { libc::setns(node.as_raw_fd(), libc::CLONE_NEWNET) };
        while !STOP.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
            for (proto, addr, what) in TARGETS {
                let to: SocketAddr = addr.parse().unwrap();
                let ok = if *proto == "tcp" {
                    tcp_try(to)
                } else {
                    udp_try(to)
                };
                eprintln!(
                    "traffic: {proto} {addr:<16} {:<7} {what}",
                    if ok { "ok" } else { "BLOCKED" }
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        STOP.store(true, Ordering::SeqCst);
    });
    let _ = client.join();
    // SAFETY: signalling our own children.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let status = agent.wait()?;
    let _ = serve.kill();
    let _ = serve.wait();
    if !status.success() {
        bail!("the agent exited with {status}");
    }
    Ok(())
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
pub fn serve(addrs: &[String]) -> anyhow::Result<()> {
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
