//! Real sockets for frames to belong to: the storage end's servers and the node's connections
//! to them, across a namespace pair. The datapath asks the node's socket tables about inbound
//! packets the connection table does not know (`trident-ports-ebpf/src/sockets.rs`).
use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use crate::netns::Pair;

/// The storage end's servers and the node's connections to them, open for the test's length.
pub struct Sockets {
    _servers: Vec<TcpListener>,
    pub tcp: Vec<TcpStream>,
    pub udp: Vec<UdpSocket>,
}

impl Sockets {
    /// TCP connections from the node to each of `tcp`, UDP sockets of the node connected to
    /// each of `udp`.
    pub fn open(pair: &Pair, tcp: &[&str], udp: &[&str]) -> Self {
        let tcp: Vec<SocketAddr> = tcp.iter().map(|a| a.parse().unwrap()).collect();
        let udp: Vec<SocketAddr> = udp.iter().map(|a| a.parse().unwrap()).collect();
        let servers = {
            let tcp = tcp.clone();
            pair.storage
                .within(move || tcp.iter().map(|a| TcpListener::bind(a).unwrap()).collect())
        };
        let (tcp, udp) = pair.node.within(move || {
            let tcp = tcp
                .iter()
                // A deadline for emulated guests under load; a handshake here takes
                // microseconds.
                .map(|a| TcpStream::connect_timeout(a, Duration::from_secs(10)).unwrap())
                .collect();
            let udp = udp
                .iter()
                .map(|a| {
                    let bind = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                    let s = UdpSocket::bind(bind).unwrap();
                    s.connect(a).unwrap();
                    s
                })
                .collect();
            (tcp, udp)
        });
        Sockets {
            _servers: servers,
            tcp,
            udp,
        }
    }

    pub fn tcp_port(&self, i: usize) -> u16 {
        self.tcp[i].local_addr().unwrap().port()
    }

    pub fn udp_port(&self, i: usize) -> u16 {
        self.udp[i].local_addr().unwrap().port()
    }
}
