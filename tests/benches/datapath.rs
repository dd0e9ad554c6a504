//! Benchmarks (not tests): `cargo xtask bench` (full) or `cargo xtask bench --smoke` (CI).
//! Prints a Markdown report; docs/benchmarks.md keeps the last full run.
//!
//! 1. Cost per packet as the kernel measures it (BPF_PROG_TEST_RUN) for the allowed (new flow),
//!    connection-table hit, denied and unprotected paths, at 10, 1,000 and 100,000 entries.
//! 2. TCP throughput over a veth pair (iperf3): no filter, trident-ports, nftables with sets,
//!    plain iptables rules, at 10, 1,000 and 10,000 entries, in one run.
//! 3. Time to apply a 100,000-entry policy; events per second from the ring buffer to the JSON
//!    writer, with losses; the agent's resident memory.
//! 4. CPU time per packet of the sending thread (`cpu`).
//! 5. The cluster source (`cluster`): from an object change to enforcement, with N backends
//!    and M PersistentVolumes in a real API server; the agent's memory with them cached.
use std::{
    net::{Ipv4Addr, Ipv6Addr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

#[path = "parts/cluster.rs"]
mod cluster;
#[path = "parts/load.rs"]
mod load;

use aya::programs::{Program, SchedClassifier, TestRun, TestRunAttrs, TestRunOptions, Xdp};
use trident_ports_agent::{
    datapath::{Datapath, IngressHook, TcAttach},
    events::{Clock, IfNames, Record, decode, explain::Explainer},
    policy::{Direction, Entry, Mode, Policy, PortRange, Proto},
};
use trident_ports_common::{DIR_EGRESS, DIR_INGRESS, counter, programs};
use trident_ports_tests::{
    OnCpu0,
    bpffs::sys_bpf,
    netns::Pair,
    packet::{ACK, SYN, TCP, ether, ipv4, ipv6, tcp, v4, v6},
};

fn entry(dst: String, port: u16) -> Entry {
    Entry {
        direction: Direction::Egress,
        peer: dst.parse().unwrap(),
        ports: PortRange::single(port),
        proto: Proto::Tcp,
        purpose: "bench".into(),
        backend: None,
        source: "bench".into(),
    }
}

/// `n` entries on `n` distinct IPv6 storage addresses, each with its own port: n peers, n rules.
fn v6_policy(n: usize) -> Policy {
    let base = u128::from("2001:db8:100::".parse::<Ipv6Addr>().unwrap());
    Policy {
        role: "worker".into(),
        mode: Mode::Enforce,
        entries: (0..n)
            .map(|i| {
                entry(
                    format!("{}/128", Ipv6Addr::from(base + i as u128)),
                    1024 + (i % 60_000) as u16,
                )
            })
            .collect(),
        ..Default::default()
    }
}

/// Every filter also allows udp/5201 to this address, after the TCP entries: the CPU part's
/// paced datagram stream.
const UDP_STREAM_DST: &str = "192.0.2.2";

/// `n` IPv4 (address, port) entries over the documentation ranges (no traffic goes to them),
/// plus 192.0.2.2 tcp/5201 for iperf3, last.
fn v4_entries(n: usize) -> Vec<(Ipv4Addr, u16)> {
    let mut v: Vec<(Ipv4Addr, u16)> = (0..n.saturating_sub(1))
        .map(|i| {
            let host = i % 508;
            let net = if host < 254 {
                [198, 51, 100, 1 + host as u8]
            } else {
                [203, 0, 113, 1 + (host - 254) as u8]
            };
            (Ipv4Addr::from(net), 10_000 + (i / 508) as u16)
        })
        .collect();
    v.push((Ipv4Addr::new(192, 0, 2, 2), 5201));
    v
}

fn run_ns(dp: &mut Datapath, prog: &str, frame: &[u8], repeat: u32) -> f64 {
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    };
    let r = match dp.program_mut(prog).unwrap() {
        Program::SchedClassifier(p) => SchedClassifier::test_run(p, opts),
        Program::Xdp(p) => Xdp::test_run(p, opts),
        _ => unreachable!(),
    }
    .expect("test run");
    r.duration.as_nanos() as f64
}

/// As `run_ns` for the XDP program, with live frames (BPF_F_TEST_XDP_LIVE_FRAMES, Linux 5.18):
/// frames from a page pool in NAPI-sized batches, as a driver hands them over, and their
/// verdicts carried out (a drop recycles the page).
fn run_live_ns(dp: &mut Datapath, frame: &[u8], repeat: u32) -> f64 {
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
        ..Default::default()
    };
    let Program::Xdp(p) = dp.program_mut(programs::XDP_INGRESS).unwrap() else {
        unreachable!()
    };
    Xdp::test_run(p, opts)
        .expect("live-frame test run")
        .duration
        .as_nanos() as f64
}

/// Frames per batch in live-frame runs: NAPI's budget.
const LIVE_BATCH: u32 = 64;

/// Name of the benchmark's empty program, by which its kernel statistics are found.
const EMPTY_PROGRAM: &str = "tp_bench_empty";

/// A SCHED_CLS program that only returns (`r0 = 0; exit`), loaded with the bpf() syscall:
/// what BPF_PROG_TEST_RUN and the kernel's run-time statistics cost on their own.
struct EmptyProgram(std::os::fd::OwnedFd);

/// Program types for `EmptyProgram::load`.
const SCHED_CLS: u32 = 3;
const XDP: u32 = 6;

impl EmptyProgram {
    fn load(prog_type: u32) -> Self {
        Self::returning(prog_type, 0)
    }

    /// A program that only returns `r0` (`mov r0, r0; exit`).
    fn returning(prog_type: u32, r0: u32) -> Self {
        // mov r0, imm (the immediate is the upper half); exit
        Self::of(prog_type, &[0xb7 | u64::from(r0) << 32, 0x95])
    }

    /// A program of raw instructions.
    fn of(prog_type: u32, insns: &[u64]) -> Self {
        #[repr(C)]
        struct ProgLoad {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
            prog_ifindex: u32,
            expected_attach_type: u32,
        }
        const BPF_PROG_LOAD: i64 = 5;
        const BPF_XDP: u32 = 37;
        let license = b"GPL\0";
        let mut prog_name = [0u8; 16];
        prog_name[..EMPTY_PROGRAM.len()].copy_from_slice(EMPTY_PROGRAM.as_bytes());
        let mut load = ProgLoad {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name,
            prog_ifindex: 0,
            // As a loader declares an XDP program (live-frame test runs refuse it otherwise).
            expected_attach_type: if prog_type == XDP { BPF_XDP } else { 0 },
        };
        let fd = sys_bpf(BPF_PROG_LOAD, &mut load).expect("loading the empty program");
        // SAFETY: a descriptor the kernel just returned, owned by nobody else.
        Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
    }

    /// The kernel's mean per repetition of one BPF_PROG_TEST_RUN.
    fn test_run_ns(&self, frame: &[u8], repeat: u32) -> f64 {
        self.run_ns(frame, repeat, 0)
    }

    /// As `test_run_ns`, with XDP live frames in batches of `batch` (0: a plain test run).
    fn run_ns(&self, frame: &[u8], repeat: u32, batch: u32) -> f64 {
        #[repr(C)]
        struct TestRunAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            /// The kernel refuses an attribute whose bytes past its last field are not zero.
            _pad: u32,
        }
        const BPF_PROG_TEST_RUN: i64 = 10;
        const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 2;
        let mut run = TestRunAttr {
            prog_fd: self.0.as_raw_fd() as u32,
            retval: 0,
            data_size_in: frame.len() as u32,
            data_size_out: 0,
            data_in: frame.as_ptr() as u64,
            data_out: 0,
            repeat,
            duration: 0,
            ctx_size_in: 0,
            ctx_size_out: 0,
            ctx_in: 0,
            ctx_out: 0,
            flags: if batch > 0 {
                BPF_F_TEST_XDP_LIVE_FRAMES
            } else {
                0
            },
            cpu: 0,
            batch_size: batch,
            _pad: 0,
        };
        sys_bpf(BPF_PROG_TEST_RUN, &mut run).expect("test run of the empty program");
        run.duration as f64
    }

    /// Runs and run time the kernel's statistics have recorded for this program so far.
    #[expect(
        clippy::unused_self,
        reason = "found by name, but only while `self` keeps it loaded"
    )]
    fn stats(&self) -> (u64, Duration) {
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.name_as_str() == Some(EMPTY_PROGRAM))
            .expect("the empty program is loaded");
        (info.run_count(), info.run_time())
    }
}

/// One eBPF instruction: opcode, registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst) << 8
        | u64::from(src) << 12
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// What the kernel itself charges for the connection table's two operations: programs that do
/// nothing but look up or insert a key of the table's size (40 bytes: an IPv6 packet's
/// addresses and ports) in an LRU hash of the table's shape (65,536 entries, 8-byte values).
/// The first packet of a flow must insert and a table hit must look up, so these are floors
/// under those columns.
struct TableFloor {
    _map: std::os::fd::OwnedFd,
    insert: EmptyProgram,
    burst: EmptyProgram,
    lookup: EmptyProgram,
}

/// Map types for `TableFloor::load`.
const HASH: u32 = 1;
const LRU_HASH: u32 = 9;

impl TableFloor {
    fn load(map_type: u32) -> Self {
        let map = trident_ports_tests::bpffs::create_map(
            map_type,
            size_of::<trident_ports_common::FlowKey>() as u32,
            size_of::<trident_ports_common::FlowState>() as u32,
            trident_ports_common::limits::FLOWS,
        );
        let fd = map.as_raw_fd();
        let program = |helper: i32, burst: bool| {
            let mut p = vec![
                insn(0xbf, 6, 1, 0, 0),  // r6 = ctx
                insn(0x61, 2, 6, 76, 0), // r2 = skb->data
                insn(0x61, 3, 6, 80, 0), // r3 = skb->data_end
                insn(0xbf, 4, 2, 0, 0),  // r4 = r2
                insn(0x07, 4, 0, 0, 62), // r4 += 62: Ethernet, IPv6 addresses, ports
                0,                       // if r4 > r3 goto out (below)
            ];
            if burst {
                // A new flow each repetition: the run reuses its packet, so count the
                // source port up in it.
                p.push(insn(0x69, 5, 2, 54, 0)); // r5 = *(u16 *)(r2 + 54)
                p.push(insn(0x07, 5, 0, 0, 1)); // r5 += 1
                p.push(insn(0x6b, 2, 5, 54, 0)); // *(u16 *)(r2 + 54) = r5
            }
            // The key: 40 bytes from the source address on (addresses, ports, sequence).
            for k in 0..5i16 {
                p.push(insn(0x79, 5, 2, 22 + 8 * k, 0)); // r5 = *(u64 *)(r2 + off)
                p.push(insn(0x7b, 10, 5, -40 + 8 * k, 0)); // *(u64 *)(r10 - 40 + 8k) = r5
            }
            p.push(insn(0x7a, 10, 0, -48, 0)); // the value: *(u64 *)(r10 - 48) = 0
            p.push(insn(0x18, 1, 1, 0, fd)); // r1 = the map (ld_imm64, BPF_PSEUDO_MAP_FD)
            p.push(0);
            p.push(insn(0xbf, 2, 10, 0, 0));
            p.push(insn(0x07, 2, 0, 0, -40)); // r2 = &key
            p.push(insn(0xbf, 3, 10, 0, 0));
            p.push(insn(0x07, 3, 0, 0, -48)); // r3 = &value
            p.push(insn(0xb7, 4, 0, 0, 0)); // r4 = BPF_ANY
            p.push(insn(0x85, 0, 0, 0, helper));
            let out = p.len();
            p[5] = insn(0x2d, 4, 3, (out - 6) as i16, 0);
            p.push(insn(0xb7, 0, 0, 0, 0)); // r0 = TC_ACT_OK
            p.push(insn(0x95, 0, 0, 0, 0));
            EmptyProgram::of(SCHED_CLS, &p)
        };
        const MAP_LOOKUP_ELEM: i32 = 1;
        const MAP_UPDATE_ELEM: i32 = 2;
        TableFloor {
            insert: program(MAP_UPDATE_ELEM, false),
            burst: program(MAP_UPDATE_ELEM, true),
            lookup: program(MAP_LOOKUP_ELEM, false),
            _map: map,
        }
    }

    /// (insert of a new flow, the same in a burst, lookup hit) in ns. The first and the last
    /// are measured as the datapath's columns are: new flows one run each, the syscall's
    /// overhead taken out with a frame that returns at once; the hit repeated on one inserted
    /// flow. The burst is one run of as many repetitions as `flows`, each a new flow (warm
    /// code, the table's memory as cold as new flows find it), into flows of `burst_dst`.
    fn measure(
        &self,
        flows: &[Vec<u8>],
        quick: &[u8],
        repeat: u32,
        burst_dst: &str,
    ) -> (f64, f64, f64) {
        let single = |p: &EmptyProgram, frames: &mut dyn Iterator<Item = &[u8]>| {
            let (mut total, mut count) = (0.0, 0);
            for f in frames {
                total += p.run_ns(f, 1, 0);
                count += 1;
            }
            total / count as f64
        };
        let baseline = single(&self.insert, &mut std::iter::repeat_n(quick, flows.len()));
        let floor = self.insert.test_run_ns(quick, repeat);
        let insert = single(&self.insert, &mut flows.iter().map(Vec::as_slice)) - baseline + floor;
        let lookup = self.lookup.test_run_ns(&flows[0], repeat);
        (insert, self.burst_ns(flows.len() as u32, burst_dst), lookup)
    }

    /// One run of `n` repetitions, each a new flow to `dst`: ns per flow.
    fn burst_ns(&self, n: u32, dst: &str) -> f64 {
        let first = v6(ipv6("2001:db8::1", dst, TCP, &tcp(1, 9, SYN)));
        self.burst.test_run_ns(&first, n)
    }
}

/// Runs of each per-packet measurement; the median is reported.
const RUNS: usize = 3;

/// Repeats `frame` through `prog` in `RUNS` test runs and returns the median of the kernel's
/// means per repetition, after checking that every repetition went the path it is reported
/// under: `counter` of direction `dir` grew by at least their number.
fn path_ns(dp: &mut Datapath, prog: &str, frame: &[u8], repeat: u32, dir: u8, counter: u32) -> f64 {
    let before = dp.counters().unwrap().get(dir, counter);
    let mut runs: Vec<f64> = (0..RUNS).map(|_| run_ns(dp, prog, frame, repeat)).collect();
    let grew = dp.counters().unwrap().get(dir, counter) - before;
    let want = RUNS as u64 * repeat as u64;
    assert!(
        grew >= want,
        "{prog}: counter {counter} grew by {grew}, not {want}"
    );
    median(&mut runs)
}

fn per_packet(smoke: bool) {
    // The recent-flow cache is per CPU: a run that moved would meet another CPU's cache.
    let _cpu = OnCpu0::pin();
    println!("## Cost per packet (BPF_PROG_TEST_RUN, ns/packet)\n");
    println!(
        "| program | entries | allowed, recent flow | allowed, table hit | allowed by rule, no table entry | allowed, new flow | denied, recent flow | denied, full path | denied, sockets asked | unprotected, recent pass | unprotected, full path | not IP | empty program |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let sizes: &[usize] = if smoke {
        &[10, 1_000]
    } else {
        &[10, 1_000, 100_000]
    };
    let repeat = if smoke { 100_000 } else { 2_000_000 };
    let new_flows = if smoke { 2_000 } else { 50_000 };
    let arp = ether(&[], 0x0806, &[0u8; 28]);
    let empty = |prog_type| {
        let p = EmptyProgram::load(prog_type);
        median(
            &mut (0..RUNS)
                .map(|_| p.test_run_ns(&arp, repeat))
                .collect::<Vec<_>>(),
        )
    };
    let (empty_tc, empty_xdp) = (empty(SCHED_CLS), empty(XDP));
    let mut flood = None;
    for &n in sizes {
        let mut dp = Datapath::load().unwrap();
        dp.load_xdp().unwrap();
        let mut p = v6_policy(n);
        // A cluster subnet allowed to the guarded node port 8000: a rule lookup with no table.
        p.entries.push(Entry {
            direction: Direction::Ingress,
            peer: "2001:db8:ffff:1::/64".parse().unwrap(),
            ports: PortRange::single(8000),
            proto: Proto::Tcp,
            purpose: "bench".into(),
            backend: None,
            source: "bench".into(),
        });
        p.guarded.push(trident_ports_agent::policy::Guard {
            port: 8000,
            proto: Proto::Tcp,
            purpose: "bench".into(),
        });
        // Event gates of a minute: no gate opens again while a path is measured, so every
        // repetition of a denied frame goes the path it is reported under.
        dp.apply(&p, 60_000_000_000).unwrap();
        // The last entry: the one inserted last into the maps.
        let i = n - 1;
        let dst =
            Ipv6Addr::from(u128::from("2001:db8:100::".parse::<Ipv6Addr>().unwrap()) + i as u128)
                .to_string();
        let port = 1024 + (i % 60_000) as u16;
        let node = "2001:db8::1";
        let frame = |src: &str, dst: &str, sport: u16, dport: u16, flags: u8| {
            v6(ipv6(src, dst, TCP, &tcp(sport, dport, flags)))
        };
        let out_est = frame(node, &dst, 61_000, port, ACK);
        let in_est = frame(&dst, node, port, 61_000, ACK);
        // The flow starts by rule; its first reply is answered by the table.
        run_ns(&mut dp, programs::TC_EGRESS, &out_est, 1);
        run_ns(&mut dp, programs::TC_INGRESS, &in_est, 1);
        let ingress_rule = frame("2001:db8:ffff:1::5", node, 50_000, 8000, SYN);
        for (prog, dir, empty) in [
            (programs::TC_EGRESS, DIR_EGRESS, empty_tc),
            (programs::TC_INGRESS, DIR_INGRESS, empty_tc),
            (programs::XDP_INGRESS, DIR_INGRESS, empty_xdp),
        ] {
            let egress = dir == DIR_EGRESS;
            let (est, denied, unprotected) = if egress {
                (
                    &out_est,
                    frame(node, &dst, 61_001, port.wrapping_add(1).max(1), SYN),
                    frame(node, "2001:db8:ffff::1", 61_002, 443, SYN),
                )
            } else {
                (
                    &in_est,
                    // Unsolicited: from the storage address to a port the node did not open.
                    frame(&dst, node, 61_003, 22, SYN),
                    frame("2001:db8:ffff::1", node, 443, 61_002, ACK),
                )
            };
            let recent = path_ns(&mut dp, prog, est, repeat, dir, counter::RECENT_HIT);
            // The connection table itself: the same packet with the recent-flow cache off.
            dp.set_recent_flows(false).unwrap();
            let hit = path_ns(&mut dp, prog, est, repeat, dir, counter::CONNTRACK_HIT);
            dp.set_recent_flows(true).unwrap();
            let rule = if egress {
                // Every allowed egress destination is protected: its flows enter the table.
                "-".to_string()
            } else {
                // The rule itself: with the recent-pass cache off.
                dp.set_recent_passes(false).unwrap();
                let ns = path_ns(&mut dp, prog, &ingress_rule, repeat, dir, counter::ALLOWED);
                dp.set_recent_passes(true).unwrap();
                format!("{ns:.1}")
            };
            let new_flow = if egress {
                // Single runs carry the syscall's timing overhead: take a frame the program
                // passes at once as the reference, and add back what it costs repeated.
                let single = |dp: &mut Datapath, frames: &mut dyn Iterator<Item = Vec<u8>>| {
                    let (mut total, mut count) = (0.0, 0);
                    for f in frames {
                        total += run_ns(dp, prog, &f, 1);
                        count += 1;
                    }
                    total / count as f64
                };
                let baseline = single(&mut dp, &mut std::iter::repeat_n(arp.clone(), new_flows));
                let mut flows =
                    (0..new_flows).map(|k| frame(node, &dst, 1 + (k % 60_000) as u16, port, SYN));
                let floor = run_ns(&mut dp, prog, &arp, repeat);
                format!("{:.1}", single(&mut dp, &mut flows) - baseline + floor)
            } else {
                "-".to_string()
            };
            // Its first packet reports the flow; the rest of the interval the recent-denial cache
            // answers (the flood case). Then every packet on the full path: parse, lookups, gate.
            run_ns(&mut dp, prog, &denied, 1);
            let denied_recent =
                path_ns(&mut dp, prog, &denied, repeat, dir, counter::RECENT_DENIAL);
            if prog == programs::XDP_INGRESS && Some(&n) == sizes.last() {
                flood = Some(flood_capacity(&mut dp, &denied, n, repeat));
            }
            dp.set_recent_denials(false).unwrap();
            let denied = path_ns(&mut dp, prog, &denied, repeat, dir, counter::DENIED);
            // From the storage's allowed port to a node port with no socket: an egress rule
            // allows the flow, so the node's sockets are asked before the verdict.
            let asked = if egress {
                "-".to_string()
            } else {
                let f = frame(&dst, node, port, 61_004, ACK);
                let ns = path_ns(&mut dp, prog, &f, repeat, dir, counter::DENIED);
                format!("{ns:.1}")
            };
            dp.set_recent_denials(true).unwrap();
            // The first packet fills the recent-pass cache, which answers the rest; then every
            // packet on the full path.
            run_ns(&mut dp, prog, &unprotected, 1);
            let passing = path_ns(
                &mut dp,
                prog,
                &unprotected,
                repeat,
                dir,
                counter::RECENT_PASS,
            );
            dp.set_recent_passes(false).unwrap();
            let unprotected = path_ns(&mut dp, prog, &unprotected, repeat, dir, counter::PASSED);
            dp.set_recent_passes(true).unwrap();
            let not_ip = path_ns(&mut dp, prog, &arp, repeat, dir, counter::PASSED);
            println!(
                "| {prog} | {n} | {recent:.1} | {hit:.1} | {rule} | {new_flow} | {denied_recent:.1} | {denied:.1} | {asked} | {passing:.1} | {unprotected:.1} | {not_ip:.1} | {empty:.1} |"
            );
        }
    }
    println!("{}", table_floors(new_flows, repeat, empty_tc, 1));
    println!(
        "\nIPv6 policies of n storage addresses with a port each (n peers and n rules), plus a cluster subnet \
         allowed to node port 8000. All columns are the kernel's mean per run and include what \
         BPF_PROG_TEST_RUN itself costs (the empty program of the same type). Recent flow: a packet of an \
         established flow, answered by the per-CPU recent-flow cache (egress: the node's packet; ingress: the \
         storage's reply); table hit: the same packet with that cache off; rule: the cluster subnet to port \
         8000, with the per-CPU recent-pass cache off; denied: egress to a port the policy lacks, ingress unsolicited from the storage address, \
         repeated within its event interval (60 s here) and answered by the per-CPU recent-denial cache \
         (recent flow), or with that cache off (full path: parse, lookups, the event gate); sockets asked: \
         unsolicited on the full path, but from the storage's allowed port, so that the node's socket \
         tables are asked whether it is a connection of the node's (it is not); \
         unprotected: to or from an address not in the policy, answered by the recent-pass cache \
         (recent pass) or with that cache off (full path: parse, peer lookups, guard check). The median of {RUNS} runs of {repeat} repetitions \
         each, every repetition checked against the counter of the path it is reported under. New flow (rule lookup plus a \
         connection-table insert): {new_flows} single-packet runs, each a new flow, less the mean single run \
         of a frame the program passes at once (the syscall's timing overhead), plus that frame's \
         repeated-run cost.\n"
    );
    if let Some(table) = flood {
        println!("{table}");
    }
}

/// The kernel's own cost of the table operations under the new-flow and table-hit columns (see
/// `TableFloor`). `rounds` repeats the warm bursts alone, so that a profiler attached to CPU 0
/// (`perf record -C 0 -- cargo xtask bench floor`) sees mostly the map's insert.
fn table_floors(new_flows: usize, repeat: u32, empty_tc: f64, rounds: usize) -> String {
    let arp = ether(&[], 0x0806, &[0u8; 28]);
    let flows: Vec<Vec<u8>> = (0..new_flows)
        .map(|k| {
            let sport = 1 + (k % 60_000) as u16;
            v6(ipv6(
                "2001:db8::1",
                "2001:db8:100::1",
                TCP,
                &tcp(sport, 9, SYN),
            ))
        })
        .collect();
    let floor = |map_type| {
        let table = TableFloor::load(map_type);
        let (mut inserts, mut bursts, mut lookups) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..RUNS {
            // Each run's burst meets a table that earlier runs filled: it evicts.
            let (i, b, l) = table.measure(&flows, &arp, repeat, &format!("2001:db8:200::{run:x}"));
            inserts.push(i);
            bursts.push(b);
            lookups.push(l);
        }
        for run in RUNS..RUNS * rounds {
            bursts.push(table.burst_ns(new_flows as u32, &format!("2001:db8:200::{run:x}")));
        }
        let (min, max) = bursts
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), b| (lo.min(*b), hi.max(*b)));
        (median(&mut inserts), (min, max), median(&mut lookups))
    };
    let ((lru_insert, lru_burst, lru_lookup), (insert, burst, lookup)) =
        (floor(LRU_HASH), floor(HASH));
    let mut out = format!(
        "\nFloors under the connection-table columns, measured the same way: a TC program that does nothing but insert a new flow's 40-byte key into an LRU hash of the table's shape (65,536 entries) costs {lru_insert:.1} ns; one that only looks a present key up, {lru_lookup:.1} ns. With a plain (preallocated, never evicting) hash instead: {insert:.1} and {lookup:.1} ns. The empty TC program: {empty_tc:.1} ns."
    );
    out += &format!(
        "\nThe insert again, warm: {new_flows} new flows in one run (the program counts the source port up in the packet the run reuses), {} runs: LRU hash {:.0}-{:.0} ns per flow, plain hash {:.0}-{:.0} ns (the plain hash stops inserting once full).",
        RUNS * rounds,
        lru_burst.0,
        lru_burst.1,
        burst.0,
        burst.1
    );
    out
}

/// Flood capacity of the XDP program against one that only drops, in the same run: the kernel's
/// mean time per frame through BPF_PROG_TEST_RUN with live frames (whole nanoseconds), as
/// frames per second. (The wall clock around a run is no use: each run first sets up a page
/// pool, about 23 ms here.) The two programs take turns, and each share compares one run with
/// the drop-only run just before it: the machine's pace drifts between runs (the drop-only rate
/// moved between 17.5 and 20.0 Mpps from one full run to the next).
fn flood_capacity(dp: &mut Datapath, frame: &[u8], entries: usize, repeat: u32) -> String {
    const XDP_DROP: u32 = 1;
    let drop_only = EmptyProgram::returning(XDP, XDP_DROP);
    // (drop-only frames per second, the other program's, its share of drop-only): medians over
    // FLOOD_PAIRS runs of the other program, each after a drop-only run.
    let paired = |run: &mut dyn FnMut() -> f64| {
        let (mut base, mut other, mut shares) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..FLOOD_PAIRS {
            let b = drop_only.run_ns(frame, repeat, LIVE_BATCH);
            let o = run();
            base.push(b);
            other.push(o);
            shares.push(b / o);
        }
        (
            1e9 / median(&mut base),
            1e9 / median(&mut other),
            median(&mut shares),
        )
    };
    // Ours, every frame of which must have gone the path it is reported under.
    let pairs = |dp: &mut Datapath, c: u32| {
        let before = dp.counters().unwrap().get(DIR_INGRESS, c);
        let measured = paired(&mut || run_live_ns(dp, frame, repeat));
        let grew = dp.counters().unwrap().get(DIR_INGRESS, c) - before;
        assert!(
            grew >= FLOOD_PAIRS as u64 * u64::from(repeat),
            "flood capacity: counter {c} grew by {grew}"
        );
        measured
    };
    // How much of any filter's cost is reading the frame at all: a program that loads the words
    // our programs identify a flow by (as `parse::flow_words` does for IPv6) and drops.
    let reader = EmptyProgram::of(XDP, &header_reader(XDP_DROP));
    let (_, reads, read_share) = paired(&mut || reader.run_ns(frame, repeat, LIVE_BATCH));
    // The first frame reports the flow; the rest of the interval the cache answers.
    run_live_ns(dp, frame, 1);
    let (base, recent, recent_share) = pairs(dp, counter::RECENT_DENIAL);
    dp.set_recent_denials(false).unwrap();
    let (_, full, full_share) = pairs(dp, counter::DENIED);
    dp.set_recent_denials(true).unwrap();
    let shares: Vec<String> = [recent_share, full_share]
        .iter()
        .map(|s| format!("{:.0}%", 100.0 * s))
        .collect();
    let mpps = |r: f64| r / 1e6;
    format!(
        "## Flood capacity (XDP, live frames)\n\n\
         | program | Mpps | of drop-only |\n|---|---:|---:|\n\
         | drop-only (`r0 = XDP_DROP; exit`) | {:.2} | 100% |\n\
         | reads the IPv6 flow's header words, then drops (a raw program) | {:.2} | {:.0}% |\n\
         | tp_xdp_ingress, denied flow reported moments ago (recent-denial cache) | {:.2} | {} |\n\
         | tp_xdp_ingress, denied, full path (cache off) | {:.2} | {} |\n\n\
         One unsolicited TCP frame from a protected storage address ({entries}-entry policy), \
         {repeat} frames per run through BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES in \
         batches of {LIVE_BATCH} on CPU 0. Each row is the median of {FLOOD_PAIRS} runs of the \
         kernel's mean time per frame (whole nanoseconds: about 2% at these rates), every frame \
         checked against the counter of its path. Each of those runs follows a drop-only run, and \
         the share is the median of the {FLOOD_PAIRS} shares of such neighbours.\n",
        mpps(base),
        mpps(reads),
        100.0 * read_share,
        mpps(recent),
        shares[0],
        mpps(full),
        shares[1],
    )
}

/// An XDP program that bounds-checks the frame for an IPv6 TCP header, loads the five words
/// `parse::flow_words` takes (addresses and ports), and returns `action`.
fn header_reader(action: u32) -> Vec<u64> {
    // opcode | dst << 8 | src << 12 | off << 16 | imm << 32
    let insn = |op: u64, dst: u64, src: u64, off: i16, imm: i32| {
        op | dst << 8 | src << 12 | u64::from(off as u16) << 16 | u64::from(imm as u32) << 32
    };
    let (ldx_w, ldx_dw, mov, add_k, xor, jgt, mov_k, exit) =
        (0x61, 0x79, 0xbf, 0x07, 0xaf, 0x2d, 0xb7, 0x95);
    vec![
        insn(ldx_w, 2, 1, 0, 0),   // r2 = ctx->data
        insn(ldx_w, 3, 1, 4, 0),   // r3 = ctx->data_end
        insn(mov, 4, 2, 0, 0),     // r4 = r2
        insn(add_k, 4, 0, 0, 58),  // r4 += Ethernet + IPv6 + ports
        insn(jgt, 4, 3, 9, 0),     // if r4 > r3 goto exit
        insn(ldx_dw, 0, 2, 22, 0), // the addresses: four words
        insn(ldx_dw, 5, 2, 30, 0),
        insn(xor, 0, 5, 0, 0),
        insn(ldx_dw, 5, 2, 38, 0),
        insn(xor, 0, 5, 0, 0),
        insn(ldx_dw, 5, 2, 46, 0),
        insn(xor, 0, 5, 0, 0),
        insn(ldx_w, 5, 2, 54, 0), // the ports
        insn(xor, 0, 5, 0, 0),
        insn(mov_k, 0, 0, 0, action as i32),
        insn(exit, 0, 0, 0, 0),
    ]
}

/// Pairs of flood runs (drop-only, then ours) per measured path.
const FLOOD_PAIRS: usize = 7;

fn sh(ns: &str, cmd: &str) {
    let ok = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "{cmd}");
}

fn nft_rules(entries: &[(Ipv4Addr, u16)]) -> String {
    let elems: Vec<String> = entries
        .iter()
        .map(|(a, p)| format!("{a} . tcp . {p}"))
        .chain(std::iter::once(format!("{UDP_STREAM_DST} . udp . 5201")))
        .collect();
    let mut addrs: Vec<String> = entries.iter().map(|(a, _)| a.to_string()).collect();
    addrs.sort();
    addrs.dedup();
    format!(
        "table inet bench {{\n\
         \tset egress {{\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\telements = {{ {} }}\n\t}}\n\
         \tset protected {{\n\t\ttype ipv4_addr\n\t\telements = {{ {} }}\n\t}}\n\
         \tchain output {{\n\t\ttype filter hook output priority filter; policy accept;\n\
         \t\tip daddr . meta l4proto . th dport @egress accept\n\t\tip daddr @protected drop\n\t}}\n\
         \tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n\
         \t\tct state established,related accept\n\t\tip saddr @protected drop\n\t}}\n}}\n",
        elems.join(", "),
        addrs.join(", ")
    )
}

fn iptables_rules(entries: &[(Ipv4Addr, u16)]) -> String {
    let mut s =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    s.push_str("-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for (a, p) in entries {
        s.push_str(&format!(
            "-A OUTPUT -d {a}/32 -p tcp -m tcp --dport {p} -j ACCEPT\n"
        ));
    }
    s.push_str(&format!(
        "-A OUTPUT -d {UDP_STREAM_DST}/32 -p udp -m udp --dport 5201 -j ACCEPT\n"
    ));
    s.push_str("-A OUTPUT -d 192.0.2.2/32 -j DROP\nCOMMIT\n");
    s
}

fn iperf(pair: &Pair, seconds: u32) -> f64 {
    iperf_streams(pair, seconds, 1)
}

fn iperf_streams(pair: &Pair, seconds: u32, streams: u32) -> f64 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.node.name,
            "iperf3",
            "-c",
            "192.0.2.2",
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9
}

#[derive(Clone, Copy, PartialEq)]
enum Filter {
    None,
    TridentPorts,
    Nftables,
    Iptables,
}

const FILTERS: [Filter; 4] = [
    Filter::None,
    Filter::TridentPorts,
    Filter::Nftables,
    Filter::Iptables,
];

/// trident-ports enforcing an allow list of `entries` on the node side of `pair`, in process;
/// dropping the datapath detaches it.
fn trident_ports_on(pair: &Pair, entries: &[(Ipv4Addr, u16)], recent_flows: bool) -> Datapath {
    let node_if = pair.node_if.clone();
    let policy = Policy {
        role: "worker".into(),
        entries: entries
            .iter()
            .map(|(a, p)| entry(format!("{a}/32"), *p))
            .chain(std::iter::once(Entry {
                proto: Proto::Udp,
                ..entry(format!("{UDP_STREAM_DST}/32"), 5201)
            }))
            .collect(),
        ..Default::default()
    };
    pair.node.within(move || {
        let mut dp = Datapath::load().unwrap();
        dp.apply(&policy, 1_000_000_000).unwrap();
        dp.set_recent_flows(recent_flows).unwrap();
        dp.attach(&node_if, TcAttach::default(), IngressHook::default())
            .unwrap();
        dp
    })
}

/// One iperf3 run with `filter` installed on the node side for `entries`, removed afterwards.
fn iperf_with(pair: &Pair, filter: Filter, entries: &[(Ipv4Addr, u16)], seconds: u32) -> f64 {
    with_filter(pair, filter, entries, || iperf(pair, seconds))
}

/// Runs `f` with `filter` installed on the node side for `entries`, and removes it afterwards.
fn with_filter<T>(
    pair: &Pair,
    filter: Filter,
    entries: &[(Ipv4Addr, u16)],
    f: impl FnOnce() -> T,
) -> T {
    let node = pair.node.name.clone();
    let tmp =
        |ext: &str| std::env::temp_dir().join(format!("tp-bench-{}.{ext}", std::process::id()));
    match filter {
        Filter::None => f(),
        Filter::TridentPorts => {
            let dp = trident_ports_on(pair, entries, true);
            let out = f();
            drop(dp);
            out
        }
        Filter::Nftables => {
            let file = tmp("nft");
            std::fs::write(&file, nft_rules(entries)).unwrap();
            sh(&node, &format!("nft -f {}", file.display()));
            let out = f();
            sh(&node, "nft delete table inet bench");
            let _ = std::fs::remove_file(file);
            out
        }
        Filter::Iptables => {
            let file = tmp("ipt");
            std::fs::write(&file, iptables_rules(entries)).unwrap();
            sh(&node, &format!("iptables-restore < {}", file.display()));
            let out = f();
            sh(&node, "iptables -F && iptables -X");
            let _ = std::fs::remove_file(file);
            out
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn throughput(smoke: bool) {
    println!("## TCP throughput over a veth pair (iperf3, one stream, Gbit/s)\n");
    let (seconds, rounds) = if smoke { (1, 1) } else { (3, 7) };
    let pair = Pair::standard();
    let mut server = iperf_server(&pair);
    println!(
        "| entries | no filter | trident-ports | nftables (sets) | iptables (rules) | trident-ports runs |"
    );
    println!("|---:|---:|---:|---:|---:|---|");
    let sizes: &[usize] = if smoke { &[10] } else { &[10, 1_000, 10_000] };
    for &n in sizes {
        let entries = v4_entries(n);
        // Rounds interleave the four set-ups, so that drift of the machine hits them alike.
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); FILTERS.len()];
        for _ in 0..rounds {
            for (k, f) in FILTERS.iter().enumerate() {
                runs[k].push(iperf_with(&pair, *f, &entries, seconds));
            }
        }
        let tp_runs: Vec<String> = runs[1].iter().map(|g| format!("{g:.1}")).collect();
        let med: Vec<f64> = runs.iter_mut().map(|r| median(r)).collect();
        let base = med[0];
        let pct = |g: f64| format!("{g:.2} ({:.0}%)", 100.0 * g / base);
        println!(
            "| {n} | {base:.2} | {} | {} | {} | {} |",
            pct(med[1]),
            pct(med[2]),
            pct(med[3]),
            tp_runs.join(", ")
        );
    }
    println!(
        "\nMedians of {rounds} runs of {seconds} s each, the four set-ups interleaved round by round; the \
         percentages are of the no-filter median. One iperf3 stream from the node namespace to the storage \
         namespace; the filters sit on the node side (trident-ports: TC egress and ingress programs; \
         nftables/iptables: output and input hooks), with the iperf3 flow's entry last.\n"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// CPU time of the calling thread so far, in ns: the scheduler's exact count, not the tick
/// samples `getrusage` scales by.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Kernel CPU per packet at a fixed offered load: one thread in the node namespace sends
/// 1400-byte UDP datagrams to the storage side at `pps`, paced by the millisecond, while a
/// thread there drains them. Every filter here sits on the sending path (TC egress, the output
/// hook), which runs in the sender's system calls: the sender's CPU time per datagram is the
/// socket send plus the filter. Returns (ns per datagram, datagrams per second sent).
fn kernel_cpu_per_packet(pair: &Pair, pps: u64, seconds: u32) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let stop = stop.clone();
        pair.storage.run(move || {
            let s = UdpSocket::bind((UDP_STREAM_DST, 5201)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let _ = s.recv(&mut buf);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let result = pair.node.within(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect((UDP_STREAM_DST, 5201)).unwrap();
        let payload = [0u8; 1400];
        let per_ms = pps / 1000;
        let (cpu0, t0) = (thread_cpu_ns(), Instant::now());
        let (mut sent, mut ms) = (0u64, 0u64);
        let end = Duration::from_secs(seconds.into());
        // Ends on time even when a filter cannot keep up with the offered rate.
        while ms < end.as_millis() as u64 && t0.elapsed() < end {
            for _ in 0..per_ms {
                if s.send(&payload).is_ok() {
                    sent += 1;
                }
            }
            ms += 1;
            // Pace by the clock, not by sleeps that add up.
            let due = Duration::from_millis(ms);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let cpu = thread_cpu_ns() - cpu0;
        (
            cpu as f64 / sent.max(1) as f64,
            sent as f64 / t0.elapsed().as_secs_f64(),
        )
    });
    stop.store(true, Ordering::Relaxed);
    drain.join().unwrap();
    result
}

/// The kernel's CPU time per packet at a fixed offered load, each filter beside the others in
/// one run: throughput alone saturates at the veth's limit for all but iptables.
fn cpu_per_packet(smoke: bool) {
    println!(
        "## Kernel CPU per packet at a fixed offered load (UDP, 1400 B, {CPU_PPS} datagrams/s)\n"
    );
    let (seconds, rounds) = if smoke { (1, 1) } else { (5, 5) };
    let sizes: &[usize] = if smoke { &[1_000] } else { &[1_000, 100_000] };
    let pair = Pair::standard();
    println!("| entries | no filter | trident-ports | nftables (sets) | iptables (rules) |");
    println!("|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let entries = v4_entries(n);
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); FILTERS.len()];
        for _ in 0..rounds {
            for (k, f) in FILTERS.iter().enumerate() {
                runs[k].push(with_filter(&pair, *f, &entries, || {
                    kernel_cpu_per_packet(&pair, CPU_PPS, seconds)
                }));
            }
        }
        let cells: Vec<String> = runs
            .iter()
            .map(|r| {
                let mut ns: Vec<f64> = r.iter().map(|x| x.0).collect();
                let mut pps: Vec<f64> = r.iter().map(|x| x.1).collect();
                let (lo, hi) = (
                    ns.iter().copied().fold(f64::MAX, f64::min),
                    ns.iter().copied().fold(0.0, f64::max),
                );
                format!(
                    "{:.0} ns ({lo:.0}-{hi:.0}), {:.0}k pkt/s",
                    median(&mut ns),
                    median(&mut pps) / 1000.0
                )
            })
            .collect();
        println!("| {n} | {} |", cells.join(" | "));
    }
    println!(
        "\nThe sending thread's CPU time (CLOCK_THREAD_CPUTIME_ID; almost all of it in send(2)) divided by the datagrams \
         it sent: the socket send plus every filter on the way out (trident-ports: TC egress; \
         nftables/iptables: the output hook), with the stream's entry last. Medians of {rounds} \
         runs of {seconds} s, range in brackets, the set-ups interleaved round by round; the \
         difference from the no-filter column is the filter's cost. Datagrams per second is the \
         rate achieved: a filter that cannot keep up with the offered rate shows it there.\n"
    );
}

/// Offered load of the CPU part: about 1 Gbit/s of 1400-byte datagrams, well under the veth's
/// limit for every filter but iptables.
const CPU_PPS: u64 = 89_000;

/// Runs and run time of one attached program so far, as the kernel counts them while
/// BPF_ENABLE_STATS is on.
fn prog_stats(dp: &mut Datapath, prog: &str) -> (u64, Duration) {
    let info = dp.program_mut(prog).unwrap().info().unwrap();
    (info.run_count(), info.run_time())
}

fn iperf_server(pair: &Pair) -> std::process::Child {
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.storage.name,
            "iperf3",
            "-s",
            "-B",
            "192.0.2.2",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server
}

/// The programs' own cost per packet on real traffic: the kernel's run-time statistics
/// (BPF_ENABLE_STATS) of the attached programs while iperf3 runs through them. No test-run
/// harness is involved; each run is timed by the kernel around the program call.
fn real_traffic(smoke: bool) {
    println!("## Cost per packet on real traffic (kernel run-time statistics, ns/packet)\n");
    println!(
        "| entries | streams | recent-flow cache | egress packets | egress ns/packet | ingress packets | ingress ns/packet | answered by the cache (egress, ingress) |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    let seconds = if smoke { 1 } else { 3 };
    let pair = Pair::standard();
    let mut server = iperf_server(&pair);
    let runs: &[(usize, u32, bool)] = if smoke {
        &[(10, 1, true)]
    } else {
        &[
            (10, 1, true),
            (10, 1, false),
            (100_000, 1, true),
            (100_000, 1, false),
            (100_000, 8, true),
            (100_000, 8, false),
        ]
    };
    let per = |a: (u64, Duration), b: (u64, Duration)| {
        let runs = b.0 - a.0;
        (
            runs,
            b.1.checked_sub(a.1).unwrap().as_nanos() as f64 / runs.max(1) as f64,
        )
    };
    let mut last = None;
    for &(n, streams, cache) in runs {
        let mut dp = trident_ports_on(&pair, &v4_entries(n), cache);
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        let e0 = prog_stats(&mut dp, programs::TC_EGRESS);
        let i0 = prog_stats(&mut dp, programs::TC_INGRESS);
        // Throughput is measured on its own (interleaved medians); a single run here says little.
        let _ = iperf_streams(&pair, seconds, streams);
        let e1 = prog_stats(&mut dp, programs::TC_EGRESS);
        let i1 = prog_stats(&mut dp, programs::TC_INGRESS);
        drop(stats);
        let c = dp.counters().unwrap();
        assert_eq!(
            c.get(DIR_EGRESS, counter::DENIED),
            0,
            "the iperf3 flows are allowed"
        );
        let (ep, ens) = per(e0, e1);
        let (ip, ins) = per(i0, i1);
        let cached = |d| {
            let hits = c.get(d, counter::RECENT_HIT);
            let allowed = hits + c.get(d, counter::CONNTRACK_HIT) + c.get(d, counter::ALLOWED);
            format!("{:.2}%", 100.0 * hits as f64 / allowed.max(1) as f64)
        };
        println!(
            "| {n} | {streams} | {} | {ep} | {ens:.1} | {ip} | {ins:.1} | {}, {} |",
            if cache { "on" } else { "off" },
            cached(DIR_EGRESS),
            cached(DIR_INGRESS)
        );
        last = Some(dp);
    }
    // What the statistics themselves add: an empty program, and the same program on one of
    // the iperf3 flow's packets, repeated in BPF_PROG_TEST_RUN (caches hot) with statistics on.
    let repeat = if smoke { 100_000 } else { 2_000_000 };
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let empty = EmptyProgram::load(SCHED_CLS);
    let arp = ether(&[], 0x0806, &[0u8; 28]);
    let s0 = empty.stats();
    empty.test_run_ns(&arp, repeat);
    let (_, floor) = per(s0, empty.stats());
    let mut dp = last.unwrap();
    let ack = v4(ipv4(
        "192.0.2.1",
        "192.0.2.2",
        TCP,
        0,
        &tcp(40_000, 5201, ACK),
    ));
    run_ns(&mut dp, programs::TC_EGRESS, &ack, 1);
    let h0 = prog_stats(&mut dp, programs::TC_EGRESS);
    run_ns(&mut dp, programs::TC_EGRESS, &ack, repeat);
    let (_, hot) = per(h0, prog_stats(&mut dp, programs::TC_EGRESS));
    drop(stats);
    println!(
        "\nOne {seconds}-s iperf3 run (node namespace to storage namespace) per row, through the TC egress and \
         ingress programs on the node side, with the iperf3 entry last in an IPv4 policy of n (address, port) \
         entries. The mean is the kernel's run_time_ns / run_cnt over the run (BPF_ENABLE_STATS): the program \
         call itself plus two clock reads around it, no BPF_PROG_TEST_RUN harness. Every packet is allowed: \
         the first of each flow by a rule, the rest by the recent-flow cache or (cache off) the connection \
         table.\n"
    );
    println!(
        "Recorded the same way, {repeat} BPF_PROG_TEST_RUN repetitions (caches hot): an empty program \
         {floor:.1} ns (the statistics' own clock reads), the egress program on an iperf3 packet with the \
         last row's policy {hot:.1} ns.\n"
    );
    let _ = server.kill();
    let _ = server.wait();
}

fn apply_and_events(smoke: bool) {
    println!("## Policy switch, event stream, memory\n");
    let n = if smoke { 10_000 } else { 100_000 };
    let mut dp = Datapath::load().unwrap();
    let p = v6_policy(n);
    let t = Instant::now();
    let a = dp.apply(&p, 0).unwrap();
    let (first, first_in_force) = (t.elapsed(), a.in_force);
    // Medians of 5 switches from a running generation.
    let (mut done, mut in_force) = (Vec::new(), Vec::new());
    // Every port moved: more changes than an in-place update takes, so each is a switch.
    let mut shifted = p.clone();
    for e in &mut shifted.entries {
        e.ports = PortRange::single(e.ports.from.wrapping_add(1).max(1));
    }
    for i in 0..5 {
        let t = Instant::now();
        let a = dp.apply(if i % 2 == 0 { &shifted } else { &p }, 0).unwrap();
        assert!(a.steps.is_none(), "a generation switch");
        done.push(t.elapsed());
        in_force.push(a.in_force);
    }
    done.sort();
    in_force.sort();
    // One backend's change: one peer's port moves, then back; only the changed entries are
    // compiled and written in place. The switches above ended on `shifted`: back to `p` first,
    // or the first change is a switch (every port differs). Policies of n/100 and n/10 entries
    // show what the size costs.
    let t = Instant::now();
    let _ = trident_ports_agent::datapath::compile(&p, 0);
    let compile = t.elapsed();
    let mut small_lines = Vec::new();
    for m in [n / 100, n / 10, n] {
        let base = if m == n { p.clone() } else { v6_policy(m) };
        dp.apply(&base, 0).unwrap();
        // One backend's port; then two backends far apart, one's address and the other's port.
        let mut port = base.clone();
        port.entries[m / 2].ports = PortRange::single(9);
        let mut two = base.clone();
        two.entries[m / 5].peer = "2001:db8:ffff::1/128".parse().unwrap();
        two.entries[4 * m / 5].ports = PortRange::single(9);
        let mut medians = Vec::new();
        for changed in [&port, &two] {
            let (mut small, mut steps) = (Vec::new(), 0);
            for i in 0..6 {
                let t = Instant::now();
                let a = dp
                    .apply(if i % 2 == 0 { changed } else { &base }, 0)
                    .unwrap();
                small.push(t.elapsed());
                steps = a.steps.expect("a small change is written in place");
                assert!(a.compiled_alone, "a host entry's change compiles alone");
            }
            small.sort();
            medians.push(format!(
                "{:.2?} ({:.2?}-{:.2?}, {steps} steps)",
                small[3], small[0], small[5]
            ));
        }
        small_lines.push(format!("| {m} | {} | {} |", medians[0], medians[1]));
    }
    println!(
        "- Small changes: only the changed entries compiled, written in place; done after (median of 6, range). Compiling the whole {n}-entry policy instead takes {compile:.2?}.\n\n| entries | one backend's port | two backends far apart (an address, a port) |\n|---|---|---|\n{}\n",
        small_lines.join("\n")
    );
    println!(
        "- Applying a {n}-entry policy ({n} peers, {n} rules per direction as needed): into empty maps, in force after {first_in_force:.2?} and done after {first:.2?} (maps this process created: no walk; a process that adopted pinned maps walks them for leftovers first); as a switch from a running generation, in force after {:.2?} (compile, write the idle generation, flip) and done after {:.2?} (the previous generation deleted), medians of 5 ({:.2?}-{:.2?}).",
        in_force[2], done[2], done[0], done[4]
    );

    // Events: a producer makes one denied packet per flow as fast as test runs go; the consumer
    // drains the ring buffer into JSON lines as the agent does.
    let mut rb = dp.take_events().unwrap();
    let explainer = Explainer::new(Arc::new(p.clone()));
    let clock = Clock::new();
    let stop = Arc::new(AtomicBool::new(false));
    let duration = Duration::from_secs(if smoke { 1 } else { 3 });
    let dst = "2001:db8:100::1".to_string();
    let frames: Vec<Vec<u8>> = (0..60_000u16)
        .map(|k| v6(ipv6("2001:db8::1", &dst, TCP, &tcp(1 + k, 9, SYN))))
        .collect();
    let s = stop.clone();
    let consumer = std::thread::spawn(move || {
        let mut lines = 0u64;
        let mut bytes = 0usize;
        let mut out = Vec::with_capacity(1 << 20);
        let mut names = IfNames::default();
        // Time spent turning records into lines, without the waits for more: the writer's
        // own capacity, whatever the producer manages.
        let mut busy = Duration::ZERO;
        loop {
            let mut got = false;
            let batch = Instant::now();
            while let Some(item) = rb.next() {
                got = true;
                let ev = decode(&item).unwrap();
                let mut rec = Record::from_event(&ev, &clock, &mut names);
                explainer.explain(&ev, &mut rec);
                serde_json::to_writer(&mut out, &rec).unwrap();
                out.push(b'\n');
                lines += 1;
                if out.len() > (1 << 20) {
                    bytes += out.len();
                    out.clear();
                }
            }
            busy += batch.elapsed();
            if !got && s.load(Ordering::Relaxed) {
                break;
            }
            if !got {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        (lines, bytes + out.len(), busy)
    });
    let start = Instant::now();
    let mut produced = 0u64;
    while start.elapsed() < duration {
        let f = &frames[(produced % frames.len() as u64) as usize];
        run_ns(&mut dp, programs::TC_EGRESS, f, 1);
        produced += 1;
    }
    let elapsed = start.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (lines, bytes, busy) = consumer.join().unwrap();
    let c = dp.counters().unwrap();
    let lost = c.get(DIR_EGRESS, counter::EVENTS_LOST);
    let suppressed = c.get(DIR_EGRESS, counter::EVENTS_SUPPRESSED);
    println!(
        "- Events: {produced} denied packets in {elapsed:.2?} ({:.0}/s), {lines} JSON lines written ({:.0} lines/s, {:.1} MB), {lost} lost, {suppressed} suppressed (flows repeat after 60,000); the writer was busy {busy:.2?}, {:.0} lines per busy second.",
        produced as f64 / elapsed.as_secs_f64(),
        lines as f64 / elapsed.as_secs_f64(),
        bytes as f64 / 1e6,
        lines as f64 / busy.as_secs_f64()
    );
    drop(dp);
    rss(n);
}

fn rss(n: usize) {
    // The agent binary with an n-entry allow list, in its own namespace.
    let pair = Pair::standard();
    let dir = std::env::temp_dir().join(format!("tp-bench-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = String::from("events: {interval: 1s}\nallow:\n");
    for (a, p) in v4_entries(n) {
        cfg.push_str(&format!(
            "  - {{dst: {a}, ports: {p}, proto: tcp, reason: bench}}\n"
        ));
    }
    std::fs::write(dir.join("node.yaml"), cfg).unwrap();
    for (label, config) in [
        ("a 1-entry policy", None),
        (&*format!("a {n}-entry policy"), Some(dir.join("node.yaml"))),
    ] {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pair.node.name])
            .arg(trident_ports_tests::agent::binary())
            .args(["run", "--pin-dir", "none"]);
        let small = dir.join("small.yaml");
        std::fs::write(
            &small,
            "allow:\n  - {dst: 192.0.2.2, ports: 2049, proto: tcp, reason: bench}\n",
        )
        .unwrap();
        cmd.args([
            "--config",
            config.as_ref().unwrap_or(&small).to_str().unwrap(),
            "--iface",
            &pair.node_if,
            "--socket",
            dir.join("s.sock").to_str().unwrap(),
        ]);
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        use std::io::BufRead;
        while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("attached") {
            line.clear();
        }
        let ready = t.elapsed();
        // Resident once start-up is over: it gives the heap of reading and compiling back after
        // the attach and before it serves. (Measured 500 ms after the attach, the figure
        // depended on when the first look at the files had parsed the configuration again:
        // 24 or 125-151 MiB at 100,000 entries, twenty-third session.)
        while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("serving flows") {
            line.clear();
        }
        std::thread::sleep(Duration::from_secs(1));
        let resident = || {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
            let kib: f64 = status
                .lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap()
                .parse()
                .unwrap();
            kib / 1024.0
        };
        let started = resident();
        // A reload (SIGHUP: the same policy applied again) keeps the previous policy's explainer
        // for 5 s (`events::explain`), then gives its memory back.
        // SAFETY: kill(2) on a child this benchmark started; no memory is involved.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("policy reloaded") {
            line.clear();
        }
        std::thread::sleep(Duration::from_millis(500));
        let during = resident();
        std::thread::sleep(Duration::from_millis(5500));
        let after = resident();
        println!(
            "- Agent (release build) with {label}: {started:.1} MiB resident, attached {ready:.2?} after start; after a reload {during:.1} MiB while the previous policy's explainer is kept, {after:.1} MiB once it is let go."
        );
        // SAFETY: kill(2) on a child this test started; no memory is involved.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(dir);
    println!();
}

fn main() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "the benchmarks load eBPF programs and create namespaces: run as root"
    );
    let smoke = std::env::args().any(|a| a == "--smoke");
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    println!(
        "# trident-ports benchmarks{}\n",
        if smoke { " (smoke)" } else { "" }
    );
    println!(
        "Kernel {}, {} CPUs.\n",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim(),
        std::thread::available_parallelism().unwrap()
    );
    // Only when named: `packet` prints the same.
    if only.iter().any(|o| o == "floor") {
        let _cpu = OnCpu0::pin();
        let empty = EmptyProgram::load(SCHED_CLS);
        let arp = ether(&[], 0x0806, &[0u8; 28]);
        let empty_tc = empty.test_run_ns(&arp, 1_000_000);
        let rounds = if smoke { 1 } else { 100 };
        println!("## The connection table's floors\n");
        println!("{}", table_floors(50_000, 2_000_000, empty_tc, rounds));
    }
    if want("load") {
        load::load(smoke);
    }
    if want("packet") {
        per_packet(smoke);
    }
    if want("traffic") {
        real_traffic(smoke);
    }
    if want("throughput") {
        throughput(smoke);
    }
    if want("events") {
        apply_and_events(smoke);
    }
    if want("cpu") {
        cpu_per_packet(smoke);
    }
    if want("cluster") {
        cluster::cluster(smoke);
    }
}
