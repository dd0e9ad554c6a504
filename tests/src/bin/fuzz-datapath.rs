//! `cargo xtask fuzz datapath [--cases N] [--seed S]`: differential testing of the kernel
//! programs against the reference model (see `trident_ports_tests::differential`). Root.
use std::time::Instant;

use trident_ports_tests::{XDP_KERNEL, differential, kernel, require_root};

fn main() {
    let mut cases: u64 = 1_000_000;
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .and_then(|v| v.replace('_', "").parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{a} takes a number"))
        };
        match a.as_str() {
            "--cases" => cases = value(),
            "--seed" => seed = value(),
            other => panic!("unknown argument {other}: --cases N, --seed S"),
        }
    }
    if !require_root("fuzz-datapath") {
        std::process::exit(1);
    }
    let _cpu = trident_ports_tests::OnCpu0::pin();
    let xdp = kernel() >= XDP_KERNEL;
    eprintln!(
        "fuzz datapath: {cases} cases from seed {seed} (XDP {})",
        if xdp { "on" } else { "off: kernel before 5.18" }
    );
    let started = Instant::now();
    let report = differential::run(seed, cases, xdp);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz datapath: {} cases, {} policy switches in {secs:.1} s ({:.0} cases/s); by counter: {:?}; \
         answered by the recent-denial cache: {}",
        report.cases,
        report.switches,
        report.cases as f64 / secs,
        report.by_counter,
        report.recent_denials
    );
    if let Some(d) = report.disagreements.first() {
        eprintln!("{d}");
        std::process::exit(1);
    }
    println!(
        "fuzz datapath: 0 disagreements in {} cases (seed {seed})",
        report.cases
    );
}
