//! `cargo xtask fuzz parsers`: cargo-fuzz (libFuzzer on the nightly) on each parser target,
//! with corpora seeded from the project's fixtures. A crash fails the run and leaves its input
//! under fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/, where a test replays
//! every input kept there.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::{run_checked, setup, workspace_root};

const TARGETS: &[&str] = &["backends", "node_config", "mount_options", "socket_request"];

fn cargo_fuzz_installed() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs cargo-fuzz when it is missing.
pub(crate) fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if !cargo_fuzz_installed() {
        eprintln!(
            "xtask: installing cargo-fuzz (cargo install cargo-fuzz): runs libFuzzer targets on the nightly"
        );
        run_checked(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Copies every file under `from` (recursively) whose name ends in one of `ends` into `to`.
fn seed(from: &Path, ends: &[&str], to: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(from) else {
        return Ok(0);
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            n += seed(&p, ends, to)?;
        } else if ends.iter().any(|x| p.to_string_lossy().ends_with(x)) {
            let name = p
                .strip_prefix(workspace_root())
                .unwrap_or(&p)
                .to_string_lossy()
                .replace('/', "_");
            std::fs::copy(&p, to.join(name))?;
            n += 1;
        }
    }
    Ok(n)
}

fn corpus(target: &str) -> anyhow::Result<std::path::PathBuf> {
    let root = workspace_root();
    let dir = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    let fixtures = root.join("trident-ports-agent/tests/fixtures");
    let n = match target {
        "backends" => {
            seed(&fixtures, &[".yaml", ".json"], &dir)?
                + seed(&root.join("config"), &[".yaml"], &dir)?
        }
        "node_config" => {
            seed(&root.join("config"), &[".yaml"], &dir)?
                + seed(&fixtures.join("cases"), &["node.yaml"], &dir)?
        }
        "mount_options" => {
            for (i, s) in [
                "nfsvers=4.1,hard",
                "-o vers=4,minorversion=0",
                "v3,port=2050,mountport=20048",
                "proto=rdma,sec=krb5p",
            ]
            .iter()
            .enumerate()
            {
                std::fs::write(dir.join(format!("opts{i}")), s)?;
            }
            4 + seed(&fixtures.join("cases/live"), &["mountinfo"], &dir)?
        }
        _ => {
            for (i, s) in [
                r#"{"since_ms": 1000, "follow": true}"#,
                r#"{"mode": "audit"}"#,
                "{}",
            ]
            .iter()
            .enumerate()
            {
                std::fs::write(dir.join(format!("req{i}")), s)?;
            }
            3
        }
    };
    eprintln!("xtask: fuzz {target}: {n} seed inputs");
    Ok(dir)
}

/// `cargo +nightly fuzz <command>` in `fuzz`, built as `dev` asks (see `parsers`).
///
/// The agent's library is built there without the `kubernetes` feature, and only there: its
/// warnings are errors, so that code compiled only without the cluster source (`cluster_off.rs`)
/// stays as clean as the rest. (A clippy pass of that build cost CI 51 s, most of it rebuilding
/// proc-macro crates for the other feature set.) cargo-fuzz appends `RUSTFLAGS` to its own, and
/// registry crates' lints stay capped, so only this workspace's crates are held to it.
fn cargo_fuzz(fuzz: &Path, command: &str, dev: bool) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(fuzz)
        .args(["+nightly", "fuzz", command])
        // Overflow checks in either build: cargo-fuzz's optimized build leaves them out, and
        // they found what the optimized runs had not (`sessions::mounts::unescape`).
        .args(if dev {
            &["--dev"][..]
        } else {
            &["-O", "-a"][..]
        })
        .env("RUSTFLAGS", "-D warnings");
    c
}

/// Every parser target for `seconds`, built with debug assertions and overflow checks. `dev`
/// builds without optimizations: CI's smoke run. The optimized build (one codegen unit a
/// crate, as cargo-fuzz sets it) took 189 s of a CI run on a fresh AMD machine of CI's type
/// and the unoptimized one 91 s, for about 25 times fewer executions a second (backends: 69,435
/// runs in 20 s against 2,526; twenty-first session): the smoke run proves every target builds
/// and runs its seeds and their first mutations, the full run is the optimized one.
pub(crate) fn parsers(seconds: u64, dev: bool) -> anyhow::Result<()> {
    setup::ensure()?;
    ensure_cargo_fuzz()?;
    let fuzz = workspace_root().join("fuzz");
    // One build for every target, so that the fuzzers below start at once and do not wait on
    // each other's cargo lock.
    run_checked(&mut cargo_fuzz(&fuzz, "build", dev))?;
    let logs = workspace_root().join("target/fuzz-logs");
    std::fs::create_dir_all(&logs)?;
    // libFuzzer runs a target on one core: the targets run side by side, one per core, each
    // with a core of its own for its whole time (on CI's two cores the stage's fuzzing takes
    // half the wall time it did one after another, for the same executions).
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    crate::parallel::map(TARGETS, workers, |target| {
        fuzz_one(&fuzz, &logs, target, seconds, dev)
    })
    .into_iter()
    .collect()
}

/// One target for `seconds`, its libFuzzer output in `logs/<target>.log` (two fuzzers writing to
/// one terminal would interleave); the log's tail is printed when it fails.
fn fuzz_one(fuzz: &Path, logs: &Path, target: &str, seconds: u64, dev: bool) -> anyhow::Result<()> {
    let dir = corpus(target)?;
    let log = logs.join(format!("{target}.log"));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let started = Instant::now();
    // The same flags as the build, or cargo would build again.
    let status = cargo_fuzz(fuzz, "run", dev)
        .arg(target)
        .arg(&dir)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048",
            "-timeout=10",
        ])
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("running cargo fuzz on {target}"))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("{}", lines[lines.len().saturating_sub(60)..].join("\n"));
        bail!(
            "fuzz target {target} failed (log: {}): the input is under fuzz/artifacts/{target}/; keep it in fuzz/regressions/{target}/",
            log.display()
        );
    }
    let runs = text
        .lines()
        .rev()
        .find(|l| l.starts_with("Done "))
        .unwrap_or("no summary line");
    eprintln!(
        "xtask: fuzz {target}: no crash, hang or leak in {:.0?} ({runs})",
        started.elapsed()
    );
    Ok(())
}
