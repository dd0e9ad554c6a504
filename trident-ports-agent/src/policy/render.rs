//! `plan` output: a table for people, JSON for tools, and an nftables ruleset for hosts where
//! eBPF is not wanted.
use std::fmt::Write as _;

use ipnet::IpNet;
use serde::Serialize;

use crate::policy::{Direction, Entry, Policy, PortRange, Proto};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Nftables,
}

/// The documented JSON schema (docs/plan.md).
#[derive(Serialize)]
struct Json<'a> {
    role: &'a str,
    mode: crate::policy::Mode,
    entries: &'a [Entry],
    guarded: &'a [crate::policy::Guard],
    /// Where the guards apply: the node's and the controller's addresses.
    guard_addresses: &'a [IpNet],
    warnings: &'a [String],
    /// Only with `plan --live`.
    #[serde(skip_serializing_if = "Option::is_none")]
    live: Option<&'a [crate::policy::live::LiveReport]>,
}

pub fn render(policy: &Policy, format: Format) -> String {
    match format {
        Format::Json => {
            let j = Json {
                role: &policy.role,
                mode: policy.mode,
                entries: &policy.entries,
                guarded: &policy.guarded,
                guard_addresses: &policy.guard_addresses,
                warnings: &policy.warnings,
                live: policy.live.as_deref(),
            };
            serde_json::to_string_pretty(&j).expect("plan serialises") + "\n"
        }
        Format::Table => table(policy),
        Format::Nftables => nftables(policy),
    }
}

fn table(policy: &Policy) -> String {
    let mut rows = vec![[
        "DIRECTION".to_string(),
        "PEER".into(),
        "PORTS".into(),
        "PROTO".into(),
        "BACKEND".into(),
        "PURPOSE".into(),
        "SOURCE".into(),
    ]];
    for e in &policy.entries {
        rows.push([
            e.direction.to_string(),
            e.peer.to_string(),
            e.ports.to_string(),
            e.proto.to_string(),
            e.backend.as_deref().unwrap_or("-").to_string(),
            e.purpose.to_string(),
            e.source.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("role: {}  mode: {:?}\n", policy.role, policy.mode).to_lowercase();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if !policy.guarded.is_empty() {
        let g: Vec<String> = policy
            .guarded
            .iter()
            .map(|g| format!("{}/{} ({})", g.port, g.proto, g.purpose))
            .collect();
        let _ = writeln!(
            out,
            "guarded node ports (only the ingress sources above): {}",
            g.join(", ")
        );
        if !policy.guard_addresses.is_empty() {
            let a: Vec<String> = policy
                .guard_addresses
                .iter()
                .map(ToString::to_string)
                .collect();
            let _ = writeln!(out, "guarded on: {}", a.join(", "));
        }
    }
    for w in &policy.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if let Some(live) = &policy.live {
        let _ = writeln!(out, "live sessions ({}):", live.len());
        for r in live {
            let _ = writeln!(out, "  {}  -> {}", r.session, r.peer);
            if !r.covered_by.is_empty() {
                let _ = writeln!(out, "    covered by: {}", r.covered_by.join(", "));
            }
            if !r.missing.is_empty() {
                let then = if r.protected {
                    "allowed while the session exists"
                } else {
                    "it will be cut"
                };
                let _ = writeln!(out, "    NOT COVERED: {} ({then})", r.missing.join(", "));
            }
        }
    }
    out
}

/// Set elements for one family. nftables refuses elements whose intervals overlap, which two
/// backends' addresses can (a declared prefix around another backend's portal): an element
/// another one covers (its address, protocol and ports) is left out, as it adds nothing.
fn elements(entries: &[&Entry], v4: bool) -> Vec<String> {
    let mut items: Vec<(IpNet, Proto, PortRange)> = entries
        .iter()
        .filter(|e| matches!(e.peer, IpNet::V4(_)) == v4)
        .map(|e| (e.peer, e.proto, e.ports))
        .collect();
    items.sort();
    items.dedup();
    let covered = |&(net, proto, ports): &(IpNet, Proto, PortRange)| {
        items.iter().any(|&(n, p, r)| {
            (n, p, r) != (net, proto, ports)
                && p == proto
                && n.contains(&net)
                && r.from <= ports.from
                && ports.to <= r.to
        })
    };
    let mut out: Vec<String> = items
        .iter()
        .filter(|i| !covered(i))
        .map(|&(peer, proto, ports)| {
            let addr = if peer.prefix_len() == peer.max_prefix_len() {
                peer.addr().to_string()
            } else {
                peer.to_string()
            };
            format!("{addr} . {proto} . {ports}")
        })
        .collect();
    out.sort();
    out
}

fn set(out: &mut String, name: &str, ty: &str, elems: &[String]) {
    let _ = writeln!(out, "\tset {name} {{\n\t\ttype {ty}\n\t\tflags interval");
    if !elems.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(",\n\t\t\t     "));
    }
    out.push_str("\t}\n");
}

/// One `inet` table that enforces the same policy with nftables sets of concatenations.
fn nftables(policy: &Policy) -> String {
    let eg: Vec<&Entry> = policy
        .entries
        .iter()
        .filter(|e| e.direction == Direction::Egress)
        .collect();
    let ing: Vec<&Entry> = policy
        .entries
        .iter()
        .filter(|e| e.direction == Direction::Ingress)
        .collect();
    let mut protected: Vec<IpNet> = policy
        .protected
        .iter()
        .map(|p| p.addr)
        .chain(eg.iter().map(|e| e.peer))
        .collect();
    protected.sort();
    protected.dedup();
    let all = protected.clone();
    protected.retain(|n| !all.iter().any(|o| o != n && o.contains(n)));
    let prot = |v4: bool| -> Vec<String> {
        protected
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)) == v4)
            .map(ToString::to_string)
            .collect()
    };
    let mut guarded: Vec<String> = policy
        .guarded
        .iter()
        .map(|g| format!("{} . {}", g.proto, g.port))
        .collect();
    guarded.sort();
    guarded.dedup();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# trident-ports plan for role {}: the same policy as the eBPF datapath.",
        policy.role
    );
    out.push_str("table inet trident_ports {\n");
    set(
        &mut out,
        "egress_v4",
        "ipv4_addr . inet_proto . inet_service",
        &elements(&eg, true),
    );
    set(
        &mut out,
        "egress_v6",
        "ipv6_addr . inet_proto . inet_service",
        &elements(&eg, false),
    );
    set(
        &mut out,
        "ingress_v4",
        "ipv4_addr . inet_proto . inet_service",
        &elements(&ing, true),
    );
    set(
        &mut out,
        "ingress_v6",
        "ipv6_addr . inet_proto . inet_service",
        &elements(&ing, false),
    );
    set(&mut out, "protected_v4", "ipv4_addr", &prot(true));
    set(&mut out, "protected_v6", "ipv6_addr", &prot(false));
    let _ = writeln!(out, "\tset guarded {{\n\t\ttype inet_proto . inet_service");
    if !guarded.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", guarded.join(", "));
    }
    out.push_str("\t}\n");
    let drop = if policy.mode == crate::policy::Mode::Audit {
        "log prefix \"trident-ports audit \" accept"
    } else {
        "log prefix \"trident-ports denied \" drop"
    };
    let _ = write!(
        out,
        "\tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tmeta l4proto {{ icmp, ipv6-icmp }} accept\n\
         \t\tip daddr . meta l4proto . th dport @egress_v4 accept\n\
         \t\tip6 daddr . meta l4proto . th dport @egress_v6 accept\n\
         \t\tip daddr @protected_v4 counter {drop}\n\
         \t\tip6 daddr @protected_v6 counter {drop}\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"lo\" accept\n\
         \t\tct state established,related accept\n\
         \t\tmeta l4proto {{ icmp, ipv6-icmp }} accept\n\
         \t\tip saddr . meta l4proto . th dport @ingress_v4 accept\n\
         \t\tip6 saddr . meta l4proto . th dport @ingress_v6 accept\n\
         \t\tip saddr @protected_v4 counter {drop}\n\
         \t\tip6 saddr @protected_v6 counter {drop}\n\
         \t\tmeta l4proto . th dport @guarded counter {drop}\n\
         \t}}\n}}\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Guard, Mode, PortRange, Protected, Proto};

    fn entry(direction: Direction, peer: &str, ports: PortRange, proto: Proto) -> Entry {
        Entry {
            direction,
            peer: peer.parse().unwrap(),
            ports,
            proto,
            purpose: "NFS daemon".into(),
            backend: Some("nas".into()),
            source: "b.yaml: dataLIF".into(),
        }
    }

    fn policy(mode: Mode) -> Policy {
        Policy {
            role: "worker".into(),
            mode,
            entries: vec![
                entry(
                    Direction::Egress,
                    "192.0.2.2/32",
                    PortRange::single(2049),
                    Proto::Tcp,
                ),
                entry(
                    Direction::Egress,
                    "2001:db8::/64",
                    PortRange {
                        from: 4045,
                        to: 4046,
                    },
                    Proto::Udp,
                ),
                entry(
                    Direction::Ingress,
                    "198.51.100.0/24",
                    PortRange::single(8443),
                    Proto::Tcp,
                ),
            ],
            guarded: vec![Guard {
                port: 8443,
                proto: Proto::Tcp,
                purpose: "backchannel".into(),
            }],
            protected: vec![Protected {
                addr: "192.0.2.9/32".parse().unwrap(),
                why: "backend nas managementLIF".into(),
            }],
            warnings: vec!["check me".into()],
            ..Policy::default()
        }
    }

    #[test]
    fn the_table_has_a_row_per_entry_then_guards_and_warnings() {
        let t = render(&policy(Mode::Enforce), Format::Table);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "role: worker  mode: enforce");
        assert!(lines[1].starts_with("DIRECTION  PEER"), "{}", lines[1]);
        assert!(
            lines[2].starts_with("egress     192.0.2.2/32"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains("4045-4046"), "{}", lines[3]);
        let col = lines[1].find("PORTS").unwrap();
        assert_eq!(&lines[4][col..col + 4], "8443", "columns line up");
        assert_eq!(
            lines[5],
            "guarded node ports (only the ingress sources above): 8443/tcp (backchannel)"
        );
        assert_eq!(lines[6], "warning: check me");
    }

    #[test]
    fn json_keeps_the_documented_keys() {
        let v: serde_json::Value =
            serde_json::from_str(&render(&policy(Mode::Audit), Format::Json)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "entries",
                "guard_addresses",
                "guarded",
                "mode",
                "role",
                "warnings"
            ]
        );
        assert_eq!(v["mode"], "audit");
        assert_eq!(v["entries"][2]["src"], "198.51.100.0/24");
        assert_eq!(v["entries"][2]["dst"], serde_json::Value::Null);
    }

    #[test]
    fn nftables_sets_split_families_and_audit_accepts() {
        let enforce = render(&policy(Mode::Enforce), Format::Nftables);
        assert!(
            enforce.contains("elements = { 192.0.2.2 . tcp . 2049 }"),
            "{enforce}"
        );
        assert!(
            enforce.contains("2001:db8::/64 . udp . 4045-4046"),
            "{enforce}"
        );
        assert!(
            enforce.contains("elements = { 198.51.100.0/24 . tcp . 8443 }"),
            "{enforce}"
        );
        assert!(enforce.contains("elements = { tcp . 8443 }"), "{enforce}");
        assert!(
            enforce.contains("192.0.2.9/32"),
            "protected addresses: {enforce}"
        );
        assert!(enforce.contains("denied \" drop"), "{enforce}");
        // An address inside another backend's prefix, on ports the prefix has too: covered.
        let mut p = policy(Mode::Enforce);
        p.entries.push(entry(
            Direction::Egress,
            "2001:db8::7/128",
            PortRange::single(4045),
            Proto::Udp,
        ));
        p.protected.push(Protected {
            addr: "192.0.2.0/24".parse().unwrap(),
            why: "declared".into(),
        });
        let nft = render(&p, Format::Nftables);
        assert!(!nft.contains("2001:db8::7"), "{nft}");
        assert!(
            nft.contains("192.0.2.0/24") && !nft.contains("192.0.2.9/32"),
            "{nft}"
        );
        let audit = render(&policy(Mode::Audit), Format::Nftables);
        assert!(
            audit.contains("audit \" accept") && !audit.contains("drop"),
            "{audit}"
        );
    }
}
