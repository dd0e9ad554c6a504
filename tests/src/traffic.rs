//! Real TCP and UDP traffic between namespaces.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::NetNs;

/// Echo servers (TCP and UDP) on the given ports inside a namespace, until dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    pub fn start(ns: &NetNs, addrs: &[SocketAddr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &addr in addrs {
            let (tx, rx) = std::sync::mpsc::channel();
            let s = stop.clone();
            threads.push(ns.run(move || {
                let l = TcpListener::bind(addr).expect("bind tcp");
                l.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                while !s.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut c, _)) => {
                            c.set_nonblocking(false).unwrap();
                            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            std::thread::spawn(move || {
                                let mut buf = [0u8; 65536];
                                while let Ok(n) = c.read(&mut buf) {
                                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            rx.recv().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let s = stop.clone();
            threads.push(ns.run(move || {
                let u = UdpSocket::bind(addr).expect("bind udp");
                u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 65536];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(&buf[..n], from);
                    }
                }
            }));
            rx.recv().unwrap();
        }
        Echo { stop, threads }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects over TCP from inside `ns`, sends a message and expects it echoed back.
pub fn tcp_echo(ns: &NetNs, to: SocketAddr, timeout: Duration) -> Result<(), String> {
    ns.within(move || {
        let mut c =
            TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect {to}: {e}"))?;
        c.set_read_timeout(Some(timeout)).unwrap();
        let msg = b"trident-ports";
        c.write_all(msg).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 13];
        c.read_exact(&mut buf)
            .map_err(|e| format!("read from {to}: {e}"))?;
        if &buf == msg {
            Ok(())
        } else {
            Err("echo mismatch".into())
        }
    })
}

/// Sends a UDP datagram from inside `ns` and waits for its echo.
pub fn udp_echo(ns: &NetNs, to: SocketAddr, timeout: Duration) -> Result<(), String> {
    ns.within(move || {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let u = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        u.set_read_timeout(Some(timeout)).unwrap();
        u.send_to(b"ping", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16];
        match u.recv_from(&mut buf) {
            Ok((4, _)) => Ok(()),
            Ok(_) => Err("short echo".into()),
            Err(e) => Err(format!("no echo from {to}: {e}")),
        }
    })
}

/// Sends one UDP datagram from a fixed source port, without waiting for anything.
pub fn udp_send_from(ns: &NetNs, from_port: u16, to: SocketAddr, count: usize) {
    ns.within(move || {
        let bind: SocketAddr = if to.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], from_port))
        } else {
            SocketAddr::from(([0u16; 8], from_port))
        };
        let u = UdpSocket::bind(bind).expect("bind");
        for _ in 0..count {
            let _ = u.send_to(b"x", to);
        }
    });
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// TCP echo from a chosen source address inside `ns`.
pub fn tcp_echo_from(
    ns: &NetNs,
    from: std::net::IpAddr,
    to: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    ns.within(move || {
        use socket2::{Domain, Socket, Type};
        let domain = if to.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let s = Socket::new(domain, Type::STREAM, None).map_err(|e| e.to_string())?;
        s.bind(&SocketAddr::new(from, 0).into())
            .map_err(|e| format!("bind {from}: {e}"))?;
        s.connect_timeout(&to.into(), timeout)
            .map_err(|e| format!("connect {from} -> {to}: {e}"))?;
        let mut c: TcpStream = s.into();
        c.set_read_timeout(Some(timeout)).unwrap();
        c.write_all(b"trident-ports").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 13];
        c.read_exact(&mut buf)
            .map_err(|e| format!("read from {to}: {e}"))?;
        Ok(())
    })
}

/// Each of `tries` (source, destination) must fail as a TCP echo from `ns`; `what` names them in
/// order. A refusal is sure only once its whole `timeout` has passed, so they wait it out at once
/// instead of one after another.
pub fn tcp_refused_from(
    ns: &NetNs,
    tries: &[(&str, std::net::IpAddr, SocketAddr)],
    timeout: Duration,
) {
    let results: Vec<_> = std::thread::scope(|s| {
        let tries: Vec<_> = tries
            .iter()
            .map(|&(what, from, to)| (what, s.spawn(move || tcp_echo_from(ns, from, to, timeout))))
            .collect();
        tries
            .into_iter()
            .map(|(what, h)| (what, h.join().expect("probe thread")))
            .collect()
    });
    for (what, r) in results {
        assert!(r.is_err(), "{what}: passed, and must not");
    }
}

/// UDP echo from a chosen source address and port inside `ns`.
pub fn udp_echo_from(
    ns: &NetNs,
    from: SocketAddr,
    to: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    ns.within(move || {
        let u = UdpSocket::bind(from).map_err(|e| format!("bind {from}: {e}"))?;
        u.set_read_timeout(Some(timeout)).unwrap();
        u.send_to(b"ping", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16];
        u.recv_from(&mut buf)
            .map(|_| ())
            .map_err(|e| format!("no echo {from} -> {to}: {e}"))
    })
}

/// A TCP stream from a server in one namespace to a client in another, paced at about 16 MB/s
/// (an unpaced stream overflows the veth backlog on two cores and retransmits by itself); the
/// client counts what it reads. Stops when dropped.
pub struct Stream {
    pub received: Arc<std::sync::atomic::AtomicU64>,
    /// The server socket's total retransmissions (TCP_INFO tcpi_total_retrans), kept current.
    pub retransmits: Arc<std::sync::atomic::AtomicU64>,
    /// Of those, the ones the client reported as duplicates of what it had (D-SACK,
    /// tcpi_dsack_dups): spurious, never a segment lost on the way.
    pub duplicates: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Stream {
    pub fn start(server: &NetNs, client: &NetNs, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let retransmits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let duplicates = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let rt = retransmits.clone();
        let dup = duplicates.clone();
        let mut threads = vec![server.run(move || {
            let l = TcpListener::bind(addr).expect("bind stream server");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            // Never block for good: a client that fails to connect must not hang the drop.
            let mut c = loop {
                match l.accept() {
                    Ok((c, _)) => break c,
                    Err(_) if s.load(Ordering::Relaxed) => return,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            };
            c.set_nonblocking(false).unwrap();
            c.set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let chunk = [0x5au8; 16384];
            while !s.load(Ordering::Relaxed) {
                let _ = c.write(&chunk);
                let info = tcp_info(&c);
                rt.store(info.tcpi_total_retrans.into(), Ordering::Relaxed);
                dup.store(info.tcpi_dsack_dups.into(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })];
        rx.recv().unwrap();
        let s = stop.clone();
        let r = received.clone();
        threads.push(client.run(move || {
            let mut c =
                TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect stream");
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = c.read(&mut buf) {
                    r.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }));
        Stream {
            received,
            retransmits,
            duplicates,
            stop,
            threads,
        }
    }

    pub fn retransmits(&self) -> u64 {
        self.retransmits.load(Ordering::Relaxed)
    }

    /// Retransmissions of segments the client had not received: lost on the way. A sender
    /// whose acknowledgements are late (a CPU busy elsewhere, such as the verifier at an
    /// agent's start) retransmits what already arrived (a tail-loss probe, a spurious timeout);
    /// the client answers each such copy with a D-SACK, and those are not counted here.
    pub fn lost(&self) -> u64 {
        self.retransmits()
            .saturating_sub(self.duplicates.load(Ordering::Relaxed))
    }

    pub fn bytes(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_info(c: &TcpStream) -> libc::tcp_info {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; the kernel writes at most `len` bytes of it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        libc::getsockopt(
            c.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast::<libc::c_void>(),
            &raw mut len,
        );
        info
    }
}
