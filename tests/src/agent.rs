//! The agent binary, run inside a namespace, with its JSON event stream collected.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// The agent binary built by `cargo xtask test` (or `cargo build -p trident-ports-agent`).
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("TRIDENT_PORTS_AGENT") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let p = target.join("debug/trident-ports-agent");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask test`, which builds it",
        p.display()
    );
    p
}

/// `trident-ports-agent uninstall --pin-dir PIN` in `ns`: detaches what a pinned agent left and
/// removes the pins. Panics with the agent's stderr if it fails; returns its stdout.
pub fn uninstall(ns: &NetNs, pin: &std::path::Path) -> String {
    let out = ns
        .command(binary().to_str().unwrap())
        .args(["uninstall", "--pin-dir", pin.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Agent {
    child: Option<Child>,
    /// The agent's flows socket (unique per agent, so that agents in parallel tests never meet).
    pub socket: PathBuf,
    pub events: Arc<Mutex<Vec<serde_json::Value>>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts `trident-ports-agent <args>` in `ns` and waits until it has attached.
    pub fn start(ns: &NetNs, args: &[&str]) -> Self {
        let mut cmd = ns.command(binary().to_str().unwrap());
        let socket =
            std::env::temp_dir().join(format!("{}.sock", crate::netns::unique("tp-agent-")));
        let mut args: Vec<&str> = args.to_vec();
        let serves = args.first() == Some(&"run") && !args.contains(&"--socket");
        // Tests pin only where they say so (a BPF filesystem of their own): `run` pins by
        // default, and a test's agent should detach when it stops.
        if args.first() == Some(&"run") && !args.contains(&"--pin-dir") {
            args.extend(["--pin-dir", "none"]);
        }
        if serves {
            args.extend(["--socket", socket.to_str().unwrap()]);
        }
        cmd.args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let mut child = cmd.spawn().expect("starting the agent");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: serde_json::Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
                ev.lock().unwrap().push(v);
            }
        });
        let err = child.stderr.take().unwrap();
        let se = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = se.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut agent = Agent {
            child: Some(child),
            socket,
            events,
            stderr,
        };
        // A deadline, not a measure: in the kernel matrix's guests, emulated (TCG) and two to
        // the machine's two cores, verifying the programs alone has taken over 20 s.
        agent.wait_for_log("attached", Duration::from_secs(60));
        if serves {
            // The socket is bound just after attaching.
            agent.wait_for_log("serving flows", Duration::from_secs(5));
        }
        agent
    }

    /// `run --config CONFIG --iface <the pair's node end> EXTRA...` in the pair's node namespace.
    pub fn run(pair: &crate::netns::Pair, config: &std::path::Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "run",
            "--config",
            config.to_str().unwrap(),
            "--iface",
            &pair.node_if,
        ];
        args.extend_from_slice(extra);
        Self::start(&pair.node, &args)
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr.lock().unwrap().contains(needle) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "agent exited ({status}) before `{needle}`:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "agent did not log `{needle}` within {timeout:?}:\n{}",
            self.stderr.lock().unwrap()
        );
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until at least `n` events arrived, and returns all of them.
    pub fn wait_events(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.events.lock().unwrap().clone();
            if ev.len() >= n || Instant::now() > deadline {
                return ev;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM (or SIGINT) and waits for a clean exit.
    pub fn stop(&mut self, signal: i32) {
        let mut child = self.child.take().expect("agent already stopped");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "agent exited with {status}:\n{}",
                    self.stderr.lock().unwrap()
                );
                return;
            }
            assert!(Instant::now() < deadline, "agent did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
