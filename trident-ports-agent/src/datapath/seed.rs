//! Seeds the connection table from the sockets that exist when enforcement starts, so that a
//! stream opened before the agent keeps flowing: its next packet may be an inbound one, which
//! would otherwise look unsolicited. Seeded flows carry sequence 0, so the datapath checks each
//! against the running rules on its first packet, in both directions, before trusting it.
use std::{net::Ipv6Addr, path::Path};

use trident_ports_common::{FlowKey, PROTO_TCP, PROTO_UDP, v4_mapped};

/// TCP states worth seeding: ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1/2, CLOSE_WAIT.
const TCP_STATES: [u8; 6] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x08];

/// Flows of this network namespace's connected TCP and UDP sockets, from /proc/self/net.
pub fn current_flows() -> Vec<FlowKey> {
    let mut out = Vec::new();
    for (file, proto, v6) in [
        ("tcp", PROTO_TCP, false),
        ("tcp6", PROTO_TCP, true),
        ("udp", PROTO_UDP, false),
        ("udp6", PROTO_UDP, true),
    ] {
        let path = Path::new("/proc/self/net").join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        out.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| parse_line(l, proto, v6)),
        );
    }
    out
}

/// One line of /proc/net/{tcp,udp}{,6}: `sl local rem st ...`, addresses as host-order hex words.
/// The flow of a connected socket in a state worth seeding, or `None`.
pub fn parse_line(line: &str, proto: u8, v6: bool) -> Option<FlowKey> {
    let (flow, state) = connected_socket(line, v6, proto)?;
    let wanted = match proto {
        PROTO_TCP => TCP_STATES.contains(&state),
        _ => true,
    };
    wanted.then_some(flow)
}

/// The flow of a connected socket on one line of /proc/net/{tcp,udp}{,6}, and its state (for
/// TCP, 1 is ESTABLISHED); `None` for a listening or unconnected socket.
pub fn connected_socket(line: &str, v6: bool, proto: u8) -> Option<(FlowKey, u8)> {
    let mut f = line.split_whitespace();
    let _sl = f.next()?;
    let (local, lport) = endpoint(f.next()?, v6)?;
    let (remote, rport) = endpoint(f.next()?, v6)?;
    let state = u8::from_str_radix(f.next()?, 16).ok()?;
    let connected = rport != 0 && remote != [0; 16] && remote != v4_mapped([0; 4]);
    let flow = FlowKey {
        local,
        remote,
        local_port: lport,
        remote_port: rport,
        proto,
        _pad: [0; 3],
    };
    connected.then_some((flow, state))
}

fn endpoint(s: &str, v6: bool) -> Option<([u8; 16], u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the address as the integer it is in memory (host
    // order): its native-endian bytes are the address bytes.
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match (v6, bytes.len()) {
        (false, 4) => Some((v4_mapped([bytes[0], bytes[1], bytes[2], bytes[3]]), port)),
        (true, 16) => {
            let a: [u8; 16] = bytes.try_into().ok()?;
            // An IPv4 peer of a dual-stack socket appears as ::ffff:a.b.c.d already.
            Some((Ipv6Addr::from(a).octets(), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_lines() {
        // 192.0.2.1:40000 -> 192.0.2.2:2049, ESTABLISHED.
        let l = "   0: 010200C0:9C40 020200C0:0801 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 20 4 30 10 -1";
        let f = parse_line(l, PROTO_TCP, false).unwrap();
        assert_eq!(f.local, v4_mapped([192, 0, 2, 1]));
        assert_eq!(f.remote, v4_mapped([192, 0, 2, 2]));
        assert_eq!((f.local_port, f.remote_port), (40000, 2049));
        // LISTEN is not a flow.
        let listen = "   1: 00000000:0801 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1";
        assert!(parse_line(listen, PROTO_TCP, false).is_none());
        // 2001:db8::1 port 700 -> 2001:db8::2 port 2049.
        let l6 = "   0: B80D0120000000000000000001000000:02BC B80D0120000000000000000002000000:0801 01 00000000:00000000 00:00000000 00000000     0        0 1";
        let f = parse_line(l6, PROTO_TCP, true).unwrap();
        assert_eq!(Ipv6Addr::from(f.local).to_string(), "2001:db8::1");
        assert_eq!(Ipv6Addr::from(f.remote).to_string(), "2001:db8::2");
        assert_eq!((f.local_port, f.remote_port), (700, 2049));
    }
}
