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

pub(crate) fn parsers(seconds: u64) -> anyhow::Result<()> {
    setup::ensure()?;
    if !cargo_fuzz_installed() {
        eprintln!(
            "xtask: installing cargo-fuzz (cargo install cargo-fuzz): runs libFuzzer targets on the nightly"
        );
        run_checked(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz = workspace_root().join("fuzz");
    // One build for every target, so that the fuzzers below start at once and do not wait on
    // each other's cargo lock.
    run_checked(
        Command::new("cargo")
            .current_dir(&fuzz)
            .args(["+nightly", "fuzz", "build", "-O"]),
    )?;
    let logs = workspace_root().join("target/fuzz-logs");
    std::fs::create_dir_all(&logs)?;
    // libFuzzer runs a target on one core: the targets run side by side, one per core, each
    // with a core of its own for its whole time (on CI's two cores the stage's fuzzing takes
    // half the wall time it did one after another, for the same executions).
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    crate::parallel::map(TARGETS, workers, |target| {
        fuzz_one(&fuzz, &logs, target, seconds)
    })
    .into_iter()
    .collect()
}

/// One target for `seconds`, its libFuzzer output in `logs/<target>.log` (two fuzzers writing to
/// one terminal would interleave); the log's tail is printed when it fails.
fn fuzz_one(fuzz: &Path, logs: &Path, target: &str, seconds: u64) -> anyhow::Result<()> {
    let dir = corpus(target)?;
    let log = logs.join(format!("{target}.log"));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let started = Instant::now();
    let status = Command::new("cargo")
        .current_dir(fuzz)
        .args(["+nightly", "fuzz", "run", "-O", target])
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
