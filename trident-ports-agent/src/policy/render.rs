//! `plan` output: a table for people, JSON for tools, and an nftables ruleset for hosts where
//! eBPF is not wanted.
use std::fmt::Write as _;

use ipnet::IpNet;
use serde::Serialize;

use crate::policy::{Direction, Entry, Policy};

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
    warnings: &'a [String],
}

pub fn render(policy: &Policy, format: Format) -> String {
    match format {
        Format::Json => {
            let j = Json {
                role: &policy.role,
                mode: policy.mode,
                entries: &policy.entries,
                guarded: &policy.guarded,
                warnings: &policy.warnings,
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
            e.backend.clone().unwrap_or_else(|| "-".into()),
            e.purpose.clone(),
            e.source.clone(),
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
    }
    for w in &policy.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

fn elements(entries: &[&Entry], v4: bool) -> Vec<String> {
    let mut out: Vec<String> = entries
        .iter()
        .filter(|e| matches!(e.peer, IpNet::V4(_)) == v4)
        .map(|e| {
            let peer = e.peer;
            let addr = if peer.prefix_len() == peer.max_prefix_len() {
                peer.addr().to_string()
            } else {
                peer.to_string()
            };
            format!("{addr} . {} . {}", e.proto, e.ports)
        })
        .collect();
    out.sort();
    out.dedup();
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
