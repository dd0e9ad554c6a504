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
        let mut c = TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect {to}: {e}"))?;
        c.set_read_timeout(Some(timeout)).unwrap();
        let msg = b"trident-ports";
        c.write_all(msg).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 13];
        c.read_exact(&mut buf).map_err(|e| format!("read from {to}: {e}"))?;
        if &buf == msg { Ok(()) } else { Err("echo mismatch".into()) }
    })
}

/// Sends a UDP datagram from inside `ns` and waits for its echo.
pub fn udp_echo(ns: &NetNs, to: SocketAddr, timeout: Duration) -> Result<(), String> {
    ns.within(move || {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
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
    })
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}
