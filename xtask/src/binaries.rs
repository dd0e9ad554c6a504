//! The test binaries cargo builds, read from its JSON messages, so that xtask can run them
//! itself: in the kernel matrix's guests, and side by side on the host.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// One test executable: what `cargo test` would run and where it would run it.
pub(crate) struct TestBinary {
    /// The target's name (`cluster`, `trident_ports_agent`, ...).
    pub name: String,
    /// The target's source, relative to its package as `cargo test` names it ("Running ...").
    pub source: String,
    pub exe: PathBuf,
    /// The package's directory: `cargo test` runs a test binary there.
    pub package_dir: PathBuf,
}

/// Builds the test binaries of `cargo test <args> --no-run` and returns them in cargo's order.
pub(crate) fn build(args: &[&str]) -> anyhow::Result<Vec<TestBinary>> {
    let out = crate::cargo()
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed ({})", out.status);
    }
    let root = crate::workspace_root();
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(name), Some(src), Some(manifest)) = (
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
            msg["target"]["src_path"].as_str(),
            msg["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let src = PathBuf::from(src);
        let package_dir = PathBuf::from(manifest)
            .parent()
            .context("a manifest path without a directory")?
            .to_path_buf();
        bins.push(TestBinary {
            name: name.to_string(),
            source: src
                .strip_prefix(&package_dir)
                .or_else(|_| src.strip_prefix(&root))
                .unwrap_or(&src)
                .display()
                .to_string(),
            exe: PathBuf::from(exe),
            package_dir,
        });
    }
    Ok(bins)
}

impl TestBinary {
    /// The command `cargo test` would run for this binary: in its package's directory, with the
    /// package's manifest directory in the environment.
    pub(crate) fn command(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.current_dir(&self.package_dir)
            .env("CARGO_MANIFEST_DIR", &self.package_dir);
        c
    }
}
