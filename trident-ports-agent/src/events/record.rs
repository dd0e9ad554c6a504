//! Denied-flow events: decoding the kernel's records and writing them as JSON lines or text.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use trident_ports_common::{DIR_EGRESS, Event, PROTO_ICMP, PROTO_ICMPV6, VERDICT_AUDIT, reason};

use crate::policy::Proto;

/// Decodes one ring-buffer record; `None` if it is not exactly one event.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != size_of::<Event>() {
        return None;
    }
    // SAFETY: the length is checked and Event is plain old data; the read is unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    boot_wall: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
        let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        Clock {
            boot_wall: SystemTime::now() - mono,
        }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        self.boot_wall + Duration::from_nanos(mono_ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub fn reason_name(r: u8) -> &'static str {
    match r {
        reason::NO_RULE => "no-rule",
        reason::UNSOLICITED => "unsolicited-inbound",
        reason::SOURCE_NOT_ALLOWED => "source-not-allowed",
        reason::MALFORMED => "malformed",
        reason::PROTOCOL => "protocol-not-allowed",
        reason::ICMP_UNRELATED => "icmp-unrelated",
        _ => "unknown",
    }
}

/// The stable JSON form of an event (documented in docs/events.md).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Record {
    pub ts: String,
    pub verdict: String,
    pub direction: String,
    pub iface: String,
    pub src: String,
    pub dst: String,
    pub proto: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tcp_flags: Option<String>,
    pub suppressed: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub purpose: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hint: Option<String>,
}

pub fn addr(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn endpoint(a: [u8; 16], port: u16, with_port: bool) -> String {
    match (addr(a), with_port) {
        (ip, false) => ip.to_string(),
        (IpAddr::V4(ip), true) => format!("{ip}:{port}"),
        (IpAddr::V6(ip), true) => format!("[{ip}]:{port}"),
    }
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_ICMP => "icmp".into(),
        PROTO_ICMPV6 => "icmpv6".into(),
        n => Proto::from_number(n).map_or_else(|| n.to_string(), |p| p.to_string()),
    }
}

fn tcp_flags(f: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

pub fn if_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{ifindex}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Interface names by index, for the event stream. if_indextoname costs a socket, an ioctl and
/// a close: once per event it was the event writer's largest cost under a flood.
#[derive(Default)]
pub struct IfNames {
    names: HashMap<u32, (String, Instant)>,
}

impl IfNames {
    /// How long a name is reused: an interface renamed (or an index reused) shows under its new
    /// name within this.
    const FRESH: Duration = Duration::from_secs(1);

    pub fn get(&mut self, ifindex: u32) -> String {
        let now = Instant::now();
        match self.names.get(&ifindex) {
            Some((name, at)) if now.duration_since(*at) < Self::FRESH => name.clone(),
            _ => {
                let name = if_name(ifindex);
                self.names.insert(ifindex, (name.clone(), now));
                name
            }
        }
    }
}

impl Record {
    pub fn from_event(ev: &Event, clock: &Clock, names: &mut IfNames) -> Self {
        let has_ports = ev.proto == trident_ports_common::PROTO_TCP
            || ev.proto == trident_ports_common::PROTO_UDP;
        let has_ports = has_ports && (ev.src_port != 0 || ev.dst_port != 0);
        Record {
            ts: humantime::format_rfc3339_micros(clock.wall(ev.ts_ns)).to_string(),
            verdict: if ev.verdict == VERDICT_AUDIT {
                "audit"
            } else {
                "denied"
            }
            .into(),
            direction: if ev.dir == DIR_EGRESS {
                "egress"
            } else {
                "ingress"
            }
            .into(),
            iface: names.get(ev.ifindex),
            src: endpoint(ev.src, ev.src_port, has_ports),
            dst: endpoint(ev.dst, ev.dst_port, has_ports),
            proto: proto_name(ev.proto),
            reason: reason_name(ev.reason).into(),
            tcp_flags: (ev.proto == trident_ports_common::PROTO_TCP && has_ports)
                .then(|| tcp_flags(ev.tcp_flags)),
            suppressed: ev.suppressed,
            backend: None,
            purpose: None,
            hint: None,
        }
    }

    /// A notice about the policy rather than a packet (verdict `notice`): a backend definition
    /// the running policy could not plan, with why.
    pub fn notice(reason: &str, backend: Option<&str>, hint: String) -> Self {
        let none = || "-".to_string();
        Record {
            ts: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            verdict: "notice".into(),
            direction: none(),
            iface: none(),
            src: none(),
            dst: none(),
            proto: none(),
            reason: reason.into(),
            tcp_flags: None,
            suppressed: 0,
            backend: backend.map(str::to_string),
            purpose: None,
            hint: Some(hint),
        }
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "{} {:<6} {:<7} {} {} -> {} {} {}",
            self.ts,
            self.verdict,
            self.direction,
            self.iface,
            self.src,
            self.dst,
            self.proto,
            self.reason
        );
        if let Some(f) = &self.tcp_flags {
            s.push_str(&format!(" [{f}]"));
        }
        if self.suppressed > 0 {
            s.push_str(&format!(" (+{} suppressed)", self.suppressed));
        }
        if let Some(p) = &self.purpose {
            s.push_str(&format!(" | {p}"));
        }
        if let Some(b) = &self.backend {
            s.push_str(&format!(" | backend {b}"));
        }
        if let Some(h) = &self.hint {
            s.push_str(&format!(" | hint: {h}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use trident_ports_common::{DIR_INGRESS, PROTO_TCP, VERDICT_DENIED, v4_mapped};

    use super::*;

    #[test]
    fn decodes_and_renders_an_event() {
        let ev = Event {
            ts_ns: 1_000,
            src: v4_mapped([192, 0, 2, 1]),
            dst: v4_mapped([198, 51, 100, 10]),
            src_port: 40000,
            dst_port: 4045,
            ifindex: 1,
            proto: PROTO_TCP,
            dir: DIR_EGRESS,
            verdict: VERDICT_DENIED,
            reason: reason::NO_RULE,
            tcp_flags: 0x02,
            family: 4,
            seq: 0x1234,
            suppressed: 3,
            class: 0,
        };
        // SAFETY: viewing a POD value as bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<Event>()) };
        let back = decode(bytes).unwrap();
        assert_eq!(back, ev);
        assert!(decode(&bytes[..10]).is_none());
        let r = Record::from_event(&back, &Clock::new(), &mut IfNames::default());
        assert_eq!(r.src, "192.0.2.1:40000");
        assert_eq!(r.dst, "198.51.100.10:4045");
        assert_eq!(r.proto, "tcp");
        assert_eq!(r.direction, "egress");
        assert_eq!(r.verdict, "denied");
        assert_eq!(r.reason, "no-rule");
        assert_eq!(r.tcp_flags.as_deref(), Some("SYN"));
        assert_eq!(r.iface, "lo");
        assert_eq!(r.suppressed, 3);
        assert!(r.ts.ends_with('Z') && r.ts.contains('T'), "{}", r.ts);
    }

    #[test]
    fn interface_names_are_looked_up_and_reused() {
        let mut names = IfNames::default();
        assert_eq!(names.get(1), "lo");
        assert_eq!(names.get(1), "lo");
        // No interface has this index: the event still names it.
        assert_eq!(names.get(999_999), "if999999");
        assert_eq!(names.names.len(), 2);
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let mut dst = [0u8; 16];
        dst[0] = 0x20;
        dst[1] = 0x01;
        dst[2] = 0x0d;
        dst[3] = 0xb8;
        dst[15] = 1;
        let ev = Event {
            dst,
            src: dst,
            dst_port: 2049,
            src_port: 700,
            proto: trident_ports_common::PROTO_UDP,
            dir: DIR_INGRESS,
            ..Default::default()
        };
        let r = Record::from_event(&ev, &Clock::new(), &mut IfNames::default());
        assert_eq!(r.dst, "[2001:db8::1]:2049");
        assert_eq!(r.direction, "ingress");
        assert_eq!(r.tcp_flags, None);
    }
}
