//! The privileged tests on a throwaway VM per kernel: a Debian kernel (`kernels`), a busybox
//! initramfs carrying the test binaries, the agent and what they need (`initramfs`), the storage
//! lab's servers and the node's kernel clients (`lab`), and QEMU (TCG: this machine's /dev/kvm
//! cannot run guests) booting the kernel directly.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::workspace_root;

mod initramfs;
mod kernels;
mod lab;

use initramfs::{Guest, initramfs};
use kernels::{fetch, kernel, vmlinuz};

/// Test binaries run in the guest, and what each needs.
const SUITES: &[&str] = &[
    "packets",
    "node_sockets",
    "egress",
    "ingress",
    "kernel_clients",
];

fn vm_dir() -> PathBuf {
    workspace_root().join("target/vm")
}

/// The suites' test binaries, by suite name. Release builds, as the guest's agent is: under TCG
/// a debug build's own work was a third of a guest's time (6.12 alone on an AMD machine of CI's
/// type: 389 s of suites with debug binaries, 332 s with the release agent, 262 s with both in
/// release; nineteenth session). The host suites keep the debug build's overflow checks, and
/// the guests run the binary that ships.
fn test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut args = vec!["--release", "-p", "trident-ports-tests"];
    args.extend(SUITES.iter().flat_map(|s| ["--test", s]));
    Ok(crate::binaries::build(&args)?
        .into_iter()
        .filter(|b| SUITES.contains(&b.name.as_str()))
        .map(|b| (b.name, b.exe))
        .collect())
}

fn qemu(root: &Path, image: &Path) -> anyhow::Result<Command> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-accel",
        "tcg",
        "-m",
        "2048",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(vmlinuz(root).context("no vmlinuz")?)
    .arg("-initrd")
    .arg(image)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .stdin(Stdio::null());
    Ok(c)
}

/// Downloads and unpacks the Debian packages of `kernels` (each once: `test --vm` finds them).
pub(crate) fn fetch_kernels(kernels: &[String]) -> anyhow::Result<()> {
    for name in kernels {
        fetch(kernel(name)?)?;
    }
    Ok(())
}

/// `cargo xtask run --vm KERNEL`: the README's demo inside a throwaway VM, on the terminal.
pub(crate) fn demo(name: &str, agent: &Path, seconds: u64) -> anyhow::Result<()> {
    crate::peers::ensure(crate::peers::Suite::Vm)?;
    let (root, release) = fetch(kernel(name)?)?;
    let me = std::env::current_exe()?;
    let guest = Guest {
        files: vec![
            (agent.to_path_buf(), "/t/trident-ports-agent".into()),
            (me, "/t/xtask".into()),
        ],
        dirs: vec![workspace_root().join("config")],
        commands: format!("/t/xtask demo-vm --agent /t/trident-ports-agent --seconds {seconds}\n"),
        ..Guest::default()
    };
    let image = initramfs(&root, &release, &guest)?;
    eprintln!("vm: booting {release} under QEMU (TCG); the demo runs {seconds} s");
    let status = qemu(&root, &image)?
        .status()
        .context("running qemu-system-x86_64")?;
    if !status.success() {
        bail!("qemu exited with {status}");
    }
    Ok(())
}

/// Guests booted at once. Two at a time nearly halved the matrix's wall time when a guest kept
/// about a third of this machine's two cores busy. More do not help now that the suites keep
/// the emulator busier: four at once took each guest 504-630 s and the matrix 716 s, against
/// 267-331 s and about 650 s for two at a time (seventeenth session). Three at once, on an Intel
/// machine of the type: 326-372 s a guest and 559 s for the stage without its package installs,
/// against 615-684 s with them for two in that session's CI runs; the cores were 27% idle
/// during the two-guest stage (eighteenth session). Too close to call, so two stays.
/// `TP_VM_JOBS` overrides it (1 runs the kernels one after another).
fn jobs() -> usize {
    crate::parallel::jobs("TP_VM_JOBS", 2)
}

/// One kernel's guest, ready to boot.
struct Prepared {
    name: String,
    release: String,
    root: PathBuf,
    image: PathBuf,
}

/// One kernel's outcome: (suite, passed) per suite that reported, and whether the guest finished.
struct Outcome {
    results: Vec<(String, bool)>,
    done: bool,
    took: std::time::Duration,
    log: PathBuf,
}

/// Runs the privileged suites in one VM per kernel and reports per kernel.
pub(crate) fn test(kernels: &[String], agent: &Path, filter: &[String]) -> anyhow::Result<()> {
    crate::peers::ensure(crate::peers::Suite::Vm)?;
    let bins = test_binaries()?;
    if bins.len() != SUITES.len() {
        bail!(
            "expected test binaries {SUITES:?}, found {:?}",
            bins.iter().map(|b| &b.0).collect::<Vec<_>>()
        );
    }
    // Downloads and images one after another (apt shares its lists); the guests in parallel.
    let mut prepared = Vec::new();
    for name in kernels {
        let (root, release) = fetch(kernel(name)?)?;
        let mut files = vec![(agent.to_path_buf(), "/t/trident-ports-agent".to_string())];
        let mut commands = String::new();
        for (suite, exe) in &bins {
            files.push((exe.clone(), format!("/t/{suite}")));
            commands.push_str(&format!(
                "echo \"VM-SUITE-BEGIN {suite}\"; timeout -s KILL 300 ./{suite} --test-threads=1 --show-output {}; echo \"VM-SUITE-END {suite} $?\"\n",
                filter.join(" ")
            ));
        }
        let mut guest = Guest {
            files,
            commands,
            ..Guest::default()
        };
        lab::add(&mut guest)?;
        let image = initramfs(&root, &release, &guest)?;
        prepared.push(Prepared {
            name: name.clone(),
            release,
            root,
            image,
        });
    }
    // A queue rather than fixed pairs: a slot whose guest finishes boots the next kernel at
    // once instead of waiting for its partner (the kernels' guests differ by a minute).
    let outcomes = crate::parallel::map(&prepared, jobs(), boot);
    let mut report = Vec::new();
    for (p, outcome) in prepared.into_iter().zip(outcomes) {
        let o = outcome?;
        let ok = o.done && o.results.len() == bins.len() && o.results.iter().all(|(_, ok)| *ok);
        report.push((p.name, p.release, ok, o.results, o.took, o.log));
    }
    eprintln!("\nvm results:");
    for (name, release, ok, results, took, log) in &report {
        let suites: Vec<String> = results
            .iter()
            .map(|(s, ok)| format!("{s}={}", if *ok { "ok" } else { "FAILED" }))
            .collect();
        eprintln!(
            "  {name} ({release}): {} in {took:.0?} [{}] console: {}",
            if *ok { "ok" } else { "FAILED" },
            suites.join(", "),
            log.display()
        );
    }
    if report.iter().any(|r| !r.2) {
        bail!("tests failed on some kernels");
    }
    Ok(())
}

/// Boots one prepared guest (twice if it never finishes) and reads its suites' results from the
/// console.
fn boot(p: &Prepared) -> anyhow::Result<Outcome> {
    let name = &p.name;
    let started = Instant::now();
    let q = qemu(&p.root, &p.image)?;
    // A guest that hangs must not hang CI. A guest that never finishes (emulation stalls
    // happen) gets one more boot; a guest that finishes with failed tests does not.
    let mut console = String::new();
    for attempt in 1..=2 {
        let out = Command::new("timeout")
            .arg("1200")
            .arg(q.get_program())
            .args(q.get_args())
            .stdin(Stdio::null())
            .output()
            .context("running qemu-system-x86_64")?;
        console = String::from_utf8_lossy(&out.stdout).into_owned();
        if console.contains("VM-DONE") {
            break;
        }
        eprintln!(
            "vm {name}: the guest did not finish (attempt {attempt}); console kept in target/vm"
        );
        std::fs::write(
            vm_dir().join(format!("console-{}-attempt{attempt}.log", p.release)),
            &console,
        )?;
    }
    let log = vm_dir().join(format!("console-{}.log", p.release));
    std::fs::write(&log, &console)?;
    let (results, lines) = read_console(name, &console);
    // One write, so two guests' lines do not interleave.
    eprintln!("{}", lines.join("\n"));
    Ok(Outcome {
        results,
        done: console.contains("VM-DONE"),
        took: started.elapsed(),
        log,
    })
}

/// How many lines of failed tests' output a guest's report carries, all suites together.
const MAX_FAILURE_LINES: usize = 200;

/// Each suite's result from a guest's console, and the lines of it worth reporting: results,
/// skips, failures, and each failed suite's `failures:` section (the failing tests' panics and
/// output), since the console file stays on the machine that ran the guest and CI keeps only
/// what was printed.
fn read_console(name: &str, console: &str) -> (Vec<(String, bool)>, Vec<String>) {
    let mut results = Vec::new();
    let mut lines = Vec::new();
    let mut in_failures = false;
    let mut failure_lines = 0;
    for line in console.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("VM-SUITE-END ") {
            let mut it = rest.split_whitespace();
            results.push((
                it.next().unwrap_or("?").to_string(),
                it.next().unwrap_or("?") == "0",
            ));
        }
        if line == "failures:" {
            in_failures = true;
        } else if line.contains("test result:") || line.starts_with("VM-SUITE-") {
            in_failures = false;
        }
        if in_failures && failure_lines < MAX_FAILURE_LINES {
            failure_lines += 1;
            lines.push(format!("vm {name}: | {line}"));
        } else if line.contains("test result:")
            || line.contains("skipping")
            || line.contains("FAILED")
        {
            lines.push(format!("vm {name}: {line}"));
        }
    }
    (results, lines)
}

#[cfg(test)]
mod tests {
    use super::read_console;

    #[test]
    fn a_failed_tests_panic_reaches_the_report() {
        let console = "VM-SUITE-BEGIN node_sockets\n\
            test a ... ok\n\
            test b ... FAILED\n\
            \n\
            successes:\n\
            ---- a stdout ----\n\
            noise\n\
            failures:\n\
            \n\
            ---- b stdout ----\n\
            thread 'b' panicked at tests/node_sockets.rs:1:1:\n\
            assertion `left == right` failed: tc_ingress: verdict\n\
            \n\
            failures:\n\
            \x20   b\n\
            \n\
            test result: FAILED. 1 passed; 1 failed\n\
            VM-SUITE-END node_sockets 101\n\
            VM-SUITE-BEGIN packets\n\
            test result: ok. 3 passed; 0 failed\n\
            VM-SUITE-END packets 0\n";
        let (results, lines) = read_console("6.12", console);
        assert_eq!(
            results,
            [
                ("node_sockets".to_string(), false),
                ("packets".to_string(), true)
            ]
        );
        let text = lines.join("\n");
        assert!(text.contains("vm 6.12: | thread 'b' panicked at"), "{text}");
        assert!(
            text.contains("vm 6.12: | assertion `left == right` failed"),
            "{text}"
        );
        assert!(text.contains("vm 6.12: test b ... FAILED"), "{text}");
        assert!(!text.contains("noise"), "{text}");
        assert_eq!(
            lines.iter().filter(|l| l.contains("test result:")).count(),
            2,
            "{text}"
        );
    }
}
