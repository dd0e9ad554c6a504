//! Differential testing of the datapath: generated policies and packets (`generate`) run
//! through the kernel programs with BPF_PROG_TEST_RUN and through a reference model in plain
//! Rust (`model`); every verdict, counter and reason must agree. A disagreement prints the
//! policy, the packets that led to it and the packet itself in hex, ready for a regression
//! test. A fail-open disagreement (the kernel passes what the model drops) is the worst bug
//! this product can have.
pub mod generate;
pub mod model;
pub mod spec;

use std::net::{SocketAddr, UdpSocket};

use trident_ports_agent::{datapath::Datapath, events::decode, policy::Policy};
use trident_ports_common::{DIR_EGRESS, DIR_INGRESS, counter, programs, reason};

use self::{
    generate::Generator,
    model::{Flow, Model, Verdict},
    spec::{Prog, Spec, build},
};
use crate::{
    netns::{Addrs, Pair},
    packet::{TC_DROP, TC_PASS, TCP, UDP, XDP_DROP, XDP_PASS, hex},
    sockets::Sockets,
};

/// Packets between fresh datapaths: the connection table (an LRU) never fills, so the model's
/// unbounded table stays the kernel's.
const CASES_PER_DATAPATH: u64 = 5_000;
/// Chance, in 1/1000, of a policy switch before a packet.
const SWITCH_PER_MILLE: u64 = 3;
/// Every other fresh datapath gates events per flow for longer than a run takes, so that the
/// recent-denial cache answers repeated denials; the others report every denial, and their
/// events are checked too.
const GATED_INTERVAL_NS: u64 = 3_600_000_000_000;

#[derive(Debug, Default)]
pub struct Report {
    pub cases: u64,
    pub switches: u64,
    pub disagreements: Vec<String>,
    /// How many packets ended on each counter, to show what the run covered.
    pub by_counter: std::collections::BTreeMap<u32, u64>,
    /// Denials the recent-denial cache answered (with gated events).
    pub recent_denials: u64,
}

struct Kernel {
    dp: Datapath,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    xdp: bool,
    /// The event interval policies are applied with: 0 (an event per denial) or gated.
    interval_ns: u64,
}

impl Kernel {
    fn load(xdp: bool, interval_ns: u64) -> Self {
        let mut dp = Datapath::load().expect("loading the datapath");
        if xdp {
            dp.load_xdp().expect("loading the XDP program");
        }
        let events = dp.take_events().expect("the event ring buffer");
        Kernel {
            dp,
            events,
            xdp,
            interval_ns,
        }
    }

    fn apply(&mut self, policy: &Policy) -> u32 {
        let applied = self.dp.apply(policy, self.interval_ns).expect("apply");
        applied.config.seq
    }

    fn run(&mut self, prog: Prog, frame: &[u8]) -> u32 {
        run_on(&mut self.dp, prog, frame)
    }

    fn events(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(decode(&item).expect("an event").reason);
        }
        out
    }
}

/// One test run of `prog` on `dp`; its return code.
fn run_on(dp: &mut Datapath, prog: Prog, frame: &[u8]) -> u32 {
    let name = match prog {
        Prog::TcEgress => programs::TC_EGRESS,
        Prog::TcIngress => programs::TC_INGRESS,
        Prog::XdpIngress => programs::XDP_INGRESS,
    };
    crate::packet::run(dp, name, frame)
}

/// The node's real connections for a run's packets to belong to, in a namespace pair of the
/// generator's node and storage addresses: NFS over TCP on both families, and a UDP socket
/// connected to rpcbind. The UDP socket is bound to the node's address: one bound to any
/// address would be found for every address of the node's, which the model does not describe.
pub struct NodeSockets {
    pub pair: Pair,
    _tcp: Sockets,
    _udp: UdpSocket,
    /// The sockets as flows from the node's side.
    pub flows: Vec<Flow>,
}

impl NodeSockets {
    pub fn open() -> Self {
        let (node4, node6) = (generate::NODE_V4, generate::NODE_V6);
        let (storage4, storage6) = (generate::STORAGE_V4, generate::STORAGE_V6);
        let pair = Pair::new(Addrs {
            node: &[&format!("{node4}/24"), &format!("{node6}/64")],
            storage: &[&format!("{storage4}/24"), &format!("{storage6}/64")],
        });
        let tcp = Sockets::open(
            &pair,
            &[&format!("{storage4}:2049"), &format!("[{storage6}]:2049")],
            &[],
        );
        let udp = pair.node.within(|| {
            let s = UdpSocket::bind((node4, 0)).expect("a UDP socket on the node's address");
            s.connect((storage4, 111))
                .expect("connecting it to rpcbind");
            s
        });
        let flow = |local: SocketAddr, remote: SocketAddr, proto| Flow {
            local: local.ip(),
            remote: remote.ip(),
            lport: local.port(),
            rport: remote.port(),
            proto,
        };
        let mut flows: Vec<Flow> = tcp
            .tcp
            .iter()
            .map(|s| flow(s.local_addr().unwrap(), s.peer_addr().unwrap(), TCP))
            .collect();
        flows.push(flow(
            udp.local_addr().unwrap(),
            udp.peer_addr().unwrap(),
            UDP,
        ));
        NodeSockets {
            pair,
            _tcp: tcp,
            _udp: udp,
            flows,
        }
    }
}

/// Runs `cases` packets from `seed` in the node namespace of a [`NodeSockets`], whose
/// connections the kernel finds in its socket tables and the model knows. Stops at the first
/// disagreement.
pub fn run(seed: u64, cases: u64, xdp: bool) -> Report {
    let sockets = NodeSockets::open();
    let flows = sockets.flows.clone();
    sockets.pair.node.within(move || {
        // The per-CPU caches answer repeats: one CPU keeps which path answers predictable.
        let _cpu = crate::OnCpu0::pin();
        run_with(seed, cases, xdp, &flows)
    })
}

fn run_with(seed: u64, cases: u64, xdp: bool, sockets: &[Flow]) -> Report {
    let mut report = Report::default();
    let mut g = Generator::new(seed, xdp).with_sockets(sockets);
    let mut kernel = Kernel::load(xdp, 0);
    let mut policy = generate::policy(&mut g.rng);
    let seq = kernel.apply(&policy);
    let mut model = Model::new(policy.clone(), seq).with_sockets(sockets);
    let mut history: Vec<String> = Vec::new();
    for case in 0..cases {
        if case > 0 && case % CASES_PER_DATAPATH == 0 {
            let gated = (case / CASES_PER_DATAPATH) % 2 == 1;
            kernel = Kernel::load(kernel.xdp, if gated { GATED_INTERVAL_NS } else { 0 });
            let seq = kernel.apply(&policy);
            model = Model::new(policy.clone(), seq).with_sockets(sockets);
            history.clear();
            history.push(format!(
                "-- fresh datapath, event interval {} ns",
                kernel.interval_ns
            ));
        }
        if g.rng.below(1000) < SWITCH_PER_MILLE {
            // A new policy (a generation switch), a small change (written in place), or the
            // same policy again.
            policy = match g.rng.below(10) {
                0..=3 => generate::policy(&mut g.rng),
                4..=7 => generate::mutate(&policy, &mut g.rng),
                _ => policy.clone(),
            };
            let seq = kernel.apply(&policy);
            model.switch(policy.clone(), seq);
            report.switches += 1;
            history.push(format!("-- policy switch to seq {seq}"));
        }
        let spec = g.packet(&policy);
        if let Err(d) = one(&mut kernel, &mut model, &spec, &mut report) {
            report.disagreements.push(format!(
                "{d}\nseed {seed}, case {case}\npolicy: {}\nbefore it (since the last fresh datapath):\n{}",
                serde_json::to_string(&policy).unwrap(),
                history.iter().rev().take(12).rev().cloned().collect::<Vec<_>>().join("\n")
            ));
            break;
        }
        report.cases += 1;
        let (frame, _) = build(&spec);
        history.push(format!("{:?} {}", spec.prog, hex(&frame)));
    }
    report
}

fn one(
    kernel: &mut Kernel,
    model: &mut Model,
    spec: &Spec,
    report: &mut Report,
) -> Result<(), String> {
    let (frame, layout) = build(spec);
    let want: Verdict = model.judge(spec, &layout);
    let dir = if spec.prog.egress() {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    };
    let watched = [
        counter::ALLOWED,
        counter::DENIED,
        counter::AUDITED,
        counter::PASSED,
        counter::CONNTRACK_HIT,
        counter::FRAGMENT,
        counter::RECENT_HIT,
        counter::NODE_SOCKET,
    ];
    let before = kernel.dp.counters().unwrap();
    let code = kernel.run(spec.prog, &frame);
    let after = kernel.dp.counters().unwrap();
    let delta = |c: u32| after.get(dir, c) - before.get(dir, c);
    let moved: Vec<u32> = watched.iter().copied().filter(|c| delta(*c) != 0).collect();
    // The reason counters say why, whether or not the denial's event was gated; with every
    // denial reported, its event must say the same.
    let reasons: Vec<u8> = (0..=reason::MAX)
        .filter(|r| delta(counter::REASON_BASE + u32::from(*r)) != 0)
        .collect();
    let events = kernel.events();
    report.recent_denials += delta(counter::RECENT_DENIAL);
    let passed = match (spec.prog, code) {
        (Prog::XdpIngress, XDP_PASS) | (Prog::TcEgress | Prog::TcIngress, TC_PASS) => true,
        (Prog::XdpIngress, XDP_DROP) | (Prog::TcEgress | Prog::TcIngress, TC_DROP) => false,
        (_, other) => return Err(format!("return code {other} from {:?}", spec.prog)),
    };
    let counter_ok = match want.counter {
        // The per-CPU cache answers known flows before the table does.
        counter::CONNTRACK_HIT => {
            moved == [counter::CONNTRACK_HIT] || moved == [counter::RECENT_HIT]
        }
        c => moved == [c],
    };
    let reason_ok = reasons == want.reason.into_iter().collect::<Vec<_>>()
        && (kernel.interval_ns != 0 || events == reasons);
    *report.by_counter.entry(want.counter).or_default() += 1;
    if passed == want.pass && counter_ok && reason_ok {
        return Ok(());
    }
    let worst = if passed && !want.pass {
        "FAIL-OPEN: the kernel passed what the model drops"
    } else {
        "disagreement"
    };
    Err(format!(
        "{worst}\nprogram {:?}, frame {} bytes: {}\nspec: {spec:?}\nmodel: {want:?}\nkernel: pass={passed} counters moved {moved:?} reasons {reasons:?} events {events:?}",
        spec.prog,
        frame.len(),
        hex(&frame)
    ))
}

/// What [`incremental`] covered.
#[derive(Debug, Default)]
pub struct IncrementalReport {
    pub rounds: u64,
    /// Rounds the datapath wrote into the running generation (the rest switched generations).
    pub in_place: u64,
    /// Of those, rounds that compiled only the changed entries (`datapath::delta`).
    pub compiled_alone: u64,
    /// Intermediate states judged, and packets judged in them.
    pub states: u64,
    pub probes: u64,
    pub disagreements: Vec<String>,
}

/// Small policy changes (`generate::mutate`) applied to a running datapath: after every write
/// of an in-place update, each probe packet (drawn from both policies) must get the old
/// policy's verdict or the new one's, and once the update is done, exactly the new one's.
/// Stops at the first packet that neither policy would give its verdict.
pub fn incremental(seed: u64, rounds: u64) -> IncrementalReport {
    let mut report = IncrementalReport::default();
    let mut g = Generator::new(seed, false);
    let mut policy = generate::policy(&mut g.rng);
    for round in 0..rounds {
        // A fresh datapath each round: its connection table then holds only what this round's
        // packets made, as the two models' tables do.
        let mut kernel = Kernel::load(false, 0);
        let seq = kernel.apply(&policy);
        let next = if g.rng.chance(10) {
            generate::policy(&mut g.rng)
        } else {
            generate::mutate(&policy, &mut g.rng)
        };
        let probes: Vec<Spec> = (0..24)
            .map(|i| g.packet(if i % 2 == 0 { &policy } else { &next }))
            .collect();
        // Both policies' models see every probe, so each keeps its own connection table.
        let mut old = Model::new(policy.clone(), seq);
        let mut new = Model::new(next.clone(), seq.wrapping_add(1).max(1));
        let mut failure: Option<String> = None;
        let mut states = 0u64;
        // State 0 is before the update: the kernel must agree with one of the two there too,
        // so that a failure later is the update's.
        let mut check = |dp: &mut Datapath| {
            if failure.is_some() {
                return;
            }
            let state = states;
            states += 1;
            let mut trace: Vec<String> = Vec::new();
            for spec in &probes {
                let (frame, layout) = build(spec);
                let (a, b) = (old.judge(spec, &layout).pass, new.judge(spec, &layout).pass);
                let code = run_on(dp, spec.prog, &frame);
                let passed = match spec.prog {
                    Prog::XdpIngress => code == XDP_PASS,
                    Prog::TcEgress | Prog::TcIngress => code == TC_PASS,
                };
                report.probes += 1;
                trace.push(format!("{spec:?} old={a} new={b} kernel={passed}"));
                if passed != a && passed != b {
                    failure = Some(
                        format!(
                            "{}: in state {state} of an in-place update (0: before it) the kernel {} what both policies {}\nspec: {spec:?}\nframe: {}",
                            if passed { "FAIL-OPEN" } else { "WRONG DROP" },
                            if passed { "passed" } else { "dropped" },
                            if passed { "drop" } else { "pass" },
                            hex(&frame)
                        ) + "\nprobes so far in this state:\n"
                            + &trace.join("\n"),
                    );
                    return;
                }
            }
        };
        check(&mut kernel.dp);
        let applied = kernel
            .dp
            .apply_observed(&next, 0, &mut check)
            .expect("apply");
        report.rounds += 1;
        report.states += states;
        if applied.steps.is_some() {
            report.in_place += 1;
        }
        if applied.compiled_alone {
            report.compiled_alone += 1;
        }
        if let Some(f) = failure {
            report.disagreements.push(format!(
                "{f}\nseed {seed}, round {round}\nold policy: {}\nnew policy: {}",
                serde_json::to_string(&policy).unwrap(),
                serde_json::to_string(&next).unwrap()
            ));
            return report;
        }
        // That the finished update is exactly the new policy is `run`'s to check: its switches
        // include the same small changes, judged by a model that saw every packet before.
        policy = next;
    }
    report
}

/// The policy of a disagreement, for a regression test.
pub fn policy_json(p: &Policy) -> String {
    serde_json::to_string_pretty(p).unwrap()
}
