//! The datapath against the reference model (`trident_ports_tests::differential`): CI's smoke
//! run of generated policies and packets, every verdict, counter and reason compared. The full
//! run is `cargo xtask fuzz datapath` (1,000,000 cases and more).
use trident_ports_common::counter;
use trident_ports_tests::{OnCpu0, XDP_KERNEL, differential, kernel, require_root};

#[test]
fn the_kernel_judges_every_generated_packet_as_the_model_does() {
    if !require_root("the_kernel_judges_every_generated_packet_as_the_model_does") {
        return;
    }
    let _cpu = OnCpu0::pin();
    // Two fixed seeds, so that a failure reproduces: `cargo xtask fuzz datapath --seed S`.
    for seed in [1, 2] {
        let report = differential::run(seed, 15_000, kernel() >= XDP_KERNEL);
        assert!(
            report.disagreements.is_empty(),
            "{}",
            report.disagreements.join("\n\n")
        );
        assert_eq!(report.cases, 15_000);
        // Repeated denials under gated events went through the recent-denial cache, and the
        // model, which has no such cache, agreed with every one.
        assert!(
            report.recent_denials > 20,
            "seed {seed}: {} denials from the cache",
            report.recent_denials
        );
        // The run covered every way a packet can go.
        for (c, what) in [
            (0, "allowed"),
            (1, "denied"),
            (2, "audited"),
            (3, "passed"),
            (4, "known flow"),
            (5, "later fragment"),
        ] {
            assert!(
                report.by_counter.get(&c).copied().unwrap_or(0) > 20,
                "seed {seed}: too few {what} packets: {:?}",
                report.by_counter
            );
        }
        // Packets from storage on the node's real connections, let in by their sockets: each
        // is a fresh table's or a new policy's first (the flow is learned then).
        assert!(
            report
                .by_counter
                .get(&counter::NODE_SOCKET)
                .copied()
                .unwrap_or(0)
                > 3,
            "seed {seed}: too few packets let in by the node's sockets: {:?}",
            report.by_counter
        );
    }
}

/// Small policy changes are written into the running generation entry by entry. After every
/// write, each probe packet must get the old policy's verdict or the new one's: a half-applied
/// change never allows what neither allows, nor drops what both allow.
#[test]
fn in_place_updates_never_mix_the_policies() {
    if !require_root("in_place_updates_never_mix_the_policies") {
        return;
    }
    let _cpu = OnCpu0::pin();
    for seed in [3, 4] {
        let r = differential::incremental(seed, 150);
        assert!(
            r.disagreements.is_empty(),
            "{}",
            r.disagreements.join("\n\n")
        );
        assert_eq!(r.rounds, 150);
        // Most rounds were small changes written in place, with many states judged.
        assert!(r.in_place > 100, "{r:?}");
        // Changes of host entries only compile those entries (`datapath::delta`); the rest
        // (wider prefixes) compile the whole policy.
        assert!(r.compiled_alone > 20, "{r:?}");
        assert!(r.states > 500 && r.probes > 10_000, "{r:?}");
        eprintln!("seed {seed}: {r:?}");
    }
}
