//! `cargo xtask test` on this machine: cargo builds every test binary of the workspace, and
//! xtask runs them side by side instead of one after another as `cargo test` does.
//!
//! Most of the suites' time is waiting (for an agent to attach, a debounce to run out, an API
//! server to start, a retransmission): the host stage of a CI run kept this machine's two cores
//! 75-92% idle over its 257 s (vmstat, eighteenth session). Tests within a binary already run
//! in parallel threads, so everything a suite sets up is named per process (namespaces, sockets,
//! BPF filesystems) or shared through a lock that holds across processes (the storage lab).
use std::{path::Path, process::Stdio, time::Instant};

use anyhow::{Context as _, bail};

use crate::binaries::{self, TestBinary};

/// The suites that take longest, started first so that the short ones fill in behind them
/// (seconds in a CI run on the host, eighteenth session: cluster 74, differential 49, storage
/// 42, operations 17, ingress 15; every other binary under 8).
const LONGEST_FIRST: &[&str] = &[
    "cluster",
    "differential",
    "storage",
    "operations",
    "ingress",
];

/// Binaries run at once: `TP_TEST_JOBS`, or 3. Measured on CI's machine type (two cores, Intel,
/// eighteenth session), the binaries took 220-230 s one after another (`cargo test`), 125 s two at
/// a time and 73-79 s three or four at a time (in five runs of three and two of four, all 156
/// tests passed each time): from three on the cluster suite alone sets the time. The cores were
/// still 8-63% idle with three.
fn jobs() -> usize {
    crate::parallel::jobs("TP_TEST_JOBS", 3)
}

/// What one binary reported.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    failures: Vec<String>,
}

/// Runs every test binary of the workspace (then the doc tests) with `args` after `--`, and
/// closes with one line that adds up every binary's result (`summary: N passed, M failed`).
pub(crate) fn run(apiserver: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut bins = binaries::build(&["--workspace"])?;
    bins.sort_by_key(|b| {
        LONGEST_FIRST
            .iter()
            .position(|n| *n == b.name)
            .unwrap_or(LONGEST_FIRST.len())
    });
    let started = Instant::now();
    let jobs = jobs();
    let mut t = Tally::default();
    let outcomes = crate::parallel::map(&bins, jobs, |b| run_one(b, apiserver, args));
    for (b, outcome) in bins.iter().zip(outcomes) {
        match outcome {
            Ok((passed, failed, ok)) => {
                t.passed += passed;
                t.failed += failed;
                if !ok {
                    t.failures.push(format!("{} ({})", b.name, b.source));
                }
            }
            Err(e) => t.failures.push(format!("{} ({}): {e:#}", b.name, b.source)),
        }
    }
    eprintln!(
        "xtask: {} test binaries in {:.0?}, {} at a time",
        bins.len(),
        started.elapsed(),
        jobs
    );
    // The doc tests, which have no binary of their own to run.
    let mut doc = crate::cargo();
    doc.args(["test", "--workspace", "--doc"])
        .env("TP_KUBE_APISERVER", apiserver);
    if !args.is_empty() {
        doc.arg("--").args(args);
    }
    let out = doc.stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let (p, f) = results(&text);
    t.passed += p;
    t.failed += f;
    if !out.status.success() {
        t.failures.push("doc tests".into());
    }
    println!("summary: {} passed, {} failed", t.passed, t.failed);
    if !t.failures.is_empty() {
        bail!("failed: {}", t.failures.join(", "));
    }
    Ok(())
}

/// Runs one binary, its output held until it ends so that two binaries' lines do not interleave;
/// returns its (passed, failed) counts and whether it exited successfully.
fn run_one(b: &TestBinary, apiserver: &Path, args: &[String]) -> anyhow::Result<(u64, u64, bool)> {
    let started = Instant::now();
    // A file rather than a pipe: a daemon a test started (the lab's rpc.statd forks) may keep
    // the descriptor open after the binary ends, and a pipe would then never reach its end. One
    // file for both streams keeps a panic's message beside the test it belongs to.
    let dir = crate::workspace_root().join("target/test-logs");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join(
        b.exe
            .file_name()
            .context("a test binary without a file name")?,
    );
    let log = log.with_extension("log");
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = b
        .command()
        .args(args)
        .env("TP_KUBE_APISERVER", apiserver)
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("running {}", b.exe.display()))?;
    let status = child.wait()?;
    let out = std::fs::read(&log).with_context(|| format!("reading {}", log.display()))?;
    let text = String::from_utf8_lossy(&out);
    let shown = b
        .exe
        .strip_prefix(crate::workspace_root())
        .unwrap_or(&b.exe)
        .display()
        .to_string();
    println!(
        "     Running {} ({shown}) in {:.1?}\n{text}",
        b.source,
        started.elapsed()
    );
    let (passed, failed) = results(&text);
    Ok((passed, failed, status.success()))
}

/// The passed and failed counts of every `test result:` line in `text`.
fn results(text: &str) -> (u64, u64) {
    let (mut passed, mut failed) = (0, 0);
    for rest in text.lines().filter_map(|l| l.strip_prefix("test result: ")) {
        let num = |word: &str| {
            rest.split(';')
                .find_map(|part| {
                    part.trim()
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ")
                        .strip_suffix(word)
                })
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        passed += num(" passed");
        failed += num(" failed");
    }
    (passed, failed)
}

#[cfg(test)]
mod tests {
    use super::results;

    #[test]
    fn results_add_up_every_binary_line() {
        let text = "test a ... ok\n\
                    test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 7.11s\n\
                    test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n";
        assert_eq!(results(text), (6, 1));
        assert_eq!(results("no result line"), (0, 0));
    }
}
