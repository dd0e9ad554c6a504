//! The eBPF object is linked by bpf-linker, which cargo cannot declare as a dependency: fail early
//! with the command that installs it, and rebuild when it changes.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => panic!(
            "bpf-linker is not on PATH ({e}): run `cargo xtask setup`, which installs it (and \
             the nightly rust-src) against the nightly toolchain's own LLVM"
        ),
    }
}
