//! Builds the kernel programs (nightly, bpfel-unknown-none) so that the agent can embed them.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let find = |name: &str| {
        metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == name)
            .ok_or_else(|| anyhow!("package {name} not found in the workspace"))
    };
    let ebpf = find("trident-ports-ebpf")?;
    let common = find("trident-ports-common")?;
    // The kernel object also changes when the shared types change.
    if let Some(dir) = common.manifest_path.parent() {
        println!("cargo:rerun-if-changed={dir}");
    }
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default()).map_err(|e| {
        anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             hint: `cargo xtask setup` installs the nightly rust-src and bpf-linker"
        )
    })
}
