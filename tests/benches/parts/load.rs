//! What loading the kernel programs costs: the instructions the verifier walked for each
//! (the kernel's own count, `verified_insns`) and the time of a datapath's load. Every agent
//! start pays it, and so does every test that loads a datapath (the differential suite's
//! in-place check loads 300). In the kernel matrix's emulated guests it is not most of a test's
//! fixed cost: halving it shortened those guests by 5 to 61 s (docs/benchmarks.md).
use std::time::Instant;

use trident_ports_agent::datapath::Datapath;
use trident_ports_common::programs;

/// The median of `v`, and its spread (lowest to highest).
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub(crate) fn load(smoke: bool) {
    println!("## Loading the programs\n");
    let runs = if smoke { 2 } else { 15 };
    let (mut tc, mut xdp) = (Vec::new(), Vec::new());
    let mut rows = Vec::new();
    for run in 0..runs {
        let started = Instant::now();
        let mut dp = Datapath::load().expect("loading the datapath");
        tc.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        dp.load_xdp().expect("loading the XDP program");
        xdp.push(started.elapsed().as_secs_f64() * 1e3);
        if run == 0 {
            for name in [
                programs::TC_EGRESS,
                programs::TC_INGRESS,
                programs::XDP_INGRESS,
            ] {
                let info = dp
                    .program_mut(name)
                    .expect("a loaded program")
                    .info()
                    .expect("the program's info");
                rows.push(format!(
                    "| {name} | {} | {} |",
                    info.verified_instruction_count()
                        .map_or("-".into(), |n| n.to_string()),
                    info.size_translated().map_or("-".into(), |n| n.to_string()),
                ));
            }
        }
    }
    println!("| program | instructions verified | translated bytes |\n|---|---:|---:|");
    println!("{}\n", rows.join("\n"));
    let (tc, tc_lo, tc_hi) = spread(&mut tc);
    let (xdp, xdp_lo, xdp_hi) = spread(&mut xdp);
    println!(
        "A datapath's load (its maps and the two TC programs): {tc:.0} ms (median of {runs}, \
         {tc_lo:.0}-{tc_hi:.0}); the XDP program's, after it: {xdp:.0} ms ({xdp_lo:.0}-{xdp_hi:.0}).\n"
    );
}
