//! Developer tasks: `cargo xtask setup | build | run | test`.
mod apiserver;
mod binaries;
mod demo;
mod fuzz;
mod parallel;
mod peers;
mod setup;
mod suites;
mod vm;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build needs: the nightly's rust-src and bpf-linker (idempotent).
    Setup,
    /// Build the kube-apiserver the cluster tests run against, from Debian's sources (once, about
    /// 3 minutes; `test` and `bench` do it when it is missing). Prints its path.
    Apiserver,
    /// Install everything the tests, the VM matrix, the benchmarks and the fuzzing need (the
    /// Debian packages in one apt-get, kubernetes-validate, cargo-fuzz), fetch the VM kernels,
    /// then build the kube-apiserver. Each command installs what it needs anyway; CI runs this
    /// in the background while it builds, since most of it is downloading.
    Prepare {
        /// The kernels `test --vm` will boot (5.10, 6.1, 6.12, 7).
        #[arg(long, num_args = 1.., value_name = "KERNEL")]
        vm: Vec<String>,
    },
    /// Build the agent (with the kernel programs embedded).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Demo: two test namespaces, the agent enforcing a built-in policy between them, allowed
    /// and denied traffic, and the denied-flow events live. Ctrl-C cleans up.
    Run {
        /// Stop after this many seconds (default: run until Ctrl-C; 30 in a VM).
        #[arg(long)]
        seconds: Option<u64>,
        /// Run the demo inside a throwaway QEMU VM with this kernel (5.10, 6.1, 6.12, 7).
        #[arg(long, num_args = 0..=1, default_missing_value = "6.12", value_name = "KERNEL")]
        vm: Option<String>,
    },
    /// Run every test: unit tests and the privileged integration tests (root).
    Test {
        /// Run the privileged suites in a QEMU VM per kernel instead (5.10, 6.1, 6.12).
        #[arg(long, num_args = 1.., value_name = "KERNEL")]
        vm: Vec<String>,
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Formatting and lints: `cargo +nightly fmt --check`, clippy on every host target, and clippy on the
    /// eBPF crate for its own target (nightly), all with warnings as errors.
    Lint,
    /// Benchmarks (root): program load, per-packet cost, throughput against nftables and
    /// iptables, policy switch, events, memory. `--smoke` runs a short version.
    Bench {
        #[arg(long)]
        smoke: bool,
        /// Only these parts: load, packet, traffic, throughput, events, cpu, cluster; `floor` (only when
        /// named: the connection table's floors alone, long enough for `perf record -C 0`); or
        /// `soak` and `flood`, which run on their own (the storage lab's clients, iperf3,
        /// reloads, mode switches and kill -9 through a pinned agent; a flood of distinct denied
        /// flows).
        parts: Vec<String>,
        /// soak: minutes.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// flood: seconds.
        #[arg(long, default_value_t = 60)]
        flood_seconds: u64,
    },
    /// Fuzzing. `datapath` (root) runs generated packets through the kernel programs and the
    /// reference model and compares every verdict; `parsers` runs cargo-fuzz (libFuzzer) on
    /// the backend reader, the node configuration, NFS mount options and the socket request.
    Fuzz {
        #[arg(value_parser = ["datapath", "parsers"])]
        target: String,
        /// datapath: how many packets.
        #[arg(long, default_value_t = 1_000_000)]
        cases: u64,
        /// datapath: the generator's seed (default: from the clock; printed to repeat a run).
        #[arg(long)]
        seed: Option<u64>,
        /// parsers: seconds per target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// parsers: an unoptimized build (half the build time, far fewer executions: CI's smoke
        /// run).
        #[arg(long)]
        dev: bool,
    },
    /// Internal: the demo as the VM's init runs it (no build).
    #[command(hide = true)]
    DemoVm {
        #[arg(long)]
        agent: PathBuf,
        #[arg(long)]
        seconds: u64,
    },
    /// Internal: helpers the demo runs inside its namespaces.
    #[command(hide = true)]
    DemoServe { addrs: Vec<String> },
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build(release: bool) -> anyhow::Result<PathBuf> {
    setup::ensure()?;
    let mut c = cargo();
    c.args(["build", "-p", "trident-ports-agent"]);
    if release {
        c.arg("--release");
    }
    run_checked(&mut c)?;
    Ok(workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("trident-ports-agent"))
}

/// Validates deploy/ against the Kubernetes schemas with kubernetes-validate (PyPI), which
/// `peers::ensure` installs.
fn validate_manifests() -> anyhow::Result<()> {
    let dir = workspace_root().join("deploy");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    run_checked(
        Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", "1.33.0"])
            .args(&files),
    )?;
    eprintln!(
        "xtask: {} manifests valid against Kubernetes 1.33 schemas",
        files.len()
    );
    Ok(())
}

/// `cargo bench` of one of the tests crate's benchmarks, ready for its arguments.
fn bench_command(bench: &str) -> Command {
    let mut c = cargo();
    c.args(["bench", "-p", "trident-ports-tests", "--bench", bench, "--"]);
    c
}

fn lint() -> anyhow::Result<()> {
    setup::ensure()?;
    // The nightly's rustfmt: rustfmt.toml's import layout options are not stable yet.
    run_checked(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args(["+nightly", "fmt", "--all", "--", "--check"]),
    )?;
    run_checked(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The agent without the cluster source is built, warnings denied, by the fuzz targets
    // (`fuzz::cargo_fuzz`).
    // The kernel crate means something only for the bpf target. It is checked in the directory
    // and with the flags of the agent's build script's eBPF build (aya-build's, made one shared
    // directory by the build script's `share_target_dir`), which the host pass above has just
    // run: `core` and `compiler_builtins`, built in full even for a check, are then fresh
    // (6 s instead of 78 on CI's machine type, twenty-second session).
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    run_checked(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args([
                "+nightly",
                "clippy",
                "-p",
                "trident-ports-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env(
                "CARGO_TARGET_DIR",
                workspace_root().join("target/ebpf/trident-ports-ebpf"),
            ),
    )?;
    eprintln!("xtask: fmt and clippy clean (host targets and the eBPF crate)");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::ensure(),
        Cmd::Apiserver => apiserver::ensure().map(|p| println!("{}", p.display())),
        Cmd::Prepare { vm } => {
            use peers::Suite;
            let started = std::time::Instant::now();
            let suites = [Suite::Test, Suite::Vm, Suite::Bench];
            peers::ensure_all(&suites, apiserver::PACKAGES, apiserver::WHY)?;
            vm::fetch_kernels(&vm)?;
            fuzz::ensure_cargo_fuzz()?;
            eprintln!("xtask: prepared in {:.0?}", started.elapsed());
            apiserver::ensure().map(|p| println!("{}", p.display()))
        }
        Cmd::Build { release } => build(release).map(|p| println!("{}", p.display())),
        Cmd::Run {
            seconds,
            vm: Some(kernel),
        } => {
            let agent = build(false)?;
            vm::demo(&kernel, &agent, seconds.unwrap_or(30))
        }
        Cmd::Run { seconds, vm: None } => {
            let agent = build(false)?;
            demo::run(&agent, seconds)
        }
        Cmd::DemoVm { agent, seconds } => demo::run(&agent, Some(seconds)),
        Cmd::Test { vm, args } if !vm.is_empty() => {
            // The shipped build: see `vm::test_binaries`.
            let agent = build(true)?;
            vm::test(&vm, &agent, &args)
        }
        Cmd::Test { vm: _, args } => {
            peers::ensure(peers::Suite::Test)?;
            build(false)?;
            validate_manifests()?;
            let apiserver = apiserver::ensure()?;
            suites::run(&apiserver, &args)
        }
        Cmd::Fuzz {
            target,
            seconds,
            dev,
            ..
        } if target == "parsers" => fuzz::parsers(seconds, dev),
        Cmd::Fuzz { cases, seed, .. } => {
            setup::ensure()?;
            let mut c = cargo();
            c.args([
                "run",
                "--release",
                "-p",
                "trident-ports-tests",
                "--bin",
                "fuzz-datapath",
                "--",
                "--cases",
                &cases.to_string(),
            ]);
            if let Some(s) = seed {
                c.args(["--seed", &s.to_string()]);
            }
            run_checked(&mut c)
        }
        Cmd::Bench {
            parts,
            minutes,
            flood_seconds,
            ..
        } if parts.iter().any(|p| p == "soak" || p == "flood") => {
            peers::ensure(peers::Suite::Test)?;
            peers::ensure(peers::Suite::Bench)?;
            let agent = build(true)?;
            let mut c = bench_command("soak");
            c.args(&parts)
                .args(["--minutes", &minutes.to_string()])
                .args(["--flood-seconds", &flood_seconds.to_string()])
                .env("TRIDENT_PORTS_AGENT", agent);
            run_checked(&mut c)
        }
        Cmd::Bench { smoke, parts, .. } => {
            peers::ensure(peers::Suite::Bench)?;
            let agent = build(true)?;
            let mut c = bench_command("datapath");
            if smoke {
                c.arg("--smoke");
            }
            if parts.is_empty() || parts.iter().any(|p| p == "cluster") {
                c.env("TP_KUBE_APISERVER", apiserver::ensure()?);
            }
            c.args(parts).env("TRIDENT_PORTS_AGENT", agent);
            run_checked(&mut c)
        }
        Cmd::DemoServe { addrs } => demo::serve(&addrs),
        Cmd::Lint => lint(),
    }
}
