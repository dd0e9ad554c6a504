//! Installs the eBPF toolchain: the nightly's rust-src and a bpf-linker built against the
//! nightly's own LLVM. Idempotent: what is present and works is reused.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::run_checked;

const NIGHTLY: &str = "nightly";

pub(crate) fn ensure() -> anyhow::Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let out = rustup()
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("running rustup: the eBPF programs need rustup with a `nightly` toolchain")?;
    if !out.status.success() {
        bail!(
            "no `{NIGHTLY}` toolchain: the eBPF programs build with nightly Rust ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for {NIGHTLY}");
    run_checked(rustup().args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("`rustup component add rust-src --toolchain nightly` failed")
}

/// bpf-linker links the nightly's libLLVM dynamically, so it runs only under `rustup run
/// nightly`: if it runs there, it matches.
fn linker_works() -> bool {
    rustup()
        .args(["run", NIGHTLY, "bpf-linker", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn nightly_llvm() -> anyhow::Result<(String, PathBuf)> {
    let vv = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "-vV"])
        .output()?;
    let vv = String::from_utf8_lossy(&vv.stdout).into_owned();
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` names no LLVM version")?;
    let major = version.split('.').next().unwrap_or_default().to_string();
    let sysroot = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "--print", "sysroot"])
        .output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let lib = std::fs::read_dir(sysroot.join("lib"))
        .with_context(|| format!("reading {}/lib", sysroot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.<ver>-rust-* in {}/lib", sysroot.display()))?;
    Ok((major, lib))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if linker_works() {
        return Ok(());
    }
    let started = Instant::now();
    let (major, lib) = nightly_llvm()?;
    let prefix = crate::workspace_root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)
        .with_context(|| format!("linking {} to {}", link.display(), lib.display()))?;
    eprintln!(
        "xtask: building bpf-linker against the nightly's LLVM {major} ({})",
        lib.display()
    );
    // An unoptimized build: the linking is done by the nightly's libLLVM, which bpf-linker only
    // drives, so its own code's speed does not show (the same object, byte for byte, linked in
    // the same time), and building it takes half the CPU time (69 s against 140 s on CI's
    // machine type, twenty-second session).
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--debug",
            "--locked",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "`LLVM_PREFIX={} cargo install bpf-linker --no-default-features --features llvm-{major}` \
             failed ({status}); bpf-linker needs an LLVM {major} library, taken from the nightly toolchain",
            prefix.display()
        );
    }
    if !linker_works() {
        bail!("bpf-linker was installed but `rustup run nightly bpf-linker --version` fails");
    }
    eprintln!("xtask: bpf-linker ready in {:.0?}", started.elapsed());
    Ok(())
}
